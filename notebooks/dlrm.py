# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # DLRM with a compressed embedding all-to-all
#
# `qrjax.dlrm` trains a DLRM with hybrid parallelism: tables placed on devices, MLPs data-parallel, and the pooled
# embeddings exchanged by `lax.all_to_all`. With compression on, the collective moves fixed-width int8 codes of an
# error-bounded quantiser (`qrjax.compression.fixed`), so the bytes saved are bytes not sent. This notebook covers:
# - the data: a synthetic Criteo-like stream with a hidden teacher (and the real Criteo text format);
# - the quantiser's bound on a pooled-embedding block, and what the codes cost;
# - the dual-level bound: table-wise eps times a step multiplier going from 2 to 1;
# - the placement of tables on 8 devices and the bytes each step puts on the wire;
# - a short training run, uncompressed against dual-level adaptive, on the same batches.
#
# Runs in a few minutes on a CPU (8 simulated devices): `python notebooks/dlrm.py`. With `QRJAX_NOTEBOOK_SMOKE=1`
# (what the tests set) every cell runs at the `tiny` preset.

# %%
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qrjax.compression import bound_violations, fixed  # noqa: E402
from qrjax.dlrm import bounds, sharded  # noqa: E402
from qrjax.dlrm.config import get_config  # noqa: E402
from qrjax.dlrm.data import SyntheticCriteo  # noqa: E402
from qrjax.metrics import roc_auc  # noqa: E402
from qrjax.train import read_metrics  # noqa: E402

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller inputs, same cells: for tests
config = get_config("tiny" if SMOKE else "cpu")
print(config.name, "tables:", config.table_sizes)

# %% [markdown]
# ## The data
# 13 dense count features (log-transformed as DLRM does), 26 categorical features with Zipf popularity over the
# Criteo Kaggle table-size profile (capped at `max_ind_range` rows), and labels drawn from a hidden logistic
# teacher with per-row effects and low-rank interactions between tables. The teacher's own AUC is the ceiling a
# model can reach. `open_data("train.txt", sizes)` reads the real Criteo text format in the same shape.

# %%
data = SyntheticCriteo(config.table_sizes, multi_hot=config.multi_hot, seed=0)
batch = data.batch(0, 2048)
print({k: (v.shape, v.dtype.name) for k, v in batch.items()}, "click rate", batch["label"].mean().round(3))
print("teacher AUC (the ceiling):", round(roc_auc(batch["label"], data.teacher_logits(batch)), 4))
counts = np.bincount(batch["sparse"][:, 2, 0], minlength=config.table_sizes[2])
plt.figure(figsize=(5, 3))
plt.loglog(np.sort(counts)[::-1] + 1)
plt.xlabel("row rank")
plt.ylabel("lookups + 1")
plt.title("table 2: Zipf popularity in one batch")
plt.show()

# %% [markdown]
# ## The quantiser on one pooled block
# Per block, e = eps (max - min); codes round((x - centre) / step) with the step just under 2e. At eps = 0.01 the
# codes stay within +-26, so int8 holds them with room; their order-0 entropy says what an entropy coder would
# still save (an estimate: XLA collectives move fixed-size buffers).

# %%
pooled = jnp.asarray(np.random.default_rng(1).normal(size=(1, 1, 256, 32)).astype(np.float32) * 0.05)
for eps in (0.01, 0.03, 0.05):
    q = fixed.quantize(pooled, eps, axes=(2, 3))
    rebuilt = fixed.dequantize(q)
    print(f"eps={eps}: max |code| {int(jnp.abs(q.codes.astype(jnp.int32)).max()):3d}, entropy "
          f"{float(fixed.entropy_bits(fixed.code_histogram(q.codes))):.2f} bits, violations (float64 check) "
          f"{bound_violations(np.asarray(pooled[0, 0]), np.asarray(rebuilt[0, 0]), eps, 'rel')}")

# %% [markdown]
# ## The dual-level bound
# Table level: the artifact's lists keep the 8 largest Kaggle tables tight (0.01) and the smallest loose (0.05),
# 0.03 elsewhere. Iteration level: a multiplier from 2 to 1 over the early stage.

# %%
adaptive = config.replace(compress="adaptive")
print("eps per table:", bounds.table_eps(adaptive))
steps = np.arange(0, 2 * adaptive.early_stage)
plt.figure(figsize=(5, 3))
for schedule in ("step", "linear", "log", "constant"):
    plt.plot(steps, [float(bounds.multiplier(s, adaptive.replace(schedule=schedule))) for s in steps], label=schedule)
plt.xlabel("step")
plt.ylabel("m(step)")
plt.legend()
plt.show()

# %% [markdown]
# ## Tables on 8 devices, and the bytes of one step
# Tables go largest first onto the least-loaded device, at most ceil(26 / 8) = 4 a device. The forward all-to-all
# moves [8 destinations, 4 slots, B/8, D] per device; compressed, int8 codes plus a float32 (centre, step) per block.

# %%
placement = sharded.Placement.build(config.table_sizes, 8)
print("tables per device:", [np.flatnonzero(np.asarray(placement.device) == d).tolist() for d in range(8)])
for name, code_dtype in (("float32", None), ("int8 codes", "int8")):
    w = sharded.wire_bytes(adaptive, placement, code_dtype)
    print(f"{name:10s}: forward {w.forward:8d} B/step  forward+backward {w.total:8d} B/step  "
          f"(padding slots {w.padding_fraction:.0%})")

# %% [markdown]
# ## Training: uncompressed against dual-level adaptive
# The same seed and batches; evaluation scores the held-out samples with an uncompressed exchange, so the AUC is
# the trained model's. (`experiments/dlrm_compression.py` runs the full comparison and writes the results.)

# %%
from qrjax.dlrm.train import train_and_evaluate  # noqa: E402

steps = 8 if SMOKE else 600
summaries, curves = {}, {}
with tempfile.TemporaryDirectory() as tmp:
    for compress in ("none", "adaptive"):
        c = config.replace(compress=compress, steps=steps, eval_every=steps // 4, log_every=steps // 4)
        summaries[compress] = train_and_evaluate(c, Path(tmp) / compress, devices=8, progress=False)
        curves[compress] = [(r["step"], r["auc"]) for r in read_metrics(Path(tmp) / compress / "metrics.jsonl")
                            if r.get("split") == "eval"]
for k, s in summaries.items():
    print(f"{k:9s} AUC {s['auc']:.4f}  log loss {s['logloss']:.4f}  wire bytes/step {s['wire_bytes_per_step']} "
          f"(forward ratio {s['forward_ratio']:.3f})  violations {s['bound_violations']}")
plt.figure(figsize=(5, 3))
for k, pts in curves.items():
    plt.plot(*zip(*pts), marker="o", label=k)
plt.xlabel("step")
plt.ylabel("held-out AUC")
plt.legend()
plt.show()
