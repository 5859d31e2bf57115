"""The quantum suite: every MQT Bench family and qiskit's library circuits, as OpenQASM 2 files, through qrjax (dense
and compressed) against qiskit-aer: fidelity, seconds, ratios, dense speed at 20-26 qubits, largest size in 24 GiB.

    python experiments/quantum_suite.py                # default grid and budgets: about 30 minutes on the 2-core CPU
    python experiments/quantum_suite.py --sizes 4 8 12 16 20 --budget 0   # a finer grid (estimated 35-40 minutes)
    python experiments/quantum_suite.py --sizes all --budget 0 --max-gates 0 --row-timeout 0   # everything (hours)
    python experiments/quantum_suite.py --quick        # smoke test: a few families at <= 6 qubits (under a minute)

Writes experiments/results/quantum_suite.{json,md,png} (rewritten after every row, so an interrupted run keeps what
it finished); the QASM files go to --cache and are reused. Progress bars on stderr; the last line on stdout is a
JSON summary.

Inputs. Every family of `mqt.bench.benchmarks.get_available_benchmark_names()` at the sizes it offers up to
--max-qubits (found by trying; some take only multiples or fixed sizes: shor 18, seven_qubit_steane_code 13,
shors_nine_qubit_code 17), target-independent level (`get_benchmark(name, BenchmarkLevel.INDEP, n)`), plus qiskit's
library circuits (`qrjax.quantum.suite.library_circuits()`), all written by `qiskit.qasm2.dumps` and read back from
the SAME file by qrjax (`load_qasm`) and by qiskit (`qasm2.load` with LEGACY_CUSTOM_INSTRUCTIONS, final measurements
removed). The default grid takes, per family, the offered sizes nearest 4, 12, 20 (--sizes: other targets, or all).

Per circuit, a row: status ok; error, with the step that failed (generate, qiskit parse, qrjax parse, aer double
reference, aer single / qrjax dense timing, qrjax compressed) and the error text; or skipped, with the reason (no
size offered, more than --max-gates gates, --budget spent, a smaller size timed out). Never dropped. Dynamic
circuits (mid-circuit measurement, classical control: no single final state) are flagged. Measured: the fidelity
|<aer|psi>|^2 of qrjax dense complex64 and of qrjax compressed (pw_rel 1e-3, blocks and groups scaled to the
circuit: `suite.compressed_config`) against Aer's double-precision state; the seconds of qrjax dense, qrjax
compressed and Aer single precision (`max_parallel_threads` = the cores JAX uses, recorded). qrjax's seconds are the
summary's `seconds` of `qrjax.quantum.cli.run`, the simulation; its `compile_seconds` (first call) gives the "with
compile" column (where a simulator does not report it, the first call's time, compile + one run, stands in). Aer
and qrjax dense are timed interleaved after a warm-up call of each (`qrjax.bench.interleaved`, --rounds), the ratio
Aer / qrjax the median of the per-round ratios (> 1: qrjax faster). The compressed run is timed once (twice, the
first a warm-up, where its summary has no compile_seconds). Aer runs a circuit prepared once (user gates unrolled to
qiskit's standard gates, transpiled at optimization level 0; its own fusion on, as shipped); preparation is not
timed.

Rows run size-major (every family at its smallest grid size first), so that when --budget runs out the largest
sizes are the ones skipped. A row past --row-timeout stops at the next Python step (between compiled chunks and
stages, not inside one XLA compile), is an error, and its family's larger sizes are skipped.

Dense speed (--speed-families at --speed-sizes, 20-26 qubits; no compressed run, the check is the fidelity to Aer's
single-precision state): Aer / qrjax dense per family and size, medians per size and overall, with and without
compile; the issue's target is a median >= 1.0. Size-major, cheapest family first, within --speed-budget.

Largest size within --limit-memory-gib (24): for --limit-circuits, dense qrjax, compressed qrjax and Aer, sizes
--limit-start, +--limit-step, ... --limit-max, size-major; each attempt a subprocess with --limit-timeout, its peak
RSS the child's VmHWM, killed when its RSS passes the limit (or 80% of the machine's memory, whichever is lower); a
dense or Aer size whose state alone passes that is not attempted. A series stops at its first failure; the part
stops when --limit-budget is spent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the repository's qrjax wins
    sys.path.insert(0, str(ROOT))

from qrjax import bench  # noqa: E402

GIB = 1 << 30
# The default grid: per family, the offered sizes nearest these. On the 2-core CPU (every family read, --max-gates
# 2500) the rows at the sizes nearest 4 took 9 s together, 12: 44 s, 20: 607 s: up to 14 qubits the dense simulator
# runs one program for every circuit, above that it compiles each circuit (10-50 ms per gate), so 16 would cost
# about as much as 20 again.
GRID = (4, 12, 20)
# Dense speed at 20-26 qubits: families with at most about a thousand gates at 26 qubits as qrjax reads them (ghz 26,
# bv 37, graphstate 52, qnn 77, wstate 101, vqe_su2 179, qft 336, qpeexact 366, qaoa 378, randomcircuit 1251), cheapest
# first so that the budget, if it runs out, cuts the costliest 26-qubit rows. See SPEED_WHY.
SPEED_FAMILIES = ("ghz", "bv", "graphstate", "qnn", "wstate", "vqe_su2", "qft", "qpeexact", "qaoa", "randomcircuit")
SPEED_SIZES = (20, 22, 24, 26)
LIMIT_CIRCUITS = ("ghz", "qft", "bv", "lib:random_circuit")  # lib: a library circuit
LIMIT_KINDS = ("dense", "compressed", "aer")
QUICK_FAMILIES = ("ghz", "qft", "dj", "qaoa", "dynamic_qft", "shor")
QUICK_LIBRARY = ("qft", "grover_operator")
KILL_SHARE = 0.8  # of the machine's memory: an attempt is killed before the kernel's OOM killer acts on anyone
TARGET_DENSE = 1 - 1e-5
TARGET_COMPRESSED = 0.99


class RowTimeout(Exception):
    pass


class RowSkipped(Exception):
    """A row not run, for the reason given (listed as skipped)."""


def jax_threads() -> int:
    """The cores XLA's CPU client sizes its thread pool by (the process's CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------- one circuit


