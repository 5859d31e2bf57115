"""Gates and circuits: the small, validated description that the simulators, builders and QASM reader share.

Conventions are qiskit's: qubit q is bit q of a basis-state index (little-endian), and a k-qubit gate's matrix is
indexed by sum_j bit(qubits[j]) << j, so `Gate("cx", (c, t)).matrix` equals
`qiskit.quantum_info.Operator(CXGate()).data` applied with qargs [c, t] (the control is bit 0 of the matrix index).

The gate set is qiskit's legacy `qelib1.inc` (`qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS` less `delay`), each name with
the matrix of the qiskit standard gate that name loads as, global phase included:

    1 qubit, fixed:   id x y z h s sdg t tdg sx sxdg
    1 qubit, angles:  rx ry rz (theta)  p u1 (lambda)  u0 (gamma, ignored: the identity)  u2 (phi, lambda)
                      u3 u (theta, phi, lambda)
    2 qubits:         cx cy cz ch csx swap  crx cry crz cp cu1 (angle)  cu3 (theta, phi, lambda)
                      cu (theta, phi, lambda, gamma)  rxx rzz (theta)
    3-5 qubits:       ccx cswap rccx (3)  rc3x c3x c3sqrtx (4)  c4x (5)

Controlled gates list their controls first (c3x: controls q0 q1 q2, target q3; cswap: control q0, swapped q1 q2).
Aliases with identical matrices: u1 = p, cu1 = cp, u = u3.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

# name -> (number of qubits, number of parameters)
GATE_SPECS: dict[str, tuple[int, int]] = {
    "id": (1, 0), "x": (1, 0), "y": (1, 0), "z": (1, 0), "h": (1, 0),
    "s": (1, 0), "sdg": (1, 0), "t": (1, 0), "tdg": (1, 0), "sx": (1, 0), "sxdg": (1, 0),
    "rx": (1, 1), "ry": (1, 1), "rz": (1, 1), "p": (1, 1), "u1": (1, 1), "u0": (1, 1),
    "u2": (1, 2), "u3": (1, 3), "u": (1, 3),
    "cx": (2, 0), "cy": (2, 0), "cz": (2, 0), "ch": (2, 0), "csx": (2, 0), "swap": (2, 0),
    "crx": (2, 1), "cry": (2, 1), "crz": (2, 1), "cp": (2, 1), "cu1": (2, 1), "cu3": (2, 3), "cu": (2, 4),
    "rxx": (2, 1), "rzz": (2, 1),
    "ccx": (3, 0), "cswap": (3, 0), "rccx": (3, 0),
    "rc3x": (4, 0), "c3x": (4, 0), "c3sqrtx": (4, 0),
    "c4x": (5, 0),
}
DIAGONAL_GATES = frozenset({"id", "z", "s", "sdg", "t", "tdg", "rz", "p", "u1", "u0",
                            "cz", "crz", "cp", "cu1", "rzz"})


def _controlled(u: np.ndarray, controls: int) -> np.ndarray:
    """complex128 matrix of `u` (on the high bits) controlled by the `controls` low bits all being 1."""
    kt = int(u.shape[0]).bit_length() - 1
    m = np.eye(2 ** (controls + kt), dtype=np.complex128)
    idx = [(2**controls - 1) + (t << controls) for t in range(2**kt)]
    m[np.ix_(idx, idx)] = u
    return m


def _sparse(k: int, entries: dict[tuple[int, int], complex]) -> np.ndarray:
    """The identity on k qubits with rows `entries` replaced: {(row, col): value}, every touched row given whole."""
    m = np.eye(2**k, dtype=np.complex128)
    for r in {r for r, _ in entries}:
        m[r, r] = 0
    for (r, col), v in entries.items():
        m[r, col] = v
    return m


@functools.cache
def _constant_matrices() -> dict[str, np.ndarray]:
    r = 1 / math.sqrt(2)
    x = np.array([[0, 1], [1, 0]], np.complex128)
    sx = np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]]) / 2
    one_qubit = {
        "id": np.eye(2), "x": x, "y": np.array([[0, -1j], [1j, 0]]), "z": np.diag([1, -1]),
        "h": np.array([[r, r], [r, -r]]), "s": np.diag([1, 1j]), "sdg": np.diag([1, -1j]),
        "t": np.diag([1, (1 + 1j) * r]), "tdg": np.diag([1, (1 - 1j) * r]), "sx": sx, "sxdg": sx.conj().T,
    }
    mats = {k: np.asarray(v, np.complex128) for k, v in one_qubit.items()}
    swap = np.eye(4, dtype=np.complex128)[[0, 2, 1, 3]]
    mats.update({
        "cx": _controlled(x, 1), "cy": _controlled(mats["y"], 1), "cz": _controlled(mats["z"], 1),
        "ch": _controlled(mats["h"], 1), "csx": _controlled(sx, 1), "swap": swap,
        "ccx": _controlled(x, 2), "cswap": _controlled(swap, 1), "c3x": _controlled(x, 3),
        "c3sqrtx": _controlled(sx, 3), "c4x": _controlled(x, 4),
        # the relative-phase Toffolis (qiskit's RCCXGate / RC3XGate): a Toffoli up to phases on a few states
        "rccx": _sparse(3, {(3, 7): -1j, (5, 5): -1, (7, 3): 1j}),
        "rc3x": _sparse(4, {(3, 3): 1j, (7, 15): 1, (11, 11): -1j, (15, 7): -1}),
    })
    for m in mats.values():
        m.setflags(write=False)
    return mats


def gate_matrix(name: str, params: Sequence = (), xp=np, dtype=None):
    """The matrix of gate `name` with angles `params`, built with array module `xp` (numpy, or jax.numpy for traced
    angles under jit): complex[2^k, 2^k] in qiskit's little-endian convention (see the module docstring), a new
    array. `dtype` defaults to complex128."""
    if name not in GATE_SPECS:
        raise ValueError(f"gate_matrix: unknown gate {name!r}; known: {', '.join(sorted(GATE_SPECS))}")
    dtype = np.complex128 if dtype is None else dtype
    nparams = GATE_SPECS[name][1]
    if len(params) != nparams:
        raise ValueError(f"gate_matrix: gate {name!r} takes {nparams} parameter(s), got {len(params)}")
    if nparams == 0 or name == "u0":
        return xp.array(_constant_matrices()["id" if name == "u0" else name], dtype=dtype)

    c = lambda v: xp.asarray(v, dtype)  # noqa: E731
    one, zero = c(1.0), c(0.0)

    def ex(angle):  # e^{i angle}
        return xp.exp(c(1j) * c(angle))

    def mat(rows):
        if xp is np:
            return np.array(rows, dtype=dtype)
        return xp.stack([xp.stack([c(v) for v in row]) for row in rows])

    def u3(theta, phi, lam, phase=0.0):  # qiskit's U3Gate / UGate (times e^{i phase}: CUGate's target block)
        co, si = c(xp.cos(theta / 2)), c(xp.sin(theta / 2))
        return [[ex(phase) * co, -ex(phase + lam) * si], [ex(phase + phi) * si, ex(phase + phi + lam) * co]]

    def rx(theta):
        co, si = c(xp.cos(theta / 2)), c(xp.sin(theta / 2))
        return [[co, c(-1j) * si], [c(-1j) * si, co]]

    def ry(theta):
        co, si = c(xp.cos(theta / 2)), c(xp.sin(theta / 2))
        return [[co, -si], [si, co]]

    def rz(lam):
        return [[ex(-lam / 2), zero], [zero, ex(lam / 2)]]

    def phase(lam):
        return [[one, zero], [zero, ex(lam)]]

    def controlled(u):  # control = bit 0, target = bit 1
        return [[one, zero, zero, zero], [zero, u[0][0], zero, u[0][1]],
                [zero, zero, one, zero], [zero, u[1][0], zero, u[1][1]]]

    one_qubit = {"rx": rx, "ry": ry, "rz": rz, "p": phase, "u1": phase, "u3": u3, "u": u3}
    if name in one_qubit:
        return mat(one_qubit[name](*params))
    if name == "u2":
        phi, lam = params
        r = 1 / math.sqrt(2)  # qiskit's U2Gate uses 1/sqrt(2), not cos(pi/4) (they differ in the last bit)
        return mat([[c(r), -ex(lam) * r], [ex(phi) * r, ex(phi + lam) * r]])
    controlled_targets = {"crx": rx, "cry": ry, "crz": rz, "cp": phase, "cu1": phase, "cu3": u3}
    if name in controlled_targets:
        return mat(controlled(controlled_targets[name](*params)))
    if name == "cu":
        theta, phi, lam, gamma = params
        return mat(controlled(u3(theta, phi, lam, gamma)))
    if name == "rxx":
        (theta,) = params
        co, si = c(xp.cos(theta / 2)), c(-1j) * c(xp.sin(theta / 2))
        return mat([[co, zero, zero, si], [zero, co, si, zero], [zero, si, co, zero], [si, zero, zero, co]])
    if name == "rzz":
        (theta,) = params
        a, b = ex(-theta / 2), ex(theta / 2)
        return mat([[a, zero, zero, zero], [zero, b, zero, zero], [zero, zero, b, zero], [zero, zero, zero, a]])
    raise AssertionError(f"gate_matrix: no matrix written for {name!r}")  # every GATE_SPECS name is handled above


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate: `name` (one of GATE_SPECS, qelib1's lower-case names), the qubits it acts on (controls first) and
    its angles in radians, in the order of the qiskit gate of that name (u3: theta, phi, lambda; cu: theta, phi,
    lambda, gamma); see the module docstring."""

    name: str
    qubits: tuple[int, ...]
    params: tuple[float, ...] = ()

    def __post_init__(self):
        spec = GATE_SPECS.get(self.name)
        if spec is None:
            raise ValueError(f"Gate: unknown gate name {self.name!r}; known: {', '.join(sorted(GATE_SPECS))}")
        arity, nparams = spec
        # Plain tuples of ints and floats (what the QASM reader and builders pass) skip the conversions: a 20-qubit
        # benchmark file can expand into ~10^6 gates.
        qubits = self.qubits
        if type(qubits) is not tuple or any(type(q) is not int for q in qubits):
            qubits = tuple(qubits) if isinstance(qubits, (tuple, list)) else (qubits,)
            for q in qubits:
                if isinstance(q, bool) or not isinstance(q, (int, np.integer)):
                    raise ValueError(f"Gate {self.name}: qubit {q!r} is not an integer (qubits={qubits!r})")
            qubits = tuple(int(q) for q in qubits)
            object.__setattr__(self, "qubits", qubits)
        if len(qubits) != arity:
            raise ValueError(f"Gate {self.name}: acts on {arity} qubit(s), got {len(qubits)}: {qubits}")
        if min(qubits) < 0:
            raise ValueError(f"Gate {self.name}: negative qubit index in {qubits}")
        if arity > 1 and len(set(qubits)) != arity:
            raise ValueError(f"Gate {self.name}: qubits must be distinct, got {qubits}")
        params = self.params
        if type(params) is not tuple or any(type(p) is not float for p in params):
            params = tuple(params) if isinstance(params, (tuple, list)) else (params,)
            if len(params) == nparams:
                try:
                    params = tuple(float(p) for p in params)
                except (TypeError, ValueError):
                    raise ValueError(f"Gate {self.name}: parameters must be real numbers, got {params!r}") from None
            object.__setattr__(self, "params", params)
        if len(params) != nparams:
            raise ValueError(f"Gate {self.name}: takes {nparams} parameter(s), got {len(params)}: {params!r}")
        for p in params:
            if not math.isfinite(p):
                raise ValueError(f"Gate {self.name}: parameters must be finite, got {params!r}")

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
    """`num_qubits` qubits starting in |0...0>, and `gates` applied in order. `marks` (optional): sorted gate indices
    where the circuit's structure starts a new unit, e.g. the first gate of each expanded call of a QASM `gate`
    definition and the first gate after it. The simulators start a compiled program at every mark, so a definition
    called many times (a Grover iteration) compiles once and its programs are reused."""

    num_qubits: int
    gates: tuple[Gate, ...]
    name: str = "circuit"
    marks: tuple[int, ...] = ()

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
        marks = tuple(self.marks)
        if any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) for m in marks) \
                or list(marks) != sorted(set(marks)) or (marks and not 0 <= marks[0] <= marks[-1] <= len(gates)):
            raise ValueError(f"Circuit {self.name!r}: marks must be increasing gate indices in [0, {len(gates)}], "
                             f"got {marks[:8]!r}{'...' if len(marks) > 8 else ''}")
        object.__setattr__(self, "marks", tuple(int(m) for m in marks))

    def __len__(self) -> int:
        return len(self.gates)

    def __iter__(self):
        return iter(self.gates)
