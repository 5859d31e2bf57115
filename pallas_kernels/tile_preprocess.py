"""Fused detector preprocessing: uint8 source window -> resized, cropped, normalised float tile.

`tile_preprocess(windows: uint8[B, H, W, 3], ry: f32[B, T, H], rx: f32[B, T, W]) -> f32[B, T, T, 3]` computes, per
image and channel, `scale * (ry @ window @ rx.T) + offset`: a separable resize (any 1-D resampling whose weights are
the rows of ry and rx, such as `qrjax.tiling.tile_source`'s antialiased bilinear), the crop to one tile, and the
normalisation, in one pass that reads only the window of source pixels the tile depends on, as uint8. The default
scale and offset map [0, 255] to the extractor's [-1, 1].

The kernel walks the window in (block_h x block_w) pieces, accumulating `ry[:, rows] @ piece @ rx[:, cols].T` into
the tile held in the output block (the window axes are the reduction axes of the grid). The wrapper presents the
window channel-planar (a uint8 transpose, the cheapest array in the pipeline to move) so each piece is a 2-D matrix.
Windows, ry and rx may be zero-padded on the window axes: padded pixels get zero weight.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._backend import compiler_params, resolve_interpret

MODEL_RANGE = (2.0 / 255.0, -1.0)  # uint8 [0, 255] -> [-1, 1]


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Source-window rows and columns per grid step. None: the whole (padded) window in one step when interpreting
    on CPU, where each grid step costs about a full pass over the arrays, and 64 on GPU."""

    block_h: int | None = None
    block_w: int | None = None

    @classmethod
    def get_default(cls) -> "BlockSizes":
        return cls()


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _kernel(win_ref, ry_ref, rx_ref, out_ref, *, scale, offset):
    i, j = pl.program_id(1), pl.program_id(2)

    # Every access is one channel's [T, T] (or [bh, bw]) plane: Triton's arrays must have power-of-two sizes, and the
    # channel axis has 3.
    @pl.when((i == 0) & (j == 0))
    def _():
        for c in range(3):
            out_ref[0, c] = jnp.zeros(out_ref.shape[2:], out_ref.dtype)

    ry = ry_ref[0]  # [T, bh]
    rx = rx_ref[0]  # [T, bw]
    hi = jax.lax.Precision.HIGHEST  # IEEE f32 on GPU, not TF32 (whose 10-bit mantissa would cost ~1e-3)
    for c in range(3):
        piece = win_ref[0, c].astype(jnp.float32)  # [bh, bw]
        rows = jnp.dot(ry, piece, precision=hi, preferred_element_type=jnp.float32)  # [T, bw]
        out_ref[0, c] += jax.lax.dot_general(rows, rx, (((1,), (1,)), ((), ())), precision=hi,
                                             preferred_element_type=jnp.float32)  # [T, T]

    @pl.when((i == pl.num_programs(1) - 1) & (j == pl.num_programs(2) - 1))
    def _():
        for c in range(3):
            out_ref[0, c] = out_ref[0, c] * scale + offset


@functools.partial(jax.jit, static_argnames=("scale", "offset", "block_sizes", "interpret"))
def tile_preprocess(windows: jax.Array, ry: jax.Array, rx: jax.Array, *, scale: float = MODEL_RANGE[0],
                    offset: float = MODEL_RANGE[1], block_sizes: BlockSizes | None = None,
                    interpret: bool | None = None) -> jax.Array:
    """windows: uint8[B, H, W, 3]; ry: f32[B, T, H]; rx: f32[B, T, W] -> f32[B, T, T, 3].

    Fallback: `tile_preprocess_reference` computes the same in plain jnp (XLA einsums), the faster path on CPU.
    """
    b, h, w, c = windows.shape
    t = ry.shape[1]
    if c != 3 or windows.dtype != jnp.uint8:
        raise ValueError(f"tile_preprocess: windows must be uint8[B, H, W, 3], got {windows.dtype}{windows.shape}")
    if ry.shape != (b, t, h) or rx.shape != (b, t, w):
        raise ValueError(f"tile_preprocess: ry {ry.shape} / rx {rx.shape} do not match windows {windows.shape}")
    interpret = resolve_interpret(interpret)
    sizes = block_sizes or BlockSizes.get_default()
    align = 1 if interpret else 16  # Triton's dot needs block sides of at least 16
    bh = sizes.block_h or (_round_up(h, align) if interpret else 64)
    bw = sizes.block_w or (_round_up(w, align) if interpret else 64)
    if not interpret:
        for name, size in (("tile side T", t), ("block_h", bh), ("block_w", bw)):
            if size < 16 or size & (size - 1):
                raise ValueError(f"tile_preprocess: on GPU {name} must be a power of two >= 16, got {size}")
    hp, wp = _round_up(h, bh), _round_up(w, bw)
    planar = jnp.pad(jnp.transpose(windows, (0, 3, 1, 2)), ((0, 0), (0, 0), (0, hp - h), (0, wp - w)))
    ry = jnp.pad(ry.astype(jnp.float32), ((0, 0), (0, 0), (0, hp - h)))
    rx = jnp.pad(rx.astype(jnp.float32), ((0, 0), (0, 0), (0, wp - w)))
    out = pl.pallas_call(
        functools.partial(_kernel, scale=scale, offset=offset),
        out_shape=jax.ShapeDtypeStruct((b, 3, t, t), jnp.float32),
        grid=(b, hp // bh, wp // bw),
        in_specs=[pl.BlockSpec((1, 3, bh, bw), lambda n, i, j: (n, 0, i, j)),
                  pl.BlockSpec((1, t, bh), lambda n, i, j: (n, 0, i)),
                  pl.BlockSpec((1, t, bw), lambda n, i, j: (n, 0, j))],
        out_specs=pl.BlockSpec((1, 3, t, t), lambda n, i, j: (n, 0, 0, 0)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=2),
    )(planar, ry, rx)
    return jnp.transpose(out, (0, 2, 3, 1))


def tile_preprocess_reference(windows: jax.Array, ry: jax.Array, rx: jax.Array, *, scale: float = MODEL_RANGE[0],
                              offset: float = MODEL_RANGE[1]) -> jax.Array:
    """Plain-jnp `tile_preprocess`."""
    x = windows.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    rows = jnp.einsum("bth,bhwc->btwc", ry.astype(jnp.float32), x, precision=hi)
    return jnp.einsum("btwc,bsw->btsc", rows, rx.astype(jnp.float32), precision=hi) * scale + offset
