"""The two-tower CLIP: shapes and unit norms, the text tower's causality and EOT pooling against the states it pools,
the patch embedding against a numpy reshape + matmul, float64, and parameter counts against closed-form formulas
(the paper preset at ViT-B/16 scale)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.clip.config import PRESETS
from qrjax.clip.model import CLIP, CLIP_MEAN, CLIP_STD, EOT_TOKEN, init_params, num_params

SOT, PAD = 1, 0
TINY = PRESETS["tiny"]


def tokens_for(words_per_row: list[list[int]], length: int = TINY.context_length) -> np.ndarray:
    """int32[B, length]: SOT, the word ids, EOT, then PAD (the tokenizer's layout, built by hand)."""
    out = np.full((len(words_per_row), length), PAD, np.int32)
    for i, words in enumerate(words_per_row):
        row = [SOT, *words, EOT_TOKEN]
        out[i, :len(row)] = row
    return out


@pytest.fixture(scope="module")
def tiny():
    params = init_params(TINY, jax.random.key(0))
    model = CLIP(TINY)
    image_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
    text_fn = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))
    return params, image_fn, text_fn


def random_images(n: int, seed: int = 0) -> np.ndarray:
    s = TINY.image_size
    return np.random.default_rng(seed).integers(0, 256, (n, s, s, 3), dtype=np.uint8)


def test_shapes_dtypes_and_unit_norm(tiny):
    params, _, _ = tiny
    images, tokens = random_images(3), tokens_for([[5, 6], [7], [8, 9, 10, 11]])
    img, txt = jax.jit(lambda p: CLIP(TINY).apply({"params": p}, images, tokens))(params)
    assert img.shape == txt.shape == (3, TINY.embed_dim) and img.dtype == txt.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-6)
    assert set(params) == {"visual", "text"}
    # different inputs give different features (the towers are not constant)
    assert np.abs(img[0] - img[1]).max() > 1e-3 and np.abs(txt[0] - txt[1]).max() > 1e-3


def test_text_is_causal_tokens_after_eot_do_not_matter_and_before_do(tiny):
    params, _, text_fn = tiny
    base = tokens_for([[5, 6, 7]])
    after = base.copy()
    after[0, 6:] = [9, 10, 11, 12, 13, 14]  # past EOT (at index 4) and the padding after it
    before = base.copy()
    before[0, 2] = 20
    f_base, f_after, f_before = (np.asarray(text_fn(params, t)) for t in (base, after, before))
    np.testing.assert_array_equal(f_after, f_base)
    assert np.abs(f_before - f_base).max() > 1e-3


def test_text_features_are_the_projected_state_at_the_eot_token(tiny):
    params, _, text_fn = tiny
    tokens = tokens_for([[5], [5, 6, 7, 8], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])  # EOT at 2, 5 and 11 (the last)
    _, state = jax.jit(lambda p: CLIP(TINY).apply({"params": p}, tokens, method="encode_text",
                                                  capture_intermediates=lambda mdl, _: mdl.name == "ln_final"))(params)
    hidden = np.asarray(state["intermediates"]["text"]["ln_final"]["__call__"][0], np.float64)  # [B, L, w]
    eot = [2, 5, 11]
    pooled = hidden[np.arange(3), eot] @ np.asarray(params["text"]["proj"]["kernel"], np.float64)
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(text_fn(params, tokens), want, atol=1e-5)
    # the same prefix read at a later EOT is a different feature
    moved = tokens_for([[5, 6, 7, 8, 9]])
    assert np.abs(np.asarray(text_fn(params, moved))[0] - np.asarray(text_fn(params, tokens))[1]).max() > 1e-3


