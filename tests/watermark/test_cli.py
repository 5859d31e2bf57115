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


def test_detect_cascade_and_no_sync(tiny_files, tmp_path, capsys):
    """Records carry the cascade's stage (and the sync stage's scale and angle); --no-sync is the tile alone; a model
    that cannot synchronise runs the tile alone and says so once on stderr."""
    from qrjax.data import bundled_source
    from qrjax.ecc import get_code
    from qrjax.ecc.hexbits import bits_to_hex

    rng = np.random.default_rng(0)
    paths = []
    for i, im in enumerate(bundled_source("val").sample(rng, 96, 3)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    key = bits_to_hex(rng.integers(0, 2, get_code("qrmark-bch").payload_bits).astype(np.uint8))
    base = ["watermark", "detect", *paths, "--key", key, "--fpr", "0.2", "--workers", "1,1,1", "--batch", "2",
            "--quiet"]
    assert main(base + ["--model", tiny_files["tile"]]) == 0
    on = jsonl(capsys.readouterr().out)
    assert [r["path"] for r in on] == paths and {r["stage"] for r in on} <= {"tile", "sync"}
    synced = [r for r in on if r["stage"] == "sync"]
    assert synced and all(isinstance(r["scale"], float) and isinstance(r["angle"], float) for r in synced)
    assert all(r["scale"] is None for r in on if r["stage"] == "tile")
    assert main(base + ["--model", tiny_files["tile"], "--no-sync"]) == 0
    off = capsys.readouterr()
    assert {r["stage"] for r in jsonl(off.out)} == {"tile"} and "synchronised stage off" not in off.err
    assert main(base + ["--model", tiny_files["unsyncable"]]) == 0
    cant = capsys.readouterr()
    assert {r["stage"] for r in jsonl(cant.out)} == {"tile"}
    assert cant.err.count("synchronised stage off") == 1 and "band-limited" in cant.err


def test_bench_json_and_demo(tiny_files, tmp_path, capsys):
    models = ["--model", tiny_files["tile"], "--baseline-model", tiny_files["full"]]
    rc = main(["watermark", "bench", "--images", "8", "--size", "64", "--format", "png", "--json", "--repeats",
               "1", "--batch", "8", *models])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["sync"] is True
    for k in ("baseline_images_per_s", "system_images_per_s", "decode_bound_images_per_s", "speedup",
              "compute_bound_images_per_s", "shared_core_bound_images_per_s", "system_fraction_of_bound"):
        assert res[k] > 0
    # the speedup is the median over rounds of each round's ratio: with one round, the ratio of the rates
    assert res["speedup"] == pytest.approx(res["system_images_per_s"] / res["baseline_images_per_s"], rel=1e-9)
    shared = 1 / (1 / res["decode_bound_images_per_s"] + 1 / res["compute_bound_images_per_s"])
    assert res["shared_core_bound_images_per_s"] == pytest.approx(shared, rel=1e-9)
    assert res["bound"] == "shared_core"  # the suite runs on CPU
    assert res["system_fraction_of_bound"] == pytest.approx(res["system_images_per_s"] / shared, rel=1e-9)

    rc = main(["demo", "--out", str(tmp_path / "demo"), "--per-cell", "1", "--negatives", "3", "--repeats", "1",
               *models])
    printed = capsys.readouterr().out
    assert rc == 0 and "speedup" in printed and (tmp_path / "demo" / "demo.png").stat().st_size > 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    from qrjax.watermark.demo import DEMO_ATTACKS, DEMO_SIZES

    n = len(DEMO_ATTACKS) * len(DEMO_SIZES) + 3
    assert summary["files"] == n and summary["sync"] is True
    assert [r["images"] for r in summary["rows"]] == [*DEMO_ATTACKS, "clean"]
    assert {"rotate5", "crop0.71", "resize0.5"} <= set(DEMO_ATTACKS)
    records = [json.loads(x) for x in (tmp_path / "demo" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * n
    assert {r["stage"] for r in records if r["pipeline"] == "system"} <= {"tile", "sync"}
    assert all("stage" not in r for r in records if r["pipeline"] == "baseline")
