"""Detection throughput: watermarked test sets on disk and images/s of every pipeline variant, measured in one run.

Variants (each reads the same files and produces one record per file):
  baseline        the sequential full-image pipeline (`FullImageDetector`)
  tiled           one tile per image, no overlap (`TileDetector.run_sequential`)
  tiled+overlap   the overlapped pipeline on a fixed even split of the worker budget
  system          the overlapped pipeline on the adaptive plan (warm-up + QRMark's greedy allocation)
  decode_bound    the same files read and fully decoded by a pool of `budget` threads, and nothing else
  reader_bound    the system's own reader alone (reduced-scale, stop-early decoding of the tile's rows)
  compute_bound   the system's device stage alone (assemble + compiled tile call) on windows read beforehand
Timing is `qrjax.bench.interleaved`: every variant is warmed up on a few files (compiles excluded), then the variants
run round-robin `repeats` times over all files; images/s is the median over rounds, and each ratio (speedup over the
baseline, fraction of a bound) is the median over rounds of that round's ratio.

The bound the system is held to: on a GPU the decode-only bound (the device stage runs beside the host's decoding);
on a CPU, where decoding and the extractor share the cores, the shared-core bound 1 / (1/decode + 1/compute) (one
image costs its decode plus its compute on the same cores).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from qrjax import bench
from qrjax.data.decode import ImageReadError, decode

VARIANTS = ("baseline", "tiled", "tiled+overlap", "system", "decode_bound", "reader_bound", "compute_bound")
BOUND_VARIANTS = ("decode_bound", "reader_bound", "compute_bound")  # count what they process, not records

# The geometric edits of the robustness table (edge ratios; crops not resized back), by their EVAL_ATTACKS names,
# with plain Pillow versions for where `attacks.EVAL_ATTACKS` does not hold them.
GEOMETRIC_EDITS = ("rotate5", "crop0.71", "resize0.5")


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    return np.asarray(Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR))


def _center_crop_side(img: np.ndarray, side: float) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    return img[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.BILINEAR))


_FALLBACK_EDITS = {"rotate5": lambda im: _rotate(im, 5.0), "crop0.71": lambda im: _center_crop_side(im, 0.71),
                   "resize0.5": lambda im: _resize(im, 0.5)}


def edit(name: str, img: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] -> the edited uint8 image: `attacks.eval_attack(name)`, or for a geometric edit it does not
    know (GEOMETRIC_EDITS) the plain Pillow version above."""
    from qrjax.watermark import attacks

    if name not in attacks.EVAL_ATTACKS and name in _FALLBACK_EDITS:
        return _FALLBACK_EDITS[name](img)
    return attacks.eval_attack(name, img)


