# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Text-to-image: the MMDiT, SDiT's region-adaptive computation, TIDE's resolution extrapolation
#
# This notebook covers the text side of `qrjax.diffusion`:
# - the shipped `t2i-cpu` model: an MMDiT whose image tokens and the shipped CLIP's caption tokens share one joint
#   attention, trained with flow matching on CLIP's captioned synthetic scenes at 32 px;
# - TIDE above the training size: the prompt's share of attention shrinks as image tokens multiply, text anchoring
#   restores it, and a step-aware temperature replaces fixed sharpening;
# - SDiT: Quickshift regions of the predicted image, complex regions computed at every step, calm ones reusing their
#   cached output, and the region borders refined;
# - the shipped CLIP reading the results back (CLIP score and the prompt's attributes).
#
# Runs in a few minutes on a CPU: `python notebooks/text_to_image.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests
# set) every cell runs smaller: 2x per side, 4 steps, one prompt.

# %%
import os

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller sizes, same cells: for tests

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qrjax.diffusion import load_pretrained  # noqa: E402
from qrjax.diffusion.config import TextToImageConfig  # noqa: E402
from qrjax.diffusion.evaluate import attribute_accuracy, clip_score, prompt_set  # noqa: E402
from qrjax.diffusion.t2i import generate_image  # noqa: E402
from qrjax.diffusion.tide import sharpening  # noqa: E402
from qrjax.metrics import psnr  # noqa: E402

model = load_pretrained("t2i-cpu")
mc = model.config
print(f"{mc.name}: MMDiT {mc.dim} wide, {mc.depth} joint blocks; {mc.image_size} px, {mc.image_tokens} image tokens "
      f"+ {mc.text_length} caption tokens from CLIP {mc.text_model!r}")
STEPS = 4 if SMOKE else 20
SCALE = 2 if SMOKE else 4
attributes, prompts = prompt_set(1 if SMOKE else 6, seed=1)
cfg = TextToImageConfig(steps=STEPS)

# %% [markdown]
# ## At the training size
# Each prompt names a count, a colour, a shape and a position. The shipped CLIP scores how well the image matches
# (CLIP score, 100 x cosine) and reads each attribute back by choosing among captions that change it alone.

# %%
native = np.stack([generate_image(model, cfg, p, key=jax.random.key(i), progress=False)[0]
                   for i, p in enumerate(prompts)])
print("CLIP score:", np.round(clip_score(model.clip, native, prompts), 1))
print({k: v.tolist() for k, v in attribute_accuracy(model.clip, native, attributes).items()})
fig, axes = plt.subplots(1, len(prompts), figsize=(2.2 * len(prompts), 2.4), squeeze=False)
for ax, img, p in zip(axes[0], native, prompts):
    ax.imshow(img)
    ax.set_title(p, fontsize=6)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## TIDE above the training size
# At `SCALE` times the training side the canvas holds SCALE^2 times the image tokens. With equal logits the caption's
# share of attention would fall from T/(T + N_train) to T/(T + N); the anchor adds log(N / N_train) to the text keys'
# logits, which restores it. Fixed scaling multiplies every logit by lambda = log(N + T)/log(N_train + T) at every
# step; TIDE's temperature goes from lambda at the first step to 1 at the last. RoPE positions are interpolated into
# the training grid (the default); the last row extends them instead, and the objects repeat over the canvas.

# %%
n = mc.image_tokens * SCALE * SCALE
t_text = mc.text_length
print(f"N = {n}, N_train = {mc.image_tokens}, lambda = {sharpening(n, mc.image_tokens, t_text):.3f}")
print(f"text share at equal logits: training {t_text / (t_text + mc.image_tokens):.3f}, "
      f"uncorrected {t_text / (t_text + n):.3f}")
rows = {}
for name, corr, positions in (("none", "none", "interpolate"), ("fixed", "fixed", "interpolate"),
                              ("tide", "tide", "interpolate"), ("tide, extended", "tide", "extend")):
    rows[name] = np.stack([generate_image(model, cfg.replace(correction=corr, positions=positions), p, scale=SCALE,
                                          key=jax.random.key(i), progress=False)[0]
                           for i, p in enumerate(prompts)])
    acc = attribute_accuracy(model.clip, rows[name], attributes)
    print(f"{name:>14}: CLIP score {clip_score(model.clip, rows[name], prompts).mean():.1f}, attributes "
          f"{np.mean([v.mean() for v in acc.values()]):.2f}")
fig, axes = plt.subplots(len(prompts), len(rows), figsize=(2.3 * len(rows), 2.4 * len(prompts)), squeeze=False)
for i in range(len(prompts)):
    for j, corr in enumerate(rows):
        axes[i][j].imshow(rows[corr][i])
        axes[i][j].set_title(corr if i == 0 else "", fontsize=8)
        axes[i][j].axis("off")
plt.show()

# %% [markdown]
# ## SDiT: compute where the image still changes
# After the warm-up steps, Quickshift segments the predicted clean latent; the most changing regions are computed
# every step and the rest every few steps, their tokens' keys and values staying visible from the cache. The image is
# compared with full computation from the same noise.

# %%
prompt = prompts[0]
full, st_full = generate_image(model, cfg.replace(correction="tide"), prompt, scale=SCALE, progress=False)
fast, st = generate_image(model, cfg.replace(correction="tide", sdit=True), prompt, scale=SCALE, progress=False)
print(f"tokens: full {st_full.tokens_computed}, SDiT {st.tokens_computed} ({st.token_ratio:.2f}x fewer); "
      f"seconds {st_full.seconds:.2f} vs {st.seconds:.2f}; PSNR "
      f"{float(psnr(fast.astype(np.float32), full.astype(np.float32), 255.0)):.1f} dB")
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(full)
axes[0].set_title("full computation", fontsize=8)
axes[1].imshow(fast)
axes[1].set_title("SDiT", fontsize=8)
axes[2].plot(st.tokens_per_step, marker="o")
axes[2].set_xlabel("step")
axes[2].set_ylabel("tokens computed")
for ax in axes[:2]:
    ax.axis("off")
plt.show()
