"""QRMark watermark networks: tile-trained encoder and extractor, attacks, losses, embedding and detection statistics.

    model = qrjax.watermark.load_pretrained()          # the shipped `cpu` model
    marked = qrjax.watermark.embed(model, images_u8, bits)
    logits = qrjax.watermark.extract(model, marked)     # one tile per image
"""

from __future__ import annotations

from qrjax.watermark import detect
from qrjax.watermark.config import PRESETS, WatermarkConfig, get_config
from qrjax.watermark.embed import WatermarkModel, embed, extract
from qrjax.watermark.export import PRETRAINED, load_model, load_pretrained, save_model

__all__ = ["PRESETS", "PRETRAINED", "WatermarkConfig", "WatermarkModel", "detect", "embed", "extract", "get_config",
           "load_model", "load_pretrained", "save_model"]
