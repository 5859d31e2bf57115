"""`qrjax quantum run`: simulate a circuit (OpenQASM 2.0 file or a named builder), dense or compressed (BMQSim), and
print its summary (one compact JSON object with --json; see qrjax.console)."""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from qrjax import console

CHECK_MAX_QUBITS = 26  # the dense reference run for the fidelity fits comfortably up to here


def _circuit(args):
    from qrjax.quantum import QasmError, build, load_qasm

    if bool(args.file) == bool(args.circuit):
        console.fail("qrjax quantum run", "give either FILE.qasm or --circuit NAME --qubits N")
    try:
        if args.file:
            return load_qasm(args.file)
        if args.qubits is None:
            console.fail("qrjax quantum run", "--circuit needs --qubits N")
        return build(args.circuit, args.qubits)
    except FileNotFoundError:
        console.fail("qrjax quantum run", f"{args.file}: no such file")
    except (QasmError, ValueError) as err:
        console.fail("qrjax quantum run", f"{err}")


def run(circuit, *, compressed: bool, config=None, dtype=np.complex64, check: bool | None = None,
        exact=None, progress: bool = True, fusion: int | None = None, method: str = "auto") -> tuple[dict, object]:
    """-> (summary dict, final state: a CompressedState or a dense array).

    The summary's `seconds` is the simulation alone; `compile_seconds` the XLA compilation before it (0 for programs
    this process already compiled). `fusion`: the widest fused op, `method`: how ops are applied (both dense only;
    compressed takes config.fusion; see qrjax.quantum.apply_gates).
    With `compressed`, the fidelity is measured against `exact` (a closed-form state, `qrjax.quantum.exact`) at any
    size, else against a dense run up to CHECK_MAX_QUBITS; check=False skips it."""
    import jax

    from qrjax.quantum import DEFAULT_FUSION, compile_circuit, fidelity, simulate

    n = circuit.num_qubits
    summary = {"circuit": circuit.name, "qubits": n, "gates": len(circuit.gates),
               "mode": "compressed" if compressed else "dense", "dtype": np.dtype(dtype).name}
    x64 = jax.enable_x64(np.dtype(dtype) == np.complex128)
    with x64:
        if compressed:
            from qrjax.quantum.compressed import CompressedConfig, simulate_compressed

            config = config or CompressedConfig()

            res = simulate_compressed(circuit, config, dtype=dtype, progress=progress)
            final = res.state
            summary.update(res.summary())
            summary.update(bound=config.bound, error_mode=config.mode, block_qubits=final.b,
                           group_qubits=config.group_qubits, fusion=config.fusion)
        else:
            fusion = DEFAULT_FUSION if fusion is None else fusion
            t0 = time.perf_counter()
            compiled = compile_circuit(circuit, dtype=dtype, fusion=fusion, method=method, progress=progress)
            t1 = time.perf_counter()
            final = compiled.run(progress=progress)
            final.block_until_ready()
            summary.update(seconds=time.perf_counter() - t1 + compiled.plan_seconds,
                           compile_seconds=t1 - t0 - compiled.plan_seconds, fusion=fusion, method=compiled.method,
                           passes=compiled.passes,
                           peak_bytes=final.nbytes, stages=None, compression_ratio=1.0)
        if compressed and check is not False:
            if exact is not None:
                summary["fidelity"] = final.fidelity_to(exact, progress=progress)
                summary["fidelity_reference"] = "closed form"
            elif check or n <= CHECK_MAX_QUBITS:
                summary["fidelity"] = fidelity(simulate(circuit, dtype=dtype), final.to_dense())
                summary["fidelity_reference"] = "dense simulation"
    summary["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return summary, final


def cmd_run(args) -> int:
    from qrjax.quantum.compressed import CompressedConfig
    from qrjax.quantum.exact import exact_amplitudes

    circuit = _circuit(args)
    config = None
    if args.compressed:
        given = {k: getattr(args, k) for k in ("bound", "mode", "block_qubits", "group_qubits", "workers", "fusion")
                 if getattr(args, k) is not None}
        try:
            config = CompressedConfig(**given)
        except ValueError as err:
            console.fail("qrjax quantum run", f"{err}")
    else:
        given = [f"--{k.replace('_', '-')}" for k in ("bound", "mode", "block_qubits", "group_qubits", "workers",
                                                        "check") if getattr(args, k) is not None]
        if given:
            console.fail("qrjax quantum run", f"{', '.join(given)} need --compressed")
    if args.compressed and args.method != "auto":
        console.fail("qrjax quantum run", "--method applies to dense runs (compressed groups choose their own)")
    try:
        exact = exact_amplitudes(args.circuit, args.qubits) if args.circuit else None
        summary, final = run(circuit, compressed=args.compressed, config=config, dtype=np.dtype(args.dtype),
                             check=args.check, exact=exact, progress=not args.quiet, fusion=args.fusion,
                             method=args.method)
    except ValueError as err:
        console.fail("qrjax quantum run", f"{err}")
    if args.save_state:
        state = final.to_dense() if args.compressed else np.asarray(final)
        np.save(args.save_state, state.astype(state.dtype.newbyteorder("<")))
        summary["state_file"] = str(args.save_state)
    console.result(summary, args.json)
    return 0


def register(systems) -> None:
    q = systems.add_parser("quantum", help="state-vector quantum simulation, dense or compressed (BMQSim)",
                           description="Simulate quantum circuits; --compressed holds the state in error-bounded "
                                       "compressed blocks.")
    cmds = q.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = cmds.add_parser("run", help="run FILE.qasm or --circuit NAME --qubits N; JSON summary")
    r.add_argument("file", nargs="?", type=Path, help="OpenQASM 2.0 file")
    r.add_argument("--circuit", help="builder: ghz, qft, bv, qaoa, ising, random")
    r.add_argument("--qubits", type=int)
    r.add_argument("--compressed", action="store_true", help="hold the state compressed (BMQSim)")
    r.add_argument("--bound", type=float, help="error bound (default 1e-3)")
    r.add_argument("--mode", choices=["abs", "rel", "pw_rel"], help="error-bound mode (default pw_rel)")
    r.add_argument("--block-qubits", type=int, help="amplitudes per stored block = 2^B (default 20)")
    r.add_argument("--group-qubits", type=int, help="global qubits per stage (default 6)")
    r.add_argument("--workers", type=int, help="groups in flight (default 2)")
    r.add_argument("--fusion", type=int, metavar="K",
                   help="gate fusion: the widest fused op in qubits (default 3; 0: every gate its own pass)")
    r.add_argument("--method", default="auto", choices=["auto", "slices", "gather"],
                   help="how ops are applied: slices (fastest runs, one compile per circuit), gather (one compile per "
                        "state size serves every circuit; slower runs), auto (gather up to 14 qubits)")
    r.add_argument("--dtype", default="complex64", choices=["complex64", "complex128"])
    r.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                   help=f"measure the fidelity: against the closed-form state (ghz, qft, bv; any size) or a dense run "
                        f"(default: when compressed and qubits <= {CHECK_MAX_QUBITS})")
    r.add_argument("--save-state", type=Path, metavar="OUT.npy",
                   help="write the final amplitudes (complex, qiskit's little-endian order)")
    r.add_argument("--json", action="store_true", help="print the summary as one compact JSON object")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

