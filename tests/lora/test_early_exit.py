import math

import numpy as np
import pytest

from qrjax.lora.early_exit import (DIVERGED, OVERFIT, EarlyExitConfig, Monitor, Underperforming, is_eval_step,
                                   keep_count, slope, warmup_steps)

RAW = EarlyExitConfig(ema_alpha=1.0)  # the EMA is the last loss: hand-made sequences read directly


def run(monitor: Monitor, evals, steps_per_eval: int = 10):
    """Feed (train_loss, val_loss) pairs: steps_per_eval steps at train_loss, then one evaluation; the results."""
    out = []
    for i, (train, val) in enumerate(evals, start=1):
        for _ in range(steps_per_eval):
            assert monitor.train(train) == monitor.exit_reason  # None until an exit, then the sticky reason
        out.append(monitor.evaluate(i * steps_per_eval, val))
    return out


def test_paper_defaults():
    c = EarlyExitConfig()
    assert (c.enabled, c.window, c.tau_slope, c.tau_gap, c.p_div, c.p_ovf, c.earliest_exit_eval) == (
        True, 2, 0.001, 0.1, 2, 2, 4)
    assert (c.warmup_fraction, c.keep_fraction, c.ema_alpha) == (0.05, 0.25, 0.1)
    for bad in [dict(ema_alpha=0.0), dict(window=1), dict(p_div=0), dict(earliest_exit_eval=0),
                dict(keep_fraction=1.5), dict(warmup_fraction=0), dict(tau_gap=math.nan), dict(enabled=1)]:
        with pytest.raises(ValueError, match=f"EarlyExitConfig.{next(iter(bad))}"):
            EarlyExitConfig(**bad)


def test_ema_by_hand():
    m = Monitor()
    assert m.ema is None
    expected = None
    for loss in [2.0, 1.0, 4.0, 0.5, 0.5]:
        m.train(loss)
        expected = loss if expected is None else 0.1 * loss + 0.9 * expected
        assert m.ema == pytest.approx(expected, rel=1e-15, abs=0)
    assert expected == pytest.approx(0.1 * 0.5 + 0.9 * (0.1 * 0.5 + 0.9 * (0.1 * 4 + 0.9 * 1.9)))
    m2 = Monitor(EarlyExitConfig(ema_alpha=0.5))
    for loss in [2.0, 1.0, 4.0]:
        m2.train(loss)
    assert m2.ema == 0.5 * 4 + 0.5 * (0.5 * 1 + 0.5 * 2)


def test_slope_matches_polyfit(rng):
    for w in (2, 3, 5, 8):
        y = rng.normal(size=w)
        assert slope(y) == pytest.approx(np.polyfit(np.arange(w), y, 1)[0], abs=1e-12)
    assert slope([1.0, 1.25]) == 0.25
    with pytest.raises(ValueError, match="at least 2"):
        slope([1.0])


def test_diverges_after_exactly_p_div_rising_evaluations():
    # evaluations 1-4 fall, then both curves rise: the first rising evaluation (5) counts 1, the second (6) exits
    evals = [(3.0, 3.05), (2.5, 2.55), (2.0, 2.05), (1.9, 1.95), (2.0, 2.05), (2.1, 2.15), (2.2, 2.25)]
    m = Monitor(RAW)
    assert run(m, evals) == [None] * 5 + [DIVERGED, DIVERGED]  # the reason sticks
    assert m.exit_reason == DIVERGED and m.exit_step == 60 and m.num_evals == 6
    # with p_div 3 the same run exits one evaluation later
    assert run(Monitor(EarlyExitConfig(ema_alpha=1.0, p_div=3)), evals) == [None] * 6 + [DIVERGED]


def test_an_interrupted_rise_resets_the_divergence_count():
    m = Monitor(RAW)
    # rising, flat, rising, flat...: never two rising evaluations in a row
    evals = [(1.0, 1.0), (1.1, 1.1), (1.1, 1.1), (1.2, 1.2), (1.2, 1.2), (1.3, 1.3), (1.3, 1.3), (1.4, 1.4)]
    assert run(m, evals) == [None] * len(evals) and m.exit_reason is None
    # rising val alone (train falling) is not divergence, nor is rising train with falling val
    m = Monitor(RAW)
    assert run(m, [(2.0, 1.0), (1.9, 1.1), (1.8, 1.2), (1.7, 1.3), (1.6, 1.4), (1.5, 1.5)]) == [None] * 6
    assert m.cnt_div == 0
    assert run(Monitor(RAW), [(1.0, 1.05), (1.1, 1.0), (1.2, 0.95), (1.3, 0.9), (1.4, 0.85)]) == [None] * 5