def _run_qrjax(circuit, compressed: bool, config=None):
    from qrjax.quantum.cli import run

    t0 = time.perf_counter()
    summary, final = run(circuit, compressed=compressed, config=config, dtype=np.complex64, check=False,
                         progress=False)
    return {"seconds": float(summary["seconds"]), "wall": time.perf_counter() - t0, "summary": summary,
            "state": final}


def measure(path, *, threads: int, rounds: int, compressed: bool = True, reference: bool = True,
            max_gates: int = 0) -> dict:
    """The measurements of one QASM file (see the module docstring); raises on the first failing step, the row's
    `stage` set on the exception as `err.stage`."""
    from qrjax.quantum import fidelity, load_qasm, suite

    row: dict = {}
    stage = "qiskit parse"
    try:
        try:
            qc = suite.qiskit_circuit(path)
            row["qiskit_parses"] = True
        except Exception as err:  # noqa: BLE001 -- recorded: qrjax should refuse the file too
            qc, row["qiskit_parses"], row["qiskit_error"] = None, False, f"{type(err).__name__}: {err}"
        if qc is not None:
            row["qubits"] = qc.num_qubits
            dyn = suite.dynamic_ops(qc)
            if dyn:
                row["dynamic"] = dyn
        stage = "qrjax parse"
        circuit = load_qasm(path)
        row.update(qubits=circuit.num_qubits, gates=len(circuit.gates))
        if max_gates and len(circuit.gates) > max_gates:
            raise RowSkipped(f"{len(circuit.gates)} gates > --max-gates {max_gates}: minutes to hours here (at 20 "
                             f"qubits compiling took 10-50 ms per gate on the 2-core CPU; grover-12's 15,762 gates "
                             f"took 115 s, mostly compressed)")
        if qc is None:
            stage = "qiskit parse"
            raise ValueError(f"qrjax reads the file, qiskit does not: {row['qiskit_error']}")
        if row.get("dynamic"):
            stage = "dynamic circuit"
            raise ValueError(f"dynamic circuit ({', '.join(row['dynamic'])} before the end): no single final state "
                             f"vector to compare")
        ref = None
        if reference:
            stage = "aer double reference"
            ref = suite.aer_runner(qc, precision="double", threads=threads)()
        stage = "aer single / qrjax dense timing"
        aer = suite.aer_runner(qc, precision="single", threads=threads)

        def aer_call():
            t0 = time.perf_counter()
            state = aer()
            return {"seconds": time.perf_counter() - t0, "state": state}

        first = {}

        def dense_first():
            first["dense"] = _run_qrjax(circuit, False)
            return first["dense"]

        t = bench.interleaved({"aer": aer_call, "dense": lambda: _run_qrjax(circuit, False)}, rounds=rounds,
                              warmup=1, warmup_fns={"dense": dense_first}, host=("aer",),
                              seconds=lambda r: r["seconds"])
        dense_first_summary = first["dense"]["summary"]
        row.update(dense_method=dense_first_summary.get("method"), dense_passes=dense_first_summary.get("passes"))
        row.update(seconds_aer=t.median("aer"), seconds_dense=t.median("dense"),
                   ratio_aer_over_dense=t.ratio("aer", "dense"), rounds=rounds,
                   seconds_aer_rounds=t.seconds["aer"], seconds_dense_rounds=t.seconds["dense"])
        if dense_first_summary.get("compile_seconds") is not None:
            row["compile_seconds_dense"] = float(dense_first_summary["compile_seconds"])
            row["seconds_dense_with_compile"] = row["compile_seconds_dense"] + row["seconds_dense"]
            row["compile_source"] = "summary compile_seconds"
        else:
            row["seconds_dense_with_compile"] = t.first_call_seconds["dense"]
            row["compile_source"] = "first call (compile + one run)"
        row["ratio_aer_over_dense_with_compile"] = row["seconds_aer"] / row["seconds_dense_with_compile"]
        dense_state = t.results["dense"]["state"]
        if ref is not None:
            row["fidelity_dense"] = fidelity(ref, dense_state)
        else:
            row["fidelity_dense_vs_aer_single"] = fidelity(t.results["aer"]["state"], dense_state)
        del dense_state, t
        if compressed:
            stage = "qrjax compressed"
            config = suite.compressed_config(circuit.num_qubits,
                                             widest_gate=max(len(g.qubits) for g in circuit.gates))
            run1 = _run_qrjax(circuit, True, config)
            if run1["summary"].get("compile_seconds") is None:
                row["seconds_compressed_first_call"] = run1["wall"]
                run1 = _run_qrjax(circuit, True, config)
            else:
                row["compile_seconds_compressed"] = float(run1["summary"]["compile_seconds"])
            s = run1["summary"]
            row.update(seconds_compressed=run1["seconds"], ratio_aer_over_compressed=row["seconds_aer"] /
                       run1["seconds"], block_qubits=config.block_qubits, group_qubits=config.group_qubits,
                       stages=s.get("stages"), compression_ratio=s.get("compression_ratio"),
                       peak_bytes_compressed=s.get("peak_bytes"))
            if ref is not None:
                row["fidelity_compressed"] = fidelity(ref, run1["state"].to_dense())
    except BaseException as err:
        try:  # the caller's row keeps the step that failed and what was measured before it
            err.stage, err.partial = stage, row
        except AttributeError:  # an exception type without a __dict__
            pass
        raise
    return row


