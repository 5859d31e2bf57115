"""The two gradient reductions on 8 simulated devices against one device (float64): the same gradients, loss,
temperature gradient and per-sample tables for every loss; and the bytes each reduction's compiled program moves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from qrjax import bench
from qrjax.clip import losses, sharded
from qrjax.clip.config import get_config, replace
from qrjax.parallel import make_mesh

B, D_IN, D = 16, 6, 4


def unit(x):
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def encode(params, images, tokens):
    """A linear two-tower 'model': enough to carry gradients from both towers through the reduction."""
    return unit(images @ params["w1"]), unit(tokens @ params["w2"])


def ref_encode(params, images, tokens):
    return unit(images @ params["r1"]), unit(tokens @ params["r2"])


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = {"w1": jnp.asarray(rng.normal(size=(D_IN, D))), "w2": jnp.asarray(rng.normal(size=(D_IN, D)))}
        ref = {"r1": jnp.asarray(rng.normal(size=(D_IN, 3))), "r2": jnp.asarray(rng.normal(size=(D_IN, 3)))}
        batch = {"image": rng.normal(size=(B, D_IN)), "text": rng.normal(size=(B, D_IN)),
                 "index": rng.permutation(40)[:B].astype(np.int32)}
    return params, ref, batch


def run(config, mesh, params, ref, batch, reduction, tables=None):
    with jax.enable_x64(True):
        tables = losses.init_tables(config, 40, jnp.float64) if tables is None else tables
        if config.loss == "fastclip-v2":
            tables["tau1"] = jnp.linspace(0.03, 0.4, 40)
        temp = losses.init_temperature(config, jnp.float64)
        grads_fn = sharded.make_grads(config, encode, mesh, reduction=reduction, ref_encode=ref_encode)
        placed = {k: jax.device_put(v, NamedSharding(mesh, P(sharded.AXIS))) for k, v in batch.items()}
        out = jax.jit(grads_fn)(params, tables, temp, placed, 0.6, 3, 0.01, ref)
        return jax.tree.map(np.asarray, out)


# v0 and v1 differ from v3 only in the temperature gradient's formula (tested on one device in test_losses)
@pytest.mark.parametrize("loss", ["openclip", "fastclip-v2", "fastclip-v3", "drrho"])
def test_eight_devices_equal_one_for_both_reductions(setup, loss):
    params, ref, batch = setup
    config = replace(get_config("tiny"), loss=loss, eps=1e-6, temperature=0.05)
    one = make_mesh((1,), (sharded.AXIS,), devices=jax.devices()[:1])
    eight = make_mesh((8,), (sharded.AXIS,))
    with jax.enable_x64(True):
        # u tables already holding values, so gamma = 0.6 mixes old and new (the all-gathered u matters)
        warm = run(config, one, params, ref, batch, "fastclip")[1]["tables"]
        warm = jax.tree.map(jnp.asarray, warm)
    base_grads, base = run(config, one, params, ref, batch, "fastclip", dict(warm))
    for mesh in (one, eight):
        for reduction in ("fastclip", "openclip"):
            grads, aux = run(config, mesh, params, ref, batch, reduction, dict(warm))
            for k in grads:
                np.testing.assert_allclose(grads[k], base_grads[k], rtol=1e-12, atol=1e-14,
                                           err_msg=f"{loss} {reduction} {mesh.shape}")
            assert abs(aux["loss"] - base["loss"]) < 1e-12
            assert abs(aux["tau_grad"] - base["tau_grad"]) < 1e-12
            for k in base["tables"]:
                np.testing.assert_allclose(aux["tables"][k], base["tables"][k], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(aux["anchor_weight1"], base["anchor_weight1"], rtol=1e-12)


def test_drrho_cached_reference_features_equal_online(setup):
    params, ref, batch = setup
    config = get_config("tiny", ["loss=drrho"])
    eight = make_mesh((8,), (sharded.AXIS,))
    online = run(config, eight, params, ref, batch, "fastclip")
    with jax.enable_x64(True):
        r1, r2 = ref_encode(ref, batch["image"], batch["text"])
    cached = run(config, eight, params, None, {**batch, "ref1": np.asarray(r1), "ref2": np.asarray(r2)}, "fastclip")
    for a, b in zip(jax.tree.leaves(online), jax.tree.leaves(cached)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_sharded_gradient_is_the_objectives_at_gamma_one(setup):
    """On 8 devices with fresh tables (gamma = 1 makes u = eps + g of the global batch), FastCLIP's reduction gives
    the gradient of the global batch's GCL objective itself."""
    params, ref, batch = setup
    config = replace(get_config("tiny"), loss="fastclip-v1", eps=1e-6, temperature=0.05)
    eight = make_mesh((8,), (sharded.AXIS,))
    with jax.enable_x64(True):
        tables = losses.init_tables(config, 40, jnp.float64)
        temp = losses.init_temperature(config, jnp.float64)
        grads_fn = sharded.make_grads(config, encode, eight)
        placed = {k: jax.device_put(v, NamedSharding(eight, P(sharded.AXIS))) for k, v in batch.items()}
        grads, _ = jax.jit(grads_fn)(params, tables, temp, placed, 1.0, 0, 0.0, None)
        want = jax.grad(lambda p: losses.gcl_objective(*encode(p, batch["image"], batch["text"]), 0.05, 1e-6))(params)
        for k in want:
            np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(want[k]), rtol=1e-12)


