"""ALTO's two scheduling levels (arXiv 2604.05426, "Scheduling"): which adapters run together inside one tuning task,
and when and on which devices each task runs.

Intra-task: a task trains many LoRA adapters over one frozen backbone, each adapter with its own batch size; the
adapters' sequences are concatenated into one total batch B of sequences of length L. Device memory follows a
measured linear model M(B) = k0 + k1 B L (k0: weights, optimizer state, workspace; k1: activations per token),
fitted to XLA's accounting of the compiled train step at a few B (`measure_memory`, `MemoryModel.fit`). Queued
configurations are admitted greedily, largest batch first, while the predicted memory with a safety margin stays
within the budget (`MemoryModel.capacity`, `admit`); when an adapter exits early, its slot is back-filled with
configurations of the same batch size first, so the total batch, and with it the compiled step's shapes, stays put.

Inter-task: tasks (a backbone with its grid of adapters) need g_i devices each for an estimated d_i =
samples_i / throughput_i; `plan` places them on G identical devices minimising the makespan with OR-Tools CP-SAT
(strip packing, devices need not be contiguous), around tasks already running; `simulate` re-plans on every
arrival and completion, as ALTO does, with tasks whose real durations differ from their estimates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qrjax.bench import program_bytes

# ---------------------------------------------------------------------------------------------------------------
# Intra-task: memory model and greedy admission
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """M(B) = k0 + k1 B L bytes for a total batch of B sequences of length L."""

    k0: float
    k1: float

    def predict(self, batch: float, seq_len: float) -> float:
        """Predicted bytes for a total batch of `batch` sequences of length `seq_len` (scalars or numpy arrays)."""
        return self.k0 + self.k1 * np.multiply(batch, seq_len)

    @classmethod
    def fit(cls, points: Sequence[tuple[int, int, float]]) -> MemoryModel:
        """Least-squares fit of k0, k1 to measured (batch, seq_len, bytes) points (`measure_memory`'s output).
        Needs at least two distinct products batch * seq_len."""
        if not points:
            raise ValueError("MemoryModel.fit: no points")
        arr = np.asarray([tuple(p) for p in points], dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"MemoryModel.fit: points must be (batch, seq_len, bytes) triples, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("MemoryModel.fit: points hold non-finite values")
        tokens = arr[:, 0] * arr[:, 1]
        if np.unique(tokens).size < 2:
            raise ValueError(f"MemoryModel.fit: needs points at >= 2 distinct batch*seq_len, got {sorted(set(tokens))}")
        design = np.stack([np.ones_like(tokens), tokens], axis=1)
        (k0, k1), *_ = np.linalg.lstsq(design, arr[:, 2], rcond=None)
        return cls(float(k0), float(k1))

    def r_squared(self, points: Sequence[tuple[int, int, float]]) -> float:
        """Coefficient of determination of the model on (batch, seq_len, bytes) points (1.0: explains them all)."""
        arr = np.asarray([tuple(p) for p in points], dtype=np.float64)
        resid = arr[:, 2] - self.predict(arr[:, 0], arr[:, 1])
        total = arr[:, 2] - arr[:, 2].mean()
        ss_tot = float(total @ total)
        return 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float(np.all(resid == 0))

    def capacity(self, budget_bytes: float, seq_len: int, margin: float = 0.1) -> int:
        """Largest total batch B >= 0 with M(B) (1 + margin) <= budget_bytes; 0 when not even B = 1 fits."""
        if not budget_bytes > 0:
            raise ValueError(f"capacity: budget_bytes must be > 0, got {budget_bytes}")
        if not (isinstance(seq_len, int | np.integer) and seq_len >= 1):
            raise ValueError(f"capacity: seq_len must be a positive integer, got {seq_len!r}")
        if not (margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"capacity: margin must be finite and >= 0, got {margin}")
        if not self.k1 > 0:
            raise ValueError(f"capacity: the model's k1 must be > 0 (memory growing with the batch), got {self.k1}")

        def fits(b: int) -> bool:
            return self.predict(b, seq_len) * (1 + margin) <= budget_bytes

        b = max(0, math.floor((budget_bytes / (1 + margin) - self.k0) / (self.k1 * seq_len)))
        # the closed form can be one off either way in floating point: settle it against the definition
        while b > 0 and not fits(b):
            b -= 1
        while fits(b + 1):
            b += 1
        return b


def measure_memory(build_compiled: Callable[[int], Any], batches: Sequence[int],
                   seq_len: int) -> list[tuple[int, int, int]]:
    """(B, seq_len, bytes) for each total batch B in `batches`: build_compiled(B) returns the train step compiled for
    a total batch of B sequences of length seq_len (`jax.jit(step).lower(...).compile()`, a `jax.stages.Compiled`),
    and bytes is XLA's accounting of it (`qrjax.bench.program_bytes`: arguments + outputs + temporaries - donated).
    Feed the result to `MemoryModel.fit`."""
    batches = list(batches)
    if not batches:
        raise ValueError("measure_memory: no batches")
    bad = [b for b in batches if not (isinstance(b, int | np.integer) and b >= 1)]
    if bad:
        raise ValueError(f"measure_memory: batches must be positive integers, got {bad}")
    points = []
    for b in batches:
        nbytes = program_bytes(build_compiled(int(b)))
        if nbytes <= 0:
            raise ValueError(f"measure_memory: the backend reports no memory analysis for the program at batch {b}")
        points.append((int(b), int(seq_len), nbytes))
    return points


def _batch(item, i: int) -> int:
    b = item if isinstance(item, int | np.integer) else getattr(item, "batch", None)
    if not (isinstance(b, int | np.integer) and b >= 1):
        raise ValueError(f"admit: queue[{i}] must be a positive int or have a positive int .batch, got {item!r}")
    return int(b)


def admit(queue: Sequence[Any], live_batches: Sequence[int], capacity: int, free_slots: int, *,
          prefer_batch: int | None = None) -> list[int]:
    """Which queued adapter configurations to start now: indices into `queue`, in admission order.

    queue: configurations, each a positive int (its batch size) or an object with a positive int `.batch`.
    live_batches: batch sizes of the adapters already running; capacity: the largest total batch memory allows
    (`MemoryModel.capacity`); free_slots: how many adapters may still be added (e.g. slots of the compiled step).
    Greedy: configurations in order of descending batch size (queue order among equals), each admitted when it fits
    in what is left of the capacity (one that does not fit is passed over for smaller ones), until the slots run
    out. prefer_batch = b (the batch size of an adapter that just exited): configurations of batch size b come
    first, so a back-filled slot keeps the step's shapes."""
    sizes = [_batch(q, i) for i, q in enumerate(queue)]
    for name, v in (("capacity", capacity), ("free_slots", free_slots)):
        if not (isinstance(v, int | np.integer) and v >= 0):
            raise ValueError(f"admit: {name} must be a non-negative integer, got {v!r}")
    live = list(live_batches)
    if any(not (isinstance(b, int | np.integer) and b >= 0) for b in live):
        raise ValueError(f"admit: live_batches must be non-negative integers, got {live}")
    left = int(capacity) - int(sum(live))
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i] != prefer_batch, -sizes[i], i))
    chosen = []
    for i in order:
        if len(chosen) == free_slots:
            break
        if sizes[i] <= left:
            chosen.append(i)
            left -= sizes[i]
    return chosen


