"""The shared trainer: schedule, loss goes down, save -> crash -> resume equals an uninterrupted run, data parallel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax import train as trainer
from qrjax.parallel import make_mesh
from qrjax.watermark.config import get_config
from qrjax.watermark import train as wt
from qrjax.watermark.export import load_model


def test_schedule_warms_up_then_decays_to_the_end_value():
    s = trainer.make_schedule(1e-2, steps=100, warmup_steps=10, end_learning_rate=1e-4)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(5e-3) and float(s(10)) == pytest.approx(1e-2)
    assert float(s(55)) == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5, rel=1e-4)  # cosine midpoint
    assert float(s(100)) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown optimizer"):
        trainer.make_optimizer("sgd2", 1e-3, 10, 1)


def test_weight_decay_skips_vectors():
    tx = trainer.make_optimizer("adamw", 0.0, 10, 0, weight_decay=0.5, grad_clip=None)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["b"]).max()) == 0.0  # lr 0 at step 0: all zero; now with a real lr
    tx = trainer.make_optimizer("adamw", 1.0, 10, 0, weight_decay=0.5, grad_clip=None)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["b"]).max()) == 0.0 and float(jnp.abs(updates["w"]).max()) > 0.0


def _tiny(**kw):
    return get_config("tiny", {"steps": 6, "checkpoint_every": 2, "eval_every": 0, "log_every": 1, **kw})


def test_train_steps_lower_the_loss_on_the_tiny_preset():
    config = _tiny(learning_rate=1e-2, warmup_steps=0, steps=40, attacks=("identity",), attack_weights=(1.0,))
    state = wt.create_state(config)
    batch = wt.make_batch_fn(config, wt.image_source(None, "train"))(0)
    losses = []
    for _ in range(40):  # one fixed batch: the loss must fall
        state, metrics = wt.train_step(config, batch["attack"], state, batch["images"], batch["bits"])
        losses.append(float(metrics["bit_loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _Crash(RuntimeError):
    pass


def test_save_crash_resume_reproduces_the_uninterrupted_run(tmp_path):
    # two attacks, not eight: each drawn attack is its own compiled step; noise draws from the (seed, step) key, so
    # the resumed steps (drawn: noise, noise) still check that the key and the attack draw replay exactly
    config = _tiny(attacks=("identity", "noise"), attack_weights=(1.0, 1.0))
    src = wt.image_source(None, "train")
    step_fn = lambda s, b: wt.train_step(config, b["attack"], s, b["images"], b["bits"])  # noqa: E731
    good = wt.make_batch_fn(config, src)

    reference = trainer.fit(wt.create_state(config), step_fn, good, steps=6, workdir=tmp_path / "a",
                            checkpoint_every=2, log_every=1, progress=False)

    def crashing(step):
        if step == 5:
            raise _Crash("killed")
        return good(step)

    with pytest.raises(_Crash):
        trainer.fit(wt.create_state(config), step_fn, crashing, steps=6, workdir=tmp_path / "b", checkpoint_every=2,
                    log_every=1, progress=False)
    assert trainer.Checkpointer(tmp_path / "b" / "checkpoints").latest_step == 4
    resumed = trainer.fit(wt.create_state(config.replace(seed=99)), step_fn, good, steps=6, workdir=tmp_path / "b",
                          checkpoint_every=2, log_every=1, progress=False)
    assert int(resumed.step) == 6
    _leaves_equal(resumed, reference)
    rows = trainer.read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.multidevice
def test_data_parallel_step_equals_single_device():
    assert jax.device_count() == 8
    config = _tiny(batch_size=16)
    batch = wt.make_batch_fn(config, wt.image_source(None, "train"))(3)
    single = make_mesh(devices=jax.devices()[:1])
    multi = make_mesh()
    outs = []
    for mesh in (single, multi):
        state = jax.device_put(wt.create_state(config), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        images, bits = jax.device_put(batch["images"], data), jax.device_put(batch["bits"], data)
        outs.append(wt.train_step(config, batch["attack"], state, images, bits))
    for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5)
    assert len(outs[1][0].params["encoder"]["Conv_0"]["kernel"].sharding.device_set) == 8


def test_whitening_fine_tune_freezes_the_extractor_and_ships_the_whitening(tmp_path):
    # identity only: the attacks play no part in what is checked here, and each drawn attack is a separate compile
    base = _tiny(steps=2, log_every=1, eval_every=0, attacks=("identity",), attack_weights=(1.0,))
    init = wt.model_from_state(base, wt.create_state(base))
    config = base.replace(whiten=True, whiten_samples=64)
    model = wt.train_and_evaluate(config, tmp_path, init=init, progress=False)
    _leaves_equal(model.variables["extractor"], init.variables["extractor"])  # frozen
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model.variables["encoder"]["params"]),
                                                       jax.tree.leaves(init.variables["encoder"]["params"]))]
    assert any(changed)
    w = model.variables["whitening"]
    assert w["w"].shape == (48, 48) and w["b"].shape == (48,)
    # the whitening is the one fitted on clean training tiles, and it is saved with the model
    want = wt.fit_whitening_on(init, wt.image_source(None, "train"), 64)
    np.testing.assert_allclose(np.asarray(w["w"]), np.asarray(want["w"]), rtol=1e-5, atol=1e-5)
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(np.asarray(loaded.variables["whitening"]["b"]), np.asarray(w["b"]))
    with pytest.raises(ValueError, match="pass init"):
        wt.train_and_evaluate(config, tmp_path / "other", progress=False)
    # a whitened model fine-tuned to read whole images keeps its whitening only if it read whole images before
    full = config.replace(full_image=True, steps=1)
    refit = wt.train_and_evaluate(full, tmp_path / "full", init=model, progress=False).variables["whitening"]
    want = wt.fit_whitening_on(wt.WatermarkModel(full, model.variables), wt.image_source(None, "train"), 64)
    np.testing.assert_allclose(np.asarray(refit["w"]), np.asarray(want["w"]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(refit["w"]), np.asarray(w["w"]))
    kept = wt.train_and_evaluate(config, tmp_path / "again", init=model, progress=False)  # same config: no recompile
    np.testing.assert_array_equal(np.asarray(kept.variables["whitening"]["w"]), np.asarray(w["w"]))
