"""qelib1's gate matrices against qiskit: every name of qiskit's legacy qelib1 set, loaded by qiskit's own OpenQASM 2
reader (`qasm2.loads` with LEGACY_CUSTOM_INSTRUCTIONS) and turned into `Operator(...).data`; on permuted qubit orders
through our reader and a brute-force numpy simulator; and built with jax.numpy from traced angles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

qiskit = pytest.importorskip("qiskit")

from qiskit import qasm2  # noqa: E402
from qiskit.quantum_info import Operator  # noqa: E402

from qrjax.quantum import Circuit, Gate, parse_qasm  # noqa: E402
from qrjax.quantum.circuit import DIAGONAL_GATES, GATE_SPECS, gate_matrix  # noqa: E402

LEGACY = qasm2.LEGACY_CUSTOM_INSTRUCTIONS
ATOL = 1e-12


def apply_gate(psi: np.ndarray, gate: Gate) -> np.ndarray:
    """psi: complex128[2] * n (axis a is qubit n-1-a, so a C-order flatten is qiskit's index) -> the same after
    `gate`, by a tensordot of Gate.matrix (row index sum_j bit_j << j: C-order row axes are bits k-1 .. 0)."""
    n, k = psi.ndim, len(gate.qubits)
    axes = [n - 1 - gate.qubits[k - 1 - i] for i in range(k)]
    out = np.tensordot(gate.matrix.reshape([2] * (2 * k)), psi, axes=(list(range(k, 2 * k)), axes))
    return np.moveaxis(out, list(range(k)), axes)


def reference_state(circuit: Circuit, initial: np.ndarray | None = None) -> np.ndarray:
    """complex128[2^n]: the circuit applied gate by gate to |0...0> (or `initial`, complex[2^n])."""
    n = circuit.num_qubits
    if initial is None:
        psi = np.zeros([2] * n, np.complex128)
        psi[(0,) * n] = 1
    else:
        psi = np.asarray(initial, np.complex128).reshape([2] * n)
    for g in circuit.gates:
        psi = apply_gate(psi, g)
    return psi.reshape(-1)


def reference_operator(circuit: Circuit) -> np.ndarray:
    """complex128[2^n, 2^n]: column j is the circuit applied to basis state j."""
    dim = 2**circuit.num_qubits
    return np.stack([reference_state(circuit, np.eye(dim)[j]) for j in range(dim)], axis=1)


def random_params(name: str, rng) -> tuple[float, ...]:
    if name == "u0":  # qiskit wants an integral count of identity periods
        return (float(rng.integers(0, 4)),)
    return tuple(float(v) for v in rng.uniform(-2 * math.pi, 2 * math.pi, GATE_SPECS[name][1]))


def program(name: str, params, qubits, num_qubits: int) -> str:
    args = f"({','.join(repr(p) for p in params)})" if params else ""
    return (f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{num_qubits}];\n'
            f"{name}{args} {','.join(f'q[{q}]' for q in qubits)};\n")


def qiskit_operator(text: str) -> np.ndarray:
    return Operator(qasm2.loads(text, custom_instructions=LEGACY)).data


def test_gate_set_is_qiskits_legacy_qelib1():
    legacy = {i.name: (i.num_qubits, i.num_params) for i in LEGACY if i.name != "delay"}
    assert GATE_SPECS == legacy


@pytest.mark.parametrize("name", sorted(GATE_SPECS))
def test_gate_matrix_equals_qiskits_gate_for_that_name(name, rng):
    """Global phase included: the matrix is the one qiskit's loader gives the name, not just the same up to phase."""
    k = GATE_SPECS[name][0]
    for _ in range(3):
        params = random_params(name, rng)
        want = qiskit_operator(program(name, params, range(k), k))
        np.testing.assert_allclose(gate_matrix(name, params), want, atol=ATOL, rtol=0)
        np.testing.assert_allclose(Gate(name, tuple(range(k)), params).matrix, want, atol=ATOL, rtol=0)
    assert (name in DIAGONAL_GATES) == bool(np.allclose(want, np.diag(np.diag(want)), atol=0))
    assert Gate(name, tuple(range(k)), params).is_diagonal == (name in DIAGONAL_GATES)


@pytest.mark.parametrize("name", sorted(GATE_SPECS))
def test_parsed_gate_on_permuted_qubits_matches_qiskit(name, rng):
    """The gate read from QASM on a random order of the qubits of a register one larger (a spectator qubit)."""
    k = GATE_SPECS[name][0]
    n = k + 1
    for _ in range(2):
        qubits = [int(q) for q in rng.permutation(n)[:k]]
        params = random_params(name, rng)
        text = program(name, params, qubits, n)
        circuit = parse_qasm(text)
        assert circuit.num_qubits == n
        if name not in ("id", "u0"):  # identities emit nothing
            assert [g.qubits for g in circuit.gates] == [tuple(qubits)]
        np.testing.assert_allclose(reference_operator(circuit), qiskit_operator(text), atol=ATOL, rtol=0)


def test_reference_simulator_is_qiskits_order():
    """The numpy reference itself, on a gate whose qubit order matters: CX(2, 0) on |001> + |100> (qubit 0 set)."""
    c = Circuit(3, (Gate("x", (2,)), Gate("cx", (2, 0))))
    psi = reference_state(c)
    assert psi[0b101] == 1 and np.count_nonzero(psi) == 1


@pytest.mark.parametrize("name", sorted(n for n, (_, p) in GATE_SPECS.items() if p))
def test_gate_matrix_with_traced_angles_under_jit(name, rng):
    params = random_params(name, rng)
    with jax.enable_x64(True):
        got = jax.jit(lambda p: gate_matrix(name, p, jnp, jnp.complex128))(jnp.asarray(params, jnp.float64))
        assert got.dtype == jnp.complex128
        np.testing.assert_allclose(np.asarray(got), gate_matrix(name, params), atol=ATOL, rtol=0)
    got32 = jax.jit(lambda p: gate_matrix(name, p, jnp, jnp.complex64))(jnp.asarray(params, jnp.float32))
    assert got32.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(got32), gate_matrix(name, params), atol=2e-6, rtol=0)