# ---------------------------------------------------------------------------------------------------------------
# Inter-task: CP-SAT placement
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A tuning task: it needs `devices` devices at once for `duration` time units (samples / throughput)."""

    name: str
    devices: int
    duration: float


@dataclasses.dataclass(frozen=True)
class Placement:
    """Task `name` runs on `devices` (device indices in [0, G)) from `start` to `end`."""

    name: str
    start: float
    end: float
    devices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """placements: the fixed (running) tasks as given, then the new tasks in input order; makespan: the latest
    end (at least `now`); optimal: CP-SAT proved the makespan optimal (at the tick resolution, see `plan`)."""

    placements: list[Placement]
    makespan: float
    optimal: bool


def _check_tasks(tasks: Sequence[TaskSpec], num_devices: int, where: str) -> None:
    seen = set()
    for t in tasks:
        if not isinstance(t, TaskSpec):
            raise ValueError(f"{where}: tasks must be TaskSpec, got {t!r}")
        if t.name in seen:
            raise ValueError(f"{where}: task name {t.name!r} appears twice")
        seen.add(t.name)
        if not (isinstance(t.devices, int | np.integer) and t.devices >= 1):
            raise ValueError(f"{where}: task {t.name!r} needs a positive integer device count, got {t.devices!r}")
        if t.devices > num_devices:
            raise ValueError(f"{where}: task {t.name!r} needs {t.devices} devices, but there are {num_devices}")
        if not (isinstance(t.duration, int | float | np.number) and math.isfinite(t.duration) and t.duration > 0):
            raise ValueError(f"{where}: task {t.name!r} needs a finite positive duration, got {t.duration!r}")


def _check_devices(num_devices: int, where: str) -> None:
    if not (isinstance(num_devices, int | np.integer) and num_devices >= 1):
        raise ValueError(f"{where}: num_devices must be a positive integer, got {num_devices!r}")


def _ticks(span: float, ticks_per_unit: int) -> int:
    # rounding to 6 decimals first keeps 0.1 * 1000 = 100.00000000000001 at 100 ticks, not 101
    return math.ceil(round(span * ticks_per_unit, 6))


def _greedy(dur: list[int], dem: list[int], free_from: list[int]) -> tuple[list[int], list[tuple[int, ...]]]:
    """A feasible schedule (starts in ticks, devices) without holes: longest work first, each task on the devices
    that free up earliest. CP-SAT's hint, and the plan when CP-SAT finds nothing within its time limit."""
    free_from = list(free_from)
    starts, devs = [0] * len(dur), [()] * len(dur)
    for i in sorted(range(len(dur)), key=lambda i: (-dur[i] * dem[i], i)):
        pick = sorted(range(len(free_from)), key=lambda g: (free_from[g], g))[:dem[i]]
        starts[i] = max(free_from[g] for g in pick)
        devs[i] = tuple(sorted(pick))
        for g in pick:
            free_from[g] = starts[i] + dur[i]
    return starts, devs


