"""Diffusion training end to end on the tiny preset: exported files, metrics, exact load round trip, resume after a
crash equals the uninterrupted run, config guards, class labels, and the loss at init."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax import train as trainer
from qrjax.data import image_source
from qrjax.diffusion import train as dt
from qrjax.diffusion.autoencoder import pixel_autoencoder
from qrjax.diffusion.config import get_config
from qrjax.diffusion.export import load_model, load_pretrained
from qrjax.diffusion.model import DiffusionModel, init_params
from qrjax.parallel import make_mesh

NAMES = tuple(image_source(None, "train").names)


def _train(config, workdir):
    # One device: on this CPU the 8-device SPMD compiles double the run time, and data parallelism is the shared
    # trainer's business (tests/train/test_trainer.py compares it with one device).
    return dt.train_and_evaluate(config, workdir, progress=False, mesh=make_mesh(devices=jax.devices()[:1]))


def _config(**kw):
    return get_config("tiny", kw)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("diffusion4")
    config = _config(steps=4)
    return config, workdir, _train(config, workdir)


def test_train_and_evaluate_writes_the_model_and_metrics(four_steps):
    config, workdir, model = four_steps
    assert (workdir / "model.msgpack").is_file() and (workdir / "model.json").is_file()
    meta = json.loads((workdir / "model.json").read_text())
    assert meta["steps"] == 4 and meta["class_names"] == list(NAMES) and meta["config"]["name"] == "tiny"
    assert np.isfinite(meta["final_eval"]["val_loss"])
    rows = trainer.read_metrics(workdir / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]  # log_every = 1
    assert [r["step"] for r in eval_rows] == [2, 4]  # eval_every = 2, and at the end
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in train_rows)
    assert all(f"val_loss_t{t}" in r and np.isfinite(r["val_loss"]) for r in eval_rows for t in dt.EVAL_TIMES)
    assert meta["final_eval"]["val_loss"] == pytest.approx(eval_rows[-1]["val_loss"], rel=1e-6)
    assert trainer.Checkpointer(workdir / "checkpoints").latest_step == 4
    # the exported weights are the EMA, which moved away from the initialisation
    init = init_params(config, jax.random.key(config.seed))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(init)))
    assert model.autoencoder.channels == config.latent_channels and model.autoencoder.factor == config.ae_factor


def test_load_model_round_trips_exactly(four_steps):
    config, workdir, model = four_steps
    loaded = load_model(workdir / "model")
    assert loaded.config == config
    assert loaded.class_names == NAMES == model.class_names
    _leaves_equal(loaded.params, model.params)
    for name in ("mean", "components", "scale"):
        np.testing.assert_array_equal(getattr(loaded.autoencoder, name), getattr(model.autoencoder, name))
    assert loaded.autoencoder.factor == model.autoencoder.factor
    with pytest.raises(FileNotFoundError, match="missing nothing.json"):
        load_model(workdir / "nothing")


def test_a_different_config_in_the_same_workdir_is_refused(four_steps):
    config, workdir, _ = four_steps
    # steps is part of the config (it shapes the learning-rate schedule), so "carry on to 6" is a different run
    with pytest.raises(ValueError, match="holds a run with a different config"):
        _train(config.replace(steps=6), workdir)
    with pytest.raises(ValueError, match="holds a run with a different config"):
        _train(config.replace(learning_rate=1e-3), workdir)


def test_num_classes_must_match_the_training_images(tmp_path):
    with pytest.raises(ValueError, match=r"config\.num_classes=5 but the training set has 12 images.*num_classes=12"):
        _train(_config(num_classes=5), tmp_path)
    assert not (tmp_path / "config.json").exists()  # refused before anything was written


class _Crash(RuntimeError):
    pass


def test_resume_after_a_crash_equals_the_uninterrupted_run(four_steps, tmp_path, monkeypatch):
    """Killed during step 4 of 4, the run restarts from checkpoint 2 and ends where the uninterrupted one did.

    (Extending a finished 4-step run to 6 steps is refused above: steps sets the learning-rate schedule, so no
    continuation of a 4-step run could equal an uninterrupted 6-step run.)"""
    config, _, reference = four_steps
    real_step = dt.train_step
    seen = []

    def crashing(config, state, *args):
        seen.append(int(state.step))
        if seen[-1] == 3:  # checkpoints are written every 2 steps: the latest is 2
            raise _Crash("killed")
        return real_step(config, state, *args)

    monkeypatch.setattr(dt, "train_step", crashing)
    with pytest.raises(_Crash):
        _train(config, tmp_path)
    assert seen == [0, 1, 2, 3]
    assert trainer.Checkpointer(tmp_path / "checkpoints").latest_step == 2
    assert not (tmp_path / "model.msgpack").exists()

    seen.clear()
    monkeypatch.setattr(dt, "train_step", lambda *a: seen.append(int(a[1].step)) or real_step(*a))
    resumed = _train(config, tmp_path)
    assert seen == [2, 3]  # continued from checkpoint 2, did not start over
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(reference.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    rows = trainer.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [2, 4]


def test_labels_by_name_index_and_none():
    config = _config()
    model = DiffusionModel(config, {}, pixel_autoencoder(), NAMES)
    assert model.label("astronaut") == NAMES.index("astronaut") == 0
    assert model.label("flower") == NAMES.index("flower")
    assert model.label("none") == config.null_class == 12
    assert model.label(3) == 3 and model.label("12") == 12
    with pytest.raises(ValueError, match=r"unknown class 'zebra'; choose from \[.*'astronaut'.*\] or none"):
        model.label("zebra")
    with pytest.raises(ValueError, match=r"class index 13 is outside 0\.\.12"):
        model.label(13)
    with pytest.raises(ValueError, match=r"class index -1 is outside"):
        model.label("-1")


def test_the_loss_at_init_is_the_mean_squared_velocity_target():
    """At init the DiT outputs exactly zero, so the loss is mean((noise - x0)^2) with loss_fn's own noise draw."""
    config = _config()
    params = init_params(config, jax.random.key(0))
    x0 = jax.random.normal(jax.random.key(3), (4, 8, 8, config.channels))
    labels = jnp.array([0, 1, 2, 3], jnp.int32)
    key = jax.random.key(11)
    loss = float(jax.jit(dt.loss_fn, static_argnums=1)(params, config, x0, labels, key))
    _, kn, _ = jax.random.split(key, 3)
    noise = np.asarray(jax.random.normal(kn, x0.shape), np.float64)
    want = float(np.mean((noise - np.asarray(x0, np.float64)) ** 2))
    assert loss == pytest.approx(want, rel=1e-5)  # a float32 mean over 1536 terms
    # another key draws other noise: the comparison is not vacuous
    other = np.asarray(jax.random.normal(jax.random.split(jax.random.key(12), 3)[1], x0.shape), np.float64)
    assert abs(float(np.mean((other - np.asarray(x0, np.float64)) ** 2)) - want) > 1e-3


