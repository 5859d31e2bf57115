"""QRMark detection throughput: the sequential baseline, tiled only, tiled + overlap, the full system and its
bounds (decode-only, compute-only, shared-core), on JPEG and PNG sets at 256 and 512 pixels; and the system (with
its sync cascade) against the baseline on unedited, JPEG 80 and geometrically edited sets, in the same run.

For each (format, size) the script writes --images watermarked files (the shipped `cpu` model's encoder; --unique
distinct images, the files cycling through them), then measures images/s of every variant of
`qrjax.watermark.benchmark.throughput` on those files: warm-up and compiles first, then --repeats interleaved rounds
(`qrjax.bench.interleaved`); images/s are medians over rounds, ratios the medians of the per-round ratios. It also
checks the system's accuracy on the set (TPR at FPR 1e-6) and that its decisions equal a plain per-image call
(`sync.detect_cascade`: the tile, then the synchronised reader, image by image).
Then three --edited-images sets (JPEG q95 files of --edited-size): unedited, JPEG 80, and geometric (each image
rotated 5 degrees, cropped to 0.71 of each side or downscaled to 0.5, drawn at random); images/s of the system and
the baseline, their TPR, and the share of the system's detections made by the sync stage.
Output: experiments/results/qrmark_throughput.{json,md,png}.

    python experiments/qrmark_throughput.py                      # 2,000 images per set, 3 rounds (~35 min, 2 cores)
    python experiments/qrmark_throughput.py --images 64 --edited-images 16 --repeats 1 --sizes 256 --formats png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qrjax import bench
from qrjax.ecc import get_code
from qrjax.watermark import sync
from qrjax.watermark.benchmark import GEOMETRIC_EDITS, VARIANTS, edit, make_dataset, throughput
from qrjax.watermark.export import resolve_model
from qrjax.watermark.pipeline import Decision, FullImageDetector, TileDetector, cascade_unavailable

EDITED_SETS = {"unedited": ("none",), "jpeg80": ("jpeg80",), "geometric": GEOMETRIC_EDITS}


def equality_check(paths, detector: TileDetector, key, n: int = 64) -> dict:
    """The system's decisions against `sync.detect_cascade` (the tile alone when the detector's cascade is off)
    called image by image on the same decoded pixels: same stage, matching bits and decision."""
    from qrjax.data.decode import decode

    sample = list(paths[:n])
    recs = list(detector.run_sequential(sample, 64))
    same = 0
    for r in recs:
        img = decode(r["path"], min_size=detector.model.config.working_size if detector.draft else None).rows
        (want,) = sync.detect_cascade(detector.model, [img], key, fpr=detector.fpr, sync=detector.cascade)
        same += (r["stage"], r["detected"], r["matching_bits"]) == (want["stage"], want["detected"], want["matches"])
    return {"checked": len(recs), "equal": same}


def edited_set(name: str, model, baseline, code, args, budget: int, use_sync: bool) -> dict:
    """images/s, TPR and the sync stage's share of detections, system vs baseline, on one edited set."""
    edits = EDITED_SETS[name]

    def attack(img, rng):
        return edit(edits[rng.integers(len(edits))], img)

    with tempfile.TemporaryDirectory(prefix="qrjax-throughput-") as tmp:
        ds = make_dataset(tmp, model, code, args.edited_images, args.edited_size, "jpeg", attack=attack,
                          unique=min(args.unique, args.edited_images), seed=len(name), progress=False)
        decision = Decision(code, ds["key"][None])
        res = throughput(ds["paths"], TileDetector(model, decision, sync=use_sync),
                         FullImageDetector(baseline, decision), budget=budget, batch=args.batch, repeats=args.repeats, variants=("baseline", "system"),
                         keep_records=True)
    recs = res.pop("records")
    found = [r for r in recs["system"] if r["detected"]]
    return {"set": name, "edits": list(edits), "images": args.edited_images, "size": args.edited_size,
            "format": "jpeg", "images_per_s": res["images_per_s"], "seconds": res["seconds"],
            "speedup": res["speedup_vs_baseline"]["system"],
            "tpr_at_1e-6": {v: float(np.mean([r["detected"] is True for r in recs[v]])) for v in recs},
            "sync_share_of_detections": float(np.mean([r["stage"] == "sync" for r in found])) if found else 0.0,
            "sync_stage_fraction": float(np.mean([r.get("stage") == "sync" for r in recs["system"]]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--unique", type=int, default=256, help="distinct watermarked images per set")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--formats", default="jpeg,png")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--budget", type=int, default=None, help="workers for the allocator (default 2 x cores)")
    parser.add_argument("--edited-images", type=int, default=256, help="files per edited set (0: none)")
    parser.add_argument("--edited-size", type=int, default=256)
    parser.add_argument("--model", default="cpu", help="tile model (shipped name or <stem>.json)")
    parser.add_argument("--baseline-model", default="cpu-full", help="full-image model (shipped name or <stem>.json)")
    parser.add_argument("--no-sync", action="store_true", help="the system without its synchronised stage")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    model, baseline = resolve_model(args.model), resolve_model(args.baseline_model)
    code = get_code("qrmark-bch")
    import os

    why = None if args.no_sync else cascade_unavailable(model)
    if why:
        print(f"synchronised stage off, the system runs the tile alone: {why}", file=sys.stderr)
    use_sync = not args.no_sync and why is None
    budget = args.budget or max(3, 2 * (os.cpu_count() or 1))
    sets = []
    for fmt in args.formats.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="qrjax-throughput-") as tmp:
                t0 = time.perf_counter()
                ds = make_dataset(tmp, model, code, args.images, size, fmt, unique=min(args.unique, args.images),
                                  seed=size)
                made = time.perf_counter() - t0
                decision = Decision(code, ds["key"][None])
                tile = TileDetector(model, decision, sync=use_sync)
                full = FullImageDetector(baseline, decision)
                res = throughput(ds["paths"], tile, full, budget=budget, batch=args.batch, repeats=args.repeats)
                tpr = {name: float(np.mean([r["detected"] for r in det]))
                       for name, det in (("system", tile.run_sequential(ds["paths"][:256], 64)),
                                         ("baseline", full.run(ds["paths"][:256], 64)))}
                eq = equality_check(ds["paths"], tile, ds["key"])
            res.update(format=fmt, size=size, dataset_seconds=made, decisions_equal=eq, **{"tpr_at_1e-6": tpr})
            sets.append(res)
            ips = res["images_per_s"]
            print(f"{fmt} {size}: " + ", ".join(f"{v} {ips[v]:.0f}/s" for v in VARIANTS) +
                  f"; system/baseline {res['speedup_vs_baseline']['system']:.2f}x", file=sys.stderr)
    edited = []
    for name in (EDITED_SETS if args.edited_images > 0 else ()):
        edited.append(edited_set(name, model, baseline, code, args, budget, use_sync))
        e = edited[-1]
        print(f"{name} jpeg {args.edited_size}: system {e['images_per_s']['system']:.0f}/s, baseline "
              f"{e['images_per_s']['baseline']:.0f}/s ({e['speedup']:.2f}x); TPR {e['tpr_at_1e-6']['system']:.2f} / "
              f"{e['tpr_at_1e-6']['baseline']:.2f}", file=sys.stderr)
    result = {"machine": bench.machine_info(), "images": args.images, "unique": args.unique,
              "repeats": args.repeats, "budget": budget, "batch": args.batch, "sync": use_sync,
              "model": args.model, "baseline_model": args.baseline_model, "sets": sets, "edited_sets": edited}
    bench.write_results(args.out, "qrmark_throughput", result, markdown(result))
    plot(result, args.out / "qrmark_throughput.png")
    return 0


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# QRMark detection throughput",
        "",
        f"{m['processor']}, {m['cpu_count']} cores, jax {m['jax']} ({m['backend']}); command `{m['command']}`; "
        f"{m['date']}. {result['images']} files per set ({result['unique']} distinct watermarked images), median of "
        f"{result['repeats']} interleaved rounds (ratios: medians of the per-round ratios), worker budget "
        f"{result['budget']}, batch hint {result['batch']}.",
        "",
        "images/s (ratio to the sequential baseline):",
        "",
    ]
    header = ["set"] + list(VARIANTS) + ["shared-core bound", "system / decode bound", "system / shared-core bound",
                                        "TPR system / baseline", "decisions = plain call"]
    rows = []
    for s in result["sets"]:
        ips, sp = s["images_per_s"], s["speedup_vs_baseline"]
        rows.append([f"{s['format']} {s['size']}²"] + [f"{ips[v]:.0f} ({sp[v]:.2f}x)" for v in VARIANTS] +
                    [f"{s['shared_core_bound_images_per_s']:.0f}", f"{s['system_fraction_of_decode_bound']:.2f}",
                     f"{s['system_fraction_of_shared_core_bound']:.2f}",
                     f"{s['tpr_at_1e-6']['system']:.2f} / {s['tpr_at_1e-6']['baseline']:.2f}",
                     f"{s['decisions_equal']['equal']}/{s['decisions_equal']['checked']}"])
    lines.append(bench.markdown_table(header, rows))
    if result["sets"]:
        lines += ["", f"The bound the system is held to here: {result['sets'][0]['bound_description']}."]
    if result.get("edited_sets"):
        e0 = result["edited_sets"][0]
        lines += ["", f"Edited sets ({e0['images']} JPEG q95 files of {e0['size']}², system "
                      f"{'with its sync cascade, each stage at FPR 5e-7' if result['sync'] else 'tile alone'}):", ""]
        rows = [[e["set"], ", ".join(e["edits"]), f"{e['images_per_s']['system']:.0f}",
                 f"{e['images_per_s']['baseline']:.0f}", f"{e['speedup']:.2f}x",
                 f"{e['tpr_at_1e-6']['system']:.2f} / {e['tpr_at_1e-6']['baseline']:.2f}",
                 f"{e['sync_share_of_detections']:.2f}", f"{e['sync_stage_fraction']:.2f}"]
                for e in result["edited_sets"]]
        lines.append(bench.markdown_table(["set", "edits", "system images/s", "baseline images/s", "speedup",
                                           "TPR@1e-6 system / baseline", "detections by sync",
                                           "files through sync"], rows))
    lines += ["", "Plans (workers read/device/write, micro-batches, measured ms per image with one worker):", ""]
    for s in result["sets"]:
        pa, pe = s["plan_adaptive"], s["plan_even"]
        lines.append(f"- {s['format']} {s['size']}²: adaptive workers {tuple(pa['workers'])} batches "
                     f"{tuple(pa['batch'])} costs {tuple(round(c, 3) for c in pa['costs_ms'])}; even workers "
                     f"{tuple(pe['workers'])} batches {tuple(pe['batch'])}")
    lines += ["", "baseline: whole image decoded, resized to 256 and read by the full-image model (`cpu-full`), one "
              "stage after another; tiled: one 64-px tile (model `cpu`), no overlap; tiled+overlap: the pipelined "
              "system on an even split of the workers; system: the pipelined system on the adaptive plan; "
              "decode_bound: the files read and fully decoded by the same number of threads, nothing else; "
              "reader_bound: the system's own reader alone (JPEG draft-mode decode, PNG stopped after the tile's "
              "rows); compute_bound: the system's device stage alone on windows read beforehand; shared-core bound: "
              "1 / (1/decode + 1/compute), what one image costs when decoding and the extractor share the cores."]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["sets"]
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(sets))
    width = 0.8 / len(VARIANTS)
    for j, v in enumerate(VARIANTS):
        ax.bar(x + (j - (len(VARIANTS) - 1) / 2) * width, [s["images_per_s"][v] for s in sets], width, label=v)
    ax.set_xticks(x, [f"{s['format']} {s['size']}²" for s in sets])
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title(f"QRMark detection throughput ({result['machine']['cpu_count']}-core {result['machine']['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
