"""Click data for DLRM: a Criteo-like synthetic stream with a hidden teacher, and the real Criteo text format.

Every batch is a dict of numpy arrays:

- `dense: float32[B, 13]`: the integer features as DLRM feeds them for Criteo, log(1 + max(x, 0));
- `sparse: int32[B, T, H]`: row indices into each of the T tables (T = 26 for Criteo), H lookups per table per
  sample (sum-pooled by the model; H = 1 for real Criteo);
- `label: float32[B]`: click (1) or not (0).

`SyntheticCriteo` needs no files: Zipf-popular categories over the given table sizes, log-normal counts, and labels
from a hidden logistic teacher (per-row effects plus a low-rank interaction between tables and with the dense
features, so DLRM's dot interaction has something to learn); `teacher_logits` gives the Bayes-ceiling AUC.
`CriteoTSV` streams the Criteo Kaggle/Terabyte text files (plain or .gz) with DLRM's hashing. `open_data` picks one
from a spec string.
"""

from __future__ import annotations

import gzip
import heapq
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# Criteo Kaggle (Display Advertising Challenge) cardinalities, in the dlrm repo's table order.
KAGGLE_TABLE_SIZES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                      5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
NUM_DENSE = 13
NUM_SPARSE = 26
# Row indices are int32 in every batch.
MAX_TABLE_SIZE = 2**31 - 1


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_sizes(table_sizes: Sequence[int], name: str = "table_sizes") -> tuple[int, ...]:
    if isinstance(table_sizes, (str, bytes)) or not isinstance(table_sizes, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(table_sizes).__name__}")
    if len(table_sizes) == 0:
        raise ValueError(f"{name} is empty: need at least one table")
    sizes = tuple(_check_int(f"{name}[{i}]", s, 1) for i, s in enumerate(table_sizes))
    for i, s in enumerate(sizes):
        if s > MAX_TABLE_SIZE:
            raise ValueError(f"{name}[{i}] = {s} exceeds {MAX_TABLE_SIZE} rows (row indices are int32); cap it "
                             "with capped_table_sizes")
    return sizes


def capped_table_sizes(sizes: Sequence[int], max_ind_range: int) -> tuple[int, ...]:
    """min(size, max_ind_range) per table, as DLRM's --max-ind-range hashes ids into at most that many rows;
    max_ind_range <= 0 means no cap."""
    sizes = _check_sizes(sizes, "sizes")
    if isinstance(max_ind_range, bool) or not isinstance(max_ind_range, (int, np.integer)):
        raise TypeError(f"max_ind_range must be an int, got {type(max_ind_range).__name__} {max_ind_range!r}")
    if max_ind_range <= 0:
        return sizes
    return tuple(min(s, int(max_ind_range)) for s in sizes)


