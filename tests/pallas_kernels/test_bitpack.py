import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.bitpack import (BlockSizes, pack_bits, pack_bits_reference, unpack_bits,
                                    unpack_bits_reference)

# (leading shape, n symbols, m bits per symbol, block rows); interpret mode: small shapes, few grid steps.
FULL_GRID = list(itertools.product([(1,), (37,), (4, 16)], [1, 6, 13], [1, 3, 6, 8], [None, 8, 32]))
CPU_CASES = [FULL_GRID[i] for i in np.random.default_rng(0).choice(len(FULL_GRID), 10, replace=False)]


def _check(lead, n, m, block_rows, interpret):
    key = jax.random.key(n * 100 + m)
    bits = jax.random.bernoulli(key, 0.5, lead + (n * m,)).astype(jnp.uint8)
    sizes = BlockSizes(block_rows)
    packed = pack_bits(bits, m, block_sizes=sizes, interpret=interpret)
    want = pack_bits_reference(bits, m)
    assert packed.dtype == jnp.int32 and packed.shape == want.shape
    np.testing.assert_array_equal(np.asarray(packed), np.asarray(want))
    unpacked = unpack_bits(want, m, block_sizes=sizes, interpret=interpret)
    np.testing.assert_array_equal(np.asarray(unpacked), np.asarray(unpack_bits_reference(want, m)))
    np.testing.assert_array_equal(np.asarray(unpacked), np.asarray(bits))


@pytest.mark.parametrize("lead, n, m, block_rows", CPU_CASES)
def test_kernel_matches_reference_interpret(lead, n, m, block_rows):
    _check(lead, n, m, block_rows, interpret=True)


def test_reference_is_msb_first():
    np.testing.assert_array_equal(np.asarray(pack_bits_reference(jnp.array([1, 0, 1, 1, 0, 0, 0, 1]), 8)), [0b10110001])
    np.testing.assert_array_equal(np.asarray(unpack_bits_reference(jnp.array([5]), 3)), [1, 0, 1])


def test_rejects_ragged_bits():
    with pytest.raises(ValueError, match="not a multiple of m=8"):
        pack_bits(jnp.zeros((2, 20), jnp.uint8), 8)


@pytest.mark.gpu
@pytest.mark.parametrize("lead, n, m, block_rows", FULL_GRID + [((65536,), 6, 8, None), ((4096,), 255, 8, 64)])
def test_kernel_matches_reference_gpu(lead, n, m, block_rows):
    _check(lead, n, m, block_rows, interpret=False)
