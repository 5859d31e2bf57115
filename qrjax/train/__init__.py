"""The trainer every qrjax system shares: optax optimiser with warm-up + cosine, a train state, an orbax checkpoint
wrapper with resume, JSONL metrics, and a data-parallel `fit` loop with tqdm progress."""

from qrjax.train.checkpoint import Checkpointer
from qrjax.train.loop import fit
from qrjax.train.metrics import MetricWriter, read_metrics
from qrjax.train.optim import make_optimizer, make_schedule
from qrjax.train.state import TrainState

__all__ = ["Checkpointer", "MetricWriter", "TrainState", "fit", "make_optimizer", "make_schedule", "read_metrics"]
