import jax
import numpy as np
import pytest

from qrjax.ecc import get_code
from qrjax.parallel import (broadcast_from_first, gather_to_first, initialize, make_mesh, process_count, process_index,
                            process_share, shard_batch)


@pytest.mark.multidevice
def test_decoding_sharded_over_8_devices_is_bit_identical(rng):
    assert jax.device_count() == 8
    code = get_code("qrmark-rs")
    bits = np.asarray(code.encode(rng.integers(0, 2, (64, 32)))) ^ (rng.random((64, 48)) < 0.03)
    mesh = make_mesh()
    sharded = shard_batch(bits.astype(np.uint8), mesh)
    assert len(sharded.sharding.device_set) == 8
    got = jax.jit(lambda b: code.decode(b))(sharded)
    want = code.decode(bits.astype(np.uint8))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert len(got.payload.sharding.device_set) == 8


def test_mesh_and_sharding_errors_name_the_problem():
    with pytest.raises(ValueError, match="need 6 devices, have 8"):
        make_mesh((3, 2), ("a", "b"))
    with pytest.raises(ValueError, match="batch 5 is not divisible by the 8 devices"):
        shard_batch(np.zeros((5, 3)), make_mesh())


# ------------------------------------------------------------------------------------------------ processes

CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_STEP_NODELIST",
                "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_RANK")


@pytest.fixture
def no_cluster(monkeypatch):
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_initialize_single_process_is_a_no_op(no_cluster):
    assert initialize() is None and initialize() is None
    assert initialize(num_processes=1) is None and initialize("localhost:1234", 1, 0) is None
    no_cluster.setenv("JAX_NUM_PROCESSES", "1")
    assert initialize() is None
    for name, value in (("SLURM_JOB_ID", "7"), ("SLURM_STEP_NODELIST", "node1"), ("SLURM_NTASKS", "1"),
                        ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")):
        no_cluster.setenv(name, value)
    no_cluster.delenv("JAX_NUM_PROCESSES")
    assert initialize() is None  # a one-task SLURM job
    assert not jax.distributed.is_initialized() and process_count() == 1 and process_index() == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, "'localhost' needs the form HOST:PORT"),
    ({"coordinator_address": "localhost:", "num_processes": 2, "process_id": 0}, "needs the form HOST:PORT"),
    ({"coordinator_address": ":1234", "num_processes": 2, "process_id": 0}, "needs the form HOST:PORT"),
    ({"coordinator_address": "h:70000", "num_processes": 2, "process_id": 0}, "port in 1..65535"),
    ({"coordinator_address": "h:1234", "num_processes": 2, "process_id": 2}, r"process_id 2 is outside 0..1"),
    ({"coordinator_address": "h:1234", "num_processes": 2, "process_id": -1}, r"process_id -1 is outside 0..1"),
    ({"coordinator_address": "h:1234", "num_processes": 0, "process_id": 0}, "num_processes must be at least 1"),
    ({"coordinator_address": "h:1234", "num_processes": "2", "process_id": 0}, "num_processes must be an integer"),
    ({"num_processes": 2, "process_id": 0}, "coordinator_address not given"),
    ({"coordinator_address": "h:1234", "num_processes": 2}, "process_id not given"),
    ({"coordinator_address": "h:1234"}, "num_processes, process_id not given"),
])
def test_initialize_names_bad_arguments(no_cluster, kwargs, message):
    with pytest.raises(ValueError, match=message):
        initialize(**kwargs)


def test_initialize_reads_jax_variables_and_names_bad_ones(no_cluster):
    no_cluster.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        initialize()
    no_cluster.setenv("JAX_NUM_PROCESSES", "2")
    no_cluster.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="coordinator_address not given"):
        initialize()
    no_cluster.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    # complete settings reach jax.distributed.initialize, which refuses: this process already uses its devices
    with pytest.raises(RuntimeError, match="before anything that uses JAX devices"):
        initialize()
    assert not jax.distributed.is_initialized()


def test_process_share_partitions_in_order():
    rng = np.random.default_rng(0)
    cases = [(n, count) for n in range(0, 40) for count in range(1, 10)] + \
        [(int(rng.integers(0, 10_000)), int(rng.integers(1, 300))) for _ in range(200)]
    for n, count in cases:
        items = list(range(n))
        shares = [process_share(items, i, count) for i in range(count)]
        assert [x for s in shares for x in s] == items, (n, count)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1, (n, count)
    assert process_share("abcdefg") == "abcdefg"  # one process: everything
    with pytest.raises(ValueError, match="index 3 is outside 0..2"):
        process_share([1, 2], 3, 3)


def test_single_process_gather_and_broadcast_return_the_input():
    objs = [{"a": 1}, [2, 3], "x"]
    assert gather_to_first(objs) is objs and broadcast_from_first(objs) is objs


def test_cli_global_options_reach_initialize(no_cluster, capsys):
    from qrjax.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--coordinator", "localhost:1234", "--num-processes", "2", "ecc", "encode", "c0ffee11"])
    assert exc.value.code == 2
    assert "--coordinator/--num-processes/--process-id: initialize: process_id not given" in capsys.readouterr().err
