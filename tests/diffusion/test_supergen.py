"""SuperGen stage 2 against independent references: a canvas-coordinate Python loop over torus windows (with and
without the region-aware cache), a MultiDiffusion averaging loop, the untiled model, and the single-device run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from qrjax.diffusion import supergen as sg
from qrjax.diffusion.autoencoder import pixel_autoencoder
from qrjax.diffusion.config import SuperGenConfig, get_config
from qrjax.diffusion.model import init_params
from qrjax.diffusion.sampler import renoise, schedule, step, velocity_fn
from qrjax.diffusion.model import DiffusionModel
from qrjax.parallel import make_mesh

LABEL = 1


@functools.lru_cache(maxsize=None)
def model() -> DiffusionModel:
    """The tiny DiT in pixel space on 8-pixel tiles, with every weight perturbed (at init adaLN-zero outputs 0)."""
    config = get_config("tiny", ["autoencoder=pixel", "image_size=8"])
    params = init_params(config, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return DiffusionModel(config, params, pixel_autoencoder(), ())


def _run(cfg, scale=2, devices=1, frames=1, key=3):
    _, stats, latent = sg.generate(model(), cfg, scale=scale, label=LABEL, key=jax.random.key(key), devices=devices,
                                   frames=frames, progress=False, return_latent=True)
    return np.asarray(latent), stats


def _stage2_input(cfg, scale, key=3):
    """The re-noised canvas stage 2 starts from, as generate computes it (sketch, upsample, re-noise)."""
    m = model()
    k1, k2 = jax.random.split(jax.random.key(key))
    x1 = sg.sketch(m, cfg, k1, LABEL)
    h, w = sg.canvas_shape(m, None, scale)
    up = sg.upsample(m, x1, (h, w), cfg.upsample)
    ts = schedule(cfg.steps, m.config.time_shift)
    return np.asarray(renoise(up, jax.random.normal(k2, up.shape), ts[cfg.restart_step]))[0], ts


@functools.lru_cache(maxsize=None)
def _tile_velocity():
    m = model()
    return jax.jit(lambda x, t: velocity_fn(m.config, m.params, jnp.asarray([LABEL], jnp.int32))(x[None], t)[0])


def _v_tile(tile_np, t):
    """The model on one tile at a time (no batching, no packing)."""
    return np.asarray(_tile_velocity()(jnp.asarray(tile_np), jnp.float32(t)))


def reference_shifted(cfg, scale):
    """SuperGen stage 2 written directly in canvas coordinates: torus windows whose origin moves by `shift` per step,
    a per-tile model call, canvas-anchored cache maps updated window by window (TeaCache rule, k refreshed after two
    computations, warm-up and last step computed, top-2 variable tiles get 1 + a and 1 + a/2 thresholds)."""
    x, ts = _stage2_input(cfg, scale)
    t = model().config.latent_size
    h, w, c = x.shape
    rows, cols = h // t, w // t
    shift = max(1, t // cfg.shift_divisions) if cfg.shift_divisions else 0
    steps = list(range(cfg.restart_step, cfg.steps))
    warm = max(cfg.warmup_steps, 2)
    x_prev, o_prev, resid = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    k, acc, var_n, var_mean, var_m2, score = (np.zeros((h, w)) for _ in range(6))
    last = np.full((h, w), -10.0)
    skips = []
    for jj, i in enumerate(steps):
        oy, ox = (jj * shift) % h, (jj * shift) % w
        wins = [np.ix_((oy + r * t + np.arange(t)) % h, (ox + q * t + np.arange(t)) % w)
                for r in range(rows) for q in range(cols)]
        force = jj < warm or jj == len(steps) - 1
        accs, skip = [], []
        scores = np.array([score[wy, wx].mean() for wy, wx in wins])
        order = np.argsort(-scores, kind="stable")  # ties go to the lower tile index
        for n, (wy, wx) in enumerate(wins):
            d_in = np.abs(x[wy, wx] - x_prev[wy, wx]).mean()
            a = acc[wy, wx].mean() + k[wy, wx].mean() * d_in / (np.abs(o_prev[wy, wx]).mean() + 1e-6)
            mult = 1.0
            if n == order[0] and scores[n] > 0:
                mult = 1 + cfg.region_alpha
            elif n == order[1] and scores[n] > 0:
                mult = 1 + cfg.region_alpha / 2
            accs.append(a)
            skip.append(cfg.cache_threshold > 0 and not force and a < cfg.cache_threshold * mult)
        skips.append(int(sum(skip)))
        v = np.zeros_like(x)
        new = [m.copy() for m in (o_prev, resid, k, acc, last, var_n, var_mean, var_m2, score)]
        for n, (wy, wx) in enumerate(wins):
            xi = x[wy, wx]
            if skip[n]:
                v[wy, wx] = xi + resid[wy, wx]
                new[3][wy, wx] = accs[n]
                continue
            o = _v_tile(xi, ts[i])
            v[wy, wx] = o
            if (last[wy, wx] == jj - 1).mean() > 0.5:
                new[2][wy, wx] = np.abs(o - o_prev[wy, wx]).mean() / (np.abs(xi - x_prev[wy, wx]).mean() + 1e-12)
            new[0][wy, wx], new[1][wy, wx], new[3][wy, wx], new[4][wy, wx] = o, o - xi, 0.0, jj
            mag = np.abs(o).mean()  # the tile's mean |prediction|, given to each of its pixels
            n1 = var_n[wy, wx] + 1
            delta = mag - var_mean[wy, wx]
            m1 = var_mean[wy, wx] + delta / n1
            new[5][wy, wx], new[6][wy, wx], new[7][wy, wx] = n1, m1, var_m2[wy, wx] + delta * (mag - m1)
        o_prev, resid, k, acc, last, var_n, var_mean, var_m2, score = new
        if jj % cfg.region_interval == 0:
            score = np.sqrt(var_m2 / np.maximum(var_n, 1))
        x_prev = x
        x = x + (ts[i + 1] - ts[i]) * v
    return x, skips


def test_cut_paste_roundtrip_and_blend():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 24, 16, 3)), jnp.float32)
    cfg = SuperGenConfig()
    shifted = sg.make_layout(cfg, 24, 16, 8)
    tiles = sg.cut(shifted, x)
    assert tiles.shape == (6, 2, 8, 8, 3)
    np.testing.assert_array_equal(tiles[4], x[:, 16:24, 0:8])  # row-major: tile (2, 0)
    np.testing.assert_array_equal(sg.paste(shifted, tiles, x.shape), x)
    blended = sg.make_layout(cfg.replace(tiling="blended", blend_overlap=0.5), 24, 16, 8)
    assert blended.n_tiles == 5 * 3
    np.testing.assert_allclose(sg.paste(blended, sg.cut(blended, x), x.shape), x, rtol=1e-6)
    # averaging: each pixel gets the mean of the tile values covering it (tile n filled with the constant n)
    const = jnp.broadcast_to(jnp.arange(15.0)[:, None, None, None, None], (15, 1, 8, 8, 1))
    got = np.asarray(sg.paste(blended, const, (1, 24, 16, 1)))[0, :, :, 0]
    origins = blended.grid.origins()
    want = np.zeros((24, 16))
    count = np.zeros((24, 16))
    for n, (oy, ox) in enumerate(origins):
        want[oy:oy + 8, ox:ox + 8] += n
        count[oy:oy + 8, ox:ox + 8] += 1
    np.testing.assert_allclose(got, want / count, rtol=1e-6)


@pytest.mark.multidevice
@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 1), (1, 4), (2, 4), (4, 2)])
def test_roll_grid_on_a_mesh_is_a_torus_roll(mesh_shape):
    layout = sg.Layout("shifted", 32, 32, 8, 8, (3, 2), mesh_shape)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 2)), jnp.float32)
    mesh = make_mesh(mesh_shape, sg.AXES, devices=jax.devices()[:mesh_shape[0] * mesh_shape[1]])
    spec = P(None, *sg.AXES, None)
    fn = jax.jit(jax.shard_map(lambda a: sg.roll_grid(layout, a), mesh=mesh, in_specs=spec, out_specs=spec))
    np.testing.assert_array_equal(fn(x), np.roll(np.asarray(x), (-3, -2), axis=(1, 2)))


def test_shifted_tiles_match_the_canvas_reference():
    cfg = SuperGenConfig(steps=6, restart_step=2)
    got, stats = _run(cfg, scale=2)
    want, _ = reference_shifted(cfg, 2)
    np.testing.assert_allclose(got[0], want, atol=2e-5, rtol=1e-5)
    assert stats.tiles == 4 and stats.tiles_skipped == 0
    assert stats.model_calls == 6 + 4 * 4  # stage 1 (one native call per step) + stage 2 (4 tiles x 4 steps)


def test_cache_matches_the_canvas_reference_and_skips_for_real():
    cfg = SuperGenConfig(steps=12, restart_step=2, cache_threshold=1.4, max_batch=4)
    got, stats = _run(cfg, scale=2)
    want, skips = reference_shifted(cfg, 2)
    assert stats.skips_per_step == skips
    assert stats.tiles_skipped > 0
    np.testing.assert_allclose(got[0], want, atol=5e-5, rtol=1e-5)
    # steps with skipped tiles ran a smaller compiled program (the packed bucket), not the full batch under a mask
    assert any(k != "stage2_bucket4" for k in stats.program_bytes)
    assert stats.model_calls == 12 + 4 * 10 - stats.tiles_skipped


def test_threshold_zero_is_the_uncached_run_and_warmup_is_always_computed():
    base, _ = _run(SuperGenConfig(steps=6, restart_step=2))
    cached, stats = _run(SuperGenConfig(steps=6, restart_step=2, cache_threshold=1e-9))
    np.testing.assert_array_equal(base, cached)
    _, stats = _run(SuperGenConfig(steps=9, restart_step=2, cache_threshold=1e9, warmup_steps=3))
    assert stats.skips_per_step == [0, 0, 0, 4, 4, 4, 0]  # warm-up and the last step compute every tile


def test_one_tile_without_shift_is_the_untiled_run():
    cfg = SuperGenConfig(steps=5, restart_step=1, shift_divisions=0)
    tiled, _ = _run(cfg, scale=1)
    untiled, stats = _run(cfg.replace(tiling="none"), scale=1)
    np.testing.assert_allclose(tiled, untiled, atol=1e-6)
    assert stats.tiles == 1


def test_blended_matches_a_multidiffusion_loop():
    cfg = SuperGenConfig(steps=5, restart_step=2, tiling="blended", blend_overlap=0.5)
    got, stats = _run(cfg, scale=2)
    x, ts = _stage2_input(cfg, 2)
    t = model().config.latent_size
    origins = sg.make_layout(cfg, *x.shape[:2], t).grid.origins()
    for i in range(cfg.restart_step, cfg.steps):
        v, count = np.zeros_like(x), np.zeros(x.shape[:2] + (1,))
        for oy, ox in origins:
            v[oy:oy + t, ox:ox + t] += _v_tile(x[oy:oy + t, ox:ox + t], ts[i])
            count[oy:oy + t, ox:ox + t] += 1
        x = x + (ts[i + 1] - ts[i]) * v / count
    np.testing.assert_allclose(got[0], x, atol=2e-5, rtol=1e-5)
    assert stats.tiles == 9


@pytest.mark.multidevice
@pytest.mark.parametrize("devices,threshold", [(2, 0.0), (8, 0.0), (4, 1.4), (8, 1.4)])
def test_tile_parallel_is_bit_identical_to_one_device(devices, threshold):
    cfg = SuperGenConfig(steps=10, restart_step=2, cache_threshold=threshold)
    one, s1 = _run(cfg, scale=4)
    many, sn = _run(cfg, scale=4, devices=devices)
    np.testing.assert_array_equal(many, one)
    assert sn.skips_per_step == s1.skips_per_step
    assert sn.devices == devices and sn.latent_bytes_exchanged_per_step <= sn.moved_strip_bytes_per_step
    # the exchange is exactly the block borders the shift moves: one strip per block row/col per sharded axis
    dy, dx = sn.mesh_shape
    h, w = sn.canvas[1:3]
    per_px = sn.canvas[0] * sn.canvas[3] * 4
    assert sn.latent_bytes_exchanged_per_step == per_px * ((dy > 1) * dy * w + (dx > 1) * dx * h)


@pytest.mark.multidevice
def test_three_by_three_tiles_on_three_devices():
    # bit-identical when every model call sees the same tile batch (max_batch <= tiles per device)...
    cfg = SuperGenConfig(steps=5, restart_step=2, max_batch=1)
    one, _ = _run(cfg, scale=3)
    many, stats = _run(cfg, scale=3, devices=3)
    np.testing.assert_array_equal(many, one)
    assert stats.mesh_shape in ((3, 1), (1, 3))
    # ...otherwise one device batches 9 tiles per call and each of 3 devices 3: XLA's CPU matmul blocks the batch
    # differently, which moves float32 results by about one ulp
    one, _ = _run(cfg.replace(max_batch=16), scale=3)
    many, _ = _run(cfg.replace(max_batch=16), scale=3, devices=3)
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-6)


def test_video_latents_tile_in_space():
    cfg = SuperGenConfig(steps=4, restart_step=1)
    got, stats = _run(cfg, scale=2, frames=2)
    assert got.shape == (2, 16, 16, 3) and np.isfinite(got).all()
    assert stats.tiles == 4
    three, _ = _run(cfg, scale=2, frames=3)  # same geometry, other frame count: its own programs
    assert three.shape == (3, 16, 16, 3)
    # one unshifted tile of a video is the untiled video run
    cfg = cfg.replace(shift_divisions=0)
    np.testing.assert_allclose(_run(cfg, scale=1, frames=2)[0], _run(cfg.replace(tiling="none"), scale=1, frames=2)[0],
                               atol=1e-6)


def test_heun_stage2_is_heun_on_the_canvas():
    cfg = SuperGenConfig(steps=4, restart_step=1, sampler="heun", tiling="none")
    got, stats = _run(cfg, scale=2)
    x, ts = _stage2_input(cfg, 2)
    m = model()
    v = velocity_fn(m.config, m.params, jnp.asarray([LABEL], jnp.int32))
    for i in range(cfg.restart_step, cfg.steps):
        x = np.asarray(step(v, jnp.asarray(x)[None], ts[i], ts[i + 1], "heun"))[0]
    np.testing.assert_allclose(got[0], x, atol=2e-5, rtol=1e-5)
    # stage 1: 4 steps x 2 calls; stage 2: predictor + corrector on 2 steps, predictor only on the last (t = 0)
    assert stats.model_calls == 8 + 2 * 2 + 1


def test_counters_and_compile_time():
    cfg = SuperGenConfig(steps=9, restart_step=2, cache_threshold=1.4, max_batch=4)
    _, stats = _run(cfg.replace(region_alpha=0.25), scale=2)  # other runtime knobs: the same programs
    executed = 0
    for skipped in stats.skips_per_step:
        bucket = 1 << int(np.ceil(np.log2(max(4 - skipped, 1))))
        executed += bucket
    assert stats.executed_tile_forwards == executed >= stats.model_calls - 9
    assert stats.compile_seconds >= 0 and stats.stage2_seconds > 0


def test_bad_geometry_is_named():
    m = model()
    with pytest.raises(ValueError, match="whole number of native tiles"):
        sg.generate(m, SuperGenConfig(steps=3, restart_step=1), size=(20, 16), progress=False)
    with pytest.raises(ValueError, match="over \\[1, 3, 9\\] devices"):
        sg.make_layout(SuperGenConfig(), 24, 24, 8, devices=4)
    with pytest.raises(ValueError, match="restart_step"):
        sg.generate(m, SuperGenConfig(steps=3, restart_step=3), progress=False)
    with pytest.raises(ValueError, match="tiling"):
        sg.make_layout(SuperGenConfig(tiling="diagonal"), 16, 16, 8)
    with pytest.raises(ValueError, match="non-overlapping"):
        sg.generate(m, SuperGenConfig(steps=3, tiling="blended", cache_threshold=0.1), progress=False)
    with pytest.raises(ValueError, match="sketch_latent has shape"):
        sg.generate(m, SuperGenConfig(steps=3), frames=2, sketch_latent=jnp.zeros((1, 8, 8, 3)), progress=False)