def test_gate_matrix_returns_a_new_array_and_checks_its_input():
    m = gate_matrix("ccx")
    m[0, 0] = 7
    assert gate_matrix("ccx")[0, 0] == 1
    with pytest.raises(ValueError, match="unknown gate 'ecr'"):
        gate_matrix("ecr")
    with pytest.raises(ValueError, match="'cu' takes 4 parameter"):
        gate_matrix("cu", (1.0, 2.0, 3.0))


@pytest.mark.parametrize("name,qubits,params,problem", [
    ("ccz", (0, 1, 2), (), "unknown gate name 'ccz'"),
    ("ccx", (0, 1), (), "acts on 3 qubit"),
    ("c4x", (0, 1, 2, 3, 3), (), "distinct"),
    ("cswap", (0, -1, 2), (), "negative"),
    ("cu", (0, 1), (1.0, 2.0, 3.0), "takes 4 parameter"),
    ("rzz", (0, 1), (math.inf,), "finite"),
    ("rxx", (0, 1), ("a",), "real numbers"),
    ("x", (1.5,), (), "not an integer"),
    ("h", (True,), (), "not an integer"),
])
def test_gate_validation_stays_strict(name, qubits, params, problem):
    with pytest.raises(ValueError, match=problem):
        Gate(name, qubits, params)


def test_gate_normalises_lists_and_numpy_scalars():
    g = Gate("cu3", [np.int64(2), 0], [np.float32(0.5), 1, np.float64(-2.0)])
    assert g.qubits == (2, 0) and type(g.qubits[0]) is int
    assert g.params == (0.5, 1.0, -2.0) and all(type(p) is float for p in g.params)
    assert g == Gate("cu3", (2, 0), (0.5, 1.0, -2.0))
