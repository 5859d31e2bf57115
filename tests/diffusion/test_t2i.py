"""Text-to-image: the MMDiT's partial (SDiT) computation against its full pass, TIDE's attention corrections against
brute-force softmax maths, SDiT's planning, direct generation, SuperGen with a prompt, the CLIP read-back."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.clip.data import render_scenes
from qrjax.clip.export import load_pretrained as load_clip
from qrjax.diffusion import sdit, tide
from qrjax.diffusion.config import SuperGenConfig, TextToImageConfig
from qrjax.diffusion.evaluate import attribute_accuracy, clip_score, prompt_set
from qrjax.diffusion.model import MMDiT, AttentionControl, joint_attention, patchify
from qrjax.diffusion.supergen import generate
from qrjax.diffusion.t2i import generate_image
from tests.diffusion.models import random_t2i_model


@pytest.fixture(scope="module")
def clip():
    return load_clip("cpu")


@pytest.fixture(scope="module")
def model(clip):
    return random_t2i_model(scale=0.1, seed=1, clip=clip)


@functools.partial(jax.jit, static_argnums=0)
def _full(config, params, x, t, states, pooled, control=None):
    return MMDiT(config).apply({"params": params}, x, t, states, pooled, control, return_kv=True)


@functools.partial(jax.jit, static_argnums=0)
def _part(config, params, x, t, states, pooled, kv, idx, control=None):
    return MMDiT(config).apply({"params": params}, x, t, states, pooled, control, kv=kv, idx=idx)


def test_partial_tokens_against_the_full_pass(model):
    """With every token's keys and values cached from a full pass at the same input, computing any subset of tokens
    (padding included) must give the full pass's outputs at those tokens, and leave the cache as it was."""
    mc = model.config
    cond = model.text_cond(["a photo of two red circles on the left."])
    x = jax.random.normal(jax.random.key(2), (1, 16, 24, mc.channels))
    t = jnp.array([0.6])
    control = AttentionControl(1.3, 0.7)
    v, kv = _full(mc, model.params, x, t, cond.states, cond.pooled, control)
    full_tok = patchify(v, mc.patch)
    n = full_tok.shape[1]
    idx = jnp.asarray([0, 5, 17, 40, n - 1, n, n], jnp.int32)  # two padding entries
    out, kv2 = _part(mc, model.params, x, t, cond.states, cond.pooled, kv, idx, control)
    np.testing.assert_allclose(out[:, :5], full_tok[:, idx[:5]], atol=2e-5, rtol=1e-5)
    for (k1, v1), (k2, v2) in zip(kv, kv2):
        np.testing.assert_allclose(k2, k1, atol=2e-5)
        np.testing.assert_allclose(v2, v1, atol=2e-5)
    assert float(jnp.abs(full_tok).max()) > 1e-3  # the network is not silent


