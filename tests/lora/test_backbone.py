"""Hugging Face Llama checkpoints: `Llama` on loaded weights against a numpy forward pass written in Hugging Face's
own convention (rotate-half RoPE, repeat_kv), the save/load round trip, sharded and half-precision checkpoints, and
the errors a user meets."""

import json
import re
from types import SimpleNamespace

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from qrjax.lora import backbone
from qrjax.lora.backbone import (check_vocab, config_from_hf, load_backbone, load_tokenizer, resolve_backbone,
                                 resolve_tokenizer, save_backbone)
from qrjax.lora.config import LlamaConfig
from qrjax.lora.model import Llama, init_backbone
from qrjax.lora.tasks import BYTE, HFTokenizer, make_task
from tests.lora.hf_tokenizer import train_tokenizer, write_tokenizer_files

# a small LlamaForCausalLM config.json, written out by hand as Hugging Face would
HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 37, "hidden_size": 32,
             "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "rms_norm_eps": 1e-5, "rope_theta": 500.0, "max_position_embeddings": 64, "tie_word_embeddings": False,
             "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
             "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "pretraining_tp": 1}


def hf_tensors(hf: dict, rng: np.random.Generator, inv_freq: bool = False) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face's names and [out, in] shapes, scaled so activations stay O(1)."""
    d, f, v = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    nh, nkv = hf["num_attention_heads"], hf["num_key_value_heads"]
    hd = hf.get("head_dim") or d // nh

    def lin(d_out, d_in):
        return (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(np.float32)

    def norm():
        return (1.0 + 0.2 * rng.standard_normal(d)).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((v, d)).astype(np.float32), "model.norm.weight": norm()}
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                  p + "self_attn.q_proj.weight": lin(nh * hd, d), p + "self_attn.k_proj.weight": lin(nkv * hd, d),
                  p + "self_attn.v_proj.weight": lin(nkv * hd, d), p + "self_attn.o_proj.weight": lin(d, nh * hd),
                  p + "mlp.gate_proj.weight": lin(f, d), p + "mlp.up_proj.weight": lin(f, d),
                  p + "mlp.down_proj.weight": lin(d, f)})
        if inv_freq:  # older transformers saved RoPE's buffer
            t[p + "self_attn.rotary_emb.inv_freq"] = (1.0 / 500.0 ** (np.arange(0, hd, 2) / hd)).astype(np.float32)
    if not hf["tie_word_embeddings"]:
        t["lm_head.weight"] = lin(v, d)
    return t


