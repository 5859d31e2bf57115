import galois
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.ecc.gf import PRIMITIVE_POLYS, GaloisField


@pytest.mark.parametrize("m", range(3, 9))
def test_mul_div_inv_match_galois(m):
    field = GaloisField(m)
    ref = galois.GF(2 ** m, irreducible_poly=PRIMITIVE_POLYS[m])
    a, b = np.meshgrid(np.arange(2 ** m), np.arange(2 ** m), indexing="ij")
    want = np.asarray(ref(a) * ref(b))
    np.testing.assert_array_equal(field.mul(a, b), want)  # host tables
    np.testing.assert_array_equal(np.asarray(field.mul(jnp.asarray(a), jnp.asarray(b))), want)  # device tables
    nz = np.arange(1, 2 ** m)
    np.testing.assert_array_equal(np.asarray(field.inv(jnp.asarray(nz))), np.asarray(ref(1) / ref(nz)))
    np.testing.assert_array_equal(field.div(a[:, 1:], b[:, 1:]), np.asarray(ref(a[:, 1:]) / ref(b[:, 1:])))
    np.testing.assert_array_equal(field.alpha_pow(np.arange(-5, 40)), np.asarray(ref.primitive_element ** np.arange(-5, 40)))


def test_matmul_const_host_and_device_agree(rng):
    field = GaloisField(8)
    x = rng.integers(0, 256, (10, 7))
    mat = rng.integers(0, 256, (7, 3))
    ref = galois.GF(256, irreducible_poly=0x11D)
    want = np.asarray(ref(x) @ ref(mat))
    np.testing.assert_array_equal(field.matmul_const(x, mat), want)
    np.testing.assert_array_equal(np.asarray(field.matmul_const(jnp.asarray(x), mat)), want)


@pytest.mark.parametrize("m, prim, match", [
    (9, None, "m=9 is not supported"),
    (8, 0x11B, "not primitive"),  # the AES polynomial is irreducible, but x does not generate GF(256)*
    (8, 0x1D, "degree 4"),
])
def test_bad_fields_are_named(m, prim, match):
    with pytest.raises(ValueError, match=match):
        GaloisField(m, prim)
