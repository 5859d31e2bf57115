"""SuperGen: training-free tiled ultra-high-resolution generation with a region-aware tile cache and tile parallelism.

`generate(model, config, scale=4, label=..., key=...)` runs
1. stage 1, a sketch at the model's native size (the full schedule, untiled);
2. an upsample to `scale` times the native size per side, in pixel space (decode -> bicubic -> encode, SuperGen's
   choice) or on the latent directly;
3. a re-noise to the schedule's `restart_step` (the flow-matching marginal (1 - t) x + t noise);
4. stage 2: every step cuts the canvas into native-size tiles, runs the unmodified DiT on each, fuses the tile
   predictions back into one canvas prediction and takes ONE scheduler step on the whole canvas. Tilings:
   - `shifted` (SuperGen): non-overlapping tiles on a torus whose grid origin moves by tile / shift_divisions per
     axis every step, so no tile border stays in place;
   - `blended` (MultiDiffusion): overlapping tiles at a fixed grid, predictions averaged where they overlap;
   - `none`: the whole canvas through the model at once (the exact, memory-hungry reference).

The cache (cache_threshold > 0) decides per tile and step whether to run the DiT or to reuse the tile's input plus
its cached residual (output - input), from an accumulated predicted change k * mean|x - x_prev| / mean|o_prev|
against the tile's threshold (TeaCache's rule with SuperGen's fixes: k is re-estimated only right after two real
computations and frozen during skip runs; the first `warmup_steps` and the last step always compute; the two most
variable regions get thresholds raised by 1 + alpha and 1 + alpha/2). Every cache tensor is a canvas-sized map, so it
follows the content when the grid shifts: a tile's cached residual may come from up to four earlier tiles. Skipping
saves compute for real: only the active tiles are gathered into the model's batch (padded to a power-of-two bucket,
one compiled program per bucket) and scattered back; skipped ones never reach the model.

Layout. The canvas and every map are kept in the *grid frame*: rolled so that the current tile grid starts at (0, 0).
Moving the grid by (sy, sx) is then a roll of the state by (-sy, -sx), and tiles are plain reshapes of the canvas.
On several devices (`devices > 1`) the grid frame is split into contiguous blocks of whole tiles over a
(rows, cols) device mesh with `jax.shard_map`; the per-step roll sends each block's top sy rows and left sx columns
to its neighbours with `lax.ppermute` (the canvas, and the cache maps when the cache is on), the weights are
replicated once per generation, and the scheduler step is local. With `max_batch=1` (the default) every tile sees
exactly the computation it would see on one device, so the output is bit-identical to the single-device run (tested
on 2, 3, 4 and 8 simulated CPU devices); larger tile batches differ between device counts by about one float32 ulp,
because XLA's CPU matmul blocks a batch of 16 differently from a batch of 2.

A text-to-image model (qrjax.diffusion.model.MMDiT) reads `prompt=` instead of a label: every tile is conditioned on
the whole prompt, guided against the empty caption. `sdit=` runs stage 2 with SDiT inside the tiles instead of the
tile cache (qrjax.diffusion.sdit.denoise: one device, a grid that moves by whole tokens).

Limits, by choice: the device count must split the tile grid into equal blocks (9 tiles run on 1, 3 or 9 devices;
SuperGen instead pads with dummy tiles and all-gathers the canvas every step); active tiles are not rebalanced across
devices, so a step costs what the busiest device's bucket costs; the blended tiling runs on one device and without
the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from qrjax import bench, tiling
from qrjax.diffusion.config import DiTConfig, SuperGenConfig, TextToImageConfig
from qrjax.diffusion.model import DiffusionModel
from qrjax.diffusion.sampler import renoise, sample, schedule, velocity_fn
from qrjax.diffusion.sdit import denoise as sdit_denoise
from qrjax.parallel import make_mesh

TILINGS = ("shifted", "blended", "none")
UPSAMPLES = ("pixel", "latent")
AXES = ("ty", "tx")


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------

class Layout(NamedTuple):
    """Static geometry of stage 2. The canvas is [F, H, W, C]; tiles are [n, F, tile, tile, C]."""

    tiling: str
    height: int
    width: int
    tile: int
    stride: int  # blended: distance between tile origins; shifted/none: the tile (or canvas) side
    shift: tuple[int, int]  # grid motion per step (shifted only)
    mesh_shape: tuple[int, int]  # devices over tile rows and tile cols (shifted only; (1, 1) otherwise)

    @property
    def grid(self) -> tiling.TileGrid:
        return tiling.grid(self.height, self.width, self.tile, self.stride)

    @property
    def n_tiles(self) -> int:
        if self.tiling == "none":
            return 1
        return len(self.grid)

    @property
    def devices(self) -> int:
        return self.mesh_shape[0] * self.mesh_shape[1]

    @property
    def local_tiles(self) -> int:
        return self.n_tiles // self.devices


def tile_mesh_shape(rows: int, cols: int, devices: int) -> tuple[int, int]:
    """(dy, dx) with dy | rows, dx | cols and dy * dx == devices, blocks as square as possible; ValueError naming the
    device counts that fit when there is none."""
    options = [(dy, devices // dy) for dy in range(1, devices + 1)
               if devices % dy == 0 and rows % dy == 0 and cols % (devices // dy) == 0]
    if not options:
        fits = sorted({dy * dx for dy in range(1, rows + 1) if rows % dy == 0
                       for dx in range(1, cols + 1) if cols % dx == 0})
        raise ValueError(f"devices={devices}: a {rows}x{cols} tile grid splits into equal blocks of whole tiles only "
                         f"over {fits} devices")
    return min(options, key=lambda o: abs(rows / o[0] - cols / o[1]))


def make_layout(config: SuperGenConfig, height: int, width: int, tile: int, devices: int = 1) -> Layout:
    if config.tiling not in TILINGS:
        raise ValueError(f"tiling {config.tiling!r}: choose from {TILINGS}")
    if config.tiling == "none":
        if devices != 1:
            raise ValueError("tiling=none runs the whole canvas on one device; use tiling=shifted for devices > 1")
        return Layout("none", height, width, max(height, width), max(height, width), (0, 0), (1, 1))
    if height < tile or width < tile:
        raise ValueError(f"canvas {height}x{width} is smaller than the native tile {tile}")
    if config.tiling == "blended":
        if devices != 1:
            raise ValueError("tiling=blended runs on one device; use tiling=shifted for devices > 1")
        if not 0.0 <= config.blend_overlap < 1.0:
            raise ValueError(f"blend_overlap={config.blend_overlap}: must be in [0, 1)")
        stride = max(1, round(tile * (1.0 - config.blend_overlap)))
        return Layout("blended", height, width, tile, stride, (0, 0), (1, 1))
    if height % tile or width % tile:
        raise ValueError(f"tiling=shifted needs a canvas that is a whole number of native tiles: {height}x{width} "
                         f"latent pixels with {tile}-pixel tiles (use an integer scale, or tiling=blended)")
    step = max(1, tile // config.shift_divisions) if config.shift_divisions > 0 else 0
    return Layout("shifted", height, width, tile, tile, (step, step),
                  tile_mesh_shape(height // tile, width // tile, devices))


def _block_grid(layout: Layout, h: int, w: int) -> tiling.TileGrid:
    """The tile grid of one local block (the whole canvas on one device)."""
    return tiling.grid(h, w, layout.tile, layout.stride)


def cut(layout: Layout, a: jax.Array) -> jax.Array:
    """Local canvas block [F, h, w, C] -> tiles [n, F, t, t, C] (row-major over the tile grid)."""
    if layout.tiling == "none":
        return a[None]
    return jnp.moveaxis(tiling.extract_grid(a, _block_grid(layout, *a.shape[1:3])), 1, 0)


def paste(layout: Layout, tiles: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `cut` (blended: overlapping tiles averaged)."""
    if layout.tiling == "none":
        return tiles[0]
    return tiling.stitch(jnp.moveaxis(tiles, 0, 1), _block_grid(layout, *shape[1:3]))


