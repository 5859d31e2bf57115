"""Benchmark plumbing shared by every script in experiments/: machine facts, timing, XLA program accounting, JSON +
Markdown output.

Timing follows the project's rules, and `interleaved` implements them: a warm-up call of every variant measured apart
(compile + first run), `block_until_ready` on every result, the variants A, B, C, ... run once each per round so that
drifts of the machine (other processes, clocks, caches) hit them alike, and medians quoted; a ratio between two
variants is the median over rounds of the per-round ratio, not a ratio of medians. `program_bytes` and
`program_flops` read XLA's own accounting of a compiled program.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import jax

T = TypeVar("T")


def machine_info() -> dict:
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
    }


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def _timed(fn: Callable[[], Any], *, wait: bool = True, clock: Callable[[], float] = time.perf_counter):
    """(result, wall seconds) of one call, `block_until_ready` on its arrays inside the timing when `wait`."""
    start = clock()
    out = fn()
    if wait:
        block(out)
    return out, clock() - start


def compile_seconds(fn: Callable, *args) -> float:
    """Time of the first call (trace + compile + one run)."""
    return _timed(lambda: fn(*args))[1]


def seconds(fn: Callable, *args, repeats: int = 1) -> float:
    """Median wall time of `repeats` calls of an already warm function (one variant: see `interleaved` for A/B)."""
    return statistics.median(_timed(lambda: fn(*args))[1] for _ in range(repeats))


@dataclasses.dataclass(frozen=True)
class Timings(Generic[T]):
    """What `interleaved` measured. Variant names keep the order of the mapping given to it.

    seconds: per variant, one time per round (round order).
    warmup_seconds: per variant, the wall time of each warm-up call; the first is trace + compile + one run.
    results: per variant, the result of its call in the last round.
    order: every timed call's variant name, in the order the calls ran (rounds x variants)."""

    seconds: dict[Hashable, list[float]]
    warmup_seconds: dict[Hashable, list[float]]
    results: dict[Hashable, T]
    order: tuple[Hashable, ...]

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    @property
    def first_call_seconds(self) -> dict[Hashable, float]:
        """Per variant, the first warm-up call's seconds (compile + one run; nan without warm-up)."""
        return {k: (v[0] if v else float("nan")) for k, v in self.warmup_seconds.items()}

    def median(self, name: Hashable) -> float:
        """Median seconds of `name` over the rounds."""
        return statistics.median(self.seconds[name])

    @property
    def medians(self) -> dict[Hashable, float]:
        return {k: self.median(k) for k in self.seconds}

    def round_ratios(self, a: Hashable, b: Hashable) -> list[float]:
        """seconds[a] / seconds[b] of each round: how many times longer a took than b in that round."""
        return [ta / tb for ta, tb in zip(self.seconds[a], self.seconds[b])]

    def ratio(self, a: Hashable, b: Hashable) -> float:
        """Median over rounds of seconds[a] / seconds[b]; with a the reference (baseline), the speedup of b."""
        return statistics.median(self.round_ratios(a, b))

    def speedups(self, reference: Hashable) -> dict[Hashable, float]:
        """Per variant v, `ratio(reference, v)`: the median over rounds of the per-round speedup of v over the
        reference (1.0 for the reference itself)."""
        return {k: self.ratio(reference, k) for k in self.seconds}


