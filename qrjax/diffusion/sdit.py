"""SDiT: region-adaptive computation for a text-to-image DiT (arXiv 2601.12283), training-free.

Each denoising step computes only the image tokens whose region is still changing; the others reuse their cached
velocity, and their keys and values (cached per block) stay visible to the computed tokens' attention:
1. segmentation: Quickshift (scikit-image) over the current clean-image prediction x0 = x_t - t v (the latent, one
   pixel per latent pixel, each channel scaled to 0..100), every `sdit_segment_every` steps; each token takes the
   region of its patch's centre;
2. complexity: per token, the step-to-step change of its velocity, mean |v_new - v_old| divided by the steps between
   the two computations; per region, the mean over its tokens;
3. scheduling: regions in decreasing complexity until `sdit_active` of the tokens are covered are computed at every
   step; every other region is computed when it has waited `sdit_period` steps (calm regions update less often);
4. boundary-aware refinement: tokens of cached regions within `sdit_boundary` tokens of a computed region are
   computed too, so that no seam separates fresh from cached content.
The first `sdit_warmup` and the last `sdit_final` steps compute every token.

`denoise` runs it on a canvas cut into tiles: one tile covering the canvas (SDiT alone, qrjax.diffusion.t2i), or
SuperGen's native-size tiles whose grid moves every step (qrjax.diffusion.supergen). The canvas, the velocity and
the per-token caches are kept in SuperGen's grid frame, so moving the grid is a roll of every map; keys are cached
before their rotary embedding, so a token's cache stays valid when its tile and its position in the tile change.
The grid must move by whole tokens (a multiple of the patch). Each step is one compiled program per bucket of
computed tokens per tile (vmapped over the tiles) plus the host's planning, whose time is counted.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from skimage.segmentation import quickshift
from tqdm.auto import tqdm

from qrjax import tiling
from qrjax.diffusion.config import DiTConfig, TextToImageConfig
from qrjax.diffusion.model import MMDiT, TextCond, patchify, unpatchify
from qrjax.diffusion.sampler import guide


def segment(x0: np.ndarray, patch: int, cfg: TextToImageConfig) -> np.ndarray:
    """int32[h/p, w/p] region labels 0..R-1 of the tokens, from Quickshift on a latent f32[h, w, C] (each token
    takes the label of its patch's centre pixel)."""
    x0 = np.asarray(x0, np.float64)
    lo, hi = x0.min(axis=(0, 1)), x0.max(axis=(0, 1))
    # every channel over 0..100, the span of Lab's lightness that Quickshift's parameters are usually set for
    feats = 100.0 * (x0 - lo) / np.maximum(hi - lo, 1e-6)
    labels = quickshift(feats, ratio=cfg.quickshift_ratio, kernel_size=cfg.quickshift_kernel,
                        max_dist=cfg.quickshift_max_dist, convert2lab=False, rng=0, channel_axis=-1)
    c = patch // 2
    tokens = labels[c::patch, c::patch]
    _, dense = np.unique(tokens, return_inverse=True)
    return dense.reshape(tokens.shape).astype(np.int32)


def region_means(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """f64[R]: the mean of per-token values over each region."""
    flat = labels.reshape(-1)
    r = int(flat.max()) + 1
    return np.bincount(flat, values.reshape(-1), r) / np.maximum(np.bincount(flat, minlength=r), 1)


def plan(labels: np.ndarray, rate: np.ndarray, last: np.ndarray, step: int, cfg: TextToImageConfig) -> np.ndarray:
    """bool[h/p, w/p]: the tokens to compute at `step`.

    labels: int32[gh, gw] regions; rate: f[gh, gw] per-token change per step (complexity); last: int[gh, gw] the step
    each token was last computed."""
    n = labels.size
    complexity = region_means(labels, rate)
    sizes = np.bincount(labels.reshape(-1), minlength=len(complexity))
    waited = step - region_means(labels, last)  # a region's tokens are computed together; boundary ones more often
    order = np.argsort(-complexity, kind="stable")
    covered = np.cumsum(sizes[order])
    k = int(np.searchsorted(covered, cfg.sdit_active * n)) + 1  # the smallest prefix covering the share
    chosen = np.zeros(len(complexity), bool)
    chosen[order[:k]] = True
    chosen |= waited >= cfg.sdit_period
    mask = chosen[labels]
    if cfg.sdit_boundary > 0 and mask.any() and not mask.all():
        mask = ndimage.binary_dilation(mask, iterations=cfg.sdit_boundary)
    return mask


def bucket(count: int, n: int, buckets: int) -> int:
    """The padded token count of a partial step: a multiple of n / buckets (one compiled program per size)."""
    unit = max(1, -(-n // max(1, buckets)))
    return min(n, max(unit, -(-count // unit) * unit))


# ---------------------------------------------------------------------------------------------------------------
# The denoising loop
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SDiTCounters:
    tokens_computed: int = 0  # image tokens through the model, summed over steps (per image)
    tokens_executed: int = 0  # the same with the buckets' padding
    full_tokens: int = 0  # what computing every token at every step costs
    plan_seconds: float = 0.0
    compile_seconds: float = 0.0
    tokens_per_step: list = dataclasses.field(default_factory=list)
    regions_per_step: list = dataclasses.field(default_factory=list)


def to_tiles(a: jax.Array, tile: int | None) -> jax.Array:
    """[B, H, W, ...] -> [n, B, tile, tile, ...], tiles row-major (qrjax.tiling's grid); tile None: the whole canvas
    as one tile, [1, B, H, W, ...]."""
    if tile is None:
        return a[None]
    b, hh, ww = a.shape[:3]
    cells = tiling.extract_grid(a.reshape(b, hh, ww, -1), tiling.grid(hh, ww, tile))  # [B, n, t, t, prod(rest)]
    return jnp.moveaxis(cells, 1, 0).reshape(-1, b, tile, tile, *a.shape[3:])


def from_tiles(t: jax.Array, hh: int, ww: int) -> jax.Array:
    """Inverse of `to_tiles` for an hh x ww canvas."""
    n, b, th, tw = t.shape[:4]
    if (th, tw) == (hh, ww):
        return t[0]
    cells = jnp.moveaxis(t.reshape(n, b, th, tw, -1), 0, 1)
    return tiling.stitch(cells, tiling.grid(hh, ww, th)).reshape(b, hh, ww, *t.shape[4:])


def _step(config: DiTConfig, guidance: float, control, tile: int | None, shift: tuple[int, int], params,
          cond, x, v, kv, idx, t, t_next):
    """One step on every tile: the tokens idx int32[n, M] of each tile computed (entries >= tokens per tile are
    padding), the others keep their cached velocity; Euler on the canvas; the grid move. x, v: f32[1, H, W, C];
    kv: per block (keys, values) f32[Bc, H/p, W/p, heads, head_dim]. Returns (x, v, kv, per-token change)."""
    p = config.patch
    hh, ww = x.shape[1:3]
    th, tw = (hh, ww) if tile is None else (tile, tile)
    tok = None if tile is None else tile // p
    guided = guidance != 1.0
    both = cond.with_null() if guided else cond
    states, pooled = both.states, both.pooled
    reps = states.shape[0]
    ctl = None if control is None else control(t)
    tt = jnp.full((reps,), t, jnp.float32)
    n_tok = (th // p) * (tw // p)
    kv_t = jax.tree.map(lambda a: to_tiles(a, tok).reshape(-1, reps, n_tok, *a.shape[3:]), kv)

    def one(x1, kv1, i1):
        out, kv1 = MMDiT(config).apply({"params": params}, jnp.concatenate([x1] * reps), tt, states, pooled, ctl,
                                       kv=kv1, idx=i1)
        return (guide(out, guidance) if guided else out), kv1

    out, kv_t = jax.vmap(one)(to_tiles(x, tile), kv_t, idx)  # out: [n, 1, M, p*p*C]
    v_t = jax.vmap(lambda a: patchify(a, p))(to_tiles(v, tile))  # [n, 1, n_tok, p*p*C]
    old = jax.vmap(lambda a, i: a[:, jnp.minimum(i, n_tok - 1)])(v_t, idx)
    change = jax.vmap(lambda i, d: jnp.zeros((n_tok,), jnp.float32).at[i].set(d, mode="drop"))(
        idx, jnp.mean(jnp.abs(out - old), axis=(1, 3)))
    v_t = jax.vmap(lambda a, i, o: a.at[:, i].set(o, mode="drop"))(v_t, idx, out)
    v = from_tiles(jax.vmap(lambda a: unpatchify(a, p, (th, tw, x.shape[3])))(v_t), hh, ww)
    kv = jax.tree.map(lambda a: from_tiles(a.reshape(a.shape[0], reps, th // p, tw // p, *a.shape[3:]),
                                           hh // p, ww // p), kv_t)
    change = from_tiles(change.reshape(-1, 1, th // p, tw // p), hh // p, ww // p)[0]
    x = x + (t_next - t) * v
    if shift != (0, 0):  # the grid moves: content up/left in the grid frame, caches with it
        x, v = (jnp.roll(a, (-shift[0], -shift[1]), (1, 2)) for a in (x, v))
        kv = jax.tree.map(lambda a: jnp.roll(a, (-shift[0] // p, -shift[1] // p), (1, 2)), kv)
        change = jnp.roll(change, (-shift[0] // p, -shift[1] // p), (0, 1))
    return x, v, kv, change


class Programs:
    """AOT-compiled programs by name, compiled once, compile time added up apart (SDiT's buckets, t2i's sampler)."""

    def __init__(self):
        self.compiled: dict = {}
        self.compile_seconds = 0.0

    def get(self, name, fn, args, donate=()):
        if name not in self.compiled:
            start = time.perf_counter()
            self.compiled[name] = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self.compiled[name]


@functools.lru_cache(maxsize=16)
def programs(*key) -> Programs:
    """The Programs of one key (model config, canvas, tiles, guidance, correction, ...): shared by every call with it."""
    del key
    return Programs()


def denoise(config: DiTConfig, params, cfg: TextToImageConfig, cond: TextCond, x: jax.Array, times: np.ndarray, *,
            tile: int | None = None, shift: tuple[int, int] = (0, 0), guidance: float = 1.0,
            control=None, progress: bool = True) -> tuple[jax.Array, SDiTCounters]:
    """Euler from times[0] to times[-1] on x f32[1, H, W, C] with SDiT (cfg's sdit_* and quickshift_* fields).

    tile: latent pixels per side of the square tiles (None: the whole canvas); shift: the grid move per step, in
    latent pixels, multiples of the patch (SuperGen's shifted tiles). Returns (x in the grid frame after len(times) - 1 moves,
    counters); with shift (0, 0) the grid frame is the canvas."""
    p = config.patch
    hh, ww, c = x.shape[1:]
    th, tw = (hh, ww) if tile is None else (tile, tile)
    if hh % th or ww % tw or th % p or tw % p:
        raise ValueError(f"SDiT: a {hh}x{ww} canvas in {th}x{tw} tiles of {p}-pixel patches does not divide")
    if shift[0] % p or shift[1] % p:
        raise ValueError(f"SDiT inside tiles needs the grid to move by whole tokens: shift {shift} is not a multiple "
                         f"of the patch {p} (SuperGen: shift_divisions = tile / (k * patch))")
    for name in ("sdit_period", "sdit_segment_every", "sdit_buckets"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.sdit_warmup < 0 or cfg.sdit_final < 0 or not 0.0 <= cfg.sdit_active <= 1.0:
        raise ValueError(f"sdit_warmup={cfg.sdit_warmup}, sdit_final={cfg.sdit_final} must be >= 0 and "
                         f"sdit_active={cfg.sdit_active} in [0, 1]")
    gh, gw = hh // p, ww // p
    rows, cols = hh // th, ww // tw
    ty, tx = th // p, tw // p
    n_tok = ty * tx
    steps = len(times) - 1
    reps = 1 if guidance == 1.0 else 2
    heads, hd = config.heads, config.dim // config.heads
    kv = tuple((jnp.zeros((reps, gh, gw, heads, hd)), jnp.zeros((reps, gh, gw, heads, hd)))
               for _ in range(config.depth))
    v = jnp.zeros_like(x)
    fn = functools.partial(_step, config, float(guidance), control, tile, tuple(shift))
    progs = programs("sdit", config, (hh, ww, c), tile, tuple(shift), float(guidance), control)
    compiled_before = progs.compile_seconds
    counters = SDiTCounters(full_tokens=steps * gh * gw)
    warm = max(1, cfg.sdit_warmup)
    rate, last = np.zeros((gh, gw)), np.zeros((gh, gw))
    labels = None
    sy, sx = shift[0] // p, shift[1] // p
    for j in tqdm(range(steps), desc=f"sdit {hh}x{ww} ({rows * cols} tiles)", disable=not progress or None,
                  dynamic_ncols=True, leave=False):
        t, t_next = np.float32(times[j]), np.float32(times[j + 1])
        if j < warm or j >= steps - cfg.sdit_final:
            mask = np.ones((gh, gw), bool)
            count = executed = gh * gw
            idx = np.broadcast_to(np.arange(n_tok, dtype=np.int32), (rows * cols, n_tok))
        else:
            t0 = time.perf_counter()
            if labels is None or (j - warm) % cfg.sdit_segment_every == 0:
                x0 = np.asarray(x[0] - t * v[0])
                labels = segment(x0, p, cfg)
            mask = plan(labels, rate, last, j, cfg)
            counters.regions_per_step.append(int(labels.max()) + 1)
            per_tile = mask.reshape(rows, ty, cols, tx).transpose(0, 2, 1, 3).reshape(rows * cols, n_tok)
            count = int(mask.sum())
            m = bucket(int(per_tile.sum(1).max()), n_tok, cfg.sdit_buckets)
            executed = m * rows * cols
            idx = np.full((rows * cols, m), n_tok, np.int32)
            for r, row in enumerate(per_tile):
                chosen = np.flatnonzero(row)
                idx[r, :len(chosen)] = chosen
            counters.plan_seconds += time.perf_counter() - t0
        args = (params, cond, x, v, kv, np.ascontiguousarray(idx), t, t_next)
        x, v, kv, change = progs.get(idx.shape[1], fn, args, donate=(3, 4))(*args)
        change = np.asarray(change)
        mask = np.roll(mask, (-sy, -sx), (0, 1))  # host maps follow the grid move the program made
        rate = np.roll(rate, (-sy, -sx), (0, 1))
        last = np.roll(last, (-sy, -sx), (0, 1))
        if labels is not None:
            labels = np.roll(labels, (-sy, -sx), (0, 1))
        if j > 0:
            rate = np.where(mask, change / np.maximum(j - last, 1), rate)
        last = np.where(mask, j, last)
        counters.tokens_computed += count
        counters.tokens_executed += executed
        counters.tokens_per_step.append(count)
    counters.compile_seconds = progs.compile_seconds - compiled_before
    return jax.block_until_ready(x), counters


__all__ = ["Programs", "SDiTCounters", "bucket", "denoise", "from_tiles", "plan", "programs",
           "region_means", "segment", "to_tiles"]
