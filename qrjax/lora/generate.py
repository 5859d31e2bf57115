"""Greedy completion with the backbone (and optionally LoRA adapters), for exact-match evaluation.

There is no KV cache: each of the max_new_tokens steps runs the whole fixed-shape buffer through `Llama` and reads
the logits at each row's last written position. Attention is causal, so the PAD tokens to the right of a row's
current end never reach the position read. The shapes are fixed per call (rows padded to a multiple of 8, the buffer
length rounded up to a multiple of 16), so repeated evaluations reuse one compiled program.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.lora.config import LlamaConfig
from qrjax.lora.model import Llama, LoraInputs
from qrjax.lora.tasks import BOS, PAD, decode_tokens, encode_text

ROW_MULTIPLE = 8
LENGTH_MULTIPLE = 16


@functools.cache
def _decoder(config: LlamaConfig, max_new_tokens: int):
    model = Llama(config)

    def decode(params, tokens, lengths, lora):
        rows = jnp.arange(tokens.shape[0])

        def step(i, tokens):
            logits = model.apply({"params": params}, tokens, lora)  # [B, L, V]
            last = logits[rows, lengths + i - 1]
            return tokens.at[rows, lengths + i].set(jnp.argmax(last, axis=-1).astype(tokens.dtype))

        tokens = jax.lax.fori_loop(0, max_new_tokens, step, tokens)
        return jnp.take_along_axis(tokens, lengths[:, None] + jnp.arange(max_new_tokens)[None, :], axis=1)

    return jax.jit(decode)


def greedy_decode(config: LlamaConfig, params, tokens: np.ndarray, lengths: np.ndarray, max_new_tokens: int,
                  lora: LoraInputs | None = None) -> np.ndarray:
    """tokens: int32[B, L] (row b's prompt in its first lengths[b] positions, then anything); lengths: int32[B] >= 1,
    with lengths + max_new_tokens <= L -> int32[B, max_new_tokens], the greedy continuation of each row.

    lora: adapters as `Llama` takes them (group_sizes count tokens of the [B, L] buffer: L per row)."""
    tokens, lengths = np.asarray(tokens, np.int32), np.asarray(lengths, np.int32)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(f"greedy_decode: tokens int32[B, L] and lengths int32[B], got {tokens.shape} and "
                         f"{lengths.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"greedy_decode: max_new_tokens must be >= 1, got {max_new_tokens}")
    if lengths.size and (lengths.min() < 1 or lengths.max() + max_new_tokens > tokens.shape[1]):
        raise ValueError(f"greedy_decode: lengths must lie in [1, L - max_new_tokens] = [1, "
                         f"{tokens.shape[1] - max_new_tokens}], got {lengths.min()}..{lengths.max()}")
    out = _decoder(config, int(max_new_tokens))(params, tokens, lengths, lora)
    return np.asarray(out)


def greedy_complete(config: LlamaConfig, params, prompts: Sequence[str], max_new_tokens: int, *,
                    lora: LoraInputs | None = None, batch_size: int = 256) -> list[str]:
    """The greedy completion of each prompt (byte tokenizer of qrjax.lora.tasks: [BOS] + prompt bytes), decoded up
    to the first EOS (or max_new_tokens tokens).

    lora: adapters for the prompts, grouped contiguously by adapter, with `group_sizes` counting prompts (not
    tokens); all prompts then go through in one batch. Without adapters, prompts go in batches of batch_size."""
    if isinstance(prompts, str):
        raise ValueError("greedy_complete: prompts must be a list of strings, got one string")
    encoded = [[BOS, *encode_text(p)] for p in prompts]
    if not encoded:
        return []
    longest = max(len(e) for e in encoded)
    length = -(-(longest + max_new_tokens) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    length = min(length, config.max_position_embeddings)
    if longest + max_new_tokens > length:
        raise ValueError(f"greedy_complete: the longest prompt ({longest} tokens with BOS) plus max_new_tokens "
                         f"{max_new_tokens} exceeds max_position_embeddings {config.max_position_embeddings}")
    if lora is not None:
        if int(np.sum(np.asarray(lora.group_sizes))) > len(prompts):
            raise ValueError(f"greedy_complete: lora.group_sizes sum to {int(np.sum(np.asarray(lora.group_sizes)))}"
                             f" prompts, only {len(prompts)} given")
        lora = lora.replace(group_sizes=jnp.asarray(lora.group_sizes, jnp.int32) * length, block=length)
        batch_size = len(encoded)
    completions = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        rows = -(-len(chunk) // ROW_MULTIPLE) * ROW_MULTIPLE
        tokens = np.full((rows, length), PAD, np.int32)
        lengths = np.ones(rows, np.int32)  # padding rows: a lone BOS, beyond every adapter's group
        tokens[:, 0] = BOS
        for i, e in enumerate(chunk):
            tokens[i, :len(e)] = e
            lengths[i] = len(e)
        out = greedy_decode(config, params, tokens, lengths, max_new_tokens, lora)
        completions += [decode_tokens(row) for row in out[:len(chunk)]]
    return completions


__all__ = ["greedy_complete", "greedy_decode"]
