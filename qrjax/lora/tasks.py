"""Tuning tasks for ALTO: a byte-level tokenizer, prompt => completion examples encoded for SFT, four built-in
synthetic tasks, a JSONL loader, the backbone's pre-training corpus, and the hyperparameter grid.

Tokenizer: PAD=0, BOS=1, EOS=2, UTF-8 byte b -> id b + 3 (`VOCAB_SIZE` = 259); the shipped tiny Llama-layout
backbone uses it.

An `Example` is a `(prompt, completion)` pair of strings. `encode_examples` lays one out as
`[BOS] + prompt + completion + [EOS]`, right-padded with PAD to seq_len + 1 tokens, then shifted: `inputs = seq[:-1]`,
`targets = seq[1:]`; the loss mask is 1 exactly where the target is a completion byte or the final EOS (the loss
covers the completion only, as in supervised fine-tuning).

Built-in tasks (`TASKS`), deterministic in their seed and different in difficulty and length:
- "arithmetic": two-digit addition or subtraction, "37+58=" -> "95", "12-40=" -> "-28";
- "reverse": a word of 3-8 lowercase letters, "reverse:abcde=" -> "edcba";
- "sort": 3-10 letters or digits (repeats allowed), "sort:dbca=" -> "abcd";
- "recall": key-value recall over 3-8 pairs, "a=3,k=7,q=1;k?" -> "7".
`pretrain_examples` is the backbone's pre-training corpus: skills related to but different from these (copy, next
number, upper-casing, shifting letters, digit-wise addition without carry, counting letters), so that the backbone
knows the byte alphabet and the prompt => completion format and LoRA has something real to adapt.

The grid (`Grid`, `default_grid`, `load_grid`) is learning rate x LoRA rank x batch size; `Grid.configs` crosses it
with the tasks into `TuneConfig`s, task-major.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Tokenizer

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET

Example = tuple[str, str]  # (prompt, completion)


def encode_text(text: str) -> list[int]:
    """The token ids of a text: its UTF-8 bytes, each b -> b + 3 (no BOS/EOS)."""
    if not isinstance(text, str):
        raise TypeError(f"encode_text takes a str, got {type(text).__name__}")
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]


def decode_tokens(ids) -> str:
    """The text of one row of ids (int[L]): PAD and BOS are skipped, decoding stops at the first EOS, the remaining
    bytes are read as UTF-8 (invalid sequences, e.g. a generation cut inside a character, become U+FFFD)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"decode_tokens takes one row of integer ids (int[L]), got {ids.dtype}{list(ids.shape)}")
    out = bytearray()
    for i in ids.tolist():
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"decode_tokens: id {i} is outside the vocabulary (0..{VOCAB_SIZE - 1})")
        if i == EOS:
            break
        if i >= BYTE_OFFSET:
            out.append(i - BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")


def example_tokens(example: Example) -> int:
    """The seq_len an example needs: len(prompt bytes) + len(completion bytes) + 1 (BOS and EOS, less the shift)."""
    prompt, completion = _check_example(example, "example")
    return len(prompt.encode("utf-8")) + len(completion.encode("utf-8")) + 1


def fit_seq_len(examples: Iterable[Example], multiple: int = 8) -> int:
    """The smallest multiple of `multiple` that fits every example (`example_tokens`)."""
    need = max((example_tokens(e) for e in examples), default=0)
    if need == 0:
        raise ValueError("fit_seq_len: no examples")
    return -(-need // multiple) * multiple


def _check_example(example, what: str) -> tuple[str, str]:
    if not (isinstance(example, tuple | list) and len(example) == 2 and all(isinstance(s, str) for s in example)):
        raise TypeError(f"{what}: expected a (prompt: str, completion: str) pair, got {example!r:.80}")
    return example[0], example[1]


def encode_examples(examples: Sequence[Example], seq_len: int) -> dict[str, np.ndarray]:
    """SFT arrays of n examples: `inputs` int32[n, seq_len], `targets` int32[n, seq_len] (inputs shifted left by
    one), `mask` float32[n, seq_len] (1 where the target is a completion byte or the final EOS, else 0).

    Row i is [BOS] + prompt + completion + [EOS] right-padded with PAD to seq_len + 1 tokens before the shift; an
    example longer than that raises ValueError naming it."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise ValueError(f"encode_examples: seq_len must be a positive integer, got {seq_len!r}")
    seqs = np.full((len(examples), seq_len + 1), PAD, np.int32)
    mask = np.zeros((len(examples), seq_len), np.float32)
    for row, example in enumerate(examples):
        prompt, completion = _check_example(example, f"example {row}")
        p, c = encode_text(prompt), encode_text(completion)
        if len(p) + len(c) + 1 > seq_len:
            raise ValueError(f"example {row} ({prompt!r:.60} -> {completion!r:.60}) needs seq_len "
                             f"{len(p) + len(c) + 1}, longer than seq_len {seq_len}")
        seqs[row, :len(p) + len(c) + 2] = [BOS, *p, *c, EOS]
        # target t is seq[t + 1]: the completion occupies seq[1 + len(p) : 1 + len(p) + len(c)], EOS follows it
        mask[row, len(p):len(p) + len(c) + 1] = 1.0
    return {"inputs": seqs[:, :-1].copy(), "targets": seqs[:, 1:].copy(), "mask": mask}


# ---------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Task:
    """A tuning task: disjoint train and val examples, the seq_len they are encoded at, and the input lines the
    loader passed over ("path:line: reason"; empty for the built-in tasks)."""

    name: str
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    seq_len: int
    bad_lines: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.train or not self.val:
            raise ValueError(f"task {self.name!r}: needs train and val examples, got {len(self.train)} and "
                             f"{len(self.val)}")
        for split in ("train", "val"):
            for i, e in enumerate(getattr(self, split)):
                if example_tokens(e) > self.seq_len:
                    raise ValueError(f"task {self.name!r}: {split} example {i} ({e[0]!r:.60} -> {e[1]!r:.60}) needs "
                                     f"seq_len {example_tokens(e)}, longer than seq_len {self.seq_len}")

    def encode(self, split: str = "train") -> dict[str, np.ndarray]:
        """`encode_examples` of the "train" or "val" examples at the task's seq_len."""
        if split not in ("train", "val"):
            raise ValueError(f"task {self.name!r}: split must be 'train' or 'val', got {split!r}")
        return encode_examples(getattr(self, split), self.seq_len)


LETTERS = string.ascii_lowercase
DIGITS = string.digits


def _word(rng: np.random.Generator, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(lo, hi + 1))))


