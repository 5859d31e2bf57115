"""DLRM configurations (frozen dataclasses with named presets and `--set key=value` overrides).

Presets: `tiny` (tests: seconds), `cpu` (this machine: minutes; the Kaggle table profile capped at 2^15 rows),
`kaggle` and `terabyte` (the SC'24 artifact's settings: dims 32/64, its MLP sizes, SGD lr 0.1, batch 128/2,048,
max-ind-range 10M for Terabyte; GPU scale).

Compression of the forward embedding all-to-all (`compress`):
- "none": float32 payload;
- "fixed": one range-relative bound `eps` for every table and step;
- "adaptive": the dual-level bound eps_t * m(step): table-wise eps_t by `table_rule` ("paper": the artifact's lists
  of tight (eps_tight) and loose (eps_loose) tables for the Kaggle and Terabyte profiles, eps_other elsewhere;
  "stats": derived from each table's measured statistics, see `qrjax.dlrm.bounds`), times an iteration multiplier
  m going from `multiplier` to 1 over the first `early_stage` steps (`schedule`: step | linear | log | constant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrjax.config import from_preset
from qrjax.dlrm.data import KAGGLE_TABLE_SIZES, NUM_DENSE, capped_table_sizes
# Criteo Terabyte cardinalities (MLPerf DLRM's day_fea_count; the artifact's tight tables are its 7 largest and its
# loose tables its 9 smallest, as below), before the max-ind-range cap.
TERABYTE_TABLE_SIZES = (227605432, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 130229467, 3067956, 405282, 10,
                        2209, 11938, 155, 4, 976, 14, 292775614, 40790948, 187188510, 590152, 12973, 108, 36)
PROFILES = {"kaggle": KAGGLE_TABLE_SIZES, "terabyte": TERABYTE_TABLE_SIZES}
# The artifact's table-wise bounds (SC_ADAE_scripts): tables at eps_tight and eps_loose; the others at eps_other.
PAPER_TABLES = {"kaggle": {"tight": (2, 3, 9, 11, 15, 20, 23, 25), "loose": (8, 16, 19, 21, 22, 24)},
                "terabyte": {"tight": (0, 9, 10, 19, 20, 21, 22), "loose": (5, 8, 12, 15, 16, 17, 18, 24, 25)}}
COMPRESS = ("none", "fixed", "adaptive")
TABLE_RULES = ("paper", "stats")
SCHEDULES = ("step", "linear", "log", "constant")


@dataclass(frozen=True)
class DLRMConfig:
    name: str = "cpu"
    # Tables: a profile's cardinalities, hashed into at most max_ind_range rows each (0: no cap).
    profile: str = "kaggle"
    max_ind_range: int = 32768
    embedding_dim: int = 16
    multi_hot: int = 1  # lookups per table per sample, sum-pooled (Criteo: 1)
    bottom_mlp: tuple[int, ...] = (128, 64, 16)  # the last width is embedding_dim
    top_mlp: tuple[int, ...] = (128, 64, 1)  # the last width is 1 (the click logit)
    # Training (SGD as in the artifact).
    batch_size: int = 128
    learning_rate: float = 0.1
    steps: int = 3000
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_every: int = 500
    eval_samples: int = 32768
    eval_batch_size: int = 4096
    # Synthetic data (qrjax.dlrm.data.SyntheticCriteo).
    zipf_a: float = 1.1
    ctr: float = 0.25
    # Compression of the forward embedding all-to-all.
    compress: str = "none"
    eps: float = 0.03  # "fixed"
    eps_tight: float = 0.01  # "adaptive": table-wise levels
    eps_other: float = 0.03
    eps_loose: float = 0.05
    table_rule: str = "paper"
    schedule: str = "step"
    early_stage: int = 540  # steps over which the multiplier goes to 1 (artifact: 65,536 of ~358k iterations)
    multiplier: float = 2.0
    compress_backward: bool = False  # also compress the gradients' all-to-all (beyond the paper)
    code_dtype: str = "auto"  # auto (int8 where every bound fits, else int16) | int8 | int16

    @property
    def table_sizes(self) -> tuple[int, ...]:
        return capped_table_sizes(PROFILES[self.profile], self.max_ind_range)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def replace(self, **changes) -> "DLRMConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "DLRMConfig":
        """self, or a ValueError naming the first inconsistent field."""
        if self.profile not in PROFILES:
            raise ValueError(f"dlrm config: profile {self.profile!r} is not one of {sorted(PROFILES)}")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(f"dlrm config: bottom_mlp must end with embedding_dim={self.embedding_dim}, got "
                             f"{self.bottom_mlp}")
        if self.top_mlp[-1] != 1:
            raise ValueError(f"dlrm config: top_mlp must end with 1 (the logit), got {self.top_mlp}")
        for key, allowed in (("compress", COMPRESS), ("table_rule", TABLE_RULES), ("schedule", SCHEDULES),
                             ("code_dtype", ("auto", "int8", "int16"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"dlrm config: {key}={getattr(self, key)!r} is not one of {allowed}")
        for key in ("eps", "eps_tight", "eps_other", "eps_loose"):
            value = getattr(self, key)
            if not 0 < value * max(self.multiplier, 1.0) < 0.5:
                raise ValueError(f"dlrm config: {key}={value} times the multiplier must lie in (0, 0.5)")
        if self.multiplier < 1:
            raise ValueError(f"dlrm config: multiplier must be >= 1 (it decays to 1), got {self.multiplier}")
        for key in ("batch_size", "steps", "multi_hot", "embedding_dim", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"dlrm config: {key} must be >= 1, got {getattr(self, key)}")
        return self


PRESETS: dict[str, DLRMConfig] = {
    "tiny": DLRMConfig(name="tiny", max_ind_range=64, embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1),
                       multi_hot=2, batch_size=64, steps=4, log_every=2, checkpoint_every=2, eval_every=0,
                       eval_samples=256, eval_batch_size=128, early_stage=2),
    "cpu": DLRMConfig(),
    # The artifact's Criteo Kaggle run: 1 epoch of 45.8M samples at batch 128 (~358k iterations).
    "kaggle": DLRMConfig(name="kaggle", profile="kaggle", max_ind_range=0, embedding_dim=32,
                         bottom_mlp=(512, 256, 64, 32), top_mlp=(512, 256, 1), batch_size=128, steps=358_000,
                         log_every=1024, checkpoint_every=16384, eval_every=32768, eval_samples=1 << 20,
                         eval_batch_size=16384, early_stage=65536),
    "terabyte": DLRMConfig(name="terabyte", profile="terabyte", max_ind_range=10_000_000, embedding_dim=64,
                           bottom_mlp=(512, 256, 64), top_mlp=(512, 512, 256, 1), batch_size=2048, steps=1_900_000,
                           log_every=1024, checkpoint_every=16384, eval_every=65536, eval_samples=1 << 20,
                           eval_batch_size=16384, early_stage=65536),
}


def get_config(preset: str = "cpu", overrides: list[str] | tuple[str, ...] | dict | None = None) -> DLRMConfig:
    """PRESETS[preset] with `key=value` overrides, validated."""
    return from_preset(PRESETS, preset, overrides, "dlrm").validate()


__all__ = ["COMPRESS", "DLRMConfig", "KAGGLE_TABLE_SIZES", "NUM_DENSE", "PAPER_TABLES", "PRESETS", "PROFILES",
           "SCHEDULES", "TABLE_RULES", "TERABYTE_TABLE_SIZES", "get_config"]
