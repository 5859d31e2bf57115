"""Watermark model files: save, load, the models shipped in the package, and the CLIs' --model rule.

A model is <stem>.msgpack ({'encoder': vars, 'extractor': vars[, 'whitening': {'w', 'b'}]}) and <stem>.json
(the WatermarkConfig), in the format of qrjax.train.export.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from qrjax.train import export
from qrjax.watermark.config import WatermarkConfig
from qrjax.watermark.embed import WatermarkModel
from qrjax.watermark.model import init_variables

PRETRAINED = ("cpu", "cpu-full")


def variables_template(config: WatermarkConfig) -> dict:
    """Shapes and dtypes (jax.ShapeDtypeStruct) of a model's variables: the networks, plus the whitening
    (w: f32[bits, bits], b: f32[bits]) that a config.whiten run fits and ships."""
    template = jax.eval_shape(lambda: init_variables(config, jax.random.key(0)))
    if config.whiten:
        template["whitening"] = {"w": jax.ShapeDtypeStruct((config.bits, config.bits), jnp.float32),
                                 "b": jax.ShapeDtypeStruct((config.bits,), jnp.float32)}
    return template


def save_model(model: WatermarkModel, stem: str | Path) -> tuple[Path, Path]:
    """Write <stem>.msgpack (variables) and <stem>.json (config); returns their paths."""
    return export.save_model(stem, model.config, model.variables)


def _model(config: WatermarkConfig, variables: dict) -> WatermarkModel:
    return WatermarkModel(config, jax.tree.map(jnp.asarray, variables))


def load_model(path: str | Path) -> WatermarkModel:
    """A model written by save_model: its stem, or the path of its .json or .msgpack."""
    config, variables, _ = export.load_model_files(path, WatermarkConfig, template=variables_template)
    return _model(config, variables)


def load_pretrained(name: str = "cpu") -> WatermarkModel:
    """A model shipped inside the package (qrjax/watermark/weights/<name>.{msgpack,json}); see PRETRAINED."""
    config, variables, _ = export.load_pretrained("qrjax.watermark", name, PRETRAINED, WatermarkConfig,
                                                  template=variables_template)
    return _model(config, variables)


def resolve_model(spec: str | Path) -> WatermarkModel:
    """A --model value: a shipped name (PRETRAINED) or a model's stem/.json/.msgpack path."""
    return export.resolve_model(spec, PRETRAINED, load_pretrained, load_model)


__all__ = ["PRETRAINED", "load_model", "load_pretrained", "resolve_model", "save_model", "variables_template"]