def run_row(source: str, family: str, size: int, args, threads: int, *, compressed=True, reference=True,
            rounds=None) -> dict:
    """One row: generate the file, measure it; every failure becomes the row's error, never an exception."""
    from qrjax.quantum import suite

    row = {"source": source, "family": family, "size": size, "status": "error", "stage": "generate", "error": None}
    t0 = time.perf_counter()
    timer = _arm(args.row_timeout)
    try:
        if source == "mqt":
            path = suite.write_family_qasm(family, size, args.cache)
        else:
            path = suite.write_library_qasm(family, size, args.cache)
        row["file"] = path.name
        note = suite.file_note(path)
        if note:
            row["note"] = note
        row.update(measure(path, threads=threads, rounds=rounds or args.rounds, compressed=compressed,
                           reference=reference, max_gates=args.max_gates))
        row.update(status="ok", stage=None)
    except RowSkipped as err:
        row.update(getattr(err, "partial", {}))
        row.update(status="skipped", stage=None, error=str(err))
    except RowTimeout:
        row.update(getattr(sys.exc_info()[1], "partial", {}))
        row.update(stage=getattr(sys.exc_info()[1], "stage", row["stage"]), timeout=True,
                   error=f"timeout: the row passed --row-timeout {args.row_timeout:g} s")
    except Exception as err:  # noqa: BLE001 -- a row records its error and the run goes on
        row.update(getattr(err, "partial", {}))
        if getattr(err, "dynamic", None):  # a generation failure because the circuit is dynamic
            row["dynamic"] = err.dynamic
        row.update(stage=getattr(err, "stage", row["stage"]), error=f"{type(err).__name__}: {err}"[:2000])
    finally:
        _disarm(timer)
    row["row_seconds"] = time.perf_counter() - t0
    return row


def _arm(seconds: float | None):
    """Raise RowTimeout in the main thread after `seconds` (checked between Python steps: between the simulator's
    gate chunks and stages, not inside one XLA compile)."""
    if not seconds or not hasattr(signal, "setitimer"):
        return None

    def handler(signum, frame):
        raise RowTimeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def _disarm(old):
    if old is None:
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------------------------------- planning


def plan_rows(args) -> tuple[list[tuple[str, str, int]], list[dict]]:
    """(jobs (source, family, size) in size-major order, rows already decided: families without a size)."""
    from qrjax.quantum import suite

    per_family: list[tuple[str, str, list[int]]] = []
    decided = []
    for family in tqdm(args.families, desc="quantum_suite: sizes offered", unit="family", leave=False):
        try:
            offered = suite.mqt_sizes(family, args.max_qubits)
        except Exception as err:  # noqa: BLE001
            decided.append({"source": "mqt", "family": family, "size": None, "status": "error", "stage": "sizes",
                            "error": f"{type(err).__name__}: {err}"})
            continue
        sizes = sorted(offered) if args.sizes == ["all"] else suite.nearest_sizes(offered, args.grid)
        if not sizes:
            decided.append({"source": "mqt", "family": family, "size": None, "status": "skipped", "stage": "sizes",
                            "error": f"no size offered at <= {args.max_qubits} qubits"})
            continue
        per_family.append(("mqt", family, sizes))
    library = suite.library_circuits()
    for name in args.library:
        if name not in library:
            decided.append({"source": "library", "family": name, "size": None, "status": "error", "stage": "sizes",
                            "error": f"unknown library circuit; known: {', '.join(library)}"})
            continue
        offered = range(library[name], args.max_qubits + 1)
        sizes = list(offered) if args.sizes == ["all"] else suite.nearest_sizes(offered, args.grid)
        per_family.append(("library", name, sizes))
    jobs = []
    for level in range(max((len(s) for _, _, s in per_family), default=0)):  # size-major: smallest sizes first
        jobs += [(src, fam, sizes[level]) for src, fam, sizes in per_family if level < len(sizes)]
    return jobs, decided


def run_main(args, threads, rows: list, save) -> None:
    """The per-circuit table, appended to `rows` as it goes."""
    jobs, decided = plan_rows(args)
    rows += decided
    failed: set[tuple[str, str]] = set()
    start = time.perf_counter()
    bar = tqdm(jobs, desc="quantum_suite: circuits", unit="circuit")
    for src, fam, size in bar:
        bar.set_postfix_str(f"{fam} {size}")
        if (src, fam) in failed:
            rows.append({"source": src, "family": fam, "size": size, "status": "skipped", "stage": None,
                         "error": "a smaller size of this family timed out"})
            continue
        spent = time.perf_counter() - start
        if args.budget and spent > args.budget:
            rows.append({"source": src, "family": fam, "size": size, "status": "skipped", "stage": None,
                         "error": f"--budget {args.budget:g} s spent"})
            continue
        row = run_row(src, fam, size, args, threads)
        if row.get("timeout"):
            failed.add((src, fam))
        rows.append(row)
        tqdm.write(_row_line(row), file=sys.stderr)
        save()


def _row_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['family']} {r['size']}: {r['status']} ({r.get('stage')}): {str(r.get('error'))[:160]}"
    if "fidelity_dense" not in r:  # a speed row
        return (f"{r['family']} {r['size']}: F dense vs aer single {r['fidelity_dense_vs_aer_single']:.7f}; s aer "
                f"{r['seconds_aer']:.3g} dense {r['seconds_dense']:.3g} (+compile "
                f"{r['seconds_dense_with_compile']:.3g}); aer/dense {r['ratio_aer_over_dense']:.2f}")
    return (f"{r['family']} {r['size']}: F dense {r['fidelity_dense']:.7f} compressed "
            f"{r.get('fidelity_compressed', float('nan')):.5f}; s aer {r['seconds_aer']:.3g} dense "
            f"{r['seconds_dense']:.3g} compressed {r.get('seconds_compressed', float('nan')):.3g}; aer/dense "
            f"{r['ratio_aer_over_dense']:.2f}")


