"""QRMark's detection system: read one tile per image, overlapped and resource-aware; and the sequential baseline.

Stages of `TileDetector` (JAX has no user CUDA streams; the same ideas become host pools, asynchronous dispatch and
per-stage micro-batches inside compiled functions):

  read     host thread pool: open the file, decode (JPEG at reduced scale in Pillow's draft mode; PNG stops after
           the rows the tile needs), cut the source window the tile depends on, and compute its resampling weights
           (`qrjax.tiling.tile_source`). Only uint8 pixels and two small weight matrices go on.
  device   one compiled function per window shape: uint8 window -> antialiased resize + crop + normalise (the fused
           Pallas kernel `tile_preprocess` on GPU, its XLA reference on CPU, whichever measures faster) -> extractor
           -> whitening -> matches against the key(s), p-value, decision, ECC decode. Fixed batch shapes (the last
           batch padded), the batch sharded over every local device, dispatched asynchronously: up to `inflight`
           batches are queued on the device while the host reads the next ones, and results come back once per batch.
  write    a host thread turning each batch's arrays into per-input records (in input order) for the sink.
  sync     (the cascade, on by default when a key is tested) a host thread pool: every record the device stage did
           not detect is read again whole (`qrjax.data.decode`), synchronised (`qrjax.watermark.sync.read`: scale,
           rotation and shift of the carrier, one compiled extractor call per canvas shape) and decided again by the
           same `Decision`. Records leave in input order as soon as their batch's synchronised reads are done; a
           batch that the tile detected entirely never waits for this stage. With the cascade on, the tile tests at
           fpr / 2 and the reader at fpr / (2 x the 256 alignments the key chooses among),
           Bonferroni, so the cascade's false-positive rate stays <= fpr.

Resource-aware allocation (`plan_allocation`, QRMark's greedy rule): a warm-up measures each stage's cost per image
with one worker; each stage gets one worker, then workers go one at a time to the stage with the highest time per
worker until the budget is spent; micro-batches are b_k = Q / s_k with Q = lcm(s) q, as large as the batch hint and
a memory cap allow. Read workers are threads (Pillow releases the GIL while decoding), device workers are batches in
flight, write workers are result-formatting threads.

`FullImageDetector` is the sequential baseline QRMark compares with (the Stable Signature pipeline): decode the whole
image, resize to the working size, run the full-image extractor, threshold, decode: one stage after another, no
overlap, one thread.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from qrjax import parallel, tiling
from qrjax.data.decode import ImageReadError, decode
from qrjax.ecc import BitCode
from qrjax.ecc.hexbits import bits_to_hex
from qrjax.watermark import detect, sync
from qrjax.watermark.sync import n_candidates
from qrjax.watermark.embed import WatermarkModel, extractor_logits, read_logits

STAGES = ("read", "device", "write")  # the stages the allocator plans; the sync stage reuses the read workers
RESULT_FIELDS = ("path", "status", "error", "detected", "p_value", "matching_bits", "payload", "ecc_ok")


# --------------------------------------------------------------------------------------------------- allocation

@dataclasses.dataclass(frozen=True)
class Plan:
    """Workers s_k and micro-batch b_k per stage (read, device, write); Q = the samples in flight per round."""

    workers: tuple[int, ...]
    batch: tuple[int, ...]
    costs: tuple[float, ...] | None = None  # measured seconds per image with one worker
    source: str = "fixed"

    def describe(self) -> str:
        rows = [f"{name:6s} workers {s:3d}  micro-batch {b:5d}" + (f"  {c * 1e3:8.3f} ms/image/worker" if self.costs
                                                                     else "")
                for name, s, b, c in zip(STAGES, self.workers, self.batch, self.costs or (0,) * 3)]
        return f"plan ({self.source}):\n  " + "\n  ".join(rows)


def plan_allocation(costs: Sequence[float], budget: int, *, batch_hint: int = 4096,
                    bytes_per_sample: Sequence[int] = (0, 0, 0), memory_cap: float = math.inf,
                    multiple: int = 1) -> Plan:
    """QRMark's greedy stream allocation.

    costs: seconds per sample of each stage with one worker (the warm-up's trimmed means). budget: total workers
    S_max (at least one per stage). Every stage starts with one worker; the rest go one at a time to argmax
    cost / workers (ties to the earlier stage). Then Q = lcm(s) * q with q = min(B_cap // lcm(s),
    memory_cap // (lcm(s) * sum(bytes_per_sample))), B_cap = max(Q_probe, min(batch_hint, 4 Q_probe)) where Q_probe
    is the same computation for the probe allocation [1, ..., 1, S_max - (K - 1)]; while q < 1 a worker is taken
    from the stage with the lowest cost / workers. Micro-batches b_k = Q / s_k. `multiple`: the device stage's
    micro-batch must be a multiple of it (the device count); Q is rounded down to keep that.
    """
    k = len(costs)
    if budget < k:
        raise ValueError(f"plan_allocation: budget {budget} is below one worker per stage ({k})")
    if any(c < 0 for c in costs):
        raise ValueError(f"plan_allocation: costs must be >= 0, got {tuple(costs)}")
    s = [1] * k
    for _ in range(budget - k):
        ratios = [c / n for c, n in zip(costs, s)]
        s[ratios.index(max(ratios))] += 1
    total_bytes = max(1, sum(bytes_per_sample))

    def q_for(workers, cap):
        lcm = math.lcm(*workers)
        mem = memory_cap // (lcm * total_bytes) if math.isfinite(memory_cap) else cap // lcm
        return lcm, int(min(cap // lcm, mem))

    probe = [1] * (k - 1) + [budget - (k - 1)]
    lcm_p, q_p = q_for(probe, batch_hint)
    q_probe = max(1, lcm_p * q_p)
    cap = max(q_probe, min(batch_hint, 4 * q_probe))
    lcm, q = q_for(s, cap)
    while q < 1 and sum(s) > k:
        ratios = [c / n if n > 1 else math.inf for c, n in zip(costs, s)]
        s[ratios.index(min(ratios))] -= 1
        lcm, q = q_for(s, cap)
    if q < 1:
        raise ValueError(f"plan_allocation: one sample of {total_bytes} bytes per stage exceeds the memory cap "
                         f"{memory_cap:.3g}")
    big_q = lcm * q
    b = [big_q // n for n in s]
    if multiple > 1 and b[1] % multiple:
        b[1] = max(multiple, b[1] // multiple * multiple)
    return Plan(tuple(s), tuple(b), tuple(float(c) for c in costs), "adaptive")


def even_plan(budget: int, batch: int) -> Plan:
    """The fixed even split the adaptive plan is compared with: budget // 3 workers a stage (the remainder to the
    first stages), every micro-batch `batch`."""
    base, extra = divmod(budget, len(STAGES))
    return Plan(tuple(base + (i < extra) for i in range(len(STAGES))), (batch,) * len(STAGES), None, "even")


def memory_cap(fraction: float = 0.8) -> float:
    """fraction x the first device's memory (its allocator limit on GPU; physical RAM on CPU)."""
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        pass
    if stats and stats.get("bytes_limit"):
        return fraction * stats["bytes_limit"]
    return fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ------------------------------------------------------------------------------------------------------ inputs

# ------------------------------------------------------------------------------------------- shared decisions

@dataclasses.dataclass(frozen=True)
class Decision:
    """What both pipelines decide from logits: the key(s) to test, the FPR, the ECC and how to decode it."""

    code: BitCode
    keys: np.ndarray | None = None  # {0,1}[N, n_bits] codewords; N = 1: a known key; N > 1: identify
    fpr: float = 1e-6
    decoding: str = "hard"  # hard | chase | gmd

    def __post_init__(self):
        if self.keys is not None:
            keys = np.atleast_2d(np.asarray(self.keys, np.uint8))
            if keys.shape[-1] != self.code.n_bits:
                raise ValueError(f"keys: {keys.shape[-1]} bits each, the code {self.code.name} has {self.code.n_bits}")
            object.__setattr__(self, "keys", keys)

    def __hash__(self):
        return hash((self.code, None if self.keys is None else self.keys.tobytes(), self.fpr, self.decoding))

    def __eq__(self, other):
        return isinstance(other, Decision) and hash(self) == hash(other)

    def __call__(self, logits: jax.Array) -> dict:
        """logits f32[B, n_bits] -> dict of arrays, traceable (no host syncs)."""
        out = {}
        if self.keys is not None and len(self.keys) == 1:
            found, p, m = detect.detect(logits, jnp.asarray(self.keys), fpr=self.fpr)
            out.update(detected=found, p_value=p, matching_bits=m, key_index=jnp.where(found, 0, -1))
        elif self.keys is not None:
            idx, p, m = detect.identify(logits, jnp.asarray(self.keys), fpr=self.fpr)
            out.update(detected=idx >= 0, p_value=p, matching_bits=m, key_index=idx)
        dec = detect.decode_payload(self.code, logits, method=self.decoding)
        out.update(payload=dec.payload, ecc_ok=dec.ok)
        return out


def records(paths: Sequence[str], arrays: dict, decision: Decision, stage: str | None = None) -> list[dict]:
    """Per-input JSON-ready records from one batch's arrays (host numpy). stage ("tile" | "sync"): the cascade's
    stage that decided, recorded with `scale` and `angle` (None here; the sync stage fills them in); None for
    pipelines without a cascade (the baseline), whose records carry no stage fields."""
    out = []
    has_key = decision.keys is not None
    for i, path in enumerate(paths):
        r = {"path": path, "status": "ok", "error": None,
             "detected": bool(arrays["detected"][i]) if has_key else None,
             "p_value": float(arrays["p_value"][i]) if has_key else None,
             "matching_bits": int(arrays["matching_bits"][i]) if has_key else None,
             "payload": bits_to_hex(arrays["payload"][i]), "ecc_ok": bool(arrays["ecc_ok"][i])}
        if has_key and len(decision.keys) > 1:
            r["key_index"] = int(arrays["key_index"][i])
        if stage is not None:
            r.update(stage=stage, scale=None, angle=None)
        out.append(r)
    return out


def error_record(path: str, message: str, stage: str | None = None) -> dict:
    """stage: as in `records`; for an error, the stage that failed ("tile": the read stage, "sync": the whole-image
    read of the sync stage)."""
    r = {"path": path, "status": "error", "error": message, "detected": None, "p_value": None,
         "matching_bits": None, "payload": None, "ecc_ok": None}
    if stage is not None:
        r.update(stage=stage, scale=None, angle=None)
    return r


def cascade_unavailable(model: WatermarkModel) -> str | None:
    """Why `model` cannot run the synchronised stage (it has no band-limited periodic carrier), or None if it can."""
    try:
        sync.check_syncable(model.config)
    except ValueError as err:
        return str(err)
    return None


# ----------------------------------------------------------------------------------------------- tile system

@dataclasses.dataclass
class Sample:
    """One input after the read stage: the tile's source window and its weights, or an error."""

    index: int
    path: str
    window: np.ndarray | None = None  # uint8[h, w, 3]
    ry: np.ndarray | None = None  # f32[T, h]
    rx: np.ndarray | None = None  # f32[T, w]
    error: str | None = None
    seconds: float = 0.0


@lru_cache(maxsize=256)
def _geometry(height: int, width: int, working: int, tile: int, cell: tuple[int, int]) -> tiling.TileSource:
    out_h, out_w = tiling.read_shape(height, width, working, tile)
    rows, cols = out_h // tile, out_w // tile
    r, c = min(cell[0], rows - 1), min(cell[1], cols - 1)  # a small image has fewer cells: its last one
    return tiling.tile_source(height, width, (out_h, out_w), (r * tile, c * tile), tile)


def _bucket(n: int, step: int = 64) -> int:
    return -(-n // step) * step


class TileDetector:
    """The tiled detection system. `run(paths)` yields one record per input, in input order.

    model: a tiled WatermarkModel whose extractor reads `model.config.tile` pixels; cell: the grid cell (row, col)
    read from each image (default the top-left one, which lets PNG decoding stop after the top rows); draft: decode
    JPEG at the smallest DCT scale that keeps the working size; preprocess: "kernel" (the Pallas kernel), "reference"
    (XLA), or "auto" (the kernel on GPU, XLA on CPU, where the kernel runs only in the slow interpret mode).
    The decisions equal `extract(model, decode(path, min_size=...).rows, placement="fixed", cell=cell)` followed by
    the same threshold and ECC decoding: the same resampling and network, assembled differently.

    sync (default True): the detection cascade, when the decision tests a key (or N keys): inputs the tile did not
    detect go to the synchronised reader (`qrjax.watermark.sync.read` on the whole decoded image) and the same
    decision (known key, identification, ECC payload) on its logits. The tile tests at decision.fpr / 2, the reader
    at decision.fpr / (2 x the p x p shifts the key picks among, `sync.n_candidates`) (Bonferroni), so the
    cascade's false-positive rate stays <= decision.fpr; records carry
    `stage` ("tile" | "sync") and, for "sync", the edit's `scale` and `angle` (degrees). Decisions then equal
    `sync.detect_cascade(model, decode(path, min_size=...).rows, key, fpr, sync=True)` image by image. The model
    must have a band-limited periodic carrier (`cascade_unavailable` says why one cannot): ValueError otherwise.
    sync=False (or no key): the tile alone at decision.fpr, every record's stage "tile".
    """

    def __init__(self, model: WatermarkModel, decision: Decision, *, cell: tuple[int, int] = (0, 0),
                 draft: bool = True, preprocess: str = "auto", mesh=None, sync: bool = True):
        config = model.config
        if config.full_image:
            raise ValueError(f"TileDetector: model {config.name!r} reads whole images; use FullImageDetector")
        if config.bits != decision.code.n_bits:
            raise ValueError(f"model carries {config.bits} bits, code {decision.code.name} has {decision.code.n_bits}")
        if config.extractor_period and config.tile % config.extractor_period:
            raise ValueError(f"tile {config.tile} is not a multiple of the extractor period {config.extractor_period}")
        if preprocess not in ("auto", "kernel", "reference"):
            raise ValueError(f"preprocess: expected auto, kernel or reference, got {preprocess!r}")
        self.cascade = bool(sync) and decision.keys is not None
        if self.cascade and (why := cascade_unavailable(model)):
            raise ValueError(f"TileDetector(sync=True): {why}; pass sync=False for the tile alone")
        self.model, self.cell, self.draft = model, tuple(cell), draft
        self.fpr = decision.fpr  # the whole detector's (the cascade's) false-positive rate
        # the decision each stage applies: the tile at fpr / 2 in the cascade; the synchronised reader at
        # fpr / (2 candidates), since the key picks the best of the carrier period's p x p cyclic shifts
        self.decision = dataclasses.replace(decision, fpr=decision.fpr / 2) if self.cascade else decision
        self.shifts = n_candidates(config) if self.cascade else 1
        self.sync_decision = dataclasses.replace(decision, fpr=decision.fpr / (2 * self.shifts))
        self._decide = jax.jit(self.sync_decision.__call__)  # the sync stage's decision, one [1, bits] row at a time
        self.preprocess = ("reference" if jax.default_backend() == "cpu" else "kernel") if preprocess == "auto" \
            else preprocess
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        self.n_devices = self.mesh.devices.size
        self._fns: dict = {}

    # -- read stage (host, thread-safe) --
    def _geometry(self, size: tuple[int, int]) -> tiling.TileSource:
        cfg = self.model.config
        return _geometry(size[1], size[0], cfg.working_size, cfg.tile, self.cell)

    def read(self, index: int, path: str) -> Sample:
        start = time.perf_counter()
        cfg = self.model.config
        try:
            min_size = cfg.working_size if self.draft else None
            img = decode(path, rows=lambda size: self._geometry(size).window[1], min_size=min_size)
            geo = self._geometry(img.size)
            y0, y1, x0, x1 = geo.window
            return Sample(index, path, np.ascontiguousarray(img.rows[y0:y1, x0:x1]), geo.ry, geo.rx,
                          seconds=time.perf_counter() - start)
        except ImageReadError as err:
            return Sample(index, path, error=str(err), seconds=time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - one bad input never stops the batch
            return Sample(index, path, error=f"image {path!r}: {type(err).__name__}: {err}",
                          seconds=time.perf_counter() - start)

    # -- sync stage (host, thread-safe) --
    def sync_record(self, path: str) -> dict:
        """The cascade's second stage for one input the tile did not detect: decode the whole image (JPEG in draft
        mode like the read stage), `sync.read`, then the stage decision on the synchronised logits. Any failure
        becomes an error record (stage "sync")."""
        try:
            img = decode(path, min_size=self.model.config.working_size if self.draft else None)
            read = sync.read(self.model, img.rows, self.sync_decision.keys, self.shifts)
            arrays = jax.device_get(self._decide(jnp.asarray(read.logits)[None]))
            rec = records([path], arrays, self.sync_decision, stage="sync")[0]
            rec.update(scale=read.scale, angle=read.angle)
            return rec
        except ImageReadError as err:
            return error_record(path, f"sync stage: {err}", stage="sync")
        except Exception as err:  # noqa: BLE001 - one bad input never stops the batch
            return error_record(path, f"image {path!r}: sync stage: {type(err).__name__}: {err}", stage="sync")

    def needs_sync(self, record: dict) -> bool:
        """Does this record of the tile stage go on to the sync stage (cascade on, read fine, not detected)?"""
        return self.cascade and record["status"] == "ok" and not record["detected"]

    # -- device stage --
    def _device_fn(self, shape: tuple[int, int, int]):
        if shape not in self._fns:
            cfg, decision, kind = self.model.config, self.decision, self.preprocess
            spec = NamedSharding(self.mesh, P("data"))
            rep = NamedSharding(self.mesh, P())

            def fn(variables, windows, ry, rx):
                if kind == "kernel":
                    from pallas_kernels.tile_preprocess import tile_preprocess

                    tiles = tile_preprocess(windows, ry, rx)
                else:
                    from pallas_kernels.tile_preprocess import tile_preprocess_reference

                    tiles = tile_preprocess_reference(windows, ry, rx)
                logits = read_logits(cfg, variables["extractor"], tiles, variables.get("whitening"))
                return {"logits": logits, **decision(logits)}

            self._fns[shape] = jax.jit(fn, in_shardings=(rep, spec, spec, spec), out_shardings=spec)
        return self._fns[shape]

    def assemble(self, samples: Sequence[Sample], batch: int):
        """Stack ok samples into fixed-shape, zero-padded arrays: (windows, ry, rx) of `batch` rows."""
        t = self.model.config.tile
        h = _bucket(max(s.window.shape[0] for s in samples))
        w = _bucket(max(s.window.shape[1] for s in samples))
        windows = np.zeros((batch, h, w, 3), np.uint8)
        ry = np.zeros((batch, t, h), np.float32)
        rx = np.zeros((batch, t, w), np.float32)
        for i, s in enumerate(samples):
            sh, sw = s.window.shape[:2]
            windows[i, :sh, :sw] = s.window
            ry[i, :, :sh] = s.ry
            rx[i, :, :sw] = s.rx
        return windows, ry, rx

    def dispatch(self, samples: Sequence[Sample], batch: int) -> dict:
        """Start the device stage on ok samples (asynchronously): returns device arrays for `batch` rows."""
        windows, ry, rx = self.assemble(samples, batch)
        fn = self._device_fn(windows.shape[1:])
        # placed before the call: under several processes jit refuses host arrays with a non-replicated sharding
        return fn(self.model.variables, *(parallel.shard_batch(a, self.mesh) for a in (windows, ry, rx)))

    def run_sequential(self, paths: Sequence[str], batch: int, *,
                       progress: Callable[[int], None] | None = None) -> Iterator[dict]:
        """Tiling alone, no overlap: read a batch in this thread, run the device stage, wait, write (and run the
        sync stage on what the tile did not detect), repeat."""
        paths = list(paths)
        batch = _round_up(batch, self.n_devices)
        for start in range(0, len(paths), batch):
            samples = [self.read(start + i, p) for i, p in enumerate(paths[start:start + batch])]
            ok = [s for s in samples if s.error is None]
            recs = {s.index: error_record(s.path, s.error, "tile") for s in samples if s.error is not None}
            if ok:
                out = jax.device_get(self.dispatch(ok, batch))
                recs.update((s.index, r) for s, r in zip(ok, records([s.path for s in ok], out, self.decision,
                                                                     "tile")))
            for i, r in recs.items():
                if self.needs_sync(r):
                    recs[i] = self.sync_record(r["path"])
            if progress:
                progress(len(samples))
            yield from (recs[s.index] for s in samples)

    # -- the whole system --
    def warmup(self, paths: Sequence[str], budget: int, batch_hint: int, rounds: int = 3) -> Plan:
        """Measure each stage's cost per image with one worker on the first paths, then plan (QRMark's SO1)."""
        n = max(1, min(len(paths), batch_hint))
        samples = [self.read(i, p) for i, p in enumerate(paths[:n])]
        read_cost = _trimmed_mean([s.seconds for s in samples])
        ok = [s for s in samples if s.error is None]
        batch = _round_up(max(1, len(ok)), self.n_devices)
        dev_cost = write_cost = 0.0
        if ok:
            jax.block_until_ready(self.dispatch(ok, batch))  # compile (timed apart by callers that care)
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                out = jax.device_get(self.dispatch(ok, batch))
                times.append(time.perf_counter() - start)
            dev_cost = _trimmed_mean(times) / batch
            start = time.perf_counter()
            records([s.path for s in ok], out, self.decision)
            write_cost = (time.perf_counter() - start) / len(ok)
        t = self.model.config.tile
        window = 3 * (ok[0].window.size if ok else 3 * t * t)
        bytes_per = (window, window + t * t * 3 * 4 * (2 + self.model.config.channels), 256)
        return plan_allocation((read_cost, dev_cost, write_cost), budget, batch_hint=batch_hint,
                               bytes_per_sample=bytes_per, memory_cap=memory_cap(), multiple=self.n_devices)

    def run(self, paths: Sequence[str], plan: Plan, *, progress: Callable[[int], None] | None = None,
            sync_workers: int | None = None) -> Iterator[dict]:
        """One record per path, in order. Reading, device work, record writing and the sync stage overlap.

        sync_workers: threads of the sync stage (default: the plan's read workers; both are host decoding)."""
        n_read, n_dev, n_write = plan.workers
        b_read, b_dev = max(1, plan.batch[0]), _round_up(max(1, plan.batch[1]), self.n_devices)
        paths = list(paths)
        chunks = [range(i, min(i + b_read, len(paths))) for i in range(0, len(paths), b_read)]
        done: queue.Queue = queue.Queue(maxsize=max(2, 2 * n_write))
        stop = object()
        sync_pool = (cf.ThreadPoolExecutor(max_workers=max(1, sync_workers or n_read), thread_name_prefix="qrjax-sync")
                     if self.cascade else None)

        def read_chunk(idx):
            return [self.read(i, paths[i]) for i in idx]

        def writer(out_q: queue.Queue):
            failed = None
            while (item := done.get()) is not stop:
                if failed is not None:
                    continue  # keep draining so the main thread never blocks on a full queue
                try:
                    samples, arrays = item
                    recs = {s.index: error_record(s.path, s.error, "tile") for s in samples if s.error is not None}
                    ok = [s for s in samples if s.error is None]
                    if ok:
                        for s, r in zip(ok, records([s.path for s in ok], jax.device_get(arrays), self.decision,
                                                    "tile")):
                            recs[s.index] = r
                    batch_records = [recs[s.index] for s in samples]
                    # the sync stage: one task per record the tile did not detect; the batch waits for them
                    pending = {j: sync_pool.submit(self.sync_record, r["path"])
                               for j, r in enumerate(batch_records) if self.needs_sync(r)}
                    out_q.put((batch_records, pending))
                except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                    failed = err
                    out_q.put(err)
            out_q.put(stop)

        def finished(item) -> list[dict]:
            batch_records, pending = item
            for j, future in pending.items():
                batch_records[j] = future.result()
            if progress:
                progress(len(batch_records))
            return batch_records

        out_q: queue.Queue = queue.Queue()
        write_thread = threading.Thread(target=writer, args=(out_q,), daemon=True)
        write_thread.start()
        inflight: list = []
        waiting: collections.deque = collections.deque()  # written batches, in order, possibly waiting for sync

        def drain(block_all: bool):
            while inflight and (block_all or len(inflight) >= n_dev):
                done.put(inflight.pop(0))

        try:
            with cf.ThreadPoolExecutor(max_workers=n_read, thread_name_prefix="qrjax-read") as pool:
                futures = [pool.submit(read_chunk, c) for c in chunks[: 2 * n_read]]
                next_chunk = len(futures)
                buffer: list[Sample] = []
                for fi in range(len(chunks)):
                    samples = futures[fi].result()
                    futures[fi] = None
                    if next_chunk < len(chunks):
                        futures.append(pool.submit(read_chunk, chunks[next_chunk]))
                        next_chunk += 1
                    buffer += samples
                    last = fi == len(chunks) - 1
                    while buffer and (last or sum(s.error is None for s in buffer) >= b_dev):
                        take, n_ok = [], 0
                        while buffer and n_ok < b_dev:
                            s = buffer.pop(0)
                            take.append(s)
                            n_ok += s.error is None
                        ok = [s for s in take if s.error is None]
                        arrays = self.dispatch(ok, b_dev) if ok else None
                        inflight.append((take, arrays))
                        drain(False)
                    while not out_q.empty():  # take whatever the writer has finished, without waiting
                        item = out_q.get()
                        if isinstance(item, BaseException):
                            done.put(stop)
                            raise item
                        waiting.append(item)
                    # hand on the finished batches at the head, without waiting for the sync stage
                    while waiting and all(f.done() for f in waiting[0][1].values()):
                        yield from finished(waiting.popleft())
            drain(True)
            done.put(stop)
            while (item := out_q.get()) is not stop:
                if isinstance(item, BaseException):
                    raise item
                waiting.append(item)
                while waiting:
                    yield from finished(waiting.popleft())
            while waiting:
                yield from finished(waiting.popleft())
            write_thread.join()
        finally:
            if sync_pool is not None:
                sync_pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------ sequential baseline

class FullImageDetector:
    """The sequential full-image baseline: for each batch, decode every image whole (main thread), resize each to the
    working size on device, run the full-image extractor on the batch, threshold and ECC-decode, wait, then the next
    batch. Decisions equal `extract(model, load_image(path), full_image=True)` with the same threshold."""

    def __init__(self, model: WatermarkModel, decision: Decision):
        if model.config.bits != decision.code.n_bits:
            raise ValueError(f"model carries {model.config.bits} bits, code {decision.code.name} has "
                             f"{decision.code.n_bits}")
        self.model, self.decision = model, decision
        cfg = model.config
        s = cfg.working_size

        @jax.jit
        def resize(img):
            h, w = tiling.read_shape(img.shape[0], img.shape[1], s, None)
            x = img.astype(jnp.float32) / 255.0
            return jax.image.resize(x, (h, w, 3), "linear", antialias=True) if (h, w) != img.shape[:2] else x

        @jax.jit
        def run_batch(variables, x):
            logits, _ = extractor_logits(cfg, variables["extractor"], x, whitening=variables.get("whitening"))
            return {"logits": logits, **decision(logits)}

        self._resize, self._run_batch = resize, run_batch

    def run(self, paths: Sequence[str], batch: int = 32, *, progress: Callable[[int], None] | None = None
            ) -> Iterator[dict]:
        paths = list(paths)
        s = self.model.config.working_size
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            recs: dict[int, dict] = {}
            resized, ok_idx = [], []
            for i, p in enumerate(chunk):
                try:
                    img = decode(p).rows
                    resized.append(self._resize(jnp.asarray(img)))
                    ok_idx.append(i)
                except ImageReadError as err:
                    recs[i] = error_record(p, str(err))
            if resized:
                # images below the working size keep their own shape: run them one by one (rare)
                groups: dict[tuple, list[int]] = {}
                for j, x in enumerate(resized):
                    groups.setdefault(tuple(x.shape), []).append(j)
                for shape, js in groups.items():
                    x = jnp.stack([resized[j] for j in js])
                    pad = batch - len(js) if shape[:2] == (s, s) else 0  # fixed batch shape for the common case
                    if pad:
                        x = jnp.concatenate([x, jnp.zeros((pad,) + shape, x.dtype)])
                    out = jax.device_get(self._run_batch(self.model.variables, x))
                    for r, j in zip(records([chunk[ok_idx[j]] for j in js], out, self.decision), js):
                        recs[ok_idx[j]] = r
            if progress:
                progress(len(chunk))
            yield from (recs[i] for i in range(len(chunk)))


# ------------------------------------------------------------------------------------------------------ helpers

def _trimmed_mean(xs: Sequence[float], trim: float = 0.2) -> float:
    xs = sorted(xs)
    k = int(len(xs) * trim / 2)
    xs = xs[k: len(xs) - k] or xs
    return float(sum(xs) / len(xs)) if xs else 0.0


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m
