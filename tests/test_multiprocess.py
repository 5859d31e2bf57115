"""Two local CPU processes on JAX's distributed runtime (gloo collectives) against the one-process result.

Each case starts two `python` subprocesses on a free localhost port with four simulated CPU devices each; their
results are compared with what this pytest process (eight simulated devices, conftest) computes on its own.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from qrjax.parallel import make_mesh, shard_batch

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), *filter(None, [env.get("PYTHONPATH")])])
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # as conftest sets it here: the same compiler settings on both sides
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _run_two(argv_for, ok=(0,)) -> list[subprocess.CompletedProcess]:
    """Run argv_for(0) and argv_for(1) side by side; fail with both processes' stderr if either times out or exits
    with a code outside `ok`."""
    procs = [subprocess.Popen(argv_for(i), env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate()[1] for p in procs]
        pytest.fail(f"two-process run passed {TIMEOUT_S} s\n" +
                    "\n".join(f"--- process {i} stderr:\n{e[-4000:]}" for i, e in enumerate(logs)))
    if any(r.returncode not in ok for r in results):
        pytest.fail("\n".join(f"--- process {i} exit {r.returncode} (expected {ok}), stderr:\n{r.stderr[-4000:]}"
                              for i, r in enumerate(results)))
    return results


def global_input() -> np.ndarray:
    """f32[48, 5] of small integers: every sum below is exact, so any reduction order gives the same bits."""
    return (np.arange(48 * 5, dtype=np.float32).reshape(48, 5) % 97) - 40.0


def collectives(mesh):
    """psum of x*x and a tiled all-gather of 3*x reversed per shard, through jax.shard_map over axis "data"."""
    return jax.jit(jax.shard_map(
        lambda b: (jax.lax.psum(b * b, "data"), jax.lax.all_gather(b[::-1] * 3.0, "data", tiled=True)),
        mesh=mesh, in_specs=P("data"), out_specs=(P(), P("data"))))


WORKER = textwrap.dedent("""
    import json
    import sys

    import numpy as np

    from qrjax import parallel

    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert parallel.initialize(f"localhost:{port}", 2, pid) == ("localhost:" + port, 2, pid)
    assert parallel.initialize(f"localhost:{port}", 2, pid) == ("localhost:" + port, 2, pid)  # again: a no-op
    try:
        parallel.initialize(f"localhost:{port}", 2, 1 - pid)
        raise SystemExit("initialize with another process id did not raise")
    except RuntimeError:
        pass
    import jax
    from jax.experimental import multihost_utils

    from test_multiprocess import collectives, global_input

    mesh = parallel.make_mesh()
    assert (jax.device_count(), jax.local_device_count(), mesh.devices.size) == (8, 4, 8)
    assert (parallel.process_index(), parallel.process_count()) == (pid, 2)
    x = parallel.shard_batch(global_input(), mesh)
    assert not x.is_fully_addressable and len(x.sharding.device_set) == 8
    total, gathered = collectives(mesh)(x)
    objs = parallel.gather_to_first([{"process": pid, "i": i} for i in range(pid + 2)])
    np.savez(out, psum=np.asarray(total.addressable_data(0)),
             gather=multihost_utils.process_allgather(gathered, tiled=True),
             objs=np.asarray(json.dumps(objs)), first=np.asarray(parallel.broadcast_from_first(f"from {pid}")))
