"""Binary narrow-sense BCH codes (shortened allowed), decoded by the shared errata decoder."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from qrjax.ecc.algebraic import ErrataDecoder
from qrjax.ecc.block import SystematicCode
from qrjax.ecc.gf import GaloisField


def _minimal_polynomial(field: GaloisField, i: int) -> np.ndarray:
    """Minimal polynomial of alpha^i over GF(2) (binary coefficients, highest degree first)."""
    q1 = field.order - 1
    coset, c = [], i % q1
    while c not in coset:
        coset.append(c)
        c = 2 * c % q1
    poly = np.array([1], np.int32)
    for c in coset:
        poly = field.poly_mul(poly, np.array([1, field.alpha_pow(c)], np.int32))
    assert set(np.unique(poly)) <= {0, 1}
    return poly


def bch_generator(field: GaloisField, t: int) -> np.ndarray:
    """g(x) = lcm of the minimal polynomials of alpha^1 .. alpha^(2t): binary, highest degree first."""
    gen, seen = np.array([1], np.int32), set()
    q1 = field.order - 1
    for i in range(1, 2 * t + 1):
        rep = min(i * 2 ** s % q1 for s in range(field.m))  # cyclotomic coset representative
        if rep not in seen:
            seen.add(rep)
            gen = field.poly_mul(gen, _minimal_polynomial(field, i))
    return gen


@dataclasses.dataclass(frozen=True)
class BCH(SystematicCode):
    """Binary BCH(n, k) with the largest designed t for which n - deg g(x) = k; symbols are bits.

    m defaults to the smallest field with 2^m - 1 >= n; n < 2^m - 1 is a shortened code. Systematic, highest degree
    first: codeword = [msg, msg(x) x^(n-k) mod g(x)], as `galois.BCH` produces. Decoding corrects 2e + v <= 2t
    (errors and erasures) through the narrow-sense RS supercode, then requires the result to be binary.
    """

    n: int
    k: int
    m: int | None = None
    prim: int | None = None

    def __post_init__(self):
        if self.m is None:
            m = 3
            while (1 << m) - 1 < self.n:
                m += 1
            object.__setattr__(self, "m", m)
        field = GaloisField(self.m, self.prim)
        object.__setattr__(self, "prim", field.prim)
        if not 2 <= self.n <= field.order - 1:
            raise ValueError(f"BCH: n={self.n} is impossible over GF(2^{self.m}); need 2 <= n <= {field.order - 1}")
        if not 1 <= self.k < self.n:
            raise ValueError(f"BCH: k={self.k} is impossible with n={self.n}; need 1 <= k < n")
        best, achievable, t = None, [], 1
        while True:
            gen = bch_generator(field, t)
            dim = self.n - (len(gen) - 1)
            if dim < 1:
                break
            if not achievable or achievable[-1] != dim:
                achievable.append(dim)
            if dim == self.k:
                best = (t, gen)
            t += 1
        if best is None:
            raise ValueError(f"BCH: no binary BCH code has n={self.n}, k={self.k} over GF(2^{self.m}); "
                             f"possible k: {achievable}")
        t, gen = best
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "generator", gen)
        parity = field.powers_mod(gen, [self.n - 1 - i for i in range(self.k)])
        self._setup(field, 1, parity, ErrataDecoder(field, self.n, 2 * t, fcr=1))

    def _accept(self, word):
        return jnp.all(word <= 1, axis=-1)
