"""End-to-end: `qrjax watermark train` on the tiny preset, then embed/extract a batch holding a bad file."""

import json

import numpy as np
from PIL import Image

from qrjax.cli import main
from qrjax.train import read_metrics


def test_train_tiny_then_embed_and_extract(tmp_path, capsys):
    workdir = tmp_path / "run"
    rc = main(["watermark", "train", "--preset", "tiny", "--workdir", str(workdir), "--set", "steps=2",
               "--set", "checkpoint_every=1", "--set", "eval_every=1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    rows = read_metrics(workdir / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "eval"} and max(r["step"] for r in rows) == 2
    assert (workdir / "model.msgpack").is_file() and sorted(p.name for p in (workdir / "checkpoints").iterdir())

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / "a.png")
    (src / "bad.png").write_bytes(b"not a png")
    rc = main(["watermark", "embed", "--model", out["model"] + ".json", "--payload", "c0ffee11", "--out",
               str(tmp_path / "out"), str(src / "a.png"), str(src / "bad.png"), str(src / "missing.png")])
    res = json.loads(capsys.readouterr().out)
    assert rc == 1  # some inputs failed, and every input is reported
    assert [r["input"] for r in res["results"]] == [str(src / n) for n in ("a.png", "bad.png", "missing.png")]
    assert "output" in res["results"][0] and res["results"][0]["psnr"] > 30
    assert "cannot be read" in res["results"][1]["error"] and "no such file" in res["results"][2]["error"]

    rc = main(["watermark", "extract", "--model", out["model"] + ".json", "--payload", "c0ffee11",
               res["results"][0]["output"], str(src / "bad.png")])
    ext = json.loads(capsys.readouterr().out)
    assert rc == 1 and len(ext["results"]) == 2 and "error" in ext["results"][1]
    first = ext["results"][0]
    assert len(first["bits"]) == 12 and 0 <= first["matching_bits"] <= 48 and 0 < first["p_value"] <= 1


def test_train_rejects_unknown_overrides(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="no field 'stepz'"):
        main(["watermark", "train", "--preset", "tiny", "--workdir", str(tmp_path), "--set", "stepz=3"])
