# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Error-bounded lossy compression
#
# `qrjax.compression` is the one compressor the compressed quantum simulator (BMQSim) and the DLRM all-to-all
# share. Values are quantised to integer codes, so the error bound holds by construction. Lorenzo prediction
# runs on those codes, and each block of residuals is packed at its own bit width. Every value is checked
# against its bound in float64, and any that fails is stored exactly. This notebook covers:
# - the three error-bound modes;
# - why the verification pass is needed;
# - the complex representations;
# - zero blocks;
# - the Pallas kernels.
#
# Runs in under a minute on a CPU: `python notebooks/lossy_compression.py`. The file is not named `compression.py`
# because a script of that name would shadow the `compression` module that JAX imports for its zstd cache. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests
# set) every cell runs on smaller inputs.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from qrjax.compression import bound_violations, compress, decompress, max_error_ratio

rng = np.random.default_rng(0)
SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller inputs, same cells: for tests

# %% [markdown]
# ## Three error-bound modes on a smooth 3-D field
# - `abs` bounds |x̂ − x| by a fixed ε.
# - `rel` bounds it by ε·(max − min), the way SZ does.
# - `pw_rel` bounds it by ε·|x|, point-wise. Zeros stay zero and signs are kept.
#
# A 3-D input gets 3-D Lorenzo prediction.

# %%
g = np.linspace(0, 1, 16 if SMOKE else 48, dtype=np.float32)
x, y, z = np.meshgrid(g, g, g, indexing="ij")
field = (np.sin(6 * x) * np.cos(4 * y) + 0.3 * z**2).astype(np.float32)
for mode in ("abs", "rel", "pw_rel"):
    for eps in (1e-2, 1e-3, 1e-4):
        c = compress(field, eps, mode)
        out = np.asarray(decompress(c))
        print(f"{mode:7s} eps={eps:.0e}: ratio {c.ratio:6.1f}  predictor {c.meta.predictor}  "
              f"max err / bound {max_error_ratio(field, out, eps, mode):.3f}  "
              f"violations {bound_violations(field, out, eps, mode)}")

# %% [markdown]
# ## Why the verification pass exists
# A textbook quantiser, round(x / 2e) · 2e in float32, breaks its own bound on a few values: rounding the product
# adds up to half an ulp. The same happens with log2/exp2 for point-wise bounds. qrjax rebuilds each value the way
# decompression will and compares it with the input in float64. Any value over its bound becomes an outlier and
# is stored verbatim.

# %%
data = (rng.standard_normal(1 << (16 if SMOKE else 20)) * 100).astype(np.float32)
e = np.float32(1e-3)
naive = (np.round(data / (2 * e)) * (2 * e)).astype(np.float32)
print("naive float32 quantiser, violations:", bound_violations(data, naive, float(e), "abs"))
c = compress(data, float(e), "abs")
print("qrjax, violations:", bound_violations(data, np.asarray(decompress(c)), float(e), "abs"),
      f"(outliers stored exactly: {c.num_outliers})")

# %% [markdown]
# ## Complex data: cartesian or polar
# A quantum state's amplitudes are complex. For point-wise bounds, qrjax can code |a| in the log domain and the
# phase as an integer modulo a power of two, so phase residuals wrap around. QFT outputs are plane waves, and their
# phase advances by a constant step that first-order Lorenzo turns into a constant residual. `complex_as="auto"`
# picks polar for `pw_rel`. The bound is always on the modulus |â − a|.

# %%
from qrjax.quantum import build, simulate  # noqa: E402

n_qft, n_random = (10, 8) if SMOKE else (16, 14)
states = {f"QFT-{n_qft}": np.asarray(simulate(build("qft", n_qft))),
          f"random-{n_random}": np.asarray(simulate(build("random", n_random)))}
for name, s in states.items():
    for rep in ("cartesian", "polar"):
        c = compress(s, 1e-3, "pw_rel", complex_as=rep)
        out = np.asarray(decompress(c))
        print(f"{name:9s} {rep:9s}: ratio {c.ratio:7.1f}, violations {bound_violations(s, out, 1e-3, 'pw_rel')}")

# %% [markdown]
# ## Zero blocks
# Residuals are packed per block of 256 at the block's own bit width. A block of equal codes has width 0 and no
# payload, and zstd over the stream removes what remains. A GHZ state has two non-zero amplitudes:

# %%
n_ghz = 12 if SMOKE else 18
ghz = np.asarray(simulate(build("ghz", n_ghz)))
c = compress(ghz, 1e-3, "pw_rel")
print(f"GHZ-{n_ghz}: {ghz.nbytes} bytes -> {c.nbytes} bytes (ratio {c.ratio:.0f}); "
      f"blocks with payload: {int((c.widths.max(axis=0) > 0).sum())} of {c.widths.shape[1]}")

# %% [markdown]
# ## Error distribution
# Uniform quantisation spreads the error evenly over the bin, which is what the bound allows:

# %%
c = compress(data, 1e-2, "pw_rel")
rel_err = (np.asarray(decompress(c)).astype(np.float64) - data) / np.abs(data)
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.hist(rel_err, bins=100)
ax.set_xlabel("(x_hat - x) / |x|  (bound 1e-2)")
fig.tight_layout()
fig.savefig("compression_errors.png", dpi=100)
print("max |relative error|:", np.abs(rel_err).max())

# %% [markdown]
# ## The Pallas kernels
# The 1-D path is two fused kernels: quantise+predict+pack and unpack+reconstruct. On GPU `compress` calls them.
# On CPU it uses their plain-jnp references instead, which produce the same bits. Interpret mode checks that on
# a small input:

# %%
from pallas_kernels import error_bounded as eb  # noqa: E402

scheme = eb.Scheme("pw_rel", "real", "float32")
with jax.enable_x64(True):
    xs = jnp.asarray(data[: 8 * 256].reshape(1, 8, 256))
    s = jnp.asarray([1e-3, 2 * np.log2(1.001) * 0.98, 0, 0, 0, 0], jnp.float64)
    kern = eb.quantize_pack(xs, eb.shift_prev(xs), s, scheme=scheme, interpret=True)
    ref = eb.quantize_pack_reference(xs, s, scheme=scheme)
print("kernel == reference:", all(bool(jnp.array_equal(a, b)) for a, b in zip(kern, ref)))
