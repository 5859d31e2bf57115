import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from qrjax.ecc import BCH, BitCode
from qrjax.watermark import detect


@pytest.mark.parametrize("n", [32, 48])
def test_p_values_match_scipy(n):
    m = np.arange(n + 1)
    np.testing.assert_allclose(detect.p_value(m, n), scipy.stats.binom.sf(m - 1, n, 0.5), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(detect.p_value(jnp.asarray(m), n)), scipy.stats.binom.sf(m - 1, n, 0.5),
                               rtol=1e-6)


@pytest.mark.parametrize("n,fpr", [(48, 1e-6), (48, 1e-9), (32, 1e-6), (48, 0.05), (16, 1e-6)])
def test_threshold_is_the_smallest_valid_one(n, fpr):
    tau = detect.threshold(n, fpr)
    sf = scipy.stats.binom.sf(np.arange(n + 2) - 1, n, 0.5)
    assert sf[tau] <= fpr and (tau == 0 or sf[tau - 1] > fpr)
    if n == 16:
        assert tau == 17  # even 16/16 matching bits (1.5e-5) is not rare enough


def test_documented_thresholds():
    assert detect.threshold(48, 1e-6) == 41  # 40 -> 1.65e-6, 41 -> 3.1e-7
    assert detect.threshold(32, 1e-6) == 30  # 29 -> 1.28e-6 is just above


def test_detect_and_identify_against_brute_force(rng):
    keys = rng.integers(0, 2, (20, 48))
    logits = rng.normal(size=(50, 48))
    carriers = rng.integers(0, 20, 50)
    flips = rng.random((50, 48)) < np.linspace(0, 0.5, 50)[:, None]  # from clean to useless
    watermarked = np.where(keys[carriers] ^ flips, np.abs(logits), -np.abs(logits))
    idx, p, m = (np.asarray(a) for a in detect.identify(watermarked, keys, fpr=1e-6))
    tau = detect.threshold(48, 1e-6 / 20)
    for i in range(50):
        counts = [(((watermarked[i] > 0) == keys[j]).sum()) for j in range(20)]
        best = int(np.argmax(counts))
        assert m[i] == counts[best]
        assert idx[i] == (best if counts[best] >= tau else -1)
        assert p[i] == pytest.approx(min(1.0, 20 * scipy.stats.binom.sf(counts[best] - 1, 48, 0.5)), rel=1e-5)
    found, p1, m1 = detect.detect(watermarked, keys[carriers], fpr=1e-6)
    assert np.array_equal(np.asarray(found), np.asarray(m1) >= 41)
    assert np.asarray(found)[:10].all()  # no or few flips: detected


def test_empirical_fpr_of_fair_coins_matches_theory(rng):
    logits = rng.normal(size=(4000, 48))
    keys = rng.integers(0, 2, (25, 48))
    for row in detect.empirical_fpr(logits, keys, fprs=(1e-1, 1e-2)):
        se = np.sqrt(row["theory_fpr"] / row["trials"])
        assert abs(row["measured_fpr"] - row["theory_fpr"]) < 6 * se
    stats = detect.bit_statistics(logits)
    assert stats["max_abs_freq_dev"] < 0.04 and stats["max_abs_corr"] < 0.1


def test_empirical_fpr_counts_every_pair_when_keys_are_chunked(rng):
    logits = rng.normal(size=(2000, 48))  # 2^24 / (2000 * 48) -> 174 keys a chunk: 500 keys take 3 chunks
    keys = rng.integers(0, 2, (500, 48))
    agree = ((logits[:, None, :] > 0) == (keys[None] > 0)).sum(-1)  # brute force, one pass
    for row in detect.empirical_fpr(logits, keys, fprs=(1e-1, 1e-2, 1e-4)):
        assert row["trials"] == 2000 * 500
        assert row["detections"] == int(np.sum(agree >= row["tau"]))
        assert row["measured_fpr"] == row["detections"] / row["trials"]


def test_whitening_makes_biased_correlated_logits_fair(rng):
    mix = rng.normal(size=(8, 8))
    logits = rng.normal(size=(20000, 8)) @ mix + 3.0
    assert detect.bit_statistics(logits)["max_abs_freq_dev"] > 0.3
    for form in ("zca", "pca"):
        w = detect.fit_whitening(logits, form)
        white = logits @ np.asarray(w["w"]).T + np.asarray(w["b"])
        np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(8), atol=1e-3)
        np.testing.assert_allclose(white.mean(0), 0, atol=1e-4)
    # ZCA is the symmetric inverse square root of the covariance: independent bits are only rescaled, never mixed
    w = np.asarray(detect.fit_whitening(logits)["w"], np.float64)
    np.testing.assert_allclose(w, w.T, atol=1e-5)
    np.testing.assert_allclose(w @ np.cov(logits, rowvar=False) @ w, np.eye(8), atol=1e-3)
    indep = rng.normal(size=(20000, 4)) * np.array([1.0, 2.0, 3.0, 4.0]) + 1.0
    wi = np.asarray(detect.fit_whitening(indep)["w"])
    np.testing.assert_allclose(wi, np.diag(1 / indep.std(0, ddof=1)), atol=3e-3)
    with pytest.raises(ValueError, match="form: expected"):
        detect.fit_whitening(logits, "svd")


def test_ecc_false_accept_bound_by_brute_force():
    code = BitCode("bch15", BCH(15, 7), 7)  # t = 2: the ball around a codeword holds 1 + 15 + 105 words
    payload = np.array([[1, 0, 1, 1, 0, 0, 1]], np.uint8)
    words = np.array(list(itertools.product([0, 1], repeat=15)), np.uint8)
    dec = detect.decode_payload(code, np.where(words, 1.0, -1.0))
    hits = np.mean(np.asarray(dec.ok) & np.all(np.asarray(dec.payload) == payload, axis=-1))
    assert hits == pytest.approx(detect.ecc_false_accept(code), rel=1e-12)
    assert detect.ecc_false_accept(code, "chase", chase_bits=3) == 8 * hits
