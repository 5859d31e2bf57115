"""ALTO on the shipped backbone: a whole hyperparameter grid on several tasks, tuned as LoRA adapters of one frozen
backbone, five ways in one run, and the grouped LoRA matmul against per-adapter matmuls.

    python experiments/alto_tuning.py                        # the default run: about 20 minutes on 2 CPU cores
    python experiments/alto_tuning.py --steps 100 --eval-every 10                   # a shorter one (about 8)
    python experiments/alto_tuning.py --runs a,b,c --tasks arithmetic,reverse,sort
    python experiments/alto_tuning.py --gpu --runs ""        # the kernel table with the Pallas kernel (one GPU)
    python experiments/alto_tuning.py --tasks arithmetic,reverse --lrs 3e-3,1e-2 --ranks 2 --batches 2,4 \\
        --steps 6 --eval-every 2 --num-train 32 --num-val 8 --slots 4 --d-slots 2 --d-devices 2 --kernel-dim 64 \\
        --kernel-adapters 2,4 --kernel-seqs 1 --kernel-seq-len 16 --rounds 1    # smoke test

Writes experiments/results/alto_tuning.{json,md}, alto_tuning.png and alto_tuning_kernel.png.

Tuning runs (`qrjax.lora.tune.tune`, the same engine each time, TuneConfig preset `--preset` with --steps,
--eval-every, --num-train, --num-val applied; every run trains the same configurations from the same seeds on the
same batches):
(a) one adapter at a time: slots=1, no early exit, one device, a token buffer of one configuration (capacity = the
    grid's largest batch), so each engine step trains one configuration;
(b) all adapters batched: `--slots` slots (capacity = slots x largest batch), no early exit;
(c) batched + ALTO's early exit (underperforming at the 5 % warm-up boundary, divergence, overfitting), freed slots
    back-filled;
(d) (c) + cross-task placement: `--d-devices` simulated devices with `--d-slots` slots each, tasks placed on whole
    devices by CP-SAT (`placement="cp-sat"`). The simulated devices share the host's cores, so (d)'s wall time is
    the sum of every device's work; its engine steps are the makespan a machine with that many real devices would
    take in steps;
(e) (c) with the configurations queued in a seeded random order instead of the grid's (task-major, learning rate
    ascending): the online underperforming rule exits a configuration only when ceil(n/4) of its task's reported
    ones beat it at warm-up, so what it saves depends on the order in which configurations reach warm-up.
Per run: wall time (`seconds` of the engine's summary; before it, unless --no-warmup, a 2-step run of one
configuration per task at the same shapes compiled the run's programs, and its seconds are reported apart), engine
steps, samples trained, exits by reason, each task's best validation loss (min over its configurations), every
configuration's record. The engine's LoRA matmul is TuneConfig.impl ("auto": the per-sequence gather on CPU,
lax.ragged_dot elsewhere).

Noise of a best validation loss: the validation set's standard error (SE) of the mean token loss (a ratio estimator
over the examples' loss sums and completion-token counts), from per-example losses of the exported best adapters;
(c) is "within noise" of (a) when |best(c) - best(a)| <= 2 SE of (a)'s best. The paired SE of the difference (same
examples) is reported too. It measures the finite validation set, not training randomness (the runs share seeds,
batches and initialisations: a configuration that finishes in both (a) and (c) trains identically up to float
rounding, so (c) can only lose to (a) by exiting (a)'s winner or by rounding).

Kernel table: the multi-LoRA term s_i (X_i A_i) B_i for N adapters at a Llama-like layer (d_in = d_out =
--kernel-dim, rank --kernel-rank, --kernel-seqs sequences of --kernel-seq-len tokens per adapter), forward only:
grouped (`lora_delta(impl="ragged")`, lax.ragged_dot) and the per-sequence gather (impl "gather", the engine's CPU
path) against per-adapter ("sequential": a slice and two matmuls per adapter, static group sizes), and the base GEMM
X W of the same tokens for scale; with --gpu also the Pallas grouped matmul. Median over interleaved rounds; a ratio
is the median over rounds of sequential / the variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qrjax import bench

RUNS = {
    "a": "one adapter at a time",
    "b": "batched",
    "c": "batched + early exit",
    "d": "batched + early exit + CP-SAT placement",
    "e": "batched + early exit, queue shuffled",
}
REASONS = ("underperforming", "diverged", "overfit")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def load_backbone(spec: str):
    """(LlamaConfig, params, description) of the backbone the runs tune."""
    from qrjax.lora.backbone import resolve_backbone

    config, params = resolve_backbone(spec)
    return config, params, spec


def run_config(base, run: str, args, max_batch: int):
    """The TuneConfig of run a/b/c/d: the base config with the run's slots, capacity, early exit and devices."""
    if run == "a":
        changes = {"slots": 1, "capacity": max_batch, "early_exit": False, "devices": 1}
    elif run in ("b", "c", "e"):
        changes = {"slots": args.slots, "capacity": args.slots * max_batch, "early_exit": run != "b", "devices": 1}
    else:
        changes = {"slots": args.d_slots, "capacity": args.d_slots * max_batch, "early_exit": True,
                   "devices": args.d_devices}
    return dataclasses.replace(base, **changes)


