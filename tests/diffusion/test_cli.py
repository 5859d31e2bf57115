"""`qrjax diffusion train|generate` end to end on the tiny preset: files, JSON summary, errors that name the input."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from qrjax.cli import main
from qrjax.diffusion.autoencoder import pixel_autoencoder
from qrjax.diffusion.config import get_config
from qrjax.diffusion.model import init_params
from qrjax.diffusion import DiffusionModel, load_model, save_model
from tests.diffusion.models import random_t2i_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny pixel-space model with perturbed weights (at init the DiT outputs exactly zero)."""
    config = get_config("tiny", ["autoencoder=pixel", "image_size=8"])
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(DiffusionModel(config, params, pixel_autoencoder(), tuple(f"c{i}" for i in range(12))), path)
    return path


def test_generate_writes_the_image_and_the_summary(tiny_model, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc = main(["diffusion", "generate", "--size", "32x16", "--model", str(tiny_model.with_suffix(".json")),
               "--steps", "5", "--cache-threshold", "1e9", "--seed", "2", "--label", "c3", "--out", str(out),
               "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["out"] == [str(out)]
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 16, 3) and img.dtype == np.uint8 and img.std() > 0
    assert summary["size"] == [32, 16] and summary["tiles"] == 8 and summary["label"] == 3
    # 5 stage-1 calls, then stage 2 from step 2: 3 steps x 8 tiles, warm-up (2 steps) and the last step computed
    assert summary["model_calls"] == 5 + 3 * 8 and summary["tiles_skipped"] == 0
    assert summary["peak_bytes"] > 0 and summary["seconds"] > 0


def test_generate_video_frames_and_devices(tiny_model, tmp_path, capsys):
    out = tmp_path / "v.png"
    rc = main(["diffusion", "generate", "--size", "16x16", "--frames", "2", "--devices", "2", "--steps", "4",
               "--model", str(tiny_model), "--out", str(out), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["devices"] == 2 and summary["latent_bytes_exchanged_per_step"] > 0
    assert [p.split("/")[-1] for p in summary["out"]] == ["v_f000.png", "v_f001.png"]
    assert all(np.asarray(Image.open(p)).shape == (16, 16, 3) for p in summary["out"])


@pytest.mark.parametrize("argv,match", [
    (["--size", "big"], "expected HxW"),
    (["--size", "20x16"], "whole number of native tiles"),
    (["--size", "4x4"], "at least the native"),
    (["--label", "nope"], "unknown class 'nope'"),
    (["--devices", "3"], "devices=3"),
    (["--set", "colour=1"], "no field 'colour'"),
])
def test_bad_arguments_are_named(tiny_model, tmp_path, argv, match):
    base = ["diffusion", "generate", "--size", "16x16", "--model", str(tiny_model), "--out", str(tmp_path / "o.png"),
            "--quiet"]
    with pytest.raises(SystemExit, match=match):
        main(base + argv)


@pytest.fixture(scope="module")
def t2i_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("t2i") / "t2i"
    save_model(random_t2i_model(), path)
    return path


@pytest.mark.parametrize("flags,pipeline", [
    ([], "supergen"), (["--sdit", "--tide"], "direct"),
    (["--sdit", "--tiling", "shifted", "--set", "sdit_active=0.1"], "supergen")])
def test_generate_from_a_prompt(t2i_model, tmp_path, capsys, flags, pipeline):
    out = tmp_path / "p.png"
    rc = main(["diffusion", "generate", "--prompt", "a photo of two red circles on the zeppelin.", "--size", "32x32",
               "--model", str(t2i_model), "--steps", "4", "--out", str(out), "--json", "--quiet", *flags])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    with Image.open(out) as img:
        assert rc == 0 and summary["pipeline"] == pipeline and img.size == (32, 32)
    assert summary["prompt"].startswith("a photo") and summary["unknown_words"] == ["zeppelin"]
    assert "zeppelin" in captured.err and 0.0 <= summary["clip_score"] <= 100.0
    assert summary["tokens_computed"] > 0
    if pipeline == "direct":
        assert summary["sdit"] and summary["correction"] == "tide" and summary["full_tokens"] == 4 * 64
    elif "--sdit" in flags:  # inside the tiles; the grid moves one token (2 latent pixels) per step
        assert summary["config"]["shift_divisions"] == 4 and len(summary["sdit_tokens_per_step"]) == 2
    if pipeline == "supergen":
        assert summary["config"]["guidance"] == 4.0  # prompts are guided against the empty caption


@pytest.mark.parametrize("argv,match", [
    (["--sdit"], "--sdit and --tide are options of text-to-image generation: give --prompt"),
    (["--prompt", "a red circle."], "class-conditional"),
    (["--prompt", "a red circle.", "--tide", "--tiling", "shifted"], "drop one of them"),
])
def test_prompt_flags_are_checked(tiny_model, tmp_path, argv, match):
    with pytest.raises(SystemExit, match=match):
        main(["diffusion", "generate", "--size", "16x16", "--model", str(tiny_model), "--out",
              str(tmp_path / "o.png"), "--quiet", *argv])


def test_missing_model_is_named(tmp_path):
    with pytest.raises(SystemExit, match="missing"):
        main(["diffusion", "generate", "--size", "16x16", "--model", str(tmp_path / "none"), "--out",
              str(tmp_path / "o.png")])


def test_train_tiny(tmp_path, capsys):
    rc = main(["diffusion", "train", "--preset", "tiny", "--workdir", str(tmp_path), "--set", "steps=2",
               "--set", "eval_samples=4", "--json"])
    printed = capsys.readouterr().out
    out = json.loads(printed)
    assert printed.count("\n") == 1  # one compact JSON object, progress and logs on stderr
    assert rc == 0 and out["model"] == str(tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.config.steps == 2 and len(model.class_names) == 12
