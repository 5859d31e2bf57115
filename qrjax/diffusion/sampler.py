"""Flow-matching sampling: the time schedule, classifier-free guidance, Euler and Heun steps, and a full sampler.

Convention: x_t = (1 - t) x0 + t noise, t from 1 (noise) to 0 (data); the model predicts v = noise - x0, so
dx/dt = v and an Euler step is x_next = x + (t_next - t) v.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.diffusion.config import DiTConfig
from qrjax.diffusion.model import DiT

SAMPLERS = ("euler", "heun")


def schedule(steps: int, shift: float = 1.0) -> np.ndarray:
    """f32[steps + 1]: times from 1 to 0, warped by SD3's shift s: t -> s t / (1 + (s - 1) t)."""
    if steps < 1:
        raise ValueError(f"schedule: steps must be >= 1, got {steps}")
    t = np.linspace(1.0, 0.0, steps + 1)
    return (shift * t / (1.0 + (shift - 1.0) * t)).astype(np.float32)


def velocity_fn(config: DiTConfig, params, labels: jax.Array | None, guidance: float = 1.0) -> Callable:
    """v(x, t) for a batch x: [B, ...] at scalar time t, with classifier-free guidance when guidance != 1:
    v = v_uncond + guidance (v_cond - v_uncond), both halves in one model call."""
    model = DiT(config)

    def v(x, t):
        b = x.shape[0]
        tt = jnp.full((b,), t, jnp.float32)
        if guidance == 1.0 or not config.num_classes:
            return model.apply({"params": params}, x, tt, labels)
        null = jnp.full((b,), config.null_class, jnp.int32)
        out = model.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([tt, tt]),
                          jnp.concatenate([labels, null]))
        cond, uncond = out[:b], out[b:]
        return uncond + guidance * (cond - uncond)

    return v


def euler_step(x: jax.Array, v: jax.Array, t, t_next) -> jax.Array:
    return x + (t_next - t) * v


def step(v_fn: Callable, x: jax.Array, t, t_next, sampler: str = "euler", v: jax.Array | None = None) -> jax.Array:
    """One step from t to t_next; `v` (the velocity at (x, t)) may be given when already computed. Heun corrects with
    the velocity at the Euler prediction, except on the last step to t = 0."""
    v = v_fn(x, t) if v is None else v
    x_euler = euler_step(x, v, t, t_next)
    if sampler == "euler":
        return x_euler
    if sampler != "heun":
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    v2 = v_fn(x_euler, t_next)
    x_heun = x + (t_next - t) * 0.5 * (v + v2)
    return jnp.where(t_next > 0, x_heun, x_euler)


@partial(jax.jit, static_argnames=("config", "steps", "sampler", "guidance", "start", "shape"))
def sample(config: DiTConfig, params, key: jax.Array, labels: jax.Array | None, *, shape: tuple[int, ...],
           steps: int = 20, sampler: str = "euler", guidance: float = 1.0, start: int = 0,
           x: jax.Array | None = None) -> jax.Array:
    """Latents [B, *shape] generated from noise (or from `x` at schedule index `start`) in `steps` steps."""
    ts = jnp.asarray(schedule(steps, config.time_shift))
    if x is None:
        x = jax.random.normal(key, (labels.shape[0] if labels is not None else 1, *shape), jnp.float32)
    v_fn = velocity_fn(config, params, labels, guidance)
    return jax.lax.fori_loop(start, steps, lambda i, x: step(v_fn, x, ts[i], ts[i + 1], sampler), x)


def renoise(x0: jax.Array, noise: jax.Array, t) -> jax.Array:
    """The flow-matching marginal at time t: (1 - t) x0 + t noise (SuperGen's restart from a sketch)."""
    return (1.0 - t) * x0 + t * noise
