"""Arithmetic in GF(2^m), m = 2..8, batched for JAX and usable on the host with NumPy.

Elements are integers in [0, 2^m) whose bits are the coefficients of a polynomial in alpha (bit i <-> alpha^i), reduced
modulo a primitive polynomial `prim`. Multiplication goes through log/antilog tables:

    a * b = exp[log a + log b]   (0 if a == 0 or b == 0)

The antilog table has length 2(q-1) so that the sum of two logs never needs a modulo. Every method accepts NumPy arrays
(then it runs on the host with the NumPy tables, for precomputing code constants) or JAX arrays (then it uses the tables
as device constants and traces under `jit`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Conventional primitive polynomials (bit i = coefficient of x^i). 0x11d is the one QRMark, reedsolo and CCSDS use.
PRIMITIVE_POLYS = {2: 0x7, 3: 0xB, 4: 0x13, 5: 0x25, 6: 0x43, 7: 0x89, 8: 0x11D}


def _is_host(*xs) -> bool:
    return all(isinstance(x, (np.ndarray, np.generic, int)) for x in xs)


@dataclasses.dataclass(frozen=True)
class GaloisField:
    """GF(2^m) with generator alpha = x (the element 2).

    Hashable, so it can be a static argument of `jax.jit`.
    """

    m: int
    prim: int | None = None

    def __post_init__(self):
        if not isinstance(self.m, int) or not 2 <= self.m <= 8:
            raise ValueError(f"GaloisField: m={self.m!r} is not supported; m must be an integer in 2..8")
        prim = PRIMITIVE_POLYS[self.m] if self.prim is None else int(self.prim)
        if prim >> self.m != 1:
            raise ValueError(
                f"GaloisField: prim=0x{prim:x} has degree {prim.bit_length() - 1}, but GF(2^{self.m}) needs a "
                f"polynomial of degree {self.m}")
        q = 1 << self.m
        exp = np.zeros(2 * (q - 1), np.int32)
        log = np.zeros(q, np.int32)
        x = 1
        for i in range(q - 1):
            if i > 0 and x == 1:
                raise ValueError(
                    f"GaloisField: prim=0x{prim:x} is not primitive for GF(2^{self.m}): alpha has order {i} < {q - 1}")
            exp[i] = x
            log[x] = i
            x <<= 1
            if x & q:
                x ^= prim
        exp[q - 1:] = exp[: q - 1]
        object.__setattr__(self, "prim", prim)
        object.__setattr__(self, "exp_np", exp)
        object.__setattr__(self, "log_np", log)

    @property
    def order(self) -> int:
        """q = 2^m, the number of elements."""
        return 1 << self.m

    @property
    def _device_tables(self):
        # Made per call, not cached: under jit they become embedded constants, and a cached array created while
        # tracing would leak the tracer.
        return jnp.asarray(self.exp_np), jnp.asarray(self.log_np)

    def _tables(self, *xs):
        if _is_host(*xs):
            return np, self.exp_np, self.log_np
        return (jnp, *self._device_tables)

    # -- element-wise operations (broadcasting) -------------------------------------------------------------------
    def mul(self, a, b):
        """a * b in GF(2^m), element-wise with broadcasting."""
        xp, exp, log = self._tables(a, b)
        a, b = xp.asarray(a), xp.asarray(b)
        prod = exp[log[a] + log[b]]
        return xp.where((a == 0) | (b == 0), 0, prod).astype(xp.int32)

    def inv(self, a):
        """1 / a for a != 0 (returns 0 for a == 0, which callers mask)."""
        xp, exp, log = self._tables(a)
        a = xp.asarray(a)
        return xp.where(a == 0, 0, exp[(self.order - 1) - log[a]]).astype(xp.int32)

    def div(self, a, b):
        """a / b for b != 0 (0 where a == 0 or b == 0)."""
        xp, exp, log = self._tables(a, b)
        a, b = xp.asarray(a), xp.asarray(b)
        quo = exp[log[a] + (self.order - 1) - log[b]]
        return xp.where((a == 0) | (b == 0), 0, quo).astype(xp.int32)

    def alpha_pow(self, e):
        """alpha^e for any integer e (negative allowed)."""
        xp, exp, _ = self._tables(e)
        return exp[xp.asarray(e) % (self.order - 1)].astype(xp.int32)

    # -- linear maps with constant coefficients --------------------------------------------------------------------
    def matmul_const(self, x, mat: np.ndarray):
        """y[..., j] = XOR_i x[..., i] * mat[i, j] for a constant host matrix `mat`: int[a, b].

        Encoding (parity matrix), syndromes (parity-check matrix) and polynomial evaluation at fixed points (Chien
        search, Forney) are all of this form. x: int[..., a] -> int32[..., b].
        """
        mat = np.asarray(mat, np.int32)
        if x.shape[-1] != mat.shape[0]:
            raise ValueError(f"matmul_const: x has {x.shape[-1]} columns but the matrix has {mat.shape[0]} rows")
        if _is_host(x):
            terms = self.mul(np.asarray(x)[..., :, None], mat)
            return np.bitwise_xor.reduce(terms, axis=-2).astype(np.int32)
        exp, log = self._device_tables
        log_mat = jnp.asarray(self.log_np[mat])
        nonzero = jnp.asarray(mat != 0)
        log_x = log[x]
        terms = jnp.where((x[..., :, None] != 0) & nonzero, exp[log_x[..., :, None] + log_mat], 0)
        return xor_reduce(terms, axis=-2)

    # -- host-side polynomial helpers (coefficients highest degree first) -----------------------------------------
    def poly_mul(self, p: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Product of two host polynomials (coefficient arrays, highest degree first)."""
        out = np.zeros(len(p) + len(r) - 1, np.int32)
        for i, c in enumerate(np.asarray(p, np.int32)):
            out[i: i + len(r)] ^= self.mul(np.int32(c), np.asarray(r, np.int32))
        return out

    def powers_mod(self, g: np.ndarray, exponents) -> np.ndarray:
        """Rows x^e mod g(x) for each e in `exponents`, as int32[len(exponents), deg g] (highest degree first).

        g must be monic. Used to build systematic parity matrices: the parity of a unit message at codeword position
        i is x^(n-1-i) mod g(x).
        """
        g = np.asarray(g, np.int32)
        deg = len(g) - 1
        exponents = list(exponents)
        out = np.zeros((len(exponents), deg), np.int32)
        rem = np.zeros(deg, np.int32)
        rem[-1] = 1  # x^0
        want = {e: i for i, e in enumerate(exponents)}
        for e in range(max(exponents) + 1):
            if e in want:
                out[want[e]] = rem
            # rem <- x * rem mod g: shift left, fold the overflowing coefficient back with g's lower terms.
            top = rem[0]
            rem = np.concatenate([rem[1:], np.zeros(1, np.int32)])
            if top:
                rem ^= self.mul(np.int32(top), g[1:])
        return out


def xor_reduce(x, axis: int = -1):
    """XOR of the entries of an integer JAX array along `axis`."""
    axis = axis % x.ndim
    return jax.lax.reduce(x, np.array(0, x.dtype), jax.lax.bitwise_xor, (axis,))