def _arithmetic(rng: np.random.Generator) -> Example:
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    if rng.random() < 0.5:
        return f"{a}+{b}=", str(a + b)
    return f"{a}-{b}=", str(a - b)


def _reverse(rng: np.random.Generator) -> Example:
    w = _word(rng, LETTERS, 3, 8)
    return f"reverse:{w}=", w[::-1]


def _sort(rng: np.random.Generator) -> Example:
    w = _word(rng, LETTERS if rng.random() < 0.5 else DIGITS, 3, 10)
    return f"sort:{w}=", "".join(sorted(w))


def _recall(rng: np.random.Generator) -> Example:
    keys = rng.choice(list(LETTERS), size=int(rng.integers(3, 9)), replace=False)
    values = rng.integers(0, 10, size=len(keys))
    q = int(rng.integers(len(keys)))
    pairs = ",".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"{pairs};{keys[q]}?", str(values[q])


_GENERATORS = {"arithmetic": _arithmetic, "reverse": _reverse, "sort": _sort, "recall": _recall}
TASKS = tuple(_GENERATORS)


def _check_count(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _distinct(generate, rng: np.random.Generator, n: int, what: str) -> list[Example]:
    """n examples with distinct prompts (every built-in completion is a function of its prompt)."""
    out: dict[str, str] = {}
    for _ in range(20 * n + 1000):
        if len(out) == n:
            break
        prompt, completion = generate(rng)
        out.setdefault(prompt, completion)
    if len(out) < n:
        raise ValueError(f"{what}: found only {len(out)} distinct examples of the {n} asked for")
    return list(out.items())


def make_task(name: str, *, num_train: int = 2048, num_val: int = 128, seed: int = 0,
              seq_len: int | None = None) -> Task:
    """A built-in task (`TASKS`): num_train + num_val distinct examples drawn from np.random.default_rng([seed, i])
    (i: the task's index in TASKS), val first, so that the val set of a seed does not change with num_train.

    seq_len: None picks the smallest multiple of 8 that fits every example; a given one must fit them all."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown task {name!r}; choose from {list(TASKS)} or a .jsonl file")
    num_train = _check_count(num_train, f"task {name!r}: num_train", 1)
    num_val = _check_count(num_val, f"task {name!r}: num_val", 1)
    seed = _check_count(seed, f"task {name!r}: seed", 0)
    rng = np.random.default_rng([seed, TASKS.index(name)])
    examples = _distinct(_GENERATORS[name], rng, num_train + num_val, f"task {name!r}")
    val, train = tuple(examples[:num_val]), tuple(examples[num_val:])
    return Task(name, train, val, fit_seq_len(examples) if seq_len is None else seq_len)


def load_jsonl_task(path, *, name: str | None = None, val_fraction: float = 0.1, seed: int = 0,
                    seq_len: int | None = None, max_seq_len: int = 256) -> Task:
    """A task from a JSONL file of {"prompt": str, "completion": str} records (other keys are ignored).

    A malformed line (not UTF-8, bad JSON, not an object, a missing or non-string field, an empty completion, an
    example longer than seq_len, or max_seq_len when seq_len is None) is recorded in `bad_lines` as
    "path:line: reason", never fatal; blank lines hold no record and are skipped. The good records are split by
    distinct example (copies of one example stay on one side, so val never leaks into train): a seeded shuffle puts
    round(val_fraction * distinct) of them, at least one, in val. name defaults to the file's stem; seq_len None
    picks the smallest multiple of 8 that fits every good record.

    Raises FileNotFoundError for a missing file and ValueError, naming the path, when fewer than two distinct good
    examples remain."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path}: no such file")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"task file {path}: val_fraction must lie in (0, 1), got {val_fraction!r}")
    seed = _check_count(seed, f"task file {path}: seed", 0)
    limit = _check_count(max_seq_len if seq_len is None else seq_len,
                         f"task file {path}: {'max_seq_len' if seq_len is None else 'seq_len'}", 1)
    good: list[Example] = []
    bad: list[str] = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        example, reason = _parse_record(raw, limit, "seq_len" if seq_len is not None else "max_seq_len")
        if reason is None:
            good.append(example)
        else:
            bad.append(f"{path}:{lineno}: {reason}")
    distinct = list(dict.fromkeys(good))
    if len(distinct) < 2:
        shown = "; ".join(bad[:3]) + (f"; ... ({len(bad)} bad lines)" if len(bad) > 3 else "")
        raise ValueError(f"task file {path}: needs at least 2 distinct good records (one for train, one for val), "
                         f"found {len(distinct)}" + (f"; bad lines: {shown}" if bad else ""))
    order = np.random.default_rng(seed).permutation(len(distinct))
    num_val = min(max(1, round(val_fraction * len(distinct))), len(distinct) - 1)
    val_set = {distinct[i] for i in order[:num_val]}
    val = tuple(distinct[i] for i in order[:num_val])
    train = tuple(e for e in good if e not in val_set)
    return Task(path.stem if name is None else name, train, val,
                fit_seq_len(good) if seq_len is None else seq_len, tuple(bad))


