"""ALTO's batched step against independent single-adapter runs (PEFT's truth: the adapter merged into the weights,
W + s·A B, trained alone with its own AdamW), padding exactness, adapter-per-device parallelism and back-fill
without recompiling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.lora import batched
from qrjax.lora.config import PROJECTIONS, LlamaConfig, TuneConfig
from qrjax.lora.model import Llama, init_backbone
from qrjax.lora.multilora import lora_delta
from qrjax.parallel import make_mesh
from qrjax.lora.train import make_tx
from qrjax.train.optim import make_optimizer

MODEL = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=4, num_kv_heads=2,
                    max_position_embeddings=16)
SEQ = 6
CONFIG = TuneConfig(name="test", slots=4, capacity=12, rank_max=8, steps=10, weight_decay=0.01, grad_clip=1.0)
RANKS, BATCHES, LRS = (2, 4, 8), (3, 1, 5), (3e-3, 1e-2, 5e-3)


def _mesh(n):
    return make_mesh((n,), (batched.AXIS,), devices=jax.devices()[:n])


def _batch(rng, n):
    return {"inputs": rng.integers(0, MODEL.vocab_size, (n, SEQ)).astype(np.int32),
            "targets": rng.integers(0, MODEL.vocab_size, (n, SEQ)).astype(np.int32),
            "mask": (rng.random((n, SEQ)) < 0.7).astype(np.float32)}


def _data(steps):
    rng = np.random.default_rng(1)
    return [[_batch(rng, b) for b in BATCHES] for _ in range(steps)]


def _scale(rank):
    return CONFIG.alpha_ratio * rank / rank


def _run_batched(base, data, devices, slot_of, num_slots, capacity, config=CONFIG):
    """Train the three adapters in slots slot_of[j] of a num_slots-slot state on `devices` devices."""
    steps = batched.make_steps(config, MODEL, _mesh(devices), make_tx(config))
    state = jax.device_put(batched.init_slots(CONFIG, MODEL, num_slots, make_tx(CONFIG)), steps.state_sharding)
    for j, rank in enumerate(RANKS):
        state = steps.reset(state, jnp.int32(slot_of[j]), jax.random.key(10 + j), jnp.int32(rank))
    base = jax.device_put(base, steps.base_sharding)
    scale = np.zeros(num_slots, np.float32)
    lr = np.zeros(num_slots, np.float32)
    for j in range(3):
        scale[slot_of[j]], lr[slot_of[j]] = _scale(RANKS[j]), LRS[j]
    losses = []
    for step_data in data:
        per_slot = [None] * num_slots
        for j in range(3):
            per_slot[slot_of[j]] = step_data[j]
        buf, seqs = batched.pack(per_slot, devices, capacity, SEQ)
        state, loss = steps.train(base, state, buf, batched.SlotInputs(seqs, scale, lr))
        losses.append(np.asarray(loss))
    return jax.device_get(state), np.stack(losses), steps


def _merged_loss(base, adapter, scale, batch):
    """The single-adapter truth: each projection's kernel W + scale·A B, the plain backbone, mean masked CE."""
    params = jax.tree.map(lambda x: x, base)
    for layer, groups in adapter.items():
        for group, projs in groups.items():
            for proj, ab in projs.items():
                node = params[layer][group][proj]
                params[layer][group][proj] = {"kernel": node["kernel"] + scale * ab["a"] @ ab["b"]}
    logits = Llama(MODEL).apply({"params": params}, batch["inputs"])
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    return (nll * batch["mask"]).sum() / batch["mask"].sum()