def test_slope_threshold_is_inclusive_and_uses_the_window():
    c = EarlyExitConfig(ema_alpha=1.0, tau_slope=0.25, tau_gap=10.0)
    # slopes exactly tau_slope (exact in binary) count
    assert run(Monitor(c), [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.25, 1.25), (1.5, 1.5)]) == [None] * 4 + [DIVERGED]
    # just below does not
    assert run(Monitor(c), [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.25, 1.2), (1.5, 1.4)]) == [None] * 5
    # window 3: the fit over (1, 1.25, 1.25) has slope 0.125 < 0.25, over (1.25, 1.25, 1.75) 0.25
    c3 = EarlyExitConfig(ema_alpha=1.0, tau_slope=0.25, tau_gap=10.0, window=3, p_div=1)
    m = Monitor(c3)
    assert run(m, [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.25, 1.25), (1.25, 1.25), (1.75, 1.75)]) == (
        [None] * 5 + [DIVERGED])


def test_divergence_uses_the_ema_not_the_last_step():
    # each interval ends with one high step: the raw last loss rises, the EMA (alpha 0.1) keeps falling
    def spiky(alpha):
        m = Monitor(EarlyExitConfig(ema_alpha=alpha, tau_gap=100.0))
        results = []
        for i in range(1, 7):
            for _ in range(9):
                m.train(2.0 - 0.1 * i)
            m.train(3.0 + 0.05 * i)  # a spike on the last step of the interval, a little higher each time
            results.append(m.evaluate(10 * i, 2.0 + 0.1 * i))  # val rising all along
        return results, m.cnt_div

    assert spiky(0.1) == ([None] * 6, 0)
    # the last step alone would diverge: rising at evaluations 2, 3, 4, exit at 4 (the earliest)
    assert spiky(1.0) == ([None] * 3 + [DIVERGED] * 3, 3)


def test_overfit_twice_in_a_row_exits_and_keeps_the_best_step():
    # train loss 1: the gap is val - 1; > 0.1 at evaluations 2, 4, 5 (not 3: the count resets)
    m = Monitor(RAW)
    evals = [(1.0, 1.04), (1.0, 1.2), (1.0, 1.04), (1.0, 1.2), (1.0, 1.3), (1.0, 1.0)]
    assert run(m, evals) == [None] * 4 + [OVERFIT, OVERFIT]
    assert m.exit_step == 50 and m.best_val_loss == 1.04 and m.best_step == 10  # the first of equal val losses
    # a gap of exactly tau_gap (exact in binary) does not count (strict >), just above does
    c = EarlyExitConfig(ema_alpha=1.0, tau_gap=0.125)
    assert run(Monitor(c), [(0.5, 0.5)] * 3 + [(0.5, 0.5625)] * 3) == [None] * 6
    assert run(Monitor(c), [(0.5, 0.5)] * 3 + [(0.5, 0.5626)] * 3) == [None] * 4 + [OVERFIT] * 2


def test_overfit_gap_is_relative_to_the_ema():
    c = EarlyExitConfig(ema_alpha=0.5)
    m = Monitor(c)
    for loss in (4.0, 2.0):  # EMA 3.0
        m.train(loss)
    m.evaluate(2, 3.29)  # gap 0.0967: below
    assert m.cnt_ovf == 0
    m.evaluate(2, 3.31)  # gap 0.1033: above
    assert m.cnt_ovf == 1


def test_no_exit_before_the_fourth_evaluation():
    # every evaluation both rises and overfits: counts are 2 by evaluation 3, the exit waits for evaluation 4
    evals = [(1.0 + 0.1 * i, 2.0 + 0.2 * i) for i in range(6)]
    m = Monitor(RAW)
    assert run(m, evals)[:4] == [None, None, None, DIVERGED]  # divergence wins over overfitting
    assert m.exit_step == 40
    m = Monitor(RAW)
    assert run(m, [(1.0, 2.0)] * 3 + [(1.0, 1.0)] * 3) == [None] * 6  # counted 3 overfits, then reset at 4
    assert run(Monitor(EarlyExitConfig(ema_alpha=1.0, earliest_exit_eval=1)), [(1.0, 2.0)] * 2) == [None, OVERFIT]
    assert run(Monitor(RAW), [(1.0, 2.0)] * 5)[3] == OVERFIT


def test_nan_and_inf_diverge_at_once():
    m = Monitor()
    assert m.train(1.0) is None and m.train(math.nan) == DIVERGED
    assert m.exit_reason == DIVERGED and m.exit_step == 2
    assert m.train(1.0) == DIVERGED and m.evaluate(5, 1.0) == DIVERGED and m.num_evals == 0  # sticky, unchanged
    m = Monitor()
    m.train(1.0)
    assert m.evaluate(1, math.inf) == DIVERGED and m.exit_step == 1


