"""OpenQASM 2.0 subset: round trips through to_qasm, agreement with qiskit's reader on aer, and every error kind."""

import math

import numpy as np
import pytest

qiskit = pytest.importorskip("qiskit")
qiskit_aer = pytest.importorskip("qiskit_aer")

from qiskit import QuantumCircuit  # noqa: E402

from qrjax.quantum import CIRCUITS, QasmError, build, load_qasm, parse_qasm, simulate, to_qasm  # noqa: E402
from qrjax.quantum.qasm import evaluate  # noqa: E402


def aer_statevector(qc: QuantumCircuit) -> np.ndarray:
    qc = qc.copy()
    qc.save_statevector()
    return np.asarray(qiskit_aer.AerSimulator(method="statevector").run(qc).result().get_statevector())


@pytest.mark.parametrize("name", list(CIRCUITS))
def test_to_qasm_round_trip(name):
    circuit = build(name, 5)
    parsed = parse_qasm(to_qasm(circuit))
    assert parsed.num_qubits == circuit.num_qubits
    assert parsed.gates == circuit.gates  # angles are written with repr, so they come back exactly
    np.testing.assert_allclose(np.asarray(simulate(parsed)), np.asarray(simulate(circuit)), atol=1e-6)
    # and qiskit reads what we write to the same state
    np.testing.assert_allclose(np.asarray(simulate(circuit)),
                               aer_statevector(QuantumCircuit.from_qasm_str(to_qasm(circuit))), atol=1e-5)


HAND_WRITTEN = """\
// a hand-written program: two registers, pi expressions, register-wide gates
OPENQASM 2.0;
include "qelib1.inc";
qreg a[3];
qreg b[2];
creg c[5];
h a;                       // every qubit of a
x b[1]; rz(-pi/4) b[1];
cx a[0],b[0];
cx b, a[2] ;
u3(pi/2, -(pi/3)*2, 0.25e1) a[1];
u2(pi/8, -pi) b[0];
u1(2*pi/3 - 0.5) a[2];
cu1(pi / (1 + 3)) b[1],a[0];
ry(-pi^2/10) b;
barrier a, b;
swap a[1],b[1];
cz b[0],a[2];
sdg a[0]; tdg b[0]; s a[1]; t b[1]; y a[2]; z a[0];
rx(sqrt(2)*cos(pi/5)) a[1];
cp(-1.5) a[0],a[1];
p(ln(2)) b[0];
measure a -> c[0];
"""


def test_hand_written_program_matches_qiskit_on_aer():
    circuit = parse_qasm(HAND_WRITTEN, source="hand.qasm")
    assert circuit.num_qubits == 5
    assert circuit.gates[0].qubits == (0,) and circuit.gates[2].qubits == (2,)  # `h a` -> 3 gates
    qc = QuantumCircuit.from_qasm_str(HAND_WRITTEN.replace("measure a -> c[0];", "measure a[0] -> c[0];"))
    qc.remove_final_measurements()
    np.testing.assert_allclose(np.asarray(simulate(circuit)), aer_statevector(qc), atol=1e-5)


def test_load_qasm_reads_a_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "ghz.qasm"
    path.write_text(to_qasm(build("ghz", 4)))
    assert load_qasm(path).gates == build("ghz", 4).gates
    bad = tmp_path / "bad.qasm"
    bad.write_text('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0];\nreset q[0];\n')
    with pytest.raises(QasmError, match=r"bad\.qasm:5: unsupported statement 'reset q\[0\];'"):
        load_qasm(bad)


def test_reads_qiskits_qasm2_dump():
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 2)
    qc.u(0.3, 0.2, 0.1, 1)
    qc.p(0.7, 2)
    qc.cp(1.3, 2, 1)
    qc.swap(0, 1)
    circuit = parse_qasm(qiskit.qasm2.dumps(qc))
    np.testing.assert_allclose(np.asarray(simulate(circuit)), aer_statevector(qc), atol=1e-5)


@pytest.mark.parametrize("expr,value", [
    ("pi", math.pi), ("-pi/2", -math.pi / 2), ("2*(pi - 1)/3", 2 * (math.pi - 1) / 3), ("--1", 1.0),
    ("1e-3 + .5", 0.501), ("-2^2", -4.0), ("2^3^2", 2.0 ** 9), ("sin(pi/6)", math.sin(math.pi / 6)),
    ("3 - 2 - 1", 0.0), ("8 / 4 / 2", 1.0),
])
def test_expression_evaluator(expr, value):
    assert evaluate(expr) == pytest.approx(value, abs=1e-15)


HEADER = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\n'


@pytest.mark.parametrize("body,line,problem", [
    ("h q[0];\nreset q[0];\n", 5, "unsupported statement 'reset q[0];'"),
    ("gate foo a { h a; }\n", 4, "unsupported statement"),
    ("if(c==1) x q[0];\n", 4, "unsupported statement"),
    ("opaque g a;\n", 4, "unsupported statement"),
    ("h q[0];\nccx q[0],q[1],q[2];\n", 5, "unknown gate 'ccx'"),
    ("cx q[0],q[3];\n", 4, "index 3 out of range for qreg q[3]"),
    ("h r[0];\n", 4, "unknown quantum register 'r'"),
    ("rx(pi/) q[0];\n", 4, "bad expression 'pi/'"),
    ("rz(2*foo) q[0];\n", 4, "bad expression '2*foo'"),
    ("rz(eval(1)) q[0];\n", 4, "bad expression"),
    ("h q[0]\ncx q[0],q[1];\n", 4, "missing ';'"),
    ("rx q[0];\n", 4, "takes 1 parameter(s), got 0"),
    ("cx q[0];\n", 4, "acts on 2 qubit(s), got 1"),
    ("cx q[1],q[1];\n", 4, "distinct"),
    ("qreg q[2];\n", 4, "declared twice"),
    ("measure q[0] -> c[0];\n", 4, "unknown classical register"),
    ('include "other.inc";\n', 4, "unsupported include"),
    ("creg c[3];\nmeasure q[0] -> c[0];\nh q[0];\n", 6, "gate after measure"),
])
def test_errors_name_source_line_and_text(body, line, problem):
    with pytest.raises(QasmError) as info:
        parse_qasm(HEADER + body, source="prog.qasm")
    message = str(info.value)
    assert message.startswith(f"prog.qasm:{line}: "), message
    assert problem in message, message


def test_qasm_error_is_a_value_error_and_header_version_checked():
    with pytest.raises(ValueError, match="<string>:1: unsupported OpenQASM version"):
        parse_qasm("OPENQASM 3.0;\nqreg q[1];\n")
    with pytest.raises(QasmError, match="no qreg declared"):
        parse_qasm("OPENQASM 2.0;\n")
