"""Training the DiT with flow matching: `train_and_evaluate(config, workdir, data=None)`.

Each step draws random crops (image_size pixels) of the training photographs, labelled by photograph, encodes them
with the fixed PCA autoencoder (fitted once, before training, on crops of the same images), and minimises
E |v(x_t, t, y) - (noise - x0)|^2 with t logit-normal (as in SD3) and labels dropped to the null class with
probability label_dropout (for classifier-free guidance). An exponential moving average of the weights is kept
beside the BatchNorm-free state and is what gets exported. Randomness is a function of (seed, step), so a resumed
run replays the batches of an uninterrupted one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qrjax import train as trainer
from qrjax.data import image_source
from qrjax.diffusion.autoencoder import Autoencoder, fit_pca, pixel_autoencoder
from qrjax.diffusion.config import DiTConfig
from qrjax.diffusion.export import save_model
from qrjax.diffusion.model import DiffusionModel, TextCond, apply_model, init_params
from qrjax.train.export import check_workdir_config

EVAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def make_autoencoder(config: DiTConfig, source, samples: int = 2048, seed: int = 7) -> Autoencoder:
    if config.autoencoder == "pixel":
        return pixel_autoencoder()
    if config.autoencoder != "pca":
        raise ValueError(f"unknown autoencoder {config.autoencoder!r}; choose pca or pixel")
    images = source.sample(np.random.default_rng(seed), config.image_size, samples, area=config.crop_area)
    return fit_pca(images, config.ae_factor, config.latent_channels)


def _cond(config: DiTConfig, labels, text_table):
    """The model's conditioning of a batch: class labels, or for a text model the rows `labels` of the caption table
    (CLIP states and pooled features of every caption; its last row is the empty caption)."""
    if not config.text:
        return labels if config.num_classes else None
    states, pooled = text_table
    return TextCond(states[labels], pooled[labels], states[-1:], pooled[-1:])


def loss_fn(params, config: DiTConfig, x0, labels, key, text_table=None):
    kt, kn, kd = jax.random.split(key, 3)
    b = x0.shape[0]
    t = jax.nn.sigmoid(jax.random.normal(kt, (b,)))  # logit-normal(0, 1)
    noise = jax.random.normal(kn, x0.shape)
    tb = t.reshape((b,) + (1,) * (x0.ndim - 1))
    xt = (1.0 - tb) * x0 + tb * noise
    if config.text:  # captions dropped to the empty caption (the last row of the table)
        drop = jax.random.bernoulli(kd, config.label_dropout, (b,))
        labels = jnp.where(drop, text_table[0].shape[0] - 1, labels)
    elif config.num_classes:
        drop = jax.random.bernoulli(kd, config.label_dropout, (b,))
        labels = jnp.where(drop, config.null_class, labels)
    v = apply_model(config, params, xt, t, _cond(config, labels, text_table))
    return jnp.mean((v - (noise - x0)) ** 2)


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def train_step(config: DiTConfig, state: trainer.TrainState, ae_arrays, images_u8, labels, text_table=None):
    x0 = _encode(config, ae_arrays, images_u8)
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, config, x0, labels, key, text_table)
    new = state.apply_gradients(grads)
    decay = jnp.minimum(config.ema_decay, (1.0 + new.step) / (10.0 + new.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.batch_stats["ema"], new.params)
    return new.replace(batch_stats={"ema": ema}), {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def _encode(config: DiTConfig, ae_arrays, images_u8):
    """uint8 images -> latents with the fixed autoencoder (its arrays traced, its factor static)."""
    ae = Autoencoder(config.ae_factor if config.autoencoder == "pca" else 1, *ae_arrays)
    return ae.encode(images_u8.astype(jnp.float32) / 127.5 - 1.0)


@partial(jax.jit, static_argnums=0)
def eval_losses(config: DiTConfig, params, ae_arrays, images_u8, labels, key, text_table=None):
    """Flow-matching loss on a fixed batch at each of EVAL_TIMES (same noise for every checkpoint)."""
    x0 = _encode(config, ae_arrays, images_u8)
    noise = jax.random.normal(key, x0.shape)
    out = {}
    cond = _cond(config, labels, text_table)
    for t in EVAL_TIMES:
        tt = jnp.full((x0.shape[0],), t)
        v = apply_model(config, params, (1 - t) * x0 + t * noise, tt, cond)
        out[f"val_loss_t{t}"] = jnp.mean((v - (noise - x0)) ** 2)
    out["val_loss"] = sum(out.values()) / len(EVAL_TIMES)
    return out


def create_state(config: DiTConfig, key: jax.Array | None = None) -> trainer.TrainState:
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(config.seed) if key is None else key)
    tx = trainer.make_optimizer("adamw", config.learning_rate, config.steps, config.warmup_steps,
                                end_learning_rate=config.end_learning_rate, weight_decay=config.weight_decay,
                                grad_clip=config.grad_clip)
    return trainer.TrainState.create(params, tx, batch_stats={"ema": jax.tree.map(jnp.copy, params)})


def train_and_evaluate(config: DiTConfig, workdir: str | Path, data: str | Path | None = None, *,
                       progress: bool = True, mesh=None) -> DiffusionModel:
    """Train (resuming from workdir's checkpoints), export workdir/model.{msgpack,json}, return the model.

    config.data "photos": data is a folder of the user's images (every k-th file held out) or None for the bundled
    photographs; classes are the source images (config.num_classes must equal their number, or be 0 for an
    unconditional model). config.data "scenes" (text-to-image): CLIP's captioned synthetic scenes, or data: a CSV/TSV
    or webdataset of image-caption pairs (qrjax.clip.data.open_pairs), conditioned on config.text_model's CLIP."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.data not in ("photos", "scenes"):
        raise ValueError(f"data {config.data!r}: choose photos or scenes")
    if config.data == "scenes" and not config.text:
        raise ValueError("data=scenes trains a text-to-image model: set text_model (e.g. cpu)")
    clip, text_table, texts = None, None, None
    if config.data == "scenes":
        train_src, val_src, clip = _pair_sources(config, data)
        texts, text_table = _caption_table(clip, [train_src, val_src])
        names: tuple = ()
    else:
        train_src, val_src = image_source(data, "train"), image_source(data, "val")
        if config.num_classes and config.num_classes != len(train_src):
            raise ValueError(f"config.num_classes={config.num_classes} but the training set has {len(train_src)} "
                             f"images (one class each); set num_classes={len(train_src)} or 0")
        names = tuple(train_src.names)
    check_workdir_config(workdir, config)  # after the data checks: a refused run writes nothing
    ae_path = workdir / "autoencoder.msgpack"
    if ae_path.exists():
        ae = Autoencoder.from_dict(flax.serialization.msgpack_restore(ae_path.read_bytes()))
    else:
        ae = make_autoencoder(config, train_src)
        ae_path.write_bytes(flax.serialization.msgpack_serialize(ae.to_dict()))
    ae_arrays = tuple(jnp.asarray(a) for a in (ae.mean, ae.components, ae.scale))

    def batch_fn(step: int) -> dict:
        rng = np.random.default_rng([config.seed, step])
        if config.data == "scenes":
            idx = rng.integers(0, train_src.size, config.batch_size)
            return {"images": train_src.images(idx), "labels": _caption_ids(texts, train_src.captions(idx))}
        images, labels = train_src.sample(rng, config.image_size, config.batch_size, area=config.crop_area,
                                          return_index=True)
        return {"images": images, "labels": labels}

    vrng = np.random.default_rng(1234)
    if config.data == "scenes":
        vidx = vrng.integers(0, val_src.size, config.eval_samples)
        val_images, val_labels = val_src.images(vidx), _caption_ids(texts, val_src.captions(vidx))
    else:
        val_images = val_src.sample(vrng, config.image_size, config.eval_samples, area=config.crop_area)
        # held-out photographs have no class of their own: score them with random training labels and the null class
        val_labels = np.where(vrng.random(config.eval_samples) < 0.5, config.null_class,
                              vrng.integers(0, max(config.num_classes, 1), config.eval_samples)).astype(np.int32)

    def eval_fn(state, step):
        return {k: float(v) for k, v in eval_losses(config, state.batch_stats["ema"], ae_arrays, val_images,
                                                    val_labels, jax.random.key(99), text_table).items()}

    def step_fn(state, batch):
        return train_step(config, state, ae_arrays, batch["images"], batch["labels"], text_table)

    state = trainer.fit(create_state(config), step_fn, batch_fn, steps=config.steps, workdir=workdir,
                        checkpoint_every=config.checkpoint_every, log_every=config.log_every, eval_fn=eval_fn,
                        eval_every=config.eval_every, meta={"config": config.name}, mesh=mesh, progress=progress,
                        description=f"diffusion {config.name}")
    model = DiffusionModel(config, jax.device_get(state.batch_stats["ema"]), ae, names, clip)
    save_model(model, workdir / "model", extra={"steps": config.steps,
                                                "final_eval": eval_fn(state, config.steps)})
    return model


class _Scenes:
    """A caption-pair source seen as an image source for the autoencoder fit (random crops are the whole images)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def sample(self, rng, size, n, area=None):
        return self.pairs.images(rng.integers(0, self.pairs.size, n))

    def __getattr__(self, name):
        return getattr(self.pairs, name)


def _pair_sources(config: DiTConfig, data):
    from qrjax.clip.data import SyntheticScenes, open_pairs
    from qrjax.clip.export import resolve_model as resolve_clip

    clip = resolve_clip(config.text_model)
    if clip.config.context_length != config.text_length or clip.config.text_width != config.text_width \
            or clip.config.embed_dim != config.text_embed:
        raise ValueError(f"text_model {config.text_model!r} has context {clip.config.context_length}, width "
                         f"{clip.config.text_width}, embedding {clip.config.embed_dim}; the config says "
                         f"{config.text_length}, {config.text_width}, {config.text_embed}")
    if data is None:
        train = SyntheticScenes(65536, config.image_size, seed=config.seed, split="train")
        val = SyntheticScenes(1024, config.image_size, seed=config.seed, split="val")
    else:
        pairs = open_pairs(data, config.image_size)
        train = val = pairs
    return _Scenes(train), _Scenes(val), clip


def _caption_table(clip, sources, chunk: int = 512):
    """Every distinct caption the sources can produce (synthetic: all of them; user pairs: theirs) and its CLIP
    (states, pooled) table, the empty caption last."""
    from qrjax.clip.data import synthetic_texts

    texts = []
    for src in sources:
        if hasattr(src.pairs, "clean_captions"):
            texts += synthetic_texts()
        else:
            texts += src.captions(np.arange(src.size))
    texts = list(dict.fromkeys(t for t in texts if t)) + [""]
    parts = [clip.encode_text_states(texts[i:i + chunk]) for i in range(0, len(texts), chunk)]
    table = tuple(jnp.asarray(np.concatenate([p[k] for p in parts])) for k in (0, 1))
    return {t: i for i, t in enumerate(texts)}, table


def _caption_ids(index: dict, captions) -> np.ndarray:
    return np.asarray([index[c] for c in captions], np.int32)
