"""Detection statistics and decoding: pure functions the detection system calls on extractor logits.

- A known key: M = number of extracted bits matching the key's L bits. Under H0 (no watermark, bits fair coins)
  M ~ Binomial(L, 1/2); p = P(Bin >= M); detect when M >= tau(FPR), the smallest tau with P(Bin >= tau) <= FPR.
- N registered keys: the best-matching key is reported when it clears tau(FPR / N) (Bonferroni: family-wise
  false-positive rate <= FPR); its adjusted p-value is min(1, N p).
- ECC payloads: decode the codeword bits (hard or soft) into the payload; "decoded payload == key" is a second,
  much stricter test (false-accept probability = decoding-ball volume / 2^L per key, see `ecc_false_accept`).
- The binomial model needs clean-image bits to be fair, independent coins: `bit_statistics` measures that, and
  `fit_whitening` gives a whitening layer (Stable Signature's, in ZCA form by default) when they are not.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.ecc import BitCode


@lru_cache(maxsize=64)
def _sf_table(n_bits: int) -> np.ndarray:
    """float64[n_bits + 2]: P(Binomial(n, 1/2) >= k) for k = 0..n+1, summed exactly in integers."""
    tail = [0] * (n_bits + 2)
    for k in range(n_bits, -1, -1):
        tail[k] = tail[k + 1] + math.comb(n_bits, k)
    return np.array([float(Fraction(t, 2**n_bits)) for t in tail])


def p_value(matches, n_bits: int):
    """P(Binomial(n_bits, 1/2) >= matches), elementwise; numpy in, numpy out; jax in, jax out."""
    table = _sf_table(n_bits)
    if isinstance(matches, jax.Array):
        return jnp.asarray(table, jnp.float32)[jnp.clip(matches, 0, n_bits + 1)]
    m = np.asarray(matches)
    if np.any((m < 0) | (m > n_bits)):
        raise ValueError(f"matches must be in 0..{n_bits}")
    return table[m]


def threshold(n_bits: int, fpr: float) -> int:
    """Smallest tau with P(Binomial(n_bits, 1/2) >= tau) <= fpr (n_bits + 1 if even all bits matching is too likely)."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    table = _sf_table(n_bits)
    return int(np.argmax(table <= fpr))


def matches(logits, key_bits):
    """Number of bits where (logit > 0) equals the key: logits f32[..., L], key_bits {0,1}[..., L] -> int32[...]."""
    return jnp.sum((jnp.asarray(logits) > 0) == (jnp.asarray(key_bits) > 0), axis=-1).astype(jnp.int32)


def detect(logits, key_bits, fpr: float = 1e-6):
    """(detected bool[...], p_value f32[...], matches int32[...]) against one known key per row."""
    n = int(np.shape(logits)[-1])
    m = matches(logits, key_bits)
    return m >= threshold(n, fpr), p_value(m, n), m


def identify(logits, keys, fpr: float = 1e-6):
    """Which of N registered keys each image carries.

    logits: f32[B, L]; keys: {0,1}[N, L]. Returns (index int32[B], -1 when no key clears tau(fpr / N);
    adjusted p-value f32[B] = min(1, N * p) of the best key; matches int32[B] of the best key).
    """
    keys = jnp.asarray(keys)
    n_keys, n = keys.shape
    m = matches(jnp.asarray(logits)[:, None, :], keys[None])  # [B, N]
    best = jnp.argmax(m, axis=-1)
    best_m = jnp.max(m, axis=-1)
    tau = threshold(n, fpr / n_keys)
    p = jnp.minimum(1.0, n_keys * p_value(best_m, n))
    return jnp.where(best_m >= tau, best, -1).astype(jnp.int32), p, best_m


def decode_payload(code: BitCode, logits, method: str = "hard", **soft_kwargs):
    """ECC-decode extractor logits f32[B, n_bits] -> BitDecodeResult (payload, ok, n_corrected, bits).

    method: 'hard' (decode the hard bits), or a soft method of BitCode.decode_soft ('gmd', 'chase')."""
    if method == "hard":
        return code.decode((jnp.asarray(logits) > 0).astype(jnp.uint8))
    return code.decode_soft(jnp.asarray(logits), method=method, **soft_kwargs)


