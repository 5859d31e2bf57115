import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.bitpack import (BlockSizes, pack_bits, pack_bits_reference, unpack_bits,
                                    unpack_bits_reference)

# (leading shape, n symbols, m bits per symbol, block rows); interpret mode: small shapes, few grid steps.
CPU_CASES = [
    pytest.param((4, 16), 6, 1, None, id="two-leading-axes-m1"),
    pytest.param((4, 16), 6, 3, None, id="two-leading-axes-m3-padded-to-4"),
    pytest.param((37,), 13, 3, None, id="odd-rows-odd-n-padded"),
    pytest.param((37,), 6, 3, None, id="odd-rows"),
    pytest.param((1,), 13, 3, None, id="one-row-n13"),
    pytest.param((1,), 1, 3, 8, id="one-symbol-block-larger-than-batch"),
    pytest.param((1,), 1, 1, 8, id="smallest-one-bit"),
    pytest.param((1,), 13, 6, 8, id="n13-m6"),
    pytest.param((1,), 6, 6, None, id="n6-m6"),
    pytest.param((1,), 1, 6, 8, id="one-symbol-m6"),
    pytest.param((37,), 6, 8, 32, id="qrmark-rs-6-bytes-odd-batch-2-steps"),
]


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


@pytest.mark.parametrize("shape, m", [pytest.param((64, 48), 8, id="qrmark-rs-bytes"),
                                       pytest.param((37, 39), 3, id="odd-rows-padded-n-and-m")])
def test_lowers_to_triton_without_gpu(shape, m):
    """Both entry points lower for CUDA on a CPU-only machine, so Triton lowering errors show up before a GPU run."""
    bits = jax.ShapeDtypeStruct(shape, jnp.uint8)
    symbols = jax.ShapeDtypeStruct(shape[:-1] + (shape[-1] // m,), jnp.int32)
    for fn, arg in ((pack_bits, bits), (unpack_bits, symbols)):
        lowered = jax.jit(lambda x, fn=fn: fn(x, m, interpret=False)).trace(arg).lower(lowering_platforms=("cuda",))
        assert "triton" in lowered.as_text().lower()


# GPU, Triton lowering: chosen shapes. (leading shape, n symbols, m bits per symbol, block rows)
GPU_CASES = [
    pytest.param((1,), 1, 1, None, id="smallest-one-bit"),
    pytest.param((37,), 13, 3, 8, id="odd-rows-n-and-m-padded-5-steps"),
    pytest.param((4, 16), 6, 6, 32, id="two-leading-axes"),
    pytest.param((3,), 6, 8, 128, id="block-larger-than-batch"),
    pytest.param((64,), 6, 8, None, id="qrmark-rs-6-bytes-batch-64"),
    pytest.param((65536,), 6, 8, None, id="qrmark-rs-6-bytes-throughput-batch"),
    pytest.param((4096,), 255, 8, 64, id="rs255-full-length-bytes"),
    pytest.param((1000,), 63, 6, None, id="gf64-symbols-padded-n-and-m"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("lead, n, m, block_rows", GPU_CASES)
def test_kernel_matches_reference_gpu(lead, n, m, block_rows):
    _check(lead, n, m, block_rows, interpret=False)