def make_dataset(folder: str | Path, model, code, n: int, size: int | tuple[int, int], fmt: str = "jpeg", *,
                 quality: int = 95, seed: int = 0, marked_fraction: float = 1.0, split: str = "all",
                 attack: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 batch: int = 32, unique: int | None = None, progress: bool = True) -> dict:
    """Write n images of `size` (side, or (H, W)) cut from the bundled photographs into folder: the first
    round(n * marked_fraction) watermarked with one random payload, the rest clean; `attack` edits each image after
    embedding. unique: make only this many distinct images and write the files cycling through them (embedding costs
    far more than detecting; every file is still read and decoded on its own).
    Returns {"paths", "marked" bool[n], "payload" uint8[payload_bits], "key" uint8[n_bits]}."""
    from tqdm.auto import tqdm

    from qrjax.data import bundled_source
    from qrjax.watermark import embed

    fmt = fmt.lower()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"format: expected jpeg or png, got {fmt!r}")
    h, w = (size, size) if isinstance(size, int) else size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 2, code.payload_bits).astype(np.uint8)
    key = np.asarray(code.encode(payload[None]))[0]
    src = bundled_source(split, area=(0.3, 1.0))
    n_marked = round(n * marked_fraction)
    paths, marked = [], np.arange(n) < n_marked
    ext = "jpg" if fmt == "jpeg" else "png"
    made: list[np.ndarray] = []
    for start in tqdm(range(0, n, batch), desc=f"writing {n} {h}x{w} {fmt}", disable=not progress, leave=False):
        m = min(batch, n - start)
        if unique is not None and start >= unique:
            for i in range(m):
                j = start + i
                same = [k for k in range(len(made)) if marked[k] == marked[j]] or list(range(len(made)))
                src_j = same[j % len(same)]  # a copy of an image with the same label
                p = folder / f"{j:06d}.{ext}"
                Image.fromarray(made[src_j]).save(p, "JPEG" if fmt == "jpeg" else "PNG",
                                                  **({"quality": quality} if fmt == "jpeg" else {}))
                paths.append(str(p))
            continue
        imgs = src.sample(rng, max(h, w), m)[:, :h, :w]
        imgs = np.ascontiguousarray(imgs)
        k = int(np.sum(marked[start:start + m]))
        if k:
            imgs[:k] = embed(model, imgs[:k], key)
        for i in range(m):
            img = attack(imgs[i], rng) if attack else imgs[i]
            made.append(img)
            p = folder / f"{start + i:06d}.{ext}"
            Image.fromarray(img).save(p, "JPEG" if fmt == "jpeg" else "PNG",
                                      **({"quality": quality} if fmt == "jpeg" else {}))
            paths.append(str(p))
    return {"paths": paths, "marked": marked, "payload": payload, "key": key}


def _decode_all(paths: Sequence[str], workers: int, reader: Callable[[str], object]) -> int:
    def one(p):
        try:
            reader(p)
            return 1
        except ImageReadError:
            return 0

    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, paths, chunksize=16))


