"""DLRM data: the synthetic Criteo-like stream (shapes, determinism, Zipf skew against the exact distribution, CTR,
a teacher whose AUC is meaningful) and the Criteo text reader (against a strict plain-Python parser of the format)."""

import gzip
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from qrjax.dlrm.data import (KAGGLE_TABLE_SIZES, NUM_DENSE, NUM_SPARSE, CriteoTSV, SyntheticCriteo,
                             capped_table_sizes, open_data, transform_dense)

SMALL = (1000, 50, 3, 20000, 7, 300)


@pytest.fixture(scope="module")
def synth():
    return SyntheticCriteo(SMALL, multi_hot=2, seed=3)


def test_kaggle_sizes_and_capping():
    assert len(KAGGLE_TABLE_SIZES) == NUM_SPARSE == 26 and NUM_DENSE == 13
    assert sum(KAGGLE_TABLE_SIZES) == 33_762_577  # 33.76M rows
    capped = capped_table_sizes(KAGGLE_TABLE_SIZES, 2**15)
    assert capped == tuple(min(s, 32768) for s in KAGGLE_TABLE_SIZES) and max(capped) == 32768 and min(capped) == 3
    assert capped_table_sizes(KAGGLE_TABLE_SIZES, 0) == capped_table_sizes(KAGGLE_TABLE_SIZES, -1) == \
        KAGGLE_TABLE_SIZES
    with pytest.raises(ValueError, match=r"sizes\[1\] must be >= 1"):
        capped_table_sizes((5, 0), 4)
    with pytest.raises(TypeError, match=r"sizes\[0\] must be an int"):
        capped_table_sizes((2.5,), 4)
    with pytest.raises(TypeError, match="max_ind_range must be an int"):
        capped_table_sizes((5,), "10")
    with pytest.raises(ValueError, match="empty"):
        capped_table_sizes((), 4)
    with pytest.raises(TypeError, match="sequence of ints"):
        capped_table_sizes("123", 4)


def test_synthetic_shapes_dtypes_ranges(synth):
    b = synth.batch(0, 512)
    assert set(b) == {"dense", "sparse", "label"}
    assert b["dense"].dtype == np.float32 and b["dense"].shape == (512, 13)
    assert b["sparse"].dtype == np.int32 and b["sparse"].shape == (512, len(SMALL), 2)
    assert b["label"].dtype == np.float32 and b["label"].shape == (512,)
    assert set(np.unique(b["label"])) == {0.0, 1.0}
    assert (b["sparse"] >= 0).all() and (b["sparse"] < np.array(SMALL)[:, None]).all()
    # dense = log1p of non-negative integer counts, some zero in every feature, different scales per feature
    counts = np.expm1(b["dense"].astype(np.float64))
    np.testing.assert_allclose(counts, np.round(counts), rtol=1e-5, atol=1e-4)
    assert (b["dense"] >= 0).all() and np.isfinite(b["dense"]).all() and (b["dense"] == 0).any(0).all()
    assert np.ptp(b["dense"].mean(0)) > 0.5
    np.testing.assert_array_equal(transform_dense(np.array([[-2, 0, 1, 99]])), np.log1p([[0, 0, 1, 99]]).astype(
        np.float32))
    # a table of 2^20 rows works (one-hot, every row reachable)
    big = SyntheticCriteo((2**20, 3), seed=1).batch(0, 4096)["sparse"]
    assert big.shape == (4096, 2, 1) and big[:, 0].max() < 2**20 and len(np.unique(big[:, 0])) > 1000