def test_fastclip_reduction_moves_fewer_bytes(setup):
    """FastCLIP's backward pass has no reduce-scatter of feature gradients; OpenCLIP's has one per tower."""
    params, ref, batch = setup
    config = replace(get_config("tiny"), loss="fastclip-v3")
    eight = make_mesh((8,), (sharded.AXIS,))
    tables, temp = losses.init_tables(config, 40), losses.init_temperature(config)
    p32 = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    b32 = {k: np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype) for k, v in batch.items()}
    placed = {k: jax.device_put(v, NamedSharding(eight, P(sharded.AXIS))) for k, v in b32.items()}
    moved = {}
    for reduction in ("fastclip", "openclip"):
        fn = jax.jit(sharded.make_grads(config, encode, eight, reduction=reduction))
        compiled = fn.lower(p32, tables, temp, placed, 1.0, 0, 0.0, None).compile()
        moved[reduction] = bench.collective_bytes(compiled)
    fast, open_ = moved["fastclip"], moved["openclip"]
    assert fast.get("reduce-scatter", 0) == 0 and open_.get("reduce-scatter", 0) > 0
    # parameter gradients: the same all-reduce in both (2 towers x D_IN x D float32, plus the loss scalars)
    assert fast["all-reduce"] == open_["all-reduce"]
    assert fast["all-reduce"] >= 2 * D_IN * D * 4


def test_jest_selects_the_most_learnable_pairs(setup):
    """The kept pairs are the top batch_size by learner loss minus reference loss, each pair's loss computed here
    by a plain numpy cross-entropy over the super-batch."""
    params, ref, batch = setup
    config = get_config("tiny", ["batch_size=4", "jest_keep=0.25"])
    with jax.enable_x64(True):
        r1, r2 = ref_encode(ref, batch["image"], batch["text"])
        superbatch = {**batch, "ref1": np.asarray(r1), "ref2": np.asarray(r2)}
        got = sharded.make_jest_select(config, encode)(params, 0.1, superbatch)
        e1, e2 = (np.asarray(x) for x in encode(params, batch["image"], batch["text"]))

    def pair_loss(a, b):
        logits = a @ b.T / 0.1
        rows = np.log(np.exp(logits).sum(1)) - np.diag(logits)
        cols = np.log(np.exp(logits).sum(0)) - np.diag(logits)
        return 0.5 * (rows + cols)

    score = pair_loss(e1, e2) - pair_loss(np.asarray(r1), np.asarray(r2))
    want = np.sort(np.argsort(-score)[:4])
    np.testing.assert_array_equal(np.sort(got["index"]), np.sort(batch["index"][want]))
