"""CLIP model files: the trained two-tower model as inference uses it, save, load, the shipped models, and the CLIs'
--model rule.

A model is <stem>.msgpack ({'params': CLIP's parameters}) and <stem>.json (the CLIPConfig, 'tokenizer':
Tokenizer.to_dict(), 'tau': the trained temperature when known, and whatever the trainer adds: steps, final_eval),
in the format of qrjax.train.export.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.clip.config import CLIPConfig
from qrjax.clip.evaluate import embed
from qrjax.clip.model import CLIP, params_shape
from qrjax.train import export

PRETRAINED = ("cpu",)


ARCH_FIELDS = ("name", "image_size", "context_length", "vocab_size", "patch_size", "image_width", "image_depth",
               "image_heads", "text_width", "text_depth", "text_heads", "mlp_ratio", "embed_dim")


def encoders(config: CLIPConfig) -> tuple:
    """(image_fn, text_fn): jitted `fn(params, images uint8[B, S, S, 3]) -> [B, d]` and `fn(params, tokens
    int32[B, L]) -> [B, d]`, unit-norm features. One pair per architecture (the towers' fields of the config), so
    every model of an architecture shares its compiles, whatever it was trained with."""
    return _encoders(tuple((f, getattr(config, f)) for f in ARCH_FIELDS))


@functools.cache
def _encoders(arch: tuple) -> tuple:
    model = CLIP(CLIPConfig(**dict(arch)))
    image_fn = jax.jit(lambda params, images: model.apply({"params": params}, images, method="encode_image"))
    text_fn = jax.jit(lambda params, tokens: model.apply({"params": params}, tokens, method="encode_text"))
    return image_fn, text_fn


@functools.cache
def _text_states_fn(arch: tuple):
    model = CLIP(CLIPConfig(**dict(arch)))
    return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens, method="encode_text_states"))


class ClipModel(NamedTuple):
    """A trained CLIP: config, parameters ({'visual': ..., 'text': ...}), the tokenizer (qrjax.clip.tokenizer's
    Tokenizer) and the trained temperature tau (None when the file does not record one)."""

    config: CLIPConfig
    params: dict
    tokenizer: Any
    tau: float | None = None

    def encode_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8[N, S, S, 3] (S = config.image_size) -> float32[N, embed_dim] unit-norm image features."""
        images = np.asarray(images)
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise ValueError(f"images: {images.dtype}{list(images.shape)}; expected uint8[N, {s}, {s}, 3] "
                             f"(config {self.config.name!r}: image_size {s})")
        return embed(encoders(self.config)[0], self.params, images, batch_size)

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        """N strings -> float32[N, embed_dim] unit-norm text features (tokenised to config.context_length)."""
        tokens = self._tokens(texts)
        return embed(encoders(self.config)[1], self.params, tokens, batch_size)

    def encode_text_states(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """N strings -> (float32[N, context_length, text_width] per-token states after ln_final, float32[N,
        embed_dim] unit-norm features): what a text-to-image model reads (qrjax.diffusion's text conditioning)."""
        tokens = self._tokens(texts)
        fn = _text_states_fn(tuple((f, getattr(self.config, f)) for f in ARCH_FIELDS))
        states, pooled = fn(self.params, jnp.asarray(tokens, jnp.int32))
        return np.asarray(states), np.asarray(pooled)

    def _tokens(self, texts) -> np.ndarray:
        if isinstance(texts, str):
            raise ValueError(f"texts: a single string {texts!r}; pass a list of strings")
        tokens = np.asarray(self.tokenizer.encode(list(texts), self.config.context_length))
        if tokens.size and tokens.max() >= self.config.vocab_size:
            raise ValueError(f"texts: token id {int(tokens.max())} is outside the text tower's vocab_size "
                             f"{self.config.vocab_size}: the tokenizer does not belong to this model")
        return tokens


def variables_template(config: CLIPConfig) -> dict:
    """Shapes and dtypes (jax.ShapeDtypeStruct) of a model file's variables: {'params': CLIP(config)'s float32
    parameters}."""
    return {"params": params_shape(config)}


def save_model(model: ClipModel, path: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    """Write path.msgpack (parameters) and path.json (config, tokenizer, tau when set, `extra`: JSON-safe entries such
    as the training steps and final evaluation); returns their paths."""
    extra = dict(extra or {})
    clash = [k for k in ("tokenizer", "tau") if k in extra]
    if clash:
        raise ValueError(f"save_model: extra keys {clash} are written from the model itself")
    meta = {"tokenizer": model.tokenizer.to_dict(), **({} if model.tau is None else {"tau": float(model.tau)}),
            **extra}
    return export.save_model(path, model.config, {"params": model.params}, meta=meta)


def _model(config: CLIPConfig, variables: dict, meta: dict, source: str) -> ClipModel:
    if "tokenizer" not in meta:
        raise ValueError(f"model {source}: the .json has no 'tokenizer' entry (a CLIP model file carries its "
                         "tokenizer; written by qrjax.clip.export.save_model)")
    from qrjax.clip.tokenizer import Tokenizer  # the tokenizer is needed only once a file is read

    tau = meta.get("tau")
    return ClipModel(config.validate(), jax.tree.map(jnp.asarray, variables["params"]),
                     Tokenizer.from_dict(meta["tokenizer"]), None if tau is None else float(tau))


def load_model(path: str | Path) -> ClipModel:
    """A model written by save_model: its stem, or the path of its .json or .msgpack."""
    source = str(export.model_stem(path).with_suffix(".json"))
    return _model(*export.load_model_files(path, CLIPConfig, template=variables_template), source=source)


def load_pretrained(name: str = "cpu") -> ClipModel:
    """The weights shipped with qrjax (trained on this project's CPU machine by `qrjax clip train`)."""
    return _model(*export.load_pretrained("qrjax.clip", name, PRETRAINED, CLIPConfig, template=variables_template),
                  source=f"qrjax.clip/weights/{name}.json")


def resolve_model(spec: str | Path) -> ClipModel:
    """A --model value: a shipped name (PRETRAINED) or a model's stem/.json/.msgpack path."""
    return export.resolve_model(spec, PRETRAINED, load_pretrained, load_model)


__all__ = ["ARCH_FIELDS", "PRETRAINED", "ClipModel", "encoders", "load_model", "load_pretrained", "resolve_model",
           "save_model", "variables_template"]
