"""The quantum suite's circuits against qiskit-aer: MQT Bench families and qiskit library circuits at <= 12 qubits,
written to OpenQASM 2 by qiskit and read back by qrjax, dense (complex64) and compressed (pw_rel 1e-3), compared with
Aer's double-precision state vector of the same file.
"""

import math

import numpy as np
import pytest

pytest.importorskip("qiskit")
pytest.importorskip("qiskit_aer")
pytest.importorskip("mqt.bench")

from qrjax.quantum import fidelity, load_qasm, suite  # noqa: E402
from qrjax.quantum.cli import run  # noqa: E402

# (family, size): plain qelib1 gates; two registers (qpeexact); user gate definitions (dj, nested in cdkm), ccx and
# rccx (half_adder, randomcircuit), rzz (qaoa), rxx (bmw_quark_copula), cry (hhl), a decomposed controlled unitary (ae)
MQT = [("ghz", 12), ("qft", 8), ("graphstate", 10), ("qpeexact", 7), ("vqe_su2", 6), ("dj", 6), ("qaoa", 6),
       ("half_adder", 7), ("cdkm_ripple_carry_adder", 6), ("randomcircuit", 5), ("hhl", 4), ("ae", 4),
       ("bmw_quark_copula", 4)]
# plain gates (iqp); the unitary gates of quantum volume, a gate as wide as the circuit (qft), mcx (grover), qiskit's
# whole gate set (random_circuit)
LIBRARY = [("iqp", 8), ("quantum_volume", 5), ("qft", 6), ("grover_operator", 5), ("random_circuit", 5)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("suite_qasm")


def _check_against_aer(path):
    qc = suite.qiskit_circuit(path)
    ref = suite.aer_runner(qc, precision="double")()
    circuit = load_qasm(path)
    assert circuit.num_qubits == qc.num_qubits
    _, dense = run(circuit, compressed=False, dtype=np.complex64, check=False, progress=False)
    assert fidelity(ref, dense) >= 1 - 1e-5
    config = suite.compressed_config(circuit.num_qubits, widest_gate=max(len(g.qubits) for g in circuit.gates))
    summary, state = run(circuit, compressed=True, config=config, dtype=np.complex64, check=False, progress=False)
    assert len(state.blocks) > 1 and summary["stages"] >= 1  # the state really was held in compressed blocks
    assert fidelity(ref, state.to_dense()) >= 0.99


@pytest.mark.parametrize("family, size", MQT)
def test_mqt_family_matches_aer(folder, family, size):
    _check_against_aer(suite.write_family_qasm(family, size, folder))


@pytest.mark.parametrize("name, n", LIBRARY)
def test_library_circuit_matches_aer(folder, name, n):
    _check_against_aer(suite.write_library_qasm(name, n, folder))


def test_library_files_are_the_circuits(folder):
    """Every library circuit survives qiskit's dump and load (so the suite compares qrjax with the circuit meant)."""
    from qiskit.quantum_info import Statevector

    for name, smallest in suite.library_circuits().items():
        n = max(smallest, 4)
        original = Statevector(suite.library_circuit(name, n)).data
        reread = Statevector(suite.qiskit_circuit(suite.write_library_qasm(name, n, folder))).data
        assert abs(np.vdot(original, reread)) ** 2 == pytest.approx(1, abs=1e-9), name


def test_sizes_offered():
    assert suite.mqt_sizes("shor", 20) == {18: 18}
    assert suite.mqt_sizes("seven_qubit_steane_code", 20) == {13: 13}
    assert suite.mqt_sizes("shors_nine_qubit_code", 20) == {17: 17}
    assert list(suite.mqt_sizes("multiplier", 20)) == [4, 8, 12, 16, 20]
    assert list(suite.mqt_sizes("ghz", 5)) == [1, 2, 3, 4, 5]
    assert suite.nearest_sizes([4, 8, 12, 16, 20], [3, 5, 13, 21]) == [4, 12, 20]
    assert suite.nearest_sizes([18], [4, 8, 12, 16, 20]) == [18]
    assert suite.nearest_sizes([], [4]) == []
    with pytest.raises(suite.SuiteError, match="no family 'teleport'"):
        suite.mqt_sizes("teleport")


def test_generation_errors_are_named(folder):
    with pytest.raises(suite.SuiteError, match=r"dynamic_qft size 4: qiskit.qasm2.dumps failed \(a dynamic circuit"
                       ) as info:
        suite.write_family_qasm("dynamic_qft", 4, folder)
    assert info.value.dynamic
    with pytest.raises(suite.SuiteError, match="shor size 4: generation failed"):
        suite.write_family_qasm("shor", 4, folder)
    with pytest.raises(suite.SuiteError, match="needs at least 2 qubits"):
        suite.library_circuit("iqp", 1)
    with pytest.raises(suite.SuiteError, match="no library circuit 'nope'"):
        suite.write_library_qasm("nope", 4, folder)


def test_matrix_gate_is_decomposed_and_noted(folder):
    """ae holds a controlled UnitaryGate that qiskit cannot dump: the file has its definition instead, the same
    state, and says so."""
    import warnings

    from mqt.bench import BenchmarkLevel, get_benchmark
    from qiskit.quantum_info import Statevector

    path = suite.write_family_qasm("ae", 4, folder)
    assert "c-unitary" in suite.file_note(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = get_benchmark("ae", BenchmarkLevel.INDEP, 4).remove_final_measurements(inplace=False)
    a, b = Statevector(original).data, Statevector(suite.qiskit_circuit(path)).data
    assert abs(np.vdot(a, b)) ** 2 == pytest.approx(1, abs=1e-9)
    assert suite.file_note(suite.write_family_qasm("ghz", 3, folder)) is None


def test_compressed_config_splits_the_state():
    for n in (2, 4, 8, 12, 20, 30):
        c = suite.compressed_config(n)
        assert 1 <= c.block_qubits < n and 1 <= c.group_qubits <= 6 and c.bound == 1e-3 and c.mode == "pw_rel"
        assert c.block_qubits == min(20, max(n // 2, n - 6))
    assert suite.compressed_config(5).group_qubits == 2  # a two-qubit gate on two global qubits fits a stage
    assert suite.compressed_config(5, widest_gate=3).group_qubits == 3
    assert math.isclose(suite.compressed_config(10, bound=1e-2).bound, 1e-2)
