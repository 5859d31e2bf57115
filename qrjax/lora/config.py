"""ALTO configurations: the frozen backbone's architecture (`LlamaConfig`, Hugging Face Llama's config.json fields)
and the tuning run (`TuneConfig`: slots, steps, evaluation, early exit, devices), frozen dataclasses with presets.

Presets (`TUNE_PRESETS`): `tiny` (tests: seconds), `cpu` (this machine: the experiment's grid in minutes), `paper`
(ALTO's setting: 3 epochs over the task, α = 2r, AdamW with weight decay 0.01, batch ≤ 16 per adapter; GPU scale).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrjax.config import from_preset

# Hugging Face config.json keys <-> LlamaConfig fields (the names differ only where linen's do)
HF_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "max_position_embeddings": "max_position_embeddings",
    "tie_word_embeddings": "tie_word_embeddings",
}
# the projections a LoRA adapter may attach to (PEFT's target_modules names)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LlamaConfig:
    """A decoder-only transformer with Llama's layout: RMSNorm, rotary positions (Hugging Face's rotate-half
    convention), SwiGLU MLP, grouped-query attention (num_kv_heads divides num_heads), no biases."""

    vocab_size: int = 259
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0  # 0: hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LlamaConfig: num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}")
        if not self.head_dim and self.hidden_size % self.num_heads:
            raise ValueError(f"LlamaConfig: hidden_size {self.hidden_size} is not a multiple of num_heads "
                             f"{self.num_heads}; give head_dim")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def projection_shape(self, name: str) -> tuple[int, int]:
        """(d_in, d_out) of a projection in PROJECTIONS."""
        d, f, h = self.hidden_size, self.intermediate_size, self.dim_per_head
        shapes = {"q_proj": (d, self.num_heads * h), "k_proj": (d, self.num_kv_heads * h),
                  "v_proj": (d, self.num_kv_heads * h), "o_proj": (self.num_heads * h, d),
                  "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
        if name not in shapes:
            raise ValueError(f"unknown projection {name!r}; choose from {PROJECTIONS}")
        return shapes[name]


BACKBONES = {
    # the shipped backbone (qrjax/lora/weights/tiny.*), pre-trained here on synthetic text skills
    "tiny": LlamaConfig(),
    # a Llama-3.2-1B-shaped backbone (random weights unless loaded): for GPU memory and kernel measurements
    "llama-1b": LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                            num_kv_heads=8, head_dim=64, rope_theta=500000.0, max_position_embeddings=131072,
                            tie_word_embeddings=True),
}


@dataclass(frozen=True)
class TuneConfig:
    """One ALTO tuning run: every configuration of a hyperparameter grid (lr x rank x batch) on one or more tasks,
    trained as LoRA adapters of one frozen backbone, `slots` at a time per device."""

    name: str = "cpu"
    # Slots: adapters trained together on one device; a freed slot is back-filled from the queue (no recompile:
    # the slot count and the token buffer are fixed, an empty slot is a zero-size group).
    slots: int = 8
    capacity: int = 64  # sequences per device per step (the live adapters' batches share it; ALTO's memory bound)
    memory_margin: float = 0.1  # safety margin of the memory model (with memory_budget_mb)
    rank_max: int = 8  # ranks are padded to this with exact zeros (>= every rank of the grid)
    targets: tuple[str, ...] = PROJECTIONS  # projections that carry LoRA (PEFT's target_modules)
    alpha_ratio: float = 2.0  # alpha = alpha_ratio * rank, scale = alpha / rank (ALTO: alpha = 2r)
    steps: int = 300  # optimiser steps per configuration (--steps caps it)
    eval_every: int = 20  # validation every this many of a configuration's steps (and at warm-up, and at the end)
    num_train: int = 2048  # synthetic tasks: training examples
    num_val: int = 64  # synthetic tasks: validation examples (user JSONL: val_fraction of the lines)
    val_batch: int = 32  # validation sequences per slot per forward pass
    weight_decay: float = 0.01  # AdamW (ALTO: 0.01)
    grad_clip: float = 1.0  # per adapter (global norm over that adapter's A and B)
    early_exit: bool = True
    ema_alpha: float = 0.1  # EMA weight of the newest training loss (ALTO does not give it)
    devices: int = 1  # adapter-per-device parallelism: each device owns `slots` whole adapters
    shard_backbone: bool = False  # split the frozen backbone over the devices (when it does not fit on one)
    memory_budget_mb: float = 0.0  # > 0: capacity from ALTO's memory model M(B) = k0 + k1 B L fitted on the
    # compiled step (per device), the largest B with M(B) (1 + memory_margin) <= the budget; 0: `capacity` as given
    impl: str = "auto"  # the grouped matmul (qrjax.lora.multilora.IMPLS; auto: per-sequence gather on CPU,
    # lax.ragged_dot elsewhere)
    checkpoint_every: int = 100  # engine steps between checkpoints of a resumable run
    seed: int = 0


TUNE_PRESETS = {
    "tiny": TuneConfig(name="tiny", slots=4, capacity=16, rank_max=4, steps=24, eval_every=4, num_train=256,
                       num_val=16, val_batch=8, checkpoint_every=10),
    "cpu": TuneConfig(),
    "paper": TuneConfig(name="paper", slots=32, capacity=128, rank_max=64, steps=3000, eval_every=100,
                        num_train=7473, num_val=1319, val_batch=64, ema_alpha=0.1),
}


def get_tune_config(preset: str = "cpu", overrides=None) -> TuneConfig:
    config = from_preset(TUNE_PRESETS, preset, overrides, system="lora")
    from qrjax.lora.multilora import IMPLS

    if config.impl not in IMPLS:
        raise ValueError(f"lora: impl {config.impl!r}; choose from {IMPLS}")
    bad = [t for t in config.targets if t not in PROJECTIONS]
    if bad or not config.targets:
        raise ValueError(f"lora: targets {list(config.targets)}; choose a non-empty subset of {PROJECTIONS}")
    for name in ("slots", "capacity", "rank_max", "steps", "eval_every", "devices", "val_batch"):
        if getattr(config, name) < 1:
            raise ValueError(f"lora: {name} must be >= 1, got {getattr(config, name)}")
    return dataclasses.replace(config)
