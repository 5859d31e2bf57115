"""`train_and_evaluate`: CLIP training with any of the losses (MBCL, FastCLIP v0-v3, DRRho) and either reduction,
on the synthetic captioned scenes or a user's CSV/TSV file or webdataset shards, through the shared trainer
(`qrjax.train.fit`: resume, checkpoints, metrics JSONL, progress), data-parallel over the devices of one or many
processes.

The per-sample u tables, v2's temperatures and the global temperature's Adam state are part of the checkpointed
state, so a resumed run continues exactly. DRRho-CLIP's reference features are computed once for every training
sample with the reference model ("cache", the default: the reference may have its own tokenizer) or inside every
step ("online": the reference must read the same tokens).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from qrjax import parallel
from qrjax.clip import data as cdata
from qrjax.clip import losses, sharded
from qrjax.clip.config import CLIPConfig, replace
from qrjax.clip.evaluate import eval_sets, evaluate_sets
from qrjax.clip.export import ClipModel, save_model
from qrjax.clip.model import CLIP, init_params
from qrjax.clip.tokenizer import Tokenizer, synthetic_tokenizer
from qrjax.train import fit, make_optimizer, read_metrics
from qrjax.train.export import check_workdir_config, check_workdir_run
from qrjax.train.optim import make_schedule
from qrjax.train.state import TrainState

OBJECTIVE_TAU = 0.1  # the GCL objective every run is scored on (one temperature for all losses)
OBJECTIVE_PAIRS = 1024  # training pairs (clean captions) the objective is computed over
REF_MODES = ("cache", "online")


class CLIPState(TrainState):
    """The shared TrainState plus the loss's state: per-sample `tables` (u, v2's temperatures) and the global
    temperature `temp` (theta = log(1/tau) and its Adam moments)."""

    tables: dict = flax.struct.field(default_factory=dict)
    temp: dict = flax.struct.field(default_factory=dict)


def tau_learning_rate(config: CLIPConfig, step):
    """The temperature's learning rate at `step`: the model's warm-up + cosine schedule, scaled to lr_tau when lr_tau
    is set (FastCLIP's own parameter group; v2's per-sample rule uses it too)."""
    lr = make_schedule(config.learning_rate, config.steps, config.warmup_steps, config.end_learning_rate)(step)
    return lr * (config.lr_tau / config.learning_rate) if config.lr_tau else lr


def make_train_step(config: CLIPConfig, encode: Callable, mesh, *, reduction: str | None = None,
                    ref_encode: Callable | None = None, ref_params=None):
    """A jitted step(state: CLIPState, batch) -> (state, metrics): the reduction's gradients, AdamW on the model,
    the temperature rule, the tables' update. metrics: loss (the batch estimate of the objective), tau (the global
    temperature used, or v2's mean), gamma, and with a "noisy" bool[B] in the batch, the share of anchor weight on
    noisy pairs (DRRho's down-weighting)."""
    grads_fn = sharded.make_grads(config, encode, mesh, reduction=reduction, ref_encode=ref_encode)
    spe = config.steps_per_epoch

    def step_impl(state: CLIPState, batch: dict, ref_params):
        noisy = batch.pop("noisy", None)
        epoch = state.step // spe
        gamma = losses.gamma_at(config, epoch)
        lr_tau = tau_learning_rate(config, state.step)
        grads, aux = grads_fn(state.params, state.tables, state.temp, batch, gamma, epoch, lr_tau, ref_params)
        tau = losses.tau_of(state.temp)
        temp = losses.update_temperature(config, state.temp, -tau * aux["tau_grad"], state.step, lr_tau)
        new = state.apply_gradients(grads).replace(tables=aux["tables"], temp=temp)
        metrics = {"loss": aux["loss"], "tau": tau, "gamma": gamma}
        if config.loss == "fastclip-v2":
            metrics["tau"] = 0.5 * (jnp.mean(state.tables["tau1"]) + jnp.mean(state.tables["tau2"]))
        if noisy is not None:
            weight = aux["anchor_weight1"] + aux["anchor_weight2"]
            metrics["noisy_weight_share"] = jnp.sum(jnp.where(noisy, weight, 0.0)) / jnp.sum(weight)
            metrics["noisy_fraction"] = jnp.mean(noisy.astype(jnp.float32))
        return new, metrics

    jitted = jax.jit(step_impl)

    def step(state: CLIPState, batch: dict):
        return jitted(state, batch, ref_params)  # the reference's weights are an argument, not baked-in constants

    return step


def make_state(config: CLIPConfig, num_samples: int) -> CLIPState:
    """A fresh CLIPState: CLIP parameters, AdamW (b2, eps, weight decay from the config; none on gains and biases),
    the loss's per-sample tables for num_samples samples and the global temperature."""
    params = init_params(config, jax.random.key(config.seed))
    tx = make_optimizer("adamw", config.learning_rate, config.steps, config.warmup_steps,
                        end_learning_rate=config.end_learning_rate, weight_decay=config.weight_decay,
                        grad_clip=config.grad_clip or None, b2=config.beta2, eps=config.adam_eps)
    return CLIPState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params), tx=tx,
                     tables=losses.init_tables(config, num_samples), temp=losses.init_temperature(config))


