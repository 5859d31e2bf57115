"""CLIP training end to end: the CLI on a CSV file and on webdataset shards with unusable samples, `clip eval`,
resume after a kill, DRRho's cached and online reference features, and the errors a user meets."""

import io
import json
import shutil
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from qrjax.cli import main
from qrjax.clip.config import get_config
from qrjax.clip.data import SyntheticScenes
from qrjax.clip.export import load_model
from qrjax.clip.train import train_and_evaluate


def run_cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scenes():
    s = SyntheticScenes(40, 24, seed=3)
    idx = np.arange(40)
    return s.images(idx), s.captions(idx)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny synthetic run shared by the tests that need a trained model."""
    workdir = tmp_path_factory.mktemp("clip") / "run"
    summary = train_and_evaluate(get_config("tiny"), workdir, devices=2, progress=False)
    return workdir, summary


def test_train_cli_on_a_csv_file_with_unusable_rows(tmp_path, scenes, tiny_run, capsys):
    """DRRho on a user's TSV file, the reference a model trained on other data (its own tokenizer: cached
    reference features)."""
    images, captions = scenes
    (tmp_path / "img").mkdir()
    rows = ["path\tcaption"]
    for i, (image, caption) in enumerate(zip(images, captions)):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(image))
        rows.append(f"img/{i}.png\t{caption}")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows += ["img/missing.png\ta red square", "img/broken.png\ta blue cross", "img/0.png\t   "]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(["clip", "train", "--preset", "tiny", "--data", str(tmp_path / "pairs.tsv"),
                              "--csv-img-key", "path", "--csv-caption-key", "caption", "--loss", "drrho",
                              "--ref", str(tiny_run[0] / "model"), "--devices", "2", "--workdir",
                              str(tmp_path / "run"), "--json", "--quiet"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    for key in ("loss", "steps", "samples_seen", "bad_samples", "seconds", "retrieval_r1_i2t", "retrieval_r1_t2i"):
        assert key in summary, key
    assert summary["steps"] == 4 and summary["samples_seen"] == 4 * 16 and summary["loss_name"] == "drrho"
    assert summary["bad_samples"] == 3 and np.isfinite(summary["loss"])
    named = " ".join(summary["bad_names"])
    assert "missing.png" in named and "broken.png" in named and "line 43" in named
    assert "skipped 3 unusable" in err
    model = load_model(tmp_path / "run" / "model")
    assert model.config.num_samples == 40  # the u tables follow the data set
    assert model.tokenizer.ids("red")  # built from the file's captions
    # eval on the same file: retrieval over its pairs, no zero-shot classes
    code, out, err = run_cli(["clip", "eval", "--model", str(tmp_path / "run" / "model"), "--data",
                              str(tmp_path / "pairs.tsv"), "--csv-img-key", "path", "--csv-caption-key", "caption",
                              "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["zero_shot_top1"] is None and result["pairs"] == 40 and 0 <= result["retrieval_r5_t2i"] <= 1


def test_train_cli_on_webdataset_shards(tmp_path, scenes, capsys):
    images, captions = scenes
    (tmp_path / "shards").mkdir()
    for shard in range(2):
        with tarfile.open(tmp_path / "shards" / f"{shard:05d}.tar", "w") as tar:
            for i in range(shard * 20, shard * 20 + 20):
                for name, payload in ((f"{i:04d}.png", png_bytes(images[i])),
                                      (f"{i:04d}.txt", captions[i].encode())):
                    if (i, name[-3:]) in ((7, "txt"), (25, "png")):
                        continue  # a key without caption, a key without image
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    code, out, err = run_cli(["clip", "train", "--preset", "tiny", "--data", str(tmp_path / "shards"), "--loss",
                              "openclip", "--reduction", "openclip", "--devices", "4", "--workdir",
                              str(tmp_path / "run"), "--json", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["bad_samples"] == 2 and summary["reduction"] == "openclip" and summary["devices"] == 4
    assert any("0007" in n for n in summary["bad_names"]) and any("0025" in n for n in summary["bad_names"])


def test_eval_cli_on_the_synthetic_set(tiny_run, capsys):
    workdir, summary = tiny_run
    code, out, err = run_cli(["clip", "eval", "--model", str(workdir / "model"), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["classes"] == 8 and result["pairs"] == 240
    for key in ("zero_shot_top1", "retrieval_r1_i2t", "retrieval_r1_t2i", "retrieval_r5_i2t", "retrieval_r5_t2i"):
        assert result[key] == pytest.approx(summary[key]), key  # the training run's final evaluation, reproduced


def test_resume_after_a_kill_gives_the_same_model(tmp_path, tiny_run):
    workdir, full = tiny_run
    shutil.copytree(workdir, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")  # killed after the checkpoint at step 2
    for f in ("model.json", "model.msgpack", "summary.json"):
        (tmp_path / "b" / f).unlink()
    resumed = train_and_evaluate(get_config("tiny"), tmp_path / "b", devices=2, progress=False)
    assert resumed["loss"] == full["loss"] and resumed["tau"] == full["tau"]
    a, b = load_model(workdir / "model"), load_model(tmp_path / "b" / "model")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_user_errors_are_named(tmp_path):
    for argv, expect in (
            (["clip", "train", "--preset", "tiny", "--loss", "drrho"], "needs a reference model"),
            (["clip", "train", "--preset", "tiny", "--data", str(tmp_path / "nope.csv")], "nope.csv"),
            (["clip", "train", "--preset", "tiny", "--set", "batch_size=6", "--devices", "4"], "not divisible"),
            (["clip", "train", "--preset", "tiny", "--set", "tau=3"], "has no field 'tau'")):
        with pytest.raises(SystemExit) as exc:
            main(argv + ["--workdir", str(tmp_path / "r")])
        assert expect in str(exc.value) and str(exc.value).startswith("qrjax clip train: "), argv
    with pytest.raises(SystemExit) as exc:
        main(["clip", "eval", "--model", str(tmp_path / "none"), "--json"])
    assert "none" in str(exc.value) and "neither a shipped model" in str(exc.value)
