"""Hybrid-parallel DLRM with `shard_map`: tables placed on devices (model parallel), MLPs replicated (data parallel),
and the embedding all-to-all between them, plain (float32) or compressed (fixed-width error-bounded codes).

Per step, on each of the n devices of the mesh axis "data" (local batch B_l = B / n):
1. the batch's indices are all-gathered (every table's owner needs the whole batch's indices into its tables);
2. each device looks up and sum-pools its own tables for the whole batch: f32[B, S, D] (S slots, padded to the
   largest device's table count; a padded slot is zeros);
3. forward all-to-all: the [B, S, D] block is cut by destination (the samples' owner) -> [n, S, B_l, D] and
   exchanged; the receiver reorders the n * S slots into table order -> f32[B_l, T, D];
4. the dense side runs data-parallel on the local samples; the loss is the global batch mean (psum);
5. backward: autodiff transposes the all-to-all into the gradients' all-to-all back to the tables' owners, and
   the replicated MLP parameters' gradients are summed over devices (shard_map's replication checking inserts the
   psum).

Compressed exchange (`compress != "none"`): the sender quantises each (destination, slot) block [B_l, D] with its
table's bound e = eps_t * m(step) * (max - min) into int8/int16 codes plus float32 (centre, step)
(`qrjax.compression.fixed`), the collective moves codes and scalars, the receiver rebuilds. The backward is
straight-through as in the artifact (the float32 gradient all-to-all), or with `compress_backward` the gradients
are quantised the same way before their all-to-all. Each step reports the forward codes' bound violations (what
the receiver rebuilds vs what the sender had, checked on the sender), their order-0 entropy and largest |code|.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from qrjax.compression import fixed
from qrjax.dlrm import model as dlrm_model
from qrjax.dlrm.bounds import multiplier
from qrjax.dlrm.config import DLRMConfig

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Tables on devices, balanced by rows x dim with at most ceil(T / n) tables a device (the all-to-all moves
    n x slots blocks, so fewer slots is less padding).

    device[t], slot[t], offset[t]: table t's device, its slot there and its first row in the device's stacked rows;
    slot_table[d, s]: the table in slot s of device d (-1: padding); rows: the stacked rows a device holds (the
    largest device's; the others are padded)."""

    table_sizes: tuple[int, ...]
    num_devices: int
    device: tuple[int, ...]
    slot: tuple[int, ...]
    offset: tuple[int, ...]
    slots: int
    rows: int

    @classmethod
    def build(cls, table_sizes, num_devices: int) -> "Placement":
        sizes = tuple(int(s) for s in table_sizes)
        t, n = len(sizes), int(num_devices)
        if n < 1 or t < 1:
            raise ValueError(f"Placement: need at least one table and one device, got {t} tables, {n} devices")
        cap = math.ceil(t / n)
        load, count = [0] * n, [0] * n
        device, slot, offset = [0] * t, [0] * t, [0] * t
        for i in sorted(range(t), key=lambda i: (-sizes[i], i)):  # largest first onto the least loaded device
            d = min((d for d in range(n) if count[d] < cap), key=lambda d: (load[d], d))
            device[i], slot[i], offset[i] = d, count[d], load[d]
            load[d] += sizes[i]
            count[d] += 1
        return cls(sizes, n, tuple(device), tuple(slot), tuple(offset), cap, max(load))

    @property
    def slot_table(self) -> np.ndarray:
        out = np.full((self.num_devices, self.slots), -1, np.int32)
        for t, (d, s) in enumerate(zip(self.device, self.slot)):
            out[d, s] = t
        return out

    @property
    def slot_offset(self) -> np.ndarray:
        out = np.zeros((self.num_devices, self.slots), np.int32)
        for t, (d, s) in enumerate(zip(self.device, self.slot)):
            out[d, s] = self.offset[t]
        return out

    @property
    def order(self) -> np.ndarray:
        """int32[T]: table t's position among the received n x slots blocks."""
        return np.asarray([d * self.slots + s for d, s in zip(self.device, self.slot)], np.int32)

    def stack(self, tables: list) -> np.ndarray:
        """Per-table arrays [rows_t, D] -> the placed layout f32[n, rows, D]."""
        dim = np.shape(tables[0])[1]
        out = np.zeros((self.num_devices, self.rows, dim), np.float32)
        for t, table in enumerate(tables):
            out[self.device[t], self.offset[t]:self.offset[t] + self.table_sizes[t]] = np.asarray(table)
        return out

    def unstack(self, placed) -> list[np.ndarray]:
        """The placed layout -> per-table arrays, in table order."""
        placed = np.asarray(placed)
        return [placed[self.device[t], self.offset[t]:self.offset[t] + self.table_sizes[t]]
                for t in range(len(self.table_sizes))]


