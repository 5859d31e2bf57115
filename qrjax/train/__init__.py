"""The trainer every qrjax system shares: optax optimiser with warm-up + cosine, a train state, an orbax checkpoint
wrapper with resume, JSONL metrics, a data-parallel `fit` loop with tqdm progress, and model export/load
(`qrjax.train.export`).

Names are imported on first use (PEP 562), so inference code can import `qrjax.train.export` without pulling in
orbax, optax and the loop.
"""

from __future__ import annotations

import importlib

_SOURCES = {
    "Checkpointer": "qrjax.train.checkpoint",
    "fit": "qrjax.train.loop",
    "MetricWriter": "qrjax.train.metrics",
    "read_metrics": "qrjax.train.metrics",
    "make_optimizer": "qrjax.train.optim",
    "make_schedule": "qrjax.train.optim",
    "TrainState": "qrjax.train.state",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
