# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # FastCLIP and DRRho-CLIP
#
# `qrjax.clip` trains a two-tower CLIP with the global contrastive losses of FastCLIP (per-sample u estimators,
# temperature rules v0-v3, a gradient reduction that all-gathers features without gradient) and DRRho-CLIP (the
# same objective on the excess over a frozen reference model). This notebook covers:
# - the data: synthetic captioned scenes with held-out colour-shape pairs for zero-shot;
# - the u estimator in the log domain, and why the global loss's gradient estimate is unbiased where the mini-batch
#   loss's is not;
# - the two reductions on 8 devices and the bytes each moves;
# - a short training run of FastCLIP v3 against OpenCLIP's loss;
# - the shipped `cpu` model: zero-shot on the held-out pairs, retrieval.
#
# Runs in a few minutes on a CPU (8 simulated devices): `python notebooks/clip.py`. With `QRJAX_NOTEBOOK_SMOKE=1`
# (what the tests set) every cell runs at the `tiny` preset.

# %%
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import itertools  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qrjax import bench  # noqa: E402
from qrjax.clip import data, losses, sharded  # noqa: E402
from qrjax.clip.config import get_config  # noqa: E402
from qrjax.clip.evaluate import eval_sets, evaluate_sets, zero_shot_classifier  # noqa: E402
from qrjax.clip.export import load_pretrained  # noqa: E402
from qrjax.clip.train import encode_fn, make_state, train_and_evaluate  # noqa: E402
from qrjax.parallel import make_mesh  # noqa: E402
from qrjax.train import read_metrics  # noqa: E402

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller inputs, same cells: for tests
config = get_config("tiny" if SMOKE else "cpu")
print(config.name, config.image_size, "px,", config.num_samples, "training pairs")

# %% [markdown]
# ## The data
# One to three shapes of one colour in one region of a dark picture, captioned from templates. Eight colour-shape
# pairs never appear in training: they are the zero-shot classes, and neither the colour nor the shape alone names
# one of them (red circle, red cross, blue circle...). Users' own data come as a CSV/TSV of image paths and captions
# or as webdataset `.tar` shards (`qrjax.clip.data.open_pairs`).

# %%
scenes = data.SyntheticScenes(12, 64, seed=0)
fig, axes = plt.subplots(2, 6, figsize=(13, 5))
for ax, image, caption in zip(axes.flat, scenes.images(np.arange(12)), scenes.captions(np.arange(12))):
    ax.imshow(image)
    ax.set_title(caption.replace(" of the picture", "").replace("a photo of ", ""), fontsize=7)
    ax.axis("off")
plt.tight_layout()
print("held out:", data.class_names())

# %% [markdown]
# ## The u estimator
# FastCLIP's objective is the global contrastive loss tau/n sum_i log(eps + g_i(S)), g_i a mean over the whole data
# set. A mini-batch sees only B - 1 negatives; FCCO keeps, per sample, a moving average u_i of eps + g_i across the
# steps and weights each anchor's gradient by 1/u_i. `qrjax.clip.losses` stores log u, so tau = 0.01 (where
# exp(Delta/tau) reaches e^200) stays finite in float32.
#
# The bias test: over all C(10, B) batches of 10 pairs, the mean gradient estimate with the exact u equals the full
# objective's gradient; with u taken from the batch (what a mini-batch loss does) it does not.

# %%
with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    e1 = jnp.asarray(rng.normal(size=(10, 5)))
    e2 = jnp.asarray(rng.normal(size=(10, 5)))
    e1, e2 = e1 / jnp.linalg.norm(e1, axis=1, keepdims=True), e2 / jnp.linalg.norm(e2, axis=1, keepdims=True)
    tau, eps = 0.2, 1e-8
    cfg = get_config("tiny", ["loss=fastclip-v1", f"temperature={tau}", f"eps={eps}"])
    full = jnp.concatenate(jax.grad(lambda a, b: losses.gcl_objective(a, b, tau, eps), argnums=(0, 1))(e1, e2))
    d1, d2 = losses.similarity_deltas(e1, e2)
    exact = {"log_u1": losses.log_g(d1, tau, eps), "log_u2": losses.log_g(d2, tau, eps)}
    fresh = losses.init_tables(cfg, 10, jnp.float64)
    temp = losses.init_temperature(cfg, jnp.float64)

    @jax.jit
    def estimate(idx, tables, gamma):
        f = lambda a, b: losses.contrastive_terms(cfg, a[idx], b[idx], idx, tables, temp, gamma)[0]  # noqa: E731
        return jnp.concatenate(jax.grad(f, argnums=(0, 1))(e1, e2))

    rel = lambda g: float(jnp.max(jnp.abs(g - full)) / jnp.max(jnp.abs(full)))  # noqa: E731
    for b in (2, 3, 5, 8):
        batches = np.array(list(itertools.combinations(range(10), b)))
        fcco = sum(estimate(c, exact, 0.0) for c in batches) / len(batches)
        minibatch = sum(estimate(c, fresh, 1.0) for c in batches) / len(batches)
        print(f"B={b}: relative error of the mean gradient, exact u {rel(fcco):.1e}, batch u {rel(minibatch):.2f}")

