"""Diffusion model files: save, load, the models shipped in the package, and the CLIs' --model rule.

A model is <stem>.msgpack ({'params': the DiT's EMA parameters, 'autoencoder': Autoencoder.to_dict()}) and
<stem>.json (the DiTConfig, class_names, and whatever the trainer adds: steps, final_eval), in the format of
qrjax.train.export.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from qrjax.diffusion.autoencoder import Autoencoder
from qrjax.diffusion.config import DiTConfig
from qrjax.diffusion.model import DiffusionModel, init_params
from qrjax.train import export

PRETRAINED = ("cpu", "t2i-cpu")


def variables_template(config: DiTConfig) -> dict:
    """Shapes and dtypes (jax.ShapeDtypeStruct) of a model file's variables: the DiT's parameters and the
    autoencoder (factor f; mean f32[f*f*3]; components f32[k, f*f*3]; scale f32[k], k = config.channels)."""
    f = config.ae_factor if config.autoencoder == "pca" else 1
    d, k = f * f * 3, config.channels
    return {"params": jax.eval_shape(lambda: init_params(config, jax.random.key(0))),
            "autoencoder": {"factor": f, "mean": jax.ShapeDtypeStruct((d,), jnp.float32),
                            "components": jax.ShapeDtypeStruct((k, d), jnp.float32),
                            "scale": jax.ShapeDtypeStruct((k,), jnp.float32)}}


def save_model(model: DiffusionModel, path: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    """Write path.msgpack (parameters and the autoencoder) and path.json (config, class names, `extra`: JSON-safe
    entries such as the training steps and final evaluation); returns their paths."""
    variables = {"params": model.params, "autoencoder": model.autoencoder.to_dict()}
    return export.save_model(path, model.config, variables,
                             meta={"class_names": list(model.class_names), **(extra or {})})


def _model(config: DiTConfig, variables: dict, meta: dict) -> DiffusionModel:
    clip = None
    if config.text:  # the frozen text tower the model was trained on: a shipped CLIP name or a model file
        from qrjax.clip.export import resolve_model as resolve_clip

        try:
            clip = resolve_clip(config.text_model)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"diffusion model {config.name!r}: its text_model {config.text_model!r} does not load: "
                             f"{err}") from None
    return DiffusionModel(config, jax.tree.map(jnp.asarray, variables["params"]),
                          Autoencoder.from_dict(variables["autoencoder"]), tuple(meta.get("class_names", ())), clip)


def load_model(path: str | Path) -> DiffusionModel:
    """A model written by save_model: its stem, or the path of its .json or .msgpack."""
    return _model(*export.load_model_files(path, DiTConfig, template=variables_template))


def load_pretrained(name: str = "cpu") -> DiffusionModel:
    """The weights shipped with qrjax (trained on this project's 2-core CPU machine by `qrjax diffusion train`)."""
    return _model(*export.load_pretrained("qrjax.diffusion", name, PRETRAINED, DiTConfig,
                                          template=variables_template))


def resolve_model(spec: str | Path) -> DiffusionModel:
    """A --model value: a shipped name (PRETRAINED) or a model's stem/.json/.msgpack path."""
    return export.resolve_model(spec, PRETRAINED, load_pretrained, load_model)


__all__ = ["PRETRAINED", "load_model", "load_pretrained", "resolve_model", "save_model", "variables_template"]
