"""The detection system: allocation, decisions equal to plain per-image calls, bad input, devices."""

import json
import math

import jax
import numpy as np
import pytest
from PIL import Image

from qrjax import parallel
from qrjax.data.decode import decode
from qrjax.ecc import get_code
from qrjax.watermark import detect, embed, extract, load_pretrained
from qrjax.watermark.pipeline import (Decision, FullImageDetector, Plan, TileDetector, even_plan, plan_allocation)
from tests.xla_mode import optimized

# ------------------------------------------------------------------------------------------------ allocation

BYTES = (786_432, 49_152, 192)  # QRMark's bytes per sample: 256^2 image, 64^2 tile, 48 bits (fp32)


@pytest.mark.parametrize("budget, hint, workers, batch", [
    (3, 16, (1, 1, 1), (16, 16, 16)),
    (6, 128, (2, 1, 3), (63, 126, 42)),
    (10, 16, (3, 1, 6), (4, 12, 2)),
])
def test_plan_matches_qrmark_reference_examples(budget, hint, workers, batch):
    """t = [1.0, 0.2, 2.0] on an 80 GB card: the allocations QRMark's allocator derives (papers/qrmark.md §5)."""
    plan = plan_allocation((1.0, 0.2, 2.0), budget, batch_hint=hint, bytes_per_sample=BYTES, memory_cap=0.8 * 80e9)
    assert plan.workers == workers and plan.batch == batch


def test_plan_gives_workers_to_the_slowest_stage_and_respects_memory():
    plan = plan_allocation((0.1, 5.0, 0.1), 8, batch_hint=256)
    assert plan.workers == (1, 6, 1) and sum(plan.workers) == 8
    # a cap that holds 60 samples in flight: Q shrinks with it (lcm(1, 6, 1) = 6 -> Q = 60)
    capped = plan_allocation((0.1, 5.0, 0.1), 8, batch_hint=256, bytes_per_sample=(1, 1, 1), memory_cap=180)
    assert math.lcm(*capped.workers) * 1 <= capped.batch[0] and capped.batch[0] * 3 <= 180
    with pytest.raises(ValueError, match="memory cap"):
        plan_allocation((1, 1, 1), 3, bytes_per_sample=(10, 10, 10), memory_cap=5)
    with pytest.raises(ValueError, match="one worker per stage"):
        plan_allocation((1, 1, 1), 2)
    assert plan_allocation((0.1, 5.0, 0.1), 8, batch_hint=100, multiple=8).batch[1] % 8 == 0
    assert even_plan(7, 32).workers == (3, 2, 2)


