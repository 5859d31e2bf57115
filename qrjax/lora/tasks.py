"""Tuning tasks for ALTO: tokenizers, prompt => completion examples encoded for SFT, four built-in synthetic tasks, a
JSONL loader, the backbone's pre-training corpus, and the hyperparameter grid.

Tokenizers (`Tokenizer`: vocab_size, pad_id / bos_id / eos_id, encode, decode):
- `BYTE` (`ByteTokenizer`), the default everywhere: PAD=0, BOS=1, EOS=2, UTF-8 byte b -> id b + 3 (`VOCAB_SIZE` =
  259); the shipped tiny Llama-layout backbone uses it. The module-level `encode_text`, `decode_tokens`, `PAD`,
  `BOS`, `EOS`, `VOCAB_SIZE` are this tokenizer's.
- `HFTokenizer`: a Hugging Face checkpoint's tokenizer.json (the `tokenizers` library) with its bos / eos / pad ids
  (`qrjax.lora.backbone.load_tokenizer` reads them from the checkpoint folder).

An `Example` is a `(prompt, completion)` pair of strings. `encode_examples` lays one out as
`[bos] + encode(prompt) + encode(completion) + [eos]`, right-padded with pad_id to seq_len + 1 tokens, then shifted:
`inputs = seq[:-1]`, `targets = seq[1:]`; the loss mask is 1 exactly where the target is a completion token or the
final EOS (the loss covers the completion only, as in supervised fine-tuning). Prompt and completion are encoded
apart and concatenated: a subword tokenizer given the joined text may merge across the boundary ("sort:ab" + "cd"
as "sort:abcd" may hold a token "bc"), which would leave no token boundary between prompt and completion. A
tokenizer that marks the start of a text (SentencePiece's "▁" prefix in Llama 1/2's tokenizer.json) therefore
marks the completion's start too: the model learns the completion as if it began a text, and `decode` of the
completion's tokens gives it back.

Built-in tasks (`TASKS`), deterministic in their seed and different in difficulty and length:
- "arithmetic": two-digit addition or subtraction, "37+58=" -> "95", "12-40=" -> "-28";
- "reverse": a word of 3-8 lowercase letters, "reverse:abcde=" -> "edcba";
- "sort": 3-10 letters or digits (repeats allowed), "sort:dbca=" -> "abcd";
- "recall": key-value recall over 3-8 pairs, "a=3,k=7,q=1;k?" -> "7".
`pretrain_examples` is the backbone's pre-training corpus: skills related to but different from these (copy, next
number, upper-casing, shifting letters, digit-wise addition without carry, counting letters), so that the backbone
knows the byte alphabet and the prompt => completion format and LoRA has something real to adapt.

The grid (`Grid`, `default_grid`, `load_grid`) is learning rate x LoRA rank x batch size; `Grid.configs` crosses it
with the tasks into `GridPoint`s, task-major.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import tokenizers

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


def _check_row(ids, what: str, vocab_size: int) -> list[int]:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{what} takes one row of integer ids (int[L]), got {ids.dtype}{list(ids.shape)}")
    out = ids.tolist()
    for i in out:
        if not 0 <= i < vocab_size:
            raise ValueError(f"{what}: id {i} is outside the vocabulary (0..{vocab_size - 1})")
    return out


def decode_tokens(ids) -> str:
    """The text of one row of ids (int[L]): PAD and BOS are skipped, decoding stops at the first EOS, the remaining
    bytes are read as UTF-8 (invalid sequences, e.g. a generation cut inside a character, become U+FFFD)."""
    out = bytearray()
    for i in _check_row(ids, "decode_tokens", VOCAB_SIZE):
        if i == EOS:
            break
        if i >= BYTE_OFFSET:
            out.append(i - BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")


class Tokenizer(Protocol):
    """What the example encoding needs of a tokenizer: `name` (for messages), `vocab_size` (every id it produces is
    below it), the special ids `pad_id`, `bos_id`, `eos_id`, `encode(text) -> list[int]` without special tokens, and
    `decode(ids: int[L]) -> str` (PAD and BOS skipped, stopping at the first EOS)."""

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """The byte-level tokenizer of the shipped tiny backbone: PAD=0, BOS=1, EOS=2, UTF-8 byte b -> b + 3
    (`encode_text`, `decode_tokens`). Every instance is equal to `BYTE`."""

    name: ClassVar[str] = "byte"
    vocab_size: ClassVar[int] = VOCAB_SIZE
    pad_id: ClassVar[int] = PAD
    bos_id: ClassVar[int] = BOS
    eos_id: ClassVar[int] = EOS

    def encode(self, text: str) -> list[int]:
        return encode_text(text)

    def decode(self, ids) -> str:
        return decode_tokens(ids)


BYTE = ByteTokenizer()


class HFTokenizer:
    """A Hugging Face fast tokenizer (`tokenizers.Tokenizer`, as read from a checkpoint's tokenizer.json) with the
    special ids the example encoding adds itself.

    encode(text) runs the tokenizer without its post-processor (add_special_tokens=False: no BOS/EOS template) and
    without truncation or padding (a copy of the tokenizer with both switched off is used when the file enables
    them). `vocab_size` is the largest id in the vocabulary, added tokens included, plus one. pad_id None means
    eos_id (Llama ships no pad token). Two HFTokenizers are equal when their tokenizer JSON and special ids are
    (the name, e.g. the file path, is left out). A special id may be given as its token string ("<s>").

    Raises ValueError naming `name` for a special id outside the vocabulary or a token string not in it."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_id: int | str, eos_id: int | str,
                 pad_id: int | str | None = None, name: str = "tokenizer"):
        if tokenizer.truncation is not None or tokenizer.padding is not None:
            # a tokenizer.json saved with truncation would cut long examples silently; keep the caller's untouched
            tokenizer = type(tokenizer).from_str(tokenizer.to_str())
            tokenizer.no_truncation()
            tokenizer.no_padding()
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError(f"tokenizer {name}: the vocabulary is empty")
        self._tokenizer = tokenizer
        self.name = str(name)
        self.vocab_size = max(vocab.values()) + 1
        pad_id = eos_id if pad_id is None else pad_id
        ids = {}
        for what, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if isinstance(value, str):
                token, value = value, tokenizer.token_to_id(value)
                if value is None:
                    raise ValueError(f"tokenizer {self.name}: {what} {token!r} is not a token of its vocabulary")
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < self.vocab_size:
                raise ValueError(f"tokenizer {self.name}: {what} must be an id of its vocabulary (0.."
                                 f"{self.vocab_size - 1}), got {value!r}")
            ids[what] = int(value)
        self.bos_id, self.eos_id, self.pad_id = ids["bos_id"], ids["eos_id"], ids["pad_id"]
        self._key = (hashlib.sha256(tokenizer.to_str().encode()).hexdigest(), self.bos_id, self.eos_id, self.pad_id)

    @classmethod
    def from_file(cls, path: str | Path, *, bos_id: int | str, eos_id: int | str,
                  pad_id: int | str | None = None) -> HFTokenizer:
        """`tokenizers.Tokenizer.from_file(path)` (a tokenizer.json) with these special ids; name = the path.
        A file the library cannot read raises ValueError naming it."""
        import tokenizers  # noqa: PLC0415 (only users of Hugging Face checkpoints pay for the import)

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path}: no such file")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises a bare Exception for malformed files
            raise ValueError(f"tokenizer file {path}: not a Hugging Face tokenizer.json ({err})") from None
        return cls(tokenizer, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, name=str(path))

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (do not switch truncation or padding back on)."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """The token ids of a text (no special tokens added, no truncation)."""
        if not isinstance(text, str):
            raise TypeError(f"{self.name}: encode takes a str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """The text of one row of ids (int[L]): decoding stops at the first eos_id, pad_id and bos_id are skipped,
        other special tokens (the tokenizer's added special tokens) are dropped from the text."""
        row = _check_row(ids, f"{self.name}: decode", self.vocab_size)
        if self.eos_id in row:
            row = row[:row.index(self.eos_id)]
        row = [i for i in row if i not in (self.pad_id, self.bos_id)]
        return self._tokenizer.decode(row, skip_special_tokens=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, HFTokenizer) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return (f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")


def _check_tokenizer(tokenizer, what: str):
    missing = [a for a in ("vocab_size", "pad_id", "bos_id", "eos_id", "encode") if not hasattr(tokenizer, a)]
    if missing:
        raise TypeError(f"{what}: tokenizer must be a ByteTokenizer, an HFTokenizer or another object with "
                        f"{', '.join(missing)}; got {type(tokenizer).__name__}")
    return tokenizer


def _encode_pair(example: Example, tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    # prompt and completion are encoded apart and concatenated, never as one text: a subword tokenizer may merge
    # the prompt's last characters with the completion's first into one token, and then no token boundary would
    # separate what the loss must cover from what it must not (and the prompt's tokens would depend on the answer)
    prompt, completion = example
    return tokenizer.encode(prompt), tokenizer.encode(completion)


def example_tokens(example: Example, tokenizer: Tokenizer = BYTE) -> int:
    """The seq_len an example needs: len(prompt tokens) + len(completion tokens) + 1 (BOS and EOS, less the
    shift); with the byte tokenizer, the UTF-8 byte counts."""
    _check_tokenizer(tokenizer, "example_tokens")
    p, c = _encode_pair(_check_example(example, "example"), tokenizer)
    return len(p) + len(c) + 1


def fit_seq_len(examples: Iterable[Example], multiple: int = 8, tokenizer: Tokenizer = BYTE) -> int:
    """The smallest multiple of `multiple` that fits every example (`example_tokens` under `tokenizer`)."""
    need = max((example_tokens(e, tokenizer) for e in examples), default=0)
    if need == 0:
        raise ValueError("fit_seq_len: no examples")
    return -(-need // multiple) * multiple


def _check_example(example, what: str) -> tuple[str, str]:
    if not (isinstance(example, tuple | list) and len(example) == 2 and all(isinstance(s, str) for s in example)):
        raise TypeError(f"{what}: expected a (prompt: str, completion: str) pair, got {example!r:.80}")
    return example[0], example[1]


def encode_examples(examples: Sequence[Example], seq_len: int, tokenizer: Tokenizer = BYTE) -> dict[str, np.ndarray]:
    """SFT arrays of n examples: `inputs` int32[n, seq_len], `targets` int32[n, seq_len] (inputs shifted left by
    one), `mask` float32[n, seq_len] (1 where the target is a completion token or the final EOS, else 0).

    Row i is [bos_id] + encode(prompt) + encode(completion) + [eos_id] right-padded with pad_id to seq_len + 1
    tokens before the shift (prompt and completion are encoded apart, see the module docstring); an example longer
    than that raises ValueError naming it."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise ValueError(f"encode_examples: seq_len must be a positive integer, got {seq_len!r}")
    tok = _check_tokenizer(tokenizer, "encode_examples")
    seqs = np.full((len(examples), seq_len + 1), tok.pad_id, np.int32)
    mask = np.zeros((len(examples), seq_len), np.float32)
    for row, example in enumerate(examples):
        prompt, completion = _check_example(example, f"example {row}")
        p, c = _encode_pair((prompt, completion), tok)
        if len(p) + len(c) + 1 > seq_len:
            raise ValueError(f"example {row} ({prompt!r:.60} -> {completion!r:.60}) needs seq_len "
                             f"{len(p) + len(c) + 1}, longer than seq_len {seq_len}")
        seqs[row, :len(p) + len(c) + 2] = [tok.bos_id, *p, *c, tok.eos_id]
        # target t is seq[t + 1]: the completion occupies seq[1 + len(p) : 1 + len(p) + len(c)], EOS follows it
        mask[row, len(p):len(p) + len(c) + 1] = 1.0
    return {"inputs": seqs[:, :-1].copy(), "targets": seqs[:, 1:].copy(), "mask": mask}


# ---------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Task:
    """A tuning task: disjoint train and val examples, the seq_len they are encoded at (in `tokenizer`'s tokens),
    the input lines the loader passed over ("path:line: reason"; empty for the built-in tasks), and the tokenizer
    that encodes them (the byte tokenizer by default; it takes part in equality)."""

    name: str
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    seq_len: int
    bad_lines: tuple[str, ...] = ()
    tokenizer: Tokenizer = BYTE

    def __post_init__(self):
        if not self.train or not self.val:
            raise ValueError(f"task {self.name!r}: needs train and val examples, got {len(self.train)} and "
                             f"{len(self.val)}")
        _check_tokenizer(self.tokenizer, f"task {self.name!r}")
        for split in ("train", "val"):
            for i, e in enumerate(getattr(self, split)):
                need = example_tokens(e, self.tokenizer)
                if need > self.seq_len:
                    raise ValueError(f"task {self.name!r}: {split} example {i} ({e[0]!r:.60} -> {e[1]!r:.60}) needs "
                                     f"seq_len {need}, longer than seq_len {self.seq_len}")

    def encode(self, split: str = "train", seq_len: int | None = None) -> dict[str, np.ndarray]:
        """`encode_examples` of the "train" or "val" examples with the task's tokenizer, at seq_len (None: the
        task's; a larger one pads, as when several tasks share the longest one's length)."""
        if split not in ("train", "val"):
            raise ValueError(f"task {self.name!r}: split must be 'train' or 'val', got {split!r}")
        try:
            return encode_examples(getattr(self, split), self.seq_len if seq_len is None else seq_len,
                                   self.tokenizer)
        except ValueError as err:
            raise ValueError(f"task {self.name!r} {split}: {err}") from None


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
              seq_len: int | None = None, tokenizer: Tokenizer = BYTE) -> Task:
    """A built-in task (`TASKS`): num_train + num_val distinct examples drawn from np.random.default_rng([seed, i])
    (i: the task's index in TASKS), val first, so that the val set of a seed does not change with num_train.

    seq_len (in `tokenizer`'s tokens): None picks the smallest multiple of 8 that fits every example; a given one
    must fit them all. The examples do not depend on the tokenizer."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown task {name!r}; choose from {list(TASKS)} or a .jsonl file")
    num_train = _check_count(num_train, f"task {name!r}: num_train", 1)
    num_val = _check_count(num_val, f"task {name!r}: num_val", 1)
    seed = _check_count(seed, f"task {name!r}: seed", 0)
    rng = np.random.default_rng([seed, TASKS.index(name)])
    examples = _distinct(_GENERATORS[name], rng, num_train + num_val, f"task {name!r}")
    val, train = tuple(examples[:num_val]), tuple(examples[num_val:])
    _check_tokenizer(tokenizer, f"task {name!r}")
    return Task(name, train, val, fit_seq_len(examples, tokenizer=tokenizer) if seq_len is None else seq_len,
                tokenizer=tokenizer)


def load_jsonl_task(path, *, name: str | None = None, val_fraction: float = 0.1, seed: int = 0,
                    seq_len: int | None = None, max_seq_len: int = 256, tokenizer: Tokenizer = BYTE) -> Task:
    """A task from a JSONL file of {"prompt": str, "completion": str} records (other keys are ignored).

    A malformed line (not UTF-8, bad JSON, not an object, a missing or non-string field, an empty completion, an
    example longer than seq_len, or max_seq_len when seq_len is None) is recorded in `bad_lines` as
    "path:line: reason", never fatal; blank lines hold no record and are skipped. The good records are split by
    distinct example (copies of one example stay on one side, so val never leaks into train): a seeded shuffle puts
    round(val_fraction * distinct) of them, at least one, in val. name defaults to the file's stem; seq_len None
    picks the smallest multiple of 8 that fits every good record. Lengths are counted in `tokenizer`'s tokens.

    Raises FileNotFoundError for a missing file and ValueError, naming the path, when fewer than two distinct good
    examples remain."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path}: no such file")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"task file {path}: val_fraction must lie in (0, 1), got {val_fraction!r}")
    seed = _check_count(seed, f"task file {path}: seed", 0)
    _check_tokenizer(tokenizer, f"task file {path}")
    limit = _check_count(max_seq_len if seq_len is None else seq_len,
                         f"task file {path}: {'max_seq_len' if seq_len is None else 'seq_len'}", 1)
    good: list[Example] = []
    bad: list[str] = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        example, reason = _parse_record(raw, limit, "seq_len" if seq_len is not None else "max_seq_len", tokenizer)
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
                fit_seq_len(good, tokenizer=tokenizer) if seq_len is None else seq_len, tuple(bad), tokenizer)


def _parse_record(raw: bytes, limit: int, limit_name: str,
                  tokenizer: Tokenizer) -> tuple[Example | None, str | None]:
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
    need = example_tokens(example, tokenizer)
    if need > limit:
        return None, f"too long: needs seq_len {need}, more than {limit_name} {limit}"
    return example, None


def resolve_task(spec: str, seed: int = 0, *, seq_len: int | None = None, num_train: int = 2048,
                 num_val: int = 128, tokenizer: Tokenizer = BYTE) -> Task:
    """A built-in task name (`TASKS`, via make_task with num_train / num_val examples) or the path of a .jsonl file
    (via load_jsonl_task), encoded with `tokenizer` (the backbone's: `qrjax.lora.backbone.resolve_tokenizer`)."""
    if spec in _GENERATORS:
        return make_task(spec, seed=seed, seq_len=seq_len, num_train=num_train, num_val=num_val, tokenizer=tokenizer)
    if str(spec).endswith(".jsonl") or Path(spec).is_file():
        return load_jsonl_task(spec, seed=seed, seq_len=seq_len, tokenizer=tokenizer)
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
class GridPoint:
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

    def configs(self, task_names: Sequence[str]) -> list[GridPoint]:
        """Every task x every point, task-major (all points of task_names[0] first), index = list position."""
        if isinstance(task_names, str):
            raise TypeError("Grid.configs takes a sequence of task names, got a single str (wrap it in a list)")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"Grid.configs: task names repeat: {list(task_names)}")
        pairs = [(t, p) for t in task_names for p in self.points]
        return [GridPoint(t, lr, rank, batch, i) for i, (t, (lr, rank, batch)) in enumerate(pairs)]


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


__all__ = ["BOS", "BYTE", "BYTE_OFFSET", "DEFAULT_BATCHES", "DEFAULT_LRS", "DEFAULT_RANKS", "EOS", "ByteTokenizer",
           "Example", "Grid", "GridPoint", "HFTokenizer", "PAD", "PRETRAIN_SKILLS", "TASKS", "Task", "Tokenizer",
           "VOCAB_SIZE", "decode_tokens", "default_grid",
           "encode_examples", "encode_text", "example_tokens", "fit_seq_len", "load_grid", "load_jsonl_task",
           "make_task", "pretrain_examples", "resolve_task"]
