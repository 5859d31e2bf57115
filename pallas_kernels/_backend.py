"""Choices every kernel wrapper makes the same way: interpret mode on CPU, and the GPU lowering for this JAX version."""

from __future__ import annotations

import warnings

import jax


def jax_version() -> tuple[int, int]:
    major, minor = jax.__version__.split(".")[:2]
    return int(major), int(minor)


def resolve_interpret(interpret: bool | None) -> bool:
    """None -> interpret exactly when running on CPU, the only way Pallas runs there."""
    return jax.default_backend() == "cpu" if interpret is None else bool(interpret)


def compiler_params(*, num_warps: int = 4, num_stages: int = 2):
    """GPU lowering for plain BlockSpec kernels, chosen from the JAX version.

    CPU machines run jax 0.10.2, GPU machines jax 0.11.x. On 0.10.x a bare `pallas_call` lowers to Mosaic GPU (with a
    deprecation warning pointing to `plgpu.kernel`), which does not take our BlockSpec kernels as they are; Triton
    compiler params select the Triton lowering. On 0.11.x the Triton params still exist but are deprecated; they remain
    the lowering for these kernels until they are ported to Mosaic GPU. Callers pass None instead in interpret mode.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
