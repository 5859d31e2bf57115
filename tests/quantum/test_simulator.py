"""State-vector simulator tests against qiskit (Statevector.evolve, Operator, qiskit-aer) and closed-form states."""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

qiskit = pytest.importorskip("qiskit")
qiskit_aer = pytest.importorskip("qiskit_aer")

from qiskit import QuantumCircuit  # noqa: E402
from qiskit.quantum_info import Operator, Statevector  # noqa: E402

from qrjax.quantum import (CIRCUITS, GATE_SPECS, Circuit, Gate, apply_gates, bernstein_vazirani, build,  # noqa: E402
                           compile_circuit, fidelity, ghz, qft, random_circuit, simulate)
from qrjax.quantum.circuits import bv_default_secret, qft_default_input  # noqa: E402

ATOL64 = 1e-5  # complex64 amplitudes


# qiskit's gate class for each qelib1 name, as its OpenQASM 2 reader builds them (our names are qelib1's)
_QISKIT_GATES = {i.name: i.constructor for i in qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS}


def _add_gate(qc: QuantumCircuit, g: Gate, qubits=None):
    qubits = list(g.qubits if qubits is None else qubits)
    qc.append(_QISKIT_GATES[g.name](*g.params), qubits)


def to_qiskit(circuit: Circuit) -> QuantumCircuit:
    """The same circuit as a qiskit QuantumCircuit, translated gate by gate."""
    qc = QuantumCircuit(circuit.num_qubits)
    for g in circuit.gates:
        _add_gate(qc, g)
    return qc


def aer_statevector(qc: QuantumCircuit) -> np.ndarray:
    """complex128[2^n] from qiskit-aer's statevector method (double precision)."""
    qc = qc.copy()
    qc.save_statevector()
    result = qiskit_aer.AerSimulator(method="statevector").run(qc).result()
    return np.asarray(result.get_statevector())


def random_state(n, rng):
    psi = rng.normal(size=2**n) + 1j * rng.normal(size=2**n)
    return psi / np.linalg.norm(psi)


def random_gate(name, n, rng):
    arity, nparams = GATE_SPECS[name]
    qubits = tuple(int(q) for q in rng.choice(n, arity, replace=False))
    if name == "u0":  # the identity for any count of idle periods, which qiskit wants as an integer
        return Gate(name, qubits, (int(rng.integers(0, 4)),))
    return Gate(name, qubits, tuple(rng.uniform(-2 * math.pi, 2 * math.pi, nparams)))


@pytest.mark.parametrize("name", sorted(GATE_SPECS))
def test_gate_matrix_is_qiskits_operator(name, rng):
    g = random_gate(name, GATE_SPECS[name][0], rng)
    qc = QuantumCircuit(len(g.qubits))
    _add_gate(qc, g, qubits=range(len(g.qubits)))
    # Gate.matrix is indexed by its own qubit order, so put the gate on 0..k-1 in that order
    np.testing.assert_allclose(Gate(name, tuple(range(len(g.qubits))), g.params).matrix, Operator(qc).data,
                               atol=1e-12)
    assert Gate(name, g.qubits, g.params).is_diagonal == bool(
        np.allclose(Operator(qc).data, np.diag(np.diag(Operator(qc).data))))


@pytest.mark.parametrize("name", sorted(GATE_SPECS))
def test_every_gate_on_random_state_matches_statevector_evolve(name, rng):
    n = 5
    psi = random_state(n, rng)
    gates = [random_gate(name, n, rng) for _ in range(3)]
    expected = Statevector(psi)
    for g in gates:
        qc = QuantumCircuit(len(g.qubits))
        _add_gate(qc, g, qubits=range(len(g.qubits)))
        expected = expected.evolve(qc, qargs=list(g.qubits))
    for fusion, method in [(0, "slices"), (1, "slices"), (3, "slices"), (5, "slices"), (0, "gather"), (3, "gather")]:
        got = apply_gates(jnp.asarray(psi, jnp.complex64), gates, fusion=fusion, method=method)
        assert got.dtype == jnp.complex64 and got.shape == (2**n,)
        np.testing.assert_allclose(np.asarray(got), expected.data, atol=ATOL64)


