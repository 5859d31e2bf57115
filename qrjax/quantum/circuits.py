"""Benchmark circuit builders: each returns a `Circuit` on n qubits (bv: n + 1) starting from |0...0>."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from qrjax.quantum.circuit import Circuit, Gate


def _check_n(builder: str, n: int, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{builder}: n={n!r} must be an integer >= {minimum}")
    return int(n)


def ghz(n: int) -> Circuit:
    """GHZ state (|0...0> + |1...1>) / sqrt(2): H(0), then the chain CX(0, 1), CX(1, 2), ..., CX(n-2, n-1)."""
    n = _check_n("ghz", n)
    gates = [Gate("h", (0,))] + [Gate("cx", (i, i + 1)) for i in range(n - 1)]
    return Circuit(n, tuple(gates), name=f"ghz_{n}")


def qft_default_input(n: int) -> int:
    """The basis state qft(n) transforms by default: the bit pattern 1010... (int('10' * n, 2) masked to n bits)."""
    return int("10" * n, 2) & ((1 << n) - 1)


def qft(n: int, *, x: int | None = None, swaps: bool = True) -> Circuit:
    """QFT of the basis state |x>: amplitude of |y> is exp(2 pi i x y / 2^n) / sqrt(2^n) (qiskit's QFTGate(n) on
    |x>, little-endian). X gates prepare |x>; x=None uses `qft_default_input(n)` (alternating bits) so that the output
    is not just the uniform state. Then for j = n-1 down to 0: H(j) and CP(pi / 2^(j-k)) on (k, j) for k < j; then the
    bit-reversal swaps (without them, `swaps=False`, the output qubits come out reversed).
    """
    n = _check_n("qft", n)
    x = qft_default_input(n) if x is None else x
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 0 <= x < 2**n:
        raise ValueError(f"qft: x={x!r} must be an integer basis state in [0, 2^{n})")
    gates = [Gate("x", (q,)) for q in range(n) if (x >> q) & 1]
    for j in range(n - 1, -1, -1):
        gates.append(Gate("h", (j,)))
        gates += [Gate("cp", (k, j), (math.pi / 2 ** (j - k),)) for k in range(j - 1, -1, -1)]
    if swaps:
        gates += [Gate("swap", (q, n - 1 - q)) for q in range(n // 2)]
    return Circuit(n, tuple(gates), name=f"qft_{n}")


def bv_default_secret(n: int) -> int:
    """The secret bernstein_vazirani(n) hides by default: alternating bits 0101... (bit 0 set), n bits."""
    return int("01" * n, 2) & ((1 << n) - 1)


def bernstein_vazirani(n: int, secret: int | None = None) -> Circuit:
    """Bernstein-Vazirani on n data qubits (0..n-1) and an ancilla (qubit n): X, H on the ancilla, H on the data,
    CX(i, n) for each set bit i of `secret`, H on the data. The output is |secret> on the data qubits times
    |-> = (|0> - |1>) / sqrt(2) on the ancilla. secret=None: `bv_default_secret(n)`."""
    n = _check_n("bernstein_vazirani", n)
    secret = bv_default_secret(n) if secret is None else secret
    if isinstance(secret, bool) or not isinstance(secret, (int, np.integer)) or not 0 <= secret < 2**n:
        raise ValueError(f"bernstein_vazirani: secret={secret!r} must be an integer in [0, 2^{n})")
    gates = [Gate("x", (n,)), Gate("h", (n,))] + [Gate("h", (q,)) for q in range(n)]
    gates += [Gate("cx", (q, n)) for q in range(n) if (secret >> q) & 1]
    gates += [Gate("h", (q,)) for q in range(n)]
    return Circuit(n + 1, tuple(gates), name=f"bv_{n}")


def _angles(name: str, values, default: Sequence[float], p: int) -> tuple[float, ...]:
    values = tuple(default[i % len(default)] for i in range(p)) if values is None else tuple(values)
    if len(values) != p:
        raise ValueError(f"qaoa_maxcut: {name} has {len(values)} values, expected p={p}")
    return values


def qaoa_maxcut(n: int, *, p: int = 1, gammas: Sequence[float] | None = None, betas: Sequence[float] | None = None,
                edges: Sequence[tuple[int, int]] | None = None, seed: int = 0) -> Circuit:
    """QAOA state for MaxCut: H on all qubits (|+...+>), then per layer l: for each edge (i, j) CX(i, j), RZ(2 gamma_l,
    j), CX(i, j) (= exp(-i gamma_l Z_i Z_j)), then RX(2 beta_l) on every qubit. Default edges: the ring (i, i+1 mod n);
    default angles gamma = 0.4, 0.8, ... and beta = 0.3, 0.6, ... cycled to length p (fixed constants, no search).
    `seed` is accepted for a uniform builder signature; the defaults are deterministic and do not use it."""
    n = _check_n("qaoa_maxcut", n, 2)
    if p < 1:
        raise ValueError(f"qaoa_maxcut: p={p} must be >= 1")
    gammas = _angles("gammas", gammas, (0.4, 0.8, 1.2), p)
    betas = _angles("betas", betas, (0.3, 0.6, 0.9), p)
    if edges is None:
        edges = [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]
    edges = [tuple(int(v) for v in e) for e in edges]
    for e in edges:
        if len(e) != 2 or e[0] == e[1] or not all(0 <= v < n for v in e):
            raise ValueError(f"qaoa_maxcut: edge {e} must join two distinct qubits in [0, {n})")
    gates = [Gate("h", (q,)) for q in range(n)]
    for gamma, beta in zip(gammas, betas):
        for i, j in edges:
            gates += [Gate("cx", (i, j)), Gate("rz", (j,), (2 * gamma,)), Gate("cx", (i, j))]
        gates += [Gate("rx", (q,), (2 * beta,)) for q in range(n)]
    return Circuit(n, tuple(gates), name=f"qaoa_{n}_p{p}")


def ising(n: int, *, steps: int = 4, dt: float = 0.1, j: float = 1.0, h: float = 1.0) -> Circuit:
    """First-order Trotter evolution exp(-i t H), t = steps * dt, of the transverse-field Ising chain
    H = -j sum_i Z_i Z_{i+1} - h sum_i X_i (open boundary), starting from |0...0> (the ferromagnetic ground state of
    the h = 0 chain, so the field drives the dynamics). Each step: for each neighbour pair CX(i, i+1),
    RZ(-2 j dt, i+1), CX(i, i+1); then RX(-2 h dt) on every qubit."""
    n = _check_n("ising", n, 2)
    if steps < 1:
        raise ValueError(f"ising: steps={steps} must be >= 1")
    gates = []
    for _ in range(steps):
        for i in range(n - 1):
            gates += [Gate("cx", (i, i + 1)), Gate("rz", (i + 1,), (-2 * j * dt,)), Gate("cx", (i, i + 1))]
        gates += [Gate("rx", (q,), (-2 * h * dt,)) for q in range(n)]
    return Circuit(n, tuple(gates), name=f"ising_{n}")


def random_circuit(n: int, depth: int, *, seed: int = 0) -> Circuit:
    """A brickwork random circuit: `depth` layers, each U3 with angles uniform in [0, 2 pi) on every qubit, then CZ
    on pairs (0,1), (2,3), ... in even layers and (1,2), (3,4), ... in odd layers. Angles from
    numpy.random.default_rng(seed), drawn layer by layer, qubit by qubit, (theta, phi, lambda)."""
    n = _check_n("random_circuit", n)
    if depth < 1:
        raise ValueError(f"random_circuit: depth={depth} must be >= 1")
    rng = np.random.default_rng(seed)
    gates = []
    for layer in range(depth):
        angles = rng.uniform(0, 2 * math.pi, size=(n, 3))
        gates += [Gate("u3", (q,), tuple(angles[q])) for q in range(n)]
        gates += [Gate("cz", (q, q + 1)) for q in range(layer % 2, n - 1, 2)]
    return Circuit(n, tuple(gates), name=f"random_{n}_d{depth}")


RANDOM_DEPTH = 8

CIRCUITS: dict[str, Callable[[int], Circuit]] = {
    "ghz": ghz,
    "qft": qft,
    "bv": bernstein_vazirani,
    "qaoa": qaoa_maxcut,
    "ising": ising,
    "random": lambda n: random_circuit(n, RANDOM_DEPTH),
}


def build(name: str, n: int) -> Circuit:
    """The registered circuit `name` (a key of CIRCUITS) on n qubits (bv: n data qubits + 1 ancilla)."""
    if name not in CIRCUITS:
        raise ValueError(f"build: unknown circuit {name!r}; known: {', '.join(CIRCUITS)}")
    return CIRCUITS[name](n)