def _softmax_attention(q, k, v, n_text, scale, bias):
    """Brute force in float64: softmax(scale q.k / sqrt(D) + bias on text keys) v."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale / math.sqrt(q.shape[-1])
    logits[..., :n_text] += bias
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("mode", ["xla", "kernel"])
def test_joint_attention_control_against_brute_force(mode):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 11, 2, 8)), jnp.float32) for _ in range(3))
    got = joint_attention(q, k, v, 3, AttentionControl(1.7, -0.9), mode)
    np.testing.assert_allclose(got, _softmax_attention(q, k, v, 3, 1.7, -0.9), atol=2e-5)


def test_text_anchoring_restores_the_training_text_share():
    """Equal logits everywhere: T text keys among N image keys hold T / (T + N) of the attention; TIDE's anchor
    brings it back to T / (T + N_train), the share at the training size."""
    t_text, n_train, n = 16, 64, 1024
    corr = tide.attention_control("tide", n, n_train, t_text)
    ctl = corr(0.0)
    assert float(ctl.logit_scale) == pytest.approx(1.0) and ctl.text_bias == pytest.approx(math.log(n / n_train))
    q = jnp.zeros((1, 1, 1, 4))
    k = jnp.zeros((1, t_text + n, 1, 4))
    v = jnp.concatenate([jnp.ones((1, t_text, 1, 4)), jnp.zeros((1, n, 1, 4))], 1)  # reads the text share
    share = float(joint_attention(q, k, v, t_text, ctl, "xla")[0, 0, 0, 0])
    assert share == pytest.approx(t_text / (t_text + n_train), rel=1e-5)
    assert float(joint_attention(q, k, v, t_text, None, "xla")[0, 0, 0, 0]) == pytest.approx(t_text / (t_text + n))


def test_corrections_by_step():
    lam = math.log(1024 + 16) / math.log(64 + 16)
    assert tide.sharpening(1024, 64, 16) == pytest.approx(lam)
    assert tide.attention_control("tide", 64, 64, 16) is None  # the training size needs no correction
    assert tide.attention_control("none", 1024, 64, 16) is None
    fixed = tide.attention_control("fixed", 1024, 64, 16)
    for t in (0.0, 0.5, 1.0):
        assert fixed(t) == AttentionControl(pytest.approx(lam), 0.0)
    dyn = tide.attention_control("tide", 1024, 64, 16, power=2.0)
    assert float(dyn(1.0).logit_scale) == pytest.approx(lam)
    assert float(dyn(0.5).logit_scale) == pytest.approx(1 + (lam - 1) * 0.25)
    assert float(tide.attention_control("temperature", 1024, 64, 16)(0.3).logit_scale) == pytest.approx(
        1 + (lam - 1) * 0.3)
    assert tide.attention_control("temperature", 1024, 64, 16)(0.3).text_bias == 0.0
    assert float(tide.attention_control("anchor", 1024, 64, 16)(0.3).logit_scale) == 1.0
    with pytest.raises(ValueError, match="correction 'sharp'"):
        tide.attention_control("sharp", 1024, 64, 16)


def test_plan_covers_the_complex_share_the_due_regions_and_the_borders():
    labels = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)  # four 4x4 regions of an 8x8 token grid
    rate = np.choose(labels, [0.1, 5.0, 0.2, 0.3])
    cfg = TextToImageConfig(sdit_active=0.25, sdit_period=3, sdit_boundary=0)
    last = np.full((8, 8), 10)
    mask = sdit.plan(labels, rate, last, 11, cfg)
    np.testing.assert_array_equal(mask, labels == 1)  # the most complex region covers a quarter alone
    last[labels == 2] = 8  # waited 3 steps: due
    np.testing.assert_array_equal(sdit.plan(labels, rate, last, 11, cfg), (labels == 1) | (labels == 2))
    with_border = sdit.plan(labels, rate, np.full((8, 8), 10), 11, cfg.replace(sdit_boundary=1))
    ring = np.zeros((8, 8), bool)
    ring[:4, 3] = True  # the column left of region 1 and the row below it (4-neighbours: no corner)
    ring[4, 4:] = True
    np.testing.assert_array_equal(with_border, (labels == 1) | ring)
    assert sdit.bucket(1, 64, 8) == 8 and sdit.bucket(9, 64, 8) == 16 and sdit.bucket(64, 64, 8) == 64


def test_quickshift_regions_follow_the_content():
    x0 = np.zeros((16, 16, 6), np.float32)
    x0[:, 8:] = 3.0  # two flat halves
    labels = sdit.segment(x0, 2, TextToImageConfig())
    assert labels.shape == (8, 8)
    assert len(np.unique(labels[:, :4])) == 1 and len(np.unique(labels[:, 4:])) == 1
    assert labels[0, 0] != labels[0, 7]


def test_sdit_computing_every_token_is_full_computation(model):
    prompt = "there are three blue squares at the top."
    base = TextToImageConfig(steps=5, correction="tide")
    full, st_full, lat_full = generate_image(model, base, prompt, scale=(1, 2), progress=False, return_latent=True)
    everything = base.replace(sdit=True, sdit_warmup=1, sdit_active=1.0)
    _, st_all, lat_all = generate_image(model, everything, prompt, scale=(1, 2), progress=False, return_latent=True)
    np.testing.assert_allclose(lat_all, lat_full, atol=1e-4)
    assert st_all.tokens_computed == st_full.tokens_computed == 5 * 32
    partial = everything.replace(sdit_warmup=2, sdit_active=0.2, sdit_period=4, sdit_boundary=0)
    _, st, lat = generate_image(model, partial, prompt, scale=(1, 2), progress=False, return_latent=True)
    assert st.full_tokens == 5 * 32 and st.tokens_computed < st.full_tokens and st.token_ratio > 1
    assert st.tokens_per_step[:2] == [32, 32] and st.tokens_per_step[-1] == 32
    assert bool(np.all(np.isfinite(lat)))


def test_supergen_reads_a_prompt_and_class_models_refuse_one(model):
    image, stats = generate(model, SuperGenConfig(steps=4, restart_step=2, guidance=3.0), scale=2,
                            prompt="a red circle in the middle.", progress=False)
    assert image.shape == (32, 32, 3) and stats.tiles == 4
    # 4 stage-1 steps of 16 tokens, then 2 steps of 4 tiles of 16 tokens
    assert stats.tokens_computed == 4 * 16 + 2 * 4 * 16
    with pytest.raises(ValueError, match="give a prompt"):
        generate(model, SuperGenConfig(steps=4), scale=2, progress=False)


def test_clip_reads_the_attributes_of_real_scenes_at_any_size(clip):
    """The read-back must be right on the scenes themselves (rendered at 32 and at 128 px) before it judges a
    generator's."""
    attributes, prompts = prompt_set(24, seed=3)
    for size in (32, 128):
        images = render_scenes(attributes, size, [[9, 9, i] for i in range(len(attributes))])
        acc = attribute_accuracy(clip, images, attributes)
        assert set(acc) == {"count", "colour", "shape", "position"}
        assert np.mean(acc["colour"]) >= 0.9 and np.mean(acc["position"]) >= 0.8
        scores = clip_score(clip, images, prompts)
        wrong = clip_score(clip, images, prompts[1:] + prompts[:1])
        assert np.mean(scores) > np.mean(wrong) + 5


