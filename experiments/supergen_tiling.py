"""SuperGen on this machine: tiled vs untiled memory and time, seams, the cache-threshold sweep, tile parallelism.

    python experiments/supergen_tiling.py                # the shipped cpu model, 2x/3x/4x (minutes on 2 cores)
    python experiments/supergen_tiling.py --model PATH --scales 2 --seeds 1 --thresholds 0 0.5 --devices 1 2 \
        --steps 6 --restart 2                            # smoke test (seconds)

Writes experiments/results/supergen_tiling.{json,md,png} and supergen_examples.png. Every stage-2 comparison starts
from the same stage-1 sketch and the same re-noise (SuperGen pre-saves its sketches), so differences are the
tiling's, the cache's or the devices'. Timing is `qrjax.bench.interleaved`: a warm-up call of every variant compiles
its programs, then the variants run once each per round; times are SuperGen's own stage-2 seconds (compilation and the
sketch left out), medians over the rounds, and speedups the median over rounds of the per-round ratio. Model FLOPs are
XLA's count for one model call times the calls made.

1. Memory and time per scale: native-size generation (stage 1 alone, the 1x reference) against stage 2 untiled
   (the whole canvas through the DiT) and tiled (SuperGen's shifted tiles, `max_batch` tiles per model call).
   Peak bytes are XLA's accounting of the largest program (arguments + outputs + temporaries).
2. Seams: gradient energy across the pixel lines where tile borders were at the last step, over the energy
   elsewhere (1.0 = no seam), for a fixed grid, the shifted grid, the blended (MultiDiffusion) tiling and untiled.
3. Cache sweep at the largest scale: model calls, wall time, skip rate, PSNR and SSIM against the uncached output.
4. Tile parallelism on 1/2/4/8 simulated CPU devices: equality with one device and bytes exchanged per step
   (canvas alone, and canvas + cache maps) against the strips the shift moves and a full-canvas all-gather.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from qrjax import bench  # noqa: E402
from qrjax.diffusion import supergen as sg  # noqa: E402
from qrjax.diffusion.config import SuperGenConfig  # noqa: E402
from qrjax.diffusion.sampler import sample, velocity_fn  # noqa: E402
from qrjax.metrics import psnr, seam_ratio, ssim  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def load(spec: str):
    """A shipped model's name or a model's stem/.json/.msgpack path (the CLIs' --model rule)."""
    from qrjax.diffusion.export import resolve_model

    return resolve_model(spec)


def colour_features(images: np.ndarray) -> np.ndarray:
    """Normalised 4x4x4 RGB histograms plus the mean colour: float[N, 67]."""
    q = (images.reshape(len(images), -1, 3) // 64).astype(np.int64)
    codes = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    hist = np.stack([np.bincount(c, minlength=64) for c in codes]).astype(np.float64)
    hist /= hist.sum(1, keepdims=True)
    return np.concatenate([hist, images.reshape(len(images), -1, 3).mean(1) / 255.0], 1)


def class_accuracy(model, base, per_class: int) -> dict:
    """Toy quality of the trained model: a nearest-centroid colour classifier fitted on real crops of each training
    photograph labels native-size samples; compared with fresh real crops (the classifier's own ceiling)."""
    from qrjax.data import image_source

    source = image_source(None, "train")
    n = model.config.num_classes
    rng = np.random.default_rng(5)
    feats, labels = [], []
    for _ in range(8):
        crops, idx = source.sample(rng, model.config.image_size, 64, area=model.config.crop_area, return_index=True)
        feats.append(colour_features(crops))
        labels.append(idx)
    feats, labels = np.concatenate(feats), np.concatenate(labels)
    centroids = np.stack([feats[labels == c].mean(0) for c in range(n)])

    def predict(images):
        f = colour_features(images)
        return np.argmin(((f[:, None] - centroids[None]) ** 2).sum(-1), 1)

    real, real_idx = source.sample(np.random.default_rng(6), model.config.image_size, per_class * n,
                                   area=model.config.crop_area, return_index=True)
    want = np.repeat(np.arange(n), per_class)
    lab = jnp.asarray(want, jnp.int32)
    s = model.config.latent_size
    lat = sample(model.config, model.params, jax.random.key(11), lab, shape=(s, s, model.config.channels),
                 steps=base.steps)
    generated = sg.to_uint8(model, lat)
    return {"samples_per_class": per_class, "chance": 1.0 / n,
            "generated_accuracy": float(np.mean(predict(generated) == want)),
            "real_crop_accuracy": float(np.mean(predict(real) == real_idx))}


def model_flops(model, shape) -> float:
    """XLA FLOPs of one model call on a [1, *shape] latent."""
    v = velocity_fn(model.config, model.params, jnp.zeros((1,), jnp.int32) if model.config.num_classes else None)
    return bench.program_flops(jax.jit(v).lower(jnp.zeros((1, *shape)), jnp.float32(0.5)).compile())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cpu")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--restart", type=int, default=2)
    p.add_argument("--label", type=int, nargs="+", default=None, help="classes of the sweep's images (default: 4)")
    p.add_argument("--seeds", type=int, default=4, help="images per setting in the cache sweep")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
    p.add_argument("--alpha-off", action="store_true", help="also run the sweep without region-aware thresholds")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--max-batch", type=int, nargs="+", default=[1, 4, 16], help="tiles per model call to measure")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sweep-rounds", type=int, default=5, help="interleaved timing rounds per image in the sweep")
    p.add_argument("--per-class", type=int, default=16, help="native samples per class for the toy quality check")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.thresholds = [0.0] + [t for t in args.thresholds if t != 0.0]  # the uncached run is the reference
    args.devices = [1] + [d for d in args.devices if d != 1]  # and so is one device

    model = load(args.model)
    mc = model.config
    labels = args.label or [i % max(mc.num_classes, 1) for i in (0, 3, 7, 10)][:max(1, args.seeds)]
    base = SuperGenConfig(steps=args.steps, restart_step=args.restart)
    s, f = mc.latent_size, model.autoencoder.factor
    payload = {"machine": bench.machine_info(), "model": args.model, "native_pixels": mc.image_size,
               "latent_tile": [s, s, mc.channels], "config": base.__dict__, "labels": labels}
    if mc.num_classes:
        payload["class_accuracy"] = class_accuracy(model, base, args.per_class)

    def sketch_for(seed, label):
        return sg.sketch(model, base, jax.random.split(jax.random.key(seed))[0], label)

    def run(cfg, scale, seed=0, label=None, devices=1, sketch_latent=None):
        label = labels[0] if label is None else label
        sketch_latent = sketch_for(seed, label) if sketch_latent is None else sketch_latent
        img, stats = sg.generate(model, cfg, scale=scale, label=label, key=jax.random.key(seed), devices=devices,
                                 progress=False, sketch_latent=sketch_latent)
        return img, stats

    def stage2_seconds(out) -> float:  # of run's (image, stats): stage 2 without compilation or the sketch
        return out[1].stage2_seconds

    # 1. memory and time ------------------------------------------------------------------------------------------
    label0 = labels[0]
    lab = jnp.asarray([label0], jnp.int32) if mc.num_classes else None
    # the weights are an argument, as in the stage-2 programs, so both peaks count them
    native_fn = jax.jit(lambda params, key: sample(mc, params, key, lab, shape=(s, s, mc.channels), steps=args.steps))
    native_compiled = native_fn.lower(model.params, jax.random.key(0)).compile()
    bench.block(native_compiled(model.params, jax.random.key(0)))  # warm-up
    native_seconds = bench.seconds(native_compiled, model.params, jax.random.key(0), repeats=args.repeats)
    native_bytes = bench.program_bytes(native_compiled)
    native_temp = bench.program_bytes(native_compiled, temp_only=True)
    tile_flops = model_flops(model, (s, s, mc.channels))
    steps2 = args.steps - args.restart
    memory_rows = [{"scale": 1, "variant": "native (stage 1)", "tokens_per_call": (s // mc.patch) ** 2,
                    "peak_bytes": native_bytes, "peak_vs_native": 1.0, "temp_bytes": native_temp,
                    "temp_vs_native": 1.0, "ms_per_step": 1e3 * native_seconds / args.steps,
                    "model_gflop": tile_flops * args.steps / 1e9}]
    sketch0 = sketch_for(0, label0)
    images = {"sketch": sg.to_uint8(model, sketch0)[0]}
    for scale in tqdm(args.scales, desc="memory/time"):
        variants = dict([("untiled", base.replace(tiling="none"))] +
                        [(f"tiled, {b} tile(s)/call", base.replace(max_batch=b)) for b in args.max_batch] +
                        [("tiled + cache, 1 tile/call", base.replace(cache_threshold=0.4))])
        timed = bench.interleaved({name: partial(run, cfg, scale, sketch_latent=sketch0)
                                   for name, cfg in variants.items()}, rounds=args.repeats, seconds=stage2_seconds)
        for name, cfg in variants.items():
            img, stats = timed.results[name]
            calls = 1 if cfg.tiling == "none" else scale * scale
            flops = model_flops(model, (scale * s, scale * s, mc.channels)) if cfg.tiling == "none" else tile_flops
            tokens = (scale * s // mc.patch) ** 2 if cfg.tiling == "none" else \
                (s // mc.patch) ** 2 * min(cfg.max_batch, calls)
            memory_rows.append({"scale": scale, "variant": name, "tokens_per_call": tokens,
                                "peak_bytes": stats.peak_bytes, "peak_vs_native": stats.peak_bytes / native_bytes,
                                "temp_bytes": stats.peak_temp_bytes, "temp_vs_native": stats.peak_temp_bytes / native_temp,
                                "ms_per_step": 1e3 * timed.median(name) / steps2,
                                "model_gflop": flops * calls * steps2 / 1e9})
            images[f"{scale}x {name}"] = img
    payload["memory"] = memory_rows

    # 2. seams ------------------------------------------------------------------------------------------------------
    top = max(args.scales)
    sketches = [(seed, lb, sketch_for(seed, lb)) for seed, lb in enumerate(labels)]
    seam_rows = []
    period = mc.image_size
    for name, cfg in (("fixed grid", base.replace(shift_divisions=0)), ("shifted (SuperGen)", base),
                      ("blended (MultiDiffusion)", base.replace(tiling="blended")), ("untiled", base.replace(
                          tiling="none"))):
        layout = sg.make_layout(cfg, top * s, top * s, s)
        moves = steps2 - 1
        own = {"shifted": (period, ((moves * layout.shift[0] * f) % period, (moves * layout.shift[1] * f) % period)),
               "blended": (layout.stride * f, (0, 0)), "none": (period, (0, 0))}[cfg.tiling]
        ratios_own, ratios_fixed = [], []
        for seed, lb, sk in sketches:  # one image's handful of border lines is noisy: the mean over the images
            img, _ = run(cfg, top, seed, lb, sketch_latent=sk)
            ratios_own.append(seam_ratio(img, own[0], own[1], f))
            ratios_fixed.append(seam_ratio(img, period, phase=f))
            if seed == 0:
                images[f"{top}x {name}"] = img
        seam_rows.append({"variant": name, "seam_ratio_own_borders": float(np.mean(ratios_own)),
                          "own_border_period_px": own[0], "seam_ratio_fixed_grid": float(np.mean(ratios_fixed)),
                          "per_image_own": ratios_own})
    payload["seams"] = seam_rows

    # 3. cache sweep: per image, every setting runs once per round (interleaved), after a warm-up round -----------
    settings = [(alpha, thr) for alpha in [base.region_alpha] + ([0.0] if args.alpha_off else [])
                for thr in args.thresholds]
    per = {k: [] for k in settings}
    for seed, lb, sk in tqdm(sketches, desc="cache sweep (images)"):
        fns = {(alpha, thr): partial(run, base.replace(cache_threshold=thr, region_alpha=alpha), top, seed, lb,
                                     sketch_latent=sk) for alpha, thr in settings}
        timed = bench.interleaved(fns, rounds=args.sweep_rounds, seconds=stage2_seconds)
        for alpha, thr in settings:
            img, stats = timed.results[(alpha, thr)]
            ref_img = timed.results[(alpha, 0.0)][0]
            per[(alpha, thr)].append({
                "seconds": timed.median((alpha, thr)),
                "speedup_time": timed.ratio((alpha, 0.0), (alpha, thr)),
                "calls": stats.model_calls - stats.stage1_calls, "executed": stats.executed_tile_forwards,
                "skip_rate": stats.skip_rate, "psnr": float(psnr(img, ref_img, 255.0)),
                "ssim": float(ssim(img, ref_img, 255.0))})
            if seed == 0 and thr > 0:
                images[f"{top}x cache {thr:g} (a={alpha:g})"] = img
    sweep = []
    for (alpha, thr), rows in per.items():
        sweep.append({"threshold": thr, "alpha": alpha,
                      "model_calls": float(np.mean([r["calls"] for r in rows])),
                      "executed_tile_forwards": float(np.mean([r["executed"] for r in rows])),
                      "seconds": float(np.median([r["seconds"] for r in rows])),
                      "speedup_time": float(np.median([r["speedup_time"] for r in rows])),
                      "speedup_time_per_image": [r["speedup_time"] for r in rows],
                      "skip_rate": float(np.mean([r["skip_rate"] for r in rows])),
                      "psnr_mean": float(np.mean([r["psnr"] for r in rows])),
                      "psnr_min": float(np.min([r["psnr"] for r in rows])),
                      "ssim_mean": float(np.mean([r["ssim"] for r in rows]))})
    for row in sweep:
        ref = next(r for r in sweep if r["threshold"] == 0.0 and r["alpha"] == row["alpha"])
        row["speedup_calls"] = ref["model_calls"] / row["model_calls"]
        row["speedup_executed"] = ref["executed_tile_forwards"] / row["executed_tile_forwards"]
    payload["cache_sweep"] = sweep

    # 4. tile parallelism ----------------------------------------------------------------------------------------
    par = []
    thr_par = 0.4 if 0.4 in args.thresholds else next((t for t in args.thresholds if t > 0), 0.0)
    for thr in sorted({0.0, thr_par}):
        one = None
        for d in tqdm(args.devices, desc=f"devices (cache {thr:g})"):
            cfg = base.replace(cache_threshold=thr)
            try:
                timed = bench.interleaved({d: lambda: sg.generate(
                    model, cfg, scale=top, label=label0, key=jax.random.key(0), devices=d, progress=False,
                    sketch_latent=sketch0, return_latent=True)[1:]}, rounds=args.repeats,
                                          seconds=lambda out: out[0].stage2_seconds)
                stats, latent = timed.results[d]
            except ValueError as err:
                par.append({"devices": d, "cache_threshold": thr, "error": str(err)})
                continue
            latent = np.asarray(latent)
            one = latent if one is None else one
            canvas_bytes = latent.size * 4
            par.append({"devices": d, "cache_threshold": thr, "mesh": list(stats.mesh_shape),
                        "stage2_seconds": timed.median(d),
                        "executed_tile_forwards": stats.executed_tile_forwards, "max_abs_diff_vs_1": float(np.abs(latent - one).max()),
                        "bit_identical": bool(np.array_equal(latent, one)),
                        "latent_bytes_per_step": stats.latent_bytes_exchanged_per_step,
                        "all_bytes_per_step": stats.bytes_exchanged_per_step,
                        "moved_strip_bytes": stats.moved_strip_bytes_per_step,
                        "moved_state_strip_bytes": stats.moved_state_strip_bytes_per_step,
                        "allgather_bytes": canvas_bytes * (d - 1)})
    payload["parallel"] = par

    write(payload, images, args.out, top)
    return 0


def write(payload, images, out: Path, top: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = payload["machine"]
    md = [f"# SuperGen tiling, cache and tile parallelism\n",
          f"Machine: {m['processor']}, {m['cpu_count']} cores, jax {m['jax']} ({m['backend']}); command "
          f"`{m['command']}`; model `{payload['model']}` (native {payload['native_pixels']} px, latent tile "
          f"{payload['latent_tile']}); {payload['config']['steps']} steps, stage 2 from step "
          f"{payload['config']['restart_step']}.\n",
          *([f"Toy quality of the model (nearest-centroid colour classifier fitted on real crops of the "
             f"{round(1 / payload['class_accuracy']['chance'])} training photographs): native samples classified as their class "
             f"{payload['class_accuracy']['generated_accuracy']:.0%} of the time, fresh real crops "
             f"{payload['class_accuracy']['real_crop_accuracy']:.0%}, chance {payload['class_accuracy']['chance']:.0%} "
             f"({payload['class_accuracy']['samples_per_class']} per class).\n"] if "class_accuracy" in payload else []),
          "## Memory and time (stage 2 from the same sketch; peak = XLA's accounting of the largest program)\n",
          bench.markdown_table(["scale", "variant", "tokens/call", "peak bytes (weights incl.)", "x native",
                                "activations + scratch", "x native", "ms per step", "model GFLOP (all steps)"],
                               [[r["scale"], r["variant"], r["tokens_per_call"], r["peak_bytes"], r["peak_vs_native"],
                                 r["temp_bytes"], r["temp_vs_native"], r["ms_per_step"], r["model_gflop"]]
                                for r in payload["memory"]]),
          f"\n## Seams at {top}x (gradient energy across tile-border lines / across other lines between latent "
          f"pixels, mean over the {len(payload['labels'])} images; 1 = no seam; the untiled row is the noise floor)\n",
          bench.markdown_table(["variant", "at its own last-step borders", "border period (px)",
                                "at the native grid's borders"],
                               [[r["variant"], r["seam_ratio_own_borders"], r["own_border_period_px"],
                                 r["seam_ratio_fixed_grid"]] for r in payload["seams"]]),
          f"\n## Cache sweep at {top}x ({len(payload['labels'])} images; PSNR/SSIM against the uncached output; "
          f"time speedup: per image the median over interleaved rounds of the per-round ratio, then the median "
          f"over images)\n",
          bench.markdown_table(["threshold", "alpha", "model calls", "speedup (calls)", "speedup (tiles run)",
                                "stage-2 seconds", "speedup (time)", "skip rate", "PSNR mean", "PSNR min",
                                "SSIM mean"],
                               [[r["threshold"], r["alpha"], r["model_calls"], r["speedup_calls"],
                                 r["speedup_executed"], r["seconds"], r["speedup_time"], r["skip_rate"],
                                 r["psnr_mean"], r["psnr_min"], r["ssim_mean"]] for r in payload["cache_sweep"]]),
          f"\n## Tile parallelism at {top}x (simulated CPU devices on 2 cores: bytes, not speed; one tile per model "
          f"call)\n",
          bench.markdown_table(["devices", "cache", "mesh", "bit-identical to 1", "max |diff|",
                                "canvas bytes sent/step", "canvas strips the shift moves",
                                "canvas + cache maps sent/step", "their strips the shift moves",
                                "canvas all-gather would send"],
                               [[r["devices"], r["cache_threshold"], r.get("mesh", "-"), r.get("bit_identical", "-"),
                                 r.get("max_abs_diff_vs_1", "-"), r.get("latent_bytes_per_step", "-"),
                                 r.get("moved_strip_bytes", "-"), r.get("all_bytes_per_step", "-"),
                                 r.get("moved_state_strip_bytes", "-"), r.get("allgather_bytes", r.get("error", "-"))]
                                for r in payload["parallel"]])]
    bench.write_results(out, "supergen_tiling", payload, "\n".join(md))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    mem = [r for r in payload["memory"] if r["scale"] > 1]
    for variant in dict.fromkeys(r["variant"] for r in mem):
        rows = [r for r in mem if r["variant"] == variant]
        axes[0].plot([r["scale"] for r in rows], [r["peak_vs_native"] for r in rows], "o-", label=f"{variant}: total")
        axes[0].plot([r["scale"] for r in rows], [r["temp_vs_native"] for r in rows], "x:",
                     label=f"{variant}: activations")
    axes[0].axhline(1.5, color="grey", ls="--", lw=1, label="target 1.5x")
    axes[0].set(xlabel="scale per side", ylabel="peak bytes / native generation", yscale="log",
                title="Stage-2 peak memory")
    axes[0].legend(fontsize=8)
    for alpha in dict.fromkeys(r["alpha"] for r in payload["cache_sweep"]):
        rows = [r for r in payload["cache_sweep"] if r["alpha"] == alpha]
        axes[1].plot([r["speedup_time"] for r in rows], [min(r["psnr_mean"], 60) for r in rows], "o-",
                     label=f"alpha {alpha:g}")
        for r in rows:
            axes[1].annotate(f"{r['threshold']:g}", (r["speedup_time"], min(r["psnr_mean"], 60)), fontsize=7)
    axes[1].axhline(30, color="grey", ls="--", lw=1)
    axes[1].axvline(1.36, color="grey", ls=":", lw=1)
    axes[1].set(xlabel="speedup (wall time, stage 2)", ylabel="PSNR vs uncached (dB, capped at 60)",
                title=f"Cache threshold sweep at {top}x")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "supergen_tiling.png", dpi=120)
    plt.close(fig)

    names = list(images)
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, name in zip(np.ravel(axes), names):
        ax.imshow(images[name], interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "supergen_examples.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
