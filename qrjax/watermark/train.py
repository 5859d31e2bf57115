"""Training the watermark encoder and extractor: `train_and_evaluate(config, workdir, data=None)`.

Each step: draw images (tiles of the working-size image, or whole images for the full-image baseline) and random
bits on the host, embed with the encoder, round to uint8 levels, apply one attack drawn for the batch, extract, and
minimise bit BCE + lambda_image * image loss (+ lambda_ecc * ECC-aware loss). All randomness is a function of
(seed, step), so a run resumed from a checkpoint replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qrjax import train as trainer
from qrjax.data import image_source
from qrjax.ecc import get_code
from qrjax.metrics import psnr
from qrjax.train.export import check_workdir_config
from qrjax.watermark import attacks, detect, losses
from qrjax.watermark.config import WatermarkConfig
from qrjax.watermark.embed import WatermarkModel, encoder_residual, extractor_logits, quantize
from qrjax.watermark.export import save_model
from qrjax.watermark.model import init_variables

# Area fraction of the source image a training crop covers: whole-image-sized crops for the full-image baseline,
# and for a tile of side t the fraction (t / working_size)^2 of such a crop, as when it is cut from a working image.
FULL_AREA = (0.1, 1.0)


def crop_area(config: WatermarkConfig, side: int) -> tuple[float, float]:
    if config.full_image:
        return FULL_AREA
    f = (side / config.working_size) ** 2
    return (FULL_AREA[0] * f, min(1.0, 1.5 * f))


def create_state(config: WatermarkConfig, key: jax.Array | None = None, init: WatermarkModel | None = None,
                 whitening: dict | None = None) -> trainer.TrainState:
    """A fresh train state; with `init`, the networks start from a trained model's variables (fine-tuning).

    With config.whiten, `whitening` ({'w', 'b'}) rides along with the BatchNorm statistics (not trained) and the
    optimiser leaves the extractor untouched."""
    variables = init_variables(config, jax.random.key(config.seed) if key is None else key)
    if init is not None:
        shapes = jax.tree.map(np.shape, variables)
        if jax.tree.map(np.shape, {k: init.variables[k] for k in variables}) != shapes:
            raise ValueError("init model's networks do not match the config's architecture")
        variables = {k: jax.tree.map(jnp.asarray, init.variables[k]) for k in variables}
    params = {k: v["params"] for k, v in variables.items()}
    stats = {k: v["batch_stats"] for k, v in variables.items()}
    tx = trainer.make_optimizer(config.optimizer, config.learning_rate, config.steps, config.warmup_steps,
                                end_learning_rate=config.end_learning_rate, weight_decay=config.weight_decay,
                                grad_clip=config.grad_clip)
    if config.whiten:
        if whitening is None:
            raise ValueError("config.whiten needs the whitening ({'w', 'b'}) fitted on clean images")
        stats["whitening"] = jax.tree.map(jnp.asarray, dict(whitening))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   {"encoder": "train", "extractor": "frozen"})
    return trainer.TrainState.create(params, tx, batch_stats=stats)


def fit_whitening_on(model: WatermarkModel, source, n: int, seed: int = 4321) -> dict:
    """Whitening fitted on the extractor's logits of n clean tiles (or images) drawn from `source`."""
    config = model.config
    side = config.working_size if config.full_image else config.tile
    images = source.sample(np.random.default_rng(seed), side, n, area=crop_area(config, side))
    logits = np.concatenate([np.asarray(extractor_logits(config, model.variables["extractor"],
                                                         jnp.asarray(images[i:i + 512], jnp.float32) / 255.0)[0])
                             for i in range(0, n, 512)])
    return detect.fit_whitening(logits)


def model_from_state(config: WatermarkConfig, state: trainer.TrainState) -> WatermarkModel:
    variables = {k: {"params": state.params[k], "batch_stats": state.batch_stats[k]} for k in state.params}
    if "whitening" in state.batch_stats:
        variables["whitening"] = state.batch_stats["whitening"]
    return WatermarkModel(config, jax.device_get(variables))


def strength_scale(config: WatermarkConfig, step) -> jax.Array:
    """The curriculum's multiplier of config.strength at `step` (1.0 once warm-up is over)."""
    if not config.strength_warmup_steps:
        return jnp.asarray(1.0)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / config.strength_warmup_steps, 0.0, 1.0)
    return config.strength_start_scale + (1.0 - config.strength_start_scale) * frac