def init_params(config: DLRMConfig, placement: Placement, key) -> dict:
    """{'dense': the MLPs' params, 'tables': f32[n, rows, D] placed} (host arrays; equal tables for any n)."""
    k_dense, k_tables = jax.random.split(key)
    tables = [np.asarray(dlrm_model.init_table(k, r, config.embedding_dim))
              for k, r in zip(dlrm_model.table_keys(k_tables, config.num_tables), config.table_sizes)]
    return {"dense": jax.device_get(dlrm_model.init_dense(config, k_dense)), "tables": placement.stack(tables)}


def param_shardings(params: dict, mesh) -> dict:
    """Tables split over the devices (axis 0), everything else replicated."""
    return {"dense": jax.tree.map(lambda _: NamedSharding(mesh, P()), params["dense"]),
            "tables": NamedSharding(mesh, P(AXIS))}


# ------------------------------------------------------------------------------------------------ the exchange


def _all_to_all(x):
    """[n, ...] blocks by destination -> [n, ...] blocks by source."""
    return jax.lax.all_to_all(x, AXIS, 0, 0)


def _quantized_all_to_all(x, eps, code_dtype: str):
    """x: f32[n, S, B_l, D] by destination, eps: f32[n, S] -> (f32 received [n, S, B_l, D], FixedQuantized sent)."""
    q = fixed.quantize(x, eps, axes=(2, 3), code_dtype=code_dtype)
    codes = _all_to_all(q.codes)
    scalars = _all_to_all(jnp.stack([q.centre, q.step], axis=-1))
    return fixed.rebuild(codes, scalars[..., 0], scalars[..., 1]), q


def _exchange_stats(x, q) -> dict:
    """The forward codes' statistics on the sender: bound violations (int32), the codes' histogram, max |code|."""
    rebuilt = fixed.dequantize(q)
    return {"violations": fixed.violations(x, rebuilt, q.bound),
            "histogram": fixed.code_histogram(q.codes),
            "max_code": jnp.max(jnp.abs(q.codes.astype(jnp.int32)))}


def make_exchange(compress: bool, compress_backward: bool, code_dtype: str):
    """exchange(x f32[n, S, B_l, D], eps_send f32[n, S], eps_back f32[n, S]) -> (f32[n, S, B_l, D], stats).

    eps_send: the bound of each block as sent (by destination, this device's slots); eps_back: the bound of each
    received block's gradient (by source, the source's slots). Plain: a differentiable all-to-all."""
    levels = np.iinfo(code_dtype).max - np.iinfo(code_dtype).min + 1

    def empty_stats():
        return {"violations": jnp.int32(0), "histogram": jnp.zeros(levels, jnp.int32), "max_code": jnp.int32(0)}

    if not compress:
        return lambda x, eps_send, eps_back: (_all_to_all(x), empty_stats())

    @jax.custom_vjp
    def exchange(x, eps_send, eps_back):
        return fwd(x, eps_send, eps_back)[0]

    def fwd(x, eps_send, eps_back):
        y, q = _quantized_all_to_all(x, eps_send, code_dtype)
        return (y, _exchange_stats(x, q)), (eps_send, eps_back)

    def bwd(res, cotangents):
        eps_send, eps_back = res
        g = cotangents[0]
        if compress_backward:  # the gradient of block (source, slot) goes back to its source
            g_back, _ = _quantized_all_to_all(g, eps_back, code_dtype)
        else:  # straight-through: the quantiser's gradient taken as identity, float32 on the wire
            g_back = _all_to_all(g)
        return g_back, jnp.zeros_like(eps_send), jnp.zeros_like(eps_back)

    exchange.defvjp(fwd, bwd)
    return exchange


# --------------------------------------------------------------------------------------------------- forward