def _device_only(detector, samples, batch: int, inflight: int) -> int:
    """The device stage alone on samples read beforehand: assemble + dispatch micro-batches of `batch`, at most
    `inflight` queued, every result fetched. Returns the number of windows processed."""
    import jax

    ok = [s for s in samples if s.error is None]
    batch = -(-batch // detector.n_devices) * detector.n_devices
    queued: list = []
    for i in range(0, len(ok), batch):
        queued.append(detector.dispatch(ok[i:i + batch], batch))
        if len(queued) >= max(1, inflight):
            jax.device_get(queued.pop(0))
    jax.device_get(queued)
    return len(ok)


def throughput(paths: Sequence[str], tile_detector, full_detector, *, budget: int | None = None, batch: int = 64,
               repeats: int = 3, variants: Sequence[str] = VARIANTS, verbose: bool = False,
               keep_records: bool = False) -> dict:
    """images/s of each variant on `paths`, the plans, and the ratios, from `repeats` interleaved rounds.

    Returns {"images", "repeats", "budget", "batch", "warmup_seconds" (the allocator's warm-up),
    "warmup_call_seconds" {variant: s} (each variant's warm-up run on the first 2 * batch files, compiles included),
    "plan_adaptive", "plan_even", "images_per_s" {variant: len(paths) / median seconds}, "seconds" {variant: [s per
    round]}, "speedup_vs_baseline" {variant: median over rounds of baseline seconds / variant seconds},
    "system_fraction_of_decode_bound" and "system_fraction_of_reader_bound" (medians of per-round ratios),
    "shared_core_bound_images_per_s" (1 / (1/decode + 1/compute) of the medians) and
    "system_fraction_of_shared_core_bound" (median over rounds of (decode s + compute s) / system s),
    "bound" ("shared_core" on CPU, "decode" elsewhere), "bound_description" and "system_fraction_of_bound" (the
    fraction of that bound)}; ratios only where the variants they need were run. keep_records: also "records"
    {variant: the last round's records} for the record-producing variants (baseline, tiled, tiled+overlap, system).

    compute_bound reads every file once before the timing starts (the windows stay in memory) and times only the
    device stage on them."""
    import jax

    budget = budget or max(3, (os.cpu_count() or 1) + 1)
    paths = list(paths)
    start = time.perf_counter()
    adaptive = tile_detector.warmup(paths, budget, batch_hint=batch)
    warmup_s = time.perf_counter() - start
    from qrjax.watermark.pipeline import even_plan

    even = even_plan(budget, adaptive.batch[1])
    if verbose:
        print(adaptive.describe())
        print(even.describe())
    chosen = [v for v in VARIANTS if v in variants]
    samples = ([tile_detector.read(i, p) for i, p in enumerate(paths)] if "compute_bound" in chosen else [])
    runs = {
        "baseline": lambda ps: list(full_detector.run(ps, batch)),
        "tiled": lambda ps: list(tile_detector.run_sequential(ps, adaptive.batch[1])),
        "tiled+overlap": lambda ps: list(tile_detector.run(ps, even)),
        "system": lambda ps: list(tile_detector.run(ps, adaptive)),
        "decode_bound": lambda ps: _decode_all(ps, budget, decode),
        "reader_bound": lambda ps: _decode_all(ps, budget, lambda p: tile_detector.read(0, p)),
        "compute_bound": lambda ps: _device_only(tile_detector, samples[:len(ps)], adaptive.batch[1],
                                                 adaptive.workers[1]),
    }

    def timed(v):
        def call():
            out = runs[v](paths)
            if v not in BOUND_VARIANTS and len(out) != len(paths):
                raise RuntimeError(f"{v}: {len(out)} records for {len(paths)} inputs")
            return out if keep_records and v not in BOUND_VARIANTS else None

        return call

    few = paths[: min(len(paths), 2 * batch)]  # the warm-up compiles every shape each variant uses
    t = bench.interleaved({v: timed(v) for v in chosen}, rounds=repeats,
                          warmup_fns={v: (lambda v=v: runs[v](few)) for v in chosen}, host=chosen)
    ips = {v: len(paths) / t.median(v) for v in chosen}
    out = {"images": len(paths), "repeats": repeats, "budget": budget, "batch": batch, "warmup_seconds": warmup_s,
           "warmup_call_seconds": t.first_call_seconds,
           "plan_adaptive": {"workers": adaptive.workers, "batch": adaptive.batch, "costs_ms": [
               c * 1e3 for c in adaptive.costs]},
           "plan_even": {"workers": even.workers, "batch": even.batch},
           "images_per_s": ips, "seconds": t.seconds}
    if "baseline" in ips:
        out["speedup_vs_baseline"] = t.speedups("baseline")
    for bound in ("decode_bound", "reader_bound"):
        if "system" in ips and bound in ips:
            out[f"system_fraction_of_{bound}"] = t.ratio(bound, "system")
    if "decode_bound" in ips and "compute_bound" in ips:
        out["shared_core_bound_images_per_s"] = 1.0 / (1.0 / ips["decode_bound"] + 1.0 / ips["compute_bound"])
        if "system" in ips:
            out["system_fraction_of_shared_core_bound"] = statistics.median(
                (d + c) / s for d, c, s in zip(t.seconds["decode_bound"], t.seconds["compute_bound"],
                                               t.seconds["system"]))
    on_cpu = jax.default_backend() == "cpu"
    out["bound"] = "shared_core" if on_cpu else "decode"
    out["bound_description"] = ("the shared-core bound 1 / (1/decode + 1/compute) (CPU: decoding and the extractor "
                                "share the cores)" if on_cpu else f"the decode-only bound ({jax.default_backend()}: "
                                "the device stage runs beside the host's decoding)")
    if f"system_fraction_of_{out['bound']}_bound" in out:
        out["system_fraction_of_bound"] = out[f"system_fraction_of_{out['bound']}_bound"]
    if keep_records:
        out["records"] = {v: r for v, r in t.results.items() if r is not None}
    return out
