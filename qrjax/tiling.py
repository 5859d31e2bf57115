"""Tile geometry, batched tile extraction and stitching, shared by watermark detection and tiled generation.

Everything here is vectorised and jit-friendly: origins are int32 arrays, tiles are cut with a vmapped
`lax.dynamic_slice`, and placements are drawn from explicit PRNG keys (no per-sample Python loops, no host syncs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PLACEMENTS = ("fixed", "random_grid", "random")


class TileGrid(NamedTuple):
    """A grid of `tile`-sized cells stepped by `stride` over an (height, width) image, covering it fully.

    With stride < tile the cells overlap; the last row/column is shifted inward so no cell leaves the image.
    """

    height: int
    width: int
    tile: int
    stride: int

    @property
    def rows(self) -> int:
        return _count(self.height, self.tile, self.stride)

    @property
    def cols(self) -> int:
        return _count(self.width, self.tile, self.stride)

    def __len__(self) -> int:
        return self.rows * self.cols

    def origins(self) -> np.ndarray:
        """int32[rows * cols, 2] (y, x) top-left corners, row-major."""
        ys = _starts(self.height, self.tile, self.stride)
        xs = _starts(self.width, self.tile, self.stride)
        return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2).astype(np.int32)


def _check(height: int, width: int, tile: int, stride: int):
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile {tile} and stride {stride} must be positive")
    if tile > height or tile > width:
        raise ValueError(f"tile {tile} does not fit in a {height}x{width} image")


def _count(size: int, tile: int, stride: int) -> int:
    return 1 + -(-(size - tile) // stride)


def _starts(size: int, tile: int, stride: int) -> np.ndarray:
    starts = np.arange(_count(size, tile, stride)) * stride
    return np.minimum(starts, size - tile)


def grid(height: int, width: int, tile: int, stride: int | None = None) -> TileGrid:
    """The TileGrid of an image; stride defaults to tile (no overlap)."""
    stride = tile if stride is None else stride
    _check(height, width, tile, stride)
    return TileGrid(height, width, tile, stride)


def place(key: jax.Array | None, batch: int, height: int, width: int, tile: int, placement: str = "random_grid",
          cell: tuple[int, int] = (0, 0)) -> jax.Array:
    """int32[batch, 2] tile origins.

    fixed: the grid cell `cell` (row, col) for every image; random_grid: a uniformly drawn aligned cell of the
    non-overlapping grid; random: any position with the tile inside the image.
    """
    _check(height, width, tile, tile)
    if placement == "fixed":
        rows, cols = height // tile, width // tile
        if not (0 <= cell[0] < rows and 0 <= cell[1] < cols):
            raise ValueError(f"cell {cell} is outside the {rows}x{cols} grid of {tile}-pixel tiles")
        return jnp.broadcast_to(jnp.asarray(cell, jnp.int32) * tile, (batch, 2))
    if key is None:
        raise ValueError(f"placement {placement!r} needs a PRNG key")
    ky, kx = jax.random.split(key)
    if placement == "random_grid":
        y = jax.random.randint(ky, (batch,), 0, height // tile) * tile
        x = jax.random.randint(kx, (batch,), 0, width // tile) * tile
    elif placement == "random":
        y = jax.random.randint(ky, (batch,), 0, height - tile + 1)
        x = jax.random.randint(kx, (batch,), 0, width - tile + 1)
    else:
        raise ValueError(f"unknown placement {placement!r}; choose from {PLACEMENTS}")
    return jnp.stack([y, x], -1).astype(jnp.int32)


def extract(images: jax.Array, origins: jax.Array, tile: int) -> jax.Array:
    """images: [B, H, W, C], origins: int32[B, 2] -> tiles [B, tile, tile, C] (one tile per image)."""
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (tile, tile, img.shape[-1])))(
        images, origins)


def _cell_indices(g: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every pixel of every cell: two int32[len(g), tile, tile] (static, host-side)."""
    o = g.origins()
    r = np.arange(g.tile, dtype=np.int32)
    ys = np.broadcast_to(o[:, 0, None, None] + r[None, :, None], (len(o), g.tile, g.tile))
    xs = np.broadcast_to(o[:, 1, None, None] + r[None, None, :], (len(o), g.tile, g.tile))
    return ys, xs


def _partitions(g: TileGrid) -> bool:
    """True when the cells tile the image exactly (no overlap, no shifted last cell): a reshape then cuts them."""
    return g.stride == g.tile and g.height % g.tile == 0 and g.width % g.tile == 0


