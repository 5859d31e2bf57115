"""qrjax.compression against SZ3 (pysz) and ZFP (zfpy): ratio, throughput and max error at equal bounds, one run.

    python experiments/compression_vs_peers.py                 # the issue's setting (2^20-amplitude states, 128^3 field)
    python experiments/compression_vs_peers.py --qubits 12 --field 24 --embed-rows 256 --repeats 1   # smoke test

Writes experiments/results/compression_vs_peers.{json,md,png}.

Data: quantum states from `qrjax.quantum` (GHZ, QFT of |1010...>, a random U3+CZ brickwork of depth 8), a smooth 3-D
field (float32), and embedding-like pooled lookups (float32 [batch, 32]: Zipf-skewed sums of uniform-initialised rows,
the DLRM all-to-all payload). Every compressor gets the same real float32 arrays (complex states as their real and
imaginary parts, one 1-D array each, sizes summed) and the same absolute bound e = eps (max - min), the value range
taken over all parts of the data set, at eps = 1e-2, 1e-3, 1e-4 (SZ3 ABS mode with e; ZFP fixed-accuracy tolerance
e; qrjax mode "abs" with e). Ratio = raw float32 bytes /
compressed bytes; throughput = raw bytes / median wall time over `--repeats` (after a warm-up call), compression
including qrjax's serialisation and zstd. Extra rows: qrjax on the complex state itself (bound on |a_hat - a|, both
complex representations) and in point-wise relative mode, which neither peer offers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math

import numpy as np
from tqdm.auto import tqdm

from qrjax import bench
from qrjax.compression import Compressed, bound_violations, compress, decompress, max_error_ratio

EPS = (1e-2, 1e-3, 1e-4)


# ----------------------------------------------------------------------------------------------------------- data


def quantum_states(n: int) -> dict[str, np.ndarray]:
    from qrjax.quantum import build, simulate

    return {f"{name.upper()}-{n}": np.asarray(simulate(build(name, n))) for name in ("ghz", "qft", "random")}


def smooth_field(side: int) -> np.ndarray:
    g = np.linspace(0, 1, side, dtype=np.float32)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    f = np.sin(6 * x) * np.cos(4 * y) + np.exp(-((x - 0.5) ** 2 + (y - 0.3) ** 2 + (z - 0.6) ** 2) * 20) + 0.3 * z**2
    return f.astype(np.float32)


def embeddings(rows: int, batch: int = 2048, dim: int = 32, pooling: int = 4, seed: int = 0) -> np.ndarray:
    """Sum-pooled rows of a uniform(-1/sqrt(rows), 1/sqrt(rows)) table, indices Zipf(1.2)-skewed."""
    rng = np.random.default_rng(seed)
    table = rng.uniform(-1, 1, (rows, dim)).astype(np.float32) / math.sqrt(rows)
    idx = (rng.zipf(1.2, (batch, pooling)) - 1) % rows
    return table[idx].sum(axis=1)


# ------------------------------------------------------------------------------------------------------ codecs


def _timed(fn, repeats):
    """-> (fn's output, median seconds of `repeats` calls after a warm-up call that compiles)."""
    return fn(), bench.seconds(fn, repeats=repeats)


def run_qrjax(x, bound, mode, repeats, **kw):
    def comp():
        c = compress(x, bound, mode, **kw)
        return c.to_bytes()

    blob, tc = _timed(comp, repeats)
    y, td = _timed(lambda: np.asarray(decompress(Compressed.from_bytes(blob))), repeats)
    return len(blob), tc, td, y


def run_sz3(x, e, repeats):
    from pysz import sz, szConfig, szErrorBoundMode

    def comp():
        conf = szConfig()
        conf.errorBoundMode = szErrorBoundMode.ABS
        conf.absErrorBound = e
        return sz.compress(x, conf)[0]

    blob, tc = _timed(comp, repeats)
    y, td = _timed(lambda: sz.decompress(blob, x.dtype, x.shape)[0], repeats)
    return blob.nbytes, tc, td, y


def run_zfp(x, e, repeats):
    import zfpy

    blob, tc = _timed(lambda: zfpy.compress_numpy(x, tolerance=e), repeats)
    y, td = _timed(lambda: zfpy.decompress_numpy(blob), repeats)
    return len(blob), tc, td, y


def peers() -> dict:
    found = {}
    for name, module, fn in (("SZ3", "pysz", run_sz3), ("ZFP", "zfpy", run_zfp)):
        try:
            __import__(module)
            found[name] = (fn, importlib.metadata.version(module))
        except ImportError:
            print(f"[compression_vs_peers] {module} is not installed: {name} rows are skipped")
    return found


def measure(name, arrays, eps, compressor, fn, repeats, mode, check_parts=None):
    """One row: arrays are compressed one by one (sizes and times summed), errors checked against the bound."""
    raw = sum(a.nbytes for a in arrays)
    nbytes = tc = td = 0.0
    worst, violations = 0.0, 0
    for a in arrays:
        if mode == "pw_rel":
            bound = eps
        else:
            lo = min(float(np.min(p)) for p in (check_parts or arrays))
            hi = max(float(np.max(p)) for p in (check_parts or arrays))
            bound = eps * (hi - lo) if hi > lo else eps
        size, c, d, y = fn(a, bound)
        nbytes, tc, td = nbytes + size, tc + c, td + d
        check = "pw_rel" if mode == "pw_rel" else "abs"
        worst = max(worst, max_error_ratio(a, y, bound, check))
        violations += bound_violations(a, y, bound, check)
    return {"data": name, "eps": eps, "mode": mode, "compressor": compressor, "ratio": raw / nbytes,
            "compress_GBps": raw / tc / 1e9, "decompress_GBps": raw / td / 1e9, "max_err_over_bound": worst,
            "violations": violations, "raw_bytes": raw, "compressed_bytes": int(nbytes)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qubits", type=int, default=20)
    ap.add_argument("--field", type=int, default=128, help="side of the 3-D field")
    ap.add_argument("--embed-rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="experiments/results")
    args = ap.parse_args(argv)

    found = peers()
    datasets = {}
    for name, state in quantum_states(args.qubits).items():
        datasets[name] = ("state", state)
    datasets[f"field-{args.field}^3"] = ("field", smooth_field(args.field))
    datasets[f"embedding-{args.embed_rows // 1000}k"] = ("embedding", embeddings(args.embed_rows))

    jobs = []
    for name, (kind, x) in datasets.items():
        parts = [np.ascontiguousarray(x.real), np.ascontiguousarray(x.imag)] if np.iscomplexobj(x) else [x]
        parts = [p.astype(np.float32) for p in parts]
        predictor = "none" if kind == "embedding" else "lorenzo"
        for eps in EPS:
            jobs.append((name, eps, "qrjax", lambda a, b, p=predictor: run_qrjax(a, b, "abs", args.repeats,
                                                                               predictor=p), parts, "rel"))
            for peer, (fn, _) in found.items():
                jobs.append((name, eps, peer, lambda a, b, fn=fn: fn(a, b, args.repeats), parts, "rel"))
            if kind == "state":
                for rep in ("cartesian", "polar"):
                    if rep == "cartesian":
                        jobs.append((name, eps, "qrjax complex cartesian (|a|-bound, range-rel)",
                                     lambda a, b: run_qrjax(a, b, "abs", args.repeats, complex_as="cartesian"),
                                     [x], "rel-complex"))
                    jobs.append((name, eps, f"qrjax complex {rep} (pw_rel)",
                                 lambda a, b, r=rep: run_qrjax(a, b, "pw_rel", args.repeats, complex_as=r),
                                 [x], "pw_rel"))
            else:
                jobs.append((name, eps, "qrjax (pw_rel)",
                             lambda a, b, p=predictor: run_qrjax(a, b, "pw_rel", args.repeats, predictor=p),
                             parts, "pw_rel"))
    rows = []
    for name, eps, comp, fn, arrays, mode in tqdm(jobs, desc="compression_vs_peers", unit="run"):
        if mode == "rel-complex":  # bound on |a_hat - a| from the range of the parts
            x = arrays[0]
            e = eps * max(np.ptp(x.real), np.ptp(x.imag))
            size, tc, td, y = fn(x, e)
            rows.append({"data": name, "eps": eps, "mode": "rel (on |a|)", "compressor": comp,
                         "ratio": x.real.astype(np.float32).nbytes * 2 / size, "compress_GBps": x.nbytes / tc / 1e9,
                         "decompress_GBps": x.nbytes / td / 1e9, "max_err_over_bound": max_error_ratio(x, y, e, "abs"),
                         "violations": bound_violations(x, y, e, "abs"), "raw_bytes": x.nbytes,
                         "compressed_bytes": size})
            continue
        rows.append(measure(name, arrays, eps, comp, fn, args.repeats, mode,
                            check_parts=arrays if mode == "rel" else None))

    summary = []
    for name, (kind, _) in datasets.items():
        for eps in EPS:
            get = {r["compressor"]: r for r in rows if r["data"] == name and r["eps"] == eps and r["mode"] == "rel"}
            if "SZ3" in get:
                summary.append({"data": name, "eps": eps, "ratio_vs_sz3": get["qrjax"]["ratio"] / get["SZ3"]["ratio"],
                                "compress_speed_vs_sz3": get["qrjax"]["compress_GBps"] / get["SZ3"]["compress_GBps"],
                                "kind": kind})
    payload = {"machine": bench.machine_info(), "peers": {k: v for k, (_, v) in found.items()},
               "settings": vars(args), "rows": rows, "summary_vs_sz3": summary}
    header = ["data", "eps", "mode", "compressor", "ratio", "comp GB/s", "decomp GB/s", "max err/bound", "violations"]
    table = bench.markdown_table(header, [[r["data"], r["eps"], r["mode"], r["compressor"], r["ratio"],
                                           r["compress_GBps"], r["decompress_GBps"], r["max_err_over_bound"],
                                           r["violations"]] for r in rows])
    stable = bench.markdown_table(["data", "eps", "qrjax ratio / SZ3 ratio", "qrjax comp speed / SZ3"],
                                  [[s["data"], s["eps"], s["ratio_vs_sz3"], s["compress_speed_vs_sz3"]]
                                   for s in summary])
    md = (f"# qrjax.compression vs SZ3 and ZFP\n\n`{payload['machine']['command']}` on {payload['machine']['platform']}"
          f" ({payload['machine'].get('cpu_count', '?')} CPUs), peers {payload['peers']}.\n\n"
          "Same float32 arrays and value-range relative bound for every compressor (complex states as real and "
          "imaginary parts); ratio = raw float32 bytes / compressed bytes.\n\n## Against SZ3\n\n" + stable +
          "\n\n## All rows\n\n" + table + "\n")
    bench.write_results(args.out, "compression_vs_peers", payload, md)
    plot(rows, datasets, f"{args.out}/compression_vs_peers.png")
    print(stable)
    return 0


def plot(rows, datasets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 4.0), squeeze=False)
    comps = sorted({r["compressor"] for r in rows})
    colour = {c: f"C{i}" for i, c in enumerate(comps)}  # one colour per compressor across the panels
    for ax, name in zip(axes[0], datasets):
        for comp in comps:
            pts = sorted((r["eps"], r["ratio"]) for r in rows if r["data"] == name and r["compressor"] == comp)
            if pts:
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=comp, ms=3, color=colour[comp])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("bound eps")
        ax.invert_xaxis()
    axes[0][0].set_ylabel("compression ratio")
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
