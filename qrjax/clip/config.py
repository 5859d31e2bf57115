"""CLIP configurations (frozen dataclasses with named presets and `--set key=value` overrides).

Presets: `tiny` (tests: seconds), `cpu` (this machine: minutes; the shipped model), `paper` (FastCLIP's xlarge
setting: ViT-B/16 towers, batch 5,120, LAION-scale schedule; GPU scale).

Losses (`loss`, see `qrjax.clip.losses`):
- "openclip": OpenCLIP's mini-batch contrastive loss (MBCL) with a learnable logit scale;
- "fastclip-v0": the global contrastive loss (GCL) with a learnable global temperature;
- "fastclip-v1": GCL at a constant temperature;
- "fastclip-v2": the robust GCL (RGCL) with per-sample temperatures and their Adam-like rule;
- "fastclip-v3": RGCL-g, a learnable global temperature through the KL-DRO dual with `rho` (FastCLIP's headline);
- "drrho": DRRho-CLIP, GCL on the excess over a frozen reference model, constant temperature.
Data selection (`jest_keep` > 0): the JEST-style baseline of DRRho-CLIP's paper: each step scores a super-batch of
batch_size / jest_keep pairs by learnability (the learner's contrastive loss minus the reference's) and trains on the
top batch_size.
Reductions (`reduction`): "fastclip" (features all-gathered without gradient, two blocks, only the parameter
all-reduce in backward) or "openclip" (features all-gathered with gradient).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from qrjax.config import from_preset

LOSSES = ("openclip", "fastclip-v0", "fastclip-v1", "fastclip-v2", "fastclip-v3", "drrho")
REDUCTIONS = ("fastclip", "openclip")
GAMMA_RULES = ("cosine", "drrho", "constant")


@dataclass(frozen=True)
class CLIPConfig:
    name: str = "cpu"
    # Data: images are resized to image_size; captions tokenised to context_length tokens (qrjax.clip.tokenizer).
    image_size: int = 32
    context_length: int = 16
    vocab_size: int = 128  # the text tower's embedding rows (>= the tokenizer's vocabulary)
    num_samples: int = 16384  # synthetic training pairs (the u tables hold one entry per training sample)
    noise: float = 0.0  # synthetic: fraction of captions swapped for another sample's
    # Image tower: a ViT (class token, pre-LN blocks).
    patch_size: int = 8
    image_width: int = 96
    image_depth: int = 3
    image_heads: int = 4
    # Text tower: a causal transformer pooled at the end-of-text token, as in CLIP.
    text_width: int = 96
    text_depth: int = 2
    text_heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 64
    # Loss and temperature.
    loss: str = "fastclip-v3"
    reduction: str = "fastclip"
    temperature: float = 0.07  # initial (or constant) tau
    tau_min: float = 0.01  # the global tau lives in [tau_min, tau_max] (logit scale <= 1/tau_min)
    tau_max: float = 1.0
    lr_tau: float = 0.0  # 0: the model's learning rate schedule (OpenCLIP, FastCLIP v0)
    tau_step_thresh: float = 0.0  # lr_tau x 1/3 once tau <= this (FastCLIP's `step_thresh`; 0: never)
    rho: float = 6.5
    eps: float = 1e-14  # inside log(eps + g)
    gamma_rule: str = "cosine"  # u's moving-average weight per epoch: cosine 1 -> gamma_min, drrho, or constant
    gamma_min: float = 0.2
    gamma_decay_epochs: int = 0  # cosine decay length (0: half the epochs, FastCLIP's README)
    v2_beta1: float = 0.9  # FastCLIP v2's per-sample Adam-like temperature rule
    v2_beta2: float = 0.999
    v2_eps: float = 1e-8
    v2_grad_clip: float = 5.0
    jest_keep: float = 0.0  # JEST-style selection: the fraction of a super-batch trained on (0: off)
    # Optimisation (AdamW, linear warm-up then cosine; no weight decay on gains, biases and the temperature).
    batch_size: int = 128
    steps: int = 3000
    learning_rate: float = 1e-3
    end_learning_rate: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta2: float = 0.98
    adam_eps: float = 1e-6
    grad_clip: float = 0.0  # global-norm clip (0: none, as in FastCLIP)
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 500

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_samples // self.batch_size)

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.steps_per_epoch)

    def validate(self) -> "CLIPConfig":
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} is not one of {LOSSES}")
        if self.reduction not in REDUCTIONS:
            problems.append(f"reduction {self.reduction!r} is not one of {REDUCTIONS}")
        if self.gamma_rule not in GAMMA_RULES:
            problems.append(f"gamma_rule {self.gamma_rule!r} is not one of {GAMMA_RULES}")
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for key in ("image_width", "text_width"):
            heads = getattr(self, key.replace("width", "heads"))
            if getattr(self, key) % heads:
                problems.append(f"{key} {getattr(self, key)} is not divisible by {key.split('_')[0]}_heads {heads}")
        if not 0 < self.tau_min <= self.temperature <= self.tau_max:
            problems.append(f"temperature {self.temperature} is not within [tau_min {self.tau_min}, "
                            f"tau_max {self.tau_max}]")
        if not 0 < self.gamma_min <= 1:
            problems.append(f"gamma_min {self.gamma_min} is not in (0, 1]")
        if not 0 <= self.noise < 1:
            problems.append(f"noise {self.noise} is not in [0, 1)")
        if self.batch_size < 2:
            problems.append(f"batch_size {self.batch_size}: a contrastive batch needs at least 2 pairs")
        if self.num_samples < self.batch_size:
            problems.append(f"num_samples {self.num_samples} is smaller than batch_size {self.batch_size}")
        if not 0 <= self.jest_keep <= 1 or (self.jest_keep and round(self.batch_size / self.jest_keep)
                                                          > self.num_samples):
            problems.append(f"jest_keep {self.jest_keep}: a fraction in (0, 1] whose super-batch batch_size / "
                            f"jest_keep fits in num_samples {self.num_samples} (0: no selection)")
        if self.context_length < 3:
            problems.append(f"context_length {self.context_length}: needs room for start, a word and end tokens")
        if problems:
            raise ValueError(f"CLIP config {self.name!r}: " + "; ".join(problems))
        return self


PRESETS = {
    "tiny": CLIPConfig(name="tiny", image_size=16, context_length=12, vocab_size=64, num_samples=256, patch_size=8,
                       image_width=32, image_depth=1, image_heads=2, text_width=32, text_depth=1, text_heads=2,
                       embed_dim=16, batch_size=16, steps=4, warmup_steps=1, log_every=2, checkpoint_every=2),
    # FastCLIP v3 with its medium-setting temperature rate; the shipped model (qrjax.clip.export.load_pretrained)
    "cpu": CLIPConfig(lr_tau=2e-4, eval_every=500),
    # FastCLIP's xlarge setting (LAION-315M, ViT-B/16, 5,120 = 320 x 16 GPUs, 30 epochs): its v3 knobs.
    "paper": CLIPConfig(name="paper", image_size=224, context_length=77, vocab_size=49408,
                        num_samples=315_658_316, patch_size=16, image_width=768, image_depth=12, image_heads=12,
                        text_width=512, text_depth=12, text_heads=8, embed_dim=512, batch_size=5120,
                        steps=30 * (315_658_316 // 5120), learning_rate=2e-4, end_learning_rate=4e-5,
                        warmup_steps=13_200, weight_decay=0.2, eps=1e-6, lr_tau=5e-5, rho=16.0, gamma_min=0.8,
                        gamma_decay_epochs=10, log_every=100, checkpoint_every=2000),
}


# The papers' recipes that come with a loss: DRRho-CLIP trains at a constant tau = 0.01 with gamma = 1 and
# eps = 1e-4 (its README); `get_config` applies them between the preset and the user's overrides.
LOSS_RECIPES = {"drrho": {"temperature": 0.01, "eps": 1e-4, "gamma_rule": "constant", "gamma_min": 1.0}}


def get_config(preset: str = "cpu", overrides=None) -> CLIPConfig:
    """The preset, then the recipe of the loss the overrides (or the preset) name, then the overrides."""
    config = from_preset(PRESETS, preset, overrides, system="clip")
    recipe = {k: v for k, v in LOSS_RECIPES.get(config.loss, {}).items() if not _overridden(overrides, k)}
    return dataclasses.replace(config, **recipe).validate() if recipe else config.validate()


def _overridden(overrides, key: str) -> bool:
    if not overrides:
        return False
    if isinstance(overrides, dict):
        return key in overrides
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def replace(config: CLIPConfig, **changes) -> CLIPConfig:
    return dataclasses.replace(config, **changes).validate()


__all__ = ["CLIPConfig", "GAMMA_RULES", "LOSSES", "LOSS_RECIPES", "PRESETS", "REDUCTIONS", "get_config", "replace"]
