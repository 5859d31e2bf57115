"""ALTO's batched multi-adapter training step: N adapter slots over one frozen backbone, one program.

A step takes the sequences of every live slot in one buffer (slot i's `seqs[i]` sequences contiguous, in slot order;
rows beyond them are padding) and
- runs the backbone once with every slot's LoRA term (one base matmul over all tokens + grouped LoRA matmuls);
- takes the loss as the sum over slots of each slot's own mean token cross-entropy on its completion tokens, so the
  gradient of slot i's adapter is exactly the gradient of its own loss (the other slots' terms do not depend on it);
- updates every slot with its own AdamW state, learning rate and step count (optax's transformation vmapped over
  the slot axis: clipping, moments and bias correction are per adapter);
- leaves empty slots (seqs = 0) untouched.
Back-filling a slot with a new configuration (`reset_slot`) writes a fresh adapter and a fresh optimiser state at a
traced slot index: nothing recompiles, since the slot count, rank_max and buffer size stay fixed.

Adapter-per-device parallelism: `make_steps(..., mesh)` runs the step under `shard_map` over the mesh's one axis
("adapters"): the backbone is replicated, every device owns `slots` whole adapters (the slot axis is split across
devices) and the sequences of its own slots; no collective at all (no adapter all-reduce), so D devices compute what
one device would with all D·slots slots.

Shapes: inputs, targets int32[S, L]; mask float32[S, L]; seqs int32[N]; scale, lr float32[N]; S = devices x
capacity, N = devices x slots.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from qrjax.lora.config import LlamaConfig, TuneConfig
from qrjax.lora.model import Llama, LoraInputs
from qrjax.lora.multilora import row_groups

AXIS = "adapters"


class SlotInputs(NamedTuple):
    """Per-slot settings of one step: seqs int32[N] (sequences in the buffer; 0 = empty), scale float32[N]
    (alpha / r), lr float32[N]."""

    seqs: jax.Array
    scale: jax.Array
    lr: jax.Array


class SlotState(flax.struct.PyTreeNode):
    """Every slot's adapter and AdamW state; leaves carry the slot axis first."""

    adapters: Any
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def adapter_shapes(model_config: LlamaConfig, targets, rank: int) -> dict:
    """{layers_i: {self_attn|mlp: {proj: {"a": (d_in, rank), "b": (rank, d_out)}}}} for the projections in targets."""
    tree: dict = {}
    for i in range(model_config.num_layers):
        for proj in targets:
            group = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            d_in, d_out = model_config.projection_shape(proj)
            tree.setdefault(f"layers_{i}", {}).setdefault(group, {})[proj] = {"a": (d_in, rank), "b": (rank, d_out)}
    return tree


def init_adapter(key: jax.Array, model_config: LlamaConfig, targets, rank, rank_max: int, dtype=jnp.float32):
    """One adapter as PEFT initialises it, padded to rank_max: A Kaiming-uniform (PyTorch's a = sqrt(5), i.e.
    U(-1/sqrt(d_in), 1/sqrt(d_in))) on its first `rank` columns, B zeros; columns/rows beyond `rank` exactly 0.
    rank may be traced (the back-fill resets slots without recompiling)."""
    shapes = adapter_shapes(model_config, targets, rank_max)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, dict) and "a" in x)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, shp in zip(keys, leaves):
        d_in = shp["a"][0]
        bound = 1.0 / math.sqrt(d_in)
        used = (jnp.arange(rank_max) < rank).astype(dtype)
        a = jax.random.uniform(k, shp["a"], dtype, -bound, bound) * used[None, :]
        out.append({"a": a, "b": jnp.zeros(shp["b"], dtype)})
    return jax.tree.unflatten(treedef, out)


def init_slots(config: TuneConfig, model_config: LlamaConfig, num_slots: int, tx: optax.GradientTransformation
               ) -> SlotState:
    """num_slots empty slots (zero adapters, fresh optimiser states of `tx`, the per-adapter optimiser at learning
    rate 1: each slot's update is scaled by its own rate)."""
    single = init_adapter(jax.random.key(0), model_config, config.targets, 0, config.rank_max)
    adapters = jax.tree.map(lambda x: jnp.zeros((num_slots,) + x.shape, x.dtype), single)
    return SlotState(adapters=adapters, opt_state=jax.vmap(tx.init)(adapters), tx=tx)


