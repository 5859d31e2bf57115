"""DLRM with an error-bounded compressed embedding all-to-all (SC'24, "Accelerating Communication in DLRM Training
with Dual-Level Adaptive Lossy Compression"), made real: the collective carries fixed-width codes, so the bytes
saved are bytes not sent.

config (presets) -> data (synthetic Criteo-like stream, Criteo TSV) -> model (linen dense side, tables) ->
sharded (placement, shard_map exchange, train step) -> bounds (dual-level eps) -> train (train_and_evaluate).
"""

from qrjax.dlrm.config import DLRMConfig, get_config

__all__ = ["DLRMConfig", "get_config"]
