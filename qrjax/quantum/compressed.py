"""BMQSim-style compressed state-vector simulation: the state lives in error-bounded compressed blocks.

The 2^n amplitudes are held as 2^(n-b) blocks of 2^b amplitudes, each a `qrjax.compression` byte stream (or nothing,
for an all-zero block). Physical bit positions 0..b-1 of an amplitude's index are inside a block ("local"), the
others select the block ("global"); `layout[q]` is the physical position of logical qubit q.

Stages (`plan_stages`): gates join the current stage while the global positions they touch number at most
`group_qubits` (k). Per stage, the blocks are taken in groups of 2^k that differ only in those global bits; each group
is decompressed once into a dense (b+k)-qubit state, gets all of the stage's gates, and is recompressed once, so a
block is (de)compressed once per stage instead of once per gate (BMQSim: QFT-33 2,673 -> 28 compression events).
At the end of a stage the group's qubits are re-assigned (qubit remapping): the b of them needed soonest by the
coming gates move to local positions, which lets later stages take more gates. A group whose blocks are all zero is
skipped: gates map zero to zero. Groups run on a thread pool, so one group's host work (zstd, byte packing) overlaps
another's device work.

Memory is accounted as the bytes this simulator holds: the compressed store, plus, per group in flight, two dense
buffers of the group (the host staging array and the device state the gate programs update in place) and its new
streams; `peak_bytes` is the maximum. Not on the meter: the compressor's and the transpose's temporaries (a few
block-sized arrays per worker) and the interpreter itself; experiments report the process's max RSS beside it.
`compressions` counts the block streams written (all-zero blocks write none).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.compression import Compressed, compress, decompress
from qrjax.quantum.circuit import Circuit, Gate
from qrjax.quantum.simulator import DEFAULT_FUSION, MAX_FUSION, apply_gates, prepare


@dataclasses.dataclass(frozen=True)
class CompressedConfig:
    """block_qubits b: amplitudes per stored block = 2^b. group_qubits k: global qubits a stage may touch (a group
    is 2^(b+k) amplitudes, the dense working set per worker). bound/mode: the compressor's error bound (BMQSim's
    default: point-wise relative 1e-3). workers: groups in flight. chunk: gates per compiled program. fusion: the widest
    fused op inside a group (`apply_gates`; 0: no fusion)."""

    block_qubits: int = 20
    group_qubits: int = 6
    bound: float = 1e-3
    mode: str = "pw_rel"
    complex_as: str = "auto"
    lossless: str = "auto"
    workers: int = 2
    remap: bool = True
    chunk: int = 64
    fusion: int = DEFAULT_FUSION

    def __post_init__(self):
        from qrjax.compression import MODES

        for name in ("block_qubits", "group_qubits", "workers", "chunk"):
            v = getattr(self, name)
            low = 0 if name == "group_qubits" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"CompressedConfig: {name}={v!r} must be an integer >= {low}")
        if isinstance(self.fusion, bool) or not isinstance(self.fusion, int) or not 0 <= self.fusion <= MAX_FUSION:
            raise ValueError(f"CompressedConfig: fusion={self.fusion!r} must be an integer in [0, {MAX_FUSION}]")
        if self.mode not in MODES:
            raise ValueError(f"CompressedConfig: mode {self.mode!r} is not one of {MODES}")
        if not (isinstance(self.bound, (int, float)) and 0 < self.bound < (1 if self.mode == "pw_rel" else math.inf)):
            raise ValueError(f"CompressedConfig: bound={self.bound!r} must be a number > 0 (and < 1 for pw_rel)")

    @classmethod
    def preset(cls, name: str) -> "CompressedConfig":
        presets = {"tiny": cls(block_qubits=4, group_qubits=2), "cpu": cls(), "paper": cls(block_qubits=20,
                                                                                                   group_qubits=8)}
        if name not in presets:
            raise ValueError(f"CompressedConfig: unknown preset {name!r}; known: {', '.join(presets)}")
        return presets[name]

    def replace(self, **kw) -> "CompressedConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: `globals` the sorted physical global positions of its groups (local position b+i is globals[i]);
    `gates` on the group's local positions; `perm` (or None): at the end, local position j's content moves to
    local position perm[j]."""

    globals: tuple[int, ...]
    gates: tuple[Gate, ...]
    perm: tuple[int, ...] | None


