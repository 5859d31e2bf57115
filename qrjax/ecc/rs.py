"""Reed-Solomon codes over GF(2^m), codeword-compatible with the `reedsolo` package."""

from __future__ import annotations

import dataclasses

import numpy as np

from qrjax.ecc.algebraic import ErrataDecoder
from qrjax.ecc.block import SystematicCode
from qrjax.ecc.gf import GaloisField


@dataclasses.dataclass(frozen=True)
class ReedSolomon(SystematicCode):
    """RS(n, k) over GF(2^m); n <= 2^m - 1 (n < 2^m - 1 is a shortened code); corrects 2e + v <= n - k.

    Generator g(x) = prod_{j < n-k} (x - alpha^(fcr + j)) with alpha = 2 and primitive polynomial `prim` (None: the
    conventional one, 0x11d for m = 8). Systematic: codeword = [msg, msg(x) x^(n-k) mod g(x)], highest degree first,
    which is what `reedsolo.RSCodec(n - k, nsize=n, fcr=fcr, prim=prim, c_exp=m)` produces.

    >>> rs = ReedSolomon(6, 4)            # QRMark's code: 48 bits, 32 payload bits, corrects 1 byte
    >>> cw = rs.encode(msgs)              # int[..., 4] -> int32[..., 6]
    >>> res = rs.decode(cw)               # DecodeResult(message, ok, n_corrected, codeword)
    """

    n: int
    k: int
    m: int = 8
    prim: int | None = None
    fcr: int = 0

    def __post_init__(self):
        for name in ("n", "k", "m", "fcr"):
            if not isinstance(getattr(self, name), (int, np.integer)):
                raise TypeError(f"ReedSolomon: {name}={getattr(self, name)!r} must be an integer")
        field = GaloisField(self.m, self.prim)
        object.__setattr__(self, "prim", field.prim)
        if not 1 <= self.n <= field.order - 1:
            raise ValueError(f"ReedSolomon: n={self.n} is impossible over GF(2^{self.m}); need 1 <= n <= "
                             f"{field.order - 1} (2^m - 1)")
        if not 1 <= self.k < self.n:
            raise ValueError(f"ReedSolomon: k={self.k} is impossible with n={self.n}; need 1 <= k < n")
        if self.fcr < 0:
            raise ValueError(f"ReedSolomon: fcr={self.fcr} must be >= 0")
        nsym = self.n - self.k
        gen = np.array([1], np.int32)
        for j in range(nsym):
            gen = field.poly_mul(gen, np.array([1, field.alpha_pow(self.fcr + j)], np.int32))
        parity = field.powers_mod(gen, [self.n - 1 - i for i in range(self.k)])
        object.__setattr__(self, "generator", gen)
        self._setup(field, self.m, parity, ErrataDecoder(field, self.n, nsym, self.fcr))

    @property
    def t(self) -> int:
        """Correctable symbol errors without erasures."""
        return (self.n - self.k) // 2
