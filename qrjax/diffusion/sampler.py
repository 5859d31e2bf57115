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
from qrjax.diffusion.model import apply_model

SAMPLERS = ("euler", "heun")


def schedule(steps: int, shift: float = 1.0) -> np.ndarray:
    """f32[steps + 1]: times from 1 to 0, warped by SD3's shift s: t -> s t / (1 + (s - 1) t)."""
    if steps < 1:
        raise ValueError(f"schedule: steps must be >= 1, got {steps}")
    t = np.linspace(1.0, 0.0, steps + 1)
    return (shift * t / (1.0 + (shift - 1.0) * t)).astype(np.float32)


def velocity_fn(config: DiTConfig, params, cond, guidance: float = 1.0, control=None) -> Callable:
    """v(x, t) for a batch x: [B, ...] at scalar time t. cond: int32[B] class labels (or None) for the DiT, a TextCond
    for the MMDiT (control: its AttentionControl, or a function t -> AttentionControl for step-aware corrections).
    Classifier-free guidance when guidance != 1: v = v_uncond + guidance (v_cond - v_uncond), both halves in one
    model call (the null class, or the empty caption)."""

    def v(x, t):
        b = x.shape[0]
        tt = jnp.full((b,), t, jnp.float32)
        ctl = control(t) if callable(control) else control
        if guidance == 1.0 or not (config.text or config.num_classes):
            return apply_model(config, params, x, tt, cond, ctl)
        both = cond.with_null() if config.text else jnp.concatenate([cond, jnp.full((b,), config.null_class,
                                                                                    jnp.int32)])
        return guide(apply_model(config, params, jnp.concatenate([x, x]), jnp.concatenate([tt, tt]), both, ctl),
                     guidance)

    return v


def guide(out: jax.Array, guidance: float) -> jax.Array:
    """Classifier-free guidance of a [conditional; unconditional] batch: u + guidance (c - u)."""
    b = out.shape[0] // 2
    return out[b:] + guidance * (out[:b] - out[b:])


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


@partial(jax.jit, static_argnames=("config", "steps", "sampler", "guidance", "start", "shape", "control"))
def sample(config: DiTConfig, params, key: jax.Array, cond, *, shape: tuple[int, ...], steps: int = 20,
           sampler: str = "euler", guidance: float = 1.0, start: int = 0, x: jax.Array | None = None,
           control=None) -> jax.Array:
    """Latents [B, *shape] generated from noise (or from `x` at schedule index `start`) in `steps` steps. cond: class
    labels int32[B] (or None: one unconditional sample) or a TextCond; control: see `velocity_fn`."""
    ts = jnp.asarray(schedule(steps, config.time_shift))
    if x is None:
        b = cond.states.shape[0] if config.text else (cond.shape[0] if cond is not None else 1)
        x = jax.random.normal(key, (b, *shape), jnp.float32)
    v_fn = velocity_fn(config, params, cond, guidance, control)
    return jax.lax.fori_loop(start, steps, lambda i, x: step(v_fn, x, ts[i], ts[i + 1], sampler), x)


def renoise(x0: jax.Array, noise: jax.Array, t) -> jax.Array:
    """The flow-matching marginal at time t: (1 - t) x0 + t noise (SuperGen's restart from a sketch)."""
    return (1.0 - t) * x0 + t * noise
