# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Error correction for tile-based watermarks
#
# QRMark reads a watermark from one small tile instead of the whole image. That is cheaper but noisier, and an
# error-correcting code absorbs the extra bit errors. This notebook walks through `qrjax.ecc`: the two 48-bit
# watermark codes (QRMark's Reed–Solomon RS(6, 4) over bytes and the BCH(48, 36) alternative), batched decoding
# under `jit`, soft decoding from extractor logits, and why BCH is the default.
#
# Runs in seconds on a CPU: `python notebooks/ecc.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests set) the
# batches are smaller.

# %%
import os

import jax
import jax.numpy as jnp
import numpy as np

from qrjax import bench
from qrjax.ecc import DEFAULT_WATERMARK_CODE, ReedSolomon, get_code

rng = np.random.default_rng(0)
SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller batches, same cells: for tests
N_WORDS = 4096 if SMOKE else 65536

# %% [markdown]
# ## Reed–Solomon on symbols
# RS(6, 4) over GF(2^8) carries 4 message bytes and 2 parity bytes, and corrects any single wrong byte, or two bytes
# whose positions are known (erasures). Encoding and decoding take any leading batch shape.

# %%
rs = ReedSolomon(6, 4)
msgs = rng.integers(0, 256, (3, 4))
codewords = rs.encode(msgs)
print("codewords:\n", np.asarray(codewords))

corrupted = codewords.at[0, 1].set(0).at[1, 5].add(7)  # word 0: one byte wrong; word 1: a parity byte wrong
result = rs.decode(corrupted)
print("ok:", np.asarray(result.ok), "corrected symbols:", np.asarray(result.n_corrected))
assert np.array_equal(np.asarray(result.message), msgs)

erasures = jnp.zeros((3, 6), bool).at[2, :2].set(True)  # word 2: both erased bytes lost
result = rs.decode(codewords.at[2, :2].set(0), erasures)
assert np.array_equal(np.asarray(result.message), msgs)

# %% [markdown]
# ## The watermark view: bits in, bits out
# The extractor outputs 48 bits. A `BitCode` maps 32 payload bits to a 48-bit codeword and back.

# %%
code = get_code(DEFAULT_WATERMARK_CODE)
print(code.name, code.code)
payload = rng.integers(0, 2, (1000, 32))
bits = np.asarray(code.encode(payload))
noisy = bits ^ (rng.random(bits.shape) < 0.02)  # a tile extractor with 2% independent bit errors
decoded = code.decode(noisy)
word_acc = np.mean(np.all(np.asarray(decoded.payload) == payload, axis=1))
raw_acc = np.mean(np.all(noisy[:, code.pad_bits:code.pad_bits + 32] == payload, axis=1))
print(f"payload exact: raw bits {raw_acc:.3f} -> decoded {word_acc:.3f}")
assert word_acc > raw_acc

# %% [markdown]
# ## Soft decoding from logits
# The extractor gives logits, not just bits; |logit| says how sure each bit is. Chase decoding flips the least
# reliable bits and keeps the decodable candidate that disagrees least with the logits.

# %%
sigma = 0.5
logits = 2 * ((2.0 * bits - 1) + sigma * rng.standard_normal(bits.shape)) / sigma ** 2
hard = code.decode((logits > 0).astype(np.uint8))
soft = code.decode_soft(jnp.asarray(logits, jnp.float32), method="chase")
for name, res in (("hard", hard), ("chase", soft)):
    print(name, np.mean(np.all(np.asarray(res.payload) == payload, axis=1)))

# %% [markdown]
# ## Why BCH is the default
# Independent bit errors spread over bytes: two flipped bits in different bytes already defeat RS(6, 4), while
# BCH(48, 36) corrects any two bit errors with the same 48 bits. The full table is in
# `experiments/results/ecc_throughput.md`.

# %%
for name in ("qrmark-rs", "qrmark-bch"):
    c = get_code(name)
    b = np.asarray(c.encode(payload))
    res = c.decode(b ^ (rng.random(b.shape) < 0.01))
    print(f"{name:11s} word accuracy at p = 1%: {np.mean(np.all(np.asarray(res.payload) == payload, axis=1)):.3f}")

# %% [markdown]
# ## Speed
# The decoder is one fixed-shape XLA program: syndromes, Berlekamp–Massey with a fixed iteration count, a Chien
# search over the 6 positions and Forney's formula. It runs inside any `jit`.

# %%
big = jnp.asarray(rng.integers(0, 256, (N_WORDS, 6)))
decode = jax.jit(lambda w: rs.decode(w).message)
timed = bench.interleaved({"decode": lambda: decode(big)}, rounds=3)  # a compiling warm-up call, then 3 timed calls
print(f"{N_WORDS / timed.median('decode'):,.0f} RS(6,4) decodes per second on {jax.default_backend()} (compile + "
      f"first call {timed.first_call_seconds['decode']:.1f} s)")
