"""ALTO's early-exit rules (arXiv 2604.05426 §"Early exit"): stop LoRA configurations that diverge, overfit or
underperform, so that their slots can be back-filled. Plain Python and numpy, no JAX.

Per configuration, a `Monitor` keeps an exponential moving average of the training loss,
l̂_t = α·l_t + (1 − α)·l̂_{t−1}, and at each evaluation compares it with the raw validation loss:
- divergence: the least-squares slopes of the last `window` EMA-train values (sampled at evaluations) and of the last
  `window` val values are both >= tau_slope => cnt_div += 1, else cnt_div = 0; exit when cnt_div reaches p_div;
- overfitting: (val − ema_train) / ema_train > tau_gap => cnt_ovf += 1, else cnt_ovf = 0; exit when cnt_ovf reaches
  p_ovf, keeping the best-val checkpoint (`Monitor.best_step`).
Neither exits before the `earliest_exit_eval`-th evaluation. Per task, `Underperforming` keeps the top
⌈keep_fraction·n⌉ of its n configurations by validation loss at the warm-up boundary (`warmup_fraction` of each
configuration's steps).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

DIVERGED, OVERFIT = "diverged", "overfit"


def _ceil(x: float) -> int:
    # 0.07 * 100 = 7.000000000000001 in floating point: round away the noise before ceil, or 7% of 100 steps is 8
    return math.ceil(round(x, 9))


@dataclass(frozen=True)
class EarlyExitConfig:
    """ALTO's early-exit settings; the defaults are the paper's, except ema_alpha, which the paper does not give.

    ema_alpha = 0.1: the EMA of per-step mini-batch losses then has a standard deviation sqrt(α/(2 − α)) ≈ 0.23 of
    the raw loss's (batches of 4-8 are noisy: the overfitting gap compares against it, so noise would fire false
    exits), while its lag, (1 − α)/α = 9 steps, stays below an evaluation interval of a few tens of steps, so the
    slope of the EMA sampled at evaluations follows the current interval rather than the previous one. A lagging EMA
    overstates the training loss while it falls, which shrinks the overfitting gap: the bias is towards not exiting.
    """

    enabled: bool = True
    ema_alpha: float = 0.1
    window: int = 2  # w: evaluations in each slope fit
    tau_slope: float = 0.001  # loss per evaluation
    tau_gap: float = 0.1
    p_div: int = 2
    p_ovf: int = 2
    earliest_exit_eval: int = 4  # the first evaluation (1-based) at which divergence or overfitting may exit
    warmup_fraction: float = 0.05
    keep_fraction: float = 0.25

    def __post_init__(self):
        def need(ok: bool, field: str, rule: str):
            if not ok:
                raise ValueError(f"EarlyExitConfig.{field} must be {rule}, got {getattr(self, field)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        need(isinstance(self.enabled, bool), "enabled", "a bool")
        need(0.0 < self.ema_alpha <= 1.0, "ema_alpha", "in (0, 1]")
        need(is_int(self.window) and self.window >= 2, "window", "an integer >= 2 (a slope needs two points)")
        for field in ("p_div", "p_ovf", "earliest_exit_eval"):
            need(is_int(getattr(self, field)) and getattr(self, field) >= 1, field, "an integer >= 1")
        need(math.isfinite(self.tau_slope), "tau_slope", "finite")
        need(math.isfinite(self.tau_gap), "tau_gap", "finite")
        need(0.0 < self.warmup_fraction <= 1.0, "warmup_fraction", "in (0, 1]")
        need(0.0 < self.keep_fraction <= 1.0, "keep_fraction", "in (0, 1]")


def warmup_steps(total_steps: int, fraction: float = 0.05) -> int:
    """The warm-up boundary of a configuration of total_steps steps: ⌈fraction·total_steps⌉, at least 1 (the
    underperforming rule compares configurations by their val loss after this many steps)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int | np.integer) or total_steps < 1:
        raise ValueError(f"warmup_steps: total_steps must be a positive integer, got {total_steps!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"warmup_steps: fraction must lie in (0, 1], got {fraction!r}")
    return max(1, _ceil(fraction * total_steps))


def is_eval_step(steps_done: int, eval_every: int, total_steps: int) -> bool:
    """Whether to evaluate after steps_done steps: every eval_every steps and after the last step."""
    if eval_every < 1:
        raise ValueError(f"is_eval_step: eval_every must be >= 1, got {eval_every}")
    return steps_done >= 1 and (steps_done % eval_every == 0 or steps_done == total_steps)


def keep_count(n: int, fraction: float = 0.25) -> int:
    """⌈fraction·n⌉: how many of a task's n configurations survive the warm-up boundary."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"keep_count: n must be a positive integer, got {n!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"keep_count: fraction must lie in (0, 1], got {fraction!r}")
    return _ceil(fraction * n)


def slope(values) -> float:
    """The least-squares slope of values (float[w], w >= 2) against 0, 1, ..., w − 1 (per evaluation)."""
    y = np.asarray(values, np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError(f"slope: needs a 1-D sequence of at least 2 values, got shape {y.shape}")
    x = np.arange(y.size, dtype=np.float64) - (y.size - 1) / 2
    return float(x @ (y - y.mean()) / (x @ x))


class Monitor:
    """Divergence and overfitting detector of one adapter configuration.

    Call `train(loss)` after every training step and `evaluate(step, val_loss)` after every evaluation; each returns
    "diverged", "overfit" or None. A NaN or infinite training or validation loss is "diverged" at once, even before
    the earliest-exit evaluation (nothing can be learnt from it). The counters move at every evaluation; an exit is
    taken only from evaluation `earliest_exit_eval` on, divergence first when both fire. After an exit the reason
    sticks: later calls return it and change nothing. With `enabled=False` nothing ever exits (a full-run baseline),
    but the EMA and the best checkpoint are still tracked.

    Attributes: `ema` (None before the first step), `num_evals`, `cnt_div`, `cnt_ovf`, `best_val_loss` (inf before the
    first finite evaluation), `best_step` (the step of the best val loss, the earliest on ties: the checkpoint to keep
    on an overfit exit; None before), `exit_reason`, `exit_step`.
    """

    def __init__(self, config: EarlyExitConfig | None = None):
        self.config = EarlyExitConfig() if config is None else config
        self.ema: float | None = None
        self.num_evals = 0
        self.cnt_div = 0
        self.cnt_ovf = 0
        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self.exit_reason: str | None = None
        self.exit_step: int | None = None
        self._train_at_evals: list[float] = []  # the EMA at each evaluation (only the last `window` are kept)
        self._val_at_evals: list[float] = []
        self._steps = 0

    def _exit(self, reason: str, step: int) -> str | None:
        if not self.config.enabled:
            return None
        self.exit_reason, self.exit_step = reason, step
        return reason

    def train(self, loss: float) -> str | None:
        """Fold one step's training loss into the EMA (the first loss starts it). Returns "diverged" for a NaN or
        infinite loss, else None."""
        if self.exit_reason is not None:
            return self.exit_reason
        self._steps += 1
        loss = float(loss)
        if not math.isfinite(loss):
            return self._exit(DIVERGED, self._steps)
        a = self.config.ema_alpha
        self.ema = loss if self.ema is None else a * loss + (1 - a) * self.ema
        return None

    def evaluate(self, step: int, val_loss: float) -> str | None:
        """Apply the divergence and overfitting rules after an evaluation at training step `step`; returns "diverged",
        "overfit" or None."""
        if self.exit_reason is not None:
            return self.exit_reason
        c = self.config
        val_loss = float(val_loss)
        self.num_evals += 1
        if not math.isfinite(val_loss):
            return self._exit(DIVERGED, step)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val_loss, step
        self._val_at_evals = (self._val_at_evals + [val_loss])[-c.window:]
        if self.ema is not None:
            self._train_at_evals = (self._train_at_evals + [self.ema])[-c.window:]
        # divergence: both curves rising over the window (a window not yet full counts as not rising)
        rising = (len(self._train_at_evals) == c.window and len(self._val_at_evals) == c.window
                  and slope(self._train_at_evals) >= c.tau_slope and slope(self._val_at_evals) >= c.tau_slope)
        self.cnt_div = self.cnt_div + 1 if rising else 0
        # overfitting: val above the (smoothed) training loss by more than tau_gap, relatively
        if self.ema is None:
            gap = -math.inf
        elif self.ema > 0:
            gap = (val_loss - self.ema) / self.ema
        else:  # a zero training loss: any positive val loss is an unbounded relative gap
            gap = math.inf if val_loss > self.ema else 0.0
        self.cnt_ovf = self.cnt_ovf + 1 if gap > c.tau_gap else 0
        if self.num_evals < c.earliest_exit_eval:
            return None
        if self.cnt_div >= c.p_div:
            return self._exit(DIVERGED, step)
        if self.cnt_ovf >= c.p_ovf:
            return self._exit(OVERFIT, step)
        return None


class Underperforming:
    """The underperforming rule of one task with `num_configs` configurations: keep the top ⌈keep_fraction·n⌉ by
    validation loss at the warm-up boundary.

    `select(losses)` is the exact batch rule, for when every configuration's warm-up loss is known. `report` is the
    online rule the trainer uses, as configurations reach their boundaries at different times (slots are
    back-filled): a configuration exits as soon as keep = ⌈keep_fraction·n⌉ configurations of the task have already
    reported a strictly lower warm-up loss.

    The online rule never exits a member of the final top `keep`: if c exits, keep configurations reported a loss
    strictly below c's before it did, and reported losses never change, so at the end at least keep configurations
    lie strictly below c. Any top-keep set containing c would have to contain every configuration strictly below c
    as well (else swapping one in for c lowers the set's losses), keep + 1 members in all, too many. Hence the
    online survivors contain the batch survivors, whatever the order of the reports and however ties are broken;
    configurations reported early can survive that the batch rule would drop (`dominated` lists them).

    A NaN warm-up loss counts as +inf (worst). With `config.enabled` False every configuration is kept.
    """

    def __init__(self, num_configs: int, config: EarlyExitConfig | None = None):
        self.config = EarlyExitConfig() if config is None else config
        self.num_configs = num_configs
        self.keep = keep_count(num_configs, self.config.keep_fraction)
        self.losses: dict[Hashable, float] = {}  # warm-up val loss of every reported configuration
        self.kept: set[Hashable] = set()

    def report(self, config_id: Hashable, warmup_val_loss: float) -> bool:
        """Record config_id's val loss at its warm-up boundary; True = keep training it, False = exit."""
        if config_id in self.losses:
            raise ValueError(f"Underperforming.report: configuration {config_id!r} reported twice")
        if len(self.losses) >= self.num_configs:
            raise ValueError(f"Underperforming.report: configuration {config_id!r} is one more than the task's "
                             f"{self.num_configs}")
        loss = float(warmup_val_loss)
        loss = math.inf if math.isnan(loss) else loss
        better = sum(other < loss for other in self.losses.values())
        self.losses[config_id] = loss
        keep = not self.config.enabled or better < self.keep
        if keep:
            self.kept.add(config_id)
        return keep

    def dominated(self) -> set[Hashable]:
        """Kept configurations whose warm-up loss keep or more reported configurations now beat strictly: the batch
        rule would have dropped them. A trainer may exit them too (closer to the paper) or let them run (the online rule
        as stated)."""
        if not self.config.enabled:
            return set()
        values = list(self.losses.values())
        return {c for c in self.kept if sum(v < self.losses[c] for v in values) >= self.keep}

    def select(self, losses: Mapping[Hashable, float]) -> set[Hashable]:
        """The batch rule: the keep configurations of lowest warm-up val loss among all num_configs (ties: the earlier
        in the mapping's order; NaN counts as +inf)."""
        if len(losses) != self.num_configs:
            raise ValueError(f"Underperforming.select: needs the losses of all {self.num_configs} configurations, "
                             f"got {len(losses)}")
        if not self.config.enabled:
            return set(losses)

        def key(item):
            v = float(item[1])
            return math.inf if math.isnan(v) else v

        return {c for c, _ in sorted(losses.items(), key=key)[:self.keep]}


__all__ = ["DIVERGED", "OVERFIT", "EarlyExitConfig", "Monitor", "Underperforming", "is_eval_step", "keep_count",
           "slope", "warmup_steps"]