def transform_dense(counts) -> np.ndarray:
    """float32[..., 13] log(1 + max(x, 0)) of integer counts, DLRM's transform of Criteo's dense features."""
    counts = np.asarray(counts)
    return np.log1p(np.maximum(counts, 0).astype(np.float64)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Synthetic stream

# SeedSequence spawn keys: independent streams from one seed.
_TRAIN, _EVAL, _PARAMS, _CALIBRATION = 0, 1, 2, 3
_CALIBRATION_SAMPLES = 16384
_PAIRS = 8  # table pairs with a latent dot product in the teacher
_DENSE_TABLES = 4  # tables whose latents also meet a projection of the dense features
_U53 = 2.0**-53


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash_normal(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64[..., C] standard normals, a fixed function of (key, row): keys uint64[C], rows int[...].

    Counter-based (two hashes and Box-Muller), so a table's per-row teacher values cost nothing until a row is looked
    up and need no memory however many rows the table has."""
    r = np.asarray(rows).astype(np.uint64)[..., None]
    with np.errstate(over="ignore"):
        z = _mix64(r * np.uint64(0x9E3779B97F4A7C15) + keys)
        u1 = 1.0 - (z >> np.uint64(11)).astype(np.float64) * _U53  # (0, 1]
        u2 = (_mix64(z ^ np.uint64(0xD1B54A32D192ED03)) >> np.uint64(11)).astype(np.float64) * _U53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class SyntheticCriteo:
    """A Criteo-like click stream, deterministic in (seed, step, batch_size); no files needed.

    - dense: 13 integer counts, each log-normal with its own scale and a share of zeros, returned as log1p;
    - sparse: per table, row popularity P(rank k) ∝ (k + 1)^-zipf_a over the table's rows, composed with a fixed
      random permutation of the rows (so the popular ids are spread over the table), sampled by inverse CDF; the
      H = multi_hot lookups of a sample are independent;
    - label ~ Bernoulli(sigmoid(teacher logit + noise)), noise ~ N(0, noise²) per sample (hidden: it lowers the
      attainable AUC without changing which predictor is best). The teacher logit is
        dense_std · (standardised dense · w)                          a linear map of the dense features
      + row_std · Σ_t mean_h e_t[row]                                 per-table per-row effects, e_t ~ N(0, σ_t²)
      + interaction_std · (Σ_(a,b) <v_a, v_b> + Σ_t <v_t, A_t x>)    low-rank interactions, v_t = mean_h u_t[row]
      + bias,
      each part scaled to the given standard deviation over the data, and the bias solved so the mean click rate
      is `ctr`. u_t are rank-`teacher_rank` latent vectors, met in 8 random table pairs (`interaction_pairs`) and,
      for 4 random tables (`dense_tables`), with a projection A_t of the standardised dense features x.

    Memory: each table keeps its sampling CDF (float64) and permutation (int32), 12 bytes per row, built when the
    object is made; the teacher's per-row values are hashed from (seed, table, row) when looked up and stored nowhere.
    """

    def __init__(self, table_sizes: Sequence[int], *, multi_hot: int = 1, zipf_a: float = 1.1, seed: int = 0,
                 ctr: float = 0.25, teacher_rank: int = 4, dense_std: float = 0.7, row_std: float = 1.0,
                 interaction_std: float = 0.8, noise: float = 0.0):
        self.table_sizes = _check_sizes(table_sizes)
        self.num_tables = len(self.table_sizes)
        self.multi_hot = _check_int("multi_hot", multi_hot, 1)
        self.seed = _check_int("seed", seed, 0)
        self.teacher_rank = _check_int("teacher_rank", teacher_rank, 1)
        if not np.isfinite(zipf_a) or zipf_a < 0:
            raise ValueError(f"zipf_a must be a finite number >= 0 (0: uniform), got {zipf_a}")
        if not 0 < ctr < 1:
            raise ValueError(f"ctr must lie in (0, 1), got {ctr}")
        for name, value in (("dense_std", dense_std), ("row_std", row_std), ("interaction_std", interaction_std),
                            ("noise", noise)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.zipf_a, self.ctr, self.noise = float(zipf_a), float(ctr), float(noise)

        rng = self._rng(_PARAMS)
        # Dense counts: floor(lognormal(mu_j, s_j)), zero with probability p0_j.
        self._dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
        self._dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self._dense_p0 = rng.uniform(0.05, 0.5, NUM_DENSE)
        # Zipf over ranks, ranks spread over rows by a permutation.
        self._cdf, self._perm = [], []
        for n in self.table_sizes:
            cdf = np.cumsum((np.arange(n, dtype=np.float64) + 1.0) ** -self.zipf_a)
            self._cdf.append(cdf / cdf[-1])
            self._perm.append(rng.permutation(n).astype(np.int32))
        # Teacher parameters.
        t, r = self.num_tables, self.teacher_rank
        self._w_dense = rng.normal(size=NUM_DENSE)
        self._row_sigma = rng.uniform(0.3, 1.0, t)
        pairs = [(a, b) for a in range(t) for b in range(a + 1, t)]
        chosen = rng.choice(len(pairs), size=min(_PAIRS, len(pairs)), replace=False) if pairs else []
        self.interaction_pairs = tuple(sorted(pairs[i] for i in chosen))
        self.dense_tables = tuple(sorted(int(i) for i in rng.choice(t, size=min(_DENSE_TABLES, t), replace=False)))
        self._latent_tables = sorted({i for p in self.interaction_pairs for i in p} | set(self.dense_tables))
        self._dense_proj = {i: rng.normal(size=(r, NUM_DENSE)) / np.sqrt(NUM_DENSE) for i in self.dense_tables}
        # hash keys per table: column 0 the row effect, columns 1..r the latent vector
        self._keys = rng.integers(0, 2**64, size=(t, 1 + r), dtype=np.uint64)

        # Standardisation, part scales and bias from a calibration sample of the stream itself.
        cal = self._sample(self._rng(_CALIBRATION), _CALIBRATION_SAMPLES)
        self._dense_mean = cal["dense"].astype(np.float64).mean(0)
        self._dense_scale = cal["dense"].astype(np.float64).std(0) + 1e-6
        parts = self._parts(cal["dense"], cal["sparse"])
        self._part_scales = np.array([target / sd if sd > 0 else 0.0 for target, sd in
                                      zip((dense_std, row_std, interaction_std), parts.std(0))])
        z = parts @ self._part_scales + self.noise * self._rng(_CALIBRATION, 1).normal(size=len(parts))
        lo, hi = -30.0, 30.0  # mean sigmoid(z + b) is increasing in b: bisect
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _sigmoid(z + mid).mean() < self.ctr else (lo, mid)
        self.bias = 0.5 * (lo + hi)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def _sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """dense float32[n, 13], sparse int32[n, T, H] (no labels)."""
        counts = np.floor(rng.lognormal(self._dense_mu, self._dense_sigma, size=(n, NUM_DENSE)))
        counts[rng.random((n, NUM_DENSE)) < self._dense_p0] = 0
        u = rng.random((n, self.num_tables, self.multi_hot))
        sparse = np.empty(u.shape, np.int32)
        for t, (cdf, perm) in enumerate(zip(self._cdf, self._perm)):
            # u < 1 = cdf[-1], so the rank stays below the table size (the clip is for float ties only)
            ranks = np.minimum(np.searchsorted(cdf, u[:, t], side="right"), len(cdf) - 1)
            sparse[:, t] = perm[ranks]
        return {"dense": transform_dense(counts), "sparse": sparse}

    def _labelled(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        out = self._sample(rng, n)
        z = self.teacher_logits(out).astype(np.float64) + self.noise * rng.normal(size=n)
        out["label"] = (rng.random(n) < _sigmoid(z)).astype(np.float32)
        return out

    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Training batch `step`: dense float32[B, 13], sparse int32[B, T, H], label float32[B]; the same for the
        same (seed, step, batch_size) in any process, independent across steps."""
        step = _check_int("step", step, 0)
        return self._labelled(self._rng(_TRAIN, step), _check_int("batch_size", batch_size, 1))

    def eval_batch(self, n: int, index: int = 0) -> dict[str, np.ndarray]:
        """Evaluation batch `index` of n samples, from a stream disjoint from (independent of) the training one."""
        index = _check_int("index", index, 0)
        return self._labelled(self._rng(_EVAL, index), _check_int("n", n, 1))

    def eval_batches(self, batch_size: int, max_samples: int) -> Iterator[dict[str, np.ndarray]]:
        """max_samples evaluation samples in batches of batch_size (the last one may be smaller): eval_batch(B, 0),
        eval_batch(B, 1), ... — the same interface as CriteoTSV.eval_batches."""
        batch_size = _check_int("batch_size", batch_size, 1)
        max_samples = _check_int("max_samples", max_samples, 1)
        for i, start in enumerate(range(0, max_samples, batch_size)):
            yield self.eval_batch(min(batch_size, max_samples - start), i)

    def _parts(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """float64[B, 3]: the teacher's unscaled dense, row-effect and interaction parts."""
        x = (dense.astype(np.float64) - self._dense_mean) / self._dense_scale
        row = np.zeros(len(dense))
        for t in range(self.num_tables):
            row += self._row_sigma[t] * _hash_normal(self._keys[t, :1], sparse[:, t])[..., 0].mean(-1)
        latent = {t: _hash_normal(self._keys[t, 1:], sparse[:, t]).mean(-2) / np.sqrt(self.teacher_rank)
                  for t in self._latent_tables}  # [B, r]
        inter = np.zeros(len(dense))
        for a, b in self.interaction_pairs:
            inter += (latent[a] * latent[b]).sum(-1)
        for t in self.dense_tables:
            inter += (latent[t] * (x @ self._dense_proj[t].T)).sum(-1)
        return np.stack([x @ self._w_dense, row, inter], axis=-1)

    def teacher_logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """float32[B]: the hidden teacher's click logit (without the label noise) of batch["dense"] float32[B, 13]
        and batch["sparse"] int[B, T, H], recomputed from those arrays; its AUC on the labels is the Bayes ceiling."""
        dense, sparse = np.asarray(batch["dense"]), np.asarray(batch["sparse"])
        if dense.ndim != 2 or dense.shape[1] != NUM_DENSE:
            raise ValueError(f"batch['dense'] must be float32[B, {NUM_DENSE}], got {dense.dtype}{list(dense.shape)}")
        want = (len(dense), self.num_tables, self.multi_hot)
        if sparse.shape != want or not np.issubdtype(sparse.dtype, np.integer):
            raise ValueError(f"batch['sparse'] must be int[{', '.join(map(str, want))}] (B, tables, multi_hot), got "
                             f"{sparse.dtype}{list(sparse.shape)}")
        bad = (sparse < 0) | (sparse >= np.asarray(self.table_sizes)[:, None])
        if bad.any():
            b, t, h = np.argwhere(bad)[0]
            raise ValueError(f"batch['sparse'][{b}, {t}, {h}] = {sparse[b, t, h]} is outside table {t} "
                             f"(0..{self.table_sizes[t] - 1})")
        return (self._parts(dense, sparse) @ self._part_scales + self.bias).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


# ----------------------------------------------------------------------------------------------------------------
# Criteo text files

_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
_WIDTH = 20  # no valid field is longer: 18 digits and a sign, or 16 hex digits
_MAX_DIGITS = 18  # fits int64
_MAX_HEX = 16  # fits uint64
_CHUNK_LINES = 4096
# By character code (NUL: the padding of numpy's fixed-width bytes; lines holding a NUL byte are rejected first).
_NOT_HEX = 255
_NIBBLE = np.full(256, _NOT_HEX, np.uint8)  # hex digit value
_NIBBLE[0] = 0
_DIGIT_OR_PAD = np.zeros(256, bool)
_DIGIT_OR_PAD[[0, *range(ord("0"), ord("9") + 1)]] = True
for _c in b"0123456789":
    _NIBBLE[_c] = _c - ord("0")
for _c in b"abcdef":
    _NIBBLE[_c] = _NIBBLE[_c - 32] = _c - ord("a") + 10
del _c


def _parse_lines(lines: list[bytes], table_sizes: np.ndarray):
    """(ok bool[N], label float32[n], counts int64[n, 13], rows int32[n, 26]) of N raw lines; n = ok.sum().

    A line is well formed when it has 40 tab-separated fields: label "0" or "1"; 13 integers, each empty (0) or an
    optional "-" and 1-18 decimal digits; 26 categoricals, each empty (row 0) or 1-16 hex digits (either case),
    hashed to int(hex, 16) % table_size. Parsed for the whole chunk at once on the bytes."""
    stripped = [line.rstrip(b"\r\n") for line in lines]
    fields = [s.split(b"\t") for s in stripped]
    ok = np.fromiter((len(f) == _FIELDS and b"\0" not in s for f, s in zip(fields, stripped)), bool, len(fields))
    idx = np.flatnonzero(ok)
    n = len(idx)
    if n == 0:
        return ok, np.zeros(0, np.float32), np.zeros((0, NUM_DENSE), np.int64), np.zeros((0, NUM_SPARSE), np.int32)
    cells = np.array([fields[i] for i in idx], dtype=f"S{_WIDTH}")  # [n, 40]; longer fields are cut ...
    lengths = np.strings.str_len(cells)
    line_len = np.fromiter((len(stripped[i]) for i in idx), np.int64, n)
    good = lengths.sum(1) + _FIELDS - 1 == line_len  # ... and caught here
    good &= (cells[:, 0] == b"0") | (cells[:, 0] == b"1")
    codes = cells.view(np.uint8).reshape(n, _FIELDS, _WIDTH)

    # integers: checked per character, then parsed by numpy (a cell that failed the check is parsed as "0")
    c, ln = codes[:, 1:1 + NUM_DENSE], lengths[:, 1:1 + NUM_DENSE]
    neg = (c[..., 0] == ord("-")) & (ln >= 2)
    bad = ~(_DIGIT_OR_PAD[c[..., 1:]].all(-1) & (_DIGIT_OR_PAD[c[..., 0]] | neg)) | (ln - neg > _MAX_DIGITS)
    counts = np.where(bad | (ln == 0), b"0", cells[:, 1:1 + NUM_DENSE]).astype(np.int64)
    good &= ~bad.any(-1)

    # categoricals: checked per character, then each digit shifted into place (digit k of a field of length L
    # holds bits 4 (L - 1 - k) ...; the fields' bit ranges are disjoint, so the sum is the value). Not
    # np.strings.zfill: numpy 2.4's zfill of an empty bytes field returns stale memory now and then (seen here).
    c, ln = codes[:, 1 + NUM_DENSE:], lengths[:, 1 + NUM_DENSE:]
    nib = _NIBBLE[c]
    bad = (nib == _NOT_HEX).any(-1) | (ln > _MAX_HEX)
    k = np.arange(_WIDTH)
    digit = (k < ln[..., None]) & ~bad[..., None]
    shift = (4 * np.maximum(ln[..., None] - 1 - k, 0)).astype(np.uint64)
    value = (np.where(digit, nib, 0).astype(np.uint64) << shift).sum(-1, dtype=np.uint64)
    rows = (value % table_sizes.astype(np.uint64)).astype(np.int32)
    good &= ~bad.any(-1)

    ok[idx] = good
    label = (cells[good, 0] == b"1").astype(np.float32)
    return ok, label, counts[good], rows[good]


class _Pass:
    """One sequential pass over a CriteoTSV file's samples of one line set; `take(n)` returns up to n samples (fewer
    only at the end of the file) as (label, counts, rows) arrays."""

    def __init__(self, owner: CriteoTSV, line_set: str):
        self.owner, self.line_set = owner, line_set
        self.samples = 0  # taken so far in this pass
        self._chunks = owner._chunks(line_set)
        self._buffer: list[tuple[np.ndarray, ...]] = []
        self._buffered = 0
        self.done = False

    def take(self, n: int, keep: bool = True):
        while self._buffered < n and not self.done:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.done = True
            elif len(chunk[0]):
                self._buffer.append(chunk)
                self._buffered += len(chunk[0])
        parts, got = [], 0
        while got < n and self._buffer:
            head = self._buffer[0]
            k = min(n - got, len(head[0]))
            if keep:
                parts.append(tuple(a[:k] for a in head))
            if k == len(head[0]):
                self._buffer.pop(0)
            else:
                self._buffer[0] = tuple(a[k:] for a in head)
            got += k
        self._buffered -= got
        self.samples += got
        if not keep:
            return got
        if not parts:
            return np.zeros(0, np.float32), np.zeros((0, NUM_DENSE), np.int64), np.zeros((0, NUM_SPARSE), np.int32)
        return tuple(np.concatenate(p) for p in zip(*parts))


class CriteoTSV:
    """Samples of a Criteo Kaggle/Terabyte text file (plain, or gzip by a ".gz" suffix), streamed, never read whole.

    One sample a line, 40 tab-separated fields: the label (0/1), 13 integer features, 26 categorical features as hex
    strings (32-bit in Criteo, e.g. "68fd1e64"). An empty integer is 0; an empty categorical maps to row 0 (the
    "missing" row; like DLRM, which reads it as 0, and 0 % size = 0). Hashing as DLRM's --max-ind-range:
    row = int(hex, 16) % table_size. A malformed line (not 40 fields, a label other than 0/1, an integer that is not
    an optional "-" and at most 18 digits, a categorical that is not at most 16 hex digits) is skipped and counted:
    `bad_lines` (how many distinct lines so far, each counted once however many passes read it) and
    `bad_line_numbers` (the smallest 10, 1-based), for the lines actually read.

    Split by physical line (malformed lines included, so a bad line never moves the split): the 0-based line i is
    held out for evaluation when i % eval_every == eval_every - 1. `split` picks what `batches` and `batch` read:
    "train" (the other lines), "eval" (the held-out lines) or "all" (every line, eval_every ignored: for a file that
    is all training or all test data); `eval_batches` reads the held-out lines, or every line when split="all".

    Criteo is one-hot: multi_hot must be 1; batches are dense float32[B, 13], sparse int32[B, 26, 1],
    label float32[B].
    """

    def __init__(self, path: str | Path, table_sizes: Sequence[int], *, multi_hot: int = 1, eval_every: int = 10,
                 split: str = "train"):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"Criteo data file {str(self.path)!r} does not exist")
        if self.path.is_dir():
            raise IsADirectoryError(f"Criteo data path {str(self.path)!r} is a directory, not a file")
        if self.path.stat().st_size == 0:
            raise ValueError(f"Criteo data file {str(self.path)!r} is empty")
        self.table_sizes = _check_sizes(table_sizes)
        if len(self.table_sizes) != NUM_SPARSE:
            raise ValueError(f"Criteo has {NUM_SPARSE} categorical features: table_sizes needs {NUM_SPARSE} sizes, "
                             f"got {len(self.table_sizes)}")
        if _check_int("multi_hot", multi_hot, 1) != 1:
            raise ValueError(f"multi_hot={multi_hot}: Criteo has exactly one id per table per sample (one-hot); "
                             "use SyntheticCriteo for multi-hot lookups")
        self.multi_hot = 1
        self.eval_every = _check_int("eval_every", eval_every, 2)
        if split not in ("train", "eval", "all"):
            raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
        self.split = split
        self.bad_lines = 0
        self.bad_line_numbers: list[int] = []
        self.dropped_samples: int | None = None  # the partial last batch the last complete `batches` pass dropped
        self.epoch_samples: int | None = None  # samples in one pass over the split, once a pass has finished
        self._sizes = np.asarray(self.table_sizes, np.int64)
        self._read_up_to = {"train": 0, "eval": 0, "all": 0}  # lines of each set already checked for bad_lines
        self._train: _Pass | None = None
        self._train_pos = 0  # the global sample index `self._train` takes next

    def _open(self):
        try:
            return gzip.open(self.path, "rb") if self.path.suffix == ".gz" else open(self.path, "rb")
        except OSError as err:
            raise OSError(f"cannot open Criteo data file {str(self.path)!r}: {err}") from err

    def _chunks(self, line_set: str):
        """(label, counts, rows) per chunk of the file's lines that belong to line_set, in file order."""
        k = self.eval_every
        with self._open() as f:
            first = 1  # 1-based number of the chunk's first line
            while True:
                try:
                    lines = list(itertools.islice(f, _CHUNK_LINES))
                except (OSError, EOFError) as err:  # a corrupt or truncated gzip stream
                    raise ValueError(f"Criteo data file {str(self.path)!r}: cannot read past line {first - 1}: "
                                     f"{err}") from err
                if not lines:
                    return
                numbers = np.arange(first, first + len(lines))
                if line_set == "all":
                    mine = np.arange(len(lines))
                else:
                    held = (numbers - 1) % k == k - 1
                    mine = np.flatnonzero(held if line_set == "eval" else ~held)
                ok, label, counts, rows = _parse_lines([lines[i] for i in mine], self._sizes)
                self._count_bad(numbers[mine[~ok]], line_set, first + len(lines) - 1)
                first += len(lines)
                yield label, counts, rows

    def _count_bad(self, bad: np.ndarray, line_set: str, last: int) -> None:
        new = [int(b) for b in bad if b > self._read_up_to[line_set]]
        self._read_up_to[line_set] = max(self._read_up_to[line_set], last)
        if new:
            self.bad_lines += len(new)
            self.bad_line_numbers = heapq.nsmallest(10, self.bad_line_numbers + new)

    def _eval_set(self) -> str:
        return "all" if self.split == "all" else "eval"

    def _batch(self, label: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"dense": transform_dense(counts), "sparse": rows[:, :, None], "label": label}

    def _no_samples(self, line_set: str) -> ValueError:
        return ValueError(f"Criteo data file {str(self.path)!r} has no well-formed samples in its {line_set!r} lines "
                          f"({self.bad_lines} malformed lines, first at lines {self.bad_line_numbers})")

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the split in file order, in full batches; the partial last batch is dropped and its size
        recorded in `dropped_samples`."""
        batch_size = _check_int("batch_size", batch_size, 1)
        p = _Pass(self, self.split)
        while True:
            label, counts, rows = p.take(batch_size)
            if len(label) < batch_size:
                break
            yield self._batch(label, counts, rows)
        if p.samples == 0:
            raise self._no_samples(self.split)
        self.epoch_samples, self.dropped_samples = p.samples, len(label)

    def batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Samples [step·B, (step+1)·B) of the split repeated without end (when the file runs out, reading wraps
        around to its start: epochs; a batch may straddle two). Sequential steps cost O(B) each (the open stream
        is kept); a step ahead reads forward, a step back reopens the file and skips."""
        step, batch_size = _check_int("step", step, 0), _check_int("batch_size", batch_size, 1)
        start = step * batch_size
        if self._train is None or start < self._train_pos:
            self._train, self._train_pos = _Pass(self, self.split), 0
            if self.epoch_samples:
                self._train_pos = start - start % self.epoch_samples  # the reopened pass starts an epoch
        self._advance(start - self._train_pos, keep=False)
        return self._batch(*self._advance(batch_size, keep=True))

    def _advance(self, n: int, keep: bool):
        """The next n samples of the endless training stream (wrapping at the end of the file) as (label, counts,
        rows) if keep, else None (skipped)."""
        parts = []
        while n > 0:
            got = self._train.take(n, keep)
            k = len(got[0]) if keep else got
            if keep:
                parts.append(got)
            n -= k
            self._train_pos += k
            if n > 0:  # the file ran out: next epoch
                if self._train.samples == 0:
                    raise self._no_samples(self.split)
                self.epoch_samples = self._train.samples
                if not keep:  # whole epochs need no reading
                    whole = n - n % self.epoch_samples
                    n -= whole
                    self._train_pos += whole
                self._train = _Pass(self, self.split)
        if keep:
            return tuple(np.concatenate(p) for p in zip(*parts)) if len(parts) > 1 else parts[0]
        return None

    def eval_batches(self, batch_size: int, max_samples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the held-out lines (every line when split="all"), at most max_samples samples, in batches of
        batch_size; the last batch may be smaller (evaluation sees every sample)."""
        batch_size = _check_int("batch_size", batch_size, 1)
        left = None if max_samples is None else _check_int("max_samples", max_samples, 1)
        p = _Pass(self, self._eval_set())
        while left is None or left > 0:
            label, counts, rows = p.take(batch_size if left is None else min(batch_size, left))
            if len(label) == 0:
                break
            if left is not None:
                left -= len(label)
            yield self._batch(label, counts, rows)
        if p.samples == 0:
            raise self._no_samples(self._eval_set())


def open_data(spec: str | Path, table_sizes: Sequence[int], *, multi_hot: int = 1,
              seed: int = 0) -> SyntheticCriteo | CriteoTSV:
    """"synthetic" -> SyntheticCriteo(table_sizes, multi_hot, seed); anything else is the path of a Criteo text file
    -> CriteoTSV(path, table_sizes) (its training split; seed unused)."""
    if isinstance(spec, str) and spec == "synthetic":
        return SyntheticCriteo(table_sizes, multi_hot=multi_hot, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data {str(spec)!r} is neither 'synthetic' nor an existing Criteo file")
    return CriteoTSV(path, table_sizes, multi_hot=multi_hot)


__all__ = ["KAGGLE_TABLE_SIZES", "NUM_DENSE", "NUM_SPARSE", "CriteoTSV", "SyntheticCriteo", "capped_table_sizes",
           "open_data", "transform_dense"]