def roll_grid(layout: Layout, a: jax.Array) -> jax.Array:
    """Move the grid frame by layout.shift: a [F, h, w, C] local block, rows and cols on the mesh axes.

    Content moves up/left by the shift; on a device mesh the rows (cols) that leave a block enter the block above
    (left of) it through one ppermute per sharded axis: only the strips the shift moves are exchanged."""
    for axis, (dim, step) in enumerate(zip((1, 2), layout.shift)):
        if not step:
            continue
        n = layout.mesh_shape[axis]
        head = jax.lax.slice_in_dim(a, 0, step, axis=dim)
        if n > 1:
            head = jax.lax.ppermute(head, AXES[axis], [(i, (i - 1) % n) for i in range(n)])
        a = jnp.concatenate([jax.lax.slice_in_dim(a, step, a.shape[dim], axis=dim), head], axis=dim)
    return a


def exchanged_bytes(layout: Layout, leaves) -> int:
    """Bytes all devices send per grid move for arrays with the given global [F, H, W, C] shapes and dtypes."""
    total = 0
    dy, dx = layout.mesh_shape
    for shape, dtype in leaves:
        f, h, w, c = shape
        item = np.dtype(dtype).itemsize
        if dy > 1:
            total += layout.shift[0] * w * f * c * item * dy  # every block row sends a strip of its width
        if dx > 1:
            total += layout.shift[1] * h * f * c * item * dx
    return total


def moved_strip_bytes(layout: Layout, leaves) -> int:
    """Bytes of the strips a grid move carries across tile borders (the bound the exchange must stay under)."""
    rows, cols = layout.height // layout.tile, layout.width // layout.tile
    total = 0
    for shape, dtype in leaves:
        f, h, w, c = shape
        item = np.dtype(dtype).itemsize
        total += (layout.shift[0] * w * rows + layout.shift[1] * h * cols) * f * c * item
    return total