""")


@pytest.mark.multidevice
def test_two_processes_form_one_mesh_equal_to_eight_local_devices(tmp_path):
    port = _free_port()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _run_two(lambda i: [sys.executable, str(script), str(port), str(i), str(tmp_path / f"out{i}.npz")])

    assert jax.device_count() == 8 and jax.process_count() == 1
    mesh = make_mesh()
    want_total, want_gather = (np.asarray(a) for a in collectives(mesh)(shard_batch(global_input(), mesh)))
    for i in range(2):
        got = np.load(tmp_path / f"out{i}.npz")
        assert got["psum"].dtype == want_total.dtype and got["gather"].shape == want_gather.shape
        np.testing.assert_array_equal(got["psum"], want_total)
        np.testing.assert_array_equal(got["gather"], want_gather)
        assert str(got["first"]) == "from 0"
    assert json.loads(str(np.load(tmp_path / "out0.npz")["objs"])) == \
        [{"process": 0, "i": 0}, {"process": 0, "i": 1}, {"process": 1, "i": 0}, {"process": 1, "i": 1},
         {"process": 1, "i": 2}]
    assert json.loads(str(np.load(tmp_path / "out1.npz")["objs"])) == []


@pytest.fixture(scope="module")
def detect_folder(tmp_path_factory):
    """Six PNGs: four watermarked with one key, two clean; plus one unreadable file (an error record)."""
    from qrjax.ecc import get_code
    from qrjax.ecc.hexbits import bits_to_hex
    from qrjax.watermark import load_pretrained
    from qrjax.watermark.benchmark import make_dataset

    from tests.xla_mode import optimized  # (here, not at the top: the worker processes import this module)

    d = tmp_path_factory.mktemp("mp_detect")
    with optimized():  # the shipped model's refined embedding: minutes unoptimised
        ds = make_dataset(d, load_pretrained("cpu"), get_code("qrmark-bch"), 6, 256, "png", seed=1, split="val",
                          marked_fraction=4 / 6, progress=False)
    (d / "000006.png").write_bytes(b"not a png")
    return d, bits_to_hex(ds["payload"])


@pytest.mark.slow  # about 50 s on two busy cores: three processes each load the model and compile
def test_detect_across_two_processes_equals_one_process(detect_folder, capsys):
    from qrjax.cli import main

    folder, key = detect_folder
    flags = ["watermark", "detect", str(folder), "--key", key, "--workers", "1,1,1", "--batch", "2", "--quiet"]
    assert main(flags) == 1  # the unreadable file: exit 1, still one record
    want = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(want) == 7 and sum(r["detected"] is True for r in want) == 4 and want[6]["status"] == "error"

    port = _free_port()
    # both exit 1: process 1 ran the bad file, process 0 wrote its record
    runs = _run_two(lambda i: [sys.executable, "-m", "qrjax", "--coordinator", f"localhost:{port}", "--num-processes",
                               "2", "--process-id", str(i), *flags], ok=(1,))
    logs = "\n".join(f"--- process {i} stderr:\n{r.stderr[-4000:]}" for i, r in enumerate(runs))
    assert "on 2 processes, 3 here: 6 read, 1 errors, 4 detected" in runs[0].stderr, logs
    assert "process 1 of 2: 4 of 7 inputs: 3 read, 1 errors, 1 detected" in runs[1].stderr, logs
    # the records carry no timing fields, so whole records are compared
    assert [json.loads(line) for line in runs[0].stdout.splitlines()] == want
    assert runs[1].stdout == ""


@pytest.mark.slow  # two processes and this one each compile the tiny DLRM's train step
def test_dlrm_training_across_two_processes_equals_one_process(tmp_path):
    from qrjax.dlrm.config import get_config
    from qrjax.dlrm.train import train_and_evaluate

    flags = ["dlrm", "train", "--preset", "tiny", "--compress", "adaptive", "--json", "--quiet"]
    want = train_and_evaluate(get_config("tiny", {"compress": "adaptive"}), tmp_path / "one", progress=False)
    port = _free_port()
    runs = _run_two(lambda i: [sys.executable, "-m", "qrjax", "--coordinator", f"localhost:{port}", "--num-processes",
                               "2", "--process-id", str(i), *flags, "--out", str(tmp_path / "two")])
    assert runs[1].stdout == ""
    got = json.loads(runs[0].stdout)
    # the same 8-device mesh, tables and batches; gloo's all-reduce adds the devices' partial sums in another order
    # than XLA's in-process one (measured: log loss equal to 5e-9 relative after 4 steps)
    for key in ("wire_bytes_per_step", "bound_violations", "devices", "steps"):
        assert got[key] == want[key], key
    for key in ("auc", "logloss", "final_train_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 4]  # written once (by process 0), not once per process


@pytest.mark.multidevice
def test_clip_training_across_two_processes_equals_one_process(tmp_path):
    """FastCLIP v3 on 2 processes x 4 devices: the same global batches, u tables and temperature as one process with
    8 devices (the features' all-gather and the gradients' all-reduce cross processes)."""
    from qrjax.clip.config import get_config
    from qrjax.clip.train import train_and_evaluate

    want = train_and_evaluate(get_config("tiny"), tmp_path / "one", progress=False)
    port = _free_port()
    runs = _run_two(lambda i: [sys.executable, "-m", "qrjax", "--coordinator", f"localhost:{port}", "--num-processes",
                               "2", "--process-id", str(i), "clip", "train", "--preset", "tiny", "--json", "--quiet",
                               "--workdir", str(tmp_path / "two")])
    assert runs[1].stdout == ""
    got = json.loads(runs[0].stdout)
    assert got["devices"] == want["devices"] == 8 and got["samples_seen"] == want["samples_seen"]
    # gloo's all-reduce sums the devices' partial gradients in another order than XLA's in-process one
    for key in ("loss", "tau", "objective", "zero_shot_top1", "retrieval_r1_i2t"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 4]  # written once (by process 0)
