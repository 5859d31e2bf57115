"""Meshes and batch sharding, built explicitly.

jax >= 0.10 `make_mesh` defaults to Explicit axes, under which unsharded shard_map inputs and `jnp.roll` on sharded
axes fail; qrjax asks for Auto axes unless a caller chooses otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axis_shapes: Sequence[int] | None = None, axis_names: Sequence[str] = ("data",), *,
              axis_types: Sequence[AxisType] | None = None, devices=None) -> Mesh:
    """A mesh over `devices` (default: all). axis_shapes=None puts every device on the first axis."""
    devices = list(jax.devices() if devices is None else devices)
    if axis_shapes is None:
        axis_shapes = (len(devices),) + (1,) * (len(axis_names) - 1)
    if int(np.prod(axis_shapes)) != len(devices):
        raise ValueError(f"make_mesh: axis_shapes {tuple(axis_shapes)} need {int(np.prod(axis_shapes))} devices, "
                         f"have {len(devices)}")
    axis_types = tuple(axis_types or (AxisType.Auto,) * len(axis_names))
    return jax.make_mesh(tuple(axis_shapes), tuple(axis_names), axis_types=axis_types, devices=devices)


def shard_batch(x, mesh: Mesh, axis: str = "data"):
    """Place x with its leading (batch) axis split over `axis`; the batch must divide evenly."""
    size = mesh.shape[axis]
    if x.shape[0] % size:
        raise ValueError(f"shard_batch: batch {x.shape[0]} is not divisible by the {size} devices on axis {axis!r}")
    return jax.device_put(x, NamedSharding(mesh, P(axis)))
