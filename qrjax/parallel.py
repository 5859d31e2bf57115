"""Meshes, batch sharding and multi-process runs on JAX's distributed runtime, built explicitly.

jax >= 0.10 `make_mesh` defaults to Explicit axes, under which unsharded shard_map inputs and `jnp.roll` on sharded
axes fail; qrjax asks for Auto axes unless a caller chooses otherwise.

Multi-process: `initialize` starts JAX's distributed runtime (one call per process, before any other JAX call);
afterwards `jax.devices()` lists every process's devices, so `make_mesh()` spans all of them, while
`jax.local_devices()` are the ones this process drives. Work that each process does on its own inputs (the
watermark detector) uses a mesh over the local devices and `process_share` / `gather_to_first` to split the inputs and
collect the results.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axis_shapes: Sequence[int] | None = None, axis_names: Sequence[str] = ("data",), *,
              axis_types: Sequence[AxisType] | None = None, devices=None) -> Mesh:
    """A mesh over `devices` (default: all, i.e. every process's devices after `initialize`).
    axis_shapes=None puts every device on the first axis."""
    devices = list(jax.devices() if devices is None else devices)
    if axis_shapes is None:
        axis_shapes = (len(devices),) + (1,) * (len(axis_names) - 1)
    if int(np.prod(axis_shapes)) != len(devices):
        raise ValueError(f"make_mesh: axis_shapes {tuple(axis_shapes)} need {int(np.prod(axis_shapes))} devices, "
                         f"have {len(devices)}")
    axis_types = tuple(axis_types or (AxisType.Auto,) * len(axis_names))
    return jax.make_mesh(tuple(axis_shapes), tuple(axis_names), axis_types=axis_types, devices=devices)


def use_cpu_devices(n: int) -> None:
    """Ask for n simulated CPU devices when the backend is the CPU (call before anything starts JAX's backend; if it
    has started, the devices it has stand). Raises ValueError when fewer than n devices are available."""
    if n > 1:
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # the backend is already up: keep what it has
            pass
    if len(jax.devices()) < n:
        raise ValueError(f"--devices {n}: only {len(jax.devices())} device(s) available")


def shard_batch(x, mesh: Mesh, axis: str = "data"):
    """Place x with its leading (batch) axis split over `axis`; the batch must divide evenly.

    On a mesh spanning several processes every process passes the same whole host array x; each places only the
    shards of its own devices (the global array is assembled by `jax.make_array_from_callback`)."""
    size = mesh.shape[axis]
    if x.shape[0] % size:
        raise ValueError(f"shard_batch: batch {x.shape[0]} is not divisible by the {size} devices on axis {axis!r}")
    sharding = NamedSharding(mesh, P(axis))
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def one_step_in_flight(step_fn):
    """step_fn wrapped to wait for each step's state on the CPU backend (elsewhere step_fn itself).

    Simulated CPU devices share one thread pool, and a collective blocks its thread until every device arrives: with
    the next step's program already dispatched, devices that entered it can hold the threads the others need to
    finish this one (XLA aborts the run after 40 s). Training steps with collectives keep one step in flight."""
    if jax.default_backend() != "cpu":
        return step_fn

    def step(state, batch):
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(state)
        return state, metrics

    return step


def to_host(x) -> np.ndarray:
    """A (possibly multi-process) jax.Array -> the whole array as numpy on every process (a collective when the
    array spans processes: every process must call it)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    with native_stdout_to_stderr():
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ------------------------------------------------------------------------------------------------ processes

class ProcessSettings(NamedTuple):
    """What `initialize` started the distributed runtime with."""

    coordinator_address: str | None
    num_processes: int
    process_id: int


_started: ProcessSettings | None = None

# Cluster environments jax 0.10.2 detects by itself (jax/_src/clusters): SLURM (srun) and Open MPI (mpirun). The
# process count and rank are read here too, to tell a one-process job (nothing to start) from a real one and to
# record the settings; jax finds the coordinator's address.
_CLUSTERS = {
    "SLURM": (("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
              "SLURM_NTASKS", "SLURM_PROCID"),
    "Open MPI": (("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
                 "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
}


def _detected_cluster() -> tuple[str, int, int] | None:
    """(name, process count, process id) of the cluster environment jax would detect, or None."""
    for name, (needed, count_var, id_var) in _CLUSTERS.items():
        if all(v in os.environ for v in needed):
            return name, _int_env(count_var), _int_env(id_var)
    return None


def _int_env(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"initialize: environment variable {name}={text!r} is not an integer") from None


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"initialize: coordinator_address {address!r} needs the form HOST:PORT with a port in "
                         f"1..65535 (e.g. 10.0.0.1:1234)")
    return address


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> ProcessSettings | None:
    """Start JAX's distributed runtime for this process (call it before any other JAX call).

    Each argument left None is taken from the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (the last two read by qrjax; jax 0.10.2 itself reads only the address), else from a SLURM or
    Open MPI job, which `jax.distributed.initialize` detects. With none of these, or num_processes == 1, this is a
    single-process run and nothing is started (returns None). On CPU, cross-process collectives use gloo.

    Calling it again with the same settings (or with no arguments) is a no-op; other settings raise RuntimeError.
    Returns the settings the runtime runs with.
    """
    global _started
    explicit = (coordinator_address, num_processes, process_id)
    address = coordinator_address if coordinator_address is not None else os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
    for name, value in (("num_processes", count), ("process_id", pid)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"initialize: {name} must be an integer, got {value!r}")
    if count is not None and count < 1:
        raise ValueError(f"initialize: num_processes must be at least 1, got {count}")
    if pid is not None and count is not None and not 0 <= pid < count:
        raise ValueError(f"initialize: process_id {pid} is outside 0..{count - 1} (num_processes={count})")
    if address is not None:
        _check_address(address)

    running, cluster = _running(), _detected_cluster()
    if running is not None and all(v is None for v in explicit):
        return running  # a defensive call by library code: whatever was started stands
    if count == 1 or (all(v is None for v in (address, count, pid)) and cluster is None):
        if running is not None:
            raise RuntimeError(f"initialize: the distributed runtime already runs with {running}; cannot switch to a "
                               f"single-process run")
        return None
    if cluster is None:
        missing = [n for n, v in (("coordinator_address", address), ("num_processes", count), ("process_id", pid))
                   if v is None]
        if missing:
            raise ValueError(f"initialize: {', '.join(missing)} not given (no SLURM or Open MPI job detected and no "
                             f"JAX_* variable set); a multi-process run needs coordinator_address, num_processes "
                             f"and process_id")
    elif cluster[1] == 1 and count is None:
        return None  # a one-task cluster job
    if running is not None:
        wanted = (address, count, pid)
        if any(w is not None and r is not None and w != r for w, r in zip(wanted, running)):
            raise RuntimeError(f"initialize: the distributed runtime already runs with {running}; asked for "
                               f"{ProcessSettings(*wanted)}")
        return running
    if jax.config.jax_cpu_collectives_implementation is None:
        # Without a cross-process implementation the CPU client runs each process's collectives on its own devices
        # only; jax 0.10.2 defaults to gloo, set here for runs that cleared it. Only the CPU client reads this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(address, None if count is None else int(count), None if pid is None else int(pid))
    except RuntimeError as err:
        raise RuntimeError(f"initialize: {err} (call qrjax.parallel.initialize before anything that uses JAX "
                           f"devices)") from None
    _started = ProcessSettings(address, int(count if count is not None else cluster[1]),
                               int(pid if pid is not None else cluster[2]))
    return _started


def _running() -> ProcessSettings | None:
    """The settings of the distributed runtime if one runs; coordinator_address is None when it was started by a
    direct `jax.distributed.initialize` call (jax has no public getter for it)."""
    if not jax.distributed.is_initialized():
        return None
    if _started is not None:
        return _started
    return ProcessSettings(None, jax.process_count(), jax.process_index())


def process_index() -> int:
    """This process's index, 0..process_count()-1 (0 in a single-process run)."""
    return jax.process_index()


def process_count() -> int:
    """How many processes take part in the run (1 without `initialize`)."""
    return jax.process_count()


def process_share(items: Sequence, index: int | None = None, count: int | None = None) -> Sequence:
    """This process's contiguous part of `items`: process i of N gets items[i*n//N : (i+1)*n//N], so the shares in
    process order concatenate to `items`. index/count default to this run's process_index()/process_count()."""
    index = process_index() if index is None else index
    count = process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_share: index {index} is outside 0..{count - 1}")
    n = len(items)
    return items[index * n // count:(index + 1) * n // count]


@contextlib.contextmanager
def native_stdout_to_stderr():
    """Send file descriptor 1 to stderr for a while: gloo logs each new connection ("[Gloo] Rank 0 is connected to
    1 peer ranks ...") on the C++ stdout, which would mix with the JSON Lines a CLI prints there. A CLI whose
    compiled programs run cross-process collectives (DLRM training) runs its whole job inside it."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's bytes, in process order (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    with native_stdout_to_stderr():
        lengths = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)], np.int32))).reshape(-1)
        padded = np.zeros(int(lengths.max()), np.uint8)
        padded[:len(data)] = np.frombuffer(data, np.uint8)
        stacked = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [stacked[i, :n].tobytes() for i, n in enumerate(lengths)]


def gather_to_first(objs: list) -> list:
    """The concatenation, in process order, of every process's list of JSON-serialisable items on process 0; `[]`
    on the others. Every process must call it. A single-process run gets `objs` back without any collective."""
    if process_count() == 1:
        return objs
    parts = _allgather_bytes(json.dumps(list(objs)).encode())
    if process_index() != 0:
        return []
    return [item for part in parts for item in json.loads(part)]


def broadcast_from_first(obj: Any) -> Any:
    """Process 0's JSON-serialisable value on every process (what the others pass is ignored; every process must
    call it). A single-process run gets `obj` back without any collective."""
    if process_count() == 1:
        return obj
    data = json.dumps(obj).encode() if process_index() == 0 else b""
    return json.loads(_allgather_bytes(data)[0])
