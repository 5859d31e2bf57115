"""Scoring generated images with the shipped CLIP: prompt adherence (CLIP score) and the attributes of the prompt's
objects read back (count, colour, shape, position), for the captioned synthetic scenes the text-to-image model
was trained on.

- `clip_score`: 100 x max(cos(image, prompt), 0) (CLIPScore with w = 1), the image area-averaged to CLIP's input size
  first (a 128-px output is read as the 32-px picture CLIP knows);
- `attribute_accuracy`: per attribute, CLIP chooses among captions that differ from the prompt in that attribute
  alone (every count, every colour, ...); right when it picks the prompt's value.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from qrjax.clip.data import ATTRIBUTES, COLOURS, POSITIONS, SHAPES, TRAIN_PAIRS, caption_text

ATTRIBUTE_NAMES = ("count", "colour", "shape", "position")
_CHOICES = {"count": (1, 2, 3), "colour": range(len(COLOURS)), "shape": range(len(SHAPES)),
            "position": range(len(POSITIONS))}


def to_clip_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8[N, H, W, 3] -> uint8[N, size, size, 3] by area averaging (PIL's box filter)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: {images.dtype}{list(images.shape)}; expected uint8[N, H, W, 3]")
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BOX)) for im in images])


def clip_score(clip, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """f64[N]: 100 max(cos, 0) between each image and its prompt under `clip` (a qrjax.clip ClipModel)."""
    if len(prompts) != len(images):
        raise ValueError(f"clip_score: {len(images)} images and {len(prompts)} prompts")
    img = clip.encode_images(to_clip_size(images, clip.config.image_size)).astype(np.float64)
    txt = clip.encode_texts(list(prompts)).astype(np.float64)
    return 100.0 * np.maximum(np.sum(img * txt, axis=1), 0.0)


def prompt_set(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(ATTRIBUTES[n], prompts): n scenes over the training colour-shape pairs, drawn from `seed`, captioned with
    the first template ("a photo of two red circles on the left.")."""
    rng = np.random.default_rng([seed, 20])
    attributes = np.empty(n, ATTRIBUTES)
    pairs = np.array(TRAIN_PAIRS)[rng.integers(len(TRAIN_PAIRS), size=n)]
    attributes["count"] = rng.integers(1, 4, n)
    attributes["colour"], attributes["shape"] = pairs[:, 0], pairs[:, 1]
    attributes["position"] = rng.integers(len(POSITIONS), size=n)
    return attributes, [caption_text(*a) for a in attributes.tolist()]


def attribute_accuracy(clip, images: np.ndarray, attributes: np.ndarray) -> dict[str, np.ndarray]:
    """{attribute: bool[N]} whether CLIP reads each image's attribute as the prompt's value, choosing among the
    captions that change that attribute alone (template 0)."""
    attributes = np.asarray(attributes, ATTRIBUTES)
    if len(attributes) != len(images):
        raise ValueError(f"attribute_accuracy: {len(images)} images and {len(attributes)} attribute records")
    feats = clip.encode_images(to_clip_size(images, clip.config.image_size)).astype(np.float64)
    out = {}
    for a, name in enumerate(ATTRIBUTE_NAMES):
        choices = list(_CHOICES[name])
        texts, truth = [], []
        for rec in attributes.tolist():
            for value in choices:
                r = list(rec)
                r[a] = value
                texts.append(caption_text(*r))
            truth.append(choices.index(rec[a]))
        txt = clip.encode_texts(texts).astype(np.float64).reshape(len(images), len(choices), -1)
        pick = np.argmax(np.einsum("nd,ncd->nc", feats, txt), axis=1)
        out[name] = pick == np.asarray(truth)
    return out


__all__ = ["ATTRIBUTE_NAMES", "attribute_accuracy", "clip_score", "prompt_set", "to_clip_size"]
