"""The circuit suite that experiments/quantum_suite.py and tests/quantum/test_suite.py share: MQT Bench families and
qiskit library circuits written to OpenQASM 2 files, and qiskit-aer's state vector of such a file.

Every circuit reaches qrjax and qiskit through the same file: `qiskit.qasm2.dumps` of the generated circuit, which
keeps qiskit's own gate definitions (`gate qft ...`, `mcx`, `rzz`, ...), so the suite exercises the reader on what
people's files hold. Files are generated locally (mqt-bench builds its circuits with qiskit; nothing is downloaded)
and cached in a folder: a file that exists is reused.

qiskit, qiskit-aer and mqt-bench are test/experiment dependencies (the `test` extra): they are imported inside the
functions, and a missing one raises ImportError naming the package and the extra.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

MQT_PREFIX = "mqt_"
LIBRARY_PREFIX = "lib_"
NOTE_PREFIX = "// qrjax suite: "
SEED = 10  # mqt-bench's own seed for its random parameters and transpiler; ours for the library circuits


class SuiteError(ValueError):
    """A suite circuit that cannot be produced: the message names the circuit, the size and the step that failed.
    `dynamic`: the circuit's dynamic operations (`dynamic_ops`) where that is why, else empty."""

    def __init__(self, message: str, *, dynamic=()):
        super().__init__(message)
        self.dynamic = list(dynamic)


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"qrjax.quantum.suite needs {package} (pip install -e '.[test]'): {err}") from None


# -- MQT Bench


def mqt_families() -> list[str]:
    """Every benchmark family mqt-bench offers (`get_available_benchmark_names()`), sorted."""
    benchmarks = _require("mqt.bench.benchmarks", "mqt-bench")
    return list(benchmarks.get_available_benchmark_names())


def _family_kwargs(name: str) -> dict:
    """Families whose generator draws a random instance take our seed, so a size is one fixed circuit (graphstate's
    graph is random unless seeded)."""
    try:
        module = importlib.import_module(f"mqt.bench.benchmarks.{name}")
    except ImportError:
        return {}
    params = inspect.signature(module.create_circuit).parameters
    return {"seed": SEED} if "seed" in params else {}