def test_shipped_cpu_model_loads_and_was_trained():
    model = load_pretrained("cpu")
    assert model.config == get_config("cpu")
    assert model.class_names == NAMES
    assert model.autoencoder.channels == model.config.latent_channels
    fresh = init_params(model.config, jax.random.key(model.config.seed))
    # adaLN-zero layers start at exactly zero; training moved them
    assert float(np.abs(np.asarray(model.params["block0"]["adaLN"]["kernel"])).max()) > 0
    assert float(np.abs(np.asarray(fresh["block0"]["adaLN"]["kernel"])).max()) == 0
    with pytest.raises(ValueError, match="no shipped qrjax.diffusion model 'huge'; shipped: cpu, t2i-cpu"):
        load_pretrained("huge")


def test_text_to_image_training_end_to_end(tmp_path):
    """t2i-tiny: captions of the synthetic scenes through the shipped CLIP's text tower; the exported model loads
    with its CLIP, and (weights perturbed: two steps leave the zero-initialised layers near zero) the caption
    changes the prediction."""
    config = get_config("t2i-tiny", {"steps": 2, "eval_samples": 4})
    model = _train(config, tmp_path)
    loaded = load_model(tmp_path / "model")
    assert loaded.clip is not None and loaded.config == config and loaded.class_names == ()
    _leaves_equal(loaded.params, model.params)
    x = jax.random.normal(jax.random.key(0), (1, config.latent_size, config.latent_size, config.channels))
    a, b = (loaded.text_cond([p]) for p in ("a red circle on the left.", "three blue crosses at the top."))
    from qrjax.diffusion.model import apply_model

    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), loaded.params)
    va, vb = (apply_model(config, params, x, jnp.array([0.5]), c) for c in (a, b))
    assert float(jnp.abs(va - vb).max()) > 0
    with pytest.raises(ValueError, match="data=scenes trains a text-to-image model"):
        _train(get_config("tiny", {"data": "scenes"}), tmp_path / "other")


def test_text_to_image_trains_on_a_users_caption_csv(tmp_path):
    """--data: a CSV of image paths and captions (CLIP's format) instead of the synthetic scenes; every caption is in
    the table the batches index."""
    from PIL import Image

    from qrjax.clip.data import SyntheticScenes

    scenes = SyntheticScenes(6, 16)
    for i, img in enumerate(scenes.images(np.arange(6))):
        Image.fromarray(img).save(tmp_path / f"s{i}.png")
    rows = "".join(f's{i}.png,"{c}"\n' for i, c in enumerate(scenes.captions(np.arange(6))))
    (tmp_path / "pairs.csv").write_text("filepath,title\n" + rows)
    config = get_config("t2i-tiny", {"steps": 2, "eval_samples": 4, "batch_size": 4})
    model = dt.train_and_evaluate(config, tmp_path / "run", data=tmp_path / "pairs.csv", progress=False,
                                  mesh=make_mesh(devices=jax.devices()[:1]))
    assert model.clip is not None and (tmp_path / "run" / "model.json").is_file()
    rows = trainer.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]


def test_shipped_text_to_image_model_loads_and_was_trained():
    model = load_pretrained("t2i-cpu")
    assert model.config == get_config("t2i-cpu") and model.clip is not None
    assert float(np.abs(np.asarray(model.params["block0"]["img_adaLN"]["kernel"])).max()) > 0