def plan(tasks: Sequence[TaskSpec], num_devices: int, *, fixed: Sequence[Placement] = (), now: float = 0.0,
         time_limit_s: float = 10.0, ticks_per_unit: int = 1000, workers: int | None = None) -> Plan:
    """Place `tasks` on `num_devices` identical devices, starting at or after `now`, minimising the makespan.

    Each task i gets a start s_i and a set of exactly devices_i devices (any, not necessarily adjacent) that it holds
    from s_i to s_i + duration_i; two tasks sharing a device never overlap in time. fixed: tasks already running,
    kept as they are (their devices until their `end`; one ending at or before `now` holds nothing); re-planning on
    an arrival or a completion at time t is `plan(not_yet_started, fixed=running, now=t)`.

    Time resolution: CP-SAT works in integers, so durations are rounded *up* to whole ticks of 1/ticks_per_unit time
    units (a plan never books less than the estimate), as are the fixed tasks' remaining times; starts fall on
    ticks after `now`. The makespan is optimal for the rounded durations: within (tasks on the critical chain) ticks
    of the true optimum, and exact when durations are multiples of a tick. Reported ends are start + duration.
    Coarser ticks let CP-SAT prove optimality sooner on larger instances (about ten tasks on 8 devices prove in
    under a second at 10-100 ticks per unit on 2 CPU cores; a dozen long chains may not within 10 s).
    time_limit_s: CP-SAT's limit; on timeout the best plan found is returned with optimal=False.
    workers: CP-SAT's parallel workers (None: its default, one per core); 1 makes plans reproducible run to run.
    Raises ValueError naming the task for a task needing more devices than exist, a non-positive or non-finite
    duration, duplicate names, or a fixed placement on unknown or shared devices."""
    from ortools.sat.python import cp_model  # deferred: the intra-task half needs no solver

    _check_devices(num_devices, "plan")
    tasks, fixed = list(tasks), list(fixed)
    _check_tasks(tasks, num_devices, "plan")
    if not math.isfinite(now):
        raise ValueError(f"plan: now must be finite, got {now}")
    if not (isinstance(ticks_per_unit, int | np.integer) and ticks_per_unit >= 1):
        raise ValueError(f"plan: ticks_per_unit must be a positive integer, got {ticks_per_unit!r}")
    if not time_limit_s > 0:
        raise ValueError(f"plan: time_limit_s must be > 0, got {time_limit_s}")
    names = {t.name for t in tasks}
    holder: dict[int, str] = {}  # device -> the fixed task holding it after now
    fixed_ticks = []
    for p in fixed:
        if p.name in names:
            raise ValueError(f"plan: fixed task {p.name!r} is also among the tasks to place")
        if not (p.devices and all(isinstance(g, int | np.integer) and 0 <= g < num_devices for g in p.devices)
                and len(set(p.devices)) == len(p.devices)):
            raise ValueError(f"plan: fixed task {p.name!r} has devices {p.devices}: need distinct indices in "
                             f"[0, {num_devices})")
        if not math.isfinite(p.end):
            raise ValueError(f"plan: fixed task {p.name!r} has a non-finite end {p.end}")
        ticks = max(0, _ticks(p.end - now, ticks_per_unit))
        fixed_ticks.append(ticks)
        if ticks > 0:
            for g in p.devices:
                if g in holder:
                    raise ValueError(f"plan: fixed tasks {holder[g]!r} and {p.name!r} both hold device {g} after "
                                     f"now = {now}")
                holder[g] = p.name

    def done(starts: list[int], devs: list[tuple[int, ...]], optimal: bool) -> Plan:
        placed = [Placement(t.name, now + s / ticks_per_unit, now + s / ticks_per_unit + t.duration, d)
                  for t, s, d in zip(tasks, starts, devs)]
        placements = fixed + placed
        return Plan(placements, max([now] + [p.end for p in placements]), optimal)

    if not tasks:
        return done([], [], True)
    dur = [max(1, _ticks(t.duration, ticks_per_unit)) for t in tasks]
    dem = [int(t.devices) for t in tasks]
    horizon = max(fixed_ticks, default=0) + sum(dur)  # everything one after another, after the fixed tasks
    if horizon > 2**40:
        raise ValueError(f"plan: the horizon of {horizon} ticks is too long for CP-SAT; lower ticks_per_unit "
                         f"({ticks_per_unit})")
    free_from = [0] * num_devices
    for p, ticks in zip(fixed, fixed_ticks):
        for g in p.devices:
            free_from[g] = max(free_from[g], ticks)
    hint_starts, hint_devs = _greedy(dur, dem, free_from)

    # The paper states the model with big-M disjunctions: binaries x_ig (task i on device g), y_ij (i before j) and
    # s_i + d_i <= s_j + M (3 - x_ig - x_jg - y_ij). Here each (task, device) pair is an optional interval present
    # iff x_ig, and every device carries a NoOverlap over its intervals: the same feasible set (two tasks on a
    # common device are disjoint in time), but CP-SAT propagates NoOverlap directly (edge finding, disjunctive
    # reasoning) instead of relaxing weak big-M rows, which is what lets it prove optimality in well under a second
    # for ALTO's few tasks per re-plan. A redundant Cumulative over all tasks (demand devices_i, capacity G) adds
    # the energy bound that per-device constraints miss: the devices are interchangeable, and without it the
    # search cannot close the gap (tests/lora: 6 tasks on 4 devices around running ones unproven after 10 s).
    m = cp_model.CpModel()
    starts = [m.new_int_var(0, horizon - d, f"start_{i}") for i, d in enumerate(dur)]
    on = [[m.new_bool_var(f"on_{i}_{g}") for g in range(num_devices)] for i in range(len(tasks))]
    per_device: list[list] = [[] for _ in range(num_devices)]
    whole, demands = [], []
    for i, (s, d) in enumerate(zip(starts, dur)):
        m.add(sum(on[i]) == dem[i])
        for g in range(num_devices):
            per_device[g].append(m.new_optional_fixed_size_interval_var(s, d, on[i][g], f"run_{i}_{g}"))
        whole.append(m.new_fixed_size_interval_var(s, d, f"task_{i}"))
        demands.append(dem[i])
    for f, (p, ticks) in enumerate(zip(fixed, fixed_ticks)):
        if ticks == 0:
            continue
        iv = m.new_fixed_size_interval_var(0, ticks, f"fixed_{f}")
        for g in p.devices:
            per_device[g].append(iv)
        whole.append(iv)
        demands.append(len(p.devices))
    for intervals in per_device:
        m.add_no_overlap(intervals)
    m.add_cumulative(whole, demands, num_devices)
    cmax = m.new_int_var(max(fixed_ticks, default=0), horizon, "cmax")
    for s, d in zip(starts, dur):
        m.add(cmax >= s + d)
    m.minimize(cmax)
    for i in range(len(tasks)):
        m.add_hint(starts[i], hint_starts[i])
        for g in range(num_devices):
            m.add_hint(on[i][g], g in hint_devs[i])

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.random_seed = 0
    if workers is not None:
        solver.parameters.num_workers = int(workers)
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return done(hint_starts, hint_devs, False)
    return done([solver.value(s) for s in starts],
                [tuple(g for g in range(num_devices) if solver.boolean_value(on[i][g])) for i in range(len(tasks))],
                status == cp_model.OPTIMAL)


