"""Grouped matrix multiply (multi-LoRA's SGMV / megablox `gmm`) and its transpose, the weight-gradient op.

`grouped_matmul(lhs: f32|bf16[m, k], rhs: [g, k, n], group_sizes: int32[g]) -> lhs.dtype[m, n]`: the rows of lhs are
split into g contiguous groups, group i holding rows [offsets[i], offsets[i+1]) with offsets = [0, cumsum(group_sizes)],
and each group is multiplied by its own matrix: out[r] = lhs[r] @ rhs[i] for r in group i. Rows at or beyond
sum(group_sizes) belong to no group and are exactly 0. Zero-size groups are allowed. Same semantics as
`jax.lax.ragged_dot(lhs, rhs, group_sizes)`.

`grouped_matmul_transposed(lhs: f32|bf16[m, k], dy: [m, n], group_sizes: int32[g]) -> lhs.dtype[g, k, n]`:
out[i] = lhs[rows of i].T @ dy[rows of i], 0 for an empty group; rows beyond sum(group_sizes) are ignored. This is
`jax.lax.ragged_dot_general` with a ragged contracting dimension, and the rhs gradient of `grouped_matmul`.

group_sizes is a traced array: new group sizes (an adapter finishing, a batch of another mix) reuse the compiled
program. Group sizes must be non-negative; rows of groups that reach past row m are dropped (the offsets are clipped
to m), as if the groups were cut at m. The values cannot be checked under jit, so negative sizes give undefined
results.

Forward kernel: one program per (row tile, column tile) of the output. The wrapper turns group_sizes into offsets and,
per row tile, the range of groups that intersect it (only those groups are visited: a tile inside one group does one
group's work); the program loops over those groups in a `lax.fori_loop`, runs the full k reduction for each group in
block_k steps, and adds the result into a float32 accumulator only on the rows of that group (a tile straddling a
group boundary computes each of its groups on the whole tile and keeps its own rows: at most a few wasted tile
products per boundary). Zero-size groups inside a tile's range cost one masked tile product each.

Transposed kernel: one program per (group, k tile, n tile) of the output; it loops over the row tiles that intersect
its group, zeroes the rows outside the group in the lhs tile, and accumulates lhs_tile.T @ dy_tile in float32. An
empty group visits no tile and writes zeros.

f32 dots run at `Precision.HIGHEST` (IEEE f32 on GPU, not TF32); bf16 inputs are multiplied as bf16 with float32
accumulation. m, k, n need not be multiples of the tiles: the wrapper zero-pads them up and slices the result back;
zero columns of k add nothing, and padded rows lie beyond the last group.

Gradients: both ops are `jax.custom_vjp`s whose backward passes are the two kernels again:
d lhs = grouped_matmul(dy, rhs^T) and d rhs = grouped_matmul_transposed(lhs, dy) for the forward op;
d lhs = grouped_matmul(dy, d_out^T) and d dy = grouped_matmul(lhs, d_out) for the transposed op. group_sizes gets no
gradient (integer).

GPU lowering: Triton BlockSpec kernels (params from `_backend.compiler_params`); on GPU every block size must be a
power of two >= 16. Lowering for CUDA is tested on CPU; the kernels have not yet been run on a GPU (none was lent while
they were written), so the `gpu`-marked tests are their first device check.

Callers import `grouped_matmul` and `grouped_matmul_transposed`. `grouped_matmul_reference` and
`grouped_matmul_transposed_reference` (plain jnp, one-hot row masks, no ragged_dot) are for tests and are the
fallback: they compute the same with O(g * m * k) memory; on CPU, where Pallas only interprets, `jax.lax.ragged_dot`
is the faster path.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._backend import compiler_params, resolve_interpret

_CPU_MAX_BLOCK = 128  # interpret mode: each grid step costs about a pass over the blocks, so keep the grid small
_GPU_BLOCK = {"block_m": 64, "block_k": 32, "block_n": 64}
_GPU_MIN_BLOCK = 16  # Triton's dot needs block sides of at least 16
_HI = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class GroupedMatmulBlockSizes:
    """Tile sides, shared by both ops: block_m rows of lhs, block_k of the contracted (forward) or kept (transposed) k
    dimension, block_n output columns. None: when interpreting on CPU, the whole dimension if it is at most 128 long,
    else the fewest equal blocks of at most 128; on GPU 64 / 32 / 64 (the next power of two >= 16 for shorter
    dimensions). On GPU, given sizes must be powers of two and at least 16."""

    block_m: int | None = None
    block_k: int | None = None
    block_n: int | None = None

    @classmethod
    def get_default(cls) -> "GroupedMatmulBlockSizes":
        return cls()


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _block(name: str, given: int | None, length: int, interpret: bool, op: str) -> int:
    if given is not None:
        if not interpret and (given < _GPU_MIN_BLOCK or given & (given - 1)):
            raise ValueError(f"{op}: on GPU block_sizes.{name} must be a power of two >= 16, got {given}")
        if given < 1:
            raise ValueError(f"{op}: block_sizes.{name} must be positive, got {given}")
        return given
    if interpret:
        n_blocks = -(-length // _CPU_MAX_BLOCK)
        return -(-length // n_blocks)
    return min(_GPU_BLOCK[name], max(_GPU_MIN_BLOCK, pl.next_power_of_2(length)))


def _blocks(bs: GroupedMatmulBlockSizes, m: int, k: int, n: int, interpret: bool, op: str) -> tuple[int, int, int]:
    return (_block("block_m", bs.block_m, m, interpret, op), _block("block_k", bs.block_k, k, interpret, op),
            _block("block_n", bs.block_n, n, interpret, op))


def _offsets(group_sizes: jax.Array, m: int) -> jax.Array:
    """int32[g + 1]: [0, cumsum(group_sizes)] clipped to m (groups reaching past row m are cut there)."""
    ends = jnp.minimum(jnp.cumsum(group_sizes.astype(jnp.int32)), m)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), ends])


def _pad_pow2(x: jax.Array, fill) -> jax.Array:
    # Triton tensors have power-of-two sizes; the padding is never read (reads stop at index g).
    size = pl.next_power_of_2(x.shape[0])
    return jnp.concatenate([x, jnp.full((size - x.shape[0],), fill, x.dtype)])


def _check(op: str, names: tuple[str, str], a: jax.Array, b: jax.Array, group_sizes: jax.Array, b_ndim: int) -> None:
    an, bn = names
    if a.ndim != 2:
        raise ValueError(f"{op}: {an} must be 2-D [m, k], got shape {a.shape}")
    if b.ndim != b_ndim:
        want = "3-D [g, k, n]" if b_ndim == 3 else "2-D [m, n]"
        raise ValueError(f"{op}: {bn} must be {want}, got shape {b.shape}")
    if b_ndim == 3 and b.shape[1] != a.shape[1]:
        raise ValueError(f"{op}: {bn} contracting dim k = {b.shape[1]} (shape {b.shape}) does not match "
                         f"{an}'s k = {a.shape[1]} (shape {a.shape})")
    if b_ndim == 2 and b.shape[0] != a.shape[0]:
        raise ValueError(f"{op}: {bn} has {b.shape[0]} rows (shape {b.shape}), {an} has {a.shape[0]} (shape {a.shape})")
    for name, x in ((an, a), (bn, b)):
        if x.dtype not in (jnp.float32, jnp.bfloat16):
            raise ValueError(f"{op}: {name} must be float32 or bfloat16, got {x.dtype}")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: {an} and {bn} must share one dtype, got {a.dtype} and {b.dtype}")
    if not hasattr(group_sizes, "dtype"):
        raise ValueError(f"{op}: group_sizes must be int32[g], got {type(group_sizes).__name__} (pass a jax array)")
    if group_sizes.ndim != 1 or group_sizes.dtype != jnp.int32:
        raise ValueError(f"{op}: group_sizes must be int32[g], got {group_sizes.dtype}{list(group_sizes.shape)}")
    if b_ndim == 3 and group_sizes.shape[0] != b.shape[0]:
        raise ValueError(f"{op}: group_sizes has {group_sizes.shape[0]} entries but {bn} has g = {b.shape[0]} groups "
                         f"(shape {b.shape})")


# ---------------------------------------------------------------------------------------------------------- forward


def _gmm_kernel(lo_ref, hi_ref, offs_ref, lhs_ref, rhs_ref, out_ref, *, block_k):
    # lo_ref, hi_ref: int32[>= m tiles], first and one-past-last group intersecting each row tile;
    # offs_ref: int32[>= g+1]; lhs_ref: [block_m, k padded] (this row tile, all of k); rhs_ref: [g, k padded, block_n];
    # out_ref: [block_m, block_n].
    block_m, kp = lhs_ref.shape
    block_n = out_ref.shape[1]
    tile = pl.program_id(0)
    rows = tile * block_m + lax.broadcasted_iota(jnp.int32, (block_m, block_n), 0)

    def group_body(gi, acc):
        def k_body(kk, part):
            start = pl.multiple_of(kk * block_k, block_k)
            x = lhs_ref[:, pl.ds(start, block_k)]
            w = rhs_ref[gi, pl.ds(start, block_k), :]
            return part + jnp.dot(x, w, precision=_HI, preferred_element_type=jnp.float32)

        part = lax.fori_loop(0, kp // block_k, k_body, jnp.zeros((block_m, block_n), jnp.float32))
        in_group = (rows >= offs_ref[gi]) & (rows < offs_ref[gi + 1])
        return acc + jnp.where(in_group, part, 0.0)

    acc = lax.fori_loop(lo_ref[tile], hi_ref[tile], group_body, jnp.zeros((block_m, block_n), jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


def _gmm_forward(lhs, rhs, group_sizes, block_sizes: GroupedMatmulBlockSizes, interpret: bool) -> jax.Array:
    m, k = lhs.shape
    g, _, n = rhs.shape
    if 0 in (m, k, n, g):
        return jnp.zeros((m, n), lhs.dtype)
    bm, bk, bn = _blocks(block_sizes, m, k, n, interpret, "grouped_matmul")
    mp, kp, np_ = _round_up(m, bm), _round_up(k, bk), _round_up(n, bn)
    lhs = jnp.pad(lhs, ((0, mp - m), (0, kp - k)))
    rhs = jnp.pad(rhs, ((0, 0), (0, kp - k), (0, np_ - n)))
    offs = _offsets(group_sizes, m)
    # Groups intersecting row tile t = [t*bm, (t+1)*bm): those with end > t*bm and start < (t+1)*bm. Offsets are
    # sorted, so both bounds are searches; empty groups inside the range cost one masked tile product each.
    tile_starts = jnp.arange(mp // bm, dtype=jnp.int32) * bm
    lo = jnp.searchsorted(offs[1:], tile_starts, side="right").astype(jnp.int32)
    hi = jnp.searchsorted(offs[:-1], tile_starts + bm, side="left").astype(jnp.int32)
    if not interpret:
        lo, hi, offs = _pad_pow2(lo, 0), _pad_pow2(hi, 0), _pad_pow2(offs, m)
    whole = lambda x: pl.BlockSpec(x.shape, lambda i, j: (0,) * x.ndim)  # noqa: E731
    out = pl.pallas_call(
        functools.partial(_gmm_kernel, block_k=bk),
        out_shape=jax.ShapeDtypeStruct((mp, np_), lhs.dtype),
        # column tiles innermost: neighbouring programs share the lhs row tile (L2 reuse on GPU).
        grid=(mp // bm, np_ // bn),
        in_specs=[whole(lo), whole(hi), whole(offs),
                  pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
                  pl.BlockSpec((g, kp, bn), lambda i, j: (0, 0, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=2),
        name="grouped_matmul",
    )(lo, hi, offs, lhs, rhs)
    return out[:m, :n]


# ------------------------------------------------------------------------------------------------------- transposed


def _tgmm_kernel(offs_ref, lhs_ref, dy_ref, out_ref, *, block_m):
    # offs_ref: int32[>= g+1]; lhs_ref: [m padded, block_k] (all rows, this k tile); dy_ref: [m padded, block_n];
    # out_ref: [block_k, block_n] of group program_id(0).
    block_k = lhs_ref.shape[1]
    block_n = dy_ref.shape[1]
    gi = pl.program_id(0)
    start, end = offs_ref[gi], offs_ref[gi + 1]
    t_lo = start // block_m
    t_hi = jnp.where(end > start, (end + block_m - 1) // block_m, t_lo)  # an empty group visits no tile

    def body(t, acc):
        r0 = pl.multiple_of(t * block_m, block_m)
        rows = r0 + lax.broadcasted_iota(jnp.int32, (block_m, block_k), 0)
        x = lhs_ref[pl.ds(r0, block_m), :]
        x = jnp.where((rows >= start) & (rows < end), x, jnp.zeros_like(x))
        dy = dy_ref[pl.ds(r0, block_m), :]
        return acc + lax.dot_general(x, dy, (((0,), (0,)), ((), ())), precision=_HI,
                                     preferred_element_type=jnp.float32)

    acc = lax.fori_loop(t_lo, t_hi, body, jnp.zeros((block_k, block_n), jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


def _tgmm_forward(lhs, dy, group_sizes, block_sizes: GroupedMatmulBlockSizes, interpret: bool) -> jax.Array:
    m, k = lhs.shape
    n = dy.shape[1]
    g = group_sizes.shape[0]
    if 0 in (m, k, n, g):
        return jnp.zeros((g, k, n), lhs.dtype)
    bm, bk, bn = _blocks(block_sizes, m, k, n, interpret, "grouped_matmul_transposed")
    mp, kp, np_ = _round_up(m, bm), _round_up(k, bk), _round_up(n, bn)
    lhs = jnp.pad(lhs, ((0, mp - m), (0, kp - k)))
    dy = jnp.pad(dy, ((0, mp - m), (0, np_ - n)))
    offs = _offsets(group_sizes, m)
    if not interpret:
        offs = _pad_pow2(offs, m)
    out = pl.pallas_call(
        functools.partial(_tgmm_kernel, block_m=bm),
        out_shape=jax.ShapeDtypeStruct((g, kp, np_), lhs.dtype),
        grid=(g, kp // bk, np_ // bn),
        in_specs=[pl.BlockSpec(offs.shape, lambda i, a, b: (0,)),
                  pl.BlockSpec((mp, bk), lambda i, a, b: (0, a)),
                  pl.BlockSpec((mp, bn), lambda i, a, b: (0, b))],
        out_specs=pl.BlockSpec((pl.squeezed, bk, bn), lambda i, a, b: (i, a, b)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=2),
        name="grouped_matmul_transposed",
    )(offs, lhs, dy)
    return out[:, :k, :n]


# ---------------------------------------------------------------------------------------------------------- VJPs


def _swap_kn(bs: GroupedMatmulBlockSizes) -> GroupedMatmulBlockSizes:
    # The backward products contract over n and keep k: the same tile sides stay on the same dimensions.
    return GroupedMatmulBlockSizes(block_m=bs.block_m, block_k=bs.block_n, block_n=bs.block_k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _gmm(lhs, rhs, group_sizes, block_sizes, interpret):
    return _gmm_forward(lhs, rhs, group_sizes, block_sizes, interpret)


def _gmm_fwd(lhs, rhs, group_sizes, block_sizes, interpret):
    return _gmm_forward(lhs, rhs, group_sizes, block_sizes, interpret), (lhs, rhs, group_sizes)


def _gmm_bwd(block_sizes, interpret, residuals, dy):
    lhs, rhs, group_sizes = residuals
    dlhs = _gmm(dy, jnp.swapaxes(rhs, 1, 2), group_sizes, _swap_kn(block_sizes), interpret)
    drhs = _tgmm(lhs, dy, group_sizes, block_sizes, interpret)
    return dlhs, drhs, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _tgmm(lhs, dy, group_sizes, block_sizes, interpret):
    return _tgmm_forward(lhs, dy, group_sizes, block_sizes, interpret)


def _tgmm_fwd(lhs, dy, group_sizes, block_sizes, interpret):
    return _tgmm_forward(lhs, dy, group_sizes, block_sizes, interpret), (lhs, dy, group_sizes)


def _tgmm_bwd(block_sizes, interpret, residuals, dout):
    lhs, dy, group_sizes = residuals
    # out[i] = X_i^T D_i: dX_i = D_i dout_i^T (contracts n, keeps k) and dD_i = X_i dout_i (contracts k, keeps n).
    dlhs = _gmm(dy, jnp.swapaxes(dout, 1, 2), group_sizes, _swap_kn(block_sizes), interpret)
    ddy = _gmm(lhs, dout, group_sizes, block_sizes, interpret)
    return dlhs, ddy, None


_tgmm.defvjp(_tgmm_fwd, _tgmm_bwd)


# ---------------------------------------------------------------------------------------------------------- public


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret"))
def grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *,
                   block_sizes: GroupedMatmulBlockSizes | None = None, interpret: bool | None = None) -> jax.Array:
    """lhs: f32|bf16[m, k]; rhs: same dtype [g, k, n]; group_sizes: int32[g] (traced) -> lhs.dtype[m, n].

    out[r] = lhs[r] @ rhs[i] for row r in group i (groups contiguous, in order); rows at or beyond sum(group_sizes) are
    0. Same as `jax.lax.ragged_dot(lhs, rhs, group_sizes)`. Differentiable in lhs and rhs (backward: the grouped
    kernels). Changing group_sizes' values does not recompile. Fallback: `grouped_matmul_reference`.
    """
    _check("grouped_matmul", ("lhs", "rhs"), lhs, rhs, group_sizes, 3)
    return _gmm(lhs, rhs, group_sizes, block_sizes or GroupedMatmulBlockSizes.get_default(),
                resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret"))
def grouped_matmul_transposed(lhs: jax.Array, dy: jax.Array, group_sizes: jax.Array, *,
                              block_sizes: GroupedMatmulBlockSizes | None = None,
                              interpret: bool | None = None) -> jax.Array:
    """lhs: f32|bf16[m, k]; dy: same dtype [m, n]; group_sizes: int32[g] (traced) -> lhs.dtype[g, k, n].

    out[i] = lhs[rows of i].T @ dy[rows of i] (0 for an empty group; rows beyond sum(group_sizes) are ignored): the rhs
    gradient of `grouped_matmul`, and `jax.lax.ragged_dot_general` with a ragged contracting dim. Differentiable in
    lhs and dy. Changing group_sizes' values does not recompile. Fallback: `grouped_matmul_transposed_reference`.
    """
    _check("grouped_matmul_transposed", ("lhs", "dy"), lhs, dy, group_sizes, 2)
    return _tgmm(lhs, dy, group_sizes, block_sizes or GroupedMatmulBlockSizes.get_default(),
                 resolve_interpret(interpret))


def _group_masks(group_sizes: jax.Array, m: int) -> jax.Array:
    """bool[g, m]: row r belongs to group i. Row -> group by a search in the group ends; rows past the last end get
    group g, which matches no mask."""
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    group_of_row = jnp.searchsorted(ends, jnp.arange(m, dtype=jnp.int32), side="right")
    return group_of_row[None, :] == jnp.arange(group_sizes.shape[0])[:, None]


def grouped_matmul_reference(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Plain-jnp `grouped_matmul` (no ragged_dot): each group's rows selected by a one-hot mask, float32 products
    summed over groups, cast back to lhs.dtype. Memory O(g * m * k)."""
    mask = _group_masks(group_sizes, lhs.shape[0])
    x = jnp.where(mask[:, :, None], lhs.astype(jnp.float32)[None], 0.0)  # [g, m, k]
    return jnp.einsum("gmk,gkn->mn", x, rhs.astype(jnp.float32), precision=_HI).astype(lhs.dtype)


def grouped_matmul_transposed_reference(lhs: jax.Array, dy: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Plain-jnp `grouped_matmul_transposed` (no ragged_dot): out[i] = (mask_i * lhs).T @ dy in float32, cast back to
    lhs.dtype. Memory O(g * m * k)."""
    mask = _group_masks(group_sizes, lhs.shape[0])
    x = jnp.where(mask[:, :, None], lhs.astype(jnp.float32)[None], 0.0)  # [g, m, k]
    return jnp.einsum("gmk,mn->gkn", x, dy.astype(jnp.float32), precision=_HI).astype(lhs.dtype)
