import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from qrjax.ecc import DEFAULT_WATERMARK_CODE, BitCode, ReedSolomon, get_code


def awgn_logits(rng, codeword_bits, p):
    """BPSK over AWGN with the noise set so hard decisions err with probability p; returns LLRs (> 0 means 1)."""
    sigma = 1.0 / norm.isf(p)
    y = (2.0 * codeword_bits - 1.0) + sigma * rng.standard_normal(codeword_bits.shape)
    return jnp.asarray(2.0 * y / sigma ** 2, jnp.float32)


@pytest.mark.parametrize("name", ["qrmark-rs", "qrmark-bch"])
def test_presets_round_trip_48_bits_32_payload(name, rng):
    code = get_code(name)
    assert (code.n_bits, code.payload_bits) == (48, 32)
    payload = rng.integers(0, 2, (5, 7, 32))
    bits = code.encode(payload)
    assert bits.shape == (5, 7, 48) and bits.dtype == jnp.uint8
    res = code.decode(bits)
    assert bool(jnp.all(res.ok))
    np.testing.assert_array_equal(np.asarray(res.payload), payload)


def test_rs_bits_are_msb_first_bytes(rng):
    code = get_code("qrmark-rs")
    payload = rng.integers(0, 2, 32)
    symbols = np.asarray(code.code.encode(np.packbits(payload)))  # np.packbits is MSB-first
    np.testing.assert_array_equal(np.asarray(code.encode(payload)), np.unpackbits(symbols.astype(np.uint8)))


def test_zero_padding_is_checked():
    code = get_code("qrmark-bch")
    assert code.pad_bits == 4
    msg = np.zeros(36, np.int32)
    msg[0] = 1  # a valid BCH(48, 36) codeword whose padding is not zero
    res = code.decode(np.asarray(code.code.encode(msg)))
    assert not bool(res.ok)


def test_soft_decoding_with_confident_logits_is_hard_decoding(rng):
    code = get_code("qrmark-bch")
    bits = np.asarray(code.encode(rng.integers(0, 2, (64, 32))))
    logits = jnp.asarray(np.where(bits == 1, 8.0, -8.0), jnp.float32)
    for method in ("gmd", "chase"):
        res = code.decode_soft(logits, method=method)
        assert bool(jnp.all(res.ok))
        np.testing.assert_array_equal(np.asarray(res.bits), bits)


def weakly_flipped(rng, code, n_words, pick_positions):
    """Confident logits (|logit| = 5) for random codewords, except at pick_positions(row) where the sign is wrong
    and |logit| = 0.3: errors the soft decoder can find because they are the least reliable bits."""
    payload = rng.integers(0, 2, (n_words, 32))
    logits = np.where(np.asarray(code.encode(payload)) == 1, 5.0, -5.0)
    for row in range(n_words):
        logits[row, pick_positions(row)] *= -0.06
    hard = code.decode((logits > 0).astype(np.uint8))
    # beyond its radius the hard decoder fails or miscorrects (RS: about 1.6% of double errors), never recovers
    assert not np.any(np.asarray(hard.ok) & np.all(np.asarray(hard.payload) == payload, axis=-1))
    return payload, jnp.asarray(logits, jnp.float32)


def test_gmd_erasures_fix_two_unreliable_bytes_that_hard_rs_cannot(rng):
    code = get_code("qrmark-rs")
    # two wrong bytes, each with one flipped bit
    payload, logits = weakly_flipped(
        rng, code, 50, lambda row: 8 * rng.choice(6, 2, replace=False) + rng.integers(0, 8, 2))
    soft = code.decode_soft(logits, method="gmd")
    assert bool(jnp.all(soft.ok))
    np.testing.assert_array_equal(np.asarray(soft.payload), payload)


def test_chase_fixes_three_bit_errors_among_the_weakest_bits(rng):
    code = get_code("qrmark-bch")
    payload, logits = weakly_flipped(rng, code, 50, lambda row: rng.choice(48, 3, replace=False))
    soft = code.decode_soft(logits, method="chase", chase_bits=4)
    np.testing.assert_array_equal(np.asarray(soft.payload), payload)


def test_soft_beats_hard_on_a_noisy_channel(rng):
    code = get_code("qrmark-rs")
    payload = rng.integers(0, 2, (3000, 32))
    logits = awgn_logits(rng, np.asarray(code.encode(payload)), 0.03)
    acc = lambda res: float(np.mean(np.all(np.asarray(res.payload) == payload, axis=-1)))  # noqa: E731
    hard = acc(code.decode((np.asarray(logits) > 0).astype(np.uint8)))
    assert acc(code.decode_soft(logits, method="gmd")) > hard
    assert acc(code.decode_soft(logits, method="chase")) > hard


def test_default_watermark_code_wins_under_independent_bit_errors(rng):
    """The default is the code with the higher word accuracy at p = 1% (experiments/ecc_throughput.py has the table)."""
    payload = rng.integers(0, 2, (20000, 32))
    acc = {}
    for name in ("qrmark-rs", "qrmark-bch"):
        code = get_code(name)
        bits = np.asarray(code.encode(payload))
        noisy = bits ^ (rng.random(bits.shape) < 0.01)
        acc[name] = float(np.mean(np.all(np.asarray(code.decode(noisy).payload) == payload, axis=-1)))
    assert max(acc, key=acc.get) == DEFAULT_WATERMARK_CODE


@pytest.mark.parametrize("spec, match", [
    ("rs:6", "expected one of"), ("rs:300,200", "n=300 is impossible"), ("bch:48,40", "no binary BCH code"),
    ("golay", "expected one of"),
])
def test_bad_code_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        get_code(spec)


def test_bad_bit_inputs():
    code = get_code("qrmark-rs")
    with pytest.raises(ValueError, match="payload: bits must be 0 or 1"):
        code.encode(np.full(32, 2))
    with pytest.raises(ValueError, match="bits: last axis must have 48 bits"):
        code.decode(np.zeros(47, int))
    with pytest.raises(ValueError, match="logits: last axis must have 48"):
        code.decode_soft(np.zeros(40, np.float32))
    with pytest.raises(ValueError, match="method='ml'"):
        code.decode_soft(np.zeros(48, np.float32), method="ml")
    with pytest.raises(ValueError, match="payload_bits=40 must be in 1..32"):
        BitCode("x", ReedSolomon(6, 4), 40)
