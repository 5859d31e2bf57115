import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reedsolo
from hypothesis import given, settings, strategies as st

from qrjax.ecc import ReedSolomon

# (n, k, m, fcr): QRMark's code, a shortened and a full-length code over smaller fields, other first roots.
CODES = [(6, 4, 8, 0), (15, 9, 4, 1), (7, 3, 3, 0), (20, 12, 5, 2), (40, 32, 8, 1), (255, 223, 8, 0)]


def reedsolo_codec(rs: ReedSolomon):
    return reedsolo.RSCodec(rs.nsym, nsize=rs.n, fcr=rs.fcr, prim=rs.prim, c_exp=rs.m)


def corrupt(rng, words, n_err, n_era, q):
    """Add n_err symbol errors and n_era erasures (value randomised) at distinct random positions of each word."""
    words = words.copy()
    erasures = np.zeros(words.shape, bool)
    for w in range(words.shape[0]):
        pos = rng.choice(words.shape[1], n_err + n_era, replace=False)
        words[w, pos[:n_err]] ^= rng.integers(1, q, n_err)
        words[w, pos[n_err:]] = rng.integers(0, q, n_era)
        erasures[w, pos[n_err:]] = True
    return words, erasures


@pytest.mark.parametrize("n, k, m, fcr", CODES)
def test_codewords_equal_reedsolo(n, k, m, fcr, rng):
    rs = ReedSolomon(n, k, m=m, fcr=fcr)
    msgs = rng.integers(0, 2 ** m, (16, k))
    codec = reedsolo_codec(rs)
    want = np.array([list(codec.encode(bytearray(msg.tolist()))) for msg in msgs])
    np.testing.assert_array_equal(np.asarray(rs.encode(msgs)), want)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(m=st.integers(3, 8), data=st.data())
def test_codewords_equal_reedsolo_random_parameters(m, data):
    n = data.draw(st.integers(3, min(2 ** m - 1, 40)))
    k = data.draw(st.integers(1, n - 1))
    fcr = data.draw(st.integers(0, 3))
    rs = ReedSolomon(n, k, m=m, fcr=fcr)
    msg = data.draw(st.lists(st.integers(0, 2 ** m - 1), min_size=k, max_size=k))
    want = list(reedsolo_codec(rs).encode(bytearray(msg)))
    assert np.asarray(rs.encode(np.array(msg))).tolist() == want


