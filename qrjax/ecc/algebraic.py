"""Batched errors-and-erasures decoding for codes whose parity checks are powers of alpha.

Both codes in `qrjax.ecc` reduce to this: a word r of length n over GF(2^m) whose position i has locator
X_i = alpha^(n-1-i) (position 0 holds the highest-degree coefficient, as reedsolo stores codewords) is a codeword iff

    S_j = sum_i r_i X_i^(fcr+j) = 0   for j = 0 .. nsym-1.

Reed-Solomon uses it directly; a binary BCH code is the subfield subcode of the narrow-sense (fcr = 1) code with
nsym = 2t, so the same decoder plus a check that the result is binary decodes BCH, erasures included.

Everything is fixed-shape and branch-free so it runs under `jit`/`vmap` on any batch: Berlekamp-Massey runs exactly nsym
iterations (steps that erasures account for are masked), the Chien search evaluates the locator only at the n valid
positions of a (possibly shortened) code, and Forney gives the error values. A word decodes (`ok`) iff

    2 * errors + erasures <= nsym,  the locator has exactly deg = L distinct roots among the n positions,

which is exactly the condition for the result to be the unique codeword within the decoding radius; otherwise the
received word is returned unchanged with ok = False.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qrjax.ecc.gf import GaloisField, xor_reduce


class ErrataResult(NamedTuple):
    word: jax.Array  # int32[B, n]: corrected word, or the received word where ok is False
    ok: jax.Array  # bool[B]
    n_corrected: jax.Array  # int32[B]: positions whose value changed


@dataclasses.dataclass(frozen=True)
class ErrataDecoder:
    field: GaloisField
    n: int
    nsym: int
    fcr: int

    def __post_init__(self):
        f, n, nsym = self.field, self.n, self.nsym
        q1 = f.order - 1
        pos = np.arange(n - 1, -1, -1, dtype=np.int64)  # log of the locator X_i
        j = np.arange(nsym, dtype=np.int64)
        d = np.arange(nsym + 1, dtype=np.int64)
        consts = dict(
            # syndromes: S = r @ H, H[i, j] = X_i^(fcr+j)
            parity_check=f.alpha_pow(np.outer(pos, self.fcr + j) % q1),
            # evaluation of a polynomial (coefficients lowest degree first, up to x^nsym) at X_i^-1
            eval_inv=f.alpha_pow(-np.outer(d, pos) % q1),
            locator=f.alpha_pow(pos % q1).astype(np.int32),
            # Forney's factor X_i^(1-fcr)
            forney_log=((1 - self.fcr) * pos % q1).astype(np.int32),
        )
        for name, value in consts.items():
            object.__setattr__(self, name, value)

    def syndromes(self, r: jax.Array) -> jax.Array:
        """int[B, n] -> int32[B, nsym]."""
        return self.field.matmul_const(r, self.parity_check)

    def _erasure_locator(self, erasures: jax.Array):
        """Gamma(x) = prod over erased i of (1 + X_i x), lowest degree first: int32[B, nsym+1], plus the count."""
        f, n, nsym = self.field, self.n, self.nsym
        count = jnp.sum(erasures, axis=-1, dtype=jnp.int32)
        # The first nsym erased positions (more than nsym erasures cannot be decoded and are flagged via count).
        score = jnp.where(erasures, n - jnp.arange(n, dtype=jnp.int32), 0)
        top, idx = jax.lax.top_k(score, min(nsym, n))
        xs = jnp.where(top > 0, jnp.asarray(self.locator)[idx], 0)  # 0 -> factor (1 + 0 x) = 1
        gamma = jnp.zeros(erasures.shape[:-1] + (nsym + 1,), jnp.int32).at[..., 0].set(1)
        for e in range(xs.shape[-1]):
            shifted = jnp.concatenate([jnp.zeros_like(gamma[..., :1]), gamma[..., :-1]], axis=-1)
            gamma = gamma ^ f.mul(xs[..., e: e + 1], shifted)
        return gamma, count

    def _berlekamp_massey(self, synd, gamma, n_erased):
        """Errata locator Lambda (lowest degree first, int32[B, nsym+1]) and its LFSR length L.

        Massey's algorithm started from the erasure locator (Blahut, "Algebraic Codes for Data Transmission", 7.5):
        Lambda = B = Gamma, L = number of erasures, and iterations r < erasures are skipped.
        """
        f, nsym = self.field, self.nsym
        padded = jnp.concatenate([jnp.zeros_like(synd), synd], axis=-1)  # index nsym + s holds S_s

        def step(r, carry):
            lam, b, ell = carry
            window = jax.lax.dynamic_slice_in_dim(padded, r, nsym + 1, axis=-1)[..., ::-1]  # S_{r-j}, j = 0..nsym
            delta = xor_reduce(f.mul(lam, window), axis=-1)[..., None]
            bx = jnp.concatenate([jnp.zeros_like(b[..., :1]), b[..., :-1]], axis=-1)
            lam_new = lam ^ f.mul(delta, bx)
            grow = (delta[..., 0] != 0) & (2 * ell <= r + n_erased)
            b_new = jnp.where(grow[..., None], f.mul(f.inv(delta), lam), bx)
            ell_new = jnp.where(grow, r + 1 + n_erased - ell, ell)
            active = r >= n_erased
            return (jnp.where(active[..., None], lam_new, lam), jnp.where(active[..., None], b_new, b),
                    jnp.where(active, ell_new, ell))

        lam, _, ell = jax.lax.fori_loop(0, nsym, step, (gamma, gamma, n_erased), unroll=min(nsym, 8))
        return lam, ell

    def __call__(self, r: jax.Array, erasures: jax.Array | None = None) -> ErrataResult:
        """r: int32[B, n] symbols; erasures: bool[B, n] or None."""
        f, n, nsym = self.field, self.n, self.nsym
        synd = self.syndromes(r)
        if erasures is None:
            gamma = jnp.zeros(r.shape[:-1] + (nsym + 1,), jnp.int32).at[..., 0].set(1)
            n_erased = jnp.zeros(r.shape[:-1], jnp.int32)
        else:
            gamma, n_erased = self._erasure_locator(erasures)
        lam, ell = self._berlekamp_massey(synd, gamma, n_erased)

        # Chien search over the n positions of the (shortened) code only.
        at_inv = self.eval_inv
        roots = f.matmul_const(lam, at_inv) == 0  # bool[B, n]
        n_roots = jnp.sum(roots, axis=-1, dtype=jnp.int32)
        degrees = jnp.arange(nsym + 1, dtype=jnp.int32)
        deg = jnp.max(jnp.where(lam != 0, degrees, 0), axis=-1)

        # Forney: Omega = S * Lambda mod x^nsym; e_i = X_i^(1-fcr) Omega(X_i^-1) / Lambda'(X_i^-1).
        k_idx = np.arange(nsym)[:, None] - np.arange(nsym + 1)[None, :]  # S index k - j
        s_g = jnp.where(jnp.asarray(k_idx >= 0), synd[..., np.clip(k_idx, 0, nsym - 1)], 0)
        omega = xor_reduce(f.mul(lam[..., None, :], s_g), axis=-1)  # int32[B, nsym]
        # Formal derivative in characteristic 2 keeps the odd-degree terms: Lambda'_j = Lambda_{j+1} for even j.
        dlam = jnp.where(jnp.asarray(np.arange(nsym) % 2 == 0), lam[..., 1:], 0)
        omega_at = f.matmul_const(omega, at_inv[:nsym])
        dlam_at = f.matmul_const(dlam, at_inv[:nsym])
        values = f.mul(f.alpha_pow(jnp.asarray(self.forney_log)), f.div(omega_at, dlam_at))
        err = jnp.where(roots, values, 0)

        ok = ((n_erased <= nsym) & (deg == ell) & (n_roots == deg) & (2 * ell - n_erased <= nsym)
              & ~jnp.any(roots & (dlam_at == 0), axis=-1))
        word = jnp.where(ok[..., None], r ^ err, r)
        n_corrected = jnp.where(ok, jnp.sum(err != 0, axis=-1, dtype=jnp.int32), 0)
        return ErrataResult(word, ok, n_corrected)