def simulate(arrivals: Sequence[tuple[float, TaskSpec]], num_devices: int,
             actual_durations: Mapping[str, float] | None = None, *, time_limit_s: float = 10.0,
             ticks_per_unit: int = 1000, workers: int | None = None,
             on_plan: Callable[[float, Plan], None] | None = None) -> list[Placement]:
    """Run tasks arriving over time on `num_devices` devices, re-planning (`plan`) on every arrival and completion.

    arrivals: (arrival time, task) pairs, any order. The planner sees the tasks' estimated durations; a task runs
    for actual_durations[name] where given (else its estimate) and frees its devices at that actual time. A task
    starts when the current plan says so and its devices are free; one still running past its estimate is planned
    as ending one tick later, and tasks waiting for its devices start at the re-plan after it completes.
    on_plan(t, plan): called after every re-plan. Returns every task's placement with its actual start and end,
    sorted by start then name."""
    _check_devices(num_devices, "simulate")
    arrivals = sorted(((float(t), task) for t, task in arrivals), key=lambda a: a[0])
    _check_tasks([task for _, task in arrivals], num_devices, "simulate")
    for t, task in arrivals:
        if not math.isfinite(t):
            raise ValueError(f"simulate: task {task.name!r} has a non-finite arrival time {t}")
    actual = {task.name: float(task.duration) for _, task in arrivals}
    for name, d in (actual_durations or {}).items():
        if name not in actual:
            raise ValueError(f"simulate: actual_durations names {name!r}, which never arrives")
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"simulate: task {name!r} has a non-positive or non-finite actual duration {d}")
        actual[name] = float(d)

    pending: list[TaskSpec] = []
    running: dict[str, tuple[Placement, float]] = {}  # name -> (placement with the estimated end, actual end)
    finished: list[Placement] = []
    planned: dict[str, Placement] = {}
    k, t = 0, (arrivals[0][0] if arrivals else 0.0)
    while k < len(arrivals) or pending or running:
        changed = False
        for name in [n for n, (_, end) in running.items() if end <= t]:
            p, end = running.pop(name)
            finished.append(dataclasses.replace(p, end=end))
            changed = True
        while k < len(arrivals) and arrivals[k][0] <= t:
            pending.append(arrivals[k][1])
            k += 1
            changed = True
        if changed and pending:
            tick = 1.0 / ticks_per_unit
            fixed = [dataclasses.replace(p, end=max(p.end, t + tick)) for p, _ in running.values()]
            result = plan(pending, num_devices, fixed=fixed, now=t, time_limit_s=time_limit_s,
                          ticks_per_unit=ticks_per_unit, workers=workers)
            if on_plan is not None:
                on_plan(t, result)
            waiting = {task.name for task in pending}
            planned = {p.name: p for p in result.placements if p.name in waiting}
        busy = {g for p, _ in running.values() for g in p.devices}
        for task in list(pending):
            p = planned[task.name]
            if p.start <= t and busy.isdisjoint(p.devices):
                running[task.name] = (Placement(task.name, t, t + task.duration, p.devices), t + actual[task.name])
                busy.update(p.devices)
                pending.remove(task)
        upcoming = [end for _, end in running.values()] + [planned[task.name].start for task in pending
                                                           if planned[task.name].start > t]
        if k < len(arrivals):
            upcoming.append(arrivals[k][0])
        if not upcoming:
            # a pending task always has a future start or a running task in its way
            assert not pending, f"simulate: tasks {[task.name for task in pending]} can never start"
            break
        t = min(upcoming)
    return sorted(finished, key=lambda p: (p.start, p.name))