def slot_losses(logits, targets, mask, seqs):
    """Each slot's mean token cross-entropy over its masked targets -> (mean float32[N], tokens float32[N]).
    logits [S, L, V]; targets int32[S, L]; mask float32[S, L]; seqs int32[N]."""
    num = seqs.shape[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    seq_slot = row_groups(seqs, targets.shape[0])  # N for padding rows
    total = jax.ops.segment_sum((nll * mask).sum(-1), seq_slot, num_segments=num + 1)[:num]
    count = jax.ops.segment_sum(mask.sum(-1), seq_slot, num_segments=num + 1)[:num]
    return total / jnp.maximum(count, 1.0), count


def _forward_losses(model, base, adapters, batch, slots: SlotInputs):
    tokens_per_seq = batch["inputs"].shape[1]
    lora = LoraInputs(adapters, slots.seqs * tokens_per_seq, slots.scale, tokens_per_seq)
    logits = model.apply({"params": base}, batch["inputs"], lora)
    return slot_losses(logits, batch["targets"], batch["mask"], slots.seqs)


def _slot_bcast(v, x):
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def local_train_step(model, base, state: SlotState, batch: dict, slots: SlotInputs):
    """One step on one device's slots -> (state, per-slot mean loss float32[N])."""

    def loss_fn(adapters):
        means, _ = _forward_losses(model, base, adapters, batch, slots)
        return means.sum(), means

    grads, means = jax.grad(loss_fn, has_aux=True)(state.adapters)
    updates, opt_state = jax.vmap(state.tx.update)(grads, state.opt_state, state.adapters)
    updates = jax.tree.map(lambda u: u * _slot_bcast(slots.lr.astype(u.dtype), u), updates)
    adapters = optax.apply_updates(state.adapters, updates)
    live = slots.seqs > 0

    def keep(new, old):
        return jnp.where(_slot_bcast(live, new), new, old)

    state = state.replace(adapters=jax.tree.map(keep, adapters, state.adapters),
                          opt_state=jax.tree.map(keep, opt_state, state.opt_state))
    return state, means


def local_eval_step(model, base, adapters, batch: dict, slots: SlotInputs):
    """Forward only -> (per-slot summed loss float32[N], per-slot tokens float32[N])."""
    means, count = _forward_losses(model, base, adapters, batch, slots)
    return means * count, count


class Steps(NamedTuple):
    train: Any  # (base, state, batch, slots) -> (state, losses f32[N])
    evaluate: Any  # (base, adapters, batch, slots) -> (loss sums f32[N], tokens f32[N])
    reset: Any  # (state, slot int32, key, rank int32) -> state
    mesh: Any
    state_sharding: Any
    slot_sharding: Any
    replicated: Any
    base_sharding: Any  # the backbone's placement: replicated, or split over AXIS with shard_backbone


def make_steps(config: TuneConfig, model_config: LlamaConfig, mesh, tx: optax.GradientTransformation) -> Steps:
    """The jitted train / eval / reset functions on `mesh` (one axis, AXIS; one device or many).

    Cached on the fields the programs depend on, so runs that differ only in steps, seeds, slots' contents or early
    exit (an experiment's arms, a resumed run) reuse one compilation."""
    program = dataclasses.replace(TuneConfig(), targets=tuple(config.targets), rank_max=config.rank_max,
                                  impl=config.impl, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                                  shard_backbone=config.shard_backbone)
    return _make_steps(program, model_config, mesh, tx)


@functools.lru_cache(maxsize=16)
def _make_steps(config: TuneConfig, model_config: LlamaConfig, mesh, tx) -> Steps:
    model = Llama(model_config, impl=config.impl)
    slot_sharding = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())
    batch_specs = {"inputs": P(AXIS), "targets": P(AXIS), "mask": P(AXIS)}
    slot_specs = SlotInputs(P(AXIS), P(AXIS), P(AXIS))
    base_specs = backbone_specs(model_config, mesh.shape[AXIS] if config.shard_backbone else 1)

    def gathered(fn):
        # a sharded backbone is all-gathered into whole weights, one program-wide gather per leaf (the frozen
        # weights need no gradient, so backward adds no reduce-scatter); replicated leaves pass through
        def local(base, *args):
            base = jax.tree.map(lambda w, spec: jax.lax.all_gather(w, AXIS, axis=0, tiled=True) if spec != P() else w,
                                base, base_specs)
            return fn(base, *args)

        return local

    # without shard_backbone no collective at all: every device trains its own adapters on its own sequences
    train = jax.shard_map(gathered(functools.partial(local_train_step, model)), mesh=mesh,
                          in_specs=(base_specs, P(AXIS), batch_specs, slot_specs), out_specs=(P(AXIS), P(AXIS)),
                          check_vma=False)
    evaluate = jax.shard_map(gathered(functools.partial(local_eval_step, model)), mesh=mesh,
                             in_specs=(base_specs, P(AXIS), batch_specs, slot_specs), out_specs=(P(AXIS), P(AXIS)),
                             check_vma=False)
    template = init_slots(config, model_config, 1, tx)
    state_sharding = jax.tree.map(lambda _: slot_sharding, template)

    def reset(state: SlotState, slot, key, rank):
        fresh = init_adapter(key, model_config, config.targets, rank, config.rank_max)
        fresh_opt = state.tx.init(fresh)
        adapters = jax.tree.map(lambda x, v: x.at[slot].set(v), state.adapters, fresh)
        opt_state = jax.tree.map(lambda x, v: x.at[slot].set(v), state.opt_state, fresh_opt)
        return state.replace(adapters=adapters, opt_state=opt_state)

    return Steps(train=jax.jit(train, donate_argnums=1, out_shardings=(state_sharding, slot_sharding)),
                 evaluate=jax.jit(evaluate, out_shardings=(slot_sharding, slot_sharding)),
                 reset=jax.jit(reset, donate_argnums=0, out_shardings=state_sharding),
                 mesh=mesh, state_sharding=state_sharding, slot_sharding=slot_sharding, replicated=replicated,
                 base_sharding=jax.tree.map(lambda spec: NamedSharding(mesh, spec), base_specs))