def read_adapter(directory: Path) -> tuple[dict, int, float]:
    """An adapter `tune` exported (PEFT layout) -> ({layers_i: {group: {proj: {"a": [1, d_in, r], "b": [1, r,
    d_out]}}}}, rank, alpha), the slot axis of one adapter added."""
    import json

    from safetensors.numpy import load_file

    meta = json.loads((directory / "adapter_config.json").read_text())
    tree: dict = {}
    for name, w in load_file(str(directory / "adapter_model.safetensors")).items():
        # base_model.model.model.layers.<i>.<group>.<proj>.lora_<A|B>.weight
        parts = name.split(".")
        i, group, proj, which = int(parts[4]), parts[5], parts[6], parts[7]
        leaf = tree.setdefault(f"layers_{i}", {}).setdefault(group, {}).setdefault(proj, {})
        # A [r, d_in] -> [1, d_in, r]; B [d_out, r] -> [1, r, d_out]
        leaf["a" if which == "lora_A" else "b"] = w.T[None]
    return tree, int(meta["r"]), float(meta["lora_alpha"])


def per_example_val(model_config, params, adapter_dir: Path, val: dict, chunk: int = 64):
    """Per-example (loss sum float64[n], completion tokens float64[n]) of an exported adapter on encoded val arrays."""
    import jax
    import jax.numpy as jnp

    from qrjax.lora.batched import slot_losses
    from qrjax.lora.model import Llama, LoraInputs

    adapter, rank, alpha = read_adapter(adapter_dir)
    model = Llama(model_config)

    @jax.jit
    def losses(inputs, targets, mask):
        n, length = inputs.shape
        lora = LoraInputs(adapter, jnp.array([n * length], jnp.int32), jnp.array([alpha / rank], jnp.float32))
        logits = model.apply({"params": params}, inputs, lora)
        means, count = slot_losses(logits, targets, mask, jnp.ones(n, jnp.int32))  # one "slot" per example
        return means * count, count

    sums, counts = [], []
    for start in range(0, val["inputs"].shape[0], chunk):
        s, c = losses(*(val[k][start:start + chunk] for k in ("inputs", "targets", "mask")))
        sums.append(np.asarray(s, np.float64))
        counts.append(np.asarray(c, np.float64))
    return np.concatenate(sums), np.concatenate(counts)


