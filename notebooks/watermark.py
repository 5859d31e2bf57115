# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # QRMark watermarks: embed, attack, extract one tile, decode
#
# A model hides a 48-bit BCH(48, 36) codeword (32 payload bits) in an image; detection reads a single tile of the
# 256-pixel working image instead of the whole image, and the error-correcting code repairs the bit errors that
# tiling and image edits cause. The shipped `cpu` model's carrier is a 16-pixel periodic luma pattern in the low
# harmonics JPEG keeps; the fast path reads one 64-pixel tile cut on the embedding grid, and when a crop, resize or
# rotation has moved the grid, the synchronised reader finds the carrier's scale, angle and shift again
# (`qrjax.watermark.sync`). The measured figures are in experiments/results/qrmark_robustness.md; this notebook
# shows the workflow.
#
# Runs in under a minute on a CPU: `python notebooks/watermark.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests
# set) the cells run with fewer attacks and refinement steps.

# %%
import os

import jax
import numpy as np

from qrjax import tiling
from qrjax.data import bundled_images
from qrjax.ecc import get_code
from qrjax.metrics import psnr
from qrjax.watermark import attacks, detect, embed, extract, load_pretrained, sync

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # less work, same cells: for tests
model = load_pretrained("cpu")
code = get_code("qrmark-bch")
print(model.config.name, "preset:", model.config.channels, "channels, tile", model.config.tile,
      "of", model.config.working_size)

# %% [markdown]
# ## Embed a payload in held-out photographs
# Any size works: the residual is computed on the 256-pixel working image (tile by tile) and upsampled.

# %%
photos = bundled_images(("grace_hopper", "coffee"))
images = [photos["grace_hopper"], photos["coffee"][:256, 150:406]]
payload = np.array([int(b) for b in format(0xC0FFEE11, "032b")], np.uint8)
bits = np.asarray(code.encode(payload[None]))[0]
marked = embed(model, images, bits)
for name, src, dst in zip(("grace_hopper", "coffee crop"), images, marked):
    print(f"{name:13s} {src.shape} PSNR {float(psnr(src, dst, 255.0)):.1f} dB")

# %% [markdown]
# ## Attack, extract one tile, decode
# Each attack is a real image edit (Pillow JPEG, crops, blur, ...). The extractor reads one random grid tile.

# %%
img = marked[1]
for name in ("none", "jpeg80") if SMOKE else ("none", "jpeg80", "jpeg50", "blur3", "brightness0.5"):
    attacked = attacks.eval_attack(name, img)
    logits = extract(model, attacked[None], key=jax.random.key(0))
    hard = detect.decode_payload(code, logits)
    soft = detect.decode_payload(code, logits, method="chase")
    found, p, m = detect.detect(logits, bits[None], fpr=1e-6)
    ok = bool(np.all(np.asarray(soft.payload)[0] == payload))
    print(f"{name:14s} bits right {int(m[0])}/48  p={float(p[0]):.1e}  detected={bool(found[0])}  "
          f"hard ok={bool(hard.ok[0])}  chase payload right={ok}")

# %% [markdown]
# ## Geometric edits: the synchronised reader
# A crop, a resize or a rotation moves the tile grid, and the tile reads noise. The reader estimates the edit's
# scale and angle from the carrier's lattice of spectral peaks, warps the image back once, demodulates at all 256
# cyclic shifts of the 16-pixel period, shortlists the 64 that look most like a message (a score blind to the
# bits' signs) and lets the key pick among them; the test then pays for those 64 choices (Bonferroni).

# %%
tau_tile, tau_sync = detect.threshold(48, 1e-6), detect.threshold(48, 1e-6 / sync.n_candidates(model.config))
for name in ("rotate5",) if SMOKE else ("rotate5", "crop0.71", "resize0.5", "jpeg80+crop0.71+brightness0.5"):
    attacked = attacks.eval_attack(name, img)
    tile_right = int(np.sum((extract(model, attacked[None], placement="fixed")[0] > 0) == bits))
    r = sync.read(model, attacked, bits)
    right = int(np.sum((r.logits > 0) == bits))
    print(f"{name:30s} {attacked.shape[:2]}  tile {tile_right}/48 (needs {tau_tile})  synchronised {right}/48 "
          f"(needs {tau_sync}; scale {r.scale:.3f}, angle {r.angle:+.2f})")

# %% [markdown]
# ## Informed embedding
# The encoder cannot see how its carriers collide with one particular image; a few gradient steps on the residual
# against the extractor can (`refine_steps`, same strength bound). Bits right over every grid tile of the coffee crop:

# %%
for steps in (0, 2 if SMOKE else 20):
    refined = embed(model, [images[1]], bits, refine_steps=steps)[0]
    cells = np.asarray(tiling.extract_grid(refined[None], tiling.grid(256, 256, 64)))[0]
    right = (extract(model, cells, placement="fixed") > 0) == bits
    print(f"refine_steps={steps:2d}  PSNR {float(psnr(images[1], refined, 255.0)):.1f} dB  "
          f"bit accuracy over {len(cells)} tiles {right.mean():.4f}")

# %% [markdown]
# ## Clean images look like fair coins
# On unwatermarked tiles the 48 extracted bits should match a key like coin flips: that is what makes the
# Binomial(48, 1/2) p-value a valid false-positive rate.

# %%
clean = np.asarray(tiling.extract_grid(photos["grace_hopper"][None, :512, :512], tiling.grid(512, 512, 64)))[0]
clean_logits = extract(model, clean, placement="fixed")
print(detect.bit_statistics(clean_logits))
keys = np.random.default_rng(0).integers(0, 2, (50, 48))
for row in detect.empirical_fpr(clean_logits, keys, fprs=(0.1, 0.01)):
    print(row)