def test_sdit_inside_supergens_tiles(model):
    """Stage 2 with SDiT inside the shifted tiles: computing every token equals SuperGen's own tiled stage 2 (the
    caches move with the grid), and a partial schedule computes fewer tokens."""
    base = SuperGenConfig(steps=6, restart_step=2, guidance=3.0, shift_divisions=4)  # moves one token a step
    prompt = "two green circles on the right."
    key = jax.random.key(4)
    ref, st_ref, lat_ref = generate(model, base, scale=2, prompt=prompt, key=key, progress=False, return_latent=True)
    every = TextToImageConfig(sdit_warmup=1, sdit_active=1.0)
    _, st_all, lat_all = generate(model, base, scale=2, prompt=prompt, key=key, progress=False, return_latent=True,
                                  sdit=every)
    np.testing.assert_allclose(lat_all, lat_ref, atol=1e-4)
    assert st_all.tokens_computed == st_ref.tokens_computed == 6 * 16 + 4 * 64
    few = every.replace(sdit_warmup=1, sdit_active=0.1, sdit_period=3, sdit_boundary=0, sdit_final=0)
    _, st = generate(model, base, scale=2, prompt=prompt, key=key, progress=False, sdit=few)
    assert st.tokens_computed < st_ref.tokens_computed and len(st.sdit_tokens_per_step) == 4
    with pytest.raises(ValueError, match="shift_divisions=4 moves it by one token"):
        generate(model, base.replace(shift_divisions=16), scale=2, prompt=prompt, progress=False, sdit=every)


def test_clip_text_states_are_the_towers_own(clip):
    """The states the MMDiT reads come from the same text tower: the pooled half equals encode_texts; one row of
    states per token, different for different captions."""
    texts = ["a photo of a red circle.", ""]
    states, pooled = clip.encode_text_states(texts)
    assert states.shape == (2, clip.config.context_length, clip.config.text_width)
    np.testing.assert_allclose(pooled, clip.encode_texts(texts), atol=1e-5)
    assert np.all(np.isfinite(states)) and not np.allclose(states[0], states[1])


def test_position_interpolation_is_scaled_rope_positions():
    """position_scale multiplies each axis's positions: the angles equal the unscaled tables of a grid whose rows and
    columns sit at the scaled positions (brute force from the rotary definition)."""
    from qrjax.diffusion.model import rope_angles

    head_dim, theta, (gh, gw), (sy, sx) = 16, 100.0, (3, 5), (0.25, 0.5)
    ang, axis = rope_angles((1, gh, gw), head_dim, theta)
    scaled = ang * np.array([1.0, sy, sx])[axis]
    n = head_dim // 4  # pairs per spatial axis
    inv = theta ** (-np.arange(n) / n)
    rows, cols = np.meshgrid(np.arange(gh) * sy, np.arange(gw) * sx, indexing="ij")
    want = np.concatenate([rows.reshape(-1, 1) * inv, cols.reshape(-1, 1) * inv], 1)
    np.testing.assert_allclose(scaled, want, rtol=1e-6)
    corr = tide.attention_control("none", 256, 64, 16, positions="interpolate", grid=(16, 16), train_grid=(8, 8))
    assert corr is not None and corr(0.5).position_scale == (0.5, 0.5) and corr(0.5).logit_scale == 1.0
    assert tide.attention_control("none", 256, 64, 16) is None
