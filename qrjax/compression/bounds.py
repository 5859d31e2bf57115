"""The error-bound contract, checked independently of the compressor (numpy, float64 / complex128)."""

from __future__ import annotations

import numpy as np


def _allowed(x: np.ndarray, bound: float, mode: str) -> np.ndarray:
    if mode == "abs":
        return np.full(x.shape, bound)
    if mode == "rel":
        parts = (x.real, x.imag) if np.iscomplexobj(x) else (x,)
        ranges = [np.ptp(p[np.isfinite(p)]) if np.isfinite(p).any() else 0.0 for p in parts]
        return np.full(x.shape, bound * max(ranges))
    if mode == "pw_rel":
        return bound * np.abs(x)
    raise ValueError(f"unknown mode {mode!r}")


def max_error_ratio(x, x_hat, bound: float, mode: str) -> float:
    """max over finite elements of |x_hat - x| / allowed error (<= 1 when the bound holds; 0/0 counts as 0)."""
    x = np.asarray(x).astype(np.complex128 if np.iscomplexobj(x) else np.float64).reshape(-1)
    x_hat = np.asarray(x_hat).astype(x.dtype).reshape(-1)
    fin = np.isfinite(x)
    err = np.abs(x_hat[fin] - x[fin])
    allowed = _allowed(x, bound, mode)[fin]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(err == 0, 0.0, err / allowed)
    return float(r.max()) if r.size else 0.0


def bound_violations(x, x_hat, bound: float, mode: str) -> int:
    """Elements whose error exceeds the bound (in float64), plus non-finite values not reproduced exactly (same NaN-ness,
    same infinity) and, for pw_rel, sign flips and zeros not kept as zeros."""
    x = np.asarray(x).astype(np.complex128 if np.iscomplexobj(x) else np.float64).reshape(-1)
    x_hat = np.asarray(x_hat).astype(x.dtype).reshape(-1)
    fin = np.isfinite(x)
    bad = np.zeros(x.shape, bool)
    bad[fin] = np.abs(x_hat[fin] - x[fin]) > _allowed(x, bound, mode)[fin]
    same_nan = np.isnan(x) == np.isnan(x_hat)
    bad[~fin] = ~((x_hat[~fin] == x[~fin]) | (np.isnan(x[~fin]) & np.isnan(x_hat[~fin])))
    bad |= ~same_nan
    if mode == "pw_rel" and not np.iscomplexobj(x):
        bad[fin] |= np.signbit(x[fin]) != np.signbit(x_hat[fin])
    return int(bad.sum())
