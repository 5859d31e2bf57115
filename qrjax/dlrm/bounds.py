"""The dual-level error bound of the compressed embedding all-to-all: eps(table, step) = eps_t * m(step).

Table level (`table_eps`): the SC'24 artifact's rule keeps big tables tight and tiny tables loose (its lists for
Criteo Kaggle and Terabyte are `config.PAPER_TABLES`); `table_rule="stats"` derives eps_t from each table's
measured traffic instead (`table_statistics`): a table whose batches hit many distinct rows carries embeddings that
are each seen rarely and learnt slowly, so its noise is not averaged away by repetition -- it gets the tight bound;
a table whose batches reuse a handful of rows gets the loose one; in between, log-linearly in the distinct fraction.

Iteration level (`multiplier`): m goes from `config.multiplier` (2) to 1 over the first `config.early_stage` steps
and stays 1 after, as the artifact's `error_bound_conf.py`: "step" (10 equal steps down), "linear", "log"
(m = m0 - (m0 - 1) log(1 + t) / log(1 + E)), or "constant" (m = 1: the table level alone). Early training
tolerates more noise; the bound tightens as the model converges.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from qrjax.compression.fixed import code_dtype_for
from qrjax.dlrm.config import PAPER_TABLES, DLRMConfig


def table_statistics(sparse_batches) -> np.ndarray:
    """sparse_batches: iterable of int[B, T, H] index batches -> float64[T]: the mean fraction of a batch's lookups
    into each table that hit distinct rows (1: every lookup a different row)."""
    fractions = []
    for sparse in sparse_batches:
        sparse = np.asarray(sparse)
        b, t, h = sparse.shape
        fractions.append([np.unique(sparse[:, i, :]).size / (b * h) for i in range(t)])
    if not fractions:
        raise ValueError("table_statistics: no batches given")
    return np.mean(np.asarray(fractions, np.float64), axis=0)


def table_eps(config: DLRMConfig, stats: np.ndarray | None = None) -> np.ndarray:
    """float32[T]: each table's bound before the iteration multiplier (zeros for compress="none")."""
    t = config.num_tables
    if config.compress == "none":
        return np.zeros(t, np.float32)
    if config.compress == "fixed":
        return np.full(t, config.eps, np.float32)
    if config.table_rule == "paper":
        lists = PAPER_TABLES[config.profile]
        eps = np.full(t, config.eps_other, np.float32)
        eps[list(lists["tight"])] = config.eps_tight
        eps[list(lists["loose"])] = config.eps_loose
        return eps
    if stats is None:
        raise ValueError("table_eps: table_rule='stats' needs the tables' statistics (table_statistics)")
    stats = np.asarray(stats, np.float64)
    if stats.shape != (t,) or not np.all(stats > 0):
        raise ValueError(f"table_eps: stats must be {t} positive distinct-row fractions, got shape {stats.shape}")
    lo, hi = np.log(stats.min()), np.log(stats.max())
    w = (np.log(stats) - lo) / (hi - lo) if hi > lo else np.full(t, 0.5)
    log_eps = math.log(config.eps_loose) + w * (math.log(config.eps_tight) - math.log(config.eps_loose))
    return np.exp(log_eps).astype(np.float32)


def multiplier(step, config: DLRMConfig):
    """float32 scalar m(step) (step may be traced: no recompilation as it changes)."""
    m0, stage = float(config.multiplier), max(int(config.early_stage), 1)
    t = jnp.asarray(step, jnp.float32)
    frac = jnp.clip(t / stage, 0.0, 1.0)
    if config.schedule == "constant":
        return jnp.float32(1.0)
    if config.schedule == "step":
        frac = jnp.floor(frac * 10) / 10
    elif config.schedule == "log":
        frac = jnp.clip(jnp.log1p(t) / math.log1p(stage), 0.0, 1.0)
    return (m0 - (m0 - 1.0) * frac).astype(jnp.float32)


def code_dtype(config: DLRMConfig, eps: np.ndarray) -> str:
    """The code dtype of the run: config.code_dtype, or with "auto" the narrowest that holds the smallest bound
    (m >= 1, so the smallest bound is the smallest eps_t)."""
    if config.code_dtype != "auto":
        return config.code_dtype
    positive = np.asarray(eps)[np.asarray(eps) > 0]
    return code_dtype_for(float(positive.min())) if positive.size else "int8"


__all__ = ["code_dtype", "multiplier", "table_eps", "table_statistics"]
