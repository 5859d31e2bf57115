# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # State-vector simulation, dense and compressed (BMQSim)
#
# This notebook covers `qrjax.quantum`:
# - circuits and OpenQASM 2.0 input (the whole language: qelib1.inc, gate definitions, several registers);
# - the dense JAX simulator with gate fusion, checked against closed-form states;
# - the compressed mode, where the state lives in error-bounded compressed blocks and gates run in stages.
#
# It ends with a 34-qubit GHZ state, which would take 128 GiB uncompressed, held in a few hundred bytes.
#
# Runs in about a minute on a CPU: `python notebooks/quantum.py`. With `QRJAX_NOTEBOOK_SMOKE=1` (what the tests
# set) every cell runs at a smaller size: fewer qubits, smaller blocks, two error bounds.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from qrjax.quantum import build, compile_circuit, fidelity, parse_qasm, simulate, to_qasm
from qrjax.quantum.compressed import CompressedConfig, plan_stages, simulate_compressed
from qrjax.quantum.exact import exact_amplitudes

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller sizes, same cells: for tests

# %% [markdown]
# ## Circuits and QASM
# Builders cover GHZ, QFT (of the basis state |1010…⟩), Bernstein–Vazirani, QAOA MaxCut, Trotterised Ising and random
# brickwork circuits. `to_qasm` writes OpenQASM 2.0; `parse_qasm` / `load_qasm` read the whole language as qiskit's
# reader does: every gate of qelib1.inc (ccx, cswap, rzz, sx, c4x, ...), user `gate` definitions (expanded into
# their gates), several registers. What a state-vector run cannot do (`if`, a reset or a measurement followed by more
# gates) is an error that names the file, the line and the statement.

# %%
qft = build("qft", 12)
print(qft.name, len(qft.gates), "gates")
text = to_qasm(qft)
print("\n".join(text.splitlines()[:8]), "\n...")
assert parse_qasm(text).gates == qft.gates
program = """OPENQASM 2.0;
include "qelib1.inc";
gate majority a, b, c { cx c, b; cx c, a; ccx a, b, c; }
gate twist(theta) a, b { rzz(theta / 2) a, b; sx b; }
qreg x[2]; qreg y[2]; creg out[4];
h x; majority x[0], x[1], y[0]; twist(pi / 3) y[0], y[1];
measure x -> out[0:1];
"""
try:
    parse_qasm(program, source="mine.qasm")
except ValueError as err:
    print("error:", err)  # creg slices are not OpenQASM 2
mine = parse_qasm(program.replace("measure x -> out[0:1];", "measure x[0] -> out[0];"), source="mine.qasm")
print(mine.num_qubits, "qubits:", ", ".join(str(g) for g in mine.gates))
try:
    parse_qasm(text + "reset q[0];\n", source="mine.qasm")
except ValueError as err:
    print("error:", err)

# %% [markdown]
# ## Gate fusion
# Consecutive gates on at most `fusion` qubits together are multiplied into one small unitary, applied in one pass
# over the state (as qiskit-aer and qsim do). On this CPU a pass of a 3-qubit op costs about what a one-qubit pass
# costs, so the default width is 3; `fusion=0` applies every gate on its own. The state does not change.

# %%
qaoa12 = build("qaoa", 12)
unfused = None
for width in (0, 2, 3):
    compiled = compile_circuit(qaoa12, fusion=width)
    final = np.asarray(compiled.run())
    unfused = final if unfused is None else unfused
    same = fidelity(unfused, final)
    print(f"fusion={width}: {compiled.passes} passes for {len(qaoa12.gates)} gates, "
          f"compiled in {compiled.compile_seconds:.2f} s, fidelity to unfused {same:.9f}")

# %% [markdown]
# ## Dense simulation against the closed form
# QFT|x⟩ has amplitude exp(2πi·x·y/2ⁿ)/√2ⁿ at y. The simulator keeps qiskit's little-endian order.

# %%
state = np.asarray(simulate(qft))
ref = exact_amplitudes("qft", 12)(np.arange(2**12, dtype=np.uint64))
print("max |psi - exact| =", np.abs(state - ref).max(), " fidelity =", fidelity(ref, state))

# %% [markdown]
# ## Stages: one decompression per block per stage
# The state is split into blocks of 2^b amplitudes. Gates join a stage while they touch at most k global qubits,
# i.e. qubits outside a block. Each group of 2^k blocks is decompressed once, gets all of the stage's gates, and
# is recompressed once. At the end of a stage the planner remaps qubits: the ones needed soonest move into the
# blocks. A SWAP costs nothing, since it only relabels qubits.

# %%
big = build("qft", 24)
for remap in (False, True):
    stages, _ = plan_stages(big, 16, 4, remap=remap)
    print(f"QFT-24, b=16, k=4, remap={remap}: {len(stages)} stages for {len(big.gates)} gates")

# %% [markdown]
# ## Compressed runs: fidelity against the error bound
# Point-wise relative bounds keep small amplitudes accurate. An absolute bound of the same ε wipes them out.

# %%
circuit = build("random", 8 if SMOKE else 11)
dense = np.asarray(simulate(circuit))
bounds = [1e-1, 1e-3] if SMOKE else [1e-1, 1e-2, 1e-3]
fid = {mode: [] for mode in ("pw_rel", "abs")}
for mode in fid:
    for eps in bounds:
        res = simulate_compressed(circuit, CompressedConfig(block_qubits=6 if SMOKE else 8, group_qubits=2, bound=eps,
                                                                   mode=mode))
        fid[mode].append(1 - fidelity(dense, res.state.to_dense()))
        print(f"{mode:6s} eps={eps:.0e}: 1-F = {fid[mode][-1]:.2e}  ratio {res.compression_ratio:.2f}  "
              f"stages {res.stages}")
fig, ax = plt.subplots(figsize=(4.5, 3))
for mode, v in fid.items():
    ax.loglog(bounds, np.maximum(v, 1e-16), "o-", label=mode)
ax.set_xlabel("error bound eps"), ax.set_ylabel("1 - fidelity"), ax.legend()
fig.tight_layout()
fig.savefig("quantum_fidelity.png", dpi=100)

# %% [markdown]
# ## Past the dense limit
# GHZ keeps two non-zero amplitudes, so all-zero blocks stay empty and their groups are skipped. At 34 qubits the
# dense complex64 state would be 128 GiB. The fidelity below is streamed block by block against the closed-form
# state.

# %%
n_ghz = 20 if SMOKE else 34
res = simulate_compressed(build("ghz", n_ghz), CompressedConfig(block_qubits=10 if SMOKE else 16, group_qubits=4))
print(f"GHZ-{n_ghz}: {res.seconds:.1f} s, {res.stages} stages, stored {res.stored_bytes} bytes, peak "
      f"{res.peak_bytes / 2**20:.1f} MiB (dense: {res.raw_bytes / 2**30:.0f} GiB), "
      f"fidelity {res.state.fidelity_to(exact_amplitudes('ghz', n_ghz)):.6f}")