def backbone_specs(model_config: LlamaConfig, devices: int):
    """PartitionSpecs of the backbone's leaves: with devices > 1 (shard_backbone) every leaf whose first dimension
    the devices divide is split along it over AXIS (FSDP-style: each device stores 1/devices of it), the rest
    replicated; with devices = 1 everything replicated."""
    shapes = jax.eval_shape(lambda: Llama(model_config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    return jax.tree.map(lambda x: P(AXIS) if devices > 1 and x.shape[0] % devices == 0 else P(),
                        shapes["params"])


def pack(batches, devices: int, capacity: int, seq_len: int):
    """Host-side buffer of one step: batches[i] (slot i; device d owns slots d·K .. d·K + K - 1, K = len / devices)
    is None (empty slot) or a dict of inputs/targets int32[b_i, seq_len] and mask float32[b_i, seq_len].
    -> ({inputs, targets, mask} numpy arrays [devices·capacity, seq_len], seqs int32[N]); each device's block holds
    its slots' sequences contiguously in slot order, then padding (PAD inputs, zero mask)."""
    num = len(batches)
    if num % devices:
        raise ValueError(f"pack: {num} slots do not split over {devices} devices")
    per_device = num // devices
    inputs = np.zeros((devices * capacity, seq_len), np.int32)
    targets = np.zeros_like(inputs)
    mask = np.zeros((devices * capacity, seq_len), np.float32)
    seqs = np.zeros(num, np.int32)
    for d in range(devices):
        row = d * capacity
        for i in range(d * per_device, (d + 1) * per_device):
            b = batches[i]
            if b is None:
                continue
            n = b["inputs"].shape[0]
            if row + n > (d + 1) * capacity:
                raise ValueError(f"pack: device {d}'s slots hold more than its capacity of {capacity} sequences")
            inputs[row:row + n], targets[row:row + n], mask[row:row + n] = b["inputs"], b["targets"], b["mask"]
            seqs[i] = n
            row += n
    return {"inputs": inputs, "targets": targets, "mask": mask}, seqs