# ---------------------------------------------------------------------------------------------------------------
# Cache state and the per-step programs
# ---------------------------------------------------------------------------------------------------------------

class CacheState(NamedTuple):
    """Canvas-sized maps in the grid frame. Latent maps are [F, H, W, C]; scalar maps [1, H, W, 1]."""

    x_prev: jax.Array  # canvas input of the previous step
    o_prev: jax.Array  # model output at the last computation (per pixel)
    resid: jax.Array  # o_prev - input at that computation
    k: jax.Array  # output-change / input-change ratio, frozen during skip runs
    acc: jax.Array  # accumulated predicted relative change since the last computation, up to the planned step
    last: jax.Array  # stage-2 step index of the last computation (-1: never)
    var_n: jax.Array  # Welford count, mean and M2 of mean|o| (the region variability statistics)
    var_mean: jax.Array
    var_m2: jax.Array
    score: jax.Array  # variability snapshot, refreshed every region_interval steps


def init_cache(x: jax.Array) -> CacheState:
    f, h, w, c = x.shape
    fields = CacheState._fields
    # distinct buffers: the step programs donate the cache
    out = {name: jnp.zeros_like(x) if i < 3 else jnp.zeros((1, h, w, 1), jnp.float32) for i, name in enumerate(fields)}
    out["last"] = out["last"] - 10.0
    return CacheState(**out)


def _tile_mean(tiles: jax.Array) -> jax.Array:
    return jnp.mean(tiles, axis=tuple(range(1, tiles.ndim)))


def _region_multiplier(score: jax.Array, alpha, axis_names, n_local: int) -> jax.Array:
    """Threshold multipliers: 1 + alpha for the tile with the highest variability score over all devices, 1 + alpha/2
    for the second, 1 elsewhere (ties broken by tile index, as top_k does); 1 everywhere before any statistics."""
    every = jax.lax.all_gather(score, axis_names, tiled=True) if axis_names else score
    k = min(2, every.shape[0])
    values, index = jax.lax.top_k(every, k)
    base = jax.lax.axis_index(axis_names) * n_local if axis_names else 0
    gid = base + jnp.arange(score.shape[0])
    mult = jnp.where((gid == index[0]) & (values[0] > 0), 1.0 + alpha, 1.0)
    if k > 1:
        mult = jnp.where((gid == index[1]) & (values[1] > 0), 1.0 + alpha / 2, mult)
    return mult


def _plan(layout: Layout, x, cache: CacheState, ctl: dict, axis_names):
    """Per local tile: skip flag and the accumulated change it would carry (written into cache.acc by the caller,
    so the step reads it instead of computing it again). x, cache in the grid frame."""
    d_in = _tile_mean(cut(layout, jnp.abs(x - cache.x_prev)))
    o_mag = _tile_mean(cut(layout, jnp.abs(cache.o_prev))) + 1e-6
    acc = _tile_mean(cut(layout, cache.acc)) + _tile_mean(cut(layout, cache.k)) * d_in / o_mag
    score = _tile_mean(cut(layout, cache.score))
    mult = _region_multiplier(score, ctl["alpha"], axis_names, score.shape[0])
    skip = (acc < ctl["threshold"] * mult) & ~ctl["force"]
    return skip, acc


def _run_tiles(velocity, tiles: jax.Array, t, chunk: int, video: bool) -> jax.Array:
    """Velocity of [m, F, T, T, C] tiles, `chunk` tiles per model call (lax.map over chunks bounds the memory)."""
    m = tiles.shape[0]
    x = tiles if video else tiles[:, 0]
    if m <= chunk:
        out = velocity(x, t)
    else:
        pad = -m % chunk
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        out = jax.lax.map(lambda xc: velocity(xc, t), xp.reshape(-1, chunk, *x.shape[1:]))
        out = out.reshape(-1, *x.shape[1:])[:m]
    return out if video else out[:, None]


