import jax
import numpy as np
import pytest

from qrjax.ecc import get_code
from qrjax.parallel import make_mesh, shard_batch


@pytest.mark.multidevice
def test_decoding_sharded_over_8_devices_is_bit_identical(rng):
    assert jax.device_count() == 8
    code = get_code("qrmark-rs")
    bits = np.asarray(code.encode(rng.integers(0, 2, (64, 32)))) ^ (rng.random((64, 48)) < 0.03)
    mesh = make_mesh()
    sharded = shard_batch(bits.astype(np.uint8), mesh)
    assert len(sharded.sharding.device_set) == 8
    got = jax.jit(lambda b: code.decode(b))(sharded)
    want = code.decode(bits.astype(np.uint8))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert len(got.payload.sharding.device_set) == 8


def test_mesh_and_sharding_errors_name_the_problem():
    with pytest.raises(ValueError, match="need 6 devices, have 8"):
        make_mesh((3, 2), ("a", "b"))
    with pytest.raises(ValueError, match="batch 5 is not divisible by the 8 devices"):
        shard_batch(np.zeros((5, 3)), make_mesh())
