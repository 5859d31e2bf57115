"""Text-to-image with SDiT and TIDE on this machine: the shipped t2i-cpu model (an MMDiT on the shipped CLIP's text
tower, trained on CLIP's captioned synthetic scenes at 32 px).

    python experiments/text_to_image.py                  # the shipped models (about 15 minutes on 2 cores)
    python experiments/text_to_image.py --model PATH --prompts 2 --sdit-scales 1 --tide-scales 2 --steps 6 \
        --rounds 1                                       # smoke test (seconds)

Writes experiments/results/text_to_image.{json,md,png} and text_to_image_grid.png.

(a) SDiT against full computation and against SuperGen's tile cache, per scale (side over the training size), on the
    same prompts and seeds. Full computation and SDiT denoise the whole canvas from the same noise with the same
    attention correction (TIDE above the training size), so PSNR/SSIM of SDiT's image to the full computation's are
    its fidelity. SuperGen (sketch, upsample, shifted tiles) is a different pipeline: its tokens and time are set
    against full computation, its fidelity is its cached output against its own uncached output. Times are each
    method's own seconds without compilation (SDiT's host planning included), interleaved round by round
    (`qrjax.bench.interleaved`); the ratio is the median over rounds of the per-round ratio, pooled over prompts.
(b) TIDE at 2x and 4x the training side: CLIP score (100 max(cos, 0), the image area-averaged to CLIP's 32 px) and
    the attributes of the prompt's objects read back by the shipped CLIP (count, colour, shape, position: CLIP picks
    among captions that change that attribute alone), for no correction, fixed attention scaling
    (log(N + T)/log(N_train + T) at every step), TIDE, TIDE's two parts alone, and SuperGen's tiled output at the
    same size (restarting at step 2 of 20, SuperGen's share, and at step 10, where the sketch keeps its layout);
    all with RoPE positions interpolated into the training grid (the default), and none / fixed / TIDE
    again with positions extended past it. Two references frame the numbers: the model at its training size, and
    the real scenes of the prompts rendered at that size (the read-back's own ceiling).
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from qrjax import bench
from qrjax.clip.data import render_scenes
from qrjax.diffusion import supergen as sg
from qrjax.diffusion.config import SuperGenConfig, TextToImageConfig
from qrjax.diffusion.evaluate import ATTRIBUTE_NAMES, attribute_accuracy, clip_score, prompt_set
from qrjax.diffusion.export import resolve_model
from qrjax.diffusion.t2i import generate_image
from qrjax.diffusion.tide import CORRECTIONS
from qrjax.metrics import psnr, ssim

RESULTS = Path(__file__).parent / "results"


def quality(model, images: np.ndarray, attributes: np.ndarray, prompts: list[str]) -> dict:
    scores = clip_score(model.clip, images, prompts)
    acc = attribute_accuracy(model.clip, images, attributes)
    out = {"clip_score": float(np.mean(scores)), "clip_score_std": float(np.std(scores))}
    out.update({f"acc_{k}": float(np.mean(v)) for k, v in acc.items()})
    out["acc_mean"] = float(np.mean([np.mean(v) for v in acc.values()]))
    return out


def fidelity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(psnr(a, b, 255.0)), float(ssim(a, b, 255.0))


def sdit_part(model, args, prompts, payload) -> list:
    base = TextToImageConfig(steps=args.steps, guidance=args.guidance)
    sdit_overrides = dict(sdit=True, **dict(kv.split("=", 1) for kv in args.sdit_set))
    sdit_cfg = TextToImageConfig(**{**base.__dict__, **{k: _parse(v) for k, v in sdit_overrides.items()}})
    # the grid moves one token per step in every SuperGen variant: what SDiT inside the tiles needs
    sg_base = SuperGenConfig(steps=args.steps, guidance=args.guidance, restart_step=args.restart,
                             shift_divisions=model.config.latent_size // model.config.patch)
    rows, examples = [], {}
    for scale in args.sdit_scales:
        correction = "tide" if scale > 1 else "none"
        full_cfg = base.replace(correction=correction)
        s_cfg = sdit_cfg.replace(correction=correction)
        per = {k: [] for k in ("psnr", "ssim", "token_ratio", "sg_psnr", "sg_ssim")}
        per.update(sgs_psnr=[], sgs_ssim=[])
        ratios = {"sdit": [], "supergen_cache": [], "supergen": [], "supergen_sdit": []}
        tokens = {"full": 0, "sdit": 0, "sdit_executed": 0, "supergen_cache": 0, "supergen": 0, "supergen_sdit": 0}
        secs = {k: [] for k in ratios} | {"full": []}
        plan = []
        for i, prompt in enumerate(tqdm(prompts, desc=f"SDiT {scale}x", leave=False)):
            key = jax.random.key(100 + i)
            fns = {"full": partial(generate_image, model, full_cfg, prompt, scale=scale, key=key, progress=False),
                   "sdit": partial(generate_image, model, s_cfg, prompt, scale=scale, key=key, progress=False)}
            if scale > 1:
                for name, thr in (("supergen", 0.0), ("supergen_cache", args.cache_threshold)):
                    fns[name] = partial(sg.generate, model, sg_base.replace(cache_threshold=thr), scale=scale,
                                        prompt=prompt, key=key, progress=False)
                fns["supergen_sdit"] = partial(sg.generate, model, sg_base, scale=scale, prompt=prompt, key=key,
                                               progress=False, sdit=sdit_cfg)
            timed = bench.interleaved(fns, rounds=args.rounds, seconds=lambda r: r[1].seconds, host=tuple(fns))
            res = timed.results
            p, s = fidelity(res["sdit"][0], res["full"][0])
            per["psnr"].append(p)
            per["ssim"].append(s)
            per["token_ratio"].append(res["sdit"][1].token_ratio)
            tokens["full"] += res["full"][1].tokens_computed
            tokens["sdit"] += res["sdit"][1].tokens_computed
            tokens["sdit_executed"] += res["sdit"][1].tokens_executed
            plan.append(res["sdit"][1].plan_seconds)
            for k in fns:
                secs[k].append(timed.median(k))
                if k != "full":
                    ratios[k] += timed.round_ratios("full", k)
            if scale > 1:
                tokens["supergen"] += res["supergen"][1].tokens_computed
                tokens["supergen_cache"] += res["supergen_cache"][1].tokens_computed
                tokens["supergen_sdit"] += res["supergen_sdit"][1].tokens_computed
                p2, s2 = fidelity(res["supergen_cache"][0], res["supergen"][0])
                per["sg_psnr"].append(p2)
                per["sg_ssim"].append(s2)
                p3, s3 = fidelity(res["supergen_sdit"][0], res["supergen"][0])
                per["sgs_psnr"].append(p3)
                per["sgs_ssim"].append(s3)
            if i == 0:
                examples[scale] = {k: res[k][0] for k in fns}
        row = {"scale": scale, "canvas_px": list(examples[scale]["full"].shape[:2]), "correction": correction,
               "prompts": len(prompts), "image_tokens": res["full"][1].image_tokens,
               "full_seconds": statistics.median(secs["full"]), "sdit_seconds": statistics.median(secs["sdit"]),
               "sdit_plan_seconds": statistics.median(plan),
               "sdit_speedup": statistics.median(ratios["sdit"]),
               "sdit_token_ratio": tokens["full"] / max(1, tokens["sdit"]),
               "sdit_executed_token_ratio": tokens["full"] / max(1, tokens["sdit_executed"]),
               "sdit_psnr_mean": float(np.mean(per["psnr"])), "sdit_psnr_min": float(np.min(per["psnr"])),
               "sdit_ssim_mean": float(np.mean(per["ssim"]))}
        if scale > 1:
            row.update({"supergen_seconds": statistics.median(secs["supergen"]),
                        "supergen_cache_seconds": statistics.median(secs["supergen_cache"]),
                        "supergen_speedup": statistics.median(ratios["supergen"]),
                        "supergen_cache_speedup": statistics.median(ratios["supergen_cache"]),
                        "supergen_token_ratio": tokens["full"] / max(1, tokens["supergen"]),
                        "supergen_cache_token_ratio": tokens["full"] / max(1, tokens["supergen_cache"]),
                        "supergen_cache_psnr_mean": float(np.mean(per["sg_psnr"])),
                        "supergen_cache_ssim_mean": float(np.mean(per["sg_ssim"])),
                        "supergen_sdit_seconds": statistics.median(secs["supergen_sdit"]),
                        "supergen_sdit_speedup": statistics.median(ratios["supergen_sdit"]),
                        "supergen_sdit_token_ratio": tokens["full"] / max(1, tokens["supergen_sdit"]),
                        "supergen_sdit_psnr_mean": float(np.mean(per["sgs_psnr"])),
                        "supergen_sdit_ssim_mean": float(np.mean(per["sgs_ssim"]))})
        rows.append(row)
    payload["sdit"] = {"config": sdit_cfg.__dict__, "supergen_cache_threshold": args.cache_threshold,
                       "rows": rows}
    return examples


def _parse(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def tide_part(model, args, attributes, prompts, payload):
    rows, grids = [], {}
    base = TextToImageConfig(steps=args.steps, guidance=args.guidance)
    sg_cfg = SuperGenConfig(steps=args.steps, guidance=args.guidance, restart_step=args.restart)
    px = model.config.image_size
    native = np.stack([generate_image(model, base, p, key=jax.random.key(200 + i), progress=False)[0]
                       for i, p in enumerate(tqdm(prompts, desc="native", leave=False))])
    rows.append({"scale": 1, "method": "training size", **quality(model, native, attributes, prompts)})
    for scale in args.tide_scales:
        real = render_scenes(attributes, px * scale, [[7, 7, i] for i in range(len(attributes))])
        rows.append({"scale": scale, "method": "real scenes", **quality(model, real, attributes, prompts)})
        grids[scale] = {"real scenes": real}
        runs = [(corr, "interpolate", corr) for corr in args.corrections]
        runs += [(corr, "extend", f"{corr} (positions extended)") for corr in args.extend_corrections]
        for corr, positions, name in runs:
            cfg = base.replace(correction=corr, positions=positions)
            imgs = np.stack([generate_image(model, cfg, p, scale=scale, key=jax.random.key(200 + i), progress=False)[0]
                             for i, p in enumerate(tqdm(prompts, desc=f"{name} {scale}x", leave=False))])
            rows.append({"scale": scale, "method": name, "correction": corr, "positions": positions,
                         **quality(model, imgs, attributes, prompts)})
            grids[scale][name] = imgs
        for restart in args.supergen_restarts:
            name = f"supergen tiles (restart {restart}/{args.steps})"
            imgs = np.stack([sg.generate(model, sg_cfg.replace(restart_step=restart), scale=scale, prompt=p,
                                         key=jax.random.key(200 + i), progress=False)[0]
                             for i, p in enumerate(tqdm(prompts, desc=f"{name} {scale}x", leave=False))])
            rows.append({"scale": scale, "method": name, "restart_step": restart,
                         **quality(model, imgs, attributes, prompts)})
            grids[scale][name] = imgs
    payload["tide"] = {"rows": rows, "prompts": prompts}
    return grids


def plots(out: Path, payload: dict, grids: dict, examples: dict, prompts: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["tide"]["rows"]
    scales = sorted({r["scale"] for r in rows if r["scale"] > 1})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric, label in ((axes[0], "clip_score", "CLIP score"), (axes[1], "acc_mean", "attribute accuracy")):
        methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["scale"] > 1)]
        width = 0.8 / max(1, len(methods))
        for j, m in enumerate(methods):
            vals = [next((r[metric] for r in rows if r["scale"] == s and r["method"] == m), np.nan) for s in scales]
            ax.bar(np.arange(len(scales)) + j * width, vals, width, label=m)
        native = next(r[metric] for r in rows if r["method"] == "training size")
        ax.axhline(native, color="k", ls="--", lw=1, label="training size")
        ax.set_xticks(np.arange(len(scales)) + 0.4 - width / 2, [f"{s}x side" for s in scales])
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("TIDE vs baselines above the training resolution (shipped CLIP read-back)")
    fig.tight_layout()
    fig.savefig(out / "text_to_image.png", dpi=120)
    plt.close(fig)

    big = max(grids)
    cols = list(grids[big])
    n = min(4, len(prompts))
    fig, axes = plt.subplots(n, len(cols) + (len(examples.get(big, {})) if examples else 0),
                             figsize=(2.0 * (len(cols) + len(examples.get(big, {}))), 2.2 * n), squeeze=False)
    for i in range(n):
        panels = [(c, grids[big][c][i]) for c in cols]
        if i == 0 and big in examples:
            panels += [(f"(a) {k}", v) for k, v in examples[big].items()]
        for j, ax in enumerate(axes[i]):
            ax.axis("off")
            if j < len(panels):
                ax.imshow(panels[j][1])
                if i == 0:
                    ax.set_title(panels[j][0], fontsize=7)
        axes[i][0].text(0, -0.05, prompts[i], transform=axes[i][0].transAxes, fontsize=6, va="top")
    fig.tight_layout()
    fig.savefig(out / "text_to_image_grid.png", dpi=100)
    plt.close(fig)


def markdown(payload: dict, args) -> str:
    md = ["# Text-to-image: SDiT and TIDE", "",
          f"Machine: {payload['machine']['cpu_count']}-core {payload['machine']['processor']} "
          f"({payload['machine']['backend']}, jax {payload['machine']['jax']}); "
          f"command: `{payload['command']}`; model {payload['model']} (MMDiT on CLIP {payload['text_model']}), "
          f"{args.steps} Euler steps, guidance {args.guidance}.", "", "## (a) SDiT", ""]
    md.append(bench.markdown_table(
        ["scale", "tokens/step", "full s", "SDiT s", "SDiT speedup", "tokens ratio", "executed ratio",
         "PSNR dB (min)", "SSIM", "plan s"],
        [[r["scale"], r["image_tokens"], r["full_seconds"], r["sdit_seconds"], r["sdit_speedup"],
          r["sdit_token_ratio"], r["sdit_executed_token_ratio"],
          f"{r['sdit_psnr_mean']:.2f} ({r['sdit_psnr_min']:.2f})", r["sdit_ssim_mean"], r["sdit_plan_seconds"]]
         for r in payload["sdit"]["rows"]]))
    tiled = [r for r in payload["sdit"]["rows"] if "supergen_seconds" in r]
    if tiled:
        md += ["", "SuperGen at the same size (sketch, upsample, shifted tiles moving one token per step), against "
               "the same full computation:", ""]
        md.append(bench.markdown_table(
            ["scale", "variant", "s", "speedup", "tokens ratio", "PSNR dB vs SuperGen uncached", "SSIM"],
            [row for r in tiled for row in (
                [r["scale"], "SuperGen", r["supergen_seconds"], r["supergen_speedup"], r["supergen_token_ratio"],
                 "-", "-"],
                [r["scale"], f"SuperGen + tile cache ({payload['sdit']['supergen_cache_threshold']})",
                 r["supergen_cache_seconds"], r["supergen_cache_speedup"], r["supergen_cache_token_ratio"],
                 r["supergen_cache_psnr_mean"], r["supergen_cache_ssim_mean"]],
                [r["scale"], "SuperGen + SDiT in tiles", r["supergen_sdit_seconds"], r["supergen_sdit_speedup"],
                 r["supergen_sdit_token_ratio"], r["supergen_sdit_psnr_mean"], r["supergen_sdit_ssim_mean"]])]))
    md += ["", "Speedups and token ratios are over full computation of the same prompt and noise (SuperGen's over "
           "the same full computation; its cache PSNR is against its own uncached output). Times exclude "
           "compilation; SDiT's include its host planning (Quickshift and scheduling).", "", "## (b) TIDE", ""]
    md.append(bench.markdown_table(
        ["scale", "method", "CLIP score", *[f"acc {a}" for a in ATTRIBUTE_NAMES], "acc mean"],
        [[r["scale"], r["method"], r["clip_score"], *[r[f"acc_{a}"] for a in ATTRIBUTE_NAMES], r["acc_mean"]]
         for r in payload["tide"]["rows"]]))
    md += ["", "CLIP score: 100 max(cos, 0) between the image (area-averaged to 32 px) and its prompt; attribute "
           "accuracy: the shipped CLIP picks the prompt's value among captions that change one attribute."]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="t2i-cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--restart", type=int, default=2, help="SuperGen's stage-2 restart index in part (a)")
    p.add_argument("--supergen-restarts", type=int, nargs="+", default=[2, 10],
                   help="SuperGen's restart indices in part (b): its 10%% (paper: 5 of 50), and half way")
    p.add_argument("--prompts", type=int, default=20, help="prompts of part (b)")
    p.add_argument("--sdit-prompts", type=int, default=6, help="prompts of part (a)")
    p.add_argument("--sdit-scales", type=int, nargs="+", default=[1, 4])
    p.add_argument("--sdit-set", nargs="*", default=[], metavar="KEY=VALUE", help="TextToImageConfig fields of SDiT")
    p.add_argument("--cache-threshold", type=float, default=0.3, help="SuperGen's tile-cache threshold")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per prompt in part (a)")
    p.add_argument("--tide-scales", type=int, nargs="+", default=[2, 4])
    p.add_argument("--corrections", nargs="+", default=list(CORRECTIONS), choices=CORRECTIONS,
                   help="part (b) with RoPE positions interpolated into the training grid (the default)")
    p.add_argument("--extend-corrections", nargs="*", default=["none", "fixed", "tide"], choices=CORRECTIONS,
                   help="part (b) again with RoPE positions extended past the training grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    import sys

    model = resolve_model(args.model)
    attributes, prompts = prompt_set(args.prompts, args.seed)
    payload = {"machine": bench.machine_info(), "model": args.model, "text_model": model.config.text_model,
               "command": " ".join(["python", "experiments/text_to_image.py", *sys.argv[1:]]) if argv is None
               else " ".join(["python", "experiments/text_to_image.py", *argv]),
               "steps": args.steps, "guidance": args.guidance}
    examples = sdit_part(model, args, prompts[:args.sdit_prompts], payload)
    grids = tide_part(model, args, attributes, prompts, payload)
    args.out.mkdir(parents=True, exist_ok=True)
    plots(args.out, payload, grids, examples, prompts)
    bench.write_results(args.out, "text_to_image", payload, markdown(payload, args))
    print(markdown(payload, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