def interleaved(fns: Mapping[Hashable, Callable[[], T]], *, rounds: int, warmup: int = 1,
                warmup_fns: Mapping[Hashable, Callable[[], Any]] | None = None,
                seconds: Callable[[T], float] | None = None, host: Collection[Hashable] = (),
                progress: bool | str = False, clock: Callable[[], float] = time.perf_counter) -> Timings[T]:
    """Time variants A, B, C, ... (the callables of `fns`, no arguments) interleaved round by round.

    First `warmup` warm-up rounds call every variant once each (in the mapping's order), each call's wall time kept
    apart in `Timings.warmup_seconds` (the first one is the compile / first-call time); `warmup_fns[name]`, where
    given, replaces fns[name] for the warm-up calls (e.g. a run on a few inputs that compiles every shape the timed
    run uses). Then `rounds` rounds call A, B, C, ... once each in that order. Every result goes through
    `block_until_ready` (every jax array in its pytree) before the clock stops.

    host: variants whose results hold no jax arrays (e.g. a peer library's decoded words as Python lists): their
        results are not walked for arrays (the walk is timed with the call, and takes time in proportion to the
        result's leaves: a noticeable part of the call for tens of thousands of them).
    seconds: where a result carries its own timing (e.g. SuperGen's stage-2 seconds, which leave compilation and
        the sketch out), a function of the result that returns it; the timed rounds then use it instead of the
        wall time of the call. Warm-up times are always wall times.
    progress: show a tqdm bar over the timed rounds (on stderr); a string is the bar's description.
    clock: the timer (tests pass a fake one).
    Returns a `Timings`: per-round seconds, medians, ratios as medians of per-round ratios, and the last round's
    results."""
    if rounds < 1:
        raise ValueError(f"interleaved: rounds must be at least 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"interleaved: warmup must be >= 0, got {warmup}")
    if not fns:
        raise ValueError("interleaved: no variants to time")
    unknown = set(warmup_fns or {}) - set(fns)
    if unknown:
        raise ValueError(f"interleaved: warmup_fns names variants that fns lacks: {sorted(map(str, unknown))}")
    names = list(fns)
    warm = {k: [] for k in names}
    for _ in range(warmup):
        for k in names:
            warm[k].append(_timed((warmup_fns or {}).get(k, fns[k]), wait=k not in host, clock=clock)[1])
    times: dict[Hashable, list[float]] = {k: [] for k in names}
    results: dict[Hashable, T] = {}
    order = []
    steps = range(rounds)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=progress if isinstance(progress, str) else "timing rounds", leave=False)
    for _ in steps:
        for k in names:
            out, elapsed = _timed(fns[k], wait=k not in host, clock=clock)
            times[k].append(float(seconds(out)) if seconds is not None else elapsed)
            results[k] = out
            order.append(k)
    return Timings(times, warm, results, tuple(order))


def program_bytes(compiled, temp_only: bool = False) -> int:
    """Peak device bytes XLA accounts for a compiled program (`jax.jit(f).lower(...).compile()`): arguments
    (weights included) + outputs + temporaries - aliased (donated) buffers; temp_only: the temporaries alone
    (activations and scratch). 0 when the backend does not report a memory analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    if temp_only:
        return int(m.temp_size_in_bytes)
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def program_flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (0 when the backend does not report one); a [M, K] @ [K, N] matmul
    counts 2 M N K. Loop bodies (lax.map, fori_loop) are counted once, not per trip: use it on straight-line
    programs such as one model call."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COLLECTIVE_RE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE_RE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")


def collective_bytes(compiled) -> dict[str, int]:
    """Bytes each kind of collective carries in a compiled program (`jax.jit(f).lower(...).compile()`), read from
    its HLO: {"all-gather": ..., "all-reduce": ..., ...}, each the sum of the ops' result buffers per device (an
    all-gather's gathered buffer, an all-reduce's reduced one, a reduce-scatter's scattered share). For the bytes a
    ring moves per device over K devices: all-gather (K-1)/K x, all-reduce 2 (K-1)/K x, reduce-scatter (K-1) x."""
    out: dict[str, int] = {}
    for line in compiled.as_text().splitlines():
        m = _COLLECTIVE_RE.search(line)
        if not m or "=" not in line[:m.start()]:
            continue
        # `%name = <result shape, a tuple for several operands> op(...)`
        shapes = _SHAPE_RE.findall(line[line.index("=") + 1:m.start()])
        if m.group(2) and m.group(1) == "all-gather" and len(shapes) > 1:
            shapes = shapes[len(shapes) // 2:]  # an async all-gather's result tuple is (operands, results)
        size = sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in shapes)
        out[m.group(1)] = out.get(m.group(1), 0) + size
    return out


def write_results(out_dir: str | Path, name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write <name>.json and <name>.md under out_dir; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
