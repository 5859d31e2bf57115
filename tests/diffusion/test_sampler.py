"""Flow-matching sampling: the schedule formula, Euler/Heun exactness on known ODEs, guidance against two separate
model calls, and the jitted sampler against a plain Python loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.diffusion.config import get_config
from qrjax.diffusion.model import DiT, init_params
from qrjax.diffusion.sampler import euler_step, renoise, sample, schedule, step, velocity_fn


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with random (not zero-initialised) weights and a shifted schedule."""
    config = get_config("tiny", {"time_shift": 3.0})
    return config, _perturb(init_params(config, jax.random.key(0)), 1)


def _perturb(params, seed, scale=0.1):
    """Random offsets on every leaf (numpy draws: no compile): at init the zero output layers would make every
    velocity zero. Larger offsets make the random network chaotic enough that f32 rounding grows to ~1e-4."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)


@functools.partial(jax.jit, static_argnums=0)
def _apply(config, params, x, t, y):
    return DiT(config).apply({"params": params}, x, t, y)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _velocity(config, params, labels, x, t, guidance):
    return velocity_fn(config, params, labels, guidance)(x, t)


def test_schedule_runs_from_one_to_zero_and_shift_pushes_toward_noise():
    for steps in (1, 4, 10):
        ts = schedule(steps)
        assert ts.shape == (steps + 1,) and ts.dtype == np.float32
        assert ts[0] == 1.0 and ts[-1] == 0.0
        np.testing.assert_allclose(ts, 1.0 - np.arange(steps + 1) / steps, atol=1e-7)
    for shift in (0.5, 3.0):
        ts = schedule(10, shift)
        assert ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
        u = 1.0 - np.arange(11) / 10
        np.testing.assert_allclose(ts, shift * u / (1 + (shift - 1) * u), rtol=1e-6)
    uniform, shifted = schedule(10), schedule(10, 3.0)
    assert np.all(shifted[1:-1] > uniform[1:-1])  # more of the steps spent at high noise
    assert np.all(schedule(10, 0.5)[1:-1] < uniform[1:-1])
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        schedule(0)


def test_euler_integrates_a_constant_velocity_exactly(rng):
    a = jnp.asarray(rng.normal(size=(2, 4, 4, 3)).astype(np.float32))
    x1 = jnp.asarray(rng.normal(size=(2, 4, 4, 3)).astype(np.float32))
    np.testing.assert_allclose(np.asarray(euler_step(x1, a, 1.0, 0.75)), np.asarray(x1 - 0.25 * a), rtol=1e-6)
    calls = []

    def v_fn(x, t):
        calls.append(float(t))
        return a

    x = x1
    ts = schedule(7, 3.0)
    for i in range(7):
        x = step(v_fn, x, ts[i], ts[i + 1], "euler")
    np.testing.assert_allclose(np.asarray(x), np.asarray(x1 - a), atol=1e-5)  # x(0) = x(1) - a
    assert calls == [float(t) for t in ts[:-1]]


def test_heun_integrates_a_velocity_linear_in_time_exactly_except_the_last_step(rng):
    c = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))
    v_fn = lambda x, t: c * t  # noqa: E731  dx/dt = c t  ->  x(s) - x(t) = c (s^2 - t^2) / 2
    x0 = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))
    ts = schedule(6, 2.0)
    x = x0
    for i in range(5):  # every step but the last: the trapezoid rule is exact for a linear integrand
        t, s = float(ts[i]), float(ts[i + 1])
        want = x + c * (s * s - t * t) / 2
        x = step(v_fn, x, ts[i], ts[i + 1], "heun")
        np.testing.assert_allclose(np.asarray(x), np.asarray(want), atol=1e-6)
        # Euler is not exact here (the test can tell the two apart)
        assert float(jnp.abs(step(v_fn, x, ts[i], ts[i + 1], "euler") - (x + c * (s * s - t * t) / 2)).max()) > 1e-4
    np.testing.assert_allclose(np.asarray(x), np.asarray(x0 + c * (float(ts[5]) ** 2 - 1.0) / 2), atol=1e-5)
    t = float(ts[5])
    last = step(v_fn, x, ts[5], ts[6], "heun")  # to t = 0: the plain Euler step x - t * (c t)
    np.testing.assert_allclose(np.asarray(last), np.asarray(x - c * t * t), atol=1e-6)
    assert float(jnp.abs(last - (x - c * t * t / 2)).max()) > 1e-3  # not the (exact) trapezoid value


def test_step_uses_a_given_velocity_and_rejects_unknown_samplers(rng):
    x = jnp.asarray(rng.normal(size=(2, 3)).astype(np.float32))
    v_given = jnp.full((2, 3), 2.0)
    v_fn = lambda x, t: jnp.full_like(x, -1.0)  # noqa: E731
    np.testing.assert_allclose(np.asarray(step(v_fn, x, 0.5, 0.25, "euler", v=v_given)), np.asarray(x - 0.5))
    # Heun: the given velocity at t, the model's at the Euler prediction: mean (2 - 1) / 2
    np.testing.assert_allclose(np.asarray(step(v_fn, x, 0.5, 0.25, "heun", v=v_given)), np.asarray(x - 0.125),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown sampler 'rk4'"):
        step(v_fn, x, 0.5, 0.25, "rk4")


def test_renoise_is_the_flow_matching_marginal(rng):
    x0, noise = (jnp.asarray(rng.normal(size=(2, 4, 4, 6)).astype(np.float32)) for _ in range(2))
    np.testing.assert_array_equal(np.asarray(renoise(x0, noise, 0.0)), np.asarray(x0))
    np.testing.assert_array_equal(np.asarray(renoise(x0, noise, 1.0)), np.asarray(noise))
    want = 0.7 * np.asarray(x0, np.float64) + 0.3 * np.asarray(noise, np.float64)
    np.testing.assert_allclose(np.asarray(renoise(x0, noise, 0.3)), want, rtol=1e-6, atol=1e-7)


def test_guidance_combines_two_separate_model_calls(tiny):
    config, params = tiny
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, config.channels))
    labels = jnp.array([0, 7], jnp.int32)
    tt = jnp.full((2,), 0.6)
    cond = np.asarray(_apply(config, params, x, tt, labels), np.float64)
    uncond = np.asarray(_apply(config, params, x, tt, jnp.full((2,), config.null_class, jnp.int32)), np.float64)
    assert np.abs(cond - uncond).max() > 1e-2  # the label matters, so guidance is visible
    g = 2.5  # the scale test_sample_from_a_given_latent_at_a_start_index uses too: one compile for both
    got = np.asarray(_velocity(config, params, labels, x, 0.6, g))
    np.testing.assert_allclose(got, uncond + g * (cond - uncond), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(_velocity(config, params, labels, x, 0.6, 1.0)), cond, atol=1e-5,
                               rtol=1e-5)


def _euler_loop(config, params, labels, x, start, steps, guidance):
    ts = schedule(steps, config.time_shift)
    for i in range(start, steps):
        x = euler_step(x, _velocity(config, params, labels, x, ts[i], guidance), ts[i], ts[i + 1])
    return x


def test_sample_from_noise_equals_a_python_loop_of_euler_steps(tiny):
    config, params = tiny
    labels = jnp.array([3, 12], jnp.int32)
    key = jax.random.key(5)
    shape = (8, 8, config.channels)
    got = sample(config, params, key, labels, shape=shape, steps=3)
    want = _euler_loop(config, params, labels, jax.random.normal(key, (2, *shape)), 0, 3, 1.0)
    assert got.shape == (2, *shape)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(got - jax.random.normal(key, (2, *shape))).max()) > 1e-2


def test_sample_from_a_given_latent_at_a_start_index(tiny):
    config, params = tiny
    labels = jnp.array([1, 4], jnp.int32)
    x = jax.random.normal(jax.random.key(6), (2, 8, 8, config.channels))
    got = sample(config, params, jax.random.key(0), labels, shape=x.shape[1:], steps=3, start=1, x=x,
                 guidance=2.5)
    want = _euler_loop(config, params, labels, x, 1, 3, 2.5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # start == steps does nothing
    same = sample(config, params, jax.random.key(0), labels, shape=x.shape[1:], steps=3, start=3, x=x, guidance=2.5)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