def mqt_sizes(name: str, max_qubits: int = 20, min_size: int = 1) -> dict[int, int]:
    """The sizes family `name` offers from `min_size` up to `max_qubits` qubits, found by trying each one at
    mqt-bench's algorithm level (cheap: no transpilation): {size: qubits of the circuit}. Most families take any
    size, some multiples only or fixed sizes (shor: 18; seven_qubit_steane_code: 13, 26, ...); a size's circuit may
    have fewer qubits than the size (iqpe keeps 2 qubits and measures repeatedly). Raises SuiteError for an unknown
    family."""
    benchmarks = _require("mqt.bench.benchmarks", "mqt-bench")
    if name not in mqt_families():
        raise SuiteError(f"mqt-bench has no family {name!r}; known: {', '.join(mqt_families())}")
    kwargs = _family_kwargs(name)
    out = {}
    for n in range(max(1, min_size), max_qubits + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qc = benchmarks.create_circuit(name, n, **kwargs)
        except Exception:  # noqa: BLE001 -- an offered size is exactly one the generator accepts
            continue
        if qc.num_qubits <= max_qubits:
            out[n] = qc.num_qubits
    return out


def write_family_qasm(name: str, size: int, folder) -> Path:
    """The OpenQASM 2 file of MQT Bench family `name` at `size`, target-independent level (`get_benchmark(name,
    BenchmarkLevel.INDEP, size)`), written by `qiskit.qasm2.dumps` to folder/mqt_<name>_<size>.qasm (reused when
    present). Raises SuiteError naming the family, the size and whether mqt-bench could not generate it or qiskit
    could not write it (e.g. a dynamic circuit's classically controlled gates have no OpenQASM 2 form)."""
    path = Path(folder) / f"{MQT_PREFIX}{name}_{size}.qasm"
    if path.exists():
        return path
    bench = _require("mqt.bench", "mqt-bench")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qc = bench.get_benchmark(name, bench.BenchmarkLevel.INDEP, size, **_family_kwargs(name))
    except Exception as err:  # noqa: BLE001 -- reported per family, never dropped
        raise SuiteError(f"mqt-bench {name} size {size}: generation failed: {type(err).__name__}: {err}") from err
    return _dump(qc, path, f"mqt-bench {name} size {size}")


def _matrix_parameter_gates(qc) -> list[str]:
    return sorted({inst.operation.name for inst in qc.data
                   if any(isinstance(p, np.ndarray) for p in inst.operation.params)})


def _dump(qc, path: Path, what: str) -> Path:
    """qasm2.dumps(qc) into `path`. qiskit cannot write a gate whose parameter is a matrix (mqt-bench's ae holds a
    controlled UnitaryGate, "c-unitary"); those gates alone are replaced by their definitions (at most 3 levels),
    the same operator, and a `// qrjax suite:` comment after the header says so (`file_note`)."""
    qasm2 = _require("qiskit.qasm2", "qiskit")
    note = None
    for _ in range(4):
        try:
            text = qasm2.dumps(qc)
            break
        except Exception as err:  # noqa: BLE001
            matrix_gates = _matrix_parameter_gates(qc)
            if not matrix_gates:
                dyn = dynamic_ops(qc.remove_final_measurements(inplace=False))
                kind = f" (a dynamic circuit: {', '.join(dyn)})" if dyn else ""
                raise SuiteError(f"{what}: qiskit.qasm2.dumps failed{kind}: {type(err).__name__}: {err}",
                                 dynamic=dyn) from err
            qc = qc.decompose(gates_to_decompose=matrix_gates)
            note = (f"{', '.join(matrix_gates)} replaced by its definition (qiskit.qasm2.dumps cannot write a gate "
                    f"with a matrix parameter)")
    else:
        raise SuiteError(f"{what}: qiskit.qasm2.dumps failed: gates with matrix parameters remain after 3 levels of "
                         f"decomposition: {', '.join(_matrix_parameter_gates(qc))}")
    if note:
        head, _, rest = text.partition("\n")
        inc, _, rest = rest.partition("\n")
        text = f"{head}\n{inc}\n{NOTE_PREFIX}{note}\n{rest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: a killed run leaves no half-written file
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# -- qiskit's circuit library


def _nontrivial_start(qc, n: int):
    """X on every other qubit first, so that circuits which map |0...0> to a plain state (QFT: uniform) act on a
    basis state with structure."""
    for q in range(0, n, 2):
        qc.x(q)


def _assign(qc, seed: int):
    rng = np.random.default_rng(seed)
    return qc.assign_parameters(rng.uniform(0, 2 * np.pi, qc.num_parameters)) if qc.num_parameters else qc


def _qv(n):
    from qiskit.circuit.library import quantum_volume

    return quantum_volume(n, seed=SEED)


def _qft(n):
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import QFTGate

    qc = QuantumCircuit(n)
    _nontrivial_start(qc, n)
    qc.append(QFTGate(n), range(n))
    return qc


def _su2(n):
    from qiskit.circuit.library import efficient_su2

    return _assign(efficient_su2(n, reps=2), SEED)


def _real_amp(n):
    from qiskit.circuit.library import real_amplitudes

    return _assign(real_amplitudes(n, reps=2), SEED)


def _excitation(n):
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import excitation_preserving

    qc = QuantumCircuit(n)
    _nontrivial_start(qc, n)  # the ansatz preserves the excitation number: start with some
    return qc.compose(_assign(excitation_preserving(n, reps=1, entanglement="linear"), SEED))


def _graph_state(n):
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import GraphStateGate

    rng = np.random.default_rng(SEED)
    adj = np.triu(rng.integers(0, 2, (n, n)), 1)
    qc = QuantumCircuit(n)
    qc.append(GraphStateGate((adj + adj.T).tolist()), range(n))
    return qc


def _iqp(n):
    from qiskit.circuit.library import random_iqp

    return random_iqp(n, seed=SEED)


def _phase_estimation(n):
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import PhaseGate, phase_estimation

    qc = QuantumCircuit(n)
    qc.x(n - 1)  # the eigenstate |1> of the phase gate
    return qc.compose(phase_estimation(n - 1, PhaseGate(2 * np.pi * 0.3183)))


def _grover(n):
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import grover_operator

    oracle = QuantumCircuit(n)  # a phase flip on |1...1>: H X-controlled-...-X H on the last qubit
    oracle.h(n - 1)
    oracle.mcx(list(range(n - 1)), n - 1)
    oracle.h(n - 1)
    qc = QuantumCircuit(n)
    qc.h(range(n))
    qc.compose(grover_operator(oracle), inplace=True)
    return qc


def _hidden_linear(n):
    from qiskit.circuit.library import hidden_linear_function

    rng = np.random.default_rng(SEED)
    adj = np.triu(rng.integers(0, 2, (n, n)))
    return hidden_linear_function((adj + np.triu(adj, 1).T).tolist())


def _random(n):
    from qiskit.circuit.random import random_circuit

    return random_circuit(n, depth=10, max_operands=3, seed=SEED)  # draws from qiskit's whole standard gate set


_LIBRARY: dict[str, tuple[Callable, int]] = {  # name -> (builder of an n-qubit circuit, smallest n)
    "quantum_volume": (_qv, 2), "qft": (_qft, 1), "efficient_su2": (_su2, 2), "real_amplitudes": (_real_amp, 2),
    "excitation_preserving": (_excitation, 2), "graph_state": (_graph_state, 2), "iqp": (_iqp, 2),
    "phase_estimation": (_phase_estimation, 2), "grover_operator": (_grover, 2),
    "hidden_linear_function": (_hidden_linear, 2), "random_circuit": (_random, 3),
}


def library_circuits() -> dict[str, int]:
    """The qiskit library circuits of the suite: {name: smallest qubit count}; each takes any size from there.
    Random ones (quantum_volume, iqp, random_circuit, the angles of the ansätze) are seeded: a size is one circuit."""
    return {k: v[1] for k, v in _LIBRARY.items()}


def library_circuit(name: str, num_qubits: int):
    """The qiskit QuantumCircuit of library circuit `name` on `num_qubits` qubits. Raises SuiteError for an unknown
    name or a size below the circuit's smallest."""
    _require("qiskit", "qiskit")
    if name not in _LIBRARY:
        raise SuiteError(f"no library circuit {name!r}; known: {', '.join(_LIBRARY)}")
    build, smallest = _LIBRARY[name]
    if num_qubits < smallest:
        raise SuiteError(f"library circuit {name} needs at least {smallest} qubits, got {num_qubits}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(num_qubits)


def write_library_qasm(name: str, num_qubits: int, folder) -> Path:
    """The OpenQASM 2 file of library circuit `name` on `num_qubits` qubits, written by `qiskit.qasm2.dumps` to
    folder/lib_<name>_<n>.qasm (reused when present). Raises SuiteError naming the circuit and the failing step."""
    path = Path(folder) / f"{LIBRARY_PREFIX}{name}_{num_qubits}.qasm"
    if path.exists():
        return path
    try:
        qc = library_circuit(name, num_qubits)
    except SuiteError:
        raise
    except Exception as err:  # noqa: BLE001
        raise SuiteError(f"library {name} {num_qubits} qubits: construction failed: {type(err).__name__}: "
                         f"{err}") from err
    return _dump(qc, path, f"library {name} {num_qubits} qubits")


# -- the qiskit side of a file


def qiskit_circuit(path):
    """qiskit's reading of the OpenQASM 2 file at `path`: `qasm2.load(path, custom_instructions=
    LEGACY_CUSTOM_INSTRUCTIONS)` (qelib1's gates as qiskit's standard gates), final measurements removed."""
    qasm2 = _require("qiskit.qasm2", "qiskit")
    qc = qasm2.load(os.fspath(path), custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    return qc.remove_final_measurements(inplace=False)


def _standard_gates_only(qc, max_levels: int = 20):
    """`qc` with every user-defined gate of the file replaced by its body, level by level, until only qiskit's
    standard gates remain. Aer must not see them by name: qasm2.dumps calls a UnitaryGate's definition `unitary`
    and a multi-controlled X `mcx`, names Aer takes for its own instructions (and then fails on, or reads
    differently)."""
    from qiskit.circuit.library import get_standard_gate_name_mapping

    standard = set(get_standard_gate_name_mapping()) | {"barrier", "measure", "reset", "delay"}
    for _ in range(max_levels):
        custom = sorted({inst.operation.name for inst in qc.data} - standard)
        if not custom:
            break
        qc = qc.decompose(gates_to_decompose=custom)
    return qc


def aer_runner(qc, *, precision: str = "double", threads: int = 0, save_state: bool = True,
               **options) -> Callable[[], np.ndarray | None]:
    """A function of no arguments that runs `qc` on qiskit-aer's state-vector simulator (`precision` "single" or
    "double", `threads` = max_parallel_threads, 0 for Aer's default; `options` go to AerSimulator, e.g.
    max_memory_mb) and returns the final state: complex64[2^n] or complex128[2^n], qiskit's little-endian order.
    The preparation (user gate definitions unrolled to qiskit's standard gates, then transpiled for Aer at
    optimization level 0: the gates are not rewritten, Aer's own fusion does that while it runs) is done here once,
    so calls time the simulation alone. save_state=False: the state is not copied out (the call returns None; one
    shot of a final measurement keeps Aer from skipping a circuit without output), e.g. to measure Aer's own
    memory. Raises RuntimeError with Aer's status when a run fails."""
    _require("qiskit_aer", "qiskit-aer")
    from qiskit import transpile
    from qiskit_aer import AerSimulator

    sim = AerSimulator(method="statevector", precision=precision, max_parallel_threads=threads, **options)
    prepared = transpile(_standard_gates_only(qc), sim, optimization_level=0)
    if save_state:
        prepared.save_statevector()
    else:
        prepared.measure_all()

    def run() -> np.ndarray | None:
        result = sim.run(prepared, shots=1).result()
        if not result.success:
            raise RuntimeError(f"qiskit-aer failed on {qc.name}: {result.status}")
        return np.asarray(result.get_statevector(prepared).data) if save_state else None

    return run


def compressed_config(num_qubits: int, *, widest_gate: int = 2, bound: float = 1e-3, mode: str = "pw_rel"):
    """BMQSim's setting (`CompressedConfig(bound, mode)`) scaled to a small circuit so that the state really is
    split into blocks and recompressed stage by stage: b = max(n // 2, n - 6) block qubits (at most 20, the
    default), k = (n - b) // 2 group qubits, at least `widest_gate` (a stage must hold a gate whose qubits are all
    global) and at most 6, so a stage holds 2^(b+k) of the 2^n amplitudes. At least half the qubits local keeps the
    blocks few: the per-block host work, not the amplitudes, dominates small blocks (at 20 qubits, 1024 blocks of
    2^10 took 3-13x as long as 64 of 2^14 on qnn, qft and vqe_two_local). Returns a CompressedConfig."""
    from qrjax.quantum.compressed import CompressedConfig

    b = min(20, max(1, num_qubits // 2, num_qubits - 6))
    k = min(6, max(1, widest_gate, (num_qubits - b) // 2))
    return CompressedConfig(block_qubits=b, group_qubits=k, bound=bound, mode=mode)


def file_note(path) -> str | None:
    """The `// qrjax suite:` note a suite file carries (how it differs from qiskit's plain dump), or None."""
    with open(path, encoding="utf-8") as f:
        for _, line in zip(range(4), f):
            if line.startswith(NOTE_PREFIX):
                return line[len(NOTE_PREFIX):].strip()
    return None


DYNAMIC_OPS = frozenset({"measure", "reset", "if_else", "while_loop", "for_loop", "switch_case"})


def dynamic_ops(qc) -> list[str]:
    """The operations of `qc` (final measurements already removed) that make it a dynamic circuit: mid-circuit
    measure or reset, classical control. Such a circuit has no single final state vector to compare."""
    return sorted({inst.operation.name for inst in qc.data} & DYNAMIC_OPS)


def nearest_sizes(offered, targets) -> list[int]:
    """For each target, the offered size nearest to it (ties: the smaller), without repeats, in increasing order."""
    offered = sorted(offered)
    if not offered:
        return []
    return sorted({min(offered, key=lambda s: (abs(s - t), s)) for t in targets})


def state_bytes(num_qubits: int, itemsize: int = 8) -> int:
    """Bytes of a dense state of `num_qubits` qubits (complex64: itemsize 8)."""
    return (1 << num_qubits) * itemsize


__all__ = ["SuiteError", "mqt_families", "mqt_sizes", "write_family_qasm", "library_circuits", "library_circuit",
           "write_library_qasm", "qiskit_circuit", "aer_runner", "compressed_config", "file_note", "dynamic_ops",
           "nearest_sizes", "state_bytes"]
