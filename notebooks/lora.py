# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # ALTO: many LoRA tuning jobs over one frozen backbone
#
# `qrjax.lora` tunes a whole hyperparameter grid (learning rate x rank x batch) of LoRA adapters on one frozen
# Llama-layout backbone at once. This notebook covers:
# - the shipped backbone (pre-trained here on synthetic text skills) and the built-in tuning tasks;
# - the multi-LoRA layer: one base matmul over every adapter's tokens plus two grouped matmuls (`lax.ragged_dot`),
#   against the per-adapter loop;
# - ALTO's early-exit rules on a loss trajectory;
# - a batched tuning run with early exit and back-fill, and what each configuration became.
#
# Runs in a few minutes on a CPU: `python notebooks/lora.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests set)
# every cell runs at a smaller size.

# %%
import dataclasses
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from qrjax.lora.backbone import resolve_backbone
from qrjax.lora.config import get_tune_config
from qrjax.lora.early_exit import Monitor
from qrjax.lora.multilora import lora_delta
from qrjax.lora.tasks import TASKS, default_grid, make_task
from qrjax.lora.train import tune

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller inputs, same cells: for tests

# %% [markdown]
# ## The backbone and the tasks
# The shipped `tiny` backbone: RMSNorm, rotary positions, SwiGLU and grouped-query attention, stored as a Hugging
# Face Llama checkpoint (config.json + model.safetensors), byte-level vocabulary. `load_backbone(path)` reads users'
# checkpoints the same way.

# %%
model_config, base = resolve_backbone("tiny")
params = sum(x.size for x in jax.tree.leaves(base))
print(model_config)
print(f"{params:,} frozen parameters")
for name in TASKS:
    task = make_task(name, num_train=8, num_val=2)
    print(f"{name:>10}: {task.train[0][0]!r} -> {task.train[0][1]!r} (seq_len {task.seq_len})")

# %% [markdown]
# ## The multi-LoRA layer
# Tokens are grouped contiguously by adapter; Y = XW + s_i (X_i A_i) B_i is one matmul for XW and two grouped
# matmuls for all adapters. Adapters of lower rank are padded with exact zeros. The per-adapter loop computes the
# same thing adapter by adapter.

# %%
rng = np.random.default_rng(0)
n_adapters, d, r, tokens = (8, 128, 8, 64) if SMOKE else (32, 512, 16, 256)
x = jnp.asarray(rng.normal(size=(n_adapters * tokens, d)), jnp.float32)
a = jnp.asarray(rng.normal(size=(n_adapters, d, r)) / np.sqrt(d), jnp.float32)
b = jnp.asarray(rng.normal(size=(n_adapters, r, d)), jnp.float32)
sizes = jnp.full((n_adapters,), tokens, jnp.int32)
scale = jnp.full((n_adapters,), 2.0, jnp.float32)
grouped = jax.jit(lambda x, a, b: lora_delta(x, a, b, sizes, scale, impl="ragged"))
sequential = jax.jit(lambda x, a, b: lora_delta(x, a, b, np.asarray(sizes), scale, impl="sequential"))
print("max |grouped - sequential| =", float(jnp.max(jnp.abs(grouped(x, a, b) - sequential(x, a, b)))))
for name, fn in (("grouped", grouped), ("sequential", sequential)):
    fn(x, a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        fn(x, a, b).block_until_ready()
    print(f"{name:>10}: {(time.perf_counter() - t) / 5 * 1e3:.2f} ms for {n_adapters} adapters")

# %% [markdown]
# ## Early exit
# ALTO watches each configuration's EMA training loss and its validation loss: both rising for two evaluations is
# divergence, validation above training by more than 10 % twice is overfitting (the best checkpoint is kept), and at
# 5 % of the steps only the best quarter of a task's configurations go on. No exit before the 4th evaluation.

# %%
monitor = Monitor()
for step, (train, val) in enumerate([(2.0, 2.1), (1.6, 1.7), (1.4, 1.5), (1.5, 1.6), (1.8, 1.9), (2.3, 2.4)], 1):
    for _ in range(10):
        monitor.train(train)
    reason = monitor.evaluate(step * 10, val)
    print(f"eval {step}: ema {monitor.ema:.3f}, val {val:.2f} -> {reason}")

# %% [markdown]
# ## A tuning run
# The whole default grid (24 configurations) on two tasks, 8 adapters per step, early exit on. Freed slots are
# back-filled at once, without recompiling.

# %%
config = dataclasses.replace(get_tune_config("tiny" if SMOKE else "cpu"), rank_max=8)  # the grid's largest rank
names = ["reverse", "recall"]
tasks = {n: make_task(n, num_train=config.num_train, num_val=config.num_val) for n in names}
points = default_grid().configs(names)
if SMOKE:
    points = points[::4]
with tempfile.TemporaryDirectory() as workdir:
    summary = tune((model_config, base), tasks, points, config, workdir, progress=False)
print(f"{len(summary['configs'])} configurations, {summary['engine_steps']} engine steps, {summary['samples']} "
      f"samples, {summary['seconds']:.1f} s; exits {summary['exits']}")
for t, best in summary["best"].items():
    print(f"{t}: best validation loss {best['best_val_loss']:.4f} (configuration {best['index']})")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
colors = {"finished": "tab:green", "exited": "tab:red"}
for i, c in enumerate(summary["configs"]):
    ax.barh(i, c["steps"], color=colors[c["status"]])
    if c["exit_reason"]:
        ax.text(c["steps"] + 1, i, c["exit_reason"], va="center", fontsize=6)
ax.set_xlabel("steps trained")
ax.set_ylabel("configuration")
ax.set_title("each configuration: finished (green) or exited early (red)")
fig.tight_layout()
plt.show()