def test_fusion_patterns_match_statevector_evolve(rng):
    """Runs that the fusion merges: one-qubit runs, 1q absorbed into 2q, CX RZ CX on the same pair (either order),
    constant products that cancel (H H, X X), pending 1q gates paired at the end, diagonal runs."""
    n = 6
    gates = [Gate("h", (0,)), Gate("h", (0,)), Gate("x", (1,)), Gate("ry", (1,), (0.3,)), Gate("cx", (0, 1)),
             Gate("rz", (1,), (0.7,)), Gate("cx", (1, 0)), Gate("cz", (0, 1)), Gate("swap", (2, 5)),
             Gate("t", (2,)), Gate("u3", (3,), (0.1, 0.2, 0.3)), Gate("cp", (5, 2), (1.1,)), Gate("s", (4,)),
             Gate("h", (4,)), Gate("h", (4,)), Gate("y", (3,)), Gate("rx", (5,), (0.4,)), Gate("sdg", (0,)),
             Gate("tdg", (1,)), Gate("cx", (3, 4)), Gate("x", (4,)), Gate("x", (4,)), Gate("h", (2,))]
    gates += [random_gate(str(rng.choice(sorted(GATE_SPECS))), n, rng) for _ in range(40)]
    psi = random_state(n, rng)
    expected = Statevector(psi)
    for g in gates:
        qc = QuantumCircuit(len(g.qubits))
        _add_gate(qc, g, qubits=range(len(g.qubits)))
        expected = expected.evolve(qc, qargs=list(g.qubits))
    unfused = apply_gates(jnp.asarray(psi, jnp.complex64), gates, fusion=0, method="slices")
    np.testing.assert_allclose(np.asarray(unfused), expected.data, atol=ATOL64)
    for fusion in (1, 2, 3, 4):
        for method in ("slices", "gather"):
            fused = apply_gates(jnp.asarray(psi, jnp.complex64), gates, fusion=fusion, method=method)
            np.testing.assert_allclose(np.asarray(fused), expected.data, atol=ATOL64)


@contextlib.contextmanager
def _count_backend_compiles():
    """Records one entry per XLA backend compilation inside the block (JAX's public monitoring events)."""
    seen = []

    def listener(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_new_angles_reuse_the_compiled_function_and_state_is_donated(rng):
    n = 4
    structure = [("rx", (0,)), ("cp", (1, 3)), ("u3", (2,)), ("cx", (2, 0))]

    def gates_with(angles_rng):
        return [Gate(name, q, tuple(angles_rng.uniform(-3, 3, GATE_SPECS[name][1]))) for name, q in structure]

    first, second = gates_with(rng), gates_with(rng)
    assert first != second
    psi = random_state(n, rng)
    state = jnp.asarray(psi, jnp.complex64)
    with _count_backend_compiles() as compiles:
        apply_gates(jnp.asarray(random_state(n, rng), jnp.complex64), first)
        assert compiles, "the counter sees the first call's compilation"
        compiles.clear()
        got = apply_gates(state, second)
    assert not compiles, f"new angles recompiled: {len(compiles)} XLA compilation(s)"
    assert state.is_deleted()
    np.testing.assert_allclose(np.asarray(got), Statevector(psi).evolve(
        to_qiskit(Circuit(n, tuple(second)))).data, atol=ATOL64)


@pytest.mark.parametrize("method", ["slices", "gather"])
def test_compile_circuit_compiles_everything_before_the_run(method):
    # sizes no other test simulates, so the programs are not already compiled
    circuit = random_circuit(7, 6, seed=5) if method == "slices" else random_circuit(13, 3, seed=6)
    with _count_backend_compiles() as compiles:
        compiled = compile_circuit(circuit, fusion=3, method=method)
        assert compiles and compiled.compile_seconds > 0
        compiles.clear()
        got = compiled.run()
        got.block_until_ready()
    assert not compiles, f"the run compiled {len(compiles)} program(s)"
    assert 0 < compiled.passes < len(circuit.gates) and compiled.method == method
    np.testing.assert_allclose(np.asarray(got), aer_statevector(to_qiskit(circuit)), atol=ATOL64)


def test_fused_equals_unfused_on_random_wide_circuits(rng):
    """A random gate sequence on 7 qubits, fused at several widths, equals the unfused run."""
    gates = tuple(random_gate(str(rng.choice(sorted(GATE_SPECS))), 7, rng) for _ in range(64))
    circuit = Circuit(7, gates)
    unfused = np.asarray(simulate(circuit, fusion=0, method="slices"))
    for fusion in (1, 3, 5):
        for method in ("slices", "gather"):
            compiled = compile_circuit(circuit, fusion=fusion, method=method)
            np.testing.assert_allclose(np.asarray(compiled.run()), unfused, atol=ATOL64)
            assert compiled.passes <= len(gates)


BUILDER_CASES = [(name, n) for name in CIRCUITS for n in (5, 9)] + [("qft", 12), ("random", 12), ("qaoa", 12)]


@pytest.mark.parametrize("name,n", BUILDER_CASES)
def test_builders_match_aer(name, n):
    circuit = build(name, n)
    expected = aer_statevector(to_qiskit(circuit))
    got = simulate(circuit, method="slices" if n == 9 else "auto")  # "auto" gathers at these sizes
    assert got.dtype == jnp.complex64 and got.shape == (2**circuit.num_qubits,)
    np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL64)
    assert fidelity(got, expected) == pytest.approx(1.0, abs=1e-5)


