"""DLRM (Naumov et al. 2019) in Flax linen: the dense side (bottom MLP, dot interaction, top MLP) and the embedding
tables' initialisation. The tables themselves live outside linen: they are placed on devices table-wise
(`qrjax.dlrm.sharded.Placement`), which a module's parameter tree cannot express.

    dense f32[B, 13] --bottom MLP--> x f32[B, D]
    sparse int[B, T, H] --lookups, sum over H--> e f32[B, T, D]          (the tables, model-parallel)
    z = [x, upper triangle (i < j) of <v_i, v_j> over v = (x, e_1..e_T)]  f32[B, D + (T+1) T / 2]
    logit = top MLP(z) f32[B];  loss = binary cross-entropy

Initialisation follows the dlrm repo: weights N(0, sqrt(2 / (fan_in + fan_out))), biases N(0, sqrt(1 / fan_out)),
table rows U(-sqrt(1/rows), sqrt(1/rows)); every table from its own key, so placement does not change the values.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qrjax.compression import fixed
from qrjax.dlrm.config import NUM_DENSE, DLRMConfig


def _weight_init(key, shape, dtype=jnp.float32):
    fan_in, fan_out = shape
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (fan_in + fan_out))


def _bias_init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * math.sqrt(1.0 / shape[0])


class MLP(nn.Module):
    """Dense layers with ReLU between them (and after the last unless `last_relu` is False)."""

    features: tuple[int, ...]
    last_relu: bool = True

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width, kernel_init=_weight_init, bias_init=_bias_init, name=f"layer{i}")(x)
            if i < len(self.features) - 1 or self.last_relu:
                x = nn.relu(x)
        return x


def interact(x: jax.Array, emb: jax.Array) -> jax.Array:
    """x: f32[B, D], emb: f32[B, T, D] -> f32[B, D + (T+1) T / 2]: x and the pairwise dot products (i < j)."""
    v = jnp.concatenate([x[:, None, :], emb], axis=1)
    dots = jnp.einsum("bid,bjd->bij", v, v)
    i, j = np.triu_indices(v.shape[1], k=1)
    return jnp.concatenate([x, dots[:, i, j]], axis=1)


class DenseArch(nn.Module):
    """The data-parallel part: (dense f32[B, 13], pooled embeddings f32[B, T, D]) -> logits f32[B]."""

    bottom: tuple[int, ...]
    top: tuple[int, ...]

    @nn.compact
    def __call__(self, dense, emb):
        x = MLP(self.bottom, name="bottom")(dense)
        z = interact(x, emb)
        return MLP(self.top, last_relu=False, name="top")(z)[:, 0]


def dense_arch(config: DLRMConfig) -> DenseArch:
    return DenseArch(tuple(config.bottom_mlp), tuple(config.top_mlp))


def init_dense(config: DLRMConfig, key) -> dict:
    """The dense side's params (the first half of the model key's split)."""
    emb = jnp.zeros((1, config.num_tables, config.embedding_dim))
    return dense_arch(config).init(key, jnp.zeros((1, NUM_DENSE)), emb)["params"]


def init_table(key, rows: int, dim: int) -> jax.Array:
    """f32[rows, dim] ~ U(-sqrt(1/rows), sqrt(1/rows))."""
    bound = math.sqrt(1.0 / rows)
    return jax.random.uniform(key, (rows, dim), jnp.float32, -bound, bound)


def table_keys(key, num_tables: int):
    """Table t's key: independent of how tables are placed."""
    return [jax.random.fold_in(key, t) for t in range(num_tables)]


def reference_logits(config: DLRMConfig, dense_params, tables, dense, sparse, *, eps=None, devices: int = 1,
                     code_dtype: str = "int8") -> jax.Array:
    """The plain single-device DLRM forward: logits f32[B] from per-table arrays `tables` (list of f32[rows_t, D]),
    dense f32[B, 13] and sparse int[B, T, H]. What an exported model scores with, and the tests' reference for the
    sharded forward.

    eps: f32[T] -> the artifact's simulated compression: each (destination device, table) block of pooled
    embeddings, [B / devices, D], quantised and rebuilt in place, as the compressed all-to-all would deliver it."""
    emb = jnp.stack([jnp.take(jnp.asarray(t), sparse[:, i, :], axis=0).sum(axis=1) for i, t in enumerate(tables)],
                    axis=1)  # [B, T, D]
    if eps is not None:
        b, nt, dim = emb.shape
        blocks = emb.reshape(devices, b // devices, nt, dim).transpose(0, 2, 1, 3)
        q = fixed.quantize(blocks, jnp.asarray(eps)[None, :], axes=(2, 3), code_dtype=code_dtype)
        emb = fixed.dequantize(q).transpose(0, 2, 1, 3).reshape(b, nt, dim)
    return dense_arch(config).apply({"params": dense_params}, dense, emb)


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample binary cross-entropy f32[B] (numerically stable form)."""
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


__all__ = ["MLP", "DenseArch", "bce_with_logits", "dense_arch", "init_dense", "init_table", "interact",
           "reference_logits", "table_keys"]
