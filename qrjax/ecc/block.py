"""What Reed-Solomon and BCH share: systematic encoding by a parity matrix, input checks, batched decoding."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.ecc.algebraic import ErrataDecoder
from qrjax.ecc.gf import GaloisField


class DecodeResult(NamedTuple):
    """Output of `decode`; every field keeps the caller's leading batch shape `...`.

    message: int32[..., k]  the decoded message, or the received systematic part where ok is False
    ok: bool[...]  True iff the word was within the decoding radius of a codeword (and the message is that codeword's)
    n_corrected: int32[...]  symbols the decoder changed (errors plus erased symbols whose value was wrong)
    codeword: int32[..., n]  the decoded codeword, or the received word where ok is False
    """

    message: jax.Array
    ok: jax.Array
    n_corrected: jax.Array
    codeword: jax.Array


def _is_traced_or_device(x) -> bool:
    return isinstance(x, jax.Array)


class SystematicCode:
    """Base of the linear systematic block codes: codeword = [message (k symbols), parity (n - k symbols)].

    Subclasses are frozen dataclasses that set, in `__post_init__` via `_setup`: the symbol field, the symbol width in
    bits, the parity matrix (parity = message @ parity_matrix over GF(2^m)) and the errata decoder.
    """

    n: int
    k: int

    def _setup(self, field: GaloisField, symbol_bits: int, parity_matrix: np.ndarray, decoder: ErrataDecoder):
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "symbol_bits", symbol_bits)
        object.__setattr__(self, "parity_matrix", np.asarray(parity_matrix, np.int32))
        object.__setattr__(self, "decoder", decoder)

    @property
    def nsym(self) -> int:
        """Parity symbols, n - k."""
        return self.n - self.k

    @property
    def n_bits(self) -> int:
        return self.n * self.symbol_bits

    @property
    def k_bits(self) -> int:
        return self.k * self.symbol_bits

    def _check(self, x, length: int, name: str) -> jax.Array:
        """Shape and (for host data) value checks with messages that name the input."""
        if not _is_traced_or_device(x):
            x = np.asarray(x)
            if x.size and not np.issubdtype(x.dtype, np.integer) and x.dtype != bool:
                raise TypeError(f"{name}: expected integer symbols, got dtype {x.dtype}")
            bad = (x < 0) | (x >= 1 << self.symbol_bits)
            if np.any(bad):
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"{name}: symbol {x[first]} at index {first} is outside [0, {1 << self.symbol_bits}) "
                                 f"for {self!r}")
        if x.ndim == 0 or x.shape[-1] != length:
            raise ValueError(f"{name}: last axis must have {length} symbols for {self!r}, got shape {tuple(x.shape)}")
        return jnp.asarray(x, jnp.int32)

    def encode(self, msgs) -> jax.Array:
        """msgs: int[..., k] -> codewords int32[..., n] (message first, then parity)."""
        msgs = self._check(msgs, self.k, "msgs")
        return self._encode(msgs)

    @functools.partial(jax.jit, static_argnums=0)
    def _encode(self, msgs):
        parity = self.field.matmul_const(msgs, self.parity_matrix)
        return jnp.concatenate([msgs, parity], axis=-1)

    def decode(self, words, erasures=None) -> DecodeResult:
        """words: int[..., n]; erasures: bool[..., n] or None (True marks a symbol known to be unreliable).

        Corrects any pattern of e errors and v erasures with 2e + v <= n - k. See `DecodeResult`.
        """
        words = self._check(words, self.n, "words")
        if erasures is not None:
            erasures = jnp.asarray(erasures, bool)
            if erasures.shape != words.shape:
                raise ValueError(f"erasures: shape {tuple(erasures.shape)} does not match words {tuple(words.shape)}")
        return self._decode(words, erasures)

    def _accept(self, word: jax.Array) -> jax.Array:
        """Extra validity condition on a decoded word (bool[B]); BCH requires binary symbols."""
        return jnp.ones(word.shape[:-1], bool)

    @functools.partial(jax.jit, static_argnums=0)
    def _decode(self, words, erasures):
        batch = words.shape[:-1]
        flat = words.reshape(-1, self.n)
        flat_erasures = None if erasures is None else erasures.reshape(-1, self.n)
        res = self.decoder(flat, flat_erasures)
        ok = res.ok & self._accept(res.word)
        word = jnp.where(ok[:, None], res.word, flat)
        n_corrected = jnp.where(ok, res.n_corrected, 0)
        return DecodeResult(
            message=word[:, : self.k].reshape(batch + (self.k,)),
            ok=ok.reshape(batch),
            n_corrected=n_corrected.reshape(batch),
            codeword=word.reshape(batch + (self.n,)),
        )
