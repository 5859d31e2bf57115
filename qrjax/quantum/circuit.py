"""Gates and circuits: the small, validated description that the simulators, builders and QASM reader share.

Conventions are qiskit's: qubit q is bit q of a basis-state index (little-endian), and a k-qubit gate's matrix is
indexed by sum_j bit(qubits[j]) << j, so `Gate("cx", (c, t)).matrix` equals
`qiskit.quantum_info.Operator(CXGate()).data` applied with qargs [c, t] (the control is bit 0 of the matrix index).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

# name -> (number of qubits, number of parameters)
GATE_SPECS: dict[str, tuple[int, int]] = {
    "h": (1, 0), "x": (1, 0), "y": (1, 0), "z": (1, 0),
    "s": (1, 0), "sdg": (1, 0), "t": (1, 0), "tdg": (1, 0),
    "rx": (1, 1), "ry": (1, 1), "rz": (1, 1), "p": (1, 1), "u3": (1, 3),
    "cx": (2, 0), "cz": (2, 0), "cp": (2, 1), "swap": (2, 0),
}
DIAGONAL_GATES = frozenset({"z", "s", "sdg", "t", "tdg", "rz", "p", "cz", "cp"})


def gate_matrix(name: str, params: Sequence, xp=np, dtype=None):
    """The matrix of gate `name` with angles `params`, built with array module `xp` (numpy, or jax.numpy for traced
    angles under jit): complex[2^k, 2^k] in qiskit's little-endian convention. `dtype` defaults to complex128."""
    dtype = np.complex128 if dtype is None else dtype
    c = lambda v: xp.asarray(v, dtype)  # noqa: E731
    one, zero = c(1.0), c(0.0)
    i = c(1j)

    def mat(rows):
        return xp.stack([xp.stack([c(v) for v in row]) for row in rows])

    if name == "h":
        r = 1 / math.sqrt(2)
        return mat([[r, r], [r, -r]])
    if name == "x":
        return mat([[0, 1], [1, 0]])
    if name == "y":
        return mat([[0, -1j], [1j, 0]])
    if name == "z":
        return mat([[1, 0], [0, -1]])
    fixed_phase = {"s": 1j, "sdg": -1j, "t": np.exp(1j * np.pi / 4), "tdg": np.exp(-1j * np.pi / 4)}
    if name in fixed_phase:
        return mat([[1, 0], [0, fixed_phase[name]]])
    if name == "rx":
        (theta,) = params
        co, si = c(xp.cos(theta / 2)), c(xp.sin(theta / 2))
        return mat([[co, -i * si], [-i * si, co]])
    if name == "ry":
        (theta,) = params
        co, si = c(xp.cos(theta / 2)), c(xp.sin(theta / 2))
        return mat([[co, -si], [si, co]])
    if name == "rz":
        (lam,) = params
        return mat([[xp.exp(-i * c(lam) / 2), zero], [zero, xp.exp(i * c(lam) / 2)]])
    if name == "p":
        (lam,) = params
        return mat([[one, zero], [zero, xp.exp(i * c(lam))]])
    if name == "u3":
        theta, phi, lam = params
        co, si = c(xp.cos(theta / 2)), c(xp.sin(theta / 2))
        ephi, elam = xp.exp(i * c(phi)), xp.exp(i * c(lam))
        return mat([[co, -elam * si], [ephi * si, ephi * elam * co]])
    if name == "cx":
        return mat([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]])
    if name == "cz":
        return mat([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, -1]])
    if name == "cp":
        (lam,) = params
        return mat([[one, zero, zero, zero], [zero, one, zero, zero], [zero, zero, one, zero],
                    [zero, zero, zero, xp.exp(i * c(lam))]])
    if name == "swap":
        return mat([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    raise ValueError(f"gate_matrix: unknown gate {name!r}; known: {sorted(GATE_SPECS)}")


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate: `name` (lower-case, one of GATE_SPECS), the qubits it acts on (for controlled gates the control
    first), and its angles in radians (rx/ry/rz/p/cp: one angle; u3: theta, phi, lambda as in qiskit's U3Gate)."""

    name: str
    qubits: tuple[int, ...]
    params: tuple[float, ...] = ()

    def __post_init__(self):
        if self.name not in GATE_SPECS:
            raise ValueError(f"Gate: unknown gate name {self.name!r}; known: {', '.join(sorted(GATE_SPECS))}")
        arity, nparams = GATE_SPECS[self.name]
        qubits = tuple(self.qubits) if isinstance(self.qubits, (tuple, list)) else (self.qubits,)
        for q in qubits:
            if isinstance(q, bool) or not isinstance(q, (int, np.integer)):
                raise ValueError(f"Gate {self.name}: qubit {q!r} is not an integer (qubits={qubits!r})")
        qubits = tuple(int(q) for q in qubits)
        if len(qubits) != arity:
            raise ValueError(f"Gate {self.name}: acts on {arity} qubit(s), got {len(qubits)}: {qubits}")
        if any(q < 0 for q in qubits):
            raise ValueError(f"Gate {self.name}: negative qubit index in {qubits}")
        if len(set(qubits)) != len(qubits):
            raise ValueError(f"Gate {self.name}: qubits must be distinct, got {qubits}")
        params = tuple(self.params) if isinstance(self.params, (tuple, list)) else (self.params,)
        if len(params) != nparams:
            raise ValueError(f"Gate {self.name}: takes {nparams} parameter(s), got {len(params)}: {params!r}")
        try:
            params = tuple(float(p) for p in params)
        except (TypeError, ValueError):
            raise ValueError(f"Gate {self.name}: parameters must be real numbers, got {params!r}") from None
        if not all(math.isfinite(p) for p in params):
            raise ValueError(f"Gate {self.name}: parameters must be finite, got {params!r}")
        object.__setattr__(self, "qubits", qubits)
        object.__setattr__(self, "params", params)

    @property
    def num_qubits(self) -> int:
        return len(self.qubits)

    @property
    def matrix(self) -> np.ndarray:
        """complex128[2^k, 2^k], row/column index sum_j bit(qubits[j]) << j (qiskit's Operator(gate).data)."""
        return gate_matrix(self.name, self.params)

    @property
    def is_diagonal(self) -> bool:
        return self.name in DIAGONAL_GATES

    def remap(self, mapping: Mapping[int, int] | Sequence[int]) -> Gate:
        """The same gate on qubits mapping[q] (a dict, or a sequence indexed by old qubit)."""
        try:
            qubits = tuple(int(mapping[q]) for q in self.qubits)
        except (KeyError, IndexError):
            raise ValueError(f"Gate {self.name}{self.qubits}: mapping has no entry for one of its qubits") from None
        return Gate(self.name, qubits, self.params)

    def __str__(self) -> str:
        args = f"({', '.join(f'{p:.6g}' for p in self.params)})" if self.params else ""
        return f"{self.name}{args} {', '.join(f'q[{q}]' for q in self.qubits)}"


@dataclasses.dataclass(frozen=True)
class Circuit:
    """`num_qubits` qubits starting in |0...0>, and `gates` applied in order."""

    num_qubits: int
    gates: tuple[Gate, ...]
    name: str = "circuit"

    def __post_init__(self):
        if isinstance(self.num_qubits, bool) or not isinstance(self.num_qubits, (int, np.integer)) \
                or self.num_qubits < 1:
            raise ValueError(f"Circuit {self.name!r}: num_qubits={self.num_qubits!r} must be an integer >= 1")
        object.__setattr__(self, "num_qubits", int(self.num_qubits))
        gates = tuple(self.gates)
        for idx, g in enumerate(gates):
            if not isinstance(g, Gate):
                raise ValueError(f"Circuit {self.name!r}: gate {idx} is a {type(g).__name__}, not a Gate")
            if max(g.qubits) >= self.num_qubits:
                raise ValueError(f"Circuit {self.name!r}: gate {idx} ({g}) uses qubit {max(g.qubits)} but the "
                                 f"circuit has {self.num_qubits} qubits")
        object.__setattr__(self, "gates", gates)

    def __len__(self) -> int:
        return len(self.gates)

    def __iter__(self):
        return iter(self.gates)