def plan_stages(circuit: Circuit, block_qubits: int, group_qubits: int, *, remap: bool = True):
    """Partition the circuit into stages -> (stages, final layout: logical qubit -> physical position).

    SWAP gates cost nothing: they only exchange two qubits' entries in the layout."""
    n, b = circuit.num_qubits, min(block_qubits, circuit.num_qubits)
    k_max = min(group_qubits, n - b)
    layout = list(range(n))  # logical -> physical
    uses: list[list[int]] = [[] for _ in range(n)]
    for i, g in enumerate(circuit.gates):
        for q in g.qubits:
            uses[q].append(i)

    def next_use(q: int, i: int) -> float:
        j = bisect.bisect_left(uses[q], i)
        return uses[q][j] if j < len(uses[q]) else math.inf

    stages, i, gates = [], 0, circuit.gates
    while i < len(gates):
        glob: set[int] = set()
        stage_gates = []
        while i < len(gates):
            if gates[i].name == "swap":  # a SWAP is a relabelling of where two qubits live: no data moves
                q0, q1 = gates[i].qubits
                layout[q0], layout[q1] = layout[q1], layout[q0]
                i += 1
                continue
            need = {layout[q] for q in gates[i].qubits if layout[q] >= b}
            if len(glob | need) > k_max:
                break
            glob |= need
            stage_gates.append((gates[i], tuple(layout[q] for q in gates[i].qubits)))
            i += 1
        if not stage_gates and i < len(gates):
            raise ValueError(f"plan_stages: gate {i} ({gates[i]}) touches {len(need)} global qubits but a stage may "
                             f"touch group_qubits={group_qubits}; raise group_qubits to at least {len(need)}")
        logical_at = {p: q for q, p in enumerate(layout)}
        if remap and i < len(gates):  # fill the group with the global qubits needed soonest
            spare = sorted((p for p in range(b, n) if p not in glob), key=lambda p: next_use(logical_at[p], i))
            glob |= set(spare[:k_max - len(glob)])
        order = sorted(glob)
        local_of = {p: p for p in range(b)} | {p: b + j for j, p in enumerate(order)}
        stage_gates = tuple(g.remap({q: local_of[p] for q, p in zip(g.qubits, phys)}) for g, phys in stage_gates)
        perm = None
        if remap and i < len(gates) and order:
            phys = list(range(b)) + order  # local position -> physical position
            members = [logical_at[p] for p in phys]
            soon = set(sorted(members, key=lambda q: (next_use(q, i), q))[:b])
            free_local = [j for j in range(b) if members[j] not in soon]
            incoming = [j for j in range(b, len(phys)) if members[j] in soon]
            p_local = list(range(len(phys)))
            for dst, src in zip(free_local, incoming):
                p_local[src], p_local[dst] = dst, src
            if p_local != list(range(len(phys))):
                perm = tuple(p_local)
                new_layout = list(layout)
                for j, q in enumerate(members):
                    new_layout[q] = phys[perm[j]]
                layout = new_layout
        if stage_gates or perm is not None:
            stages.append(Stage(tuple(order), stage_gates, perm))
    return stages, tuple(layout)


def _permute_local(state: jax.Array, m: int, perm: tuple[int, ...]) -> jax.Array:
    """Move local qubit j to position perm[j] (little-endian: position p is tensor axis m-1-p)."""
    axes = [0] * m
    for j, p in enumerate(perm):
        axes[m - 1 - p] = m - 1 - j
    return jnp.transpose(state.reshape((2,) * m), axes).reshape(-1)


class _Meter:
    """Bytes held now and at peak (thread-safe)."""

    def __init__(self):
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int):
        with self._lock:
            self.now += nbytes
            self.peak = max(self.peak, self.now)


