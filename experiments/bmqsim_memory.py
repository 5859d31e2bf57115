"""BMQSim memory and time: dense vs compressed state-vector simulation, fidelity, and the largest runs within 24 GiB.

    python experiments/bmqsim_memory.py                  # the issue's setting (hour-scale on a 2-core CPU)
    python experiments/bmqsim_memory.py --sizes 10 12 --large-qft 14 --large-ghz 16 --block-qubits 6 --max-dense 12
                                                         # smoke test (seconds)

Writes experiments/results/bmqsim_memory.{json,md,png}.

Part 1, for GHZ, QFT (of |1010...>), BV, QAOA and random circuits at each size: the dense simulator (complex64, one
state buffer updated in place: memory = 2^n x 8 bytes) against the compressed one (point-wise relative bound 1e-3,
blocks of 2^b amplitudes, 2^k-block groups): wall time, peak bytes held (the compressed store plus the groups in
flight: `CompressedState.meter`), final compression ratio, stages, and the fidelity |<exact|psi>|^2 against the dense
run (or the closed-form state for GHZ/QFT/BV where the dense run is skipped). A run whose time, projected from the
circuit's previous size as x2 per qubit (dense + compressed + fidelity), exceeds `--budget` seconds is skipped and
reported as such.

Part 2 (run first), the largest qubit count within 24 GiB: compressed runs of GHZ and QFT past the dense limit (`--large-ghz`,
`--large-qft`), with their closed-form fidelity; the dense and qiskit-aer limits from their memory requirements
(2^n x 8 bytes for complex64 / aer single precision), with aer asked to run one qubit past its limit to confirm it
refuses.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
from tqdm.auto import tqdm

from qrjax import bench

GIB = 1 << 30
CIRCUITS = ("ghz", "qft", "bv", "qaoa", "random")


def dense_run(circuit):
    from qrjax.quantum import simulate

    t = time.perf_counter()
    state = simulate(circuit)
    state.block_until_ready()
    return np.asarray(state), time.perf_counter() - t


def compressed_run(circuit, config, exact_state=None, exact_fn=None, progress=False):
    from qrjax.quantum import fidelity
    from qrjax.quantum.compressed import simulate_compressed

    res = simulate_compressed(circuit, config, progress=progress)
    row = res.summary()
    if exact_state is not None:
        row["fidelity"] = fidelity(exact_state, res.state.to_dense())
        row["fidelity_reference"] = "dense run"
    elif exact_fn is not None:
        t = time.perf_counter()
        row["fidelity"] = res.state.fidelity_to(exact_fn, progress=progress)
        row["fidelity_reference"] = "closed form"
        row["fidelity_seconds"] = time.perf_counter() - t
    row["nonzero_blocks"] = res.state.nonzero_blocks
    row["blocks"] = len(res.state.blocks)
    return row


def aer_limit(memory_gib: float):
    """qiskit-aer (statevector, single precision): the largest n with 2^n x 8 bytes within the memory, and its answer
    when asked to run one qubit more under max_memory_mb = that memory (it checks before allocating)."""
    try:
        import qiskit
        from qiskit_aer import AerSimulator
    except ImportError:
        return None
    n = int(math.floor(math.log2(memory_gib * GIB / 8)))
    qc = qiskit.QuantumCircuit(n + 1)
    qc.h(0)
    qc.save_statevector()
    sim = AerSimulator(method="statevector", precision="single", max_memory_mb=int(memory_gib * 1024))
    result = sim.run(qc).result()
    status = result.results[0].status if result.results else str(result.status)
    refused = not result.success
    return {"model_max_qubits": n, "asked_qubits": n + 1, "refused": refused, "status": str(status)[:300]}


def main(argv=None) -> int:
    from qrjax.quantum import build
    from qrjax.quantum.compressed import CompressedConfig
    from qrjax.quantum.exact import exact_amplitudes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 22, 24, 26, 28])
    ap.add_argument("--circuits", nargs="+", default=list(CIRCUITS))
    ap.add_argument("--block-qubits", type=int, default=20)
    ap.add_argument("--group-qubits", type=int, default=6)
    ap.add_argument("--bound", type=float, default=1e-3)
    ap.add_argument("--max-dense", type=int, default=26, help="largest n for the dense run (fidelity reference)")
    ap.add_argument("--budget", type=float, default=600,
                    help="seconds: a run projected (x2 per qubit) past this is skipped")
    ap.add_argument("--large-qft", type=int, nargs="*", default=[32])
    ap.add_argument("--large-ghz", type=int, nargs="*", default=[36])
    ap.add_argument("--memory-gib", type=float, default=24)
    ap.add_argument("--out", default="experiments/results")
    args = ap.parse_args(argv)

    config = CompressedConfig(block_qubits=args.block_qubits, group_qubits=args.group_qubits, bound=args.bound)
    rows, large, last = [], [], {}

    def save():  # after every run, so a long job's finished rows survive an interruption
        payload = {"machine": bench.machine_info(), "settings": vars(args), "rows": rows, "large": large,
                   "limits": limits(args, rows, large)}
        write_markdown(payload, args.out)
        return payload

    for name, sizes in (("ghz", args.large_ghz), ("qft", args.large_qft)):
        for n in sizes:
            circuit = build(name, n)
            comp = compressed_run(circuit, config, None, exact_amplitudes(name, n), progress=True)
            comp.update(circuit=name, dense_bytes=(1 << n) * 8,
                        within_memory=comp["peak_bytes"] <= args.memory_gib * GIB,
                        max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            large.append(comp)
            save()
            tqdm.write(f"{name}-{n} compressed: {comp['seconds']:.0f}s, peak {comp['peak_bytes'] / GIB:.2f} GiB, "
                       f"F={comp['fidelity']:.6f}")

    jobs = [(name, n) for n in args.sizes for name in args.circuits]
    for name, n in tqdm(jobs, desc="bmqsim_memory part 1", unit="run"):
        if name in last:  # time grows about as 2^n: skip a run projected past the budget
            n0, t0 = last[name]
            projected = t0 * 2.0 ** (n - n0)
            if projected > args.budget:
                rows.append({"circuit": name, "qubits": n, "skipped": f"projected {projected:.0f} s (from "
                                                                      f"{t0:.0f} s at {n0} qubits) > --budget "
                                                                      f"{args.budget:.0f} s"})
                continue
        circuit = build(name, n - 1 if name == "bv" else n)  # bv: n-1 data qubits + the ancilla
        row = {"circuit": name, "qubits": circuit.num_qubits, "gates": len(circuit.gates),
               "dense_bytes": (1 << circuit.num_qubits) * 8}
        exact_state = None
        if circuit.num_qubits <= args.max_dense:
            exact_state, row["dense_seconds"] = dense_run(circuit)
        comp = compressed_run(circuit, config, exact_state,
                              exact_amplitudes(name, n - 1 if name == "bv" else n))
        del exact_state
        row.update({f"compressed_{k}": v for k, v in comp.items() if k not in ("qubits", "gates")})
        row["memory_reduction"] = row["dense_bytes"] / comp["peak_bytes"]
        rows.append(row)
        last[name] = (n, row.get("dense_seconds", 0) + comp["seconds"] + comp.get("fidelity_seconds", 0))
        save()
        tqdm.write(f"{name}-{circuit.num_qubits}: dense {row.get('dense_seconds', float('nan')):.1f}s, compressed "
                   f"{comp['seconds']:.1f}s, peak {comp['peak_bytes'] / 2**20:.1f} MiB, ratio "
                   f"{comp['compression_ratio']:.1f}, F={comp.get('fidelity', float('nan')):.6f}")

    payload = save()
    payload["limits"]["qiskit_aer"] = aer_limit(args.memory_gib)
    write_markdown(payload, args.out)
    plot(rows, f"{args.out}/bmqsim_memory.png")
    return 0


def limits(args, rows, large) -> dict:
    return {"memory_gib": args.memory_gib,
            "dense_complex64_model_max_qubits": int(math.floor(math.log2(args.memory_gib * GIB / 8))),
            "qiskit_aer": None,
            "compressed_max_qubits_run": {name: max([r["qubits"] for r in large if r["circuit"] == name
                                                     and r["within_memory"]] +
                                                    [r["qubits"] for r in rows if r.get("circuit") == name
                                                     and "compressed_seconds" in r], default=None)
                                          for name in args.circuits}}


def write_markdown(payload, out):
    rows, large, limits = payload["rows"], payload["large"], payload["limits"]

    def g(r, k, scale=1.0):
        v = r.get(k)
        return "-" if v is None else v * scale

    t1 = bench.markdown_table(
        ["circuit", "qubits", "dense s", "compressed s", "dense MiB", "compressed peak MiB", "memory reduction",
         "final ratio", "stages", "fidelity", "reference"],
        [[r["circuit"], r["qubits"], g(r, "dense_seconds"), g(r, "compressed_seconds"), g(r, "dense_bytes", 2**-20),
          g(r, "compressed_peak_bytes", 2**-20), g(r, "memory_reduction"), g(r, "compressed_compression_ratio"),
          g(r, "compressed_stages"), g(r, "compressed_fidelity"), r.get("compressed_fidelity_reference", "-")]
         if "skipped" not in r else [r["circuit"], r["qubits"], "skipped: " + r["skipped"]] + ["-"] * 8
         for r in rows])
    t2 = bench.markdown_table(
        ["circuit", "qubits", "seconds", "peak GiB", "dense GiB", "stages", "final ratio", "fidelity",
         "within memory"],
        [[r["circuit"], r["qubits"], r["seconds"], r["peak_bytes"] / GIB, r["dense_bytes"] / GIB, r["stages"],
          r["compression_ratio"], r["fidelity"], r["within_memory"]] for r in large])
    aer = limits["qiskit_aer"] or {}
    md = (f"# BMQSim: dense vs compressed simulation\n\n`{payload['machine']['command']}` on "
          f"{payload['machine']['platform']}; settings {payload['settings']}.\n\n## Memory and time\n\n{t1}\n\n"
          f"## Past the dense limit ({limits['memory_gib']} GiB)\n\n{t2}\n\n"
          f"- dense complex64 (model, 2^n x 8 B): at most {limits['dense_complex64_model_max_qubits']} qubits\n"
          f"- qiskit-aer single precision (model): at most {aer.get('model_max_qubits')} qubits; asked for "
          f"{aer.get('asked_qubits')}: refused={aer.get('refused')} ({aer.get('status')})\n"
          f"- compressed, largest run completed per circuit: {limits['compressed_max_qubits_run']}\n")
    bench.write_results(out, "bmqsim_memory", payload, md)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in CIRCUITS:
        pts = [r for r in rows if r.get("circuit") == name and "compressed_seconds" in r]
        if not pts:
            continue
        q = [r["qubits"] for r in pts]
        a.semilogy(q, [r["compressed_peak_bytes"] / 2**20 for r in pts], "o-", label=f"{name} compressed")
        b.semilogy(q, [r["compressed_seconds"] for r in pts], "o-", label=f"{name} compressed")
        if any("dense_seconds" in r for r in pts):
            b.semilogy([r["qubits"] for r in pts if "dense_seconds" in r],
                       [r["dense_seconds"] for r in pts if "dense_seconds" in r], "x--", label=f"{name} dense")
    qs = sorted({r["qubits"] for r in rows if "qubits" in r})
    a.semilogy(qs, [(1 << q) * 8 / 2**20 for q in qs], "k--", label="dense state")
    a.set_xlabel("qubits"), a.set_ylabel("peak MiB"), b.set_xlabel("qubits"), b.set_ylabel("seconds")
    a.legend(fontsize=6), b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