def test_random_circuit_16_qubits_matches_aer():
    circuit = random_circuit(16, 6, seed=3)  # past GATHER_MAX_QUBITS: "auto" applies slices
    expected = aer_statevector(to_qiskit(circuit))
    got = np.asarray(simulate(circuit))
    np.testing.assert_allclose(got, expected, atol=ATOL64)
    assert np.abs(expected).max() > 10 * ATOL64  # the comparison is not between two near-zero vectors


@pytest.mark.parametrize("n,x,swaps", [(5, None, True), (6, 0, True), (6, 37, True), (6, 37, False)])
def test_qft_is_the_dft(n, x, swaps):
    xv = qft_default_input(n) if x is None else x
    N = 2**n
    y = np.arange(N)
    dft = np.exp(2j * np.pi * xv * y / N) / np.sqrt(N)
    if not swaps:  # output qubit order reversed: amplitude index = bit-reverse of y
        rev = np.array([int(format(v, f"0{n}b")[::-1], 2) for v in y])
        dft = dft[np.argsort(rev)]
    got = np.asarray(simulate(qft(n, x=x, swaps=swaps)))
    np.testing.assert_allclose(got, dft, atol=ATOL64)
    # and qiskit's own QFTGate agrees on the convention
    if swaps:
        qc = QuantumCircuit(n)
        for q in range(n):
            if (xv >> q) & 1:
                qc.x(q)
        qc.append(qiskit.circuit.library.QFTGate(n), range(n))
        np.testing.assert_allclose(got, Statevector(qc).data, atol=ATOL64)


def test_qft_default_input_is_nontrivial():
    assert qft_default_input(5) == 0b01010 and qft_default_input(4) == 0b1010
    got = np.asarray(simulate(qft(4)))
    assert not np.allclose(got, np.full(16, 0.25))


def test_ghz_amplitudes():
    n = 7
    expected = np.zeros(2**n, complex)
    expected[0] = expected[-1] = 1 / math.sqrt(2)
    np.testing.assert_allclose(np.asarray(simulate(ghz(n))), expected, atol=ATOL64)


def test_bernstein_vazirani_reveals_the_secret():
    n, secret = 6, 0b101101
    got = np.asarray(simulate(bernstein_vazirani(n, secret)))
    expected = np.zeros(2 ** (n + 1), complex)
    expected[secret] = 1 / math.sqrt(2)  # ancilla (qubit n) in |-> = (|0> - |1>)/sqrt(2)
    expected[secret | (1 << n)] = -1 / math.sqrt(2)
    np.testing.assert_allclose(got, expected, atol=ATOL64)
    assert bv_default_secret(5) == 0b10101


