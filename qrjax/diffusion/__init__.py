"""SuperGen in JAX: a flow-matching DiT, training-free tiled ultra-high-resolution generation with a region-aware
per-tile cache, and tile parallelism over devices; a text-to-image MMDiT on the shipped CLIP's text tower, with
SDiT's region-adaptive computation and TIDE's resolution extrapolation.

    from qrjax.diffusion import load_pretrained, generate, SuperGenConfig
    model = load_pretrained("cpu")
    image, stats = generate(model, SuperGenConfig(cache_threshold=0.2), scale=4, label=model.label("china"))

    from qrjax.diffusion import generate_image, TextToImageConfig
    t2i = load_pretrained("t2i-cpu")
    image, stats = generate_image(t2i, TextToImageConfig(correction="tide", sdit=True),
                                  "a photo of two red circles on the left.", scale=4)
"""

from qrjax.diffusion.config import (PRESETS, DiTConfig, SuperGenConfig, TextToImageConfig, get_config,
                                    get_supergen_config, get_t2i_config)
from qrjax.diffusion.export import PRETRAINED, load_model, load_pretrained, save_model
from qrjax.diffusion.model import DiffusionModel
from qrjax.diffusion.supergen import GenerationStats, generate, sketch, upsample
from qrjax.diffusion.t2i import T2IStats, generate_image


def __getattr__(name: str):
    # training (orbax, optax, the loop) is imported only when asked for, so inference never loads it
    if name == "train_and_evaluate":
        from qrjax.diffusion.train import train_and_evaluate

        return train_and_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "PRETRAINED", "DiTConfig", "DiffusionModel", "GenerationStats", "SuperGenConfig", "T2IStats",
           "TextToImageConfig", "generate", "generate_image", "get_config", "get_supergen_config", "get_t2i_config",
           "load_model", "load_pretrained", "save_model", "sketch", "train_and_evaluate", "upsample"]
