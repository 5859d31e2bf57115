"""Data-parallel CLIP gradients with `shard_map`: FastCLIP's and OpenCLIP's reductions (the training step built on
them is `qrjax.clip.train.make_train_step`), and the JEST-style selection of a super-batch.

Each device embeds its b pairs of the global batch of B = K b. Then
- "fastclip": the features are all-gathered *without* gradient, together with the anchors' new u (and, for v2,
  their temperatures) and sample ids; each device differentiates two blocks of the contrastive matrix (its b
  anchors x all B candidates, and all B anchors x its b candidates), so the backward pass moves nothing but the
  parameter gradients' all-reduce;
- "openclip": the features are all-gathered *with* gradient and each device differentiates its b anchors' rows
  only (OpenCLIP's --local-loss --gather-with-grad): the backward pass adds a reduce-scatter of the features'
  gradients to the parameter all-reduce.
Both give the gradient of the same global-batch surrogate (`qrjax.clip.losses.contrastive_terms`).

The shard_map runs with check_vma=False: the per-sample tables come back identical on every device (every device
writes every anchor's gathered values), which replication checking cannot infer from an all-gather, and the
parameter gradients are all-reduced explicitly (psum), as DDP does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from qrjax.clip import losses
from qrjax.clip.config import CLIPConfig

AXIS = "data"


def make_grads(config: CLIPConfig, encode: Callable, mesh, *, reduction: str | None = None,
               ref_encode: Callable | None = None):
    """grads(params, tables, temp, batch, gamma, epoch, lr_tau, ref_params=None) -> (grads, aux).

    encode(params, images, tokens) -> (e1, e2) normalised features. batch: "image" uint8[B, S, S, 3],
    "text" int32[B, L], "index" int32[B] (sample ids), and for drrho either "ref1", "ref2" float[B, d_ref] (cached
    reference features) or ref_encode(ref_params, images, tokens) computing them on the fly. grads are summed over
    devices (the parameter all-reduce); aux: "loss" and "tau_grad" summed over devices, "tables" (replicated),
    "anchor_weight1/2" float[B] (sharded like the batch)."""
    reduction = reduction or config.reduction

    def local(params, tables, temp, batch, gamma, epoch, lr_tau, ref_params):
        ref1, ref2 = (batch.get("ref1"), batch.get("ref2")) if config.loss == "drrho" else (None, None)
        if config.loss == "drrho" and ref1 is None:
            if ref_encode is None:
                raise ValueError("drrho needs reference features: cached ('ref1', 'ref2' in the batch) or a "
                                 "reference model")
            ref1, ref2 = ref_encode(ref_params, batch["image"], batch["text"])
            ref1, ref2 = lax.stop_gradient(ref1), lax.stop_gradient(ref2)

        def surrogate(params):
            e1, e2 = encode(params, batch["image"], batch["text"])
            return losses.contrastive_terms(config, e1, e2, batch["index"], tables, temp, gamma, epoch=epoch,
                                            lr_tau=lr_tau, axis=AXIS, reduction=reduction, ref1=ref1, ref2=ref2)

        (_, aux), grads = jax.value_and_grad(surrogate, has_aux=True)(params)
        grads = lax.psum(grads, AXIS)
        aux["loss"] = lax.psum(aux["loss"], AXIS)
        aux["tau_grad"] = lax.psum(aux["tau_grad"], AXIS)
        return grads, aux

    def grads(params, tables, temp, batch, gamma, epoch, lr_tau, ref_params=None):
        batch_specs = {k: P(AXIS) for k in batch}
        aux_specs = {"loss": P(), "tau_grad": P(), "tables": P(), "anchor_weight1": P(AXIS),
                     "anchor_weight2": P(AXIS)}
        fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), batch_specs, P(), P(), P(), P()),
                           out_specs=(P(), aux_specs), check_vma=False)
        return fn(params, tables, temp, batch, gamma, epoch, lr_tau, ref_params)

    return grads


def make_jest_select(config: CLIPConfig, encode: Callable):
    """select(params, tau, superbatch) -> batch: the batch_size pairs of a super-batch (with the reference's
    features "ref1", "ref2") that score highest by learnability, the learner's pair loss minus the reference's
    (qrjax.clip.losses.pair_losses at the learner's temperature); JEST's top-k variant."""
    keep = config.batch_size

    @jax.jit
    def select(params, tau, superbatch: dict) -> dict:
        e1, e2 = encode(params, superbatch["image"], superbatch["text"])
        score = (losses.pair_losses(e1, e2, tau)
                 - losses.pair_losses(superbatch["ref1"].astype(e1.dtype), superbatch["ref2"].astype(e1.dtype), tau))
        top = lax.top_k(lax.stop_gradient(score), keep)[1]
        return {k: v[top] for k, v in superbatch.items()}

    return select


__all__ = ["AXIS", "make_grads", "make_jest_select"]
