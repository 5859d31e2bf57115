"""`fit`: the generic training loop (resume, prefetch, data-parallel placement, logging, checkpoints, progress).

A system supplies
- `step_fn(state, batch) -> (state, metrics)`: usually a jit-compiled function (metrics: dict of scalars);
- `batch_fn(step) -> batch`: a dict of host arrays for that step, deterministic in `step` so a resumed run sees
  exactly the batches an uninterrupted one would (non-array entries, e.g. a static attack choice, pass through);
- optionally `eval_fn(state, step) -> metrics`, run every `eval_every` steps and at the end.
Arrays in the batch are split over the mesh's data axis; the state is replicated, so the same code runs on one device
or many and jit inserts the gradient all-reduce (BatchNorm statistics are over the global batch, like SyncBN). A
model-parallel system passes `state_sharding` (a pytree of shardings like the state) to keep its sharded leaves
split; checkpoints are saved and restored with those shardings.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from qrjax.parallel import make_mesh, shard_batch
from qrjax.train.checkpoint import Checkpointer
from qrjax.train.metrics import MetricWriter


class _Prefetch:
    """Builds batches on a background thread, `depth` ahead of the training step."""

    def __init__(self, batch_fn: Callable[[int], dict], start: int, stop: int, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batch_fn, start, stop), daemon=True)
        self._thread.start()

    def _run(self, batch_fn, start, stop):
        for step in range(start, stop):
            if self._stop.is_set():
                return
            try:
                item = (step, batch_fn(step), None)
            except BaseException as err:  # handed to the consumer, which re-raises it with the step
                item = (step, None, err)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def get(self):
        step, batch, err = self._q.get()
        if err is not None:
            raise err
        return step, batch

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def _place(batch: dict, mesh, axis: str) -> dict:
    """Host arrays split over the mesh's data axis (`shard_batch`: also across processes, where every process
    passes the same whole batch); device arrays resharded; other entries pass through."""
    sharding = NamedSharding(mesh, P(axis))
    return {k: shard_batch(v, mesh, axis) if isinstance(v, np.ndarray) else
            jax.device_put(v, sharding) if isinstance(v, jax.Array) else v for k, v in batch.items()}


def fit(state, step_fn: Callable, batch_fn: Callable[[int], dict], *, steps: int, workdir: str | Path,
        checkpoint_every: int = 1000, log_every: int = 50, eval_fn: Callable | None = None, eval_every: int = 0,
        meta: dict | None = None, mesh=None, progress: bool = True, description: str = "train", state_sharding=None):
    """Train from the latest checkpoint under workdir (or from `state`) up to `steps`; returns the final state.

    Writes workdir/checkpoints/<step>/ and workdir/metrics.jsonl (train rows and, with eval_fn, rows with
    "split": "eval").
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh() if mesh is None else mesh
    state = jax.device_put(state, NamedSharding(mesh, P()) if state_sharding is None else state_sharding)

    ckpt = Checkpointer(workdir / "checkpoints")
    start = 0
    if ckpt.latest_step is not None:
        state, _ = ckpt.restore(state)
        start = int(ckpt.latest_step)
    # every process computes the metrics (their means need the collectives); process 0 alone writes them
    first = jax.process_index() == 0
    writer = MetricWriter(workdir / "metrics.jsonl")
    if first:
        writer.truncate_after(start)
    meta = dict(meta or {})

    def evaluate(step):
        if eval_fn is not None:
            row = eval_fn(state, step)
            if first:
                writer.write(step, row, split="eval")

    prefetch = _Prefetch(batch_fn, start, steps) if start < steps else None
    bar = tqdm(total=steps, initial=start, desc=description, disable=not (progress and first) or None,
               dynamic_ncols=True)
    pending: list[dict] = []
    try:
        for _ in range(start, steps):
            step, batch = prefetch.get()
            state, metrics = step_fn(state, _place(batch, mesh, mesh.axis_names[0]))
            pending.append(metrics)
            done = step + 1
            bar.update(1)
            if done % log_every == 0 or done == steps:
                means = {k: float(np.mean([jax.device_get(m[k]) for m in pending])) for k in pending[0]}
                pending.clear()
                if first:
                    writer.write(done, means, split="train")
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:4]})
            if eval_every and done % eval_every == 0 and done != steps:
                evaluate(done)
            if done % checkpoint_every == 0 or done == steps:
                ckpt.save(done, state, {**meta, "step": done})
        if start < steps or ckpt.latest_step is None:
            evaluate(steps)
        if ckpt.latest_step != steps:
            ckpt.save(steps, state, {**meta, "step": steps}, force=True)
    finally:
        bar.close()
        if prefetch is not None:
            prefetch.close()
        ckpt.wait()
        ckpt.close()
    return state