def run_speed(args, threads, main_rows, rows: list, save) -> None:
    """Dense speed rows at --speed-sizes, appended to `rows` (no compressed run; the check is the fidelity to Aer's
    single-precision state)."""
    from qrjax.quantum import suite

    reuse = {(r["family"], r["size"]): r for r in main_rows if r["source"] == "mqt" and r["status"] == "ok"}
    jobs = []
    for family in args.speed_families:
        try:
            offered = suite.mqt_sizes(family, max(args.speed_sizes), min_size=min(args.speed_sizes))
        except Exception as err:  # noqa: BLE001
            rows.append({"source": "mqt", "family": family, "size": None, "status": "error", "stage": "sizes",
                         "error": f"{type(err).__name__}: {err}"})
            continue
        for n in args.speed_sizes:
            if n in offered and offered[n] == n:
                jobs.append((n, family))
            else:
                rows.append({"source": "mqt", "family": family, "size": n, "status": "skipped", "stage": "sizes",
                             "error": f"size {n} not offered as {n} qubits"})
    order = {f: i for i, f in enumerate(args.speed_families)}
    jobs.sort(key=lambda j: (j[0], order[j[1]]))  # size-major, then in the order given (cheapest first)
    failed = set()
    start = time.perf_counter()
    for n, family in tqdm(jobs, desc="quantum_suite: dense speed", unit="circuit"):
        if (family, n) in reuse:
            rows.append(dict(reuse[(family, n)], reused_from="main table"))
            continue
        if family in failed or (args.speed_budget and time.perf_counter() - start > args.speed_budget):
            why = "a smaller size failed or timed out" if family in failed else f"--speed-budget " \
                                                                                f"{args.speed_budget:g} s spent"
            rows.append({"source": "mqt", "family": family, "size": n, "status": "skipped", "stage": None,
                         "error": why})
            continue
        row = run_row("mqt", family, n, args, threads, compressed=False, reference=False,
                      rounds=args.speed_rounds)
        if row["status"] != "ok":
            failed.add(family)
        rows.append(row)
        tqdm.write("speed " + _row_line(row), file=sys.stderr)
        save()


# ------------------------------------------------------------------------------------- largest size in memory