def encode_fn(config: CLIPConfig):
    """encode(params, images, tokens) -> (image features, text features) of CLIP(config)."""
    model = CLIP(config)
    return lambda params, images, tokens: model.apply({"params": params}, images, tokens)


def tokenizer_for(source, config: CLIPConfig) -> Tokenizer:
    """The synthetic set's fixed vocabulary, or one built from a user data set's captions (its vocab_size most
    frequent words); it must fit the text tower's embedding."""
    if isinstance(source, cdata.SyntheticScenes):
        tokenizer = synthetic_tokenizer()
    else:
        tokenizer = Tokenizer.build(source.captions(np.arange(source.size)), config.vocab_size)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"clip: the tokenizer has {len(tokenizer)} tokens, more than vocab_size {config.vocab_size}")
    return tokenizer


def reference_features(ref: ClipModel, source, image_size: int, batch_size: int = 256,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The reference model's (image, text) features of every sample of `source` (its captions tokenised by the
    reference's own tokenizer): float32[n, d_ref] each."""
    from tqdm.auto import tqdm

    if ref.config.image_size != image_size:
        raise ValueError(f"reference model: image_size {ref.config.image_size}, the training data's is {image_size}; "
                         "train the reference at the target's image size")
    f1, f2 = [], []
    chunk = 4096
    for start in tqdm(range(0, source.size, chunk), desc="reference features", disable=not progress or None,
                      dynamic_ncols=True):
        idx = np.arange(start, min(start + chunk, source.size))
        f1.append(ref.encode_images(source.images(idx), batch_size))
        f2.append(ref.encode_texts(source.captions(idx), batch_size))
    return np.concatenate(f1), np.concatenate(f2)


def objective(model: ClipModel, source, pairs: int = OBJECTIVE_PAIRS, tau: float = OBJECTIVE_TAU) -> float:
    """The GCL objective (qrjax.clip.losses.gcl_objective, eps 0) at temperature `tau` over the first `pairs`
    training pairs with their clean captions: one number every loss's run can be compared on."""
    idx = np.arange(min(pairs, source.size))
    captions = source.clean_captions(idx) if hasattr(source, "clean_captions") else source.captions(idx)
    e1 = model.encode_images(source.images(idx))
    e2 = model.encode_texts(captions)
    with jax.enable_x64(True):
        return float(losses.gcl_objective(jnp.asarray(e1, jnp.float64), jnp.asarray(e2, jnp.float64), tau, 0.0))


def train_and_evaluate(config: CLIPConfig, workdir: str | Path, data: str | Path = "synthetic", *,
                       devices: int | None = None, ref: ClipModel | None = None, ref_name: str | None = None,
                       ref_mode: str = "cache", csv_img_key: str = "filepath", csv_caption_key: str = "title",
                       csv_separator: str | None = None, progress: bool = True) -> dict:
    """Train (resuming from workdir's checkpoints), export workdir/model.{json,msgpack} and workdir/summary.json;
    return the summary: loss (the last logged batch estimate of the objective), steps, samples_seen, bad_samples,
    bad_names, seconds, tau, objective (GCL at OBJECTIVE_TAU), and the evaluation (zero_shot_top1 and retrieval R@1/
    R@5 on the synthetic set; retrieval on a user data set's first pairs).

    data: "synthetic" or a CSV/TSV file / webdataset shards. devices: how many of jax.devices() the mesh uses
    (default all); the batch must divide by it. ref: the reference model of the drrho loss (ref_name: how the run
    records it)."""
    config = config.validate()
    if ref_mode not in REF_MODES:
        raise ValueError(f"ref_mode {ref_mode!r}: choose {' or '.join(REF_MODES)}")
    if config.loss == "drrho" and ref is None:
        raise ValueError("clip: the drrho loss needs a reference model (--ref MODEL)")
    if config.jest_keep and ref is None:
        raise ValueError(f"clip: JEST-style selection (jest_keep {config.jest_keep}) needs a reference model "
                         "(--ref MODEL)")
    workdir = Path(workdir)
    all_devices = jax.devices()
    n_dev = len(all_devices) if devices is None else int(devices)
    if not 1 <= n_dev <= len(all_devices):
        raise ValueError(f"devices={devices}: this run has {len(all_devices)} device(s)")
    if config.batch_size % n_dev:
        raise ValueError(f"clip: batch_size {config.batch_size} is not divisible by the {n_dev} devices")
    source = cdata.open_pairs(data, config.image_size, num_samples=config.num_samples, noise=config.noise,
                              seed=config.seed, csv_img_key=csv_img_key, csv_caption_key=csv_caption_key,
                              csv_separator=csv_separator)
    if not isinstance(source, cdata.SyntheticScenes):
        config = replace(config, num_samples=source.size)  # the u tables and epochs follow the data set
    tokenizer = tokenizer_for(source, config)
    mesh = parallel.make_mesh((n_dev,), (sharded.AXIS,), devices=all_devices[:n_dev])
    problem = None
    if parallel.process_index() == 0:  # one writer of the workdir's records; every process learns the verdict
        try:
            check_workdir_config(workdir, config)
            check_workdir_run(workdir, {"devices": n_dev, "data": str(data),
                                        "ref": ref_name if ref is not None else None})
        except ValueError as err:
            problem = str(err)
    problem = parallel.broadcast_from_first(problem)
    if problem:
        raise ValueError(problem)

    encode = encode_fn(config)
    ref_features = ref_encode = ref_params = None
    if ref is not None and (config.loss == "drrho" or config.jest_keep):
        if ref_mode == "cache" or config.jest_keep:
            ref_features = reference_features(ref, source, config.image_size, progress=progress)
        else:
            if ref.config.image_size != config.image_size or ref.config.context_length != config.context_length \
                    or ref.tokenizer != tokenizer:
                raise ValueError("ref_mode online: the reference must read the target's images and tokens (same "
                                 "image_size, context_length and tokenizer); use ref_mode cache")
            ref_encode, ref_params = encode_fn(ref.config), ref.params
    train_step = make_train_step(config, encode, mesh, ref_encode=ref_encode, ref_params=ref_params)
    fetch = config.batch_size
    if config.jest_keep:
        fetch = round(config.batch_size / config.jest_keep)
        if fetch % n_dev:
            raise ValueError(f"clip: the JEST super-batch {fetch} is not divisible by the {n_dev} devices")
        select = sharded.make_jest_select(config, encode)

        def selected_step(state, superbatch):
            batch = select(state.params, losses.tau_of(state.temp), superbatch)
            if config.loss != "drrho":
                batch = {k: v for k, v in batch.items() if k not in ("ref1", "ref2")}
            return train_step(state, batch)

        step_fn = parallel.one_step_in_flight(selected_step)
    else:
        step_fn = parallel.one_step_in_flight(train_step)
    noisy = getattr(source, "noisy", None)

    def batch_fn(step: int) -> dict:
        idx = cdata.batch_indices(step, fetch, source.size, config.seed)
        batch = {"image": source.images(idx), "text": tokenizer.encode(source.captions(idx), config.context_length),
                 "index": idx}
        if ref_features is not None:
            batch["ref1"], batch["ref2"] = ref_features[0][idx], ref_features[1][idx]
        if noisy is not None and noisy.any():
            batch["noisy"] = noisy[idx]
        return batch

    sets = eval_sets(source if not isinstance(source, cdata.SyntheticScenes) else "synthetic", config.image_size,
                     seed=config.seed)

    def current(state) -> ClipModel:
        params = jax.tree.map(parallel.to_host, state.params)
        return ClipModel(config, params, tokenizer, float(parallel.to_host(losses.tau_of(state.temp))))

    def eval_fn(state, step):
        model = current(state)
        return {**evaluate_sets(model, sets), "objective": objective(model, source)}

    start = time.perf_counter()
    state = fit(make_state(config, source.size), step_fn, batch_fn, steps=config.steps, workdir=workdir,
                checkpoint_every=config.checkpoint_every, log_every=config.log_every, eval_fn=eval_fn,
                eval_every=config.eval_every, meta={"config": config.name, "loss": config.loss}, mesh=mesh,
                progress=progress, description=f"clip {config.name} ({config.loss})")
    seconds = time.perf_counter() - start

    rows = read_metrics(workdir / "metrics.jsonl") if parallel.process_index() == 0 else []
    final = [r for r in rows if r.get("split") == "eval" and r["step"] == config.steps]
    if parallel.broadcast_from_first(not final):  # (every process takes part in an evaluation's collectives)
        final = [eval_fn(state, config.steps)]
    model = current(state)  # (collectives on a multi-process mesh: every process fetches the state)
    tau = model.tau
    if config.loss == "fastclip-v2":
        tau = float(np.mean([np.mean(parallel.to_host(state.tables[k])) for k in ("tau1", "tau2")]))
    summary = None
    if parallel.process_index() == 0:  # process 0 holds the metrics it wrote
        result = {k: v for k, v in final[-1].items() if k not in ("step", "split", "time")}
        train = [r for r in rows if r.get("split") == "train"]
        summary = {"loss": train[-1]["loss"] if train else None, "steps": config.steps,
                   "samples_seen": config.steps * config.batch_size, "samples_scored": config.steps * fetch,
                   "bad_samples": int(source.bad_samples),
                   "bad_names": list(source.bad_names)[:cdata.MAX_BAD_NAMES], "seconds": round(seconds, 3),
                   "loss_name": config.loss, "reduction": config.reduction, "devices": n_dev,
                   "batch_size": config.batch_size, "tau": tau, **result}
        if noisy is not None and noisy.any() and train:
            summary["noisy_weight_share"] = float(np.mean([r["noisy_weight_share"] for r in train]))
            summary["noisy_fraction"] = float(np.mean(noisy))  # of the data set
            # of the trained batches (JEST-style selection keeps fewer noisy pairs than the data holds)
            summary["batch_noisy_fraction"] = float(np.mean([r["noisy_fraction"] for r in train]))
    summary = parallel.broadcast_from_first(summary)
    if parallel.process_index() == 0:
        save_model(model, workdir / "model", extra={"steps": config.steps, "summary": summary})
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


__all__ = ["CLIPState", "OBJECTIVE_PAIRS", "OBJECTIVE_TAU", "REF_MODES", "encode_fn", "make_state", "make_train_step",
           "objective", "reference_features", "tau_learning_rate", "tokenizer_for", "train_and_evaluate"]