def _run_independent(base, data, j, init):
    """Adapter j alone, unpadded (rank r), with AdamW at its own learning rate."""
    rank = RANKS[j]
    params = jax.tree.map(lambda x: x, init)
    params = jax.tree.map(lambda x: x, {
        l: {g: {p: {"a": ab["a"][:, :rank], "b": ab["b"][:rank]} for p, ab in ps.items()} for g, ps in gs.items()}
        for l, gs in params.items()})
    tx = make_optimizer("adamw", LRS[j], CONFIG.steps, 0, end_learning_rate=LRS[j], weight_decay=CONFIG.weight_decay,
                        grad_clip=CONFIG.grad_clip)
    opt = tx.init(params)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b: _merged_loss(base, p, _scale(rank), b)))
    losses = []
    for step_data in data:
        loss, grads = grad_fn(params, step_data[j])
        updates, opt = tx.update(grads, opt, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        losses.append(float(loss))
    return params, np.array(losses)


@pytest.fixture(scope="module")
def base():
    return init_backbone(MODEL, jax.random.key(0))


@pytest.fixture(scope="module")
def one_device(base):
    return _run_batched(base, _data(3), 1, slot_of=(0, 2, 3), num_slots=4, capacity=CONFIG.capacity)


def _slot(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def test_batched_equals_independent_runs(base, one_device):
    state, losses, _ = one_device
    data = _data(3)
    for j, slot in enumerate((0, 2, 3)):
        init = batched.init_adapter(jax.random.key(10 + j), MODEL, CONFIG.targets, RANKS[j], CONFIG.rank_max)
        params, ind_losses = _run_independent(base, data, j, init)
        np.testing.assert_allclose(losses[:, slot], ind_losses, rtol=1e-5, atol=1e-6)
        got = _slot(state.adapters, slot)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            got_leaf = got
            for k in path:
                got_leaf = got_leaf[k.key]
            r = RANKS[j]
            trimmed = got_leaf[:, :r] if path[-1].key == "a" else got_leaf[:r]
            np.testing.assert_allclose(trimmed, leaf, rtol=1e-5, atol=1e-6, err_msg=str(path))
    # the empty slot stayed empty
    assert all(np.all(x[1] == 0) for x in jax.tree.leaves(state.adapters))


def test_padded_ranks_stay_exactly_zero(base, one_device):
    state, _, _ = one_device
    for j, slot in enumerate((0, 2, 3)):
        r = RANKS[j]
        for path, leaf in jax.tree_util.tree_leaves_with_path(_slot(state.adapters, slot)):
            pad = leaf[:, r:] if path[-1].key == "a" else leaf[r:]
            assert np.all(pad == 0.0)


def test_padded_ranks_get_exactly_zero_gradient(base):
    rng = np.random.default_rng(3)
    adapters = [batched.init_adapter(jax.random.key(j), MODEL, CONFIG.targets, r, CONFIG.rank_max) for j, r in
                enumerate(RANKS)]
    # B non-zero on the used rows so that the gradient of A is non-zero there
    adapters = [jax.tree_util.tree_map_with_path(lambda p, x, r=r: x.at[:r].set(0.1) if p[-1].key == "b" else x, ad)
                for ad, r in zip(adapters, RANKS)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *adapters)
    buf, seqs = batched.pack([_batch(rng, b) for b in BATCHES], 1, 12, SEQ)
    slots = batched.SlotInputs(jnp.asarray(seqs), jnp.full(3, 2.0), jnp.ones(3))

    def loss(ad):
        means, _ = batched.slot_losses(
            Llama(MODEL).apply({"params": base}, buf["inputs"],
                               batched.LoraInputs(ad, slots.seqs * SEQ, slots.scale)), buf["targets"], buf["mask"],
            slots.seqs)
        return means.sum()

    grads = jax.jit(jax.grad(loss))(stacked)
    nonzero = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        for j, r in enumerate(RANKS):
            g = leaf[j]
            pad, used = (g[:, r:], g[:, :r]) if path[-1].key == "a" else (g[r:], g[:r])
            assert np.all(np.asarray(pad) == 0.0)
            nonzero += int(np.any(np.asarray(used) != 0))
    assert nonzero == len(jax.tree.leaves(grads)) * 3


@pytest.mark.multidevice
def test_adapter_per_device_equals_one_device(base, one_device):
    """Four devices, one slot each (device 1's slot empty): the same adapters and losses as one device."""
    state1, losses1, _ = one_device
    state4, losses4, steps4 = _run_batched(base, _data(3), 4, slot_of=(0, 2, 3), num_slots=4, capacity=6)
    # the same arithmetic per slot; only the buffer's padding rows differ (float32 reassociation in the base matmul)
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state4.adapters), jax.tree.leaves(state1.adapters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # no collective in the compiled step: each device trains its own adapters
    text = steps4.train.lower(*_lower_args(base, steps4, 4, 6)).compile().as_text()
    for op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"):
        assert op not in text, op


@pytest.mark.multidevice
def test_sharded_backbone_equals_one_device(base, one_device):
    """The backbone split over 4 devices (gathered in the step): the same adapters; the only collectives are the
    backbone's all-gathers (no adapter all-reduce)."""
    state1, losses1, _ = one_device
    config = dataclasses.replace(CONFIG, shard_backbone=True)
    state4, losses4, steps4 = _run_batched(base, _data(3), 4, slot_of=(0, 2, 3), num_slots=4, capacity=6,
                                           config=config)
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state4.adapters), jax.tree.leaves(state1.adapters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    placed = jax.device_put(base, steps4.base_sharding)
    kernel = placed["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (MODEL.hidden_size // 4, MODEL.intermediate_size)
    text = steps4.train.lower(*_lower_args(placed, steps4, 4, 6)).compile().as_text()
    assert "all-gather" in text
    for op in ("all-reduce", "reduce-scatter", "all-to-all"):
        assert op not in text, op


def _lower_args(base, steps, devices, capacity):
    state = jax.device_put(batched.init_slots(CONFIG, MODEL, 4, make_tx(CONFIG)), steps.state_sharding)
    buf, seqs = batched.pack([None] * 4, devices, capacity, SEQ)
    return base, state, buf, batched.SlotInputs(seqs, np.zeros(4, np.float32), np.zeros(4, np.float32))


def test_backfill_does_not_recompile(base):
    steps = batched.make_steps(CONFIG, MODEL, _mesh(1), make_tx(CONFIG))
    state = jax.device_put(batched.init_slots(CONFIG, MODEL, 4, make_tx(CONFIG)), steps.state_sharding)
    base = jax.device_put(base, steps.base_sharding)
    rng = np.random.default_rng(0)
    sizes_seen = []
    for step, (slot, rank, sizes) in enumerate([(0, 2, (3, 0, 0, 0)), (1, 8, (3, 5, 0, 0)), (0, 4, (1, 5, 4, 0)),
                                                (3, 1, (0, 5, 4, 2))]):
        state = steps.reset(state, jnp.int32(slot), jax.random.key(step), jnp.int32(rank))
        buf, seqs = batched.pack([_batch(rng, n) if n else None for n in sizes], 1, 12, SEQ)
        state, _ = steps.train(base, state, buf, batched.SlotInputs(seqs, np.full(4, 2.0, np.float32),
                                                                    np.full(4, 1e-3, np.float32)))
        # the cached functions may hold programs of other tests (same config): count what this loop adds
        sizes_seen.append((steps.train._cache_size(), steps.reset._cache_size()))
    assert len(set(sizes_seen)) == 1, sizes_seen


@pytest.mark.parametrize("impl", ["dense", "sequential", "pallas"])
def test_lora_delta_impls_agree(impl):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(11, 6)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)
    sizes = jnp.asarray([3, 0, 5, 1], jnp.int32)  # two rows beyond the groups
    scale = jnp.asarray([0.5, 1.0, 2.0, 3.0], jnp.float32)
    want = np.zeros((11, 5), np.float32)
    start = 0
    for i, n in enumerate(np.asarray(sizes)):
        want[start:start + n] = scale[i] * (np.asarray(x[start:start + n]) @ np.asarray(a[i])) @ np.asarray(b[i])
        start += n
    for name in ("ragged", impl):
        np.testing.assert_allclose(lora_delta(x, a, b, sizes, scale, impl=name), want, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(lora_delta(x, a, b, sizes, scale, impl=impl))[9:] == 0)


def test_pack_rejects_overfull_device():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="capacity"):
        batched.pack([_batch(rng, 5), _batch(rng, 4)], 1, 8, SEQ)


@pytest.mark.parametrize("impl", ["gather", "dense", "pallas"])
def test_lora_delta_whole_blocks_values_and_gradients(impl):
    """Groups of whole sequences (block = 2 rows), as the batched step makes them: value and gradients (x, A, B)
    equal lax.ragged_dot's; rows past the groups get 0."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(14, 6)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)
    sizes = jnp.asarray([4, 0, 6, 2], jnp.int32)
    scale = jnp.asarray([0.5, 1.0, 2.0, 3.0], jnp.float32)
    w = jnp.asarray(rng.normal(size=(14, 5)), jnp.float32)

    def f(name):
        return lambda x, a, b: jnp.sum(w * lora_delta(x, a, b, sizes, scale, impl=name, block=2))

    np.testing.assert_allclose(lora_delta(x, a, b, sizes, scale, impl=impl, block=2),
                               lora_delta(x, a, b, sizes, scale, impl="ragged"), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(lora_delta(x, a, b, sizes, scale, impl=impl, block=2))[12:] == 0)
    grads = jax.grad(f(impl), argnums=(0, 1, 2))(x, a, b)
    for got, want in zip(grads, jax.grad(f("ragged"), argnums=(0, 1, 2))(x, a, b)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