def attempt(kind: str, path: str, memory_gib: float, threads: int) -> dict:
    """One limit attempt, run in its own process (--attempt): simulate the file, return what to print."""
    from qrjax.quantum import load_qasm, suite

    if kind == "aer":
        qc = suite.qiskit_circuit(path)
        # no saved state: copying it out (as complex128) would add 3x the state to the peak
        runner = suite.aer_runner(qc, precision="single", threads=threads, save_state=False,
                                  max_memory_mb=int(memory_gib * 1024))
        t0 = time.perf_counter()
        runner()
        return {"seconds": time.perf_counter() - t0, "qubits": qc.num_qubits, "peak_rss_bytes": _status("VmHWM")}
    circuit = load_qasm(path)
    config = (suite.compressed_config(circuit.num_qubits, widest_gate=max(len(g.qubits) for g in circuit.gates))
              if kind == "compressed" else None)
    out = _run_qrjax(circuit, kind == "compressed", config)
    s = out["summary"]
    return {"seconds": out["seconds"], "qubits": circuit.num_qubits, "compile_seconds": s.get("compile_seconds"),
            "peak_bytes": s.get("peak_bytes"), "compression_ratio": s.get("compression_ratio"),
            "peak_rss_bytes": _status("VmHWM")}


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _status(field: str, pid: int | str = "self") -> int:
    """A byte count from /proc/<pid>/status (VmRSS: resident now; VmHWM: the peak since the process started its
    program; 0 where unreadable). Not getrusage's ru_maxrss for a child: Linux carries the parent's peak into it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_attempt(kind: str, path: Path, args, threads: int, timeout: float, kill_bytes: int, *,
                budget_cut: bool = False) -> dict:
    """Run one attempt in a subprocess under a wall-clock limit and an RSS watchdog -> record. `budget_cut`: the
    limit is what was left of --limit-budget, not --limit-timeout (said so in the error)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--attempt", kind, str(path), "--limit-memory-gib",
           str(args.limit_memory_gib), "--threads", str(threads)]
    t0 = time.perf_counter()
    # files, not pipes: a child that writes more than a pipe holds would block while nobody reads
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)
    why = None
    peak_seen = 0
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_seen = max(peak_seen, _status("VmRSS", proc.pid))
        elapsed = time.perf_counter() - t0
        if peak_seen > kill_bytes or elapsed > timeout:
            why = (f"memory: RSS passed {kill_bytes / GIB:.1f} GiB" if peak_seen > kill_bytes else
                   f"timeout: {timeout:.0f} s" + (" (what was left of --limit-budget)" if budget_cut else ""))
            proc.kill()
            pid, status = os.waitpid(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    out_f.seek(0), err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    out_f.close(), err_f.close()
    # the child's own VmHWM when it finished, else the largest RSS the watchdog saw (polled every 0.05 s)
    rec = {"kind": kind, "wall_seconds": time.perf_counter() - t0, "peak_rss_bytes": peak_seen}
    if why:
        rec.update(status="error", error=why)
    else:
        try:
            printed = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            printed = {"error": f"exit {proc.returncode}, no result printed: {err.strip()[-600:]}"}
        if proc.returncode == 0 and "error" not in printed:
            rec.update(printed, status="ok")
        else:
            rec.update(status="error", error=printed.get("error") or f"exit {proc.returncode}: {err.strip()[-600:]}")
    return rec


def _limit_file(name: str, n: int, cache) -> Path:
    from qrjax.quantum import suite

    if name.startswith("lib:"):
        return suite.write_library_qasm(name[4:], n, cache)
    return suite.write_family_qasm(name, n, cache)


def run_limits(args, threads, series: list, save) -> None:
    """The largest-size series, appended to `series`: size-major (every series at the first size, then the next),
    so that a spent budget shortens every series alike; a series stops at its first failure."""
    from qrjax.quantum import suite

    limit_bytes = args.limit_memory_gib * GIB
    mem_total = _mem_total()
    kill_bytes = int(min(limit_bytes, KILL_SHARE * mem_total)) if mem_total else int(limit_bytes)
    start = time.perf_counter()
    series += [{"circuit": c, "kind": k, "attempts": [], "largest_ok": None, "stopped": None}
               for c in args.limit_circuits for k in args.limit_kinds]
    sizes = list(range(args.limit_start, args.limit_max + 1, args.limit_step))
    bar = tqdm(total=len(series) * len(sizes), desc="quantum_suite: largest size", unit="attempt")
    for n in sizes:
        for s in series:
            bar.update()
            if s["stopped"]:
                continue
            left = args.limit_budget - (time.perf_counter() - start) if args.limit_budget else args.limit_timeout
            if left < 5:
                s["stopped"] = f"{n} qubits not attempted: --limit-budget {args.limit_budget:g} s spent"
                continue
            model = suite.state_bytes(n) if s["kind"] != "compressed" else 0
            if model > kill_bytes:
                s["stopped"] = (f"{n} qubits not attempted: the state alone needs {model / GIB:.0f} GiB > "
                                f"{kill_bytes / GIB:.1f} GiB allowed here ({args.limit_memory_gib:g} GiB limit, "
                                f"{mem_total / GIB:.1f} GiB machine)")
                continue
            try:
                path = _limit_file(s["circuit"], n, args.cache)
            except Exception as err:  # noqa: BLE001
                s["stopped"] = f"{n} qubits: {type(err).__name__}: {err}"[:600]
                continue
            rec = run_attempt(s["kind"], path, args, threads, min(args.limit_timeout, left), kill_bytes,
                              budget_cut=left < args.limit_timeout)
            rec["qubits"] = n
            s["attempts"].append(rec)
            tqdm.write(f"limit {s['circuit']} {s['kind']} {n}: {rec['status']} {rec.get('error', '')[:120]} "
                       f"({rec['wall_seconds']:.0f} s, peak RSS {rec['peak_rss_bytes'] / GIB:.2f} GiB)",
                       file=sys.stderr)
            save()
            if rec["status"] != "ok":
                s["stopped"] = f"{n} qubits: {rec['error'][:300]}"
            else:
                s["largest_ok"] = n
    bar.close()
    for s in series:
        if not s["stopped"]:
            s["stopped"] = f"reached --limit-max {args.limit_max}"


# --------------------------------------------------------------------------------------------------- summaries


def _median(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def summarize(rows, speed, limits) -> dict:
    mqt = [r for r in rows if r["source"] == "mqt"]
    families = sorted({r["family"] for r in mqt})
    per_family = {}
    for fam in families:
        rs = [r for r in mqt if r["family"] == fam]
        ran = [r for r in rs if r["status"] != "skipped"]
        ok = [r for r in ran if r["status"] == "ok"]
        per_family[fam] = {
            "sizes_run": [r["size"] for r in ran], "sizes_ok": [r["size"] for r in ok],
            "dynamic": any(r.get("dynamic") for r in rs),
            "parse_ok": bool(ran) and all(r.get("stage") not in ("qrjax parse", "generate") for r in ran),
            "dense_ok": bool(ran) and len(ok) == len(ran) and all(r.get("fidelity_dense", 0) >= TARGET_DENSE
                                                                   for r in ok),
            "compressed_ok": bool(ok) and all(r.get("fidelity_compressed", 0) >= TARGET_COMPRESSED for r in ok),
        }
    static = [f for f in families if not per_family[f]["dynamic"]]
    speed_ok = [r for r in speed if r["status"] == "ok" and r.get("qubits")]
    by_size = {}
    for r in speed_ok:
        by_size.setdefault(r["qubits"], []).append(r)
    speed_summary = {
        "per_size": {n: {"median_ratio": _median([r["ratio_aer_over_dense"] for r in rs]),
                         "median_ratio_with_compile": _median([r["ratio_aer_over_dense_with_compile"] for r in rs]),
                         "families": [r["family"] for r in rs]} for n, rs in sorted(by_size.items())},
        "overall_median_ratio": _median([r["ratio_aer_over_dense"] for r in speed_ok]),
        "overall_median_ratio_with_compile": _median([r["ratio_aer_over_dense_with_compile"] for r in speed_ok]),
        "circuits": len(speed_ok),
    }
    ok_rows = [r for r in rows if r["status"] == "ok"]
    targets = {
        "mqt_families": len(families), "mqt_dynamic_families": [f for f in families if per_family[f]["dynamic"]],
        "mqt_families_parse_and_match": [f for f in families if per_family[f]["dense_ok"]],
        "mqt_static_families_parse_and_match": sum(per_family[f]["dense_ok"] for f in static),
        "mqt_static_families": len(static),
        "parse_and_match_met": all(per_family[f]["dense_ok"] for f in families),
        "parse_and_match_met_static": all(per_family[f]["dense_ok"] for f in static),
        "dense_speed_met": (speed_summary["overall_median_ratio"] or 0) >= 1.0,
        "compressed_rows_ok": sum(r.get("fidelity_compressed", 0) >= TARGET_COMPRESSED for r in ok_rows),
        "compressed_rows": sum("fidelity_compressed" in r for r in ok_rows),
        "compressed_met": bool(ok_rows) and all(r.get("fidelity_compressed", 0) >= TARGET_COMPRESSED
                                                for r in ok_rows),
        "qiskit_accepts_qrjax_refuses": [f"{r['family']} {r['size']}" for r in rows
                                         if r.get("qiskit_parses") and r.get("stage") == "qrjax parse"],
    }
    return {"per_family": per_family, "speed": speed_summary, "targets": targets,
            "limits": {f"{s['circuit']} {s['kind']}": s["largest_ok"] for s in limits}}


def _fmt(v, kind="g"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "inf":  # infidelity 1 - F
        return f"{max(0.0, 1 - v):.1e}"
    if kind == "s":
        return f"{v:.3g}"
    if kind == "x":
        return f"{v:.2f}"
    return str(v)


def _cell(text, limit=220) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "...") if len(text) > limit else text.replace("|", "\\|")


def write_markdown(payload, out) -> str:
    rows, speed, limits, summ = payload["rows"], payload["speed"], payload["limits"], payload["summary"]
    tg = summ["targets"]
    m = payload["machine"]
    lines = [
        "# Quantum suite: MQT Bench and qiskit library circuits, qrjax against qiskit-aer", "",
        f"`{m['command']}` on {m['platform']} ({m['cpu_count']} cores), jax {m['jax']}, qiskit "
        f"{payload['versions'].get('qiskit')}, qiskit-aer {payload['versions'].get('qiskit-aer')}, mqt-bench "
        f"{payload['versions'].get('mqt.bench')}; Aer single precision with max_parallel_threads = "
        f"{payload['threads']} (the cores JAX uses). Fidelities against Aer's double-precision state; ratios are Aer "
        f"seconds / qrjax seconds (> 1: qrjax faster), medians of per-round ratios of interleaved runs. Compressed: "
        f"pw_rel 1e-3, b = max(n/2, n-6) block qubits, k = max((n-b)/2, widest gate) group qubits. Run time "
        f"{payload['wall_seconds'] / 60:.1f} min.", "",
        "## Targets", "",
        bench.markdown_table(["target", "measured", "met"], [
            ["MQT Bench families at <= 20 qubits parse and match Aer (dense 1-F <= 1e-5, every size run)",
             f"{len(tg['mqt_families_parse_and_match'])} of {tg['mqt_families']} families; without the "
             f"{len(tg['mqt_dynamic_families'])} dynamic ones: {tg['mqt_static_families_parse_and_match']} of "
             f"{tg['mqt_static_families']}", "yes" if tg["parse_and_match_met"] else
             ("without the dynamic families" if tg["parse_and_match_met_static"] else "no")],
            [f"dense qrjax at least as fast as Aer at {_sizes(payload['settings']['speed_sizes'])} qubits "
             f"(median Aer/qrjax >= 1.0)",
             f"{_fmt(summ['speed']['overall_median_ratio'], 'x')} (compile included: "
             f"{_fmt(summ['speed']['overall_median_ratio_with_compile'], 'x')}) over "
             f"{summ['speed']['circuits']} circuits", "yes" if tg["dense_speed_met"] else "no"],
            ["compressed (pw_rel 1e-3) fidelity >= 0.99 on every circuit run",
             f"{tg['compressed_rows_ok']} of {tg['compressed_rows']} circuits",
             "yes" if tg["compressed_met"] else "no"],
        ]), "",
        f"Dynamic MQT Bench families (mid-circuit measurement or classical control: no single final state "
        f"vector): {', '.join(tg['mqt_dynamic_families']) or 'none'}.", "",
        f"Files qiskit reads and qrjax refuses: {len(tg['qiskit_accepts_qrjax_refuses'])}"
        + (f" ({', '.join(tg['qiskit_accepts_qrjax_refuses'][:60])}"
           f"{', ...' if len(tg['qiskit_accepts_qrjax_refuses']) > 60 else ''})" if
           tg['qiskit_accepts_qrjax_refuses'] else "") + ".", "",
        "![ratio and fidelity](quantum_suite.png)", "",
        "## Per family (MQT Bench)", "",
        bench.markdown_table(["family", "sizes ok", "sizes failed", "sizes skipped", "worst 1-F dense",
                              "worst 1-F compressed", "parse and match", "dynamic"],
                             [_family_row(f, v, rows) for f, v in summ["per_family"].items()]), "",
        "## Per circuit", "",
        "1-F: infidelity against Aer double. Seconds: simulation (qrjax: the summary's `seconds`); \"+compile\": "
        "with the compile (the summary's compile_seconds, else the first call).", "",
    ]
    rows = sorted(rows, key=lambda r: (r["source"] != "mqt", r["family"], r.get("size") or 0))
    head = ["source", "family", "size", "qubits", "gates", "status", "1-F dense", "1-F compressed", "s qrjax dense",
            "s dense +compile", "s qrjax compressed", "s Aer single", "Aer/dense", "Aer/(dense+compile)",
            "Aer/compressed"]
    body = []
    for r in rows:
        body.append([r["source"], r["family"], _fmt(r.get("size")), _fmt(r.get("qubits")), _fmt(r.get("gates")),
                     r["status"], _fmt(r.get("fidelity_dense"), "inf"), _fmt(r.get("fidelity_compressed"), "inf"),
                     _fmt(r.get("seconds_dense"), "s"), _fmt(r.get("seconds_dense_with_compile"), "s"),
                     _fmt(r.get("seconds_compressed"), "s"), _fmt(r.get("seconds_aer"), "s"),
                     _fmt(r.get("ratio_aer_over_dense"), "x"), _fmt(r.get("ratio_aer_over_dense_with_compile"), "x"),
                     _fmt(r.get("ratio_aer_over_compressed"), "x")])
    lines += [bench.markdown_table(head, body), ""]
    bad = [r for r in rows + speed if r["status"] != "ok" and not r.get("reused_from")]
    lines += ["## Failures and skipped rows", "",
              bench.markdown_table(["part", "source", "family", "size", "status", "step", "error"],
                                   [["speed" if r in speed else "suite", r["source"], r["family"], _fmt(r.get("size")),
                                     r["status"], _fmt(r.get("stage")), _cell(r.get("error"))] for r in bad])
              if bad else "none", ""]
    notes = [r for r in rows if r.get("note")]
    if notes:
        lines += ["Files that differ from qiskit's plain dump: " +
                  "; ".join(f"{r['family']} {r['size']}: {r['note']}" for r in notes), ""]
    sp = summ["speed"]
    lines += [f"## Dense speed at {_sizes(payload['settings']['speed_sizes'])} qubits", "",
              f"Families: {', '.join(payload['settings']['speed_families'])}. {SPEED_WHY}", "",
              bench.markdown_table(["qubits", "median Aer/qrjax dense", "with compile", "families"],
                                   [[n, _fmt(v["median_ratio"], "x"), _fmt(v["median_ratio_with_compile"], "x"),
                                     ", ".join(v["families"])] for n, v in sp["per_size"].items()]
                                   + [["all", _fmt(sp["overall_median_ratio"], "x"),
                                       _fmt(sp["overall_median_ratio_with_compile"], "x"), ""]]), "",
              bench.markdown_table(["family", "qubits", "gates", "status", "s Aer single", "s qrjax dense",
                                    "s dense +compile", "Aer/dense", "Aer/(dense+compile)"],
                                   [[r["family"], _fmt(r.get("qubits") or r.get("size")), _fmt(r.get("gates")),
                                     r["status"], _fmt(r.get("seconds_aer"), "s"), _fmt(r.get("seconds_dense"), "s"),
                                     _fmt(r.get("seconds_dense_with_compile"), "s"),
                                     _fmt(r.get("ratio_aer_over_dense"), "x"),
                                     _fmt(r.get("ratio_aer_over_dense_with_compile"), "x")] for r in speed]), ""]
    lim = payload["limit_settings"]
    lines += [f"## Largest size within {lim['memory_gib']:g} GiB", "",
              f"Each attempt a subprocess with a {lim['timeout']:g} s limit, killed past {lim['kill_gib']:.1f} GiB "
              f"RSS ({lim['memory_gib']:g} GiB, or 80% of the machine's {lim['machine_gib']:.1f} GiB if lower); "
              f"sizes {lim['start']}, {lim['start'] + lim['step']}, ... up to {lim['max']}; a series stops at its "
              f"first failure; part budget {lim['budget']:g} s.", "",
              bench.markdown_table(["circuit", "simulator", "largest completed", "seconds there", "peak RSS GiB there",
                                    "stopped"],
                                   [[s["circuit"], s["kind"], _fmt(s["largest_ok"]),
                                     _fmt(_at(s, "seconds"), "s"),
                                     _fmt((_at(s, "peak_rss_bytes") or 0) / GIB, "x") if s["largest_ok"] else "-",
                                     _cell(s["stopped"], 160)] for s in limits]) if limits else "not run", ""]
    md = "\n".join(lines)
    bench.write_results(out, "quantum_suite", payload, md)
    return md


SPEED_WHY = ("At 26 qubits they have at most about a thousand gates as qrjax reads them (ghz 26, bv 37, graphstate 52, "
             "qnn 77, wstate 101, vqe_su2 179, qft 336, qpeexact 366, qaoa 378, randomcircuit 1251), run cheapest "
             "first, so that the budget, if it runs out, cuts the costliest 26-qubit rows; qft and a random circuit "
             "are the issue's own comparison. Left out: families with thousands of gates or more at 20+ qubits "
             "(qwalk, shor, grover, the multipliers), whose compilation alone takes minutes at these sizes, and the "
             "dynamic circuits (no state vector). Rows at 20 qubits are reused from the per-circuit table where it "
             "ran them.")


def _family_row(family, v, rows) -> list:
    rs = [r for r in rows if r["source"] == "mqt" and r["family"] == family]

    def sizes(status):
        return " ".join(str(r["size"]) for r in rs if r["status"] == status and r.get("size") is not None) or "-"

    dense = [r["fidelity_dense"] for r in rs if r.get("fidelity_dense") is not None]
    comp = [r["fidelity_compressed"] for r in rs if r.get("fidelity_compressed") is not None]
    return [family, sizes("ok"), sizes("error"), sizes("skipped"), _fmt(min(dense), "inf") if dense else "-",
            _fmt(min(comp), "inf") if comp else "-", "yes" if v["dense_ok"] else "no", "yes" if v["dynamic"] else ""]


def _sizes(sizes) -> str:
    return ", ".join(map(str, sizes))


def _at(series, key):
    for a in series["attempts"]:
        if a["qubits"] == series["largest_ok"] and a["status"] == "ok":
            return a.get(key)
    return None


def plot(payload, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, speed = payload["rows"], payload["speed"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    timed = [r for r in rows + speed if r["status"] == "ok" and r.get("ratio_aer_over_dense")]
    fams = sorted({r["family"] for r in timed})
    cmap = plt.get_cmap("tab20")
    for i, fam in enumerate(fams):
        pts = sorted({(r["qubits"], r["ratio_aer_over_dense"]) for r in timed if r["family"] == fam})
        style = "o-" if fam in payload["settings"]["speed_families"] else ".:"
        a.semilogy([p[0] for p in pts], [p[1] for p in pts], style, color=cmap(i % 20), label=fam, ms=4, lw=1)
    for n, v in payload["summary"]["speed"]["per_size"].items():
        if v["median_ratio"]:
            a.plot([int(n)], [v["median_ratio"]], "k*", ms=12)
    a.axhline(1.0, color="k", lw=0.8, ls="--")
    a.set_xlabel("qubits"), a.set_ylabel("Aer seconds / qrjax dense seconds (>1: qrjax faster)")
    a.set_title("dense speed (stars: median per size, 20-26 qubits)", fontsize=9)
    a.legend(fontsize=5, ncol=2)
    ok = [r for r in rows if r["status"] == "ok"]
    names = sorted({(r["source"], r["family"]) for r in rows})
    for j, key in enumerate(names):
        rs = [r for r in ok if (r["source"], r["family"]) == key]
        for field, marker, color in (("fidelity_dense", "o", "C0"), ("fidelity_compressed", "s", "C3")):
            vals = [max(1 - r[field], 1e-17) for r in rs if r.get(field) is not None]
            if vals:
                b.semilogy([j] * len(vals), vals, marker, color=color, ms=3, alpha=0.7)
        if not rs:
            b.semilogy([j], [1.0], "x", color="0.5", ms=5)
    b.axhline(1 - TARGET_DENSE, color="C0", lw=0.8, ls="--", label="dense target 1e-5")
    b.axhline(1 - TARGET_COMPRESSED, color="C3", lw=0.8, ls="--", label="compressed target 1e-2")
    b.plot([], [], "o", color="C0", label="dense complex64"), b.plot([], [], "s", color="C3", label="compressed")
    b.plot([], [], "x", color="0.5", label="no ok row (at 1.0)")
    b.set_xticks(range(len(names)), [f"{'lib:' if s == 'library' else ''}{f}" for s, f in names], rotation=90,
                 fontsize=5)
    b.set_ylabel("1 - fidelity vs Aer double (each size)")
    b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------------- main


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name, dist in (("qiskit", "qiskit"), ("qiskit-aer", "qiskit-aer"), ("mqt.bench", "mqt.bench")):
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--quick", action="store_true", help="smoke test: a few families at <= 6 qubits")
    ap.add_argument("--sizes", nargs="+", default=None,
                    help="'all' (every offered size) or target sizes: the offered size nearest each is run "
                         f"(default {' '.join(map(str, GRID))})")
    ap.add_argument("--max-qubits", type=int, default=None, help="largest circuit of the per-circuit table (20)")
    ap.add_argument("--families", nargs="*", default=None, help="MQT Bench families (default: all)")
    ap.add_argument("--library", nargs="*", default=None, help="library circuits (default: all)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds of Aer and qrjax dense (3)")
    ap.add_argument("--threads", type=int, default=None, help="Aer's max_parallel_threads (default: JAX's cores)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the per-circuit table, 0: no limit; rows after it are listed as skipped (900)")
    ap.add_argument("--row-timeout", type=float, default=None, help="seconds one circuit may take, 0: no limit (180)")
    ap.add_argument("--max-gates", type=int, default=None,
                    help="circuits with more gates (after qrjax's reading) are skipped, 0: none (16000: shor-18, "
                         "qwalk-20 and grover-20 are past it)")
    ap.add_argument("--speed-families", nargs="*", default=None,
                    help=f"MQT families of the dense speed part ({' '.join(SPEED_FAMILIES)})")
    ap.add_argument("--speed-sizes", type=int, nargs="*", default=None,
                    help=f"qubit counts of the dense speed part ({' '.join(map(str, SPEED_SIZES))})")
    ap.add_argument("--speed-rounds", type=int, default=None, help="timed rounds in the speed part (2)")
    ap.add_argument("--speed-budget", type=float, default=None, help="seconds for the speed part, 0: no limit (540)")
    ap.add_argument("--limit-circuits", nargs="*", default=None,
                    help="circuits of the memory part: MQT families, lib:NAME for a library circuit")
    ap.add_argument("--limit-kinds", nargs="*", default=None, choices=LIMIT_KINDS, help="simulators of the memory part")
    ap.add_argument("--limit-start", type=int, default=None, help="first size of each series (24)")
    ap.add_argument("--limit-step", type=int, default=None, help="qubits between sizes (2)")
    ap.add_argument("--limit-max", type=int, default=None, help="last size tried (40)")
    ap.add_argument("--limit-timeout", type=float, default=None, help="seconds per attempt (120)")
    ap.add_argument("--limit-budget", type=float, default=None, help="seconds for the memory part, 0: no limit (300)")
    ap.add_argument("--limit-memory-gib", type=float, default=24.0)
    ap.add_argument("--cache", type=Path, default=ROOT / "workdirs" / "quantum_suite_qasm",
                    help="folder of the generated QASM files (reused)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--attempt", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {
        "sizes": ["4"] if quick else [str(g) for g in GRID], "max_qubits": 6 if quick else 20,
        "families": list(QUICK_FAMILIES) if quick else None, "library": list(QUICK_LIBRARY) if quick else None,
        "rounds": 1 if quick else 3, "budget": 300 if quick else 900, "row_timeout": 120 if quick else 180,
        "max_gates": 16000,
        "speed_families": ["ghz", "qft"] if quick else list(SPEED_FAMILIES),
        "speed_sizes": [8, 9] if quick else list(SPEED_SIZES), "speed_rounds": 1 if quick else 2,
        "speed_budget": 60 if quick else 540, "limit_circuits": ["ghz"] if quick else list(LIMIT_CIRCUITS),
        "limit_kinds": list(LIMIT_KINDS), "limit_start": 10 if quick else 24, "limit_step": 2,
        "limit_max": 12 if quick else 40, "limit_timeout": 60 if quick else 120,
        "limit_budget": 90 if quick else 300,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.sizes != ["all"]:
        try:
            args.grid = [int(s) for s in args.sizes]
        except ValueError:
            ap.error(f"--sizes: 'all' or integers, got {' '.join(args.sizes)}")
    else:
        args.grid = None
    for name in ("rounds", "speed_rounds", "limit_step"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or jax_threads()
    if args.attempt:
        try:
            print(json.dumps(attempt(args.attempt[0], args.attempt[1], args.limit_memory_gib, threads)))
        except Exception as err:  # noqa: BLE001 -- the parent records it
            print(json.dumps({"error": f"{type(err).__name__}: {err}"[:1000]}))
            return 1
        return 0
    from qrjax.quantum import suite

    if args.families is None:
        args.families = suite.mqt_families()
    if args.library is None:
        args.library = list(suite.library_circuits())
    t0 = time.perf_counter()
    state = {"rows": [], "speed": [], "limits": []}
    mem_total = _mem_total()
    limit_settings = {"memory_gib": args.limit_memory_gib, "machine_gib": mem_total / GIB,
                      "kill_gib": min(args.limit_memory_gib, KILL_SHARE * mem_total / GIB) if mem_total else
                      args.limit_memory_gib, "timeout": args.limit_timeout, "budget": args.limit_budget,
                      "start": args.limit_start, "step": args.limit_step, "max": args.limit_max}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def payload():
        rows = state["rows"]
        return {"machine": bench.machine_info(), "versions": _versions(), "threads": threads, "settings": settings,
                "limit_settings": limit_settings, "wall_seconds": time.perf_counter() - t0, "rows": rows,
                "speed": state["speed"], "limits": state["limits"],
                "summary": summarize(rows, state["speed"], state["limits"])}

    def save():  # after every row: a long run's finished rows survive an interruption
        write_markdown(payload(), args.out)

    run_main(args, threads, state["rows"], save)
    save()
    run_speed(args, threads, state["rows"], state["speed"], save)
    save()
    run_limits(args, threads, state["limits"], save)
    final = payload()
    write_markdown(final, args.out)
    plot(final, Path(args.out) / "quantum_suite.png")
    t = final["summary"]["targets"]
    print(json.dumps({"rows": len(final["rows"]), "ok": sum(r["status"] == "ok" for r in final["rows"]),
                      "errors": sum(r["status"] == "error" for r in final["rows"]),
                      "skipped": sum(r["status"] == "skipped" for r in final["rows"]),
                      "families_parse_and_match": len(t["mqt_families_parse_and_match"]),
                      "families": t["mqt_families"], "speed_median_ratio": final["summary"]["speed"][
                          "overall_median_ratio"], "wall_seconds": final["wall_seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
