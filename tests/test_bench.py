"""qrjax.bench: the interleaved timer on fake functions and a fake clock; XLA's program accounting on a matmul."""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax import bench


class FakeClock:
    """A clock that moves only when a fake variant 'works': exact, reproducible times."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_variants(clock, durations, log):
    """name -> callable that logs its name, advances the clock by its next duration and returns (name, call no.)."""
    counters = {k: iter(v) for k, v in durations.items()}

    def make(name):
        def fn():
            log.append(name)
            clock.now += next(counters[name])
            return name, len(log)

        return fn

    return {k: make(k) for k in durations}


def test_interleaved_order_warmup_medians_ratios_and_results():
    clock, log = FakeClock(), []
    # first entry of each: the warm-up (a slow "compile"); then 4 rounds
    durations = {"A": [10.0, 2.0, 4.0, 2.0, 8.0], "B": [20.0, 1.0, 1.0, 4.0, 2.0], "C": [5.0, 3.0, 3.0, 3.0, 3.0]}
    fns = fake_variants(clock, durations, log)
    t = bench.interleaved(fns, rounds=4, clock=clock)
    assert log == ["A", "B", "C"] + ["A", "B", "C"] * 4  # warm-up of every variant first, then A, B, C per round
    assert t.order == ("A", "B", "C") * 4
    assert t.warmup_seconds == {"A": [10.0], "B": [20.0], "C": [5.0]}
    assert t.first_call_seconds == {"A": 10.0, "B": 20.0, "C": 5.0}
    assert t.seconds == {k: v[1:] for k, v in durations.items()}  # the warm-up is not a round
    assert t.rounds == 4
    assert t.medians == {"A": 3.0, "B": 1.5, "C": 3.0}
    # per-round A/B: 2, 4, 0.5, 4 -> median 3.0; the ratio of the medians would be 2.0
    assert t.round_ratios("A", "B") == [2.0, 4.0, 0.5, 4.0]
    assert t.ratio("A", "B") == 3.0 != t.median("A") / t.median("B")
    assert t.speedups("A") == {"A": 1.0, "B": 3.0, "C": statistics.median([2 / 3, 4 / 3, 2 / 3, 8 / 3])}
    assert t.results == {"A": ("A", 13), "B": ("B", 14), "C": ("C", 15)}  # the last round's calls


def test_interleaved_warmup_fns_seconds_from_results_and_several_warmups():
    clock, log = FakeClock(), []
    fns = fake_variants(clock, {"x": [1.0] * 3, "y": [1.0] * 3}, log)
    warm = fake_variants(clock, {"x": [7.0, 6.0]}, log)
    with pytest.raises(ValueError, match="lacks"):
        bench.interleaved(fns, rounds=1, warmup_fns={"z": warm["x"]}, clock=clock)
    log.clear()
    t = bench.interleaved(fns, rounds=1, warmup=2, warmup_fns=warm, clock=clock)
    assert log == ["x", "y", "x", "y", "x", "y"]
    assert t.warmup_seconds == {"x": [7.0, 6.0], "y": [1.0, 1.0]}  # x warmed up with its own callable
    # seconds=: the time each result reports replaces the wall time (not for warm-ups)
    clock2, log2 = FakeClock(), []
    fns2 = fake_variants(clock2, {"x": [1.0] * 6, "y": [1.0] * 6}, log2)
    stamped = {k: (lambda k=k, fn=fn: {"out": fn(), "s": {"x": 0.25, "y": 0.5}[k] * len(log2)})
               for k, fn in fns2.items()}
    t = bench.interleaved(stamped, rounds=2, seconds=lambda r: r["s"], clock=clock2)
    assert t.warmup_seconds == {"x": [1.0], "y": [1.0]}
    assert t.seconds == {"x": [0.25 * 3, 0.25 * 5], "y": [0.5 * 4, 0.5 * 6]}
    assert t.results["y"]["out"] == ("y", 6)


class Pending:
    """A result leaf that counts the block_until_ready calls made on it."""

    def __init__(self):
        self.blocked = 0

    def block_until_ready(self):
        self.blocked += 1
        return self


def test_interleaved_blocks_on_jax_results_and_rejects_bad_arguments():
    made = {"device": [], "host": []}

    def make(name):
        def fn():
            made[name].append(Pending())
            return {"out": [made[name][-1]]}

        return fn

    bench.interleaved({"device": make("device"), "host": make("host")}, rounds=2, host={"host"})
    assert [p.blocked for p in made["device"]] == [1, 1, 1]  # warm-up + 2 rounds, each blocked once
    assert [p.blocked for p in made["host"]] == [0, 0, 0]  # host results are not walked
    f = jax.jit(lambda x: x * 2)
    x = jnp.arange(4.0)
    t = bench.interleaved({"double": lambda: {"y": f(x)}, "host": lambda: np.ones(2)}, rounds=2, progress="t")
    assert t.rounds == 2 and all(s > 0 for v in t.seconds.values() for s in v)
    np.testing.assert_array_equal(t.results["double"]["y"], [0, 2, 4, 6])
    for kwargs, match in (({"rounds": 0}, "rounds"), ({"rounds": 1, "warmup": -1}, "warmup")):
        with pytest.raises(ValueError, match=match):
            bench.interleaved({"a": lambda: 1}, **kwargs)
    with pytest.raises(ValueError, match="no variants"):
        bench.interleaved({}, rounds=1)


def test_program_flops_and_bytes_of_a_matmul():
    m, k, n = 8, 16, 4
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.zeros((m, k)), jnp.zeros((k, n))).compile()
    assert bench.program_flops(compiled) == 2 * m * n * k
    # arguments + output in float32; a plain dot needs no scratch
    assert bench.program_bytes(compiled) == 4 * (m * k + k * n + m * n) + bench.program_bytes(compiled, temp_only=True)

    # donating an argument whose buffer the output can take: those bytes count once
    def f(a, b):
        return a @ b + 1.0

    args = (jnp.zeros((m, m)), jnp.zeros((m, m)))
    kept = jax.jit(f).lower(*args).compile()
    donated = jax.jit(f, donate_argnums=0).lower(*args).compile()
    assert bench.program_flops(kept) == 2 * m**3 + m * m  # the add counts one FLOP per element
    assert bench.program_bytes(kept) - bench.program_bytes(kept, temp_only=True) == 4 * 3 * m * m
    assert bench.program_bytes(donated) == bench.program_bytes(donated, temp_only=True) + 4 * 2 * m * m