def hf_forward(hf: dict, t: dict, tokens: np.ndarray) -> np.ndarray:
    """LlamaForCausalLM's forward pass in float64, after transformers' modeling_llama.py: logits [S, L, V]."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    nh, nkv = hf["num_attention_heads"], hf["num_key_value_heads"]
    hd = hf.get("head_dim") or hf["hidden_size"] // nh
    s, length = tokens.shape

    def rms(x, w):
        return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + hf["rms_norm_eps"]))

    def rotate_half(x):
        return np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)

    position_ids = np.arange(length)
    inv = 1.0 / hf["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    emb = np.concatenate([position_ids[:, None] * inv[None, :]] * 2, axis=-1)  # [L, hd]
    cos, sin = np.cos(emb)[None, :, None, :], np.sin(emb)[None, :, None, :]
    causal = np.tril(np.ones((length, length), bool))

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = (h @ t[p + "self_attn.q_proj.weight"].T).reshape(s, length, nh, hd)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).reshape(s, length, nkv, hd)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).reshape(s, length, nkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, nh // nkv, axis=2), np.repeat(v, nh // nkv, axis=2)  # repeat_kv: head j -> j // n_rep
        scores = np.einsum("sqhd,skhd->shqk", q, k) / np.sqrt(hd)
        scores = np.where(causal, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        o = np.einsum("shqk,skhd->sqhd", weights, v).reshape(s, length, nh * hd)
        x = x + o @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        gate, up = h @ t[p + "mlp.gate_proj.weight"].T, h @ t[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ t[p + "mlp.down_proj.weight"].T
    x = rms(x, t["model.norm.weight"])
    head = t["model.embed_tokens.weight"] if hf["tie_word_embeddings"] else t["lm_head.weight"]
    return x @ head.T


def random_params(config: LlamaConfig, seed: int) -> dict:
    """`Llama`'s parameter tree (shapes from init, without running it) filled with seeded normal float32 values."""
    shapes = jax.eval_shape(lambda: init_backbone(config, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def write_checkpoint(directory, hf: dict, tensors: dict):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("overrides", [
    {},  # grouped-query attention, untied
    {"num_key_value_heads": 1, "tie_word_embeddings": True, "head_dim": 12},  # multi-query, tied, head_dim given
    {"num_key_value_heads": 4, "rope_theta": 10000.0},  # multi-head
], ids=["gqa-untied", "mqa-tied-head_dim", "mha"])
def test_loaded_llama_matches_the_hugging_face_forward_pass(tmp_path, overrides):
    hf = {**HF_CONFIG, **overrides}
    tensors = hf_tensors(hf, np.random.default_rng(0))
    config, params = load_backbone(write_checkpoint(tmp_path / "ckpt", hf, tensors))
    assert config.num_kv_heads == hf["num_key_value_heads"] and config.tie_word_embeddings == hf["tie_word_embeddings"]
    tokens = np.random.default_rng(1).integers(0, hf["vocab_size"], (3, 11)).astype(np.int32)
    got = np.asarray(Llama(config).apply({"params": params}, tokens))
    want = hf_forward(hf, tensors, tokens)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(want).max() > 1.0  # logits of a size where a permuted head or a wrong mask would show
    err = np.abs(got - want)
    assert err.max() < 2e-5 and err.mean() < 3e-6, (err.max(), err.mean())


def test_the_parameter_tree_is_the_models(tmp_path):
    config, params = load_backbone(write_checkpoint(tmp_path / "ckpt", HF_CONFIG,
                                                    hf_tensors(HF_CONFIG, np.random.default_rng(0))))
    shapes = jax.eval_shape(lambda: init_backbone(config, jax.random.key(0)))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(lambda a: (a.shape, a.dtype), shapes)


@pytest.mark.parametrize("config", [LlamaConfig(), LlamaConfig(vocab_size=50, hidden_size=24, num_heads=3,
                                                                num_kv_heads=1, head_dim=10, num_layers=3,
                                                                tie_word_embeddings=True, rope_theta=12345.0)],
                         ids=["tiny", "tied-head_dim"])
def test_save_then_load_is_exact(tmp_path, config):
    params = random_params(config, 3)
    save_backbone(tmp_path / "out", config, params)
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert hf["torch_dtype"] == "float32" and hf["num_hidden_layers"] == config.num_layers
    loaded_config, loaded = load_backbone(tmp_path / "out")
    assert loaded_config == config
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # the file holds Hugging Face's names and [out, in] layout
    header = backbone.read_header(tmp_path / "out" / "model.safetensors")
    assert header["model.layers.0.self_attn.q_proj.weight"]["shape"] == [config.num_heads * config.dim_per_head,
                                                                         config.hidden_size]
    assert ("lm_head.weight" in header) == (not config.tie_word_embeddings)
    assert all(v["dtype"] == "F32" for v in header.values())


def test_sharded_checkpoint_with_an_index_loads(tmp_path):
    tensors = hf_tensors(HF_CONFIG, np.random.default_rng(0))
    _, want = load_backbone(write_checkpoint(tmp_path / "single", HF_CONFIG, tensors))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(HF_CONFIG))
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {n: f for f, part in shards.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    _, got = load_backbone(sharded)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    # an index that sends a tensor to the wrong shard, and a missing shard, are named
    wrong = {**index, "weight_map": {**index["weight_map"], names[0]: "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match=rf"{names[0]}.*model-00002-of-00002.safetensors.*does not hold it"):
        load_backbone(sharded)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"shard files \['model-00002-of-00002.safetensors'\] are missing"):
        load_backbone(sharded)


@pytest.mark.parametrize("legacy_safetensors", [False, True], ids=["safetensors", "raw-bytes"])
def test_bfloat16_and_float16_tensors_become_float32(tmp_path, monkeypatch, legacy_safetensors):
    tensors = hf_tensors(HF_CONFIG, np.random.default_rng(0), inv_freq=True)
    half = {n: t.astype(ml_dtypes.bfloat16 if i % 2 else np.float16) for i, (n, t) in enumerate(sorted(
        tensors.items()))}
    write_checkpoint(tmp_path / "half", HF_CONFIG, half)
    if legacy_safetensors:  # safetensors releases whose numpy loader has no bfloat16: the header's offsets are read
        real = backbone.safe_open

        class NoBfloat16:
            def __init__(self, *args, **kwargs):
                self.f = real(*args, **kwargs)

            def __enter__(self):
                self.f.__enter__()
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def get_tensor(self, name):
                array = self.f.get_tensor(name)
                if array.dtype == ml_dtypes.bfloat16:
                    raise TypeError("data type 'bfloat16' not understood")
                return array

        monkeypatch.setattr(backbone, "safe_open", NoBfloat16)
    config, params = load_backbone(tmp_path / "half")
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    want = half["model.layers.1.self_attn.k_proj.weight"].astype(np.float32).T
    got = np.asarray(params["layers_1"]["self_attn"]["k_proj"]["kernel"])
    assert np.array_equal(got, want)
    assert not np.array_equal(got, tensors["model.layers.1.self_attn.k_proj.weight"].T)  # it was rounded
    for name, (_, keys, transpose) in backbone.hf_tensor_shapes(config).items():
        leaf = np.asarray(_get(params, keys))
        assert np.array_equal(leaf, half[name].astype(np.float32).T if transpose else half[name].astype(np.float32))


def _get(tree, keys):
    for key in keys:
        tree = tree[key]
    return tree


# ------------------------------------------------------------------------------------------------ errors


def test_a_missing_tensor_is_named_with_its_file_and_shape(tmp_path):
    tensors = hf_tensors(HF_CONFIG, np.random.default_rng(0))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    ckpt = write_checkpoint(tmp_path / "c", HF_CONFIG, tensors)
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected shape "
                                         r"\[48, 32\]\) in .*c/model.safetensors"):
        load_backbone(ckpt)


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path):
    tensors = hf_tensors(HF_CONFIG, np.random.default_rng(0))
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)  # MHA's shape, config GQA
    ckpt = write_checkpoint(tmp_path / "c", HF_CONFIG, tensors)
    with pytest.raises(ValueError, match=r"tensor 'model.layers.0.self_attn.k_proj.weight' in .*model.safetensors "
                                         r"has shape \[32, 32\], expected \[16, 32\]"):
        load_backbone(ckpt)


