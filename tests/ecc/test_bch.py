import itertools
import math

import galois
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.ecc import BCH


@pytest.mark.parametrize("n, k, full", [(48, 36, (63, 51)), (15, 7, (15, 7)), (31, 16, (31, 16)), (40, 22, (63, 45))])
def test_generator_and_codewords_equal_galois(n, k, full, rng):
    code = BCH(n, k)
    ref = galois.BCH(*full)
    assert code.t == ref.t
    np.testing.assert_array_equal(code.generator, np.asarray(ref.generator_poly.coeffs))
    msgs = rng.integers(0, 2, (32, k))
    np.testing.assert_array_equal(np.asarray(code.encode(msgs)), np.asarray(ref.encode(galois.GF2(msgs))))


def test_every_pattern_of_up_to_t_errors_is_corrected(rng):
    code = BCH(48, 36)
    patterns = [np.zeros(48, np.int32)]
    for w in (1, 2):
        for pos in itertools.combinations(range(48), w):
            p = np.zeros(48, np.int32)
            p[list(pos)] = 1
            patterns.append(p)
    patterns = np.stack(patterns)
    assert len(patterns) == 1 + 48 + math.comb(48, 2)
    msgs = rng.integers(0, 2, (len(patterns), 36))
    res = code.decode(np.asarray(code.encode(msgs)) ^ patterns)
    assert bool(jnp.all(res.ok))
    np.testing.assert_array_equal(np.asarray(res.message), msgs)
    np.testing.assert_array_equal(np.asarray(res.n_corrected), patterns.sum(1))


def weight_distribution_by_macwilliams(code: BCH) -> np.ndarray:
    """A_w of the code from the brute-force weight distribution of its dual (2^(n-k) words) and MacWilliams."""
    n, r = code.n, code.n - code.k
    h = np.concatenate([code.parity_matrix.T, np.eye(r, dtype=np.int32)], axis=1)  # parity checks [P^T | I]
    coeffs = (np.arange(2 ** r)[:, None] >> np.arange(r)) & 1
    dual_weights = np.bincount(((coeffs @ h) % 2).sum(1), minlength=n + 1)
    kraw = np.array([[sum((-1) ** j * math.comb(i, j) * math.comb(n - i, w - j) for j in range(w + 1))
                      for i in range(n + 1)] for w in range(n + 1)], dtype=object)
    a = kraw.dot(dual_weights.astype(object))
    assert all(x % 2 ** r == 0 for x in a)
    return np.array([x // 2 ** r for x in a], dtype=np.int64)


@pytest.mark.slow
def test_triple_errors_miscorrect_exactly_as_theory():
    """All C(48,3) weight-3 patterns on the zero word: with d >= 5 a radius-2 decoder accepts a weight-3 pattern iff
    it lies inside a weight-5 codeword's support, so exactly C(5,3) * A_5 are miscorrected and the rest detected."""
    code = BCH(48, 36)
    a = weight_distribution_by_macwilliams(code)
    assert a[0] == 1 and a[1:5].sum() == 0
    patterns = np.zeros((math.comb(48, 3), 48), np.int32)
    for row, pos in enumerate(itertools.combinations(range(48), 3)):
        patterns[row, list(pos)] = 1
    res = code.decode(patterns)
    assert int(jnp.sum(res.ok)) == math.comb(5, 3) * int(a[5])
    assert bool(jnp.all(jnp.where(res.ok, jnp.sum(res.codeword, axis=-1) == 5, True)))


def test_errors_and_erasures_within_radius(rng):
    code = BCH(48, 36)
    msgs = rng.integers(0, 2, (200, 36))
    words = np.asarray(code.encode(msgs)).copy()
    erasures = np.zeros_like(words, bool)
    for i in range(len(words)):
        e = rng.integers(0, 3)
        v = rng.integers(0, 4 - 2 * e + 1)
        pos = rng.choice(48, e + v, replace=False)
        words[i, pos[:e]] ^= 1
        words[i, pos[e:]] = rng.integers(0, 2, v)  # an erased bit may or may not be wrong
        erasures[i, pos[e:]] = True
    res = code.decode(words, erasures)
    assert bool(jnp.all(res.ok))
    np.testing.assert_array_equal(np.asarray(res.message), msgs)


def test_impossible_bch_is_refused():
    with pytest.raises(ValueError, match="no binary BCH code has n=48, k=40.*possible k: \\[42, 36"):
        BCH(48, 40)
    with pytest.raises(ValueError, match="n=64 is impossible"):
        BCH(64, 50, m=6)
    with pytest.raises(ValueError, match="bits|symbol 2"):
        BCH(15, 7).decode(np.full(15, 2))
