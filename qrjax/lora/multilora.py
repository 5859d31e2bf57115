"""The multi-LoRA term of ALTO's layer: Y = X W + s_i · (X_i A_i) B_i for the rows X_i of adapter i.

Rows (tokens) are grouped contiguously by adapter, `group_sizes[i]` rows for adapter i (Punica's SGMV layout, the
layout of `lax.ragged_dot`); rows at or beyond sum(group_sizes) belong to no adapter and get no LoRA term. Adapters
of different ranks share one stacked array padded to the largest rank with exact zeros: a zero column of A_i and
the matching zero row of B_i add nothing to the output and receive exactly zero gradient (dA_i[:, j] = X_iᵀ dS_i[:, j]
with dS_i = s_i dY_i B_iᵀ, whose column j is 0; dB_i[j] = S_i[:, j]ᵀ dY_i with S_i[:, j] = X_i A_i[:, j] = 0).

`impl` picks the grouped matmul:
- "ragged": `lax.ragged_dot`, XLA's grouped GEMM (GPU; on CPU XLA expands it to work growing with the group count:
  measured 40x slower than the per-adapter loop at 32 adapters, its gradient slower still);
- "pallas": the Pallas grouped-matmul kernel (`pallas_kernels.grouped_matmul`, GPU; interpret mode on CPU is for
  tests only);
- "gather": groups made of whole blocks of `block` rows (sequences): each block's adapter gathered, one batched
  matmul over blocks ([blocks, block, d_in] x [blocks, d_in, r]) — Punica's BGMV at sequence granularity, the fast
  path on CPU; group sizes must be multiples of `block`;
- "auto": "gather" on CPU when block > 1, else "ragged";
- "dense": every row times every adapter, then a one-hot pick (O(N) work: the test reference);
- "sequential": one slice and two matmuls per adapter (the per-adapter baseline of the kernel table; group_sizes
  must be concrete).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "ragged", "pallas", "gather", "dense", "sequential")


def row_groups(group_sizes: jax.Array, rows: int) -> jax.Array:
    """int32[rows]: each row's adapter, N (= no adapter) for rows at or beyond sum(group_sizes)."""
    ends = jnp.cumsum(group_sizes)
    return jnp.searchsorted(ends, jnp.arange(rows), side="right").astype(jnp.int32)


def resolve_impl(impl: str, block: int = 1) -> str:
    """"auto" -> "gather" on CPU for block > 1, else "ragged"; other names pass through (checked)."""
    if impl not in IMPLS:
        raise ValueError(f"lora_delta: unknown impl {impl!r}; choose from {IMPLS}")
    if impl == "auto":
        return "gather" if jax.default_backend() == "cpu" and block > 1 else "ragged"
    return impl


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, group_sizes: jax.Array, scale: jax.Array, *,
               impl: str = "auto", block: int = 1) -> jax.Array:
    """x: [T, d_in]; a: [N, d_in, r]; b: [N, r, d_out]; group_sizes: int32[N]; scale: float[N] -> [T, d_out]:
    row t of adapter i gets scale[i] · (x[t] @ a[i]) @ b[i]; rows of no adapter get 0. block: rows per block (a
    sequence's tokens) when every group is whole blocks (impl "gather"; T must be a multiple of it)."""
    impl = resolve_impl(impl, block)
    rows = x.shape[0]
    if impl != "sequential":
        group_sizes = jnp.asarray(group_sizes).astype(jnp.int32)
    if impl == "gather":
        if rows % block:
            raise ValueError(f"lora_delta: {rows} rows are not whole blocks of {block}")
        blocks = row_groups(group_sizes // block, rows // block)  # N: no adapter
        a_z = jnp.concatenate([a, jnp.zeros_like(a[:1])])[blocks]  # [blocks, d_in, r], zeros past the groups
        b_z = jnp.concatenate([b, jnp.zeros_like(b[:1])])[blocks]
        s = jnp.einsum("sld,sdr->slr", x.reshape(-1, block, x.shape[-1]), a_z)
        s = s * jnp.append(scale, 0.0).astype(x.dtype)[blocks][:, None, None]
        return jnp.einsum("slr,sro->slo", s, b_z).reshape(rows, -1)
    # the scale goes on the rank-r product S (r columns, not d_out), as in ALTO's fused up-projection
    row_scale = jnp.append(scale, 0.0).astype(x.dtype)[row_groups(group_sizes, rows)][:, None]
    if impl == "ragged":
        s = jax.lax.ragged_dot(x, a, group_sizes)
        return jax.lax.ragged_dot(s * row_scale, b, group_sizes)
    if impl == "pallas":
        from pallas_kernels.grouped_matmul import grouped_matmul

        s = grouped_matmul(x, a, group_sizes)
        return grouped_matmul(s * row_scale, b, group_sizes)
    if impl == "dense":
        onehot = jax.nn.one_hot(row_groups(group_sizes, rows), a.shape[0], dtype=x.dtype)  # [T, N], 0 beyond
        s = jnp.einsum("tn,td,ndr->tr", onehot, x, a)
        return jnp.einsum("tn,tr,nro->to", onehot, s * row_scale, b)
    sizes = np.asarray(group_sizes)  # "sequential": the per-adapter loop needs concrete sizes
    out, start = [], 0
    for i, size in enumerate(sizes):
        xi = x[start:start + size]
        out.append((scale[i] * (xi @ a[i])) @ b[i])
        start += int(size)
    out.append(jnp.zeros((rows - start, b.shape[-1]), x.dtype))
    return jnp.concatenate(out, axis=0)