def test_unexpected_tensors_are_refused_and_rope_buffers_ignored(tmp_path):
    tensors = hf_tensors(HF_CONFIG, np.random.default_rng(0), inv_freq=True)
    load_backbone(write_checkpoint(tmp_path / "ok", HF_CONFIG, tensors))  # the inv_freq buffers pass
    extra = {**tensors, "model.layers.2.mlp.up_proj.weight": np.zeros((48, 32), np.float32),
             "score.weight": np.zeros((2, 32), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected tensor 'model.layers.2.mlp.up_proj.weight' \(shape "
                                         r"\[48, 32\]\).*unexpected tensor 'score.weight'"):
        load_backbone(write_checkpoint(tmp_path / "extra", HF_CONFIG, extra))
    ints = {**tensors, "model.norm.weight": np.zeros(32, np.int32)}
    with pytest.raises(ValueError, match=r"tensor 'model.norm.weight' has dtype I32"):
        load_backbone(write_checkpoint(tmp_path / "ints", HF_CONFIG, ints))


def test_a_tied_checkpoint_may_carry_a_copy_of_the_embedding(tmp_path):
    hf = {**HF_CONFIG, "tie_word_embeddings": True}
    tensors = hf_tensors(hf, np.random.default_rng(0))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    _, params = load_backbone(write_checkpoint(tmp_path / "c", hf, tensors))
    assert "lm_head" not in params


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, r"model_type 'mistral' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_scaling .*llama3.* is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, r"rope_parameters .*yarn.* is not supported"),
    ({"attention_bias": True}, r"attention_bias True is not supported"),
    ({"mlp_bias": True}, r"mlp_bias True is not supported"),
    ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported"),
    ({"num_hidden_layers": "2"}, r"num_hidden_layers must be a positive integer, got '2'"),
    ({"num_key_value_heads": 3}, r"num_kv_heads 3 must divide num_heads 4"),
])
def test_unsupported_configs_are_refused_by_name(tmp_path, change, message):
    hf = {**HF_CONFIG, **change}
    ckpt = write_checkpoint(tmp_path / "c", hf, hf_tensors(HF_CONFIG, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"c/config.json: .*" + message):
        load_backbone(ckpt)


def test_config_defaults_are_hugging_faces():
    hf = {k: v for k, v in HF_CONFIG.items() if k not in ("num_key_value_heads", "rms_norm_eps", "rope_theta",
                                                          "tie_word_embeddings", "max_position_embeddings")}
    config = config_from_hf({**hf, "rope_scaling": {"rope_type": "default"}})
    assert (config.num_kv_heads, config.head_dim, config.rms_norm_eps, config.rope_theta,
            config.max_position_embeddings, config.tie_word_embeddings) == (4, 0, 1e-6, 10000.0, 2048, False)
    # transformers >= 5 keeps rope_theta inside rope_parameters
    assert config_from_hf({**hf, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}).rope_theta == 5e5


def test_missing_files_and_unknown_backbones(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_backbone(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(ValueError, match=r"no model.safetensors and no model.safetensors.index.json"):
        load_backbone(tmp_path / "empty")
    for spec in ("tinyy", str(tmp_path / "nowhere")):
        with pytest.raises(ValueError, match=r"neither a shipped backbone \(tiny\) nor a checkpoint directory"):
            resolve_backbone(spec)
    with pytest.raises(ValueError, match=r"'llama-1b' is an architecture in BACKBONES without shipped weights"):
        resolve_backbone("llama-1b")
    # a path resolves to load_backbone
    ckpt = write_checkpoint(tmp_path / "c", HF_CONFIG, hf_tensors(HF_CONFIG, np.random.default_rng(0)))
    assert resolve_backbone(ckpt)[0] == load_backbone(ckpt)[0]


def test_save_refuses_params_that_do_not_match_the_config(tmp_path):
    config = LlamaConfig()
    params = random_params(config, 0)
    with pytest.raises(ValueError, match=r"missing parameter lm_head/kernel"):
        save_backbone(tmp_path / "a", config, {k: v for k, v in params.items() if k != "lm_head"})
    with pytest.raises(ValueError, match=r"unexpected parameter lm_head/kernel"):
        save_backbone(tmp_path / "b", LlamaConfig(tie_word_embeddings=True), params)
    with pytest.raises(ValueError, match=r"embed_tokens/embedding has shape \[259, 64\], expected \[259, 32\]"):
        save_backbone(tmp_path / "c", LlamaConfig(hidden_size=32, intermediate_size=176), params)


# ------------------------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer():
    return train_tokenizer("bytelevel")  # 300 learned tokens, then <s> 300, </s> 301, [PAD] 302


def test_load_tokenizer_reads_the_checkpoints_tokenizer_and_special_ids(tmp_path, hf_tokenizer):
    hf = {**HF_CONFIG, "vocab_size": 320, "bos_token_id": 300, "eos_token_id": 301}
    ckpt = write_checkpoint(tmp_path / "c", hf, hf_tensors(hf, np.random.default_rng(0)))
    write_tokenizer_files(ckpt, hf_tokenizer)
    tok = load_tokenizer(ckpt)
    assert isinstance(tok, HFTokenizer) and tok.name == str(ckpt / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (300, 301, 301, 303)  # no pad: Llama's eos
    for text in ("37+58=", "reverse:abc=cba", "héllo wörld"):
        assert tok.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False).ids
    assert resolve_tokenizer(ckpt) == tok and resolve_tokenizer(str(ckpt)) == tok
    config, _ = resolve_backbone(ckpt)
    check_vocab(config, tok)  # 303 ids into a 320-row embedding (checkpoints often pad it)
    # the example encoding reaches the backbone with this checkpoint's BOS and EOS
    out = make_task("reverse", num_train=8, num_val=2, tokenizer=tok).encode("train")
    assert (out["inputs"][:, 0] == 300).all() and (out["targets"][out["mask"] == 1] == 301).sum() == 8
    assert out["inputs"].max() < config.vocab_size


def test_special_ids_fall_back_to_the_tokenizer_configs(tmp_path, hf_tokenizer):
    added = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
             "single_word": False}
    # config.json wins where it names an id; a null or missing one falls through to tokenizer_config.json
    a = write_tokenizer_files(tmp_path / "a", hf_tokenizer, config={"bos_token_id": None, "eos_token_id": 302},
                              tokenizer_config={"bos_token": added, "eos_token": "<s>", "pad_token": "[PAD]"})
    assert (load_tokenizer(a).bos_id, load_tokenizer(a).eos_id, load_tokenizer(a).pad_id) == (300, 302, 302)
    # then special_tokens_map.json; no config.json at all is fine
    b = write_tokenizer_files(tmp_path / "b", hf_tokenizer, tokenizer_config={"model_max_length": 512},
                              special_tokens_map={"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                                                  "pad_token": "[PAD]"})
    assert (load_tokenizer(b).bos_id, load_tokenizer(b).eos_id, load_tokenizer(b).pad_id) == (300, 301, 302)
    # Llama 3 instruct lists several EOS ids: the encoding appends the first
    c = write_tokenizer_files(tmp_path / "c", hf_tokenizer, config={"bos_token_id": 300, "eos_token_id": [301, 302]})
    assert load_tokenizer(c).eos_id == 301


def test_load_tokenizer_errors_name_the_folder_and_what_is_missing(tmp_path, hf_tokenizer):
    assert load_tokenizer("tiny") is BYTE and resolve_tokenizer("tiny") is BYTE
    with pytest.raises(ValueError, match=r"checkpoint .*nowhere: not a directory"):
        load_tokenizer(tmp_path / "nowhere")
    bare = write_checkpoint(tmp_path / "bare", HF_CONFIG, hf_tensors(HF_CONFIG, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(bare))}: no tokenizer.json \(the Hugging Face "
                                         r"tokenizer file the task examples are encoded with\)$"):
        load_tokenizer(bare)
    (bare / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"encoded with\); it holds tokenizer.model, a SentencePiece model: write "):
        resolve_tokenizer(bare)
    for spec in ("tinyy", str(tmp_path / "nowhere")):
        with pytest.raises(ValueError, match=r"neither a shipped backbone \(tiny\) nor a checkpoint directory"):
            resolve_tokenizer(spec)
    with pytest.raises(ValueError, match=r"'llama-1b' is an architecture in BACKBONES"):
        resolve_tokenizer("llama-1b")
    unnamed = write_tokenizer_files(tmp_path / "unnamed", hf_tokenizer, config={"eos_token_id": 301})
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(unnamed))}: no BOS token: config.json has no "
                                         r"bos_token_id and tokenizer_config.json / special_tokens_map.json no "
                                         r"bos_token$"):
        load_tokenizer(unnamed)
    outside = write_tokenizer_files(tmp_path / "outside", hf_tokenizer, config={"bos_token_id": 400,
                                                                               "eos_token_id": 301})
    with pytest.raises(ValueError, match=r"outside/tokenizer.json: bos_id must be an id of its vocabulary \(0..302\), "
                                         r"got 400"):
        load_tokenizer(outside)
    unknown = write_tokenizer_files(tmp_path / "unknown", hf_tokenizer, tokenizer_config={"bos_token": "<s>",
                                                                                         "eos_token": "<|eot|>"})
    with pytest.raises(ValueError, match=r"eos_id '<\|eot\|>' is not a token of its vocabulary"):
        load_tokenizer(unknown)
    typo = write_tokenizer_files(tmp_path / "typo", hf_tokenizer, config={"bos_token_id": "1", "eos_token_id": 2})
    with pytest.raises(ValueError, match=r"typo/config.json: bos_token_id must be a token id, got '1'"):
        load_tokenizer(typo)
    broken = write_tokenizer_files(tmp_path / "broken", hf_tokenizer)
    (broken / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken/tokenizer_config.json: not valid JSON"):
        load_tokenizer(broken)


def test_check_vocab(hf_tokenizer):
    check_vocab(LlamaConfig(), BYTE)  # the tiny backbone's 259
    with pytest.raises(ValueError, match=r"tokenizer byte \(vocab_size 259, ids up to 258\) does not fit the "
                                         r"backbone's config.vocab_size 258 \(ids 0..257\)"):
        check_vocab(LlamaConfig(vocab_size=258), BYTE)
    tok = HFTokenizer(hf_tokenizer, bos_id="<s>", eos_id="</s>", name="ckpt/tokenizer.json")
    check_vocab(LlamaConfig(vocab_size=303), tok)
    with pytest.raises(ValueError, match=r"tokenizer ckpt/tokenizer.json \(vocab_size 303, ids up to 302\) does not "
                                         r"fit the backbone's config.vocab_size 259"):
        check_vocab(LlamaConfig(), tok)
    # the special ids count too, for a tokenizer that keeps them outside its vocabulary
    odd = SimpleNamespace(name="odd", vocab_size=10, pad_id=0, bos_id=1, eos_id=12)
    check_vocab(LlamaConfig(vocab_size=13), odd)
    with pytest.raises(ValueError, match=r"tokenizer odd \(vocab_size 10, ids up to 12\) does not fit .* 12"):
        check_vocab(LlamaConfig(vocab_size=12), odd)