def extract_grid(images: jax.Array, g: TileGrid) -> jax.Array:
    """images: [B, H, W, C] -> every cell of g: [B, len(g), tile, tile, C] (row-major; a reshape when the cells
    partition the image, one gather otherwise)."""
    if _partitions(g):
        b, h, w, c = images.shape
        t = g.tile
        return images.reshape(b, h // t, t, w // t, t, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, t, t, c)
    ys, xs = _cell_indices(g)
    return images[:, ys, xs]


def stitch(tiles: jax.Array, g: TileGrid, weights: jax.Array | None = None) -> jax.Array:
    """tiles: [B, len(g), tile, tile, C] -> image [B, H, W, C]: overlapping cells averaged with `weights`.

    weights: [tile, tile] blending window (default uniform); with a non-overlapping grid stitching inverts
    `extract_grid` exactly.
    """
    b, n, t, _, c = tiles.shape
    if n != len(g) or t != g.tile:
        raise ValueError(f"stitch: got {n} tiles of {t} px for a grid of {len(g)} tiles of {g.tile} px")
    if weights is None and _partitions(g):  # every pixel has exactly one cell: the inverse reshape
        return tiles.reshape(b, g.rows, g.cols, t, t, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g.height, g.width, c)
    w = jnp.ones((t, t), tiles.dtype) if weights is None else weights.astype(tiles.dtype)
    ys, xs = _cell_indices(g)
    acc = jnp.zeros((b, g.height, g.width, c), tiles.dtype).at[:, ys, xs].add(tiles * w[None, None, :, :, None])
    norm = jnp.zeros((g.height, g.width), tiles.dtype).at[ys, xs].add(jnp.broadcast_to(w, (n, t, t)))
    return acc / norm[None, :, :, None]


# --- Resampling geometry: which source pixels one tile of a resized image reads, and with which weights. ---------

def bilinear_sample(img: jax.Array, sy: jax.Array, sx: jax.Array) -> jax.Array:
    """img f32[H, W, C] at fractional coordinates (sy, sx) f32[...] (edge-clamped) -> f32[..., C]."""
    h, w = img.shape[:2]
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def at(yi, xi):
        return img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def similarity_warp(img: jax.Array, zoom, degrees, shift=(0.0, 0.0), out_shape: tuple[int, int] | None = None):
    """Bilinear similarity warp of img f32[H, W, C] -> f32[out_h, out_w, C] (default: img's shape), edge-clamped.

    Output pixel q shows the input at c_in + shift + R(degrees) (q - c_out) / zoom, with c_* the frames' centres
    and R the rotation matrix [[cos, -sin], [sin, cos]] on (y, x): the content turns clockwise as displayed, so
    warping an image Pillow turned by `rotate(d)` (counter-clockwise) with degrees=d undoes the turn, and zoom 2
    magnifies 2x. zoom, degrees and shift (dy, dx) may be traced."""
    h, w = img.shape[:2]
    oh, ow = out_shape or (h, w)
    qy, qx = jnp.meshgrid(jnp.arange(oh, dtype=jnp.float32) - (oh - 1) / 2,
                          jnp.arange(ow, dtype=jnp.float32) - (ow - 1) / 2, indexing="ij")
    t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    c, s = jnp.cos(t), jnp.sin(t)
    z = jnp.asarray(zoom, jnp.float32)
    sy = (c * qy - s * qx) / z + (h - 1) / 2 + shift[0]
    sx = (s * qy + c * qx) / z + (w - 1) / 2 + shift[1]
    return bilinear_sample(img, sy, sx)


def read_shape(height: int, width: int, working: int, tile: int | None) -> tuple[int, int]:
    """Shape at which a detector reads an image of (height, width): the working size when both sides reach it, the
    image's own scale when smaller (a crop, a thumbnail), scaled up so the short side holds one `tile` when even that
    is too small. Shared by `qrjax.watermark.extract` and the detection pipeline."""
    if min(height, width) >= working:
        return working, working
    if tile is not None and min(height, width) < tile:
        scale = tile / min(height, width)
        return max(tile, round(height * scale)), max(tile, round(width * scale))
    return height, width


def resize_matrix(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """float64[out_size, in_size]: the 1-D weights of `jax.image.resize(..., "linear", antialias=antialias)`.

    Output sample i sits at (i + 0.5) * in / out - 0.5 in input coordinates and takes the triangle kernel, widened by
    in / out when shrinking with antialias, normalised to sum 1; identity when the sizes are equal. A separable
    resize is then out = Ry @ image @ Rx^T, and one tile of it needs only the rows of Ry and Rx that it covers."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize_matrix: sizes must be positive, got {in_size} -> {out_size}")
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    sample = (np.arange(out_size) + 0.5) * inv_scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(sample[:, None] - np.arange(in_size)[None, :]) / kernel_scale)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(np.abs(total) > 1000.0 * np.finfo(np.float32).eps, w / np.where(total != 0, total, 1.0), 0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return np.where(inside[:, None], w, 0.0)


class TileSource(NamedTuple):
    """One tile of an image resized to (out_h, out_w), expressed on the source image.

    window: (y0, y1, x0, x1), the source pixels the tile depends on; ry: float32[tile, y1 - y0] and
    rx: float32[tile, x1 - x0] such that tile[:, :, c] = ry @ source[y0:y1, x0:x1, c] @ rx.T."""

    window: tuple[int, int, int, int]
    ry: np.ndarray
    rx: np.ndarray


def _support(m: np.ndarray) -> tuple[int, int]:
    cols = np.flatnonzero(np.any(m != 0, axis=0))
    return (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)


def tile_source(height: int, width: int, out_shape: tuple[int, int], origin: tuple[int, int], tile: int,
                antialias: bool = True) -> TileSource:
    """Window and weights that produce the `tile` at `origin` (y, x) of the image resized to out_shape."""
    out_h, out_w = out_shape
    y, x = origin
    if not (0 <= y <= out_h - tile and 0 <= x <= out_w - tile):
        raise ValueError(f"tile {tile} at {origin} does not fit in a {out_h}x{out_w} image")
    ry = resize_matrix(height, out_h, antialias)[y:y + tile]
    rx = resize_matrix(width, out_w, antialias)[x:x + tile]
    (y0, y1), (x0, x1) = _support(ry), _support(rx)
    return TileSource((y0, y1, x0, x1), ry[:, y0:y1].astype(np.float32), rx[:, x0:x1].astype(np.float32))