class CompressedState:
    """A 2^n-amplitude state held as compressed blocks (see the module docstring)."""

    def __init__(self, num_qubits: int, config: CompressedConfig = CompressedConfig(), dtype=np.complex64):
        self.n = int(num_qubits)
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.complex64, np.complex128):
            raise ValueError(f"CompressedState: dtype {self.dtype} must be complex64 or complex128")
        self.b = min(config.block_qubits, self.n)
        self.layout = tuple(range(self.n))
        self.blocks: list[bytes | None] = [None] * (1 << (self.n - self.b))
        self.meter = _Meter()
        self.compressions = 0
        block0 = np.zeros(1 << self.b, self.dtype)
        block0[0] = 1
        self._store(0, self._compress(block0))

    # -- block store
    def _compress(self, block) -> bytes | None:
        c = compress(block, self.config.bound, self.config.mode, complex_as=self.config.complex_as,
                     lossless=self.config.lossless)
        return c.to_bytes()

    @staticmethod
    def _load(blob: bytes) -> np.ndarray:
        return np.asarray(decompress(Compressed.from_bytes(blob)))

    def _store(self, idx: int, blob: bytes | None, counted: bool = False):
        """Put a block's stream in the store; `counted`: its bytes are already on the meter (a group's output)."""
        old = self.blocks[idx]
        self.blocks[idx] = blob
        self.meter.add((0 if counted or not blob else len(blob)) - (len(old) if old else 0))

    @property
    def stored_bytes(self) -> int:
        return sum(len(b) for b in self.blocks if b)

    @property
    def raw_bytes(self) -> int:
        return (1 << self.n) * self.dtype.itemsize

    @property
    def nonzero_blocks(self) -> int:
        return sum(1 for b in self.blocks if b)

    # -- stages
    def _group_blocks(self, order: tuple[int, ...], outer: int) -> list[int]:
        """Block indices of one group: the outer global bits fixed by `outer`, the `order` bits enumerated."""
        b, n = self.b, self.n
        rest = [p for p in range(b, n) if p not in order]
        base = sum(((outer >> j) & 1) << (p - b) for j, p in enumerate(rest))
        return [base | sum(((c >> i) & 1) << (p - b) for i, p in enumerate(order)) for c in range(1 << len(order))]

    def _run_group(self, idxs: list[int], stage: Stage):
        blobs = [self.blocks[i] for i in idxs]
        m = self.b + len(stage.globals)
        dense = (1 << m) * self.dtype.itemsize
        self.meter.add(2 * dense)
        try:  # dense bytes: the staging array, then the device state (the gate programs update it in place)
            staging = np.zeros((len(idxs), 1 << self.b), self.dtype)
            for j, blob in enumerate(blobs):
                if blob:
                    staging[j] = self._load(blob)
            with jax.enable_x64(self.dtype == np.complex128):
                state = jnp.asarray(staging.reshape(-1))
                del staging
                for gates in self._chunks(stage):
                    state = apply_gates(state, gates, fusion=self.config.fusion)
                if stage.perm is not None:
                    state = _permute_local(state, m, stage.perm)
                state = state.reshape(len(idxs), -1)
                nonzero = np.asarray(jnp.any(state != 0, axis=1))
                out = [self._compress(state[j]) if nonzero[j] else None for j in range(len(idxs))]
            self.meter.add(sum(len(x) for x in out if x))
            return idxs, out
        finally:
            self.meter.add(-2 * dense)

    def _chunks(self, stage: Stage) -> list[tuple[Gate, ...]]:
        """The stage's gates as the compiled programs take them: config.chunk at a time."""
        c = self.config.chunk
        return [stage.gates[s:s + c] for s in range(0, len(stage.gates), c)]

    def prepare_stage(self, stage: Stage) -> None:
        """Compile what run_stage will run for `stage` (its gate programs and its qubit permutation), so that a
        caller can time compilation apart from the run."""
        m = self.b + len(stage.globals)
        with jax.enable_x64(self.dtype == np.complex128):
            for gates in self._chunks(stage):
                prepare(m, gates, dtype=self.dtype, fusion=self.config.fusion)
            if stage.perm is not None:
                _permute_local(jnp.zeros(1 << m, self.dtype), m, stage.perm).block_until_ready()

    def run_stage(self, stage: Stage, progress: bool = False):
        order = stage.globals
        outer_bits = self.n - self.b - len(order)
        groups = [self._group_blocks(order, o) for o in range(1 << outer_bits)]
        live = [g for g in groups if any(self.blocks[i] for i in g)]
        todo = live
        if progress and len(live) > 8:
            from tqdm.auto import tqdm

            todo = tqdm(live, desc="groups", unit="group", leave=False)
        with ThreadPoolExecutor(max(1, self.config.workers)) as pool:
            pending = []
            for g in todo:
                pending.append(pool.submit(self._run_group, g, stage))
                if len(pending) > self.config.workers:
                    self._commit(pending.pop(0).result())
            for f in pending:
                self._commit(f.result())

    def _commit(self, result):
        idxs, out = result
        for i, blob in zip(idxs, out):  # the new streams were counted in flight: moving them costs nothing
            self._store(i, blob, counted=True)
        self.compressions += sum(1 for blob in out if blob)

    def logical_indices(self, block: int) -> np.ndarray:
        """uint64[2^b]: the logical amplitude index of each position of stored block `block`."""
        phys = (np.uint64(block) << np.uint64(self.b)) | np.arange(1 << self.b, dtype=np.uint64)
        out = np.zeros_like(phys)
        for q, p in enumerate(self.layout):
            out |= ((phys >> np.uint64(p)) & np.uint64(1)) << np.uint64(q)
        return out

    def fidelity_to(self, amplitudes, progress: bool = False) -> float:
        """|<ref|psi>|^2 / <psi|psi> against a normalised reference given as a function of logical indices
        (`qrjax.quantum.exact`), streamed block by block, so it works at any size the store holds."""
        overlap, norm = 0j, 0.0
        blocks = [i for i, blob in enumerate(self.blocks) if blob]
        if progress:
            from tqdm.auto import tqdm

            blocks = tqdm(blocks, desc="fidelity", unit="block")
        for i in blocks:
            psi = self._load(self.blocks[i]).astype(np.complex128)
            overlap += np.vdot(amplitudes(self.logical_indices(i)), psi)
            norm += np.vdot(psi, psi).real
        return float(abs(overlap) ** 2 / norm)

    def to_dense(self) -> np.ndarray:
        """The amplitudes in logical qubit order (qiskit's little-endian): dtype[2^n] (needs 2^n * itemsize bytes)."""
        state = np.zeros((len(self.blocks), 1 << self.b), self.dtype)
        for i, blob in enumerate(self.blocks):
            if blob:
                state[i] = self._load(blob)
        state = state.reshape((2,) * self.n)
        # tensor axis n-1-p is physical position p; logical qubit q sits at layout[q]
        axes = [self.n - 1 - self.layout[self.n - 1 - a] for a in range(self.n)]
        return np.ascontiguousarray(np.transpose(state, axes)).reshape(-1)


