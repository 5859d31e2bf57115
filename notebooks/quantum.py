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
# - circuits and OpenQASM 2.0 input;
# - the dense JAX simulator, checked against closed-form states;
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

from qrjax.quantum import build, fidelity, parse_qasm, simulate, to_qasm
from qrjax.quantum.compressed import CompressedConfig, plan_stages, simulate_compressed
from qrjax.quantum.exact import exact_amplitudes

SMOKE = os.environ.get("QRJAX_NOTEBOOK_SMOKE") == "1"  # smaller sizes, same cells: for tests

# %% [markdown]
# ## Circuits and QASM
# Builders cover GHZ, QFT (of the basis state |1010…⟩), Bernstein–Vazirani, QAOA MaxCut, Trotterised Ising and random
# brickwork circuits. `to_qasm` and `parse_qasm` handle the OpenQASM 2.0 subset these circuits use. Anything outside
# that subset is an error that names the line.

# %%
qft = build("qft", 12)
print(qft.name, len(qft.gates), "gates")
text = to_qasm(qft)
print("\n".join(text.splitlines()[:8]), "\n...")
assert parse_qasm(text).gates == qft.gates
try:
    parse_qasm(text + "reset q[0];\n", source="mine.qasm")
except ValueError as err:
    print("error:", err)

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
