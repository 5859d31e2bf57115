"""Watermark codes as the extractor sees them: payload bits in, codeword bits out, with hard and soft decoding.

A `BitCode` wraps a symbol code (Reed-Solomon or BCH). Symbols map to bits MSB-first (the Pallas `bitpack` kernel). If the
payload is shorter than the code's message, the leading message bits are fixed to zero and checked on decoding: they
act as extra error detection (QRMark's BCH preset carries 32 payload bits in a BCH(48, 36) codeword this way).

Soft decoding takes per-bit logits (logit > 0 means bit 1; |logit| is the reliability), builds candidate words, decodes
them all in one batch, and keeps the decodable candidate closest to the logits, i.e. with the smallest sum of |logit|
over the bits it flips:
- "gmd": generalised minimum distance: erase the j least reliable symbols, j = 0 .. max_erasures;
- "chase": Chase-II: flip every subset of the `chase_bits` least reliable bits, then hard-decode.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.bitpack import pack_bits, unpack_bits
from qrjax.ecc.bch import BCH
from qrjax.ecc.block import SystematicCode
from qrjax.ecc.rs import ReedSolomon


class BitDecodeResult(NamedTuple):
    """Leading batch shape `...` as given.

    payload: uint8[..., payload_bits]  decoded payload (the received payload bits where ok is False)
    ok: bool[...]  decoded within the radius and the zero padding checked out
    n_corrected: int32[...]  symbols changed
    bits: uint8[..., n_bits]  decoded codeword bits (the hard-decided received bits where ok is False)
    """

    payload: jax.Array
    ok: jax.Array
    n_corrected: jax.Array
    bits: jax.Array


@dataclasses.dataclass(frozen=True)
class BitCode:
    name: str
    code: SystematicCode
    payload_bits: int

    def __post_init__(self):
        if not 1 <= self.payload_bits <= self.code.k_bits:
            raise ValueError(f"BitCode {self.name!r}: payload_bits={self.payload_bits} must be in 1..{self.code.k_bits} "
                             f"(the message bits of {self.code!r})")

    @property
    def n_bits(self) -> int:
        """Codeword length in bits: what the extractor must output."""
        return self.code.n_bits

    @property
    def pad_bits(self) -> int:
        return self.code.k_bits - self.payload_bits

    def _symbols(self, bits):
        return bits.astype(jnp.int32) if self.code.symbol_bits == 1 else pack_bits(bits, self.code.symbol_bits)

    def _bits(self, symbols):
        return symbols.astype(jnp.uint8) if self.code.symbol_bits == 1 else unpack_bits(symbols, self.code.symbol_bits)

    @staticmethod
    def _check_bits(x, length: int, name: str):
        if not isinstance(x, jax.Array):
            x = np.asarray(x)
            if x.size and not np.all((x == 0) | (x == 1)):
                raise ValueError(f"{name}: bits must be 0 or 1")
        if x.ndim == 0 or x.shape[-1] != length:
            raise ValueError(f"{name}: last axis must have {length} bits, got shape {tuple(np.shape(x))}")
        return jnp.asarray(x, jnp.uint8)

    def encode(self, payload) -> jax.Array:
        """payload: bits[..., payload_bits] -> codeword bits uint8[..., n_bits]."""
        return self._encode(self._check_bits(payload, self.payload_bits, "payload"))

    @functools.partial(jax.jit, static_argnums=0)
    def _encode(self, payload):
        msg = jnp.concatenate([jnp.zeros(payload.shape[:-1] + (self.pad_bits,), jnp.uint8), payload], axis=-1)
        return self._bits(self.code._encode(self._symbols(msg)))

    def decode(self, bits, erasures=None) -> BitDecodeResult:
        """bits: {0,1}[..., n_bits]; erasures: bool[..., n] per code symbol, or None."""
        bits = self._check_bits(bits, self.n_bits, "bits")
        if erasures is not None:
            erasures = jnp.asarray(erasures, bool)
            if erasures.shape != bits.shape[:-1] + (self.code.n,):
                raise ValueError(f"erasures: expected shape {bits.shape[:-1] + (self.code.n,)} (one flag per symbol), "
                                 f"got {tuple(erasures.shape)}")
        return self._decode(bits, erasures)

    @functools.partial(jax.jit, static_argnums=0)
    def _decode(self, bits, erasures):
        res = self.code._decode(self._symbols(bits), erasures)
        msg_bits = self._bits(res.message)
        ok = res.ok & jnp.all(msg_bits[..., : self.pad_bits] == 0, axis=-1)
        out_bits = jnp.where(ok[..., None], self._bits(res.codeword), bits)
        return BitDecodeResult(out_bits[..., self.pad_bits: self.code.k_bits], ok,
                               jnp.where(ok, res.n_corrected, 0), out_bits)

    def decode_soft(self, logits, *, method: str = "gmd", max_erasures: int | None = None,
                    chase_bits: int = 4) -> BitDecodeResult:
        """logits: float[..., n_bits] (> 0 means bit 1). See the module docstring for the methods.

        max_erasures (gmd) defaults to n - k: with that many erasures every word has a completion, so soft decoding
        then always returns ok = True except where the zero padding fails; `ok` is no detector (use the binomial test on
        matching bits for detection). chase_bits costs 2^chase_bits hard decodes per word.
        """
        logits = jnp.asarray(logits)
        if logits.ndim == 0 or logits.shape[-1] != self.n_bits:
            raise ValueError(f"logits: last axis must have {self.n_bits} values, got shape {tuple(logits.shape)}")
        if not jnp.issubdtype(logits.dtype, jnp.floating):
            raise TypeError(f"logits: expected floating point, got {logits.dtype}")
        if method == "gmd":
            e = self.code.nsym if max_erasures is None else int(max_erasures)
            if not 0 <= e <= self.code.nsym:
                raise ValueError(f"max_erasures={max_erasures} must be in 0..{self.code.nsym} (n - k)")
            return self._decode_gmd(logits, e)
        if method == "chase":
            if not 0 <= chase_bits <= min(12, self.n_bits):
                raise ValueError(f"chase_bits={chase_bits} must be in 0..{min(12, self.n_bits)}")
            return self._decode_chase(logits, chase_bits)
        raise ValueError(f"method={method!r}: expected 'gmd' or 'chase'")

    def _pick(self, logits, hard, cand_bits, cand_erasures):
        """Decode candidates [..., C, n_bits] and keep the decodable one with the least flipped reliability."""
        res = self._decode(cand_bits, cand_erasures)
        flipped = (res.bits != hard[..., None, :]).astype(logits.dtype)
        cost = jnp.sum(flipped * jnp.abs(logits)[..., None, :], axis=-1)
        best = jnp.argmin(jnp.where(res.ok, cost, jnp.inf), axis=-1)  # all failed -> 0, the plain hard decode
        return BitDecodeResult(*(_take_candidate(x, best) for x in res))

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _decode_gmd(self, logits, max_erasures):
        hard = (logits > 0).astype(jnp.uint8)
        sb, n = self.code.symbol_bits, self.code.n
        reliability = jnp.min(jnp.abs(logits).reshape(logits.shape[:-1] + (n, sb)), axis=-1)
        rank = jnp.argsort(jnp.argsort(reliability, axis=-1), axis=-1)  # 0 = least reliable symbol
        j = jnp.arange(max_erasures + 1)
        erasures = rank[..., None, :] < j[:, None]  # [..., C, n]
        cand = jnp.broadcast_to(hard[..., None, :], hard.shape[:-1] + (max_erasures + 1, self.n_bits))
        return self._pick(logits, hard, cand, erasures)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _decode_chase(self, logits, chase_bits):
        hard = (logits > 0).astype(jnp.uint8)
        weakest = jnp.argsort(jnp.abs(logits), axis=-1)[..., :chase_bits]  # [..., p]
        patterns = (np.arange(2 ** chase_bits)[:, None] >> np.arange(chase_bits)) & 1  # [C, p]
        flips = jax.nn.one_hot(weakest, self.n_bits, dtype=jnp.int32)  # [..., p, n_bits]
        flip_mask = jnp.einsum("cp,...pb->...cb", jnp.asarray(patterns, jnp.int32), flips).astype(jnp.uint8)
        return self._pick(logits, hard, hard[..., None, :] ^ flip_mask, None)


def _take_candidate(x, best):
    """x: [..., C] or [..., C, L]; best: int[...] -> x[..., best] or x[..., best, :]."""
    axis = best.ndim
    idx = best.reshape(best.shape + (1,) * (x.ndim - axis))
    return jnp.take_along_axis(x, idx, axis=axis).squeeze(axis)


# Named codes. QRMark's RS(6,4): 6 bytes = 48 extractor bits, 32 payload bits, corrects 1 byte. The BCH alternative of
# the same length and payload: BCH(48, 36) corrects any 2 bit errors; its 4 spare message bits are zero and checked.
PRESETS = {
    "qrmark-rs": lambda: BitCode("qrmark-rs", ReedSolomon(6, 4), 32),
    "qrmark-bch": lambda: BitCode("qrmark-bch", BCH(48, 36), 32),
}

# Chosen by the word-success table in experiments/results/ecc_throughput.md: under independent bit errors BCH(48, 36)
# beats RS(6, 4) at every error rate measured, hard and soft.
DEFAULT_WATERMARK_CODE = "qrmark-bch"

_SPEC = re.compile(r"^(rs|bch):(\d+),(\d+)(?:,(\d+))?$")


def get_code(spec: str = DEFAULT_WATERMARK_CODE) -> BitCode:
    """A preset name (`qrmark-rs`, `qrmark-bch`) or `rs:N,K[,M]` / `bch:N,K[,M]` (payload = all message bits)."""
    if spec in PRESETS:
        return PRESETS[spec]()
    match = _SPEC.match(spec.strip().lower())
    if not match:
        raise ValueError(f"code {spec!r}: expected one of {sorted(PRESETS)} or 'rs:N,K[,M]' / 'bch:N,K[,M]'")
    kind, n, k, m = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if kind == "rs":
        code = ReedSolomon(n, k, m=int(m) if m else 8)
    else:
        code = BCH(n, k, m=int(m) if m else None)
    return BitCode(spec, code, code.k_bits)