@pytest.mark.parametrize("n, k, m, fcr", CODES)
def test_decodes_every_errata_mix_within_radius(n, k, m, fcr, rng):
    """Every (errors, erasures) combination with 2e + v <= n - k, on random words; compared with reedsolo too."""
    rs, q = ReedSolomon(n, k, m=m, fcr=fcr), 2 ** m
    codec = reedsolo_codec(rs)
    mixes = [(e, v) for e in range(rs.nsym // 2 + 1) for v in range(rs.nsym + 1) if 2 * e + v <= rs.nsym]
    per_mix = 8
    msgs = rng.integers(0, q, (len(mixes) * per_mix, k))
    words, erasures = [], []
    for i, (e, v) in enumerate(mixes):
        w, er = corrupt(rng, np.asarray(rs.encode(msgs[i * per_mix:(i + 1) * per_mix])), e, v, q)
        words.append(w)
        erasures.append(er)
    words, erasures = np.concatenate(words), np.concatenate(erasures)
    res = rs.decode(words, erasures)
    assert bool(jnp.all(res.ok))
    np.testing.assert_array_equal(np.asarray(res.message), msgs)
    for w, er, msg in zip(words[::7], erasures[::7], msgs[::7]):  # reedsolo is slow: a sample
        dec, _, _ = codec.decode(bytearray(w.tolist()), erase_pos=np.flatnonzero(er).tolist() or None)
        assert list(dec) == msg.tolist()


def test_rs64_every_single_error_is_corrected(rng):
    rs = ReedSolomon(6, 4)
    pos, val = np.meshgrid(np.arange(6), np.arange(1, 256), indexing="ij")
    err = np.zeros((pos.size, 6), np.int32)
    err[np.arange(pos.size), pos.ravel()] = val.ravel()
    msgs = rng.integers(0, 256, (pos.size, 4))
    res = rs.decode(np.asarray(rs.encode(msgs)) ^ err)
    assert bool(jnp.all(res.ok)) and bool(jnp.all(res.n_corrected == 1))
    np.testing.assert_array_equal(np.asarray(res.message), msgs)


@pytest.mark.slow
def test_rs64_double_errors_miscorrect_exactly_as_theory():
    """All 15 * 255^2 weight-2 error patterns (the code is linear, so on the zero word).

    An MDS code of distance 3 has A_3 = C(6,3)(q-1) = 5100 weight-3 codewords; each is at distance 1 from exactly 3
    weight-2 patterns, and those are the only patterns a radius-1 decoder can (mis)correct: 15300 miscorrections,
    every other pattern detected.
    """
    rs = ReedSolomon(6, 4)
    patterns = []
    for i, j in itertools.combinations(range(6), 2):
        a, b = np.meshgrid(np.arange(1, 256), np.arange(1, 256), indexing="ij")
        p = np.zeros((a.size, 6), np.int32)
        p[:, i], p[:, j] = a.ravel(), b.ravel()
        patterns.append(p)
    res = rs.decode(np.concatenate(patterns))
    n_ok = int(jnp.sum(res.ok))
    assert n_ok == 3 * math.comb(6, 3) * 255
    # every accepted word was moved to a codeword at distance 1 (a miscorrection, never the zero word)
    assert bool(jnp.all(jnp.where(res.ok, jnp.any(res.codeword != 0, axis=-1), True)))
    assert bool(jnp.all(jnp.where(res.ok, res.n_corrected == 1, res.n_corrected == 0)))


def test_random_words_accepted_at_the_theoretical_rate(rng):
    """A uniform random word is accepted iff it lies within distance 1 of a codeword: q^k (1 + n(q-1)) / q^n."""
    rs, n_words = ReedSolomon(6, 4), 400_000
    res = rs.decode(rng.integers(0, 256, (n_words, 6)))
    p = (1 + 6 * 255) / 256 ** 2
    sigma = math.sqrt(n_words * p * (1 - p))
    assert abs(int(jnp.sum(res.ok)) - n_words * p) < 5 * sigma


@pytest.mark.parametrize("n, k, m, fcr", [(6, 4, 8, 0), (15, 9, 4, 1)])
def test_beyond_radius_agrees_with_reedsolo_and_ok_means_codeword(n, k, m, fcr, rng):
    rs, q = ReedSolomon(n, k, m=m, fcr=fcr), 2 ** m
    codec = reedsolo_codec(rs)
    msgs = rng.integers(0, q, (300, k))
    words = np.concatenate([corrupt(rng, np.asarray(rs.encode(msgs[i::3])), rs.t + 1 + i, 0, q)[0] for i in range(3)])
    res = rs.decode(words)
    ok, cw = np.asarray(res.ok), np.asarray(res.codeword)
    # ok => a codeword within the radius of the received word
    np.testing.assert_array_equal(np.asarray(rs.encode(cw[ok, :k])), cw[ok])
    assert np.all(np.sum(cw[ok] != words[ok], axis=1) <= rs.t)
    np.testing.assert_array_equal(cw[~ok], words[~ok])
    for w, good, dec_msg in zip(words, ok, np.asarray(res.message)):
        try:
            theirs, _, _ = codec.decode(bytearray(w.tolist()))
        except reedsolo.ReedSolomonError:
            theirs = None
        assert good == (theirs is not None)
        if good:
            assert list(theirs) == dec_msg.tolist()


def test_any_batch_shape_and_inside_jit_and_vmap(rng):
    rs = ReedSolomon(6, 4)
    msgs = rng.integers(0, 256, (2, 3, 4))
    cw = rs.encode(msgs)
    assert cw.shape == (2, 3, 6)
    res = rs.decode(cw.at[..., 2].add(1) % 256)
    assert res.message.shape == (2, 3, 4) and res.ok.shape == (2, 3) and res.codeword.shape == (2, 3, 6)
    np.testing.assert_array_equal(np.asarray(res.message), msgs)
    single = rs.decode(cw[0, 0])
    assert single.message.shape == (4,) and single.ok.shape == ()
    jitted = jax.jit(lambda w: rs.decode(w).message)(cw)
    mapped = jax.vmap(lambda w: rs.decode(w).message)(cw.reshape(6, 6))
    np.testing.assert_array_equal(np.asarray(jitted), msgs)
    np.testing.assert_array_equal(np.asarray(mapped), msgs.reshape(6, 4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=256, k=200), "n=256 is impossible over GF\\(2\\^8\\)"),
    (dict(n=16, k=8, m=4), "n=16 is impossible over GF\\(2\\^4\\)"),
    (dict(n=6, k=6), "k=6 is impossible with n=6"),
    (dict(n=6, k=0), "k=0 is impossible"),
])
def test_impossible_codes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReedSolomon(**kwargs)


def test_bad_inputs_name_the_problem():
    rs = ReedSolomon(6, 4)
    with pytest.raises(ValueError, match="msgs: last axis must have 4 symbols"):
        rs.encode(np.zeros((2, 5), int))
    with pytest.raises(ValueError, match="msgs: symbol 300 at index \\(0, 1\\)"):
        rs.encode(np.array([[0, 300, 0, 0]]))
    with pytest.raises(TypeError, match="integer symbols"):
        rs.encode(np.zeros(4) + 0.5)
    with pytest.raises(ValueError, match="erasures: shape"):
        rs.decode(np.zeros((2, 6), int), np.zeros((2, 5), bool))