# ------------------------------------------------------------------------------------------------ detection

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Watermarked and clean files of several sizes and formats, plus every kind of bad input."""
    from qrjax.data import bundled_source

    d = tmp_path_factory.mktemp("detect")
    model, code = load_pretrained("cpu"), get_code("qrmark-bch")
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 2, code.payload_bits).astype(np.uint8)
    key = np.asarray(code.encode(payload[None]))[0]
    src = bundled_source("val", area=(0.3, 1.0))
    good = []
    for size, fmt in ((256, "png"), (512, "jpg"), (300, "png"), (512, "png")):
        imgs = src.sample(rng, size, 3)
        with optimized():  # the shipped model's refined embedding: minutes unoptimised
            marked = embed(model, imgs[:2], key)
        for i, im in enumerate([*marked, imgs[2]]):
            p = d / f"{size}_{i}.{fmt}"
            Image.fromarray(im).save(p, **({"quality": 95} if fmt == "jpg" else {}))
            good.append(str(p))
    odd = np.ascontiguousarray(src.sample(rng, 512, 1)[0, :200, :300])
    Image.fromarray(odd).save(d / "wide.png")
    Image.fromarray(odd[:40, :50]).save(d / "tiny.png")  # smaller than a tile
    Image.fromarray(odd).convert("L").save(d / "grey.jpg")
    Image.fromarray(odd).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(odd).convert("P").save(d / "palette.png")
    Image.fromarray(odd).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(odd[..., 0].astype(np.uint16) * 257).save(d / "deep16.png")
    big = np.broadcast_to(np.linspace(0, 255, 8000, dtype=np.uint8)[None, :, None], (6000, 8000, 3))
    Image.fromarray(np.ascontiguousarray(big)).save(d / "big.jpg", quality=80)
    data = (d / "256_0.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 3])
    (d / "corrupt.png").write_bytes(data[:60] + bytes(2000) + data[-12:])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("hello")
    valid = good + [str(d / n) for n in ("wide.png", "tiny.png", "grey.jpg", "rgba.png", "palette.png", "cmyk.jpg",
                                          "deep16.png", "big.jpg")]
    bad = [str(d / n) for n in ("truncated.png", "corrupt.png", "empty.jpg", "notes.jpg", "missing.png")] + [str(d)]
    return {"model": model, "code": code, "key": key, "payload": payload, "good": good, "valid": valid, "bad": bad,
            "dir": d}


def _plain(model, path, key, cell=(0, 0)):
    img = decode(path, min_size=model.config.working_size).rows
    logits = extract(model, img[None], placement="fixed", cell=cell)
    found, p, m = detect.detect(logits, key[None])
    return bool(found[0]), int(m[0])


def test_decisions_equal_plain_per_image_calls_and_bad_inputs_are_reported(setup):
    s = setup
    det = TileDetector(s["model"], Decision(s["code"], s["key"][None]), sync=False)
    paths = s["bad"][:3] + s["valid"] + s["bad"][3:]
    # small micro-batches and two batches in flight: errors interleaved with images across several batches
    recs = list(det.run(paths, Plan((2, 2, 1), (3, 8, 8))))
    assert [r["path"] for r in recs] == paths  # one record per input, in order
    by_path = {r["path"]: r for r in recs}
    for p in s["valid"]:
        r = by_path[p]
        assert r["status"] == "ok" and r["error"] is None, r
        assert (r["detected"], r["matching_bits"]) == _plain(s["model"], p, s["key"])
        assert r["p_value"] == pytest.approx(float(detect.p_value(r["matching_bits"], 48)), rel=1e-6)
        assert len(r["payload"]) == 8 and isinstance(r["ecc_ok"], bool)
    marked = [p for p in s["good"] if not p.endswith(("_2.png", "_2.jpg"))]
    assert np.mean([by_path[p]["detected"] for p in marked]) >= 0.75
    assert not any(by_path[p]["detected"] for p in s["valid"] if p not in marked)
    for p in s["bad"]:
        assert by_path[p]["status"] == "error" and by_path[p]["detected"] is None
    msgs = {p.rsplit("/", 1)[-1]: by_path[p]["error"] for p in s["bad"]}
    assert "truncated" in msgs["truncated.png"] and "empty file" in msgs["empty.jpg"]
    assert "not an image" in msgs["notes.jpg"] and "no such file" in msgs["missing.png"]
    assert "cannot be decoded" in msgs["corrupt.png"] and "directory" in by_path[str(s["dir"])]["error"]
    # the overlapped run and the sequential one agree record for record
    assert list(det.run_sequential(paths, 8)) == recs


def test_full_image_baseline_equals_plain_calls(setup):
    s = setup
    full = load_pretrained("cpu-full")
    base = FullImageDetector(full, Decision(s["code"], s["key"][None]))
    paths = s["good"][:6] + s["bad"][:2]
    recs = list(base.run(paths, batch=4))
    assert [r["path"] for r in recs] == paths
    for r in recs[:6]:
        logits = extract(full, decode(r["path"]).rows[None])
        found, _, m = detect.detect(logits, s["key"][None])
        assert (r["detected"], r["matching_bits"]) == (bool(found[0]), int(m[0]))
    assert [r["status"] for r in recs[6:]] == ["error", "error"]


def test_identify_among_keys_and_no_key(setup):
    s = setup
    code = s["code"]
    others = np.asarray(code.encode(np.random.default_rng(5).integers(0, 2, (3, code.payload_bits))))
    keys = np.concatenate([others, s["key"][None]])
    paths = s["good"][:2]
    recs = list(TileDetector(s["model"], Decision(code, keys), sync=False).run_sequential(paths, 8))
    assert all(r["key_index"] == 3 and r["detected"] for r in recs)
    recs = list(TileDetector(s["model"], Decision(code)).run_sequential(paths, 8))
    assert all(r["detected"] is None and r["matching_bits"] is None for r in recs)
    want = detect.decode_payload(code, extract(s["model"], decode(paths[0], min_size=256).rows[None],
                                               placement="fixed"))
    from qrjax.ecc.hexbits import bits_to_hex

    assert recs[0]["payload"] == bits_to_hex(np.asarray(want.payload[0]))


def test_cascade_equals_detect_cascade_image_by_image(tiny, tmp_path):
    """The system's cascade (tile stage, then sync on what the tile missed) == `sync.detect_cascade` per image, with
    sync on and off; a file whose tail is corrupt (the tile's rows decode, the whole image does not) is an error
    record of the sync stage. (A random tiny model: what is detected is chance, but both pipelines must agree.)"""
    import io

    from qrjax.data import bundled_source
    from qrjax.watermark import sync

    model, code = tiny, get_code("qrmark-bch")
    rng = np.random.default_rng(0)
    src = bundled_source("val", area=(0.3, 1.0))
    paths = []
    for name, size, edit in (("a.png", 256, None), ("b.png", 300, None), ("c.jpg", 512, None),
                             ("wide.png", 300, (200, 300)), ("small.png", 300, (40, 50)), ("rotated.jpg", 256, 5)):
        im = Image.fromarray(src.sample(rng, size, 1)[0])
        if isinstance(edit, tuple):
            im = im.crop((0, 0, edit[1], edit[0]))
        elif edit:
            im = im.rotate(edit, resample=Image.BILINEAR)
        im.save(tmp_path / name, **({"quality": 90} if name.endswith("jpg") else {}))
        paths.append(str(tmp_path / name))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1024, 256, 3), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[int(0.9 * len(data)):int(0.9 * len(data)) + 200] = bytes(200)  # a late IDAT chunk: the top rows decode
    (tmp_path / "late.png").write_bytes(bytes(data))
    images = [decode(p, min_size=model.config.working_size).rows for p in paths]
    # the key the first image's tile reads: a tile-stage detection; the others mostly go on to the sync stage
    key = (extract(model, images[0][None], placement="fixed")[0] > 0).astype(np.uint8)
    fpr = 0.2
    for on in (True, False):
        want = sync.detect_cascade(model, images, key, fpr=fpr, sync=on)
        det = TileDetector(model, Decision(code, key[None], fpr=fpr), sync=on)
        all_paths = paths + [str(tmp_path / "late.png"), str(tmp_path / "missing.png")]
        recs = list(det.run(all_paths, Plan((2, 1, 1), (3, 3, 3))))
        assert [r["path"] for r in recs] == all_paths
        assert list(det.run_sequential(all_paths, 3)) == recs
        for r, w in zip(recs, want):
            assert r["status"] == "ok", r
            assert (r["stage"], r["detected"], r["matching_bits"]) == (w["stage"], w["detected"], w["matches"]), r
            assert r["p_value"] == pytest.approx(w["p_value"], rel=1e-6)
            if r["stage"] == "sync":
                assert (r["scale"], r["angle"]) == pytest.approx((w["scale"], w["angle"]))
            else:
                assert r["scale"] is None and r["angle"] is None
        stages = [w["stage"] for w in want]
        assert stages[0] == "tile" and (stages.count("sync") >= 3 if on else set(stages) == {"tile"})
        late, bad = recs[-2:]
        assert bad["status"] == "error" and bad["stage"] == "tile"
        if on:
            assert late["status"] == "error" and late["stage"] == "sync" and "sync stage" in late["error"]
        else:
            assert late["status"] == "ok" and late["stage"] == "tile"
    # identification in the sync stage: the alignment the keys agree with best among the reader's shortlist, and the
    # same Decision on its logits, at fpr / (2 candidates N) per key
    others = np.random.default_rng(5).integers(0, 2, (2, 48)).astype(np.uint8)
    keys = np.concatenate([others, key[None]])
    recs = list(TileDetector(model, Decision(code, keys, fpr=fpr)).run_sequential(paths[:4], 4))
    assert recs[0]["stage"] == "tile" and recs[0]["key_index"] == 2
    for r, img in zip(recs[1:], images[1:4]):
        if r["stage"] == "sync":
            read = sync.read(model, img, keys)
            idx, _, m = detect.identify(read.logits[None], keys, fpr=fpr / (2 * sync.n_candidates(model.config)))
            assert (r["key_index"], r["matching_bits"]) == (int(idx[0]), int(m[0]))
    from qrjax.watermark import WatermarkModel

    unsyncable = WatermarkModel(tiny.config.replace(carrier_band=0), tiny.variables)  # checked before any call
    with pytest.raises(ValueError, match="band-limited"):
        TileDetector(unsyncable, Decision(code, key[None]))
    assert TileDetector(unsyncable, Decision(code), sync=True).cascade is False  # no key: nothing to cascade


@pytest.mark.multidevice
def test_eight_devices_equal_one(setup):
    s = setup
    assert jax.device_count() == 8
    decision = Decision(s["code"], s["key"][None])
    paths = s["good"] + s["bad"][:1]
    one = TileDetector(s["model"], decision, mesh=parallel.make_mesh(devices=jax.devices()[:1]), sync=False)
    eight = TileDetector(s["model"], decision, mesh=parallel.make_mesh(), sync=False)
    assert eight.n_devices == 8
    r1 = list(one.run(paths, Plan((1, 1, 1), (4, 4, 4))))
    r8 = list(eight.run(paths, Plan((1, 1, 1), (4, 4, 4))))  # the batch is rounded up to 8, one row a device
    assert r1 == r8
    # bit-identical logits: each of the 8 devices computes exactly what one device computes on a batch of one
    # (a batch of 8 on one device differs in the last bits, ~1e-4 relative: XLA's convolution sums in another order)
    ok = [one.read(i, p) for i, p in enumerate(s["good"][:8])]
    l8 = jax.device_get(eight.dispatch(ok, 8))["logits"]
    l1 = np.concatenate([jax.device_get(one.dispatch(ok[i:i + 1], 1))["logits"] for i in range(8)])
    np.testing.assert_array_equal(l1, l8)


def test_warmup_plans_within_budget(setup):
    s = setup
    det = TileDetector(s["model"], Decision(s["code"], s["key"][None]), sync=False)
    plan = det.warmup(s["good"], budget=5, batch_hint=8)
    assert sum(plan.workers) == 5 and all(c > 0 for c in plan.costs) and plan.source == "adaptive"
    assert "read" in plan.describe() and plan.batch[1] % det.n_devices == 0


def test_detect_cli_streams_and_resumes(setup, tmp_path, capsys):
    from qrjax.cli import main
    from qrjax.ecc.hexbits import bits_to_hex

    s = setup
    listing = tmp_path / "inputs.txt"
    paths = s["good"][:4] + s["bad"][:2]
    listing.write_text("\n".join(paths) + "\n")
    out = tmp_path / "res.jsonl"
    key = bits_to_hex(s["payload"])
    args = ["watermark", "detect", str(listing), "--key", key, "--out", str(out), "--workers", "1,1,1",
            "--batch", "4", "--quiet"]
    assert main(args) == 1  # some inputs are bad: exit 1, every input reported
    full = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in full] == paths
    assert set(full[0]) >= {"path", "status", "error", "detected", "p_value", "matching_bits", "payload", "ecc_ok"}
    # an interruption after three records, half a line written: --resume finishes the rest
    out.write_text("\n".join(json.dumps(r) for r in full[:3]) + "\n" + json.dumps(full[3])[:20])
    main(args + ["--resume"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["path"] for r in lines) == sorted(paths) and len(lines) == len(paths)
    capsys.readouterr()
    assert main(["watermark", "detect", s["good"][0], "--key", key, "--verbose", "--budget", "4", "--batch",
                 "4"]) == 0
    captured = capsys.readouterr()
    assert "plan (" in captured.err and json.loads(captured.out)["detected"] is True
    assert main(["watermark", "detect", s["good"][0], "--key", key, "--baseline", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