def ratio_se(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of sum(sums) / sum(counts) over n examples (the linearised ratio estimator)."""
    n = sums.size
    if n < 2:
        return float("nan")
    r = sums.sum() / counts.sum()
    return float(math.sqrt(((sums - r * counts) ** 2).sum() / (n - 1) / n) / counts.mean())


def tuning_runs(args, root: Path, backbone) -> dict:
    from qrjax.lora.config import get_tune_config
    from qrjax.lora.tasks import Grid, make_task
    from qrjax.lora.train import tune

    model_config, params, _ = backbone
    base = get_tune_config(args.preset, args.set)
    changes = {k: v for k, v in (("steps", args.steps), ("eval_every", args.eval_every),
                                 ("num_train", args.num_train), ("num_val", args.num_val)) if v}
    base = dataclasses.replace(base, seed=args.seed, **changes)
    grid = Grid.product(args.lrs, args.ranks, args.batches)
    points = grid.configs(args.tasks)
    tasks = {t: make_task(t, num_train=base.num_train, num_val=base.num_val, seed=args.seed) for t in args.tasks}
    max_batch = max(args.batches)
    runs = {}
    for run in args.runs:
        config = run_config(base, run, args, max_batch)
        placement = "cp-sat" if run == "d" else "queue"
        warm = None
        if args.warmup:
            # compile the run's programs first (train, eval and reset at its shapes; make_steps caches them), so that
            # the timed run measures training, and the runs compare alike whatever they share with earlier ones
            warm_config = dataclasses.replace(config, steps=2, eval_every=1)
            warm_points = [next(p for p in points if p.task == t) for t in args.tasks]
            warm = tune((model_config, params), tasks, warm_points, warm_config, root / f"{run}-warmup",
                        placement=placement, progress=False, export=False)["seconds"]
        order = points
        if run == "e":  # the same configurations (same indices, hence seeds and batches), admitted in another order
            order = [points[i] for i in np.random.default_rng(args.seed).permutation(len(points))]
        summary = tune((model_config, params), tasks, order, config, root / run, placement=placement,
                       progress=not args.quiet, export=True)
        runs[run] = {"name": RUNS[run], "config": dataclasses.asdict(config), "warmup_seconds": warm,
                     "load_average_after": list(os.getloadavg()), **summary}
    out = {"tune_config": dataclasses.asdict(base), "grid": [list(p) for p in grid.points],
           "configurations": len(points), "tasks": {t: {"seq_len": task.seq_len, "train": len(task.train),
                                                      "val": len(task.val)} for t, task in tasks.items()},
           "runs": runs}
    a = runs.get("a")
    if a:
        out["ratios_vs_a"] = {r: {"wall": a["seconds"] / v["seconds"], "engine_steps": a["engine_steps"] /
                                  v["engine_steps"], "samples": v["samples"] / a["samples"]}
                              for r, v in runs.items()}
    # noise of the best val losses: per-example losses of the exported best adapters of (a) and (c)
    if "a" in runs and "c" in runs:
        seq_len = max(t.seq_len for t in tasks.values())  # the engine encodes every task at the longest seq_len
        noise = {}
        for t, task in tasks.items():
            val = task.encode("val", seq_len)
            per = {}
            for run in ("a", "c"):
                best = runs[run]["best"][t]
                sums, counts = per_example_val(model_config, params, root / run / "adapters" / f"{t}-{best['index']}",
                                               val)
                per[run] = (sums, counts, best)
            (sa, ca, ba), (sc, cc, bc) = per["a"], per["c"]
            diff = sc.sum() / cc.sum() - sa.sum() / ca.sum()
            se_diff = ratio_se(sc - sa, ca)  # same examples, same completion tokens
            noise[t] = {"best_a": ba["best_val_loss"], "index_a": ba["index"], "best_c": bc["best_val_loss"],
                        "index_c": bc["index"], "se_a": ratio_se(sa, ca), "se_c": ratio_se(sc, cc),
                        "diff_c_minus_a": diff, "se_diff": se_diff,
                        "within_noise": bool(abs(diff) <= 2 * ratio_se(sa, ca)),
                        "recomputed_a": float(sa.sum() / ca.sum()), "recomputed_c": float(sc.sum() / cc.sum()),
                        "val_examples": int(sa.size)}
            if "b" in runs:
                bb = runs["b"]["best"][t]["best_val_loss"]
                noise[t].update(best_b=bb, diff_b_minus_a=bb - ba["best_val_loss"],
                                diff_c_minus_b=bc["best_val_loss"] - bb)
        out["noise"] = noise
    if "a" in runs and "b" in runs:
        # (a) and (b) train every configuration identically up to float rounding (one slot vs eight in a program):
        # how far their best validation losses drift apart is the training's sensitivity to rounding
        ref = {(c["task"], c["index"]): c["best_val_loss"] for c in runs["a"]["configs"]}
        spread = {}
        for c in runs["b"]["configs"]:
            spread.setdefault(c["lr"], []).append(abs(c["best_val_loss"] - ref[(c["task"], c["index"])]))
        out["rounding_spread_b_vs_a"] = {str(lr): {"configs": len(v), "median": float(np.median(v)),
                                                   "max": float(np.max(v))} for lr, v in sorted(spread.items())}
    return out


def kernel_table(args) -> dict:
    import jax
    import jax.numpy as jnp

    from qrjax.lora.multilora import lora_delta

    rows = []
    rng = np.random.default_rng(0)
    d, r, length = args.kernel_dim, args.kernel_rank, args.kernel_seq_len
    dtype = jnp.dtype(args.kernel_dtype)
    for n in args.kernel_adapters:
        for seqs in args.kernel_seqs:
            tokens = n * seqs * length
            sizes = np.full(n, seqs * length, np.int32)
            x = jnp.asarray(rng.standard_normal((tokens, d)), dtype)
            w = jnp.asarray(rng.standard_normal((d, d)) / math.sqrt(d), dtype)
            a = jnp.asarray(rng.standard_normal((n, d, r)) / math.sqrt(d), dtype)
            b = jnp.asarray(rng.standard_normal((n, r, d)) / math.sqrt(r), dtype)
            scale = jnp.full((n,), 2.0, dtype)
            gs = jnp.asarray(sizes)
            grouped = jax.jit(lambda x, a, b, gs, s: lora_delta(x, a, b, gs, s, impl="ragged"))
            gather = jax.jit(lambda x, a, b, gs, s: lora_delta(x, a, b, gs, s, impl="gather", block=length))
            # the per-adapter loop needs concrete group sizes: they are closed over (static), one program per shape
            sequential = jax.jit(lambda x, a, b, s: lora_delta(x, a, b, sizes, s, impl="sequential"))
            gemm = jax.jit(lambda x, w: x @ w)
            fns = {"grouped": lambda: grouped(x, a, b, gs, scale), "gather": lambda: gather(x, a, b, gs, scale),
                   "sequential": lambda: sequential(x, a, b, scale), "base GEMM": lambda: gemm(x, w)}
            if args.gpu:
                pallas = jax.jit(lambda x, a, b, gs, s: lora_delta(x, a, b, gs, s, impl="pallas"))
                fns["pallas"] = lambda: pallas(x, a, b, gs, scale)
            t = bench.interleaved(fns, rounds=args.rounds, warmup=1)
            ref = np.asarray(t.results["sequential"], np.float64)
            err = {k: float(np.max(np.abs(np.asarray(t.results[k], np.float64) - ref)))
                   for k in fns if k not in ("sequential", "base GEMM")}
            rows.append({"adapters": n, "seqs_per_adapter": seqs, "seq_len": length, "tokens": tokens, "d_in": d,
                         "d_out": d, "rank": r, "dtype": str(dtype),
                         "median_ms": {k: 1e3 * v for k, v in t.medians.items()},
                         "first_call_s": t.first_call_seconds,
                         "ratio_sequential_over_grouped": t.ratio("sequential", "grouped"),
                         "ratio_sequential_over_gather": t.ratio("sequential", "gather"),
                         **({"ratio_sequential_over_pallas": t.ratio("sequential", "pallas")} if args.gpu else {}),
                         "max_abs_diff_vs_sequential": err})
    return {"rows": rows, "rounds": args.rounds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="a,b,c,d,e", help="tuning runs: a, b, c, d, e (see above); empty: none")
    ap.add_argument("--tasks", default="arithmetic,reverse,sort,recall", help="built-in tasks")
    ap.add_argument("--backbone", default="tiny", help="a shipped backbone or a checkpoint directory")
    ap.add_argument("--preset", default="cpu", help="TuneConfig preset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TuneConfig override")
    # default: the cpu preset's 300 steps, evaluated every 20 (about 20 minutes here); --steps 100 --eval-every 10
    # takes a third of that and lets the divergence and overfitting rules act from step 40
    ap.add_argument("--steps", type=int, default=0, help="steps per configuration (0: the preset's, 300 for cpu)")
    ap.add_argument("--eval-every", type=int, default=0, help="(0: the preset's, 20 for cpu)")
    ap.add_argument("--num-train", type=int, default=None, help="training examples per task (default: the preset's)")
    ap.add_argument("--num-val", type=int, default=None, help="validation examples per task (default: the preset's)")
    ap.add_argument("--lrs", default=None, help="grid learning rates (default: qrjax.lora.tasks.DEFAULT_LRS)")
    ap.add_argument("--ranks", default=None, help="grid ranks (default: DEFAULT_RANKS)")
    ap.add_argument("--batches", default=None, help="grid batch sizes (default: DEFAULT_BATCHES)")
    ap.add_argument("--slots", type=int, default=16, help="(b), (c), (e): slots on the one device")
    ap.add_argument("--d-slots", type=int, default=4, help="(d): slots per device")
    ap.add_argument("--d-devices", type=int, default=8, help="(d): simulated devices")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="compile each run's programs in a 2-step warm-up run before timing it")
    ap.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=True, help="the kernel table")
    ap.add_argument("--kernel-adapters", default="8,32")
    ap.add_argument("--kernel-seqs", default="1,4", help="sequences per adapter")
    ap.add_argument("--kernel-seq-len", type=int, default=256)
    ap.add_argument("--kernel-dim", type=int, default=1024, help="d_in = d_out")
    ap.add_argument("--kernel-rank", type=int, default=16)
    ap.add_argument("--kernel-dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=5, help="kernel timing rounds")
    ap.add_argument("--gpu", action="store_true", help="add the Pallas grouped matmul to the kernel table")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs' workdirs here (default: temporary)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    from qrjax.lora.tasks import DEFAULT_BATCHES, DEFAULT_LRS, DEFAULT_RANKS, TASKS

    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not set(args.runs) <= set(RUNS) or len(set(args.runs)) != len(args.runs):
        ap.error(f"--runs {args.runs}: choose distinct runs from {list(RUNS)}")
    if "c" in args.runs and "a" not in args.runs:
        ap.error("--runs: (c)'s noise comparison needs (a)")
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or not set(args.tasks) <= set(TASKS):
        ap.error(f"--tasks {args.tasks}: choose from {list(TASKS)}")
    args.lrs = _floats(args.lrs) if args.lrs else list(DEFAULT_LRS)
    args.ranks = _ints(args.ranks) if args.ranks else list(DEFAULT_RANKS)
    args.batches = _ints(args.batches) if args.batches else list(DEFAULT_BATCHES)
    args.kernel_adapters = _ints(args.kernel_adapters)
    args.kernel_seqs = _ints(args.kernel_seqs)
    for name in ("slots", "d_slots", "d_devices", "rounds", "kernel_seq_len", "kernel_dim", "kernel_rank"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    from qrjax.parallel import use_cpu_devices

    if not args.gpu:
        use_cpu_devices(args.d_devices if "d" in args.runs else 1)
    import jax

    if "d" in args.runs and len(jax.devices()) < args.d_devices:
        ap.error(f"--d-devices {args.d_devices}: only {len(jax.devices())} devices")
    payload = {"machine": bench.machine_info(), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                         for k, v in vars(args).items()},
               "load_average_start": list(os.getloadavg())}
    root = args.workdir or Path(tempfile.mkdtemp(prefix="alto_tuning_"))
    try:
        if args.runs:
            backbone = load_backbone(args.backbone)
            payload["backbone"] = {"spec": backbone[2], "config": dataclasses.asdict(backbone[0]),
                                   "parameters": int(sum(np.size(x) for x in jax.tree.leaves(backbone[1])))}
            payload["tuning"] = tuning_runs(args, root, backbone)
        if args.kernel:
            payload["kernel"] = kernel_table(args)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    payload["load_average_end"] = list(os.getloadavg())
    bench.write_results(args.out, "alto_tuning", payload, markdown(payload))
    plot(payload, args.out)
    return payload


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(p: dict) -> str:
    m = p["machine"]
    md = ["# ALTO tuning: one adapter at a time, batched, early exit, cross-task placement", "",
          f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['backend']} (jax {m['jax']}), {m['device_count']} "
          f"device(s); command: `{m['command']}`; load average (1, 5, 15 min) at the start "
          f"{', '.join(f'{x:.1f}' for x in p['load_average_start'])}, at the end "
          f"{', '.join(f'{x:.1f}' for x in p['load_average_end'])}.", ""]
    if "tuning" in p:
        tu, bb = p["tuning"], p["backbone"]
        c = tu["tune_config"]
        md += [f"Backbone `{bb['spec']}` ({bb['parameters']:,} parameters, {bb['config']['num_layers']} layers, d "
               f"{bb['config']['hidden_size']}); tasks {', '.join(tu['tasks'])}; grid {len(tu['grid'])} "
               f"configurations per task ({tu['configurations']} in all); TuneConfig `{c['name']}` with steps "
               f"{c['steps']}, eval_every {c['eval_every']}, num_train {c['num_train']}, num_val {c['num_val']}, "
               f"rank_max {c['rank_max']}, impl `{c['impl']}`.", "",
               "## Runs", "",
               "Wall time is the engine's `seconds` of the run" + (
                   ", after a 2-step warm-up run at the same shapes compiled its programs (warm-up s: that run, "
                   "mostly compilation)" if p["args"]["warmup"] else " (compilation included)")
               + "; engine steps count one program call that trains every live slot once. (d) runs its devices as "
               "simulated CPU devices on the same cores: its wall time is the sum of their work, its engine steps "
               "the makespan in steps.", ""]
        runs = tu["runs"]
        ratios = tu.get("ratios_vs_a", {})
        md.append(bench.markdown_table(
            ["run", "slots x devices", "capacity", "placement", "early exit", "warm-up s", "wall s", "engine steps",
             "samples",
             "exits (underperf / diverged / overfit)", "(a)/run wall", "(a)/run engine steps", "samples / (a)"],
            [[f"({r}) {v['name']}", f"{v['slots']} x {v['devices']}", v["capacity"], v["placement"], v["early_exit"],
              "-" if v["warmup_seconds"] is None else v["warmup_seconds"], v["seconds"],
              v["engine_steps"], v["samples"], " / ".join(str(v["exits"][k]) for k in REASONS),
              _fmt(ratios.get(r, {}).get("wall"), 2), _fmt(ratios.get(r, {}).get("engine_steps"), 2),
              _fmt(ratios.get(r, {}).get("samples"), 3)] for r, v in runs.items()]))
        md += ["", "## Best validation loss per task (min over its configurations; mean token cross-entropy)", ""]
        noise = tu.get("noise", {})
        md.append(bench.markdown_table(
            ["task"] + [f"({r})" for r in runs] + ["SE (a)", "(c) - (a)", "paired SE", "(c) within 2 SE of (a)",
                                                   "(b) - (a): rounding", "(c) - (b): early exit"],
            [[t] + [_fmt(runs[r]["best"].get(t, {}).get("best_val_loss")) + f" (#{runs[r]['best'][t]['index']})"
                    if t in runs[r]["best"] else "-" for r in runs]
             + ([_fmt(noise[t]["se_a"]), _fmt(noise[t]["diff_c_minus_a"]), _fmt(noise[t]["se_diff"]),
                 "yes" if noise[t]["within_noise"] else "no", _fmt(noise[t].get("diff_b_minus_a")),
                 _fmt(noise[t].get("diff_c_minus_b"))] if t in noise else ["-"] * 6)
             for t in tu["tasks"]]))
        md += ["", "(#i: the configuration's index.) Noise: the validation set's standard error (SE) of the mean token "
               "loss (ratio estimator over per-example loss sums and completion tokens of the exported best "
               "adapters); within noise = |(c) - (a)| <= 2 SE (a); the paired SE is that of the difference on the same "
               "examples. The SE is the finite validation set's noise, not training randomness. (b) trains every "
               "configuration as (a) does up to float rounding, and (c) as (b) does with the same programs, so "
               "(b) - (a) is the training's sensitivity to rounding and (c) - (b) early exit's own effect "
               "(0 when it kept (b)'s best configuration).", ""]
        spread = tu.get("rounding_spread_b_vs_a")
        if spread:
            md += ["Rounding spread: |best val (b) - best val (a)| of the same configuration, by learning rate: "
                   + "; ".join(f"lr {lr}: median {v['median']:.2g}, max {v['max']:.2g} ({v['configs']} configurations)"
                               for lr, v in spread.items()) + ".", ""]
    if "kernel" in p:
        rows = p["kernel"]["rows"]
        gpu = any("pallas" in r["median_ms"] for r in rows)
        md += ["## Kernel: grouped vs per-adapter LoRA matmuls (forward, one projection)", "",
               f"Median over {p['kernel']['rounds']} interleaved rounds; a ratio is the median over rounds of "
               "sequential / the variant (> 1: the variant is faster). grouped: lax.ragged_dot; gather: the "
               "per-sequence gather + batched matmul (the engine's CPU path); sequential: a slice and two matmuls "
               "per adapter; base GEMM: X W over the same tokens, for scale.", "",
               bench.markdown_table(
                   ["adapters", "seqs/adapter x len", "tokens", "d_in = d_out", "rank", "grouped ms", "gather ms",
                    "sequential ms"] + (["pallas ms"] if gpu else [])
                   + ["base GEMM ms", "sequential / grouped", "sequential / gather"]
                   + (["sequential / pallas"] if gpu else []) + ["max diff vs sequential"],
                   [[r["adapters"], f"{r['seqs_per_adapter']} x {r['seq_len']}", r["tokens"], r["d_in"], r["rank"],
                     r["median_ms"]["grouped"], r["median_ms"]["gather"], r["median_ms"]["sequential"]]
                    + ([r["median_ms"]["pallas"]] if gpu else [])
                    + [r["median_ms"]["base GEMM"], r["ratio_sequential_over_grouped"],
                       r["ratio_sequential_over_gather"]]
                    + ([r["ratio_sequential_over_pallas"]] if gpu else [])
                    + [f"{max(r['max_abs_diff_vs_sequential'].values()):.2e}"] for r in rows]), ""]
    return "\n".join(md)


def plot(p: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "tuning" in p:
        runs = p["tuning"]["runs"]
        names = [f"({r})" for r in runs]
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        axes[0].bar(names, [v["seconds"] for v in runs.values()])
        axes[0].set_title("wall seconds" + (" (after a compiling warm-up)" if p["args"]["warmup"] else
                                            " (compile included)"), fontsize=9)
        axes[1].bar(names, [v["engine_steps"] for v in runs.values()])
        axes[1].set_title("engine steps", fontsize=9)
        axes[2].bar(names, [v["samples"] for v in runs.values()])
        axes[2].set_title("samples trained", fontsize=9)
        ax = axes[3]
        if "a" in runs:
            ref = {(c["task"], c["index"]): c for c in runs["a"]["configs"]}
            marks = {None: "o", "underperforming": "x", "diverged": "^", "overfit": "s"}
            for r in [r for r in ("b", "c", "e") if r in runs]:
                for reason, marker in marks.items():
                    pts = [(ref[(c["task"], c["index"])]["best_val_loss"], c["best_val_loss"]) for c in
                           runs[r]["configs"] if c["exit_reason"] == reason and c["best_val_loss"] is not None
                           and ref[(c["task"], c["index"])]["best_val_loss"] is not None]
                    if pts:
                        xs, ys = zip(*pts)
                        ax.scatter(xs, ys, marker=marker, s=14, alpha=0.7,
                                   label=f"({r}) {reason or 'finished'}")
            lo, hi = ax.get_xlim()
            ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
            ax.set_xlabel("best val loss in (a)")
            ax.set_ylabel("best val loss in the run")
            ax.set_title("per configuration", fontsize=9)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "alto_tuning.png", dpi=110)
        plt.close(fig)
    if "kernel" in p:
        rows = p["kernel"]["rows"]
        variants = list(rows[0]["median_ms"])
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            ax.bar(np.arange(len(rows)) + i * width, [r["median_ms"][v] for r in rows], width, label=v)
        ax.set_xticks(np.arange(len(rows)) + width * (len(variants) - 1) / 2,
                      [f"N={r['adapters']}, {r['seqs_per_adapter']}x{r['seq_len']}" for r in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("forward ms (median)")
        ax.set_title(f"LoRA term, d={rows[0]['d_in']}, r={rows[0]['rank']}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "alto_tuning_kernel.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
