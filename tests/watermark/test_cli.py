"""End-to-end: `qrjax watermark train` on the tiny preset, then embed and detect a batch holding a bad file and a
file that is not an image."""

import json

import numpy as np
import pytest
from PIL import Image

from qrjax.cli import main
from qrjax.train import read_metrics


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_train_tiny_then_embed_and_detect(tmp_path, capsys):
    workdir = tmp_path / "run"
    rc = main(["watermark", "train", "--preset", "tiny", "--workdir", str(workdir), "--set", "steps=2",
               "--set", "checkpoint_every=1", "--set", "eval_every=1", "--json"])
    assert rc == 0
    printed = capsys.readouterr().out
    out = json.loads(printed)
    assert printed.count("\n") == 1 and out["steps"] == 2  # one compact JSON object
    rows = read_metrics(workdir / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "eval"} and max(r["step"] for r in rows) == 2
    assert (workdir / "model.msgpack").is_file() and sorted(p.name for p in (workdir / "checkpoints").iterdir())

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / "sub/b.jpg")
    (src / "bad.png").write_bytes(b"not a png")
    (src / "notes.txt").write_text("not an image, passed over and named")
    model = out["model"] + ".json"
    rc = main(["watermark", "embed", str(src), str(tmp_path / "out"), "--model", model, "--key", "c0ffee11",
               "--quiet"])
    captured = capsys.readouterr()
    res = jsonl(captured.out)
    assert rc == 1 and {r["key"] for r in res} == {"c0ffee11"}  # some inputs failed, and every input is reported
    assert [r["path"] for r in res] == [str(src / n) for n in ("a.png", "bad.png", "sub/b.jpg")]
    assert [r["status"] for r in res] == ["ok", "error", "ok"] and res[0]["error"] is None
    assert res[0]["output"] == str(tmp_path / "out" / "a.png") and res[0]["psnr"] > 30
    assert res[2]["output"] == str(tmp_path / "out" / "sub" / "b.png")  # the tree is mirrored
    assert "not an image" in res[1]["error"] and res[1]["output"] is None
    assert "passed over 1 file(s)" in captured.err and str(src / "notes.txt") in captured.err
    rc = main(["watermark", "embed", str(src / "a.png"), str(tmp_path / "one.jpg"), "--model", model, "--seed", "3",
               "--quiet"])
    one = jsonl(capsys.readouterr().out)
    assert rc == 0 and len(one) == 1 and len(one[0]["key"]) == 8 and one[0]["output"] == str(tmp_path / "one.jpg")
    with Image.open(tmp_path / "one.jpg") as im:
        assert im.format == "JPEG"

    rc = main(["watermark", "detect", "--model", model, "--key", "c0ffee11", "--workers", "1,1,1", "--batch", "2",
               "--quiet", res[0]["output"], str(src / "bad.png"), str(src)])
    captured = capsys.readouterr()
    det = jsonl(captured.out)
    assert rc == 1 and [r["path"] for r in det] == [res[0]["output"], str(src / "bad.png")] + \
        [str(src / n) for n in ("a.png", "bad.png", "sub/b.jpg")]
    assert [r["status"] for r in det] == ["ok", "error", "ok", "error", "ok"]
    assert 0 <= det[0]["matching_bits"] <= 48 and 0 < det[0]["p_value"] <= 1 and det[1]["error"]
    assert "passed over 1 file(s)" in captured.err and "5 inputs" in captured.err


def test_train_rejects_unknown_overrides(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="no field 'stepz'"):
        main(["watermark", "train", "--preset", "tiny", "--workdir", str(tmp_path), "--set", "stepz=3"])


def test_bench_json_and_demo(tmp_path, capsys):
    rc = main(["watermark", "bench", "--images", "8", "--size", "256", "--format", "png", "--json", "--repeats",
               "1", "--batch", "8"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    for k in ("baseline_images_per_s", "system_images_per_s", "decode_bound_images_per_s", "speedup"):
        assert res[k] > 0
    # the speedup is the median over rounds of each round's ratio: with one round, the ratio of the rates
    assert res["speedup"] == pytest.approx(res["system_images_per_s"] / res["baseline_images_per_s"], rel=1e-9)

    rc = main(["demo", "--out", str(tmp_path / "demo"), "--per-cell", "1", "--negatives", "3", "--repeats", "1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "speedup" in printed and (tmp_path / "demo" / "demo.png").stat().st_size > 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["files"] == 15 + 3 and [r["images"] for r in summary["rows"]][-1] == "clean"
    records = (tmp_path / "demo" / "records.jsonl").read_text().splitlines()
    assert len(records) == 2 * summary["files"]