def _embeddings(tables, sparse_all, placement: Placement, n: int):
    """This device's tables' pooled lookups for the whole batch, cut by destination: f32[n, S, B_l, D]."""
    d = jax.lax.axis_index(AXIS)
    my_tables = jnp.asarray(placement.slot_table)[d]
    my_offsets = jnp.asarray(placement.slot_offset)[d]
    idx = sparse_all[:, jnp.maximum(my_tables, 0), :] + my_offsets[None, :, None]  # [B, S, H]
    emb = jnp.take(tables[0], idx, axis=0).sum(axis=2)  # [B, S, D]
    emb = emb * (my_tables >= 0)[None, :, None].astype(emb.dtype)
    b, s, dim = emb.shape
    return emb.reshape(n, b // n, s, dim).transpose(0, 2, 1, 3), my_tables


def _slot_eps(eps_table, slot_table):
    """Per-table bounds -> per-slot bounds (padding slots: any positive bound; their blocks are zeros, rebuilt
    exactly)."""
    return jnp.where(slot_table >= 0, eps_table[jnp.maximum(slot_table, 0)], 0.25)


def make_forward(config: DLRMConfig, placement: Placement, mesh, *, compress: bool, code_dtype: str = "int8"):
    """forward(params, batch, eps_table f32[T]) -> (logits f32[B] sharded over the batch, stats), a shard_map over
    `mesh` (axis "data"). eps_table: each table's bound this step (ignored without compression)."""
    n = mesh.shape[AXIS]
    if n != placement.num_devices:
        raise ValueError(f"make_forward: the placement is for {placement.num_devices} devices, the mesh has {n}")
    arch = dlrm_model.dense_arch(config)
    exchange = make_exchange(compress, config.compress_backward, code_dtype)
    order = jnp.asarray(placement.order)
    slot_table = jnp.asarray(placement.slot_table)

    def local(dense_params, tables, dense, sparse, eps_table):
        sparse_all = jax.lax.all_gather(sparse, AXIS, axis=0, tiled=True)
        send, my_tables = _embeddings(tables, sparse_all, placement, n)
        eps_send = jnp.broadcast_to(_slot_eps(eps_table, my_tables)[None, :], send.shape[:2])
        eps_back = _slot_eps(eps_table, slot_table)  # [n sources, S]
        recv, stats = exchange(send, eps_send, eps_back)  # [n, S, B_l, D] by source
        s = recv.shape[1]
        emb = recv.reshape(n * s, recv.shape[2], recv.shape[3])[order].transpose(1, 0, 2)  # [B_l, T, D]
        logits = arch.apply({"params": dense_params}, dense, emb)
        # per device (pmax has no differentiation rule, even for integers): reduced after the shard_map
        stats = {k: v[None] for k, v in stats.items()}
        return logits, stats

    sharded = jax.shard_map(local, mesh=mesh,
                            in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P()),
                            out_specs=(P(AXIS), P(AXIS)))

    def forward(params, batch, eps_table):
        logits, stats = sharded(params["dense"], params["tables"], batch["dense"], batch["sparse"], eps_table)
        return logits, {"violations": jnp.sum(stats["violations"]), "histogram": jnp.sum(stats["histogram"], 0),
                        "max_code": jnp.max(stats["max_code"])}

    return forward


def make_loss(forward):
    """loss(params, batch, eps_table) -> (mean BCE over the global batch, stats)."""

    def loss(params, batch, eps_table):
        logits, stats = forward(params, batch, eps_table)
        return jnp.mean(dlrm_model.bce_with_logits(logits, batch["label"])), stats

    return loss


def make_train_step(config: DLRMConfig, placement: Placement, mesh, eps_table: np.ndarray, code_dtype: str):
    """step(state, batch) -> (state, metrics): SGD on the global batch mean loss; the bound eps_t * m(state.step)."""
    compress = config.compress != "none"
    loss_fn = make_loss(make_forward(config, placement, mesh, compress=compress, code_dtype=code_dtype))
    eps = jnp.asarray(eps_table, jnp.float32)

    @jax.jit
    def step(state, batch):
        m = multiplier(state.step, config)
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, eps * m)
        metrics = {"loss": loss, "multiplier": m}
        if compress:
            metrics.update(violations=stats["violations"], code_entropy_bits=fixed.entropy_bits(stats["histogram"]),
                           max_code=stats["max_code"])
        return state.apply_gradients(grads), metrics

    return step


@dataclasses.dataclass(frozen=True)
class WireBytes:
    """Bytes that cross between devices per training step, summed over devices (the all-to-all keeps 1/n of each
    buffer on its own device). `padding_fraction`: the share of the buffers that are padding slots."""

    forward: int
    backward: int
    forward_float32: int
    backward_float32: int
    index_allgather: int
    padding_fraction: float

    @property
    def total(self) -> int:
        return self.forward + self.backward

    @property
    def total_float32(self) -> int:
        return self.forward_float32 + self.backward_float32


def wire_bytes(config: DLRMConfig, placement: Placement, code_dtype: str | None) -> WireBytes:
    """The collectives' bytes per step from their static shapes (code_dtype None: uncompressed)."""
    n, s, dim = placement.num_devices, placement.slots, config.embedding_dim
    b_l = config.batch_size // n
    blocks = n * (n - 1) * s  # (source, destination != source, slot) blocks of B_l x D values
    f32 = blocks * b_l * dim * 4
    coded = blocks * (b_l * dim * np.dtype(code_dtype).itemsize + 2 * 4) if code_dtype else f32
    backward = coded if (code_dtype and config.compress_backward) else f32
    gather = n * (n - 1) * b_l * config.num_tables * config.multi_hot * 4
    return WireBytes(coded, backward, f32, f32, gather, 1 - config.num_tables / (n * s))


__all__ = ["AXIS", "Placement", "WireBytes", "init_params", "make_exchange", "make_forward",
           "make_loss", "make_train_step", "param_shardings", "wire_bytes"]