def test_patch_embedding_is_a_matmul_over_normalised_patches(tiny):
    params, _, _ = tiny
    images = random_images(2, seed=1)
    capture = lambda mdl, _: mdl.name == "patch_embed"  # noqa: E731
    _, state = jax.jit(lambda p: CLIP(TINY).apply({"params": p}, images, method="encode_image",
                                                  capture_intermediates=capture))(params)
    got = np.asarray(state["intermediates"]["visual"]["patch_embed"]["__call__"][0])  # [B, S/p, S/p, w]
    p, s, w = TINY.patch_size, TINY.image_size, TINY.image_width
    x = (images / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    n = s // p
    patches = x.reshape(2, n, p, n, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, n, n, p * p * 3)
    kernel = np.asarray(params["visual"]["patch_embed"]["kernel"], np.float64)  # [p, p, 3, w]
    np.testing.assert_allclose(got, patches @ kernel.reshape(p * p * 3, w), rtol=1e-5, atol=1e-5)


def test_float_images_in_unit_range_match_uint8(tiny):
    params, image_fn, _ = tiny
    images = random_images(2, seed=2)
    np.testing.assert_allclose(image_fn(params, images.astype(np.float32) / 255.0), image_fn(params, images),
                               atol=1e-6)


def test_float64_parameters_and_inputs_compute_in_float64(tiny):
    params32, image_fn, text_fn = tiny
    images, tokens = random_images(2, seed=3), tokens_for([[5, 6], [7, 8, 9]])
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params32)
        img, txt = jax.jit(CLIP(TINY).apply)({"params": params}, images.astype(np.float64) / 255.0, tokens)
        assert img.dtype == txt.dtype == jnp.float64
        np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-12)
        assert jax.tree.leaves(init_params(TINY, jax.random.key(0), jnp.float64))[0].dtype == jnp.float64
    np.testing.assert_allclose(img, image_fn(params32, images), atol=1e-5)
    np.testing.assert_allclose(txt, text_fn(params32, tokens), atol=1e-5)


def test_bad_inputs_name_the_problem(tiny):
    params, _, _ = tiny
    model = CLIP(TINY)
    with pytest.raises(ValueError, match=r"images: shape \(2, 8, 8, 3\); expected \[B, 16, 16, 3\]"):
        model.apply({"params": params}, np.zeros((2, 8, 8, 3), np.uint8), method="encode_image")
    with pytest.raises(ValueError, match="images: dtype int32"):
        model.apply({"params": params}, np.zeros((2, 16, 16, 3), np.int32), method="encode_image")
    with pytest.raises(ValueError, match=r"tokens: shape \(2, 13\); expected \[B, L\] with 1 <= L <= 12"):
        model.apply({"params": params}, np.zeros((2, 13), np.int32), method="encode_text")
    with pytest.raises(ValueError, match="tokens: dtype float32"):
        model.apply({"params": params}, np.zeros((2, 12), np.float32), method="encode_text")


def expected_counts(c) -> tuple[int, int]:
    """Closed-form parameter counts (visual, text): a block is q, k, v, out (4 w^2 + 4 w), the MLP
    (2 r w^2 + r w + w) and two LayerNorms (4 w)."""
    def blocks(w, depth):
        return depth * (4 * w * w + 4 * w + 2 * c.mlp_ratio * w * w + c.mlp_ratio * w + w + 4 * w)

    w = c.image_width
    visual = (c.patch_size ** 2 * 3 * w + w + (c.num_patches + 1) * w + 2 * w + blocks(w, c.image_depth) + 2 * w
              + w * c.embed_dim)
    w = c.text_width
    text = c.vocab_size * w + c.context_length * w + blocks(w, c.text_depth) + 2 * w + w * c.embed_dim
    return visual, text


@pytest.mark.parametrize("preset", ["tiny", "cpu", "paper"])
def test_parameter_counts_match_the_formula(preset):
    c = PRESETS[preset]
    visual, text = expected_counts(c)
    assert (num_params(c, "visual"), num_params(c, "text"), num_params(c)) == (visual, text, visual + text)


def test_paper_preset_is_vit_b16_scale():
    c = PRESETS["paper"]
    visual, text = num_params(c, "visual"), num_params(c, "text")
    embeddings = c.vocab_size * c.text_width
    assert 85e6 < visual < 87e6  # ViT-B/16: 86M
    assert 37e6 < text - embeddings < 39e6  # CLIP's 12-layer 512-wide text transformer: 38M + 25M token embedding
    assert 149e6 < visual + text < 150.5e6  # CLIP ViT-B/16: 149.6M
    with pytest.raises(ValueError, match="tower 'audio'"):
        num_params(c, "audio")