def ecc_false_accept(code: BitCode, method: str = "hard", chase_bits: int = 4, max_erasures: int | None = None) -> float:
    """Upper bound on P(a random word decodes to one given payload) for `decode_payload(code, ., method)`.

    Hard decoding accepts the words within distance t of the key's codeword: V(t) / 2^n (V over symbols for RS).
    Chase tries 2^chase_bits flipped words, GMD one word per erasure count: a union bound over the candidates, each
    accepted within its own radius (erasures only shrink the accepted ball per candidate, bounded by V(t)).
    """
    c = code.code
    q = 2**c.symbol_bits
    ball = sum(math.comb(c.n, i) * (q - 1) ** i for i in range(c.t + 1))
    base = ball / 2**code.n_bits
    if method == "hard":
        return base
    if method == "chase":
        return base * 2**chase_bits
    if method == "gmd":
        return base * ((max_erasures if max_erasures is not None else c.nsym) + 1)
    raise ValueError(f"unknown decoding method {method!r}")


def bit_statistics(logits) -> dict:
    """Fairness of extracted bits: per-bit frequency of 1s and pairwise correlations, over rows of f32[B, L]."""
    bits = (np.asarray(logits) > 0).astype(np.float64)
    freq = bits.mean(0)
    centred = bits - freq
    std = centred.std(0)
    corr = (centred.T @ centred) / len(bits) / np.maximum(np.outer(std, std), 1e-12)
    off = corr[~np.eye(len(freq), dtype=bool)]
    return {"n": int(len(bits)), "max_abs_freq_dev": float(np.max(np.abs(freq - 0.5))),
            "mean_abs_freq_dev": float(np.mean(np.abs(freq - 0.5))), "max_abs_corr": float(np.max(np.abs(off))),
            "mean_abs_corr": float(np.mean(np.abs(off)))}


def empirical_fpr(logits, keys, fprs=(1e-1, 1e-2, 1e-3)) -> list[dict]:
    """On clean images: how many (image, key) pairs are detected at tau(fpr), for each target fpr.

    Keys are matched in chunks, so tens of thousands of keys (the trials an FPR of 1e-6 needs) fit in memory."""
    logits = np.asarray(logits)
    keys = np.asarray(keys)
    n = int(logits.shape[-1])
    taus = [threshold(n, fpr) for fpr in fprs]
    counts = np.zeros(len(taus), np.int64)
    chunk = max(1, 2**24 // max(1, logits.size))
    for i in range(0, len(keys), chunk):
        m = np.asarray(matches(logits[:, None, :], keys[None, i:i + chunk]))
        counts += [int(np.sum(m >= tau)) for tau in taus]
    trials = len(logits) * len(keys)
    return [{"target_fpr": fpr, "tau": tau, "theory_fpr": float(_sf_table(n)[tau]), "measured_fpr": c / trials,
             "detections": int(c), "trials": int(trials)} for fpr, tau, c in zip(fprs, taus, counts)]


def fit_whitening(logits, form: str = "zca") -> dict:
    """Whitening W, b from clean-image logits f32[B, L] (covariance V Lambda V^T), so that whitened clean logits
    have zero mean and identity covariance (b = -W mu).

    form "pca" is Stable Signature's W = Lambda^(-1/2) V^T: its outputs are the principal components, so each
    whitened bit is a new mixture of the extractor's bits and the encoder must relearn the message layout.
    form "zca" (default) is W = V Lambda^(-1/2) V^T, the whitening closest to the identity: whitened bits stay
    aligned with the extractor's own, and a short encoder fine-tune suffices. (Measured: reading whole images with
    the tile model, 200 encoder steps against a PCA whitening left bit accuracy at 0.44.)"""
    if form not in ("zca", "pca"):
        raise ValueError(f"form: expected 'zca' or 'pca', got {form!r}")
    y = np.asarray(logits, np.float64)
    mu = y.mean(0)
    cov = np.cov(y, rowvar=False)
    lam, v = np.linalg.eigh(cov)
    w = (v / np.sqrt(np.maximum(lam, 1e-12))).T
    if form == "zca":
        w = v @ w
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(-w @ mu, jnp.float32)}