def loss_fn(params, batch_stats, config: WatermarkConfig, attack, images_u8, bits, key, step=0):
    """-> (loss, (metrics, new batch_stats)). images_u8: uint8[B, S, S, 3]; bits: int32[B, L]."""
    x = images_u8.astype(jnp.float32) / 255.0
    res, enc_stats = encoder_residual(config, {"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
                                      x, bits, train=True)
    xw = quantize(x + strength_scale(config, step) * res)
    xa = attacks.apply(attack, key, xw, config)
    ext_vars = {"params": params["extractor"], "batch_stats": batch_stats["extractor"]}
    if "whitening" in batch_stats:  # frozen, whitened extractor: inference mode, statistics unchanged
        logits, _ = extractor_logits(config, ext_vars, xa, whitening=batch_stats["whitening"])
        ext_stats = batch_stats["extractor"]
    else:
        logits, ext_stats = extractor_logits(config, ext_vars, xa, train=True)
    l_bits = losses.bit_loss(logits, bits)
    l_img = losses.image_loss(xw - x, config.strength)  # normalised by the final strength
    loss = config.lambda_bits * l_bits + config.lambda_image * l_img
    metrics = {"loss": loss, "bit_loss": l_bits, "image_loss": l_img,
               "bit_acc": jnp.mean((logits > 0) == (bits > 0)),
               "psnr": jnp.mean(psnr(x, xw, 1.0))}
    if config.lambda_ecc:
        code = get_code(config.ecc_code)
        l_ecc = losses.ecc_loss(logits, bits, code.code.symbol_bits, code.code.t)
        loss = loss + config.lambda_ecc * l_ecc
        metrics.update(loss=loss, ecc_loss=l_ecc)
    stats = {"encoder": enc_stats, "extractor": ext_stats}
    if "whitening" in batch_stats:
        stats["whitening"] = batch_stats["whitening"]
    return loss, (metrics, stats)


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def train_step(config: WatermarkConfig, attack, state: trainer.TrainState, images_u8, bits):
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, stats)), grads = grad_fn(state.params, state.batch_stats, config, attack, images_u8, bits, key,
                                                    state.step)
    return state.apply_gradients(grads, batch_stats=stats), metrics


def make_batch_fn(config: WatermarkConfig, source):
    area = crop_area(config, config.read_size)

    def batch_fn(step: int) -> dict:
        rng = np.random.default_rng([config.seed, step])
        images = source.sample(rng, config.read_size, config.batch_size, area=area)
        bits = rng.integers(0, 2, (config.batch_size, config.bits), dtype=np.int32)
        return {"images": images, "bits": bits, "attack": attacks.draw(rng, config, step)}

    return batch_fn


def validation_set(config: WatermarkConfig, source, n: int | None = None, seed: int = 1234):
    """A fixed validation batch: (uint8 images [n, S, S, 3], bits int32[n, L]) from held-out images; S is what
    detection reads (config.tile, or working_size for the full-image baseline)."""
    n = n or config.eval_images
    rng = np.random.default_rng(seed)
    side = config.working_size if config.full_image else config.tile
    return source.sample(rng, side, n, area=crop_area(config, side)), rng.integers(0, 2, (n, config.bits), dtype=np.int32)


@partial(jax.jit, static_argnums=0)
def _eval_batch(config, variables, images_u8, bits):
    x = images_u8.astype(jnp.float32) / 255.0
    res, _ = encoder_residual(config, variables["encoder"], x, bits)
    xw = quantize(x + res)
    out = {"psnr": jnp.mean(psnr(x, xw, 1.0))}
    for name, xa in (("none", xw), ("jpeg80", attacks.real_jpeg(xw, jnp.int32(80))),
                     ("jpeg50", attacks.real_jpeg(xw, jnp.int32(50)))):
        logits, _ = extractor_logits(config, variables["extractor"], xa, whitening=variables.get("whitening"))
        out[f"bit_acc_{name}"] = jnp.mean((logits > 0) == (bits > 0))
    return out


def make_eval_fn(config: WatermarkConfig, val_source):
    images, bits = validation_set(config, val_source)

    def eval_fn(state, step):
        model = model_from_state(config, state)
        return {k: float(v) for k, v in _eval_batch(config, model.variables, images, bits).items()}

    return eval_fn


def train_and_evaluate(config: WatermarkConfig, workdir: str | Path, data: str | Path | None = None, *,
                       progress: bool = True, mesh=None, init: WatermarkModel | None = None) -> WatermarkModel:
    """Train (resuming from workdir if it holds checkpoints; otherwise from scratch or from `init`); export
    workdir/model.{msgpack,json}; return the model."""
    workdir = Path(workdir)
    check_workdir_config(workdir, config)
    train_src, val_src = image_source(data, "train"), image_source(data, "val")
    whitening = None
    if config.whiten:
        if init is None:
            raise ValueError("whiten=true fine-tunes a trained model: pass init (the CLI's --init)")
        # the init model's whitening holds only for what it was fitted on: refit it when this run reads differently
        same_read = (init.config.full_image, init.config.tile) == (config.full_image, config.tile)
        whitening = init.variables.get("whitening") if same_read else None
        if whitening is None:
            whitening = fit_whitening_on(WatermarkModel(config, init.variables), train_src, config.whiten_samples)
    state = create_state(config, init=init, whitening=whitening)

    def step_fn(state, batch):
        return train_step(config, batch["attack"], state, batch["images"], batch["bits"])

    state = trainer.fit(state, step_fn, make_batch_fn(config, train_src), steps=config.steps, workdir=workdir,
                        checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                        eval_fn=make_eval_fn(config, val_src), eval_every=config.eval_every,
                        meta={"preset": config.name}, mesh=mesh, progress=progress,
                        description=f"watermark {config.name}")
    model = model_from_state(config, state)
    save_model(model, workdir / "model")
    return model
