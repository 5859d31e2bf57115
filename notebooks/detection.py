# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # QRMark detection system: one tile per image, overlapped and resource-aware
#
# The detector reads one 64-pixel tile of the 256-pixel working image instead of the whole image. The host decodes
# only what that tile needs: JPEG at reduced scale (Pillow's draft mode), PNG stopped after the tile's rows. The
# device gets a uint8 window plus two small resampling matrices and computes resize + crop + normalise + extractor +
# decision + ECC decoding in one compiled function. Reading, device work and writing run concurrently, and a warm-up
# decides how many workers each stage gets (QRMark's greedy allocator). This notebook builds a small folder of
# watermarked, clean and broken files, then looks at each piece and compares with the sequential full-image baseline.
#
# Runs in about a minute on a 2-core CPU: `python notebooks/detection.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the
# tests set) the folder holds fewer images and the timing runs one round.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from qrjax import bench, tiling
from qrjax.data import bundled_source
from qrjax.ecc import get_code
from qrjax.watermark import embed, load_pretrained
from qrjax.watermark.pipeline import Decision, FullImageDetector, TileDetector

model, baseline_model = load_pretrained("cpu"), load_pretrained("cpu-full")
code = get_code("qrmark-bch")
rng = np.random.default_rng(0)
SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # fewer images and rounds, same cells: for tests
ROUNDS = 1 if SMOKE else 3
payload = rng.integers(0, 2, code.payload_bits).astype(np.uint8)
key = np.asarray(code.encode(payload[None]))[0]

# %% [markdown]
# ## A folder to scan: watermarked and clean photographs, PNG and JPEG, and two broken files

# %%
folder = Path(tempfile.mkdtemp(prefix="qrjax-detection-"))
src = bundled_source("val", area=(0.3, 1.0))
for size in (256, 512):
    n_marked, n_clean = (2, 2) if SMOKE else (6, 2)
    imgs = src.sample(rng, size, n_marked + n_clean)
    marked = embed(model, imgs[:n_marked], key)
    for i, im in enumerate([*marked, *imgs[n_marked:]]):
        fmt = "jpg" if i % 2 else "png"
        name = f"{'marked' if i < n_marked else 'clean'}_{size}_{i}.{fmt}"
        Image.fromarray(im).save(folder / name, **({"quality": 95} if fmt == "jpg" else {}))
(folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
(folder / "empty.png").write_bytes(b"")
paths = sorted(str(p) for p in folder.iterdir())
print(len(paths), "files in", folder)

# %% [markdown]
# ## What the host reads for one tile
# For a 512-pixel image resized to 256, the top-left 64-pixel tile depends on a 129 x 129 window of source pixels:
# the tile's 128 source pixels plus the reach of the antialiasing triangle. `tiling.tile_source` gives that window
# and the two matrices with tile = Ry @ window @ Rx^T, which is exactly `jax.image.resize` followed by the crop.

# %%
geo = tiling.tile_source(512, 512, (256, 256), (0, 0), 64)
print("window (y0, y1, x0, x1):", geo.window, " Ry:", geo.ry.shape, " Rx:", geo.rx.shape)

# %% [markdown]
# ## Warm-up and plan
# The warm-up times each stage with one worker; workers then go to the stage with the highest time per worker.

# %%
decision = Decision(code, key[None], fpr=1e-6)
detector = TileDetector(model, decision)
plan = detector.warmup(paths, budget=4, batch_hint=16)
print(plan.describe())

# %% [markdown]
# ## Detect: one record per input, bad files included

# %%
records = list(detector.run(paths, plan))
for r in records:
    name = Path(r["path"]).name
    if r["status"] == "ok":
        print(f"{name:22s} detected={r['detected']!s:5s} matching={r['matching_bits']:2d}/48 p={r['p_value']:.1e} "
              f"payload={r['payload']} ecc_ok={r['ecc_ok']}")
    else:
        print(f"{name:22s} ERROR {r['error']}")
assert len(records) == len(paths)

# %% [markdown]
# ## The same decisions as a plain per-image call
# The system is a cascade: the tile, then the synchronised reader (`qrjax.watermark.sync`) for what the tile did not
# detect. `sync.detect_cascade` is the same cascade, one image at a time.

# %%
from qrjax.data.decode import decode  # noqa: E402
from qrjax.watermark import sync  # noqa: E402

agree = 0
ok_records = [r for r in records if r["status"] == "ok"]
for r in ok_records:
    want = sync.detect_cascade(model, [decode(r["path"], min_size=256).rows], key, fpr=1e-6)[0]
    agree += (want["stage"], want["detected"], want["matches"]) == (r["stage"], r["detected"], r["matching_bits"])
print(f"pipeline == plain call on {agree}/{len(ok_records)} images")

# %% [markdown]
# ## Against the sequential full-image baseline

# %%
baseline = FullImageDetector(baseline_model, decision)
# warm-up (compiles) on 4 files, then ROUNDS rounds of baseline, system over every file; the records hold no jax
# arrays
timed = bench.interleaved({"baseline": lambda: list(baseline.run(paths, 16)),
                           "system": lambda: list(detector.run(paths, plan))}, rounds=ROUNDS,
                          warmup_fns={"baseline": lambda: list(baseline.run(paths[:4], 16)),
                                      "system": lambda: list(detector.run(paths[:4], plan))},
                          host={"baseline", "system"})
timings = {name: len(paths) / timed.median(name) for name in ("baseline", "system")}
for name, recs in timed.results.items():
    truth = ["marked" in Path(r["path"]).name for r in recs if r["status"] == "ok"]
    found = [r["detected"] for r in recs if r["status"] == "ok"]
    tpr = np.mean([f for f, t in zip(found, truth) if t])
    fpr = np.mean([f for f, t in zip(found, truth) if not t])
    print(f"{name:9s} {timings[name]:7.1f} images/s  TPR {tpr:.2f}  FPR {fpr:.2f}")
print(f"speedup {timed.ratio('baseline', 'system'):.1f}x (median of {ROUNDS} interleaved rounds on a small folder; "
      f"experiments/qrmark_throughput.py measures it properly)")

fig, ax = plt.subplots(figsize=(4, 3))
ax.bar(list(timings), list(timings.values()), color=["C1", "C0"])
ax.set_ylabel("images / s")
fig.tight_layout()
fig.savefig("detection_throughput.png")