def test_complex128_under_x64_matches_aer_closely():
    circuit = random_circuit(7, 5, seed=1)
    expected = aer_statevector(to_qiskit(circuit))
    with jax.enable_x64(True):
        got = simulate(circuit, dtype=jnp.complex128)
        assert got.dtype == jnp.complex128
        got = np.asarray(got)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_simulate_chunking_initial_state_and_progress(rng):
    circuit = random_circuit(6, 4, seed=2)
    psi = random_state(6, rng)
    initial = jnp.asarray(psi, jnp.complex64)
    a = simulate(circuit, initial=initial, chunk=7, progress=True)
    b = simulate(circuit, initial=initial)
    assert not initial.is_deleted()  # simulate copies `initial` before donating
    expected = Statevector(psi).evolve(to_qiskit(circuit)).data
    np.testing.assert_allclose(np.asarray(a), expected, atol=ATOL64)
    np.testing.assert_allclose(np.asarray(b), expected, atol=ATOL64)


def test_fidelity_by_hand():
    psi = np.array([1, 1j, 0, 0]) / math.sqrt(2)
    phi = np.array([1, 0, 0, 1])  # unnormalised on purpose
    # <psi|phi> = 1/sqrt(2); |.|^2 = 1/2; <psi|psi> = 1; <phi|phi> = 2  ->  1/4
    assert fidelity(psi, phi) == pytest.approx(0.25, abs=1e-15)
    assert fidelity(psi, 3j * psi) == pytest.approx(1.0, abs=1e-15)
    assert fidelity(np.array([1, 0]), np.array([0, 1])) == 0.0
    with pytest.raises(ValueError, match="lengths differ"):
        fidelity(psi, psi[:2])


def test_remap():
    g = Gate("cp", (0, 2), (0.5,))
    assert g.remap({0: 4, 2: 1}) == Gate("cp", (4, 1), (0.5,))
    assert g.remap([3, 9, 5]) == Gate("cp", (3, 5), (0.5,))
    with pytest.raises(ValueError, match="mapping"):
        g.remap({0: 1})


@pytest.mark.parametrize("args,match", [
    (("foo", (0,)), "unknown gate name 'foo'"),
    (("cx", (0,)), "cx: acts on 2 qubit"),
    (("rx", (0,)), "rx: takes 1 parameter"),
    (("h", (0,), (0.1,)), "h: takes 0 parameter"),
    (("cz", (1, 1)), "cz: qubits must be distinct"),
    (("x", (-1,)), "x: negative qubit"),
    (("rz", (0,), (float("nan"),)), "rz: parameters must be finite"),
])
def test_gate_validation(args, match):
    with pytest.raises(ValueError, match=match):
        Gate(*args)


def test_circuit_and_input_validation():
    with pytest.raises(ValueError, match="gate 1 .* uses qubit 3 but the circuit has 3 qubits"):
        Circuit(3, (Gate("h", (0,)), Gate("cx", (0, 3))))
    with pytest.raises(ValueError, match="unknown circuit 'nope'; known: ghz, qft, bv, qaoa, ising, random"):
        build("nope", 4)
    with pytest.raises(ValueError, match="not a power of two"):
        apply_gates(jnp.zeros(6, jnp.complex64), [Gate("h", (0,))])
    with pytest.raises(ValueError, match="gate 0 .* of a 2-qubit state"):
        apply_gates(jnp.zeros(4, jnp.complex64), [Gate("h", (2,))])
    with pytest.raises(ValueError, match="initial has shape"):
        simulate(ghz(3), initial=jnp.zeros(4, jnp.complex64))
    with pytest.raises(ValueError, match="enable_x64"):
        simulate(ghz(3), dtype=jnp.complex128)
    assert len(ghz(4)) == 4
