"""QRMark watermark networks: tile-trained encoder and extractor, attacks, losses, embedding and detection statistics.

    model = qrjax.watermark.load_pretrained()          # the shipped `cpu` model
    marked = qrjax.watermark.embed(model, images_u8, bits)
    logits = qrjax.watermark.extract(model, marked)     # one tile per image
"""

from __future__ import annotations

from importlib import resources

from qrjax.watermark import detect
from qrjax.watermark.config import PRESETS, WatermarkConfig, get_config
from qrjax.watermark.embed import WatermarkModel, embed, extract

PRETRAINED = ("cpu", "cpu-full")


def load_pretrained(name: str = "cpu") -> WatermarkModel:
    """A model shipped inside the package (qrjax/watermark/weights/<name>.{msgpack,json})."""
    from qrjax.watermark.train import load_model

    if name not in PRETRAINED:
        raise ValueError(f"no shipped watermark model {name!r}; shipped: {PRETRAINED}")
    with resources.as_file(resources.files("qrjax.watermark") / "weights" / name) as stem:
        return load_model(stem)


__all__ = ["PRESETS", "PRETRAINED", "WatermarkConfig", "WatermarkModel", "detect", "embed", "extract", "get_config",
           "load_pretrained"]
