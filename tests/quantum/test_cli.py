"""`qrjax quantum run`: JSON summary, saved state, QASM input, and named errors."""

import json

import numpy as np
import pytest

from qrjax.cli import main
from qrjax.quantum import build, simulate, to_qasm


def _run(capsys, *argv):
    assert main(["quantum", "run", *argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_compressed_run_summary_and_saved_state(capsys, tmp_path):
    out = tmp_path / "state.npy"
    s = _run(capsys, "--circuit", "qft", "--qubits", "10", "--compressed", "--block-qubits", "5", "--group-qubits",
             "2", "--save-state", str(out))
    assert {"qubits", "seconds", "peak_bytes", "stages", "compression_ratio", "fidelity"} <= set(s)
    assert s["qubits"] == 10 and s["fidelity"] > 0.99 and s["fidelity_reference"] == "closed form"
    saved = np.load(out)
    assert saved.dtype == np.complex64 and saved.shape == (1024,)
    # each stage recompresses within 1e-3 of |a| = 2^-5, so the error grows at most by that per stage
    np.testing.assert_allclose(saved, np.asarray(simulate(build("qft", 10))), atol=s["stages"] * 1e-3 * 2**-5)


def test_dense_summary_times_compilation_apart(capsys):
    s = _run(capsys, "--circuit", "random", "--qubits", "6", "--fusion", "2", "--method", "slices")
    assert s["fusion"] == 2 and s["method"] == "slices" and 0 < s["passes"] < s["gates"]
    assert s["seconds"] > 0 and s["compile_seconds"] > 0
    again = _run(capsys, "--circuit", "random", "--qubits", "6", "--fusion", "2", "--method", "slices")
    assert again["compile_seconds"] < s["compile_seconds"] / 10  # the same programs, already compiled
    comp = _run(capsys, "--circuit", "random", "--qubits", "6", "--compressed", "--block-qubits", "4",
                "--group-qubits", "2", "--fusion", "0")
    assert comp["fusion"] == 0 and comp["compile_seconds"] > 0


def test_qasm_file_dense_and_compressed(capsys, tmp_path):
    path = tmp_path / "c.qasm"
    path.write_text(to_qasm(build("random", 8)))
    dense = _run(capsys, str(path), "--save-state", str(tmp_path / "d.npy"))
    assert dense["mode"] == "dense" and dense["stages"] is None
    comp = _run(capsys, str(path), "--compressed", "--block-qubits", "4", "--group-qubits", "2")
    assert comp["fidelity_reference"] == "dense simulation" and comp["fidelity"] > 0.99
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), np.asarray(simulate(build("random", 8))), atol=1e-6)


@pytest.mark.parametrize("argv, match", [
    (["missing.qasm"], "no such file"),
    (["--circuit", "ghz"], "needs --qubits"),
    (["--circuit", "teleport", "--qubits", "3"], "unknown circuit 'teleport'"),
    ([], "either FILE.qasm or --circuit"),
    (["--circuit", "ghz", "--qubits", "4", "--mode", "abs"], "--mode need --compressed"),
    (["--circuit", "ghz", "--qubits", "4", "--block-qubits", "3", "--bound", "1e-3"],
     "--bound, --block-qubits need --compressed"),
    (["--circuit", "ghz", "--qubits", "4", "--compressed", "--block-qubits", "0"], "block_qubits=0"),
    (["--circuit", "ghz", "--qubits", "4", "--compressed", "--method", "gather"], "--method applies to dense"),
    (["--circuit", "ghz", "--qubits", "4", "--fusion", "7"], "fusion=7"),
])
def test_bad_arguments_are_named(argv, match):
    with pytest.raises(SystemExit, match=match):
        main(["quantum", "run", *argv, "--quiet"])


def test_bad_qasm_names_the_line(tmp_path):
    path = tmp_path / "bad.qasm"
    path.write_text('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0];\nreset q[0];\n')
    with pytest.raises(SystemExit, match=r"bad.qasm:5"):
        main(["quantum", "run", str(path), "--quiet"])
