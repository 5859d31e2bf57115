"""Dense state-vector simulation with reshape-based gate application.

A state of m qubits is complex64[2^m] (or complex128 under `jax.enable_x64(True)`) in qiskit's little-endian order:
bit q of an amplitude's index is qubit q, the order of `qiskit.quantum_info.Statevector(...).data`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.quantum.circuit import Circuit, Gate, gate_matrix

_ZERO_TOL = 1e-12  # constant matrix entries below this (e.g. H @ H's off-diagonal 1e-17) are structural zeros
DEFAULT_FUSION = 3  # widest fused op; see apply_gates for the measurements behind it
MAX_FUSION = 6
# Angles at which a parametrised gate's structural zeros are found: an entry that is zero at both of these generic
# angle sets is zero for every angle (the entries are analytic in the angles), so masks depend on names alone.
_GENERIC_ANGLES = ((0.7371, 1.9183, -2.4169, 0.3311), (-1.2863, 0.5477, 2.8808, -0.9157))


def _embed(matrix: np.ndarray, src: tuple[int, ...], dst: tuple[int, ...]) -> np.ndarray:
    """`matrix` (2^k x 2^k, bit j = qubit src[j]) written on `dst` (a superset of src, bit i = qubit dst[i]): the same
    operator tensored with the identity on the qubits of dst not in src."""
    if src == dst:
        return matrix
    rest = [q for q in dst if q not in src]
    order = list(src) + rest  # bit j of the kron below is qubit order[j]: kron(I, M) puts M on the low bits
    full = np.kron(np.eye(2 ** len(rest), dtype=matrix.dtype), matrix)
    big = len(dst)
    # tensor axis a (a < big: output) is bit big-1-a; new bit i is qubit dst[i], which is old bit order.index(dst[i])
    perm = [big - 1 - order.index(dst[big - 1 - a]) for a in range(big)]
    return full.reshape((2,) * (2 * big)).transpose(perm + [big + p for p in perm]).reshape(2**big, 2**big)


class _Op:
    """A fused operation, built on the host in float64: `qubits` (matrix bit j = qubit qubits[j]), `matrix`
    complex128[2^k, 2^k], `constant` (every gate in it is parameter-free, so the matrix is baked into the compiled
    function and its zeros and ones are skipped) and `mask` bool[2^k, 2^k], the entries that may be non-zero. For a
    non-constant op the mask depends only on the gate names, so it is the same for any angles."""

    __slots__ = ("qubits", "matrix", "mask", "constant")

    def __init__(self, qubits, matrix, mask, constant):
        self.qubits, self.matrix, self.mask, self.constant = tuple(qubits), matrix, mask, constant

    @property
    def diagonal(self) -> bool:
        return not (self.mask & ~np.eye(len(self.mask), dtype=bool)).any()

    def on(self, qubits: tuple[int, ...]) -> _Op:
        """This op written on `qubits` (a superset of self.qubits, any order)."""
        if self.qubits == qubits:
            return self
        mask = _embed(self.mask.astype(np.float64), self.qubits, qubits) > 0
        return _Op(qubits, _embed(self.matrix, self.qubits, qubits), mask, self.constant)

    def then(self, later: _Op) -> _Op:
        """The op `later @ self` on the union of their qubits (this op's qubits first)."""
        qubits = self.qubits + tuple(q for q in later.qubits if q not in self.qubits)
        a, b = self.on(qubits), later.on(qubits)
        m = b.matrix @ a.matrix
        mask = (b.mask.astype(np.int64) @ a.mask.astype(np.int64)) > 0
        constant = a.constant and b.constant
        if constant:
            mask &= np.abs(m) > _ZERO_TOL
            m = np.where(mask, m, 0)
        return _Op(qubits, m, mask, constant)


def _gate_op(gate: Gate) -> _Op:
    m = gate.matrix
    if not gate.params:
        mask = np.abs(m) > _ZERO_TOL
        return _Op(gate.qubits, np.where(mask, m, 0), mask, True)
    mask = np.zeros(m.shape, bool)
    for angles in _GENERIC_ANGLES:
        mask |= np.abs(gate_matrix(gate.name, angles[:len(gate.params)])) > _ZERO_TOL
    if (np.abs(m[~mask]) > _ZERO_TOL).any():  # cannot happen for an analytic gate; guards a wrong gate table
        raise AssertionError(f"gate {gate}: non-zero entry outside its structural mask")
    return _Op(gate.qubits, np.where(mask, m, 0), mask, False)


_FUSION_WINDOW = 8  # how many of the latest ops a gate may join (beyond the last op on its qubits)
# Relative cost of one op on the 2-core CPU (a one-qubit dense pass = 1), from the measurements in apply_gates and
# whole-circuit runs: dense/permutation ops by width (k = 3 costs more inside long chunks than alone), diagonal ops
# (a run of them is one loop).
_DENSE_COST = {1: 1.0, 2: 1.0, 3: 1.6, 4: 7.0, 5: 25.0, 6: 100.0}
_DIAGONAL_COST = 0.2


def _cost(op: _Op) -> float:
    return _DIAGONAL_COST if op.diagonal else _DENSE_COST[len(op.qubits)]


def _fuse(ops: list[_Op], width: int) -> list[_Op]:
    """Fewer, cheaper passes over the state (gate fusion, as in qiskit-aer and qsim), exploiting only that ops on
    disjoint qubits commute. A gate may join any earlier op at or after the latest one touching its qubits (nothing in
    between touches them, so it can move back there) when their qubits together number at most `width` and the merged
    op is estimated cheaper than the two apart (_cost); of the latest _FUSION_WINDOW such ops it joins the one that
    saves most (the latest on ties). Gates wider than `width` stay alone."""
    out: list[_Op] = []
    last: dict[int, int] = {}  # qubit -> index in `out` of the latest op touching it
    for op in ops:
        qs = set(op.qubits)
        floor = max((last[q] for q in op.qubits if q in last), default=-1)
        best, best_gain, merged_best = None, 0.0, None
        if len(qs) <= width:
            candidates = list(range(len(out) - 1, max(floor, len(out) - _FUSION_WINDOW, 0) - 1, -1))
            if floor >= 0 and floor not in candidates:
                candidates.append(floor)
            own = _cost(op)
            for i in candidates:
                if len(qs | set(out[i].qubits)) > width:
                    continue
                merged = out[i].then(op)
                gain = _cost(out[i]) + own - _cost(merged)
                if gain > best_gain + 1e-9:
                    best, best_gain, merged_best = i, gain, merged
        if best is None:
            best = len(out)
            out.append(op)
        else:
            out[best] = merged_best
        for q in op.qubits:
            last[q] = best
    return out


def _coef_times(coef, x):
    """coef * x for a numpy constant coef (the multiply skipped when it is 1) or a traced complex scalar."""
    if isinstance(coef, (np.ndarray, np.generic, complex, float)):
        return x if coef == 1 else x * jnp.asarray(coef, x.dtype)
    return x * coef


def _apply_op(state: jax.Array, m: int, op: _Op, matrix) -> jax.Array:
    """Apply `op` to a flat state of m qubits via a view with one size-2 axis per op qubit (no gathers). `matrix` is
    op.matrix for a constant op, else the traced complex[2^k, 2^k] with the state's dtype."""
    dtype = state.dtype
    k = len(op.qubits)
    order = sorted(range(k), key=lambda j: -op.qubits[j])  # op bit j on view axis order.index(j), high qubit first
    shape, prev = [], m
    for j in order:
        q = op.qubits[j]
        shape += [2 ** (prev - q - 1), 2]
        prev = q
    shape.append(2**prev)
    view = state.reshape(shape)

    if op.diagonal:
        # one elementwise multiply by the diagonal, broadcast over the other axes
        diag = np.diagonal(matrix) if op.constant else jnp.diagonal(matrix)
        if op.constant and np.all(diag == 1):
            return state
        dshape = [1] * len(shape)
        axes_shape = [2] * k
        # diag index = sum_j bit_j << j; reshape to axes ordered (bit_{k-1}, ..., bit_0) then permute to view order
        d = diag.reshape(axes_shape[::-1])
        perm = [k - 1 - j for j in order]
        d = np.transpose(d, perm) if op.constant else jnp.transpose(d, perm)
        for a in range(k):
            dshape[2 * a + 1] = 2
        d = d.reshape(dshape)
        d = jnp.asarray(d, dtype) if op.constant else d.astype(dtype)
        # multiplying the flat state (not the view) lets XLA update a donated buffer in place; multiplying the view
        # makes it add a full copy when this is the last op of a call
        return state * jnp.broadcast_to(d, shape).reshape(-1)

    # dense or permutation: each output slice is a sum of coefficient * input slice over the non-zero entries
    def component(bits_by_axis):
        idx = tuple(b for a in range(k) for b in (slice(None), bits_by_axis[a])) + (slice(None),)
        return view[idx]

    def index_of(bits_by_axis):
        return sum(bits_by_axis[a] << order[a] for a in range(k))

    inputs = {}
    for bits in itertools.product((0, 1), repeat=k):
        inputs[index_of(bits)] = component(bits)
    outs = {}
    for bits in itertools.product((0, 1), repeat=k):
        o = index_of(bits)
        acc = None
        for i in range(2**k):
            if not op.mask[o, i]:
                continue
            term = _coef_times(matrix[o, i], inputs[i])
            acc = term if acc is None else acc + term
        outs[bits] = acc if acc is not None else jnp.zeros_like(inputs[0])

    def stack(prefix, axis):
        if axis == k:
            return outs[prefix]
        return jnp.stack([stack(prefix + (b,), axis + 1) for b in (0, 1)], axis=2 * axis + 1 - axis)

    return stack((), 0).reshape(-1)


def _num_qubits_of(state: jax.Array, what: str = "state") -> int:
    if state.ndim != 1:
        raise ValueError(f"{what}: expected a flat state vector complex[2^m], got shape {state.shape}")
    m = int(state.shape[0]).bit_length() - 1
    if state.shape[0] != 2**m:
        raise ValueError(f"{what}: length {state.shape[0]} is not a power of two")
    return m


def _check_fusion(fusion, what: str) -> int:
    if isinstance(fusion, bool) or not isinstance(fusion, (int, np.integer)) or not 0 <= fusion <= MAX_FUSION:
        raise ValueError(f"{what}: fusion={fusion!r} must be an integer in [0, {MAX_FUSION}] (0: no fusion; k: fused "
                         f"ops of at most k qubits)")
    return int(fusion)


@functools.lru_cache(maxsize=4096)
def _plan(gates: tuple[Gate, ...], fusion: int) -> tuple[list[_Op], tuple[np.ndarray, ...]]:
    """The fused ops for `gates` (identities dropped), and the matrices of the non-constant ones in order, one array
    per op size k = 1..MAX_FUSION: complex128[K_k, 2^k, 2^k]. Cached: the compressed simulator reapplies the same
    gate lists."""
    ops = [_gate_op(g) for g in gates]
    if fusion:
        ops = _fuse(ops, fusion)
    ops = [op for op in ops if not (op.constant and np.array_equal(op.matrix, np.eye(len(op.matrix))))]
    width = max([MAX_FUSION] + [len(op.qubits) for op in ops])
    mats = {k: [np.zeros((0, 2**k, 2**k))] for k in range(1, width + 1)}
    for op in ops:
        if not op.constant:
            mats[len(op.qubits)].append(op.matrix[None])
    return ops, tuple(np.concatenate(mats[k]) for k in sorted(mats))


@functools.lru_cache(maxsize=4096)
def _generic(gates: tuple[Gate, ...]) -> tuple[Gate, ...]:
    """The gates with generic angles: the fusion plan's structure (qubits, masks, which ops are constant) does not
    depend on the angles, so one compiled program serves every assignment of them."""
    return tuple(Gate(g.name, g.qubits, _GENERIC_ANGLES[0][:len(g.params)]) for g in gates)


@functools.lru_cache(maxsize=512)
def _executable(m: int, dtype: np.dtype, structure: tuple[Gate, ...], fusion: int):
    """f(state dtype[2^m], *mats) -> dtype[2^m] for one gate structure (`_generic` gates), compiled ahead of time;
    the state is donated."""
    ops, mats = _plan(structure, fusion)

    def run(state, *mats):
        counters = dict.fromkeys(range(1, len(mats) + 1), 0)
        for op in ops:
            k = len(op.qubits)
            matrix = op.matrix
            if not op.constant:
                matrix = mats[k - 1][counters[k]]
                counters[k] += 1
            state = _apply_op(state, m, op, matrix)
        return state

    specs = [jax.ShapeDtypeStruct((2**m,), dtype)] + [jax.ShapeDtypeStruct(x.shape, dtype) for x in mats]
    return jax.jit(run, donate_argnums=0).lower(*specs).compile()


METHODS = ("auto", "slices", "gather")
GATHER_MAX_QUBITS = 14  # "auto" applies ops by gathers up to this many qubits, by slices above
_GATHER_PIECE = 64  # ops per call of a gather program (the last piece is padded with identities)


def _resolve_method(method: str, m: int, what: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{what}: method={method!r} is not one of {METHODS}")
    if method == "auto":
        return "gather" if m <= GATHER_MAX_QUBITS else "slices"
    return method


def _gather_width(ops: Sequence[_Op], m: int) -> int:
    """The op width W a gather program is compiled for: every op is padded to W qubits (at least 3, so that one
    program serves the default fusion), at most the state's m qubits."""
    return min(m, max([3] + [len(op.qubits) for op in ops]))


@functools.lru_cache(maxsize=64)
def _gather_program(m: int, width: int, dtype: np.dtype):
    """f(state dtype[2^m], mats dtype[P, 2^W, 2^W], qubits int32[P, W]) -> dtype[2^m]: applies P ops in order, op p
    acting on qubits[p] (matrix bit j = qubit qubits[p, j]), the qubits being data, not structure: one program per
    (m, W, dtype) serves every circuit. Each op is out[i] = sum_c U[r(i), c] psi[clear(i) | spread(c)], r(i) the op
    bits of i, clear(i) i without them, spread(c) the op bits set as c says: one gather of 2^W amplitudes per
    amplitude. The state is donated."""
    n_amp, n_col = 1 << m, 1 << width
    bit = jnp.arange(width, dtype=jnp.int32)
    col = jnp.arange(n_col, dtype=jnp.int32)

    def one(state, op):
        u, qs = op
        idx = jnp.arange(n_amp, dtype=jnp.int32)
        r = jnp.sum(((idx[:, None] >> qs[None, :]) & 1) << bit[None, :], axis=1)
        clear = idx & ~jnp.sum(1 << qs)
        spread = jnp.sum(((col[:, None] >> bit[None, :]) & 1) << qs[None, :], axis=1)
        gathered = state[clear[:, None] | spread[None, :]]
        return jnp.sum(u[r] * gathered, axis=1), None

    def run(state, mats, qubits):
        return jax.lax.scan(one, state, (mats, qubits))[0]

    specs = (jax.ShapeDtypeStruct((n_amp,), dtype), jax.ShapeDtypeStruct((_GATHER_PIECE, n_col, n_col), dtype),
             jax.ShapeDtypeStruct((_GATHER_PIECE, width), jnp.int32))
    return jax.jit(run, donate_argnums=0).lower(*specs).compile()


def _gather_apply(state: jax.Array, m: int, ops: Sequence[_Op]) -> jax.Array:
    """Apply `ops` with the gather program, _GATHER_PIECE at a time."""
    if not ops:
        return state
    width = _gather_width(ops, m)
    count = -(-len(ops) // _GATHER_PIECE) * _GATHER_PIECE
    mats = np.zeros((count, 1 << width, 1 << width), np.complex128)
    mats[:] = np.eye(1 << width)  # identity padding
    qubits = np.tile(np.arange(width, dtype=np.int32), (count, 1))
    for p, op in enumerate(ops):
        extra = tuple(q for q in range(m) if q not in op.qubits)[:width - len(op.qubits)]
        qs = op.qubits + extra
        mats[p] = _embed(op.matrix, op.qubits, qs)
        qubits[p] = qs
    fn = _gather_program(m, width, np.dtype(state.dtype))
    mats = mats.astype(state.dtype)
    for s in range(0, count, _GATHER_PIECE):
        state = fn(state, mats[s:s + _GATHER_PIECE], qubits[s:s + _GATHER_PIECE])
    return state


def _validate(state: jax.Array, gates, what: str) -> tuple[int, tuple[Gate, ...]]:
    m = _num_qubits_of(state, what)
    if state.dtype not in (jnp.complex64, jnp.complex128):
        raise ValueError(f"{what}: state dtype {state.dtype} must be complex64 or complex128")
    gates = tuple(gates)
    for idx, g in enumerate(gates):
        if not isinstance(g, Gate):
            raise ValueError(f"{what}: gate {idx} is a {type(g).__name__}, not a Gate")
        if max(g.qubits) >= m:
            raise ValueError(f"{what}: gate {idx} ({g}) uses qubit {max(g.qubits)} of a {m}-qubit state")
    return m, gates


def prepare(num_qubits: int, gates: Sequence[Gate], *, dtype=jnp.complex64, fusion: int = DEFAULT_FUSION,
            method: str = "auto") -> float:
    """Compile (or find cached) the program apply_gates runs for `gates` on a `num_qubits`-qubit state of `dtype`;
    returns the seconds spent compiling (0.0 when it was cached). Lets a caller time compilation apart."""
    fusion = _check_fusion(fusion, "prepare")
    method = _resolve_method(method, int(num_qubits), "prepare")
    t0 = time.perf_counter()
    gates = tuple(gates)
    if gates and method == "slices":
        _executable(int(num_qubits), np.dtype(dtype), _generic(gates), fusion)
    elif gates:
        ops, _ = _plan(gates, fusion)
        if ops:
            _gather_program(int(num_qubits), _gather_width(ops, int(num_qubits)), np.dtype(dtype))
    return time.perf_counter() - t0


def apply_gates(state: jax.Array, gates: Sequence[Gate], *, fusion: int = DEFAULT_FUSION,
                method: str = "auto") -> jax.Array:
    """Apply `gates` in order to `state`: complex64[2^m] or complex128[2^m] (little-endian, qiskit's order); gate
    qubits are positions 0..m-1 of this state. Returns an array of the same shape and dtype.

    The state's buffer is donated: do not use `state` after the call. One compiled program is cached per (m, dtype,
    gate names and qubits, fusion); the gates' (fused) matrices, built on the host in float64 from the angles, are
    arguments, so the same structure with new angles does not recompile.

    Each op is one pass over the state through a reshape view with one size-2 axis per op qubit (no gathers), written
    as slices combined with the matrix entries and stacked back; constant zeros and ones (X, CX, SWAP, CCX, ...) cost
    nothing, and diagonal ops are one elementwise multiply (XLA merges consecutive ones into one loop).

    `fusion` (gate fusion, as in qiskit-aer and qsim): consecutive gates whose qubits together number at most
    `fusion` are multiplied into one op (0: every gate is its own pass). Measured on the 2-core CPU, n=22 complex64,
    chains of 24 ops on random qubits, ms per op (compile s per op): dense k=1 9.8 (0.15), k=2 10.2 (0.17), k=3 10.9
    (0.38), k=4 76 (3.1); permutation k=1..4 4.7-9.8; diagonal 1.1-2.5 in runs. A 3-qubit op costs what a one-qubit
    op costs, a 4-qubit dense op 7x as much (XLA no longer fuses its 16 x 16 slice products into one loop), hence the
    default width 3.

    `method`: "slices" is the above; "gather" applies every op by one gather of its 2^W amplitudes per amplitude
    (W = the widest op, at least 3), with the op's qubits as data, so that one program per (m, W, dtype) serves every
    circuit: far more work per op, but no compilation per circuit, which is what counts on small states. "auto"
    (default): gather up to GATHER_MAX_QUBITS qubits, slices above.
    """
    state = jnp.asarray(state)
    m, gates = _validate(state, gates, "apply_gates")
    fusion = _check_fusion(fusion, "apply_gates")
    method = _resolve_method(method, m, "apply_gates")
    if not gates:
        return state
    if method == "gather":
        return _gather_apply(state, m, _plan(gates, fusion)[0])
    _, mats = _plan(gates, fusion)
    fn = _executable(m, np.dtype(state.dtype), _generic(gates), fusion)
    return fn(state, *(x.astype(state.dtype) for x in mats))


@functools.lru_cache(maxsize=64)
def _zero_program(num_qubits: int, dtype: np.dtype):
    return jax.jit(lambda: jnp.zeros(2**num_qubits, dtype).at[0].set(1)).lower().compile()


def zero_state(num_qubits: int, dtype=jnp.complex64) -> jax.Array:
    """|0...0>: dtype[2^num_qubits] with amplitude 1 at index 0 (its program compiled once per size and dtype)."""
    return _zero_program(int(num_qubits), np.dtype(dtype))()


def _check_dtype(dtype, what: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.complex64, np.complex128):
        raise ValueError(f"{what}: dtype {dtype} must be complex64 or complex128")
    if dtype == np.complex128 and not jax.config.jax_enable_x64:
        raise ValueError(f"{what}: dtype complex128 needs 64-bit JAX; call inside `with jax.enable_x64(True):`")
    return dtype


def chunk_bounds(circuit: Circuit, chunk: int) -> list[tuple[int, int]]:
    """[(start, end)] gate ranges of the programs `simulate` runs: at most `chunk` gates each, and a new one at every
    `circuit.marks` index, so that the programs of a repeated unit are the same each time it occurs."""
    cuts = sorted({0, len(circuit.gates), *circuit.marks})
    return [(s, min(s + chunk, b)) for a, b in zip(cuts, cuts[1:]) for s in range(a, b, chunk)]


@dataclasses.dataclass
class CompiledCircuit:
    """A circuit's programs, compiled ahead of time by `compile_circuit`: `run()` simulates it. `compile_seconds`:
    XLA compilation (0 for programs already cached); `plan_seconds`: fusion planning on the host; `passes`: fused ops,
    i.e. passes over the state (identities dropped)."""

    circuit: Circuit
    dtype: np.dtype
    fusion: int
    chunk: int
    method: str
    compile_seconds: float
    plan_seconds: float
    passes: int

    def run(self, initial: jax.Array | None = None, *, progress: bool = False) -> jax.Array:
        """The final state: dtype[2^n], from |0...0> or from a copy of `initial` (complex[2^n]; not consumed)."""
        circuit, n = self.circuit, self.circuit.num_qubits
        if initial is None:
            state = zero_state(n, self.dtype)
        else:
            initial = jnp.asarray(initial)
            if initial.shape != (2**n,):
                raise ValueError(f"simulate: initial has shape {initial.shape}; circuit {circuit.name!r} needs "
                                 f"({2**n},) for {n} qubits")
            state = jnp.array(initial, dtype=self.dtype, copy=True)  # a copy: apply_gates donates its input
        bounds = chunk_bounds(circuit, self.chunk)
        if self.method == "gather":  # every op through one program: collect them, then run full pieces
            ops = [op for s, e in bounds for op in _plan(circuit.gates[s:e], self.fusion)[0]]
            return _gather_apply(state, n, ops)
        if progress:
            from tqdm.auto import tqdm

            bounds = tqdm(bounds, desc=f"simulate {circuit.name}", unit="chunk")
        for s, e in bounds:
            state = apply_gates(state, circuit.gates[s:e], fusion=self.fusion, method=self.method)
        return state


def compile_circuit(circuit: Circuit, *, dtype=jnp.complex64, fusion: int = DEFAULT_FUSION, chunk: int = 64,
                    method: str = "auto", progress: bool = False) -> CompiledCircuit:
    """Plan and compile every program `simulate` runs for `circuit`, timing the two apart (see CompiledCircuit).
    Gates go at most `chunk` at a time into one program (`chunk_bounds`: cut at `circuit.marks` too), so compile size
    stays bounded for long circuits and repeated chunk structures reuse one executable. `progress` shows a tqdm bar over chunks."""
    if not isinstance(circuit, Circuit):
        raise ValueError(f"simulate: expected a Circuit, got {type(circuit).__name__}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"simulate: chunk={chunk!r} must be an integer >= 1")
    dtype = _check_dtype(dtype, "simulate")
    fusion = _check_fusion(fusion, "simulate")
    method = _resolve_method(method, circuit.num_qubits, "simulate")
    t0 = time.perf_counter()
    _zero_program(circuit.num_qubits, dtype)
    compile_s, plan_s = time.perf_counter() - t0, 0.0
    passes = 0
    bounds = chunk_bounds(circuit, chunk)
    if progress:
        from tqdm.auto import tqdm

        bounds = tqdm(bounds, desc=f"compile {circuit.name}", unit="chunk")
    all_ops = []
    for s, e in bounds:
        gates = circuit.gates[s:e]
        t0 = time.perf_counter()
        ops, _ = _plan(gates, fusion)
        plan_s += time.perf_counter() - t0
        passes += len(ops)
        if method == "gather":
            all_ops += ops
        else:
            compile_s += prepare(circuit.num_qubits, gates, dtype=dtype, fusion=fusion, method=method)
    if all_ops:
        t0 = time.perf_counter()
        _gather_program(circuit.num_qubits, _gather_width(all_ops, circuit.num_qubits), dtype)
        compile_s += time.perf_counter() - t0
    return CompiledCircuit(circuit, dtype, fusion, int(chunk), method, compile_s, plan_s, passes)


def simulate(circuit: Circuit, *, dtype=jnp.complex64, initial: jax.Array | None = None, chunk: int = 64,
             fusion: int = DEFAULT_FUSION, method: str = "auto", progress: bool = False) -> jax.Array:
    """The final state of `circuit`: dtype[2^n] (complex64, or complex128 inside `jax.enable_x64(True)`), qiskit's
    little-endian order (`Statevector(qc).data`): `compile_circuit(...).run(initial)`.

    Starts from |0...0>, or from a copy of `initial` (complex[2^n]; it is not consumed). `fusion`: the widest fused op
    (apply_gates); `method`: how ops are applied (apply_gates). `progress` shows tqdm bars over chunks.
    """
    return compile_circuit(circuit, dtype=dtype, fusion=fusion, chunk=chunk, method=method, progress=progress).run(
        initial, progress=progress)


def fidelity(psi, phi) -> float:
    """|<psi|phi>|^2 / (<psi|psi> <phi|phi>) for two state vectors complex[2^n] (any array type), in float64."""
    a = np.asarray(psi).astype(np.complex128).reshape(-1)
    b = np.asarray(phi).astype(np.complex128).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"fidelity: state lengths differ: {a.shape[0]} vs {b.shape[0]}")
    na, nb = np.vdot(a, a).real, np.vdot(b, b).real
    if na == 0 or nb == 0:
        raise ValueError("fidelity: a state has zero norm")
    return float(abs(np.vdot(a, b)) ** 2 / (na * nb))
