"""QRMark robustness table: full-image vs tiled extraction, with and without ECC, under real image edits.

    python experiments/qrmark_robustness.py                         # the shipped models, 128 held-out images
    python experiments/qrmark_robustness.py --tiled M --full M2     # your own models (<stem>.json/.msgpack)
    python experiments/qrmark_robustness.py --smoke                 # untrained tiny models, seconds (tests)

Writes experiments/results/qrmark_robustness.{json,md} and qrmark_robustness.png.

Images: random 256 x 256 crops of the held-out bundled photographs (never seen in training). Each image carries its
own random key. Attacks are the evaluation attacks of qrjax.watermark.attacks (Pillow JPEG, exact crops/resizes/blur,
Pillow enhance/rotate); detection reads the attacked image at its own scale (one random-grid tile for the tiled rows).
Rows:
  (a) full-image extractor (the sequential baseline's model): 48 raw key bits, extractor reads the whole image;
  (b) tiled, no ECC: 48 raw key bits, one 64-pixel tile; "refined embedding": the residual refined at embed time
      against the extractor (--refine-steps Adam steps, qrjax.watermark.embed.refine_residual);
  (c) tiled + ECC: 32-bit payload in a BCH(48,36) codeword (4 zero-checked bits), hard decoding;
  (d) tiled + ECC + soft decoding (Chase-4 on the logits' reliabilities).
Columns per attack: bit accuracy (48 bits), word accuracy (all 48 key bits for a/b, the 32-bit payload for c/d), and
TPR at FPR 1e-6. For a/b a key is detected when >= tau(1e-6) = 41 of 48 bits match (Binomial(48, 1/2) tail).
For c/d: matches >= tau(5e-7) OR decoded payload == key; the second rule false-accepts a random word with probability
<= ecc_false_accept (reported), so the total FPR stays <= 1e-6.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from qrjax import bench, tiling
from qrjax.data import bundled_source
from qrjax.ecc import get_code
from qrjax.metrics import psnr, ssim
from qrjax.watermark import WatermarkModel, attacks, detect, embed, extract, get_config, load_model, load_pretrained
from qrjax.watermark.model import init_variables

FPR = 1e-6
ROWS = {
    "a": "(a) full image, no ECC",
    "b": "(b) tile, no ECC",
    "br": "(b) tile, no ECC, refined embedding",
    "c": "(c) tile + ECC (BCH hard)",
    "d": "(d) tile + ECC + soft (Chase-4)",
}
ABLATION_ATTACKS = ("none", "jpeg80", "crop50", "blur2", "resize50")


def eval_images(n: int, size: int, seed: int = 2024) -> np.ndarray:
    src = bundled_source("val", area=(0.15, 1.0))
    return src.sample(np.random.default_rng(seed), size, n)


def attacked(name: str, marked: np.ndarray) -> np.ndarray:
    return np.stack([attacks.eval_attack(name, im) for im in marked])


def score(row: str, code, logits, key_bits, payloads) -> dict:
    m = np.asarray(detect.matches(logits, key_bits))
    n = key_bits.shape[1]
    out = {"bit_acc": float(np.mean(m) / n)}
    if row in ("a", "b", "br"):
        out["word_acc"] = float(np.mean(m == n))
        out["tpr"] = float(np.mean(m >= detect.threshold(n, FPR)))
    else:
        dec = detect.decode_payload(code, logits, method="hard" if row == "c" else "chase")
        right = np.asarray(dec.ok) & np.all(np.asarray(dec.payload) == payloads, axis=-1)
        out["word_acc"] = float(np.mean(right))
        out["tpr"] = float(np.mean(right | (m >= detect.threshold(n, FPR / 2))))
    return out


def run(args) -> dict:
    code = get_code("qrmark-bch")
    if args.smoke:
        cfg = get_config("tiny", {"working_size": 64, "tile": 16})
        tiled = WatermarkModel(cfg, init_variables(cfg, jax.random.key(0)))
        fcfg = cfg.replace(full_image=True)
        full = WatermarkModel(fcfg, init_variables(fcfg, jax.random.key(1)))
    else:
        tiled = load_model(args.tiled) if args.tiled else load_pretrained("cpu")
        full = load_model(args.full) if args.full else load_pretrained("cpu-full")
    size = tiled.config.working_size
    images = eval_images(args.n_images, size)
    rng = np.random.default_rng(5)
    n = len(images)
    raw_keys = rng.integers(0, 2, (n, tiled.config.bits)).astype(np.uint8)
    payloads = rng.integers(0, 2, (n, code.payload_bits)).astype(np.uint8)
    ecc_keys = np.asarray(code.encode(payloads))
    # br: the same model and keys as b, embedded with args.refine_steps of informed-embedding refinement.
    refine = min(args.refine_steps, 2) if args.smoke else args.refine_steps
    plan = {"a": (full, raw_keys, None), "b": (tiled, raw_keys, None), "br": (tiled, raw_keys, refine),
            "c": (tiled, ecc_keys, None), "d": (tiled, ecc_keys, None)}
    marked_cache, quality, table = {}, {}, {}
    bar = tqdm(total=len(ROWS) * len(attacks.EVAL_ATTACKS), desc="robustness")
    for row, (model, keys, refine) in plan.items():
        cache_key = (id(model), keys is ecc_keys, refine)
        if cache_key not in marked_cache:
            marked_cache[cache_key] = embed(model, images, keys, refine_steps=refine)
        marked = marked_cache[cache_key]
        p = np.asarray(psnr(images, marked, 255.0))
        quality[row] = {"psnr": float(p.mean()), "psnr_min": float(p.min()),
                        "ssim": float(np.mean(ssim(images, marked, 255.0)))}
        table[row] = {}
        for i, name in enumerate(attacks.EVAL_ATTACKS):
            logits = extract(model, attacked(name, marked), key=jax.random.key(100 + i))
            table[row][name] = score(row, code, logits, keys, payloads)
            bar.update(1)
    bar.close()

    # FPR on clean images: every grid tile of every unwatermarked image, against random keys.
    tile = tiled.config.tile
    clean_tiles = np.asarray(tiling.extract_grid(images, tiling.grid(size, size, tile))).reshape(-1, tile, tile, 3)
    clean_logits = np.concatenate([extract(tiled, clean_tiles[i:i + 512], placement="fixed")
                                   for i in range(0, len(clean_tiles), 512)])
    neg_keys = rng.integers(0, 2, (args.fpr_keys, tiled.config.bits))
    # FPR 1e-6 needs tens of millions of trials: many more random keys.
    tail_keys = rng.integers(0, 2, (args.fpr_keys_tail, tiled.config.bits))
    tail = detect.empirical_fpr(clean_logits, tail_keys, fprs=(FPR,))[0]
    fpr = {"tiles": int(len(clean_logits)), "keys": int(args.fpr_keys),
           "bit_statistics": detect.bit_statistics(clean_logits),
           "thresholds": detect.empirical_fpr(clean_logits, neg_keys, fprs=(1e-1, 1e-2, 1e-3, 1e-4)),
           "keys_at_1e-6": int(len(tail_keys)), "trials_at_1e-6": tail["trials"],
           "detections_at_1e-6": tail["detections"],
           "expected_at_1e-6": tail["theory_fpr"] * tail["trials"],
           "ecc_false_accept_hard": detect.ecc_false_accept(code, "hard"),
           "ecc_false_accept_chase4": detect.ecc_false_accept(code, "chase", chase_bits=4)}
    full_clean = extract(full, images)
    fpr["full_image_bit_statistics"] = detect.bit_statistics(full_clean)

    # Tile-size ablation for row (c): the same tiled model reading smaller tiles.
    marked = marked_cache[(id(tiled), True, None)]
    ablation = {}
    sizes = [t for t in (16, 32, 48, 64) if t <= size] if not args.smoke else [8, 16]
    for t in tqdm(sizes, desc="tile sizes"):
        ablation[t] = {}
        for i, name in enumerate(ABLATION_ATTACKS):
            logits = extract(tiled, attacked(name, marked), key=jax.random.key(300 + i), tile=t)
            ablation[t][name] = score("c", code, logits, ecc_keys, payloads)
    return {"machine": bench.machine_info(), "n_images": n, "image_size": size, "fpr_target": FPR,
            "models": {"tiled": _describe(tiled), "full": _describe(full)}, "rows": ROWS, "quality": quality,
            "table": table, "clean_fpr": fpr, "tile_ablation": {str(k): v for k, v in ablation.items()}}


def _describe(model: WatermarkModel) -> dict:
    c = model.config
    return {"preset": c.name, "bits": c.bits, "channels": c.channels, "encoder_blocks": c.encoder_blocks,
            "extractor_blocks": c.extractor_blocks, "tile": c.tile, "working_size": c.working_size,
            "full_image": c.full_image, "strength_255": round(c.strength * 255, 3),
            "extractor_period": c.extractor_period, "refine_steps": c.refine_steps}


def markdown(result: dict) -> str:
    names = list(attacks.EVAL_ATTACKS)
    lines = [f"# QRMark robustness ({result['n_images']} held-out {result['image_size']}px images)", "",
             f"Machine: {result['machine']['processor']}, {result['machine']['backend']}, "
             f"jax {result['machine']['jax']}; command `{result['machine']['command']}`.", "",
             "Image quality of the watermarked images:", ""]
    lines.append(bench.markdown_table(["row", "PSNR dB (mean)", "PSNR dB (min)", "SSIM"],
                                      [[ROWS[r], q["psnr"], q["psnr_min"], q["ssim"]]
                                       for r, q in result["quality"].items()]))
    for metric, title in (("bit_acc", "Bit accuracy"), ("word_acc", "Word accuracy"), ("tpr", "TPR at FPR 1e-6")):
        lines += ["", f"## {title}", ""]
        lines.append(bench.markdown_table(["row"] + names, [[ROWS[r]] + [result["table"][r][a][metric] for a in names]
                                                            for r in result["table"]]))
    f = result["clean_fpr"]
    lines += ["", "## False positives on clean images", "",
              f"{f['tiles']} clean tiles x {f['keys']} random keys. Bit fairness: max |P(1) - 0.5| = "
              f"{f['bit_statistics']['max_abs_freq_dev']:.3f}, max |corr| = {f['bit_statistics']['max_abs_corr']:.3f}"
              f" (full-image extractor: {f['full_image_bit_statistics']['max_abs_freq_dev']:.3f}, "
              f"{f['full_image_bit_statistics']['max_abs_corr']:.3f}).", ""]
    lines.append(bench.markdown_table(["target FPR", "tau", "theory", "measured", "trials"],
                                      [[r["target_fpr"], r["tau"], r["theory_fpr"], r["measured_fpr"], r["trials"]]
                                       for r in f["thresholds"]]))
    lines += ["", f"At FPR 1e-6 (tau 41), {f['tiles']} tiles x {f['keys_at_1e-6']} random keys = "
              f"{f['trials_at_1e-6']:.3g} trials: {f['detections_at_1e-6']} detections, "
              f"{f['expected_at_1e-6']:.3g} expected. "
              f"ECC false-accept bound per key: hard {f['ecc_false_accept_hard']:.2g}, Chase-4 "
              f"{f['ecc_false_accept_chase4']:.2g}.", "", "## Tile-size ablation, row (c)", "",
              "The tiled model reading tiles of each size (same weights); word accuracy / TPR at 1e-6.", ""]
    abl = result["tile_ablation"]
    lines.append(bench.markdown_table(["tile"] + list(ABLATION_ATTACKS),
                                      [[t] + [f"{abl[t][a]['word_acc']:.3f} / {abl[t][a]['tpr']:.3f}"
                                              for a in ABLATION_ATTACKS] for t in abl]))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(attacks.EVAL_ATTACKS)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    width = 0.8 / len(result["table"])
    for ax, metric, title in ((axes[0], "bit_acc", "bit accuracy"), (axes[1], "tpr", "TPR at FPR 1e-6")):
        for j, r in enumerate(result["table"]):
            ax.bar(np.arange(len(names)) + j * width, [result["table"][r][a][metric] for a in names], width,
                   label=ROWS[r])
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiled", help="tiled model stem (default: the shipped cpu model)")
    parser.add_argument("--full", help="full-image model stem (default: the shipped cpu-full model)")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--fpr-keys", type=int, default=100, help="random keys for the 1e-1..1e-4 FPR table")
    parser.add_argument("--fpr-keys-tail", type=int, default=20000, help="random keys for the count at FPR 1e-6")
    parser.add_argument("--refine-steps", type=int, default=20, help="refinement steps of row (b, refined)")
    parser.add_argument("--smoke", action="store_true", help="untrained tiny models, a few images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - start, 1)
    bench.write_results(args.out, "qrmark_robustness", result, markdown(result))
    plot(result, args.out / "qrmark_robustness.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
