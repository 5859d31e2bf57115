"""FastCLIP and DRRho-CLIP on the synthetic captioned scenes: the losses against OpenCLIP's, the reference model's
data efficiency on noisy captions, and the two gradient reductions' bytes and time, in one run.

    python experiments/clip_training.py                                  # all three parts (about an hour on 2 cores)
    python experiments/clip_training.py --parts a --seeds 0,1,2           # one part
    python experiments/clip_training.py --preset tiny --samples 64 --batches 8,16 --seeds 0 --ref-steps 2 \\
        --target-steps 4 --eval-every 2 --rounds 1                       # smoke test

Writes experiments/results/clip_training.{json,md} and clip_training_{losses,drrho}.png.

(a) Losses: OpenCLIP's mini-batch loss and FastCLIP v0-v3 at global batch 32 / 128 / 512, every run seeing the same
number of samples (so the small batches take more steps), several seeds: the GCL objective at tau = 0.1 over 1,024
training pairs (one yardstick for every loss; lower is better), zero-shot top-1 on the held-out colour-shape pairs,
retrieval R@1 (mean of both directions) and hard-negative accuracy. Per-variant knobs are FastCLIP's medium (CC3M)
ones: v2 lr_tau 0.0133, tau init 0.03, rho 7; v3 lr_tau 2e-4, rho 6.5; v0 lr_tau = lr; v1 tau 0.07.
(b) DRRho: a reference trained (FastCLIP v3) on a small clean subset; targets trained on the noisy set (a fraction
of captions swapped for other samples'): DRRho-CLIP (tau 0.01, gamma 1, eps 1e-4), the same GCL without the
reference (FastCLIP v1 with DRRho's recipe), FastCLIP v3, and the JEST-style baseline (OpenCLIP's loss on the top
20 % of a 5x super-batch by learnability against the same reference); zero-shot and retrieval against samples seen,
and the samples DRRho needs to reach each baseline's final zero-shot accuracy.
(c) Reductions: FastCLIP's (all-gather without gradient, two blocks) against OpenCLIP's (all-gather with gradient)
on 8 simulated devices: collective bytes per step and device read from the compiled programs, and step time
(interleaved rounds, medians). On CPU the devices share one host's memory: the time measures the programs, not a
network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from qrjax import bench

FASTCLIP = ("openclip", "fastclip-v0", "fastclip-v1", "fastclip-v2", "fastclip-v3")
KNOBS = {"openclip": {}, "fastclip-v0": {}, "fastclip-v1": {"temperature": 0.07},
         "fastclip-v2": {"lr_tau": 0.0133, "temperature": 0.03, "rho": 7.0},
         "fastclip-v3": {"lr_tau": 2e-4, "rho": 6.5}}
# a smaller model than the cpu preset's (the shipped model), so that the part (a) grid fits in minutes
EXPERIMENT = {"num_samples": 4096, "image_width": 64, "image_depth": 2, "text_width": 64, "text_depth": 1,
              "embed_dim": 32, "log_every": 10, "checkpoint_every": 1_000_000, "eval_every": 0}
METRICS = ("objective", "zero_shot_top1", "retrieval_r1", "hard_negative_accuracy", "seconds")


def _config(preset: str, changes: dict):
    from qrjax.clip.config import get_config

    return get_config(preset, {**(EXPERIMENT if preset != "tiny" else {"log_every": 2}), **changes})


def _train(config, root: Path, name: str, **kwargs) -> tuple[dict, list[dict]]:
    from qrjax.clip.train import train_and_evaluate
    from qrjax.train import read_metrics

    workdir = root / name
    summary = train_and_evaluate(config, workdir, progress=False, **kwargs)
    summary["retrieval_r1"] = 0.5 * (summary["retrieval_r1_i2t"] + summary["retrieval_r1_t2i"])
    evals = [r for r in read_metrics(workdir / "metrics.jsonl") if r.get("split") == "eval"]
    return summary, evals


def part_losses(args, root: Path) -> dict:
    runs = []
    grid = [(b, loss, seed) for b in args.batches for loss in args.losses for seed in args.seeds]
    for batch, loss, seed in tqdm(grid, desc="(a) losses x batch x seed"):
        steps = max(1, args.samples // batch)
        config = _config(args.preset, {"loss": loss, "batch_size": batch, "steps": steps, "seed": seed,
                                       "warmup_steps": max(1, steps // 10), **KNOBS[loss]})
        summary, _ = _train(config, root, f"a_{loss}_{batch}_{seed}", devices=1)
        runs.append({"loss": loss, "batch": batch, "seed": seed, "steps": steps,
                     **{k: summary[k] for k in METRICS}, "tau": summary["tau"]})
    table = []
    for batch in args.batches:
        for loss in args.losses:
            rows = [r for r in runs if r["batch"] == batch and r["loss"] == loss]
            table.append({"batch": batch, "loss": loss, "n": len(rows),
                          **{f"{k}_mean": float(np.mean([r[k] for r in rows])) for k in METRICS},
                          **{f"{k}_std": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0
                             for k in METRICS}})
    wins = {}
    for batch in args.batches:
        rows = {t["loss"]: t for t in table if t["batch"] == batch}
        wins[str(batch)] = {"objective": min(rows, key=lambda k: rows[k]["objective_mean"]),
                            "zero_shot_top1": max(rows, key=lambda k: rows[k]["zero_shot_top1_mean"]),
                            "retrieval_r1": max(rows, key=lambda k: rows[k]["retrieval_r1_mean"])}
    return {"runs": runs, "table": table, "best": wins, "samples": args.samples}


def part_drrho(args, root: Path) -> dict:
    from qrjax.clip.export import load_model

    ref_config = _config(args.preset, {"loss": "fastclip-v3", "num_samples": args.ref_samples, "noise": 0.0,
                                       "steps": args.ref_steps, "batch_size": args.drrho_batch, "seed": 100,
                                       "warmup_steps": max(1, args.ref_steps // 10), **KNOBS["fastclip-v3"]})
    ref_summary, _ = _train(ref_config, root, "b_reference", devices=1)
    ref = load_model(root / "b_reference" / "model")
    base = {"noise": args.noise, "steps": args.target_steps, "batch_size": args.drrho_batch, "seed": 0,
            "eval_every": args.eval_every, "warmup_steps": max(1, args.target_steps // 10)}
    variants = {
        "DRRho-CLIP": ({"loss": "drrho"}, True),
        "no reference (GCL, DRRho's recipe)": ({"loss": "fastclip-v1", "temperature": 0.01, "eps": 1e-4,
                                                "gamma_rule": "constant", "gamma_min": 1.0}, False),
        "FastCLIP v3": ({"loss": "fastclip-v3", **KNOBS["fastclip-v3"]}, False),
        "JEST-style selection (top 20 %)": ({"loss": "openclip", "jest_keep": 0.2}, True),
    }
    if args.variants:
        variants = {k: v for k, v in variants.items() if k == "DRRho-CLIP" or k.split()[0] in args.variants}
    out = {}
    for name, (changes, uses_ref) in tqdm(variants.items(), desc="(b) drrho"):
        config = _config(args.preset, {**base, **changes})
        summary, evals = _train(config, root, "b_" + name.split()[0].lower().replace("-", "_"), devices=1,
                                ref=ref if uses_ref else None, ref_name="reference" if uses_ref else None)
        curve = [{"samples": r["step"] * config.batch_size, "zero_shot_top1": r["zero_shot_top1"],
                  "retrieval_r1": 0.5 * (r["retrieval_r1_i2t"] + r["retrieval_r1_t2i"])} for r in evals]
        out[name] = {"summary": {k: summary.get(k) for k in (*METRICS, "samples_seen", "samples_scored",
                                                             "noisy_weight_share", "noisy_fraction", "batch_noisy_fraction",
                                                             "tau")},
                     "curve": curve}
    drrho = out["DRRho-CLIP"]["curve"]
    efficiency = {}
    for name, run in out.items():
        if name == "DRRho-CLIP":
            continue
        target = run["curve"][-1]["zero_shot_top1"]
        reached = next((p["samples"] for p in drrho if p["zero_shot_top1"] >= target), None)
        total = run["curve"][-1]["samples"]
        efficiency[name] = {"baseline_final_zero_shot": target, "baseline_samples": total,
                            "drrho_samples_to_reach": reached,
                            "fraction": None if reached is None else reached / total}
    return {"reference": {k: ref_summary[k] for k in METRICS} | {"samples": args.ref_samples,
                                                                "steps": args.ref_steps},
            "noise": args.noise, "runs": out, "data_efficiency": efficiency}


def part_reduction(args) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from qrjax.clip import data as cdata
    from qrjax.clip import sharded
    from qrjax.clip.tokenizer import synthetic_tokenizer
    from qrjax.clip.train import encode_fn, make_state, make_train_step
    from qrjax.parallel import make_mesh

    mesh = make_mesh((8,), (sharded.AXIS,), devices=jax.devices()[:8])
    out = []
    for batch in args.reduction_batches:
        config = _config(args.preset, {"loss": "fastclip-v3", "batch_size": batch})
        source = cdata.SyntheticScenes(config.num_samples, config.image_size, seed=0)
        idx = cdata.batch_indices(0, batch, source.size, 0)
        host = {"image": source.images(idx), "text": synthetic_tokenizer().encode(source.captions(idx),
                                                                                 config.context_length),
                "index": idx}
        placed = {k: jax.device_put(v, NamedSharding(mesh, P(sharded.AXIS))) for k, v in host.items()}
        state = jax.device_put(make_state(config, source.size), NamedSharding(mesh, P()))
        fns, moved = {}, {}
        for reduction in ("fastclip", "openclip"):
            step = make_train_step(config, encode_fn(config), mesh, reduction=reduction)
            grads = jax.jit(sharded.make_grads(config, encode_fn(config), mesh, reduction=reduction))
            compiled = grads.lower(state.params, state.tables, state.temp, placed, 1.0, 0, 0.0, None).compile()
            moved[reduction] = bench.collective_bytes(compiled)
            fns[reduction] = (lambda step=step: step(state, dict(placed))[1]["loss"])
        timings = bench.interleaved(fns, rounds=args.rounds, warmup=1)
        k = 8

        def ring(c):  # bytes a ring moves per device for each collective
            return (c.get("all-gather", 0) * (k - 1) / k + c.get("all-reduce", 0) * 2 * (k - 1) / k
                    + c.get("reduce-scatter", 0) * (k - 1))

        out.append({"batch": batch, "devices": k, "collectives": moved,
                    "ring_bytes": {r: ring(c) for r, c in moved.items()},
                    "bytes_ratio_openclip_over_fastclip": ring(moved["openclip"]) / ring(moved["fastclip"]),
                    "step_seconds": {r: timings.median(r) for r in fns},
                    "time_ratio_openclip_over_fastclip": timings.ratio("openclip", "fastclip")})
    return {"runs": out}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c", help="which parts: a (losses), b (drrho), c (reductions)")
    ap.add_argument("--preset", default="cpu", help="the base preset (the experiment shrinks cpu's towers)")
    ap.add_argument("--batches", default="32,128,512", help="(a) global batch sizes")
    ap.add_argument("--seeds", default="0,1", help="(a) seeds")
    ap.add_argument("--losses", default=",".join(FASTCLIP), help="(a) losses")
    ap.add_argument("--variants", default=None,
                    help="(b) baselines by first word (no, FastCLIP, JEST-style; default all): DRRho always runs")
    ap.add_argument("--samples", type=int, default=32768, help="(a) samples every run sees")
    ap.add_argument("--noise", type=float, default=0.4, help="(b) fraction of mismatched captions")
    ap.add_argument("--ref-samples", type=int, default=1024, help="(b) the reference's clean subset")
    ap.add_argument("--ref-steps", type=int, default=400)
    ap.add_argument("--target-steps", type=int, default=1200)
    ap.add_argument("--drrho-batch", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--reduction-batches", default="128,512", help="(c) global batch sizes")
    ap.add_argument("--rounds", type=int, default=10, help="(c) timing rounds")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs' workdirs here (default: temporary)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.losses = [loss.strip() for loss in args.losses.split(",")]
    if not set(args.losses) <= set(FASTCLIP):
        ap.error(f"--losses {args.losses}: choose from {FASTCLIP}")
    args.variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    args.reduction_batches = [int(b) for b in args.reduction_batches.split(",")]
    parts = {p.strip() for p in args.parts.split(",")}
    if not parts <= {"a", "b", "c"}:
        ap.error(f"--parts {args.parts}: choose from a, b, c")

    from qrjax.parallel import use_cpu_devices

    use_cpu_devices(8)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="clip_training_"))
    payload = {"machine": bench.machine_info(), "preset": args.preset,
               "experiment_overrides": EXPERIMENT if args.preset != "tiny" else {}}
    try:
        if "a" in parts:
            payload["losses"] = part_losses(args, root)
        if "b" in parts:
            payload["drrho"] = part_drrho(args, root)
        if "c" in parts:
            payload["reduction"] = part_reduction(args)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    path = args.out / "clip_training.json"
    if path.exists() and parts != {"a", "b", "c"}:  # a partial run keeps the other parts' last results
        previous = json.loads(path.read_text())
        payload = {**{k: v for k, v in previous.items() if k in ("losses", "drrho", "reduction")}, **payload}
    bench.write_results(args.out, "clip_training", payload, markdown(payload))
    plot(payload, args.out)
    summary = {"drrho_data_efficiency": {k: v["fraction"] for k, v in
                                         payload.get("drrho", {}).get("data_efficiency", {}).items()},
               "reduction_bytes_ratio": [r["bytes_ratio_openclip_over_fastclip"]
                                         for r in payload.get("reduction", {}).get("runs", [])]}
    print(json.dumps(summary))
    return payload


def markdown(p: dict) -> str:
    m = p["machine"]
    md = ["# CLIP training: FastCLIP v0-v3, OpenCLIP, DRRho-CLIP on the synthetic captioned scenes", "",
          f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['backend']} (jax {m['jax']}); command: "
          f"`{m['command']}`. Preset {p['preset']} with {p['experiment_overrides']}.", ""]
    if "losses" in p:
        a = p["losses"]
        md += [f"## (a) Losses at equal samples seen ({a['samples']} per run)", "",
               "Objective: GCL at tau 0.1 over 1,024 training pairs (lower is better); mean +- std over seeds.", "",
               bench.markdown_table(
                   ["batch", "loss", "seeds", "objective", "zero-shot top-1", "retrieval R@1", "hard-neg acc",
                    "seconds"],
                   [[t["batch"], t["loss"], t["n"]] + [f"{t[k + '_mean']:.4f} +- {t[k + '_std']:.4f}" for k in
                                                       METRICS[:4]] + [f"{t['seconds_mean']:.1f}"]
                    for t in a["table"]]), "",
               "Best per batch: " + "; ".join(f"B={b}: objective {w['objective']}, zero-shot {w['zero_shot_top1']}, "
                                              f"retrieval {w['retrieval_r1']}" for b, w in a["best"].items()), ""]
    if "drrho" in p:
        b = p["drrho"]
        md += [f"## (b) DRRho-CLIP on noisy captions ({b['noise']:.0%} mismatched)", "",
               f"Reference: FastCLIP v3 on {b['reference']['samples']} clean pairs, {b['reference']['steps']} steps: "
               f"zero-shot {b['reference']['zero_shot_top1']:.3f}, retrieval R@1 "
               f"{b['reference']['retrieval_r1']:.3f}.", "",
               bench.markdown_table(
                   ["run", "zero-shot top-1", "retrieval R@1", "hard-neg acc", "objective", "samples seen",
                    "samples scored", "anchor weight on noisy pairs", "seconds"],
                   [[k, r["summary"]["zero_shot_top1"], r["summary"]["retrieval_r1"],
                     r["summary"]["hard_negative_accuracy"], r["summary"]["objective"], r["summary"]["samples_seen"],
                     r["summary"]["samples_scored"],
                     f"{r['summary']['noisy_weight_share']:.3f} (noisy fraction {r['summary']['noisy_fraction']:.3f})"
                     if r["summary"].get("noisy_weight_share") is not None else "-", r["summary"]["seconds"]]
                    for k, r in b["runs"].items()]), "",
               "Data efficiency: samples DRRho-CLIP needs to reach each baseline's final zero-shot accuracy:", "",
               bench.markdown_table(["baseline", "its final zero-shot", "its samples", "DRRho's samples", "fraction"],
                                    [[k, e["baseline_final_zero_shot"], e["baseline_samples"],
                                      e["drrho_samples_to_reach"] if e["drrho_samples_to_reach"] else "not reached",
                                      f"{e['fraction']:.3f}" if e["fraction"] is not None else "-"]
                                     for k, e in b["data_efficiency"].items()]), ""]
    if "reduction" in p:
        md += ["## (c) Gradient reductions on 8 simulated devices", "",
               bench.markdown_table(
                   ["batch", "FastCLIP collectives (bytes/device)", "OpenCLIP collectives (bytes/device)",
                    "ring bytes ratio OpenCLIP/FastCLIP", "step s FastCLIP", "step s OpenCLIP",
                    "time ratio OpenCLIP/FastCLIP"],
                   [[r["batch"], r["collectives"]["fastclip"], r["collectives"]["openclip"],
                     r["bytes_ratio_openclip_over_fastclip"], r["step_seconds"]["fastclip"],
                     r["step_seconds"]["openclip"], r["time_ratio_openclip_over_fastclip"]]
                    for r in p["reduction"]["runs"]]), ""]
    return "\n".join(md)


def plot(p: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "losses" in p:
        table = p["losses"]["table"]
        batches = sorted({t["batch"] for t in table})
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        losses = list(dict.fromkeys(t["loss"] for t in table))
        width = 0.8 / len(losses)
        for ax, key, title in zip(axes, ("objective", "zero_shot_top1", "retrieval_r1"),
                                  ("GCL objective at tau 0.1 (lower is better)", "zero-shot top-1",
                                   "retrieval R@1")):
            for i, loss in enumerate(losses):
                rows = [next(t for t in table if t["batch"] == b and t["loss"] == loss) for b in batches]
                ax.bar(np.arange(len(batches)) + i * width, [r[key + "_mean"] for r in rows], width,
                       yerr=[r[key + "_std"] for r in rows], label=loss, capsize=2)
            ax.set_xticks(np.arange(len(batches)) + width * (len(losses) - 1) / 2, [f"B={b}" for b in batches])
            ax.set_title(title, fontsize=9)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "clip_training_losses.png", dpi=110)
        plt.close(fig)
    if "drrho" in p:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name, run in p["drrho"]["runs"].items():
            xs = [c["samples"] for c in run["curve"]]
            axes[0].plot(xs, [c["zero_shot_top1"] for c in run["curve"]], marker=".", label=name)
            axes[1].plot(xs, [c["retrieval_r1"] for c in run["curve"]], marker=".", label=name)
        for ax, title in zip(axes, ("zero-shot top-1", "retrieval R@1")):
            ax.set_xlabel("samples seen")
            ax.set_title(f"{title}, {p['drrho']['noise']:.0%} noisy captions", fontsize=9)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "clip_training_drrho.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
