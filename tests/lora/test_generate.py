"""Greedy completion in one fixed-shape buffer (rows of different prompt lengths, padding rows, adapters grouped by
prompt) against the plain loop: a numpy forward pass on one unpadded sequence at a time, growing by its argmax."""

import jax
import numpy as np
import pytest

from qrjax.lora.backbone import config_to_hf, params_to_hf
from qrjax.lora.config import LlamaConfig
from qrjax.lora.generate import greedy_complete, greedy_decode
from qrjax.lora.model import LoraInputs, init_backbone
from qrjax.lora.tasks import BOS, decode_tokens, encode_text
from tests.lora.test_backbone import hf_forward

CONFIG = LlamaConfig(hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2,
                     max_position_embeddings=48)
HF = config_to_hf(CONFIG)
PROMPTS = ["copy:ab=", "next:41=", "x", "shift:hello=", "count:abcdefg="]


@pytest.fixture(scope="module")
def params():
    # normal weights at twice the 1/sqrt(d_in) scale: the untrained model's argmax is decided by clear margins
    shapes = jax.eval_shape(lambda: init_backbone(CONFIG, jax.random.key(0)))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * (2 / np.sqrt(s.shape[0]) if len(s.shape) == 2 else
                                                                   0.1) + (len(s.shape) == 1)).astype(np.float32),
                        shapes)


def loop_decode(tensors: dict, prompt_ids: list[int], steps: int) -> list[int]:
    """The reference: Hugging Face's forward pass in numpy (tests/lora/test_backbone.py) on the sequence so far,
    unpadded, appending its last argmax."""
    seq = list(prompt_ids)
    for _ in range(steps):
        seq.append(int(np.argmax(hf_forward(HF, tensors, np.asarray([seq]))[0, -1])))
    return seq[len(prompt_ids):]


def test_greedy_decode_matches_the_token_by_token_loop(params):
    steps = 6
    prompts = [[BOS, *encode_text(p)] for p in PROMPTS]
    length = max(map(len, prompts)) + steps + 3
    tokens = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
        tokens[i, len(p):] = 7  # whatever follows a prompt must not matter
    got = greedy_decode(CONFIG, params, tokens, np.asarray([len(p) for p in prompts]), steps)
    tensors = params_to_hf(CONFIG, params)
    want = np.asarray([loop_decode(tensors, p, steps) for p in prompts])
    assert got.shape == (len(prompts), steps) and np.array_equal(got, want)
    assert len(set(map(tuple, want))) > 1  # the rows differ: a mixed-up row would show

    texts = greedy_complete(CONFIG, params, PROMPTS, steps)
    assert texts == [decode_tokens(row) for row in want]


def test_adapters_are_grouped_by_prompt(params):
    """Two adapters on q_proj and down_proj, prompts 2 + 2 (+ 1 with none): each prompt's completion equals the
    loop on the backbone with its adapter merged into the weights (W + s A B)."""
    rng = np.random.default_rng(0)
    r = 3

    def pair(d_in, d_out):
        return {"a": rng.standard_normal((2, d_in, r)).astype(np.float32),
                "b": rng.standard_normal((2, r, d_out)).astype(np.float32)}

    adapters = {"layers_0": {"self_attn": {"q_proj": pair(32, 32)}, "mlp": {"down_proj": pair(48, 32)}}}
    scale = np.asarray([1.5, 0.7], np.float32)
    steps = 4
    got = greedy_complete(CONFIG, params, PROMPTS, steps, lora=LoraInputs(adapters, np.asarray([2, 2]), scale))
    base = params_to_hf(CONFIG, params)
    want = []
    for prompt, i in zip(PROMPTS, [0, 0, 1, 1, None]):
        tensors = dict(base)
        if i is not None:
            for block, name in (("self_attn", "q_proj"), ("mlp", "down_proj")):
                ab = adapters["layers_0"][block][name]
                key = f"model.layers.0.{block}.{name}.weight"
                tensors[key] = tensors[key] + (scale[i] * ab["a"][i] @ ab["b"][i]).T
        want.append(decode_tokens(loop_decode(tensors, [BOS, *encode_text(prompt)], steps)))
    assert got == want
    assert got[:4] != greedy_complete(CONFIG, params, PROMPTS, steps)[:4]  # the adapters change the completions


def test_bad_inputs_are_named(params):
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 48"):
        greedy_complete(CONFIG, params, ["x" * 40], 10)
    with pytest.raises(ValueError, match="a list of strings"):
        greedy_complete(CONFIG, params, "copy:a=", 3)
    with pytest.raises(ValueError, match=r"lengths must lie in .* = \[1, 6\], got 7"):
        greedy_decode(CONFIG, params, np.ones((1, 8), np.int32), np.asarray([7]), 2)
