"""CLIP evaluation: batched embedding, image-text retrieval recall@k, and zero-shot classification with prompt
ensembles.

Inference-only (no trainer, optimiser or checkpoint imports). The metrics run in float64 numpy on features fetched
from the device; all of them rank by cosine similarity with one rule for ties:

    rank of the right answer = the number of OTHER candidates whose similarity is >= the right answer's,

so a tie counts against the model (a hit at k needs rank < k). A collapsed encoder (every feature equal) therefore
scores 0 at recall@1 instead of 1, and a result never depends on the order of the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np

if TYPE_CHECKING:  # export imports this module for `embed`
    from qrjax.clip.export import ClipModel

_ROWS = 1024  # similarity rows per block: bounds the float64 [rows, N] working set for large evaluation sets


def embed(fn: Callable, params, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """fn(params, inputs[i:i+batch_size]) over inputs: [N, ...] in batches of exactly batch_size -> np.ndarray[N, ...].

    fn should be jitted: every call sees the same batch shape (the last batch is padded by repeating its last row and
    the padding rows are dropped), so one compilation serves every N. Results stay on the device until the end, so
    the batches are dispatched without waiting on each other."""
    if batch_size < 1:
        raise ValueError(f"embed: batch_size {batch_size} must be >= 1")
    inputs = np.asarray(inputs)
    if inputs.ndim == 0:
        raise ValueError("embed: inputs is a scalar; expected an array [N, ...]")
    n = inputs.shape[0]
    if n == 0:
        out = jax.eval_shape(fn, params, jax.ShapeDtypeStruct((batch_size, *inputs.shape[1:]), inputs.dtype))
        return np.zeros((0, *out.shape[1:]), out.dtype)
    outs = []
    for start in range(0, n, batch_size):
        chunk = inputs[start:start + batch_size]
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        outs.append(fn(params, chunk))
    return np.concatenate(jax.device_get(outs))[:n]


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name}: shape {x.shape}; expected [..., d] features")
    if x.size == 0:
        raise ValueError(f"{name}: shape {x.shape} is empty; nothing to rank")
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.all(norm > 0):
        raise ValueError(f"{name}: {int(np.sum(norm == 0))} all-zero feature vectors (no direction to rank by)")
    return x / norm


def ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """scores: float[N, C]; correct: int[N] -> int[N]: per row, the number of other columns scoring >= the correct
    column (the module's tie rule: 0 is a strict win)."""
    scores = np.asarray(scores)
    right = np.take_along_axis(scores, np.asarray(correct)[:, None], axis=1)
    return np.sum(scores >= right, axis=1) - 1  # the correct column itself is >= itself


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray,
                      ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k of paired features (image i <-> text i) in both directions, by cosine similarity.

    image_features, text_features: float[N, d] (normalised here). Returns {'retrieval_r{k}_i2t': the fraction of
    images whose caption ranks < k among all N captions, 'retrieval_r{k}_t2i': the same for texts among images}
    for each k, keys in the order of ks; ties count against (see the module docstring)."""
    img, txt = _unit(image_features, "image_features"), _unit(text_features, "text_features")
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"retrieval_metrics: image_features {img.shape} and text_features {txt.shape} must be "
                         "the same [N, d] (pair i <-> i)")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"retrieval_metrics: ks {tuple(ks)} must be >= 1")
    n = len(img)
    i2t, t2i = np.empty(n, np.int64), np.empty(n, np.int64)
    for start in range(0, n, _ROWS):
        rows = np.arange(start, min(start + _ROWS, n))
        i2t[rows] = ranks(img[rows] @ txt.T, rows)
        t2i[rows] = ranks(txt[rows] @ img.T, rows)
    out = {}
    for k in ks:
        out[f"retrieval_r{k}_i2t"] = float(np.mean(i2t < k))
        out[f"retrieval_r{k}_t2i"] = float(np.mean(t2i < k))
    return out


def zero_shot_classifier(text_features_per_class: np.ndarray) -> np.ndarray:
    """CLIP's prompt ensembling: float[C, T, d] (T prompt embeddings per class) -> float64[C, d], the mean of the
    normalised prompt embeddings of each class, renormalised."""
    feats = np.asarray(text_features_per_class)
    if feats.ndim != 3:
        raise ValueError(f"zero_shot_classifier: shape {feats.shape}; expected [classes, templates, d]")
    return _unit(_unit(feats, "text_features_per_class").mean(axis=1), "class embeddings")


def zero_shot_accuracy(image_features: np.ndarray, classifier: np.ndarray, labels: np.ndarray,
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of zero-shot classification by cosine similarity.

    image_features: float[N, d]; classifier: float[C, d] (zero_shot_classifier); labels: int[N] in [0, C).
    Returns {'zero_shot_top{k}': accuracy} for each k in ks with k < C (top-C is always 1); ties count against."""
    img, cls = _unit(image_features, "image_features"), _unit(classifier, "classifier")
    labels = np.asarray(labels)
    if img.ndim != 2 or cls.ndim != 2 or img.shape[1] != cls.shape[1]:
        raise ValueError(f"zero_shot_accuracy: image_features {img.shape} and classifier {cls.shape} must be "
                         "[N, d] and [C, d]")
    if labels.shape != (len(img),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"zero_shot_accuracy: labels {labels.dtype}{list(labels.shape)}; expected int[{len(img)}]")
    if not (0 <= labels.min() and labels.max() < len(cls)):
        raise ValueError(f"zero_shot_accuracy: labels span [{labels.min()}, {labels.max()}]; the classifier has "
                         f"{len(cls)} classes")
    r = np.concatenate([ranks(img[s:s + _ROWS] @ cls.T, labels[s:s + _ROWS]) for s in range(0, len(img), _ROWS)])
    return {f"zero_shot_top{k}": float(np.mean(r < k)) for k in ks if k < len(cls)}


def zero_shot_top1(image_features: np.ndarray, classifier: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 zero-shot accuracy (zero_shot_accuracy at k = 1; ties count against)."""
    if len(np.asarray(classifier)) < 2:
        raise ValueError("zero_shot_top1: the classifier needs at least 2 classes")
    return zero_shot_accuracy(image_features, classifier, labels, ks=(1,))["zero_shot_top1"]


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template formatted with every class name, class-major: [t.format(c) for c in classes for t in
    templates] (a template holds one '{}')."""
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"templates: each needs exactly one '{{}}' for the class name; got {list(bad or templates)}")
    return [t.format(c) for c in class_names for t in templates]


def evaluate_model(model: "ClipModel", images_zs: np.ndarray | None, labels_zs: np.ndarray | None,
                   class_names: Sequence[str], templates: Sequence[str], images_ret: np.ndarray | None,
                   captions_ret: Sequence[str] | None, batch_size: int = 256) -> dict[str, float]:
    """Zero-shot classification and retrieval of a ClipModel (qrjax.clip.export).

    images_zs: uint8[N, S, S, 3] with labels_zs int[N] indexing class_names, classified by the prompt ensemble of
    `templates` (e.g. "a photo of a {}."); images_ret: uint8[M, S, S, 3] with captions_ret (M strings, pair i <-> i).
    Either part is skipped when its images are None. Returns zero_shot_top1 (and zero_shot_top5 with more than 5
    classes), retrieval_r1_i2t, retrieval_r5_i2t, retrieval_r1_t2i, retrieval_r5_t2i."""
    out = {}
    if images_zs is not None:
        if len(class_names) < 2:
            raise ValueError(f"evaluate_model: zero-shot needs at least 2 class names, got {list(class_names)}")
        text = model.encode_texts(prompts(class_names, templates), batch_size)
        classifier = zero_shot_classifier(text.reshape(len(class_names), len(templates), -1))
        out.update(zero_shot_accuracy(model.encode_images(images_zs, batch_size), classifier, labels_zs))
    if images_ret is not None:
        if captions_ret is None or len(captions_ret) != len(images_ret):
            raise ValueError(f"evaluate_model: {len(images_ret)} retrieval images need as many captions, got "
                             f"{None if captions_ret is None else len(captions_ret)}")
        out.update(retrieval_metrics(model.encode_images(images_ret, batch_size),
                                     model.encode_texts(list(captions_ret), batch_size)))
    return out


class EvalSets(NamedTuple):
    """What a data set is scored on. Synthetic: the zero-shot set (the held-out colour-shape pairs), the retrieval set
    (one image per distinct training caption) and hard negatives (a caption changed in one attribute); a user's data
    set: retrieval over its first pairs (it has no classes)."""

    zs_images: np.ndarray | None
    zs_labels: np.ndarray | None
    class_names: list[str]
    templates: tuple[str, ...]
    ret_images: np.ndarray | None
    ret_captions: list[str] | None
    hn_images: np.ndarray | None = None
    hn_captions: list[str] | None = None
    hn_negatives: list[str] | None = None


def eval_sets(data, image_size: int, *, seed: int = 0, per_class: int = 50, max_pairs: int = 1000,
              hard_negatives: int = 512, **open_kwargs) -> EvalSets:
    """The evaluation sets of `data` ("synthetic", or a CSV/TSV file or webdataset shards as qrjax.clip.data reads
    them, or an opened pair source), at image_size."""
    from qrjax.clip import data as cdata

    if str(data) == "synthetic":
        images, labels, names = cdata.zero_shot_set(image_size, per_class, seed=seed)
        ret_images, ret_captions = cdata.retrieval_set(image_size, seed=seed)
        val = cdata.SyntheticScenes(hard_negatives, image_size, seed=seed, split="val")
        idx = np.arange(hard_negatives)
        return EvalSets(images, labels, names, cdata.PROMPT_TEMPLATES, ret_images, ret_captions, val.images(idx),
                        val.clean_captions(idx), val.hard_negatives(idx))
    source = data if hasattr(data, "images") else cdata.open_pairs(data, image_size, **open_kwargs)
    idx = np.arange(min(max_pairs, source.size))
    return EvalSets(None, None, [], (), source.images(idx), source.captions(idx))


def hard_negative_accuracy(image_features: np.ndarray, caption_features: np.ndarray,
                           negative_features: np.ndarray) -> float:
    """The fraction of images whose own caption scores strictly above its hard negative (one attribute changed)."""
    own = np.sum(np.asarray(image_features, np.float64) * caption_features, axis=-1)
    other = np.sum(np.asarray(image_features, np.float64) * negative_features, axis=-1)
    return float(np.mean(own > other))


def evaluate_sets(model: "ClipModel", sets: EvalSets, batch_size: int = 256) -> dict[str, float]:
    """evaluate_model on the sets, plus hard_negative_accuracy where the sets have hard negatives."""
    out = evaluate_model(model, sets.zs_images, sets.zs_labels, sets.class_names, sets.templates, sets.ret_images,
                         sets.ret_captions, batch_size)
    if sets.hn_images is not None:
        out["hard_negative_accuracy"] = hard_negative_accuracy(
            model.encode_images(sets.hn_images, batch_size), model.encode_texts(sets.hn_captions, batch_size),
            model.encode_texts(sets.hn_negatives, batch_size))
    return out


__all__ = ["EvalSets", "embed", "eval_sets", "evaluate_model", "evaluate_sets", "hard_negative_accuracy", "prompts",
           "ranks", "retrieval_metrics", "zero_shot_accuracy", "zero_shot_classifier", "zero_shot_top1"]