def executed_tiles(count: int, chunk: int) -> int:
    """Tiles a model call over `count` tiles really runs: chunks of `chunk`, the last one padded."""
    return count if count <= chunk else -(-count // chunk) * chunk


def _step_body(layout: Layout, chunk: int, velocity, video: bool, sampler: str, x, cache: CacheState | None, idx,
               ctl: dict, axis_names):
    """One stage-2 step on a local block (grid frame, already moved): model on the tiles listed in idx (padded with
    out-of-range entries), cached prediction elsewhere, one scheduler step. Returns (x_next, cache)."""
    n = layout.local_tiles
    shape = x.shape
    t, t_next, j = ctl["t"], ctl["t_next"], ctl["j"]
    xt = cut(layout, x)
    o_sel = _run_tiles(velocity, xt[jnp.minimum(idx, n - 1)], t, chunk, video)
    if cache is None:  # no cache: idx lists every tile
        o_t = jnp.zeros_like(xt).at[idx].set(o_sel, mode="drop")
    else:
        active = jnp.zeros((n,), bool).at[idx].set(True, mode="drop")
        a5 = active[:, None, None, None, None]
        resid_t = cut(layout, cache.resid)
        o_t = (xt + resid_t).at[idx].set(o_sel, mode="drop")  # skipped tiles: input + cached residual
        o_prev_t = cut(layout, cache.o_prev)
        d_out = _tile_mean(jnp.abs(o_t - o_prev_t))
        d_in = _tile_mean(jnp.abs(xt - cut(layout, cache.x_prev))) + 1e-12
        # k is re-estimated only when the previous step computed these tiles too (SuperGen's k fix)
        prev_computed = _tile_mean(cut(layout, (cache.last == j - 1).astype(jnp.float32))) > 0.5
        k_t = cut(layout, cache.k)
        k_new = jnp.where((active & prev_computed)[:, None, None, None, None],
                          (d_out / d_in)[:, None, None, None, None] * jnp.ones_like(k_t), k_t)
        acc_new = jnp.where(a5, 0.0, cut(layout, cache.acc))  # skipped tiles keep the change the plan accumulated
        # region statistics (SuperGen's per-tile Welford of mean|prediction|), kept per pixel so they follow the
        # content when the grid moves: every pixel of a computed tile takes that tile's value
        mag = _tile_mean(jnp.abs(o_t))[:, None, None, None, None] * jnp.ones_like(k_t)
        vn, vm, vm2 = (cut(layout, a) for a in (cache.var_n, cache.var_mean, cache.var_m2))
        vn1 = vn + 1.0
        delta = mag - vm
        vm1 = vm + delta / vn1
        vm21 = vm2 + delta * (mag - vm1)
        vn, vm, vm2 = (jnp.where(a5, new, old) for new, old in ((vn1, vn), (vm1, vm), (vm21, vm2)))
        std = jnp.sqrt(vm2 / jnp.maximum(vn, 1.0))
        score_t = jnp.where(ctl["refresh"], std, cut(layout, cache.score))
        cache = CacheState(
            x_prev=x,
            o_prev=paste(layout, jnp.where(a5, o_t, o_prev_t), shape),
            resid=paste(layout, jnp.where(a5, o_t - xt, resid_t), shape),
            k=paste(layout, k_new, cache.k.shape),
            acc=paste(layout, acc_new, cache.acc.shape),
            last=paste(layout, jnp.where(a5, j.astype(jnp.float32), cut(layout, cache.last)), cache.last.shape),
            var_n=paste(layout, vn, cache.var_n.shape), var_mean=paste(layout, vm, cache.var_mean.shape),
            var_m2=paste(layout, vm2, cache.var_m2.shape), score=paste(layout, score_t, cache.score.shape))
    v = paste(layout, o_t, shape)
    x_next = x + (t_next - t) * v
    if sampler == "heun":  # the corrector evaluates every tile (the cache gates only the predictor); none at t = 0
        def corrector(x_next):
            v2 = paste(layout, _run_tiles(velocity, cut(layout, x_next), t_next, chunk, video), shape)
            return x + (t_next - t) * 0.5 * (v + v2)

        x_next = jax.lax.cond(t_next > 0, corrector, lambda x_next: x_next, x_next)
    return x_next, cache


def _program_key(cfg: SuperGenConfig) -> SuperGenConfig:
    """The settings the compiled stage-2 programs depend on; thresholds, alpha and the schedule are arguments."""
    return cfg.replace(steps=1, restart_step=0, cache_threshold=float(cfg.cache_threshold > 0), region_alpha=0.0,
                       warmup_steps=0, region_interval=1, upsample="pixel")


class Stage2:
    """The compiled per-step programs of stage 2: `move` (the grid), `plan` (skip flags), `step` (one per bucket).

    Compiled ahead of time on first use (compile time is kept apart from run time). On one device they are plain
    programs; with a device mesh they are shard_map-ped over blocks of tiles."""

    def __init__(self, config: DiTConfig, cfg: SuperGenConfig, layout: Layout, frames: int):
        self.config, self.cfg, self.layout, self.frames = config, cfg, layout, frames
        self.video, self.sampler = frames > 1, cfg.sampler
        self.mesh = None
        if layout.tiling == "shifted":
            devices = jax.devices()[:layout.devices]
            if len(devices) < layout.devices:
                raise ValueError(f"devices={layout.devices}: only {len(jax.devices())} available")
            self.mesh = make_mesh(layout.mesh_shape, AXES, devices=devices)
        self._programs: dict = {}
        self.compiled_bytes: dict[str, int] = {}
        self.compiled_temp_bytes: dict[str, int] = {}
        self.used: set[str] = set()  # programs used since the last reset (one generation)
        self.compile_seconds = 0.0  # compile time since the last reset

    def reset(self):
        self.used.clear()
        self.compile_seconds = 0.0

    # -- sharding helpers --------------------------------------------------------------------------------------
    @property
    def _spatial(self):
        return P(None, *AXES, None)

    @property
    def _tiles_spec(self):
        return P(AXES)

    def place(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, self._spatial))

    def replicate(self, tree):
        """Weights and labels: copied to every device once per generation, not at every step."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def _wrap(self, body, in_specs, out_specs):
        if self.mesh is None:
            return body
        return jax.shard_map(body, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    @property
    def _axis_names(self):
        return AXES if self.mesh is not None and self.layout.devices > 1 else None

    def _compiled(self, name: str, make, args, donate=()):
        if name not in self._programs:
            start = time.perf_counter()
            compiled = jax.jit(make(), donate_argnums=donate).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
            self.compiled_bytes[name] = bench.program_bytes(compiled)
            self.compiled_temp_bytes[name] = bench.program_bytes(compiled, temp_only=True)
            self._programs[name] = compiled
        return self._programs[name]

    # -- programs ----------------------------------------------------------------------------------------------
    def step(self, params, labels, x, cache, idx, ctl, ctl_next):
        """Step j on the listed tiles, then the grid move and the skip flags of step j + 1 (ctl_next), in one
        program: one dispatch and one host sync (the flags) per denoising step."""
        bucket = idx.shape[0] // self.layout.devices if self.mesh is not None else idx.shape[0]
        name = f"stage2_bucket{bucket}"
        cache_spec = jax.tree.map(lambda _: self._spatial, cache)
        ctl_spec = jax.tree.map(lambda _: P(), ctl)
        specs = (P(), P(), self._spatial, cache_spec, self._tiles_spec, ctl_spec, ctl_spec)
        n_local = self.layout.local_tiles

        def make():
            def body(params, labels, x, cache, idx, ctl, ctl_next):
                def velocity(xb, tb):  # every tile carries the canvas's label
                    if labels is None:
                        lab = None
                    elif self.config.text:
                        lab = labels.first(xb.shape[0])
                    else:
                        lab = jnp.broadcast_to(labels[:1], (xb.shape[0],))
                    return velocity_fn(self.config, params, lab, self.cfg.guidance)(xb, tb)

                x, cache = _step_body(self.layout, self.cfg.max_batch, velocity, self.video, self.sampler, x, cache,
                                      idx, ctl, self._axis_names)
                if self.layout.tiling == "shifted":
                    x, cache = jax.tree.map(lambda a: roll_grid(self.layout, a), (x, cache))
                if cache is None:
                    return x, cache, jnp.zeros((n_local,), bool)
                skip, acc = _plan(self.layout, x, cache, ctl_next, self._axis_names)
                acc_tiles = jnp.broadcast_to(acc[:, None, None, None, None], cut(self.layout, cache.acc).shape)
                return x, cache._replace(acc=paste(self.layout, acc_tiles, cache.acc.shape)), skip

            return self._wrap(body, specs, (self._spatial, cache_spec, self._tiles_spec))

        args = (params, labels, x, cache, idx, ctl, ctl_next)
        self.used.add(name)
        return self._compiled(name, make, args, donate=(2, 3))(*args)


@functools.lru_cache(maxsize=16)
def _stage2(config: DiTConfig, key: SuperGenConfig, layout: Layout, frames: int) -> Stage2:
    return Stage2(config, key, layout, frames)


def stage2_programs(config: DiTConfig, cfg: SuperGenConfig, layout: Layout, frames: int) -> Stage2:
    """Stage-2 programs shared by every generation with the same model, geometry and program settings (compiled
    once; thresholds, alpha and the schedule are runtime arguments)."""
    return _stage2(config, _program_key(cfg), layout, frames)


def _bucket(count: int, n: int) -> int:
    return min(n, 1 << max(0, math.ceil(math.log2(max(count, 1)))))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class GenerationStats:
    seconds: float = 0.0  # wall time without stage-2 compilation (a first sketch call includes compiling it)
    stage1_seconds: float = 0.0  # the sketch (its first call includes compiling it)
    stage2_seconds: float = 0.0  # stage 2 without compilation
    compile_seconds: float = 0.0  # stage-2 programs compiled during this generation
    model_calls: int = 0  # DiT evaluations of one native-size tile (or of the whole canvas with tiling=none)
    stage1_calls: int = 0
    executed_tile_forwards: int = 0  # stage-2 tiles the programs really ran: buckets padded to a power of two on
    # every device (sized by the busiest), chunks padded to max_batch
    stage2_tiles: int = 0  # tile evaluations stage 2 would make without a cache
    tokens_computed: int = 0  # image tokens through the model per image (stage 1 and 2; guidance's second half not
    # counted, as in the text-to-image stats)
    tiles_skipped: int = 0
    skips_per_step: list = dataclasses.field(default_factory=list)
    peak_bytes: int = 0  # largest stage-2 program footprint XLA accounts (weights, canvas, cache maps, activations),
    # per device under a mesh
    program_bytes: dict = dataclasses.field(default_factory=dict)
    peak_temp_bytes: int = 0  # the temporaries alone (activations, scratch) of the largest program
    devices: int = 1
    mesh_shape: tuple = (1, 1)
    tiles: int = 1
    bytes_exchanged_per_step: int = 0  # across devices, canvas and cache maps together
    latent_bytes_exchanged_per_step: int = 0  # the canvas alone
    moved_strip_bytes_per_step: int = 0  # strips of the canvas the shift moves across tile borders
    moved_state_strip_bytes_per_step: int = 0  # the same for the canvas and the cache maps together
    sdit_tokens_per_step: list = dataclasses.field(default_factory=list)  # stage 2 with SDiT inside the tiles
    canvas: tuple = ()

    @property
    def skip_rate(self) -> float:
        return self.tiles_skipped / max(1, self.stage2_tiles)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skip_rate"] = self.skip_rate
        d["mesh_shape"], d["canvas"] = list(self.mesh_shape), list(self.canvas)
        return d


def upsample(model: DiffusionModel, latent: jax.Array, shape: tuple[int, int], mode: str = "pixel") -> jax.Array:
    """[F, h, w, C] latent -> [F, *shape, C]: bicubic on the decoded pixels then re-encoded (pixel, SuperGen's choice)
    or bicubic on the latent itself (latent)."""
    f, h, w, c = latent.shape
    if mode == "latent":
        return jax.image.resize(latent, (f, *shape, c), "cubic")
    if mode != "pixel":
        raise ValueError(f"upsample {mode!r}: choose from {UPSAMPLES}")
    ae = model.autoencoder
    img = ae.decode(latent)
    big = jax.image.resize(img, (f, shape[0] * ae.factor, shape[1] * ae.factor, img.shape[3]), "cubic")
    return ae.encode(jnp.clip(big, -1.0, 1.0))


def canvas_shape(model: DiffusionModel, size: tuple[int, int] | None, scale) -> tuple[int, int]:
    """Latent (rows, cols) of the canvas from a pixel size (H, W) or a per-side scale (int or (rows, cols))."""
    mc, f = model.config, model.autoencoder.factor
    if size is not None:
        h, w = size
        if h < mc.image_size or w < mc.image_size:
            raise ValueError(f"size {h}x{w}: must be at least the native {mc.image_size}x{mc.image_size}")
        if h % f or w % f:
            raise ValueError(f"size {h}x{w}: must be a multiple of the autoencoder factor {f}")
        return h // f, w // f
    sh, sw = (scale, scale) if isinstance(scale, int) else scale
    if sh < 1 or sw < 1:
        raise ValueError(f"scale {scale}: must be >= 1 per side")
    return sh * mc.latent_size, sw * mc.latent_size


def to_uint8(model: DiffusionModel, latent: jax.Array) -> np.ndarray:
    """[F, h, w, C] latent -> uint8[F, H, W, 3] images."""
    img = model.autoencoder.decode(latent)
    return np.asarray(jnp.round((jnp.clip(img, -1.0, 1.0) + 1.0) * 127.5)).astype(np.uint8)


def conditioning(model: DiffusionModel, label: int = 0, prompt: str | None = None):
    """What the model is conditioned on for one image: a TextCond of the prompt (text-to-image models), int32[1]
    labels (class-conditional) or None (unconditional)."""
    mc = model.config
    if mc.text:
        if prompt is None:
            raise ValueError(f"model {mc.name!r} is text-to-image: give a prompt")
        return model.text_cond([prompt])
    if prompt is not None:
        raise ValueError(f"model {mc.name!r} is class-conditional: it reads --label, not a prompt "
                         f"(text-to-image: --model t2i-cpu)")
    return jnp.asarray([label], jnp.int32) if mc.num_classes else None


def sketch(model: DiffusionModel, cfg: SuperGenConfig, key: jax.Array, label: int = 0, frames: int = 1,
           prompt: str | None = None) -> jax.Array:
    """Stage 1: [F, s, s, C] latent at the native size, the full schedule, untiled."""
    mc = model.config
    s = mc.latent_size
    shape = (frames, s, s, mc.channels) if frames > 1 else (s, s, mc.channels)
    labels = conditioning(model, label, prompt)
    out = sample(mc, model.params, key, labels, shape=shape, steps=cfg.steps, sampler=cfg.sampler,
                 guidance=float(cfg.guidance))[0]
    return out if frames > 1 else out[None]


def _stage2_sdit(model: DiffusionModel, cfg: SuperGenConfig, scfg: TextToImageConfig, layout: Layout, x, prompt,
                 ts, steps2, stats: GenerationStats, guidance_mult: int, progress: bool):
    """Stage 2 with SDiT inside the tiles (qrjax.diffusion.sdit.denoise on SuperGen's grid); x in the grid frame."""
    mc = model.config
    problems = [msg for bad, msg in (
        (not mc.text, "a text-to-image model (the MMDiT's cached keys and values)"),
        (cfg.cache_threshold > 0, "cache_threshold=0 (SDiT replaces the tile cache)"),
        (layout.devices != 1, "one device"), (x.shape[0] != 1, "one frame"), (cfg.sampler != "euler", "sampler=euler"),
        (layout.tiling == "blended", "tiling=shifted or none"),
        (layout.shift[0] % mc.patch, f"a grid that moves by whole {mc.patch}-pixel patches: shift_divisions="
                                     f"{layout.tile // mc.patch} moves it by one token per step")) if bad]
    if problems:
        raise ValueError("SDiT inside SuperGen's tiles needs " + "; ".join(problems))
    tile = None if layout.tiling == "none" else layout.tile
    t2 = time.perf_counter()
    x, counters = sdit_denoise(mc, model.params, scfg, conditioning(model, prompt=prompt), x,
                               ts[cfg.restart_step:], tile=tile, shift=layout.shift, guidance=float(cfg.guidance),
                               progress=progress)
    n = layout.n_tiles
    stats.compile_seconds = counters.compile_seconds
    stats.stage2_seconds = time.perf_counter() - t2 - counters.compile_seconds
    stats.stage2_tiles = n * len(steps2)
    stats.model_calls += stats.stage1_calls + n * len(steps2) * guidance_mult
    stats.executed_tile_forwards = n * len(steps2) * guidance_mult
    stats.tokens_computed += counters.tokens_computed
    stats.sdit_tokens_per_step = counters.tokens_per_step
    return x


def generate(model: DiffusionModel, cfg: SuperGenConfig, *, scale: int | tuple[int, int] = 2,
             size: tuple[int, int] | None = None, label: int = 0, key: jax.Array | None = None, frames: int = 1,
             devices: int = 1, progress: bool = True, sketch_latent: jax.Array | None = None,
             return_latent: bool = False, prompt: str | None = None, sdit: TextToImageConfig | None = None):
    """(uint8[F, H, W, 3] or [H, W, 3] image, GenerationStats); with return_latent the final latent is added.

    scale: per-side factor (int or (rows, cols)) of the canvas over the native size, or size: (H, W) in pixels
    (tiling=shifted needs whole tiles; blended takes any size); frames > 1 generates video latents (tiled in space,
    whole in time); sketch_latent: a stage-1 result to reuse (the paper pre-saves them); prompt: the caption of a
    text-to-image model; sdit: run stage 2 with SDiT inside the tiles (its sdit_* and quickshift_* fields; text
    models, one device, no tile cache, a grid that moves by whole tokens, Euler)."""
    mc = model.config
    if frames < 1:
        raise ValueError(f"frames={frames}: must be >= 1")
    if cfg.sampler not in ("euler", "heun"):
        raise ValueError(f"sampler {cfg.sampler!r}: choose euler or heun")
    if not 0 <= cfg.restart_step < cfg.steps:
        raise ValueError(f"restart_step={cfg.restart_step} must be in [0, steps={cfg.steps})")
    height, width = canvas_shape(model, size, scale)
    key = jax.random.key(0) if key is None else key
    k1, k2 = jax.random.split(key)
    stats = GenerationStats()
    guidance_mult = 2 if (cfg.guidance != 1.0 and (mc.num_classes or mc.text)) else 1
    start = time.perf_counter()

    if cfg.tiling == "blended" and cfg.cache_threshold > 0:
        raise ValueError("the cache needs non-overlapping tiles (tiling=shifted or none): blended tiles average their "
                         "cache maps where they overlap")
    if sketch_latent is None:
        x1 = jax.block_until_ready(sketch(model, cfg, k1, label, frames, prompt))
        stats.stage1_calls = cfg.steps * guidance_mult * (2 if cfg.sampler == "heun" else 1)
    else:
        x1 = jnp.asarray(sketch_latent)
        x1 = x1 if x1.ndim == 4 else x1[None]
        want = (frames, mc.latent_size, mc.latent_size, mc.channels)
        if x1.shape != want:
            raise ValueError(f"sketch_latent has shape {tuple(x1.shape)}; frames={frames} needs {want}")
    stats.stage1_seconds = time.perf_counter() - start

    layout = make_layout(cfg, height, width, mc.latent_size, devices)
    ts = schedule(cfg.steps, mc.time_shift)
    up = upsample(model, x1, (height, width), cfg.upsample)
    noise = jax.random.normal(k2, up.shape, jnp.float32)
    x = renoise(up, noise, ts[cfg.restart_step])
    stats.canvas = tuple(x.shape)
    stats.devices, stats.mesh_shape, stats.tiles = layout.devices, layout.mesh_shape, layout.n_tiles

    stats.tokens_computed = (stats.stage1_calls // guidance_mult) * frames * (mc.latent_size // mc.patch) ** 2
    steps2 = list(range(cfg.restart_step, cfg.steps))
    if sdit is not None:
        x = _stage2_sdit(model, cfg, sdit, layout, x, prompt, ts, steps2, stats, guidance_mult, progress)
    else:
        runner = stage2_programs(mc, cfg, layout, frames)
        runner.reset()
        params, labels = runner.replicate((model.params, conditioning(model, label, prompt)))
        cache = init_cache(x) if cfg.cache_threshold > 0 else None
        x, cache = runner.place((x, cache))
        n, d = layout.n_tiles, layout.devices
        n_local = n // d
        warm = max(cfg.warmup_steps, 2)  # k needs two computed steps before any tile may skip
        if layout.tiling == "shifted" and d > 1:
            maps = [(a.shape, a.dtype) for a in jax.tree.leaves((x, cache))]
            stats.bytes_exchanged_per_step = exchanged_bytes(layout, maps)
            stats.latent_bytes_exchanged_per_step = exchanged_bytes(layout, [(x.shape, x.dtype)])
        if layout.tiling == "shifted":
            stats.moved_strip_bytes_per_step = moved_strip_bytes(layout, [(x.shape, x.dtype)])
            stats.moved_state_strip_bytes_per_step = moved_strip_bytes(
                layout, [(a.shape, a.dtype) for a in jax.tree.leaves((x, cache))])
        tiles_spec = NamedSharding(runner.mesh, P(AXES)) if runner.mesh is not None else None
        tile_tokens = frames * ((height // mc.patch) * (width // mc.patch) if layout.tiling == "none"
                                else (layout.tile // mc.patch) ** 2)

        def control(jj: int) -> dict:
            i = steps2[min(jj, len(steps2) - 1)]
            return {"t": np.float32(ts[i]), "t_next": np.float32(ts[i + 1]), "j": np.int32(jj),
                    "force": np.bool_(jj < warm or jj >= len(steps2) - 1),
                    "refresh": np.bool_(jj % max(1, cfg.region_interval) == 0),
                    "threshold": np.float32(cfg.cache_threshold), "alpha": np.float32(cfg.region_alpha)}

        skip = np.zeros((d, n_local), bool)  # the first steps are always computed
        t2 = time.perf_counter()
        for jj, i in enumerate(tqdm(steps2, desc=f"supergen {height}x{width} ({n} tiles)", disable=not progress or None,
                                    dynamic_ncols=True, leave=False)):
            active = [np.flatnonzero(~row) for row in skip]
            bucket = _bucket(max(len(a) for a in active), n_local)
            idx = np.full((d, bucket), n_local, np.int32)  # out-of-range entries are padding
            for r, a in enumerate(active):
                idx[r, :len(a)] = a
            idx = idx.reshape(-1) if tiles_spec is None else jax.device_put(idx.reshape(-1), tiles_spec)
            n_skip = int(skip.sum())
            # step jj, the grid move, and step jj + 1's skip flags (the one host sync per step picks its bucket)
            x, cache, next_skip = runner.step(params, labels, x, cache, idx, control(jj), control(jj + 1))
            skip = np.asarray(jax.device_get(next_skip)).reshape(d, n_local)
            stats.skips_per_step.append(n_skip)
            stats.tiles_skipped += n_skip
            stats.stage2_tiles += n
            corrector = cfg.sampler == "heun" and ts[i + 1] > 0
            stats.model_calls += ((n - n_skip) + (n if corrector else 0)) * guidance_mult
            stats.tokens_computed += ((n - n_skip) + (n if corrector else 0)) * tile_tokens
            chunk = cfg.max_batch
            stats.executed_tile_forwards += d * (executed_tiles(bucket, chunk) +
                                                 (executed_tiles(n_local, chunk) if corrector else 0)) * guidance_mult
        x = jax.block_until_ready(x)
        stats.compile_seconds = runner.compile_seconds
        stats.stage2_seconds = time.perf_counter() - t2 - runner.compile_seconds
        stats.model_calls += stats.stage1_calls
        stats.program_bytes = {k: runner.compiled_bytes[k] for k in sorted(runner.used)}
        stats.peak_bytes = max(stats.program_bytes.values(), default=0)
        stats.peak_temp_bytes = max((runner.compiled_temp_bytes[k] for k in runner.used), default=0)
    x = jax.device_get(x)
    if layout.tiling == "shifted":  # back from the grid frame to the canvas (the grid moved after every step)
        moves = len(steps2)
        x = np.roll(x, (moves * layout.shift[0] % height, moves * layout.shift[1] % width), axis=(1, 2))
    stats.seconds = time.perf_counter() - start - stats.compile_seconds
    latent = jnp.asarray(x)
    image = to_uint8(model, latent)
    image = image if frames > 1 else image[0]
    return (image, stats, latent) if return_latent else (image, stats)