def test_synthetic_is_deterministic_in_seed_and_step(synth):
    a, again = synth.batch(7, 256), synth.batch(7, 256)
    fresh = SyntheticCriteo(SMALL, multi_hot=2, seed=3).batch(7, 256)
    for k in a:
        np.testing.assert_array_equal(a[k], again[k])
        np.testing.assert_array_equal(a[k], fresh[k])
    other_step, other_seed = synth.batch(8, 256), SyntheticCriteo(SMALL, multi_hot=2, seed=4).batch(7, 256)
    ev = synth.eval_batch(256)
    for b in (other_step, other_seed, ev):
        assert not np.array_equal(a["dense"], b["dense"]) and not np.array_equal(a["sparse"], b["sparse"])
    np.testing.assert_array_equal(synth.eval_batch(256, 1)["sparse"], synth.eval_batch(256, 1)["sparse"])
    assert not np.array_equal(synth.eval_batch(256, 1)["sparse"], ev["sparse"])
    sizes = [len(b["label"]) for b in synth.eval_batches(100, 250)]
    assert sizes == [100, 100, 50]


def test_zipf_popularity_matches_the_exact_distribution():
    n, a = 1000, 1.2
    s = SyntheticCriteo((n,), multi_hot=8, zipf_a=a, seed=5)
    rows = s.batch(0, 20000)["sparse"].ravel()
    p = (np.arange(1, n + 1) ** -a) / (np.arange(1, n + 1) ** -a).sum()
    freq = np.sort(np.bincount(rows, minlength=n))[::-1] / rows.size
    sd = np.sqrt(p[:5] * (1 - p[:5]) / rows.size)
    assert np.all(np.abs(freq[:5] - p[:5]) < 5 * sd + 1e-4), (freq[:5], p[:5])
    assert p[0] > 0.15 and freq[0] > 20 / n  # strongly skewed, far above uniform
    top = np.argsort(np.bincount(rows, minlength=n))[::-1][:10]
    assert set(top) != set(range(10))  # popular ids are spread over the table
    flat = SyntheticCriteo((n,), multi_hot=8, zipf_a=0.0, seed=5).batch(0, 20000)["sparse"].ravel()
    assert np.bincount(flat, minlength=n).max() / flat.size < 3 / n  # zipf_a=0: uniform


@pytest.mark.parametrize("ctr", [0.1, 0.25, 0.5])
def test_click_rate_near_target(ctr):
    s = SyntheticCriteo(SMALL, seed=1, ctr=ctr)
    labels = np.concatenate([s.batch(i, 5000)["label"] for i in range(4)])
    assert abs(labels.mean() - ctr) < 0.02


def test_teacher_auc_is_meaningful_and_labels_follow_it(synth):
    b = synth.eval_batch(20000)
    z = synth.teacher_logits(b)
    assert z.dtype == np.float32 and z.shape == (20000,)
    auc = roc_auc_score(b["label"], z)
    assert auc > 0.7
    assert abs(roc_auc_score(b["label"], np.random.default_rng(0).permutation(z)) - 0.5) < 0.03
    # label ~ Bernoulli(sigmoid(z)): in each decile of z the click rate is the mean of sigmoid(z)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    for part in np.array_split(np.argsort(z), 10):
        sd = np.sqrt(p[part].mean() * (1 - p[part].mean()) / len(part))
        assert abs(b["label"][part].mean() - p[part].mean()) < 5 * sd + 0.005
    # label noise lowers the AUC reached by the teacher's logits
    noisy = SyntheticCriteo(SMALL, multi_hot=2, seed=3, noise=2.0)
    nb = noisy.eval_batch(20000)
    assert 0.55 < roc_auc_score(nb["label"], noisy.teacher_logits(nb)) < auc - 0.03


def _contrasts(s, n=256):
    """max over table pairs (a, b) of |f(a', b') - f(a', b) - f(a, b') + f(a, b)|: zero for an additive logit."""
    x, y = s.batch(0, n), s.batch(1, n)
    f = s.teacher_logits
    out = []
    for a in range(s.num_tables):
        for c in range(a + 1, s.num_tables):
            def swap(*tables):
                sp = x["sparse"].copy()
                sp[:, list(tables)] = y["sparse"][:, list(tables)]
                return f({"dense": x["dense"], "sparse": sp}).astype(np.float64)
            out.append(np.abs(swap(a, c) - swap(a) - swap(c) + f(x)).max())
    return np.array(out)