@dataclasses.dataclass
class RunResult:
    state: CompressedState
    qubits: int
    seconds: float
    compile_seconds: float
    stages: int
    gates: int
    compressions: int
    peak_bytes: int
    stored_bytes: int
    raw_bytes: int

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / max(self.stored_bytes, 1)

    def summary(self) -> dict:
        return {"qubits": self.qubits, "seconds": self.seconds, "compile_seconds": self.compile_seconds,
                "peak_bytes": self.peak_bytes, "stages": self.stages,
                "gates": self.gates, "compressions": self.compressions, "stored_bytes": self.stored_bytes,
                "raw_bytes": self.raw_bytes, "compression_ratio": self.compression_ratio}


def simulate_compressed(circuit: Circuit, config: CompressedConfig = CompressedConfig(), *, dtype=np.complex64,
                        progress: bool = False, on_stage: Callable[[int, Stage], None] | None = None) -> RunResult:
    """Run `circuit` from |0...0> with the state held compressed; see the module docstring. The programs are compiled
    first (RunResult.compile_seconds: XLA compilation and the compressor's first call); RunResult.seconds is the
    run after that, stage planning included."""
    if not isinstance(circuit, Circuit):
        raise ValueError(f"simulate_compressed: expected a Circuit, got {type(circuit).__name__}")
    t0 = time.perf_counter()
    st = CompressedState(circuit.num_qubits, config, dtype)
    stages, layout = plan_stages(circuit, st.b, config.group_qubits, remap=config.remap)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for stage in stages:
        st.prepare_stage(stage)
    rng = np.random.default_rng(0)  # a generic block: the codec's programs for this block size and dtype
    st._load(st._compress((rng.normal(size=1 << st.b) + 1j * rng.normal(size=1 << st.b)).astype(st.dtype)))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter() - plan_s
    it: Sequence[Stage] = stages
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(stages, desc=f"{circuit.name} ({circuit.num_qubits} qubits, compressed)", unit="stage")
    for s_idx, stage in enumerate(it):
        st.run_stage(stage, progress)
        if on_stage:
            on_stage(s_idx, stage)
    st.layout = layout
    return RunResult(st, circuit.num_qubits, time.perf_counter() - t0, compile_s, len(stages), len(circuit.gates),
                     st.compressions, st.meter.peak, st.stored_bytes, st.raw_bytes)
