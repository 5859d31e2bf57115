"""ALTO's scheduling: the memory model against synthetic points (exact) and XLA's accounting of compiled programs,
capacity and admission by hand, CP-SAT's makespan against an exhaustive search, placements' feasibility, fixed
(running) tasks, and the event-driven simulation's re-planning."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.bench import program_bytes
from qrjax.lora.schedule import MemoryModel, Placement, TaskSpec, admit, measure_memory, plan, simulate

# ---------------------------------------------------------------------------------------------------------------
# memory model
# ---------------------------------------------------------------------------------------------------------------


def test_fit_recovers_the_model_from_exact_points():
    k0, k1 = 3.5e6, 1536.0
    points = [(b, seq, k0 + k1 * b * seq) for b in (1, 2, 4, 8) for seq in (16, 48)]
    model = MemoryModel.fit(points)
    assert model.k0 == pytest.approx(k0, rel=1e-12)
    assert model.k1 == pytest.approx(k1, rel=1e-12)
    assert model.r_squared(points) == pytest.approx(1.0, abs=1e-12)
    assert model.predict(3, 10) == pytest.approx(k0 + 30 * k1, rel=1e-12)


def test_fit_is_least_squares():
    rng = np.random.default_rng(0)
    points = [(int(b), 8, 1000.0 + 7.0 * b * 8 + float(rng.normal(0, 50))) for b in (1, 2, 3, 5, 8, 13)]
    tokens = np.array([b * s for b, s, _ in points], float)
    k1, k0 = np.polyfit(tokens, [y for *_, y in points], 1)
    model = MemoryModel.fit(points)
    assert (model.k0, model.k1) == pytest.approx((k0, k1), rel=1e-9)


@pytest.mark.parametrize("points", [[], [(4, 8, 100.0)], [(2, 16, 100.0), (4, 8, 120.0), (1, 32, 90.0)]],
                         ids=["none", "one", "same-tokens"])
def test_fit_needs_two_distinct_token_counts(points):
    with pytest.raises(ValueError, match="MemoryModel.fit"):
        MemoryModel.fit(points)


def tiny_step(batch: int, seq_len: int, d: int = 32, hidden: int = 128):
    """A toy train step (gradient of a one-layer tanh model) compiled for x: float32[batch, seq_len, d]: its
    activations grow with batch * seq_len."""

    def loss(w, x):
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    return jax.jit(jax.grad(loss)).lower(jax.ShapeDtypeStruct((d, hidden), jnp.float32),
                                         jax.ShapeDtypeStruct((batch, seq_len, d), jnp.float32)).compile()


def test_measured_memory_of_compiled_programs_is_linear_in_tokens():
    points = []
    for seq in (8, 16):
        got = measure_memory(lambda b: tiny_step(b, seq), [1, 2, 4, 8, 16], seq)
        assert [(b, s) for b, s, _ in got] == [(b, seq) for b in (1, 2, 4, 8, 16)]
        points += got
    assert points[3][2] == program_bytes(tiny_step(8, 8))
    model = MemoryModel.fit(points)
    tokens = np.array([b * s for b, s, _ in points], float)
    nbytes = np.array([y for *_, y in points], float)
    resid = nbytes - (model.k0 + model.k1 * tokens)
    r2 = 1 - resid @ resid / np.sum((nbytes - nbytes.mean()) ** 2)
    assert r2 > 0.99, (model, points)
    assert model.r_squared(points) == pytest.approx(r2, rel=1e-12)
    # the activations alone: x (4 bytes per token x d) is an argument, so k1 is at least that
    assert model.k1 >= 4 * 32


def test_measure_memory_rejects_bad_batches():
    with pytest.raises(ValueError, match="batches"):
        measure_memory(lambda b: tiny_step(b, 8), [], 8)
    with pytest.raises(ValueError, match="positive integers"):
        measure_memory(lambda b: tiny_step(b, 8), [2, 0], 8)


def test_capacity_by_hand():
    model = MemoryModel(k0=1000.0, k1=10.0)  # M(B) = 1000 + 40 B at L = 4
    # (1000 + 40 B) * 1.25 <= 2500  <=>  B <= 25 (every number here is exact in binary)
    assert model.capacity(2500, 4, margin=0.25) == 25
    assert model.capacity(2499, 4, margin=0.25) == 24
    assert model.capacity(2000, 4, margin=0.0) == 25
    assert model.capacity(2000, 8, margin=0.0) == 12  # 1000 + 80 B <= 2000
    assert model.capacity(1249, 4, margin=0.25) == 0  # k0 alone over budget with the margin
    assert model.capacity(1300, 4, margin=0.25) == 1  # 1.25 * 1040 = 1300: B = 1 fits exactly
    assert model.capacity(1299.5, 4, margin=0.25) == 0


def test_capacity_matches_its_definition():
    rng = np.random.default_rng(1)
    for _ in range(50):
        model = MemoryModel(float(rng.uniform(0, 1e4)), float(rng.uniform(0.5, 50)))
        budget, seq, margin = float(rng.uniform(1e3, 1e5)), int(rng.integers(1, 64)), float(rng.uniform(0, 0.3))
        batches = np.arange(200_001)  # up to budget / (k1 seq) for the smallest k1 and seq
        fits = batches[model.predict(batches, seq) * (1 + margin) <= budget]
        assert fits.size == 0 or fits[-1] < batches[-1]
        assert model.capacity(budget, seq, margin) == (int(fits[-1]) if fits.size else 0)


@pytest.mark.parametrize("kw, match", [({"budget_bytes": 0}, "budget_bytes"), ({"margin": -0.1}, "margin"),
                                       ({"seq_len": 0}, "seq_len")])
def test_capacity_rejects_bad_input(kw, match):
    args = {"budget_bytes": 1e6, "seq_len": 8, "margin": 0.1} | kw
    with pytest.raises(ValueError, match=match):
        MemoryModel(100.0, 1.0).capacity(**args)
    with pytest.raises(ValueError, match="k1"):
        MemoryModel(100.0, 0.0).capacity(1e6, 8)


# ---------------------------------------------------------------------------------------------------------------
# admission
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float
    rank: int
    batch: int


QUEUE = [2, 8, 4, 1, 8, 4]


def test_admit_by_hand():
    # capacity 20 with 4 live: 16 left; by size 8 (1), 8 (4) fill it, nothing else fits
    assert admit(QUEUE, [4], 20, 3) == [1, 4]
    # 17 left: after the two 8s, 1 left: the 4s and the 2 are passed over, the 1 fits
    assert admit(QUEUE, [4], 21, 3) == [1, 4, 3]
    # slots bind first
    assert admit(QUEUE, [4], 100, 2) == [1, 4]
    assert admit(QUEUE, [], 100, 10) == [1, 4, 2, 5, 0, 3]
    # 10 left: 8 (1), then the other 8 and the 4s do not fit, 2 (0) does
    assert admit(QUEUE, [3, 3], 16, 5) == [1, 0]
    assert admit(QUEUE, [4], 3, 5) == []  # live adapters already over capacity
    assert admit(QUEUE, [], 100, 0) == []
    assert admit([], [1], 100, 4) == []


def test_admit_back_fills_the_same_batch_size_first():
    # a batch-4 adapter exited: 16 left, the 4s come first (queue order), then the rest by size
    assert admit(QUEUE, [4], 20, 2, prefer_batch=4) == [2, 5]
    assert admit(QUEUE, [4], 20, 3, prefer_batch=4) == [2, 5, 1]
    # 16 left: the 1 (15), an 8 (7), not the other 8, a 4 (3), not the other 4, the 2 (1)
    assert admit(QUEUE, [4], 20, 5, prefer_batch=1) == [3, 1, 2, 0]
    assert admit(QUEUE, [4], 20, 3, prefer_batch=16) == [1, 4]  # no such size: plain greedy


def test_admit_takes_configs_with_a_batch_attribute():
    queue = [Cfg(1e-4, 8, b) for b in QUEUE]
    assert admit(queue, [4], 21, 3) == [1, 4, 3]
    assert admit(queue, [4], 20, 3, prefer_batch=4) == [2, 5, 1]


def test_admit_properties_on_random_queues():
    rng = np.random.default_rng(2)
    for _ in range(200):
        queue = [int(b) for b in rng.choice([1, 2, 4, 8, 16], size=rng.integers(0, 12))]
        live = [int(b) for b in rng.choice([1, 2, 4, 8], size=rng.integers(0, 4))]
        cap, slots = int(rng.integers(0, 60)), int(rng.integers(0, 8))
        prefer = int(rng.choice([1, 2, 4, 8, 16])) if rng.random() < 0.5 else None
        got = admit(queue, live, cap, slots, prefer_batch=prefer)
        assert len(set(got)) == len(got) <= slots
        assert sum(live) + sum(queue[i] for i in got) <= cap or not got
        # walk the queue in the greedy's order: each config is admitted iff a slot is free and it fits
        order = sorted(range(len(queue)), key=lambda i: (queue[i] != prefer, -queue[i], i))
        left, taken = cap - sum(live), []
        for i in order:
            if len(taken) < slots and queue[i] <= left:
                taken.append(i)
                left -= queue[i]
        assert got == taken


@pytest.mark.parametrize("queue", [[2, 0], [2, Cfg(1e-4, 8, -1)], [object()]], ids=["zero", "negative", "no-batch"])
def test_admit_rejects_bad_configs(queue):
    with pytest.raises(ValueError, match=r"queue\["):
        admit(queue, [], 10, 2)


# ---------------------------------------------------------------------------------------------------------------
# CP-SAT placement against exhaustive search
# ---------------------------------------------------------------------------------------------------------------


def brute_force_makespan(durations, demands, num_devices, busy_until=()):
    """Optimal makespan of rigid tasks (task i holds demands[i] of num_devices identical devices for durations[i]),
    devices not necessarily contiguous, after fixed tasks holding busy_until = [(end, devices held)] from time 0.

    Exhaustive over task orders: each order is turned into a schedule by the serial schedule-generation scheme
    (in the order, each task starts at the earliest time where the load of the tasks already placed leaves room
    for it throughout its run). Why this is exact:
    - every such schedule is feasible on the devices: load <= G at all times suffices, because handing devices
      out in order of start time (any free ones to each task as it starts) always succeeds: when task i starts,
      the devices in use are exactly those of the tasks running then, at most G - demand_i of them (the fixed
      tasks start at 0, before everyone, so their given devices fit this argument);
    - it reaches the optimum: take an optimal schedule and list its tasks by start time; by induction the scheme
      starts each task no later than the optimum does, because the tasks placed before k started no later and so
      end no later, and their load over [S_k, S_k + d_k) (a window starting after each of their optimal starts)
      is at most their optimal load there, which left room for task k at S_k.
    Depth-first over orders, pruning what cannot change the minimum: a prefix whose makespan already reaches the
    best found (makespans only grow as tasks are added), a second task identical to one already tried at the same
    depth (same orders up to relabelling), and everything once the best found meets the area lower bound."""
    n = len(durations)
    best = [math.inf]
    area_bound = math.ceil((sum(d * g for d, g in zip(durations, demands))
                            + sum(end * held for end, held in busy_until if end > 0)) / num_devices)

    def earliest(placed, d, g):
        for t in sorted({0} | {e for _, e, _ in placed}):
            points = [t] + [s for s, _, _ in placed if t < s < t + d]
            if all(sum(h for s, e, h in placed if s <= q < e) + g <= num_devices for q in points):
                return t
        raise AssertionError("unreachable: after every placed task ends, the task fits")

    def search(placed, left, span):
        if not left:
            best[0] = min(best[0], span)
            return
        tried = set()
        for i in sorted(left):
            if (durations[i], demands[i]) in tried or best[0] <= area_bound:
                continue
            tried.add((durations[i], demands[i]))
            t = earliest(placed, durations[i], demands[i])
            if max(span, t + durations[i]) < best[0]:
                search(placed + [(t, t + durations[i], demands[i])], left - {i}, max(span, t + durations[i]))

    fixed = [(0, end, held) for end, held in busy_until if end > 0]
    search(fixed, frozenset(range(n)), max([0] + [e for _, e, _ in fixed]))
    return best[0]


def assert_feasible(tasks, result, num_devices, *, fixed=(), now=0.0):
    """Every task placed once, on the right number of distinct devices, for its duration, at or after now; fixed
    placements unchanged; no device holds two tasks at once (times compared exactly: integer instances)."""
    by_name = {p.name: p for p in result.placements}
    assert len(by_name) == len(result.placements) == len(tasks) + len(fixed)
    for p in fixed:
        assert by_name[p.name] == p
    for t in tasks:
        p = by_name[t.name]
        assert len(p.devices) == len(set(p.devices)) == t.devices
        assert all(0 <= g < num_devices for g in p.devices)
        assert p.start >= now and p.end == pytest.approx(p.start + t.duration, abs=1e-9)
    live = [p for p in result.placements if p.end > now]
    for a in live:
        for b in live:
            if a is not b and set(a.devices) & set(b.devices):
                assert a.end <= max(b.start, now) or b.end <= max(a.start, now), (a, b)
    assert result.makespan == pytest.approx(max([now] + [p.end for p in result.placements]), abs=1e-9)


def random_tasks(rng, n, num_devices, max_duration=5):
    return [TaskSpec(f"task{i}", int(rng.integers(1, num_devices + 1)), int(rng.integers(1, max_duration + 1)))
            for i in range(n)]


@pytest.mark.parametrize("seed", range(8))
def test_cp_sat_makespan_equals_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n, num_devices = 5 + seed % 4, 2 + seed % 3
    tasks = random_tasks(rng, n, num_devices)
    result = plan(tasks, num_devices, workers=1)
    assert result.optimal
    assert_feasible(tasks, result, num_devices)
    want = brute_force_makespan([t.duration for t in tasks], [t.devices for t in tasks], num_devices)
    assert result.makespan == want


def test_fractional_durations_on_ticks():
    # durations in tenths are whole ticks at 1000 per unit (0.1 * 1000 must round to 100 ticks, not 101)
    rng = np.random.default_rng(7)
    tenths = [int(x) for x in rng.integers(1, 30, size=6)]
    demands = [int(x) for x in rng.integers(1, 4, size=6)]
    tasks = [TaskSpec(f"t{i}", g, d / 10) for i, (g, d) in enumerate(zip(demands, tenths))]
    result = plan(tasks, 3, workers=1)
    assert result.optimal
    assert result.makespan == pytest.approx(brute_force_makespan(tenths, demands, 3) / 10, abs=1e-9)
    # durations a fraction of a tick long are booked for the whole tick: still no overlap in real time
    tasks = [TaskSpec(f"u{i}", 2, 1.0004) for i in range(3)]
    result = plan(tasks, 2, ticks_per_unit=1000, workers=1)
    starts = sorted(p.start for p in result.placements)
    assert starts == pytest.approx([0, 1.001, 2.002], abs=1e-12)
    assert result.makespan == pytest.approx(2.002 + 1.0004, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_fixed_tasks_are_respected(seed):
    rng = np.random.default_rng(200 + seed)
    num_devices, now = 4, 10.0
    # two running tasks on disjoint devices, ending after now, and one that has finished (holds nothing)
    perm = [int(g) for g in rng.permutation(num_devices)]
    ends = [int(rng.integers(11, 15)), int(rng.integers(11, 15))]
    fixed = [Placement("run0", 7.0, float(ends[0]), tuple(perm[:2])), Placement("run1", 9.0, float(ends[1]),
                                                                                 (perm[2],)),
             Placement("old", 2.0, 9.0, (perm[3], perm[0]))]
    tasks = random_tasks(rng, 6, num_devices)
    result = plan(tasks, num_devices, fixed=fixed, now=now, workers=1)
    assert result.optimal
    assert_feasible(tasks, result, num_devices, fixed=fixed, now=now)
    want = brute_force_makespan([t.duration for t in tasks], [t.devices for t in tasks], num_devices,
                                busy_until=[(ends[0] - now, 2), (ends[1] - now, 1)])
    assert result.makespan == now + want


def test_plan_with_nothing_to_place():
    assert plan([], 4) == plan([], 4, now=0.0)
    assert plan([], 4, now=3.0).makespan == 3.0
    running = [Placement("a", 0.0, 5.0, (0, 1))]
    assert plan([], 4, fixed=running, now=1.0).makespan == 5.0


def test_cp_sat_on_eight_devices():
    # ALTO-like mix (1, 2 and 4 devices) on 8 devices: the default (parallel) solver, feasible and no worse than
    # the trivial lower bounds; optimal where the search proves it
    rng = np.random.default_rng(3)
    tasks = [TaskSpec(f"t{i}", int(rng.choice([1, 1, 2, 4])), int(rng.integers(1, 8))) for i in range(7)]
    result = plan(tasks, 8, time_limit_s=5)
    assert_feasible(tasks, result, 8)
    assert result.makespan >= max(t.duration for t in tasks)
    assert result.makespan >= sum(t.duration * t.devices for t in tasks) / 8
    if result.optimal:
        assert result.makespan == brute_force_makespan([t.duration for t in tasks], [t.devices for t in tasks], 8)


def test_a_timed_out_plan_is_feasible_and_says_so():
    # a dozen tasks given no time: CP-SAT's best solution so far, or the greedy plan when it has none
    rng = np.random.default_rng(4)
    tasks = [TaskSpec(f"t{i}", int(rng.choice([1, 1, 1, 2, 2, 4])), int(rng.integers(1, 20))) for i in range(12)]
    result = plan(tasks, 8, time_limit_s=1e-9, workers=1)
    assert not result.optimal
    assert_feasible(tasks, result, 8)


@pytest.mark.parametrize("tasks, kw, match", [
    ([TaskSpec("big", 5, 1.0)], {}, "'big' needs 5 devices, but there are 4"),
    ([TaskSpec("zero", 1, 0.0)], {}, "'zero' needs a finite positive duration"),
    ([TaskSpec("neg", 1, -2.0)], {}, "'neg' needs a finite positive duration"),
    ([TaskSpec("nan", 1, float("nan"))], {}, "'nan' needs a finite positive duration"),
    ([TaskSpec("inf", 1, float("inf"))], {}, "'inf' needs a finite positive duration"),
    ([TaskSpec("none", 0, 1.0)], {}, "'none' needs a positive integer device count"),
    ([TaskSpec("a", 1, 1.0), TaskSpec("a", 2, 1.0)], {}, "'a' appears twice"),
    ([TaskSpec("a", 1, 1.0)], {"fixed": [Placement("r", 0.0, 5.0, (4,))]}, "fixed task 'r' has devices"),
    ([TaskSpec("a", 1, 1.0)], {"fixed": [Placement("r", 0.0, 5.0, (1, 1))]}, "fixed task 'r' has devices"),
    ([TaskSpec("a", 1, 1.0)], {"fixed": [Placement("r", 0.0, 5.0, (1,)), Placement("s", 0.0, 3.0, (0, 1))]},
     "'r' and 's' both hold device 1"),
    ([TaskSpec("a", 1, 1.0)], {"fixed": [Placement("a", 0.0, 5.0, (1,))]}, "'a' is also among the tasks"),
], ids=["too-many-devices", "zero", "negative", "nan", "inf", "no-devices", "duplicate", "fixed-range",
        "fixed-repeat", "fixed-shared", "fixed-name"])
def test_plan_rejects_bad_tasks(tasks, kw, match):
    with pytest.raises(ValueError, match=match):
        plan(tasks, 4, **kw)


# ---------------------------------------------------------------------------------------------------------------
# event-driven simulation
# ---------------------------------------------------------------------------------------------------------------


def assert_ran(arrivals, placements, num_devices, actual):
    """Every task ran exactly once, after it arrived, for its actual duration, on distinct devices, and no device
    ran two tasks at once."""
    arrived = {t.name: (at, t) for at, t in arrivals}
    assert sorted(p.name for p in placements) == sorted(arrived)
    for p in placements:
        at, task = arrived[p.name]
        assert p.start >= at
        assert p.end == pytest.approx(p.start + actual.get(p.name, task.duration), abs=1e-9)
        assert len(set(p.devices)) == task.devices and all(0 <= g < num_devices for g in p.devices)
    for a in placements:
        for b in placements:
            if a is not b and set(a.devices) & set(b.devices):
                assert a.end <= b.start or b.end <= a.start, (a, b)


def test_simulate_with_exact_estimates_reaches_the_optimum():
    # all tasks at time 0 and estimates right: each re-plan keeps (at least) the previous plan's quality, so the
    # run ends at the optimal makespan
    rng = np.random.default_rng(5)
    tasks = random_tasks(rng, 6, 3)
    placements = simulate([(0.0, t) for t in tasks], 3, workers=1)
    assert_ran([(0.0, t) for t in tasks], placements, 3, {})
    assert max(p.end for p in placements) == brute_force_makespan([t.duration for t in tasks],
                                                                  [t.devices for t in tasks], 3)


def test_simulate_replans_on_arrival_and_early_completion():
    a, b = TaskSpec("a", 2, 10.0), TaskSpec("b", 2, 3.0)
    plans = []
    placements = simulate([(1.0, b), (0.0, a)], 2, {"a": 2.0}, workers=1, on_plan=lambda t, p: plans.append((t, p)))
    # a starts at once; b arrives at 1 and is planned after a's estimated end (10); a really ends at 2, and the
    # re-plan on that completion starts b then
    assert [p.name for p in placements] == ["a", "b"]
    assert placements[0] == Placement("a", 0.0, 2.0, (0, 1))
    assert placements[1] == Placement("b", 2.0, 5.0, (0, 1))
    assert [t for t, _ in plans] == [0.0, 1.0, 2.0]
    at_arrival = {p.name: p for p in plans[1][1].placements}
    assert at_arrival["b"].start == 10.0 and at_arrival["a"].end == 10.0


def test_simulate_waits_for_an_overrunning_task():
    a, b, c = TaskSpec("a", 2, 2.0), TaskSpec("b", 1, 1.0), TaskSpec("c", 1, 1.0)
    arrivals = [(0.0, a), (0.5, b), (0.5, c)]
    # a runs 5 instead of 2: b and c, planned at a's estimated end, start when it really ends
    placements = simulate(arrivals, 2, {"a": 5.0}, workers=1)
    assert_ran(arrivals, placements, 2, {"a": 5.0})
    by_name = {p.name: p for p in placements}
    assert by_name["a"].end == 5.0
    assert by_name["b"].start == by_name["c"].start == 5.0


def test_simulate_random_arrivals_on_eight_devices():
    rng = np.random.default_rng(6)
    tasks = [TaskSpec(f"t{i}", int(rng.choice([1, 1, 2, 4])), int(rng.integers(1, 7))) for i in range(10)]
    arrivals = [(float(rng.integers(0, 8)), t) for t in tasks]
    actual = {t.name: float(max(1, t.duration + int(rng.integers(-2, 3)))) for t in tasks[::2]}
    plans = []
    placements = simulate(arrivals, 8, actual, workers=1, ticks_per_unit=1, time_limit_s=5,
                          on_plan=lambda t, p: plans.append(t))
    assert_ran(arrivals, placements, 8, actual)
    assert len(plans) >= len({at for at, _ in arrivals})  # at least one re-plan per arrival time


def test_simulate_rejects_bad_input():
    with pytest.raises(ValueError, match="'big' needs 9 devices"):
        simulate([(0.0, TaskSpec("big", 9, 1.0))], 8)
    with pytest.raises(ValueError, match="'a' has a non-positive"):
        simulate([(0.0, TaskSpec("a", 1, 1.0))], 8, {"a": 0.0})
    with pytest.raises(ValueError, match="'x', which never arrives"):
        simulate([(0.0, TaskSpec("a", 1, 1.0))], 8, {"x": 1.0})
    with pytest.raises(ValueError, match="'a' appears twice"):
        simulate([(0.0, TaskSpec("a", 1, 1.0)), (1.0, TaskSpec("a", 1, 1.0))], 8)
    assert simulate([], 8) == []