def test_teacher_has_interactions_between_tables():
    additive = SyntheticCriteo(SMALL, seed=2, interaction_std=0.0)
    assert _contrasts(additive).max() < 1e-5
    full = SyntheticCriteo(SMALL, seed=2)
    c = _contrasts(full)
    assert c.max() > 0.1 and (c > 0.01).sum() >= 3
    assert len(full.interaction_pairs) == 8 and len(full.dense_tables) == 4


def test_teacher_logits_read_the_batch(synth):
    b = synth.batch(0, 64)
    z = synth.teacher_logits(b)
    changed = {"dense": b["dense"], "sparse": b["sparse"].copy()}
    changed["sparse"][:, 0] = (changed["sparse"][:, 0] + 1) % SMALL[0]
    assert not np.allclose(synth.teacher_logits(changed), z)
    np.testing.assert_array_equal(synth.teacher_logits({"dense": b["dense"], "sparse": b["sparse"]}), z)
    with pytest.raises(ValueError, match=r"batch\['sparse'\]\[0, 2, 1\] = 3 is outside table 2"):
        bad = b["sparse"].copy()
        bad[0, 2, 1] = 3
        synth.teacher_logits({"dense": b["dense"], "sparse": bad})
    with pytest.raises(ValueError, match=r"batch\['sparse'\] must be int\[64, 6, 2\]"):
        synth.teacher_logits({"dense": b["dense"], "sparse": b["sparse"][:, :, :1]})
    with pytest.raises(ValueError, match=r"batch\['dense'\] must be float32\[B, 13\]"):
        synth.teacher_logits({"dense": b["dense"][:, :12], "sparse": b["sparse"]})


