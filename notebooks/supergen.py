# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # SuperGen: tiled ultra-high-resolution generation, a region-aware tile cache, tile parallelism
#
# This notebook covers `qrjax.diffusion`:
# - the shipped DiT, trained with flow matching on 32-pixel crops of the photographs bundled in the wheels,
#   one class per photograph;
# - SuperGen's pipeline: a native-size sketch, an upsample, a re-noise, then stage 2 in native-size tiles whose grid
#   shifts every step;
# - the cache, which skips tiles whose predicted change is small, and what it costs in fidelity;
# - tile parallelism over simulated devices, with output bit-identical to one device.
#
# Runs in a few minutes on a CPU: `python notebooks/supergen.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests
# set) every cell runs at a smaller size: 2x per side, 6 steps, fewer classes and thresholds.

# %%
import os

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller sizes, same cells: for tests
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qrjax.diffusion import load_pretrained  # noqa: E402
from qrjax.diffusion import supergen as sg  # noqa: E402
from qrjax.diffusion.config import SuperGenConfig  # noqa: E402
from qrjax.metrics import psnr, seam_ratio  # noqa: E402

model = load_pretrained("cpu")
print(model.config.name, "DiT:", model.config.dim, "wide,", model.config.depth, "blocks; native",
      model.config.image_size, "px; latent tile", model.config.latent_size, "x", model.config.latent_size, "x",
      model.config.channels)
print("classes:", ", ".join(model.class_names))

# %% [markdown]
# ## Native-size samples
# Stage 1 alone: one class per photograph it was trained on, 20 Euler steps. At 32 pixels the samples are textures
# and colour layouts of their photograph, not objects.

# %%
cfg = SuperGenConfig(steps=6 if SMOKE else 20, restart_step=2)
SCALE = 2 if SMOKE else 4
classes = ["astronaut", "china"] if SMOKE else ["astronaut", "chelsea", "brick", "grass", "china", "flower"]
fig, axes = plt.subplots(2, len(classes), figsize=(2 * len(classes), 4.3))
for col, name in enumerate(classes):
    for row in range(2):
        latent = sg.sketch(model, cfg, jax.random.key(10 * row + col), model.label(name))
        axes[row, col].imshow(sg.to_uint8(model, latent)[0])
        axes[row, col].axis("off")
    axes[0, col].set_title(name, fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## SuperGen at 4x per side
# The sketch is decoded, upsampled bicubically in pixel space and re-encoded, re-noised to step 2 of 20, and refined in
# 16 native-size tiles on a torus whose grid moves by one latent pixel per axis every step.

# %%
label = model.label("china")
key = jax.random.key(3)
sketch = sg.sketch(model, cfg, jax.random.split(key)[0], label)
image, stats = sg.generate(model, cfg, scale=SCALE, label=label, key=key, sketch_latent=sketch, progress=False)
bicubic = sg.to_uint8(model, sg.upsample(model, sketch, (SCALE * model.config.latent_size,) * 2))[0]
print(f"{image.shape[0]}x{image.shape[1]}: {stats.tiles} tiles, {stats.model_calls} model calls, "
      f"{stats.stage2_seconds:.2f} s in stage 2")
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
for ax, (title, img) in zip(axes, [("sketch (32 px)", sg.to_uint8(model, sketch)[0]), (f"bicubic x{SCALE}", bicubic),
                                    (f"SuperGen x{SCALE}", image)]):
    ax.imshow(img, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Why the grid moves
# With a fixed grid every step sees the same tile borders, and nothing ever denoises across them. Compare the gradient
# energy on the pixel lines where borders sit with the energy elsewhere (1.0 means no seam).

# %%
fixed, _ = sg.generate(model, cfg.replace(shift_divisions=0), scale=SCALE, label=label, key=key, sketch_latent=sketch,
                       progress=False)
untiled, _ = sg.generate(model, cfg.replace(tiling="none"), scale=SCALE, label=label, key=key, sketch_latent=sketch,
                         progress=False)
period, patch = model.config.image_size, model.autoencoder.factor
for name, img in [("fixed grid", fixed), ("shifted", image), ("untiled", untiled)]:
    print(f"{name:10s} seam ratio at the fixed grid's borders: {seam_ratio(img, period, phase=patch):.2f}")

# %% [markdown]
# ## The region-aware cache
# Each tile accumulates a predicted relative change k·|Δx|/|v|. A tile is skipped (its input plus its cached residual
# stands in for the model) while the accumulation stays under its threshold. The two most variable regions get
# thresholds 1.5x and 1.25x. Only active tiles go through the model: they are gathered into a packed batch.

# %%
rows = []
for thr in (0.0, 0.8) if SMOKE else (0.0, 0.3, 0.5, 0.8):
    img, st = sg.generate(model, cfg.replace(cache_threshold=thr), scale=SCALE, label=label, key=key,
                          sketch_latent=sketch, progress=False)
    rows.append((thr, st, img))
    print(f"threshold {thr:4.2f}: skipped {st.tiles_skipped:3d}/{st.stage2_tiles} tiles, "
          f"PSNR vs uncached {float(psnr(img, rows[0][2], 255.0)):6.2f} dB, per step {st.skips_per_step}")
fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4))
for ax, (thr, st, img) in zip(axes, rows):
    ax.imshow(img)
    ax.set_title(f"threshold {thr}: {st.skip_rate:.0%} skipped", fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Tile parallelism
# On 4 (simulated) devices each holds a 2x2 block of tiles of the grid-framed canvas. A grid move sends one strip
# per sharded axis to the neighbouring block, and that is all that crosses devices. The result equals the
# single-device run bit for bit.

# %%
_, s1, lat1 = sg.generate(model, cfg.replace(max_batch=1), scale=SCALE, label=label, key=key, sketch_latent=sketch,
                          progress=False, return_latent=True)
_, s4, lat4 = sg.generate(model, cfg.replace(max_batch=1), scale=SCALE, label=label, key=key, sketch_latent=sketch,
                          devices=4, progress=False, return_latent=True)
print("mesh", s4.mesh_shape, "bit-identical:", bool(np.array_equal(np.asarray(lat1), np.asarray(lat4))))
print("bytes exchanged per step:", s4.latent_bytes_exchanged_per_step, "; strips the shift moves:",
      s4.moved_strip_bytes_per_step, "; the whole canvas:", np.asarray(lat1).nbytes)
assert np.array_equal(np.asarray(lat1), np.asarray(lat4))

# %% [markdown]
# ## Video latents
# Frames × height × width latents go through the same DiT as one token grid. Tiles cut space only, and every tile
# keeps all frames. The shipped model is an image model: its rotary positions cover rows and columns only, and it
# was trained on stills, so the frames show what the tiling does, not motion. A video preset (`frames` > 1) gives
# time a quarter of the rotary pairs.

# %%
video, vs = sg.generate(model, cfg.replace(steps=4 if SMOKE else 8), scale=2, label=label, key=key, frames=2, progress=False)
print("video", video.shape, "tiles", vs.tiles)
