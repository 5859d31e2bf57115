"""`train_and_evaluate`: hybrid-parallel DLRM training with the (optionally compressed) embedding all-to-all, on the
synthetic Criteo-like stream or a user's Criteo TSV file, through the shared trainer (`qrjax.train.fit`: resume,
checkpoints, metrics JSONL, progress).

Evaluation (every `eval_every` steps and at the end) scores the held-out samples with an uncompressed exchange, so
AUC and log loss measure the trained model itself; compression acts on training only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from qrjax import metrics as qmetrics
from qrjax import parallel
from qrjax.dlrm import bounds, sharded
from qrjax.dlrm.config import DLRMConfig
from qrjax.dlrm.data import open_data
from qrjax.train import TrainState, fit, make_optimizer, read_metrics
from qrjax.train.export import check_workdir_config, check_workdir_run, save_model

STATS_BATCHES = 8  # training batches the "stats" table rule measures


def make_state(config: DLRMConfig, placement: sharded.Placement, mesh) -> tuple[TrainState, TrainState]:
    """(state on host, its shardings): SGD at a constant learning rate, tables split over the devices."""
    params = sharded.init_params(config, placement, jax.random.key(config.seed))
    tx = make_optimizer("sgd", config.learning_rate, config.steps, 0, end_learning_rate=config.learning_rate,
                        grad_clip=None)
    state = TrainState.create(params, tx)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = state.replace(step=replicated, params=sharded.param_shardings(params, mesh),
                              opt_state=jax.tree.map(lambda _: replicated, state.opt_state))
    return state, shardings


def evaluate(config: DLRMConfig, forward, params, eval_set: list[dict], mesh) -> dict:
    """AUC and log loss over the held-out batches (uncompressed exchange). A batch that does not split evenly over
    the devices (a file's last one) is padded with copies of its first sample, whose scores are dropped."""
    labels, logits = [], []
    zero_eps = np.zeros(config.num_tables, np.float32)
    n = mesh.shape[sharded.AXIS]
    for batch in eval_set:
        b = len(batch["label"])
        pad = -b % n
        placed = {k: parallel.shard_batch(np.concatenate([v, np.repeat(v[:1], pad, 0)]) if pad else v, mesh)
                  for k, v in batch.items()}
        out, _ = forward(params, placed, zero_eps)
        logits.append(parallel.to_host(out)[:b])
        labels.append(batch["label"])
    y, z = np.concatenate(labels), np.concatenate(logits)
    return {"auc": qmetrics.roc_auc(y, z), "logloss": qmetrics.log_loss(y, z)}


def train_and_evaluate(config: DLRMConfig, workdir: str | Path, data: str | Path = "synthetic", *,
                       devices: int | None = None, progress: bool = True) -> dict:
    """Train (resuming from workdir's checkpoints), export workdir/model.{json,msgpack} (per-table arrays, any
    device count can load them) and workdir/summary.json; return the summary.

    data: "synthetic" or a Criteo TSV file (.gz allowed). devices: how many of jax.devices() the mesh uses (default
    all, across processes after `qrjax.parallel.initialize`); the batch size must divide by it."""
    config = config.validate()
    workdir = Path(workdir)
    all_devices = jax.devices()
    n = len(all_devices) if devices is None else int(devices)
    if not 1 <= n <= len(all_devices):
        raise ValueError(f"devices={devices}: this run has {len(all_devices)} device(s)")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(config, key) % n:
            raise ValueError(f"dlrm: {key}={getattr(config, key)} is not divisible by the {n} devices")
    mesh = parallel.make_mesh((n,), (sharded.AXIS,), devices=all_devices[:n])
    source = open_data(data, config.table_sizes, multi_hot=config.multi_hot, seed=config.seed)
    problem = None
    if parallel.process_index() == 0:  # one writer of the workdir's records; every process learns the verdict
        try:
            check_workdir_config(workdir, config)
            check_workdir_run(workdir, {"devices": n, "data": str(data)})
        except ValueError as err:
            problem = str(err)
    problem = parallel.broadcast_from_first(problem)
    if problem:
        raise ValueError(problem)

    stats = None
    if config.compress == "adaptive" and config.table_rule == "stats":
        stats = bounds.table_statistics(source.batch(i, config.batch_size)["sparse"] for i in range(STATS_BATCHES))
    eps_table = bounds.table_eps(config, stats)
    code_dtype = bounds.code_dtype(config, eps_table)
    placement = sharded.Placement.build(config.table_sizes, n)
    state, shardings = make_state(config, placement, mesh)

    train_step = sharded.make_train_step(config, placement, mesh, eps_table, code_dtype)
    step_fn = parallel.one_step_in_flight(train_step)

    forward = jax.jit(sharded.make_forward(config, placement, mesh, compress=False))
    eval_set = list(source.eval_batches(config.eval_batch_size, config.eval_samples))
    if not eval_set:
        raise ValueError(f"dlrm: data {str(data)!r} gave no held-out batch of {config.eval_batch_size} samples")

    def batch_fn(step: int) -> dict:
        return source.batch(step, config.batch_size)

    def eval_fn(state, step):
        return evaluate(config, forward, state.params, eval_set, mesh)

    start = time.perf_counter()
    state = fit(state, step_fn, batch_fn, steps=config.steps, workdir=workdir,
                checkpoint_every=config.checkpoint_every, log_every=config.log_every, eval_fn=eval_fn,
                eval_every=config.eval_every, meta={"config": config.name}, mesh=mesh, progress=progress,
                description=f"dlrm {config.name} ({config.compress})", state_sharding=shardings)
    seconds = time.perf_counter() - start

    tables = placement.unstack(parallel.to_host(state.params["tables"]))  # (a collective across processes)
    rows = read_metrics(workdir / "metrics.jsonl") if parallel.process_index() == 0 else []  # process 0 wrote them
    final = [r for r in rows if r.get("split") == "eval" and r["step"] == config.steps]
    if parallel.broadcast_from_first(not final):  # (every process takes part in an evaluation's collectives)
        final = [eval_fn(state, config.steps)]
    summary = None
    if parallel.process_index() == 0:
        summary = _summary(config, rows, placement, code_dtype, eps_table, n, source, final[-1], seconds)
    summary = parallel.broadcast_from_first(summary)
    variables = {"dense": jax.tree.map(parallel.to_host, state.params["dense"]),
                 "tables": {f"t{t:02d}": table for t, table in enumerate(tables)}}
    if parallel.process_index() == 0:
        save_model(workdir / "model", config, variables, meta={"steps": config.steps, "summary": summary})
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _summary(config, rows, placement, code_dtype, eps_table, n, source, result, seconds) -> dict:
    compress = config.compress != "none"
    wire = sharded.wire_bytes(config, placement, code_dtype if compress else None)
    train = [r for r in rows if r.get("split") == "train"]
    violations, entropy, weight, previous = 0.0, 0.0, 0, 0
    for r in train:  # rows hold means over their logging window
        window = r["step"] - previous
        previous = r["step"]
        if compress:
            violations += r["violations"] * window
            entropy += r["code_entropy_bits"] * window
            weight += window
    entropy = entropy / weight if weight else None
    out = {"auc": result["auc"], "logloss": result["logloss"], "steps": config.steps,
           "bad_lines": int(getattr(source, "bad_lines", 0)),
           "bad_line_numbers": list(getattr(source, "bad_line_numbers", [])),
           "wire_bytes_per_step": wire.total, "uncompressed_wire_bytes_per_step": wire.total_float32,
           "forward_wire_bytes_per_step": wire.forward,
           "forward_ratio": wire.forward / wire.forward_float32 if wire.forward_float32 else 1.0,
           "seconds": round(seconds, 3), "compress": config.compress, "compress_backward": config.compress_backward,
           "devices": n, "code_dtype": code_dtype if compress else None,
           "eps_table": [round(float(e), 6) for e in eps_table] if compress else None,
           "bound_violations": int(round(violations)) if compress else 0,
           "code_entropy_bits": entropy,
           "index_allgather_bytes_per_step": wire.index_allgather, "padding_fraction": wire.padding_fraction,
           "final_train_loss": train[-1]["loss"] if train else None}
    if compress and entropy is not None:  # an order-0 entropy coder on the codes, scalars as they are
        values = wire.forward_float32 // 4
        blocks = values // (config.batch_size // n * config.embedding_dim)
        out["forward_entropy_coded_ratio_estimate"] = (values * entropy / 8 + blocks * 8) / wire.forward_float32
    return out


__all__ = ["evaluate", "make_state", "train_and_evaluate"]