# %% [markdown]
# ## Two reductions
# Each device embeds its share of the batch. OpenCLIP all-gathers the features *with* gradient, so the backward
# pass reduce-scatters the features' gradients before the parameter all-reduce. FastCLIP all-gathers them without
# gradient (plus u and the sample ids) and differentiates two blocks per device (its anchors against everyone, and
# everyone's anchors against its candidates): only the parameter all-reduce is left. Both give the same gradient
# (tested in float64); the bytes below are read from the compiled programs.

# %%
mesh = make_mesh((8,), (sharded.AXIS,))
batch_size = 16 if SMOKE else 128
cfg8 = get_config(config.name, [f"batch_size={batch_size}", "num_samples=1024" if not SMOKE else "num_samples=256"])
source = data.SyntheticScenes(cfg8.num_samples, cfg8.image_size)
from qrjax.clip.tokenizer import synthetic_tokenizer  # noqa: E402

idx = data.batch_indices(0, batch_size, source.size, 0)
batch = {"image": source.images(idx), "text": synthetic_tokenizer().encode(source.captions(idx),
                                                                          cfg8.context_length), "index": idx}
state = make_state(cfg8, source.size)
for reduction in ("fastclip", "openclip"):
    fn = jax.jit(sharded.make_grads(cfg8, encode_fn(cfg8), mesh, reduction=reduction))
    compiled = fn.lower(state.params, state.tables, state.temp, batch, 1.0, 0, 0.0, None).compile()
    print(f"{reduction:9s}", bench.collective_bytes(compiled))

# %% [markdown]
# ## A short run: FastCLIP v3 against OpenCLIP's loss
# The same data, batches and steps; evaluation on the held-out pairs (zero-shot) and the retrieval set.

# %%
steps = 4 if SMOKE else 300
curves = {}
with tempfile.TemporaryDirectory() as tmp:
    for loss in ("openclip", "fastclip-v3"):
        run = get_config(config.name, [f"loss={loss}", f"steps={steps}", f"eval_every={max(steps // 3, 1)}",
                                       "num_samples=4096" if not SMOKE else "num_samples=256"])
        summary = train_and_evaluate(run, Path(tmp) / loss, devices=1, progress=False)
        rows = [r for r in read_metrics(Path(tmp) / loss / "metrics.jsonl") if r.get("split") == "eval"]
        curves[loss] = [(r["step"], r["zero_shot_top1"], r["retrieval_r1_i2t"]) for r in rows]
        print(loss, {k: round(summary[k], 3) for k in ("loss", "tau", "zero_shot_top1", "retrieval_r1_i2t",
                                                        "objective")})
fig, ax = plt.subplots(figsize=(5, 3))
for loss, rows in curves.items():
    ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=f"{loss} zero-shot")
ax.set_xlabel("step")
ax.legend(fontsize=8)

# %% [markdown]
# ## The shipped model
# `qrjax clip train --preset cpu` (command in the README) trained it on this project's CPU. Zero-shot on the
# held-out colour-shape pairs it never saw together, with CLIP's prompt ensembling:

# %%
model = load_pretrained("cpu")
sets = eval_sets("synthetic", model.config.image_size, per_class=5 if SMOKE else 50)
print({k: round(v, 3) for k, v in evaluate_sets(model, sets).items()})
text = model.encode_texts([t.format(c) for c in sets.class_names for t in sets.templates])
classifier = zero_shot_classifier(text.reshape(len(sets.class_names), len(sets.templates), -1))
pred = np.argmax(model.encode_images(sets.zs_images) @ classifier.T, axis=1)
confusion = np.zeros((len(sets.class_names),) * 2, int)
np.add.at(confusion, (sets.zs_labels, pred), 1)
fig, ax = plt.subplots(figsize=(5, 4))
ax.imshow(confusion, cmap="Blues")
ax.set_xticks(range(len(sets.class_names)), sets.class_names, rotation=60, fontsize=7)
ax.set_yticks(range(len(sets.class_names)), sets.class_names, fontsize=7)
ax.set_title("zero-shot confusion (rows: truth)", fontsize=9)
plt.tight_layout()
print("tau of the shipped model:", model.tau)