def test_disabled_never_exits_but_tracks_the_best():
    m = Monitor(EarlyExitConfig(enabled=False, ema_alpha=1.0))
    evals = [(1.0 + 0.1 * i, 2.0 + 0.2 * i) for i in range(6)] + [(math.nan, 1.0)]
    assert run(m, evals) == [None] * 7
    assert m.exit_reason is None and m.best_val_loss == 1.0 and m.best_step == 70


def test_evaluate_before_any_training_step():
    m = Monitor(RAW)
    assert m.evaluate(0, 5.0) is None and m.cnt_ovf == 0 and m.best_step == 0


# ---------------------------------------------------------------------------------------------------------------
# Warm-up and underperforming


def test_warmup_steps_and_eval_steps():
    for total in range(1, 2001):
        assert warmup_steps(total) == max(1, -(-5 * total // 100))  # integer ceil(5% of total)
    assert warmup_steps(60) == 3 and warmup_steps(200) == 10 and warmup_steps(201) == 11
    assert warmup_steps(100, fraction=0.1) == 10
    assert warmup_steps(100, fraction=0.07) == 7  # 0.07 * 100 = 7.000000000000001 in floating point
    with pytest.raises(ValueError, match="total_steps"):
        warmup_steps(0)
    assert [s for s in range(0, 26) if is_eval_step(s, 10, 25)] == [10, 20, 25]


@pytest.mark.parametrize("n, keep", [(1, 1), (4, 1), (5, 2), (8, 2), (24, 6), (25, 7), (100, 25)])
def test_keep_count(n, keep):
    assert keep_count(n) == keep == math.ceil(n / 4)


@pytest.mark.parametrize("n", [4, 5, 24])
def test_batch_survivors(n, rng):
    losses = {f"c{i}": float(v) for i, v in enumerate(rng.permutation(n) + 0.5)}
    kept = Underperforming(n).select(losses)
    assert len(kept) == math.ceil(0.25 * n)
    assert kept == {c for c, v in losses.items() if v < math.ceil(0.25 * n)}  # losses are 0.5, 1.5, ...


def test_online_by_hand():
    u = Underperforming(4)  # keep 1
    assert [u.report(c, v) for c, v in [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 4.0)]] == [True, True, True, False]
    assert u.kept == {"a", "b", "c"} and u.dominated() == {"a", "b"}
    u = Underperforming(5)  # keep 2: an exit needs two strictly lower reports
    assert [u.report(i, v) for i, v in enumerate([1.0, 1.0, 1.0, 0.5, 2.0])] == [True, True, True, True, False]
    assert u.dominated() == set()  # ties: 0, 1, 2 have only one strictly lower loss
    u = Underperforming(4)
    assert u.report("x", math.nan) is True  # first: nothing is known yet
    assert u.report("y", 5.0) is True and u.report("z", math.nan) is False  # NaN is the worst


def test_online_keeps_a_superset_of_the_batch_survivors(rng):
    for trial in range(300):
        n = int(rng.integers(1, 30))
        # few distinct values: ties are common
        losses = {i: float(v) for i, v in enumerate(rng.integers(0, max(2, n // 2), size=n))}
        batch = Underperforming(n).select(losses)
        u = Underperforming(n)
        online = {c for c in rng.permutation(n).tolist() if u.report(c, losses[c])}
        assert batch <= online, (trial, losses)
        assert online == u.kept
        # a batch survivor has fewer than keep strictly lower losses, so it is never dominated either
        assert batch <= online - u.dominated()
    for trial in range(100):  # distinct losses: online minus dominated is exactly the batch survivors
        n = int(rng.integers(1, 30))
        losses = dict(enumerate(rng.permutation(n).astype(float).tolist()))
        u = Underperforming(n)
        for c in rng.permutation(n).tolist():
            u.report(c, losses[c])
        assert u.kept - u.dominated() == Underperforming(n).select(losses)


def test_online_in_ascending_order_equals_batch():
    losses = {i: float(i) for i in range(24)}
    u = Underperforming(24)
    assert {c for c in range(24) if u.report(c, losses[c])} == u.select(losses) == set(range(6))


def test_underperforming_errors_and_disabled():
    u = Underperforming(2)
    u.report("a", 1.0)
    with pytest.raises(ValueError, match="'a' reported twice"):
        u.report("a", 1.0)
    u.report("b", 2.0)
    with pytest.raises(ValueError, match="one more than the task's 2"):
        u.report("c", 0.0)
    with pytest.raises(ValueError, match="all 2 configurations"):
        u.select({"a": 1.0})
    off = Underperforming(4, EarlyExitConfig(enabled=False))
    assert all(off.report(i, float(10 - i)) for i in range(4)) and off.dominated() == set()
    assert off.select({i: float(i) for i in range(4)}) == {0, 1, 2, 3}
