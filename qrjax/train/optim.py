"""Optimisers: LAMB, AdamW or plain SGD behind optional gradient clipping, linear warm-up then cosine decay (constant
when end_learning_rate equals learning_rate), no weight decay on 1-D params."""

from __future__ import annotations

import functools

import jax
import optax


def make_schedule(learning_rate: float, steps: int, warmup_steps: int, end_learning_rate: float = 0.0):
    warmup_steps = max(0, min(warmup_steps, steps - 1))
    return optax.warmup_cosine_decay_schedule(init_value=0.0 if warmup_steps else learning_rate,
                                              peak_value=learning_rate, warmup_steps=warmup_steps,
                                              decay_steps=max(steps, warmup_steps + 1), end_value=end_learning_rate)


def _decay_mask(params):
    # Biases, BatchNorm scales and other vectors are not weight-decayed (as in FastCLIP and big_vision).
    return jax.tree.map(lambda p: p.ndim > 1, params)


@functools.lru_cache(maxsize=64)
def make_optimizer(name: str, learning_rate: float, steps: int, warmup_steps: int, *, end_learning_rate: float = 0.0,
                   weight_decay: float = 0.0, grad_clip: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
    """name: 'adamw', 'lamb' or 'sgd' (DLRM's optimiser; no weight decay); b1, b2, eps: Adam's (CLIP's ViTs use
    b2 0.98, eps 1e-6).

    The same arguments return the same (immutable) transformation: it is static metadata of the TrainState, so a new
    but equal one would make every jitted train step compile again."""
    schedule = make_schedule(learning_rate, steps, warmup_steps, end_learning_rate)
    if name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
    elif name == "lamb":
        opt = optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
    elif name == "sgd":
        if weight_decay:
            raise ValueError(f"make_optimizer: sgd takes no weight decay, got weight_decay={weight_decay}")
        opt = optax.sgd(schedule)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose adamw, lamb or sgd")
    return optax.chain(optax.clip_by_global_norm(grad_clip), opt) if grad_clip else opt
