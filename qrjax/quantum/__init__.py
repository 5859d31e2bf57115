"""State-vector quantum circuit simulation: gates and circuits, benchmark builders, OpenQASM 2.0 I/O, simulator."""

from qrjax.quantum.circuit import GATE_SPECS, Circuit, Gate
from qrjax.quantum.circuits import (CIRCUITS, bernstein_vazirani, build, ghz, qaoa_maxcut, qft, ising,
                                    random_circuit)
from qrjax.quantum.qasm import QasmError, load_qasm, parse_qasm, to_qasm
from qrjax.quantum.simulator import (DEFAULT_FUSION, CompiledCircuit, apply_gates, compile_circuit, fidelity, prepare,
                                    simulate, zero_state)
