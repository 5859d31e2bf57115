"""`qrjax demo` (what `make demo` runs): the QRMark detection system end to end on bundled photographs.

Watermark held-out bundled photographs at several sizes, edit them with a mix of attacks (value edits and geometric
ones: rotation, a crop that is not resized back, a downscale), add clean images as negatives, write them as PNG and
JPEG files, detect with the tiled system (the cascade: the fixed-grid tile, then the synchronised reader for what the
tile did not detect, each at fpr / 2) and with the sequential full-image baseline, and print TPR / FPR per attack,
the share of detections made by the sync stage, and the images/s of both pipelines (median of interleaved rounds)
with the speedup. A model that cannot synchronise (no band-limited periodic carrier) runs the tile alone, with a note
on stderr. A PNG plot and the per-image records (JSONL) go to the output folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# Attacks in the demo's mix: the value edits the shipped `cpu` model is trained for, and geometric edits, which move
# the carrier off the tile's fixed grid (the sync stage finds it again; `--no-sync` shows the tile alone).
DEMO_ATTACKS = ("none", "jpeg80", "brightness1.5", "contrast1.5", "crop50", "rotate5", "crop0.71", "resize0.5")
DEMO_SIZES = ((256, 256), (384, 512), (512, 512))


def run_demo(out_dir: str | Path = "demo_output", *, per_cell: int = 8, negatives: int = 48, seed: int = 0,
             model_name: str = "cpu", baseline_name: str = "cpu-full", code_name: str = "qrmark-bch",
             repeats: int = 1, fpr: float = 1e-6, sync: bool = True) -> dict:
    """Build the demo set under out_dir/images, detect, print the table; returns the summary dict.

    sync: the system's cascade (when the model can synchronise); False: the tile alone at fpr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from tqdm.auto import tqdm

    from qrjax.data import bundled_source
    from qrjax.ecc import get_code
    from qrjax.watermark import embed
    from qrjax.watermark.benchmark import edit, throughput
    from qrjax.watermark.export import resolve_model
    from qrjax.watermark.pipeline import Decision, FullImageDetector, TileDetector, cascade_unavailable

    t_start = time.perf_counter()
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    model, baseline_model, code = resolve_model(model_name), resolve_model(baseline_name), get_code(code_name)
    if sync and (why := cascade_unavailable(model)):
        print(f"qrjax demo: synchronised stage off, detecting with the tile alone: {why}", file=sys.stderr)
        sync = False
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 2, code.payload_bits).astype(np.uint8)
    key = np.asarray(code.encode(payload[None]))[0]
    src = bundled_source("val", area=(0.3, 1.0))

    labels: dict[str, str] = {}  # path -> attack name, or "clean"
    cells = [(size, attack) for size in DEMO_SIZES for attack in DEMO_ATTACKS]
    for ci, ((h, w), attack) in enumerate(tqdm(cells, desc="watermarking", leave=False)):
        imgs = np.ascontiguousarray(src.sample(rng, max(h, w), per_cell)[:, :h, :w])
        marked = embed(model, imgs, key)
        for i, im in enumerate(marked):
            fmt = "jpg" if i % 2 else "png"  # half the files JPEG (quality 95), half PNG
            p = img_dir / f"{attack}_{h}x{w}_{i}.{fmt}"
            Image.fromarray(edit(attack, im)).save(p, **({"quality": 95} if fmt == "jpg" else {}))
            labels[str(p)] = attack
    for i in range(negatives):
        h, w = DEMO_SIZES[i % len(DEMO_SIZES)]
        im = np.ascontiguousarray(src.sample(rng, max(h, w), 1)[0, :h, :w])
        p = img_dir / f"clean_{h}x{w}_{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(im).save(p, **({"quality": 95} if i % 2 else {}))
        labels[str(p)] = "clean"
    paths = sorted(labels)

    decision = Decision(code, key[None], fpr=fpr)
    tile = TileDetector(model, decision, sync=sync)
    full = FullImageDetector(baseline_model, decision)
    # the table's records are those of the last timed round (every file, every pipeline): no separate pass
    speed = throughput(paths, tile, full, budget=4, batch=32, repeats=repeats, variants=("baseline", "system"),
                       keep_records=True)
    recs = {name: speed["records"][name] for name in ("system", "baseline")}
    ips = speed["images_per_s"]
    speedup = speed["speedup_vs_baseline"]["system"]  # median over rounds of each round's ratio
    with open(out / "records.jsonl", "w") as f:
        for name, rs in recs.items():
            for r in rs:
                f.write(json.dumps({"pipeline": name, "label": labels[r["path"]], **r}) + "\n")
    rows = []
    for group in DEMO_ATTACKS + ("clean",):
        row = {"images": group}
        for name, rs in recs.items():
            hits = [r["detected"] for r in rs if labels[r["path"]] == group]
            row[name] = float(np.mean(hits))
        found = [r for r in recs["system"] if labels[r["path"]] == group and r["detected"]]
        row["by_sync"] = float(np.mean([r["stage"] == "sync" for r in found])) if found else 0.0
        rows.append(row)

    print(f"\nQRMark detection demo: {len(paths)} files ({', '.join(f'{h}x{w}' for h, w in DEMO_SIZES)}; PNG and "
          f"JPEG q95), key {code.name}, FPR target {fpr:g}")
    how = ("then, for what the tile missed, the synchronised reader (each stage at fpr/2)" if sync else
           "alone (no sync stage)")
    print(f"  system: model {model_name!r} reads one {model.config.tile}-px tile {how}; baseline: model "
          f"{baseline_name!r} reads the whole image")
    print(f"{'images':16s} {'system':>8s} {'baseline':>9s} {'by sync':>8s}   (TPR; the clean row is FPR; by sync: "
          f"share of the system's detections made by the sync stage)")
    for row in rows:
        print(f"{row['images']:16s} {row['system']:8.2f} {row['baseline']:9.2f} {row['by_sync']:8.2f}")
    print(f"{'images/s':16s} {ips['system']:8.1f} {ips['baseline']:9.1f}   speedup {speedup:.2f}x "
          f"({'median of ' if repeats > 1 else ''}{repeats} interleaved round{'s' if repeats > 1 else ''} over "
          f"{len(paths)} files)")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(rows))
    for j, name in enumerate(("system", "baseline")):
        ax1.bar(x + (j - 0.5) * 0.38, [r[name] for r in rows], 0.38, label=name)
    ax1.set_xticks(x, [r["images"] for r in rows], rotation=30)
    ax1.set_ylabel("detected fraction (TPR; clean: FPR)")
    ax1.set_ylim(0, 1.05)
    ax1.legend()
    ax2.bar(["system", "baseline"], [ips["system"], ips["baseline"]], color=["C0", "C1"])
    ax2.set_ylabel("images / s")
    fig.suptitle(f"QRMark detection demo: one tile{' + sync cascade' if sync else ''} vs whole image "
                 f"({speedup:.1f}x)")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=120)
    plt.close(fig)
    summary = {"rows": rows, "images_per_s": ips, "speedup": speedup, "files": len(paths), "sync": sync,
               "seconds": time.perf_counter() - t_start}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"plot: {out / 'demo.png'}; records: {out / 'records.jsonl'}; total {summary['seconds']:.0f} s")
    return summary
