"""Choices every kernel wrapper makes the same way: interpret mode on CPU, and the GPU lowering for this JAX version."""

from __future__ import annotations

import warnings

import jax


def resolve_interpret(interpret: bool | None) -> bool:
    """None -> interpret exactly when running on CPU, the only way Pallas runs there."""
    return jax.default_backend() == "cpu" if interpret is None else bool(interpret)


def compiler_params(*, num_warps: int = 4, num_stages: int = 2):
    """GPU lowering for plain BlockSpec kernels: the one place that picks it.

    CPU machines run jax 0.10.2, GPU machines jax 0.11.x, and today both get Triton: on 0.10.x a bare `pallas_call`
    lowers to Mosaic GPU (with a deprecation warning pointing to `plgpu.kernel`), which does not take our BlockSpec
    kernels as they are, and Triton compiler params select the Triton lowering; on 0.11.x those params still exist but
    are deprecated (the warning is silenced here). When the kernels are ported to Mosaic GPU, the version switch goes
    here. Callers pass None instead in interpret mode.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
