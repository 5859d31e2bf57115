"""FastCLIP and DRRho-CLIP: contrastive image-text training with global contrastive losses (FCCO u-estimators,
temperature rules v0-v3), a communication-light gradient reduction, and reference-model steering.

config (presets) -> tokenizer, data (synthetic captioned scenes, CSV/TSV, webdataset shards) -> model (two-tower
linen CLIP) -> losses (MBCL, GCL/RGCL/RGCL-g, DRRho) -> sharded (shard_map reductions, JEST-style selection) ->
train (train_and_evaluate) -> evaluate (zero-shot, retrieval) and export (model files, the shipped model).
"""

from qrjax.clip.config import CLIPConfig, get_config
from qrjax.clip.export import ClipModel, load_model, load_pretrained, resolve_model, save_model

__all__ = ["CLIPConfig", "ClipModel", "get_config", "load_model", "load_pretrained", "resolve_model", "save_model"]