def test_synthetic_errors():
    with pytest.raises(ValueError, match="ctr must lie in"):
        SyntheticCriteo(SMALL, ctr=1.0)
    with pytest.raises(ValueError, match="multi_hot must be >= 1"):
        SyntheticCriteo(SMALL, multi_hot=0)
    with pytest.raises(ValueError, match="zipf_a"):
        SyntheticCriteo(SMALL, zipf_a=-1)
    with pytest.raises(ValueError, match="noise must be"):
        SyntheticCriteo(SMALL, noise=float("nan"))
    with pytest.raises(ValueError, match=r"table_sizes\[0\] = 2147483648 exceeds"):
        SyntheticCriteo((2**31,))
    s = SyntheticCriteo((10,))
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.batch(-1, 4)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        s.batch(0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Criteo text files

SIZES = (2**31 - 1, *KAGGLE_TABLE_SIZES[1:])  # table 0 never folds: its row is the hex value itself
INT_RE, HEX_RE = re.compile(r"-?[0-9]{1,18}"), re.compile(r"[0-9a-fA-F]{1,16}")


def reference_parse(line: str):
    """(label, counts, rows) of one line by the format's rules in plain Python, or None if it is malformed."""
    f = line.split("\t")
    if len(f) != 40 or f[0] not in ("0", "1"):
        return None
    if not all(x == "" or INT_RE.fullmatch(x) for x in f[1:14]):
        return None
    if not all(x == "" or HEX_RE.fullmatch(x) for x in f[14:]):
        return None
    return (int(f[0]), [int(x) if x else 0 for x in f[1:14]],
            [int(x, 16) % size if x else 0 for x, size in zip(f[14:], SIZES)])


def make_line(i: int, rng, label=None) -> list[str]:
    """A well-formed line whose first categorical is the line number (as hex), some fields empty."""
    ints = ["" if rng.random() < 0.2 else str(rng.integers(-3, 10**rng.integers(1, 7))) for _ in range(13)]
    cats = [f"{i:x}"] + ["" if rng.random() < 0.15 else f"{rng.integers(2**32):08x}" for _ in range(25)]
    return [str(rng.integers(2) if label is None else label)] + ints + cats


def write(path, lines):
    text = "".join(line + "\n" for line in lines)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def ids(batch):
    return batch["sparse"][:, 0, 0].tolist()  # line numbers (see make_line)


def all_samples(data, batch_size=7):
    out = list(data.eval_batches(batch_size))
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def mixed_lines():
    rng = np.random.default_rng(0)
    good = ["\t".join(make_line(i + 1, rng)) for i in range(40)]
    base = make_line(999, rng, label=1)

    def edit(k, v):
        f = list(base)
        f[k] = v
        return "\t".join(f)
    hand = [
        "\t".join(["1"] + [""] * 13 + ["3e9"] + [""] * 25),  # every feature missing
        edit(14, "FFFFFFFFFFFFFFFF"), edit(3, "-7"), edit(4, "000000000000000042"), edit(20, "68fd1e64"),
        edit(5, "-999999999999999999"), edit(21, "0"), edit(22, "AbCdEf01"),
        # malformed
        "", "\t".join(base[:-1]), "\t".join(base + ["ab"]), edit(0, "2"), edit(0, ""), edit(0, "1.0"),
        edit(2, "1.5"), edit(2, "12a"), edit(2, "-"), edit(2, "+5"), edit(2, " 5"), edit(2, "1_0"),
        edit(2, "1234567890123456789"), edit(15, "xyz"), edit(15, "0x1f"), edit(15, "1" * 17), edit(15, "-1f"),
        edit(2, "1\x002"), edit(30, "a" * 30), edit(7, "é"),
    ]
    lines = good[:20] + hand + good[20:]
    rng.shuffle(lines)
    return lines


@pytest.mark.parametrize("name", ["day.tsv", "day.tsv.gz"])
def test_tsv_matches_a_plain_python_parser(tmp_path, name):
    lines = mixed_lines()
    ref = [reference_parse(line) for line in lines]
    assert sum(r is None for r in ref) == 20
    data = CriteoTSV(write(tmp_path / name, lines), SIZES, split="all")
    got = all_samples(data)
    want = [r for r in ref if r is not None]
    np.testing.assert_array_equal(got["label"], np.array([r[0] for r in want], np.float32))
    np.testing.assert_array_equal(got["dense"], transform_dense(np.array([r[1] for r in want])))
    np.testing.assert_array_equal(got["sparse"][:, :, 0], np.array([r[2] for r in want]))
    assert got["sparse"].dtype == np.int32 and got["sparse"].shape == (len(want), 26, 1)
    bad = [i + 1 for i, r in enumerate(ref) if r is None]
    assert data.bad_lines == 20 and data.bad_line_numbers == bad[:10]
    # DLRM's hashing on the known values, and the "missing" row 0
    row = next(i for i, r in enumerate(want) if r[2][0] == 0x3E9)
    assert got["sparse"][row, 1:, 0].tolist() == [0] * 25 and got["dense"][row].tolist() == [0.0] * 13
    assert int("68fd1e64", 16) % SIZES[6] in got["sparse"][:, 6, 0]
    assert (2**64 - 1) % SIZES[0] in got["sparse"][:, 0, 0]  # "FFFFFFFFFFFFFFFF"
    # a second pass counts nothing twice
    all_samples(data)
    assert data.bad_lines == 20


def test_split_by_physical_line_and_bad_lines_per_pass(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["\t".join(make_line(i + 1, rng)) for i in range(30)]
    for i in (4, 5, 13, 29):  # 0-based; 5 and 29 are held out (i % 3 == 2), 4 and 13 are training lines
        lines[i] = "broken"
    path = write(tmp_path / "d.tsv", lines)
    data = CriteoTSV(path, SIZES, eval_every=3)
    train = [i + 1 for i in range(30) if i % 3 != 2 and i not in (4, 13)]
    held = [i + 1 for i in range(30) if i % 3 == 2 and i not in (5, 29)]
    assert [x for b in data.batches(2) for x in ids(b)] == train
    assert data.bad_lines == 2 and data.bad_line_numbers == [5, 14]
    assert data.dropped_samples == 0 and data.epoch_samples == 18
    assert ids(all_samples(data)) == held
    assert data.bad_lines == 4 and data.bad_line_numbers == [5, 6, 14, 30]
    assert [len(b["label"]) for b in data.eval_batches(3, max_samples=7)] == [3, 3, 1]
    assert ids(all_samples(CriteoTSV(path, SIZES, eval_every=3, split="eval"))) == held
    full = CriteoTSV(path, SIZES, eval_every=3, split="all")
    assert [x for b in full.batches(5) for x in ids(b)] == sorted(train + held)[:25]
    assert full.dropped_samples == 1


def test_wraparound_and_random_access_equal_sequential(tmp_path):
    rng = np.random.default_rng(2)
    lines = ["\t".join(make_line(i + 1, rng)) for i in range(25)]
    lines[7] = "bad"
    path = write(tmp_path / "d.tsv.gz", lines)
    train = [i + 1 for i in range(25) if i % 5 != 4 and i != 7]  # 19 samples an epoch
    stream = train * 6
    seq = CriteoTSV(path, SIZES, eval_every=5)
    for step in range(20):  # 20 x 4 samples: more than 4 epochs, batches straddle epochs
        assert ids(seq.batch(step, 4)) == stream[4 * step:4 * step + 4]
    assert seq.epoch_samples == 19
    rnd = CriteoTSV(path, SIZES, eval_every=5)
    for step in (13, 2, 3, 19, 0, 25, 6):
        b, want = rnd.batch(step, 4), seq.batch(step, 4)
        assert ids(b) == stream[4 * step:4 * step + 4]
        for k in b:
            np.testing.assert_array_equal(b[k], want[k])
    assert rnd.bad_lines == 1 and rnd.bad_line_numbers == [8]
    # a forward jump before the epoch length is known
    jump = CriteoTSV(path, SIZES, eval_every=5)
    assert ids(jump.batch(10, 5)) == stream[50:55]


def test_tsv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        CriteoTSV(tmp_path / "nope.tsv", SIZES)
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        CriteoTSV(tmp_path, SIZES)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.tsv.*is empty"):
        CriteoTSV(tmp_path / "empty.tsv", SIZES)
    good = write(tmp_path / "g.tsv", ["\t".join(make_line(1, np.random.default_rng(0)))] * 3)
    with pytest.raises(ValueError, match="one-hot"):
        CriteoTSV(good, SIZES, multi_hot=2)
    with pytest.raises(ValueError, match="needs 26 sizes, got 3"):
        CriteoTSV(good, (4, 5, 6))
    with pytest.raises(ValueError, match="split must be"):
        CriteoTSV(good, SIZES, split="test")
    with pytest.raises(ValueError, match="eval_every must be >= 2"):
        CriteoTSV(good, SIZES, eval_every=1)
    junk = write(tmp_path / "junk.tsv", ["a\tb", "1\t2"])
    with pytest.raises(ValueError, match=r"junk.tsv.*no well-formed samples.*2 malformed lines.*\[1, 2\]"):
        CriteoTSV(junk, SIZES, split="all").batch(0, 1)
    with pytest.raises(ValueError, match="junk.tsv.*no well-formed samples"):
        list(CriteoTSV(junk, SIZES).batches(1))
    fake = tmp_path / "fake.tsv.gz"
    fake.write_text("not gzip\n")
    with pytest.raises(ValueError, match="fake.tsv.gz.*cannot read"):
        CriteoTSV(fake, SIZES).batch(0, 1)


def test_open_data(tmp_path):
    assert isinstance(open_data("synthetic", (5, 6), seed=1), SyntheticCriteo)
    path = write(tmp_path / "g.tsv", ["\t".join(make_line(1, np.random.default_rng(0)))] * 3)
    data = open_data(str(path), SIZES)
    assert isinstance(data, CriteoTSV) and data.split == "train"
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        open_data(tmp_path / "missing.tsv", SIZES)