def _parse_record(raw: bytes, limit: int, limit_name: str) -> tuple[Example | None, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"bad JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object with 'prompt' and 'completion', got {type(record).__name__}"
    for key in ("prompt", "completion"):
        if key not in record:
            return None, f"missing field {key!r}"
        if not isinstance(record[key], str):
            return None, f"field {key!r} is {type(record[key]).__name__}, not a string"
    example = (record["prompt"], record["completion"])
    if not example[1]:
        return None, "empty completion"
    need = example_tokens(example)
    if need > limit:
        return None, f"too long: needs seq_len {need}, more than {limit_name} {limit}"
    return example, None


def resolve_task(spec: str, seed: int = 0, *, seq_len: int | None = None) -> Task:
    """A built-in task name (`TASKS`, via make_task) or the path of a .jsonl file (via load_jsonl_task)."""
    if spec in _GENERATORS:
        return make_task(spec, seed=seed, seq_len=seq_len)
    if str(spec).endswith(".jsonl") or Path(spec).is_file():
        return load_jsonl_task(spec, seed=seed, seq_len=seq_len)
    raise ValueError(f"unknown task {spec!r}; choose from {list(TASKS)} or the path of a .jsonl file")


# ---------------------------------------------------------------------------------------------------------------
# Pre-training corpus


def _copy(rng):
    w = _word(rng, LETTERS + DIGITS + ",;?", 1, 8)
    return f"copy:{w}=", w


def _next(rng):
    n = int(rng.integers(0, 999))
    return f"next:{n}=", str(n + 1)


def _upper(rng):
    w = _word(rng, LETTERS, 1, 8)
    return f"upper:{w}=", w.upper()


def _shift(rng):
    w = _word(rng, LETTERS, 1, 8)
    return f"shift:{w}=", "".join(LETTERS[(LETTERS.index(ch) + 1) % 26] for ch in w)


def _add_no_carry(rng):
    # digit-wise addition where no column carries: related to the arithmetic task, not the same skill
    digits = int(rng.integers(1, 4))
    a = [int(rng.integers(1 if i == 0 else 0, 10)) for i in range(digits)]
    b = [int(rng.integers(0, 10 - x)) for x in a]
    a_s, b_s = "".join(map(str, a)), str(int("".join(map(str, b))))
    return f"add:{a_s}+{b_s}=", str(int(a_s) + int(b_s))


def _count(rng):
    w = _word(rng, LETTERS, 1, 9)
    return f"count:{w}=", str(len(w))


_PRETRAIN = (_copy, _next, _upper, _shift, _add_no_carry, _count)
PRETRAIN_SKILLS = ("copy", "next", "upper", "shift", "add", "count")  # the prompts' prefixes, "copy:abc=" etc.


def pretrain_examples(n: int, seed: int = 0) -> list[Example]:
    """n pre-training examples, each skill (`PRETRAIN_SKILLS`) drawn uniformly, from np.random.default_rng([seed,
    len(TASKS)]) (a stream no built-in task uses). Every prompt is "<skill>:<argument>="."""
    n = _check_count(n, "pretrain_examples: n", 0)
    rng = np.random.default_rng([_check_count(seed, "pretrain_examples: seed", 0), len(TASKS)])
    return [_PRETRAIN[int(rng.integers(len(_PRETRAIN)))](rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Hyperparameter grid


@dataclass(frozen=True)
class TuneConfig:
    """One LoRA tuning job: a task and its (learning rate, rank, batch size); `index` is its position in the list
    `Grid.configs` returned (unique across tasks)."""

    task: str
    lr: float
    rank: int
    batch: int
    index: int

    @property
    def label(self) -> str:
        return f"{self.task}/lr={self.lr:g}/r={self.rank}/b={self.batch}"


_GRID_KEYS = ("lr", "rank", "batch")
_GRID_KINDS = {"lr": "a positive finite number", "rank": "a positive integer", "batch": "a positive integer"}


def _grid_value_ok(key: str, value) -> bool:
    if isinstance(value, bool):
        return False
    if key == "lr":
        return isinstance(value, int | float | np.integer | np.floating) and 0 < value < math.inf
    return isinstance(value, int | np.integer) and value >= 1


@dataclass(frozen=True)
class Grid:
    """Hyperparameter points (lr, rank, batch), in order. Build with `Grid.product` or from a list of points."""

    points: tuple[tuple[float, int, int], ...]

    def __post_init__(self):
        if not self.points:
            raise ValueError("grid: no configurations")
        seen = set()
        for i, point in enumerate(self.points):
            if not (isinstance(point, tuple) and len(point) == 3):
                raise ValueError(f"grid: point {i} must be an (lr, rank, batch) tuple, got {point!r}")
            for key, value in zip(_GRID_KEYS, point):
                if not _grid_value_ok(key, value):
                    raise ValueError(f"grid: point {i} {key} must be {_GRID_KINDS[key]}, got {value!r}")
            if point in seen:
                raise ValueError(f"grid: point {i} (lr={point[0]}, rank={point[1]}, batch={point[2]}) appears twice")
            seen.add(point)

    @classmethod
    def product(cls, lrs: Sequence[float], ranks: Sequence[int], batches: Sequence[int]) -> Grid:
        """lrs x ranks x batches, lr-major (itertools.product order)."""
        for key, values in zip(_GRID_KEYS, (lrs, ranks, batches)):
            for i, value in enumerate(values):
                if not _grid_value_ok(key, value):
                    raise ValueError(f"grid: {key}[{i}] must be {_GRID_KINDS[key]}, got {value!r}")
        return cls(tuple((float(lr), int(r), int(b)) for lr, r, b in itertools.product(lrs, ranks, batches)))

    def __len__(self) -> int:
        return len(self.points)

    def configs(self, task_names: Sequence[str]) -> list[TuneConfig]:
        """Every task x every point, task-major (all points of task_names[0] first), index = list position."""
        if isinstance(task_names, str):
            raise TypeError("Grid.configs takes a sequence of task names, got a single str (wrap it in a list)")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"Grid.configs: task names repeat: {list(task_names)}")
        pairs = [(t, p) for t in task_names for p in self.points]
        return [TuneConfig(t, lr, rank, batch, i) for i, (t, (lr, rank, batch)) in enumerate(pairs)]


# A 2-layer d=64 backbone under Adam: 1e-3 is slow for ~200 steps (the underperformers), 3e-3 and 1e-2 train well,
# 1e-1 is meant to diverge (an Adam step moves every LoRA entry by ~lr, so B @ A grows by ~0.1 per step).
DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 1e-1)
DEFAULT_RANKS = (2, 4, 8)
DEFAULT_BATCHES = (4, 8)


def default_grid() -> Grid:
    """DEFAULT_LRS x DEFAULT_RANKS x DEFAULT_BATCHES: 24 configurations."""
    return Grid.product(DEFAULT_LRS, DEFAULT_RANKS, DEFAULT_BATCHES)


def load_grid(path) -> Grid:
    """A grid from a JSON file: {"lr": [...], "rank": [...], "batch": [...]} (their product, lr-major) or
    {"configs": [{"lr": .., "rank": .., "batch": ..}, ...]} (in order). Errors name the file and the bad field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path}: no such file")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"grid file {path}: not JSON ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"grid file {path}: expected a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"configs", *_GRID_KEYS})
    if unknown:
        raise ValueError(f"grid file {path}: unknown fields {unknown}; expected 'lr', 'rank', 'batch' or 'configs'")
    if "configs" in spec:
        if set(spec) & set(_GRID_KEYS):
            raise ValueError(f"grid file {path}: give either 'configs' or 'lr'/'rank'/'batch', not both")
        configs = spec["configs"]
        if not isinstance(configs, list) or not configs:
            raise ValueError(f"grid file {path}: 'configs' must be a non-empty list of objects, got {configs!r:.60}")
        points = []
        for i, c in enumerate(configs):
            if not isinstance(c, dict) or set(c) != set(_GRID_KEYS):
                got = sorted(c) if isinstance(c, dict) else type(c).__name__
                raise ValueError(f"grid file {path}: configs[{i}] must be an object with exactly 'lr', 'rank', "
                                 f"'batch', got {got}")
            for key in _GRID_KEYS:
                _check_grid_value(path, f"configs[{i}].{key}", key, c[key])
            point = (float(c["lr"]), int(c["rank"]), int(c["batch"]))
            if point in points:
                raise ValueError(f"grid file {path}: configs[{i}] repeats configs[{points.index(point)}]")
            points.append(point)
        return Grid(tuple(points))
    for key in _GRID_KEYS:
        if key not in spec:
            raise ValueError(f"grid file {path}: missing field {key!r} (or give 'configs')")
        if not isinstance(spec[key], list) or not spec[key]:
            raise ValueError(f"grid file {path}: {key!r} must be a non-empty list, got {spec[key]!r:.60}")
        for i, value in enumerate(spec[key]):
            _check_grid_value(path, f"{key}[{i}]", key, value)
        if len(set(spec[key])) != len(spec[key]):
            raise ValueError(f"grid file {path}: {key!r} repeats a value: {spec[key]}")
    return Grid.product(spec["lr"], spec["rank"], spec["batch"])


def _check_grid_value(path: Path, where: str, key: str, value) -> None:
    if not _grid_value_ok(key, value):
        raise ValueError(f"grid file {path}: {where} must be {_GRID_KINDS[key]}, got {value!r}")


__all__ = ["BOS", "BYTE_OFFSET", "DEFAULT_BATCHES", "DEFAULT_LRS", "DEFAULT_RANKS", "EOS", "Example", "Grid", "PAD",
           "PRETRAIN_SKILLS", "TASKS", "Task", "TuneConfig", "VOCAB_SIZE", "decode_tokens", "default_grid",
           "encode_examples", "encode_text", "example_tokens", "fit_seq_len", "load_grid", "load_jsonl_task",
           "make_task", "pretrain_examples", "resolve_task"]
