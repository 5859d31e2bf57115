"""Contrastive losses of FastCLIP and DRRho-CLIP, their temperature rules, and the u-estimators, in one module.

Notation (FastCLIP, arXiv 2407.01445): e1_i, e2_i are the L2-normalised image and text features of pair i,
s_ij = <e1_i, e2_j>; for the image anchor i, Delta_ij = s_ij - s_ii, and for the text anchor i,
Delta'_ij = s_ji - s_ii (j != i). g_i = (1/(B-1)) sum_j exp(Delta_ij / tau).

Objectives (both directions averaged, i.e. halved against the papers' sums, like OpenCLIP's loss):
- MBCL (OpenCLIP): 1/2 mean_i [log(1 + (B-1) g1_i) + log(1 + (B-1) g2_i)] on the mini-batch (cross-entropy);
- GCL (FastCLIP v0, v1): tau/2 mean_i [log(eps + g1_i(S)) + log(eps + g2_i(S))], g over the whole data set S;
- RGCL (v2): per-sample tau1_i, tau2_i: 1/2 mean_i [tau1_i (log(eps + g1_i(tau1_i)) + rho) + (same for 2)];
- RGCL-g (v3): GCL + rho * tau with a learnable global tau (the KL-DRO dual);
- DRRho-CLIP (arXiv 2505.06699): GCL with Delta_ij(w) replaced by Delta_ij(w) - Delta_ij(w_ref) inside the
  exponent (the reference's similarities divided by the target's tau), the gradient flowing through Delta(w) only.

FCCO keeps, per sample, a moving average u_i of eps + g_i over the steps (stored as log u, so nothing overflows at
tau = 0.01 where exp(Delta / tau) reaches e^200): log u <- logaddexp(log(1 - gamma) + log u, log gamma +
log(eps + g)). The gradient estimator of the log objective is then sum_j w_ij grad Delta_ij with stop-gradient
weights w_ij = exp(Z_ij - log u_i) / (B - 1), Z_ij = (Delta_ij - Delta_ref_ij) / tau_i, which this module writes
as the surrogate sum_j sg(w_ij) Delta_ij: its gradient is the estimator (exactly the objective's gradient at
gamma = 1, where u = eps + g). MBCL fits the same form with u_i = 1 + sum_j exp(Z_ij) and no 1/(B-1).

`contrastive_terms` computes one device's share of the surrogate for the two reductions of `qrjax.clip.sharded`
(or the whole of it with axis=None): the gradient of the sum over devices of their shares is the gradient of the
whole batch's surrogate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from qrjax.clip.config import CLIPConfig

GCL_LOSSES = ("fastclip-v0", "fastclip-v1", "fastclip-v2", "fastclip-v3", "drrho")
LEARNABLE_GLOBAL_TAU = ("openclip", "fastclip-v0", "fastclip-v3")
U_FLOOR = math.log(1e-35)  # FastCLIP resets u below 1e-35 (or inf/NaN) to the batch's estimate


# ------------------------------------------------------------------------------------------------ schedules


def drrho_gamma_min(epochs: int) -> float:
    """DRRho-CLIP's rule for gamma's final value from the number of epochs: min(1, 4.177 E^-0.7265)."""
    return float(min(1.0, 4.177 * max(epochs, 1) ** -0.7265))


def gamma_at(config: CLIPConfig, epoch):
    """u's moving-average weight in `epoch` (0-based; traced or Python int). Epoch 0 always uses gamma = 1 (u starts
    at the batch estimate). cosine: 1/2 (1 + cos(pi E / E_decay)) (1 - gamma_min) + gamma_min before E_decay, then
    gamma_min (E_decay = gamma_decay_epochs, default half the epochs); drrho: the same cosine over all epochs down to
    drrho_gamma_min(epochs); constant: gamma_min."""
    epoch = jnp.asarray(epoch, jnp.float32)
    if config.gamma_rule == "constant":
        gamma = jnp.full((), config.gamma_min, jnp.float32)
    else:
        if config.gamma_rule == "drrho":
            low, decay = drrho_gamma_min(config.epochs), config.epochs
        else:
            low, decay = config.gamma_min, config.gamma_decay_epochs or max(1, config.epochs // 2)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * epoch / decay)) * (1 - low) + low
        gamma = jnp.where(epoch < decay, cosine, low)
    return jnp.where(epoch == 0, 1.0, gamma)


# ------------------------------------------------------------------------------------------------ state


def init_tables(config: CLIPConfig, num_samples: int, dtype=jnp.float32) -> dict:
    """Per-sample state: log u1, log u2 (-inf: not seen yet) for every GCL loss; for v2 also the per-sample
    temperatures tau1, tau2 and their Adam moments m1, v1, m2, v2. dtype[num_samples] each."""
    if config.loss not in GCL_LOSSES:
        return {}
    tables = {"log_u1": jnp.full((num_samples,), -jnp.inf, dtype), "log_u2": jnp.full((num_samples,), -jnp.inf, dtype)}
    if config.loss == "fastclip-v2":
        tables.update({k: jnp.full((num_samples,), config.temperature, dtype) for k in ("tau1", "tau2")})
        tables.update({k: jnp.zeros((num_samples,), dtype) for k in ("m1", "v1", "m2", "v2")})
    return tables


def init_temperature(config: CLIPConfig, dtype=jnp.float32) -> dict:
    """The global temperature tau = exp(-theta) and its Adam state (m, v) and step_thresh flag."""
    return {"theta": jnp.asarray(-math.log(config.temperature), dtype), "m": jnp.zeros((), dtype),
            "v": jnp.zeros((), dtype), "dropped": jnp.zeros((), jnp.bool_)}


def tau_of(temp: dict):
    return jnp.exp(-temp["theta"])


def update_temperature(config: CLIPConfig, temp: dict, theta_grad, step, lr) -> dict:
    """One Adam step (the step-th, 0-based) on theta = log(1/tau) at learning rate lr (weight decay 0, betas (0.9,
    config.beta2), eps config.adam_eps), then the clamp theta in [log(1/tau_max), log(1/tau_min)]; lr x 1/3 from
    the first step tau <= tau_step_thresh on (FastCLIP's step_thresh). Frozen for the constant-temperature losses."""
    if config.loss not in LEARNABLE_GLOBAL_TAU:
        return temp
    b1, b2 = 0.9, config.beta2
    t = jnp.asarray(step).astype(temp["theta"].dtype) + 1
    m = b1 * temp["m"] + (1 - b1) * theta_grad
    v = b2 * temp["v"] + (1 - b2) * theta_grad ** 2
    lr = lr * jnp.where(temp["dropped"], 1 / 3, 1.0)
    theta = temp["theta"] - lr * (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + config.adam_eps)
    theta = jnp.clip(theta, -math.log(config.tau_max), -math.log(config.tau_min))
    dropped = temp["dropped"] | (config.tau_step_thresh > 0) & (jnp.exp(-theta) <= config.tau_step_thresh)
    return {"theta": theta, "m": m, "v": v, "dropped": dropped}


def update_v2_tau(config: CLIPConfig, tau, m, v, grad, epoch, lr):
    """FastCLIP v2's per-sample rule: grad clipped to +-v2_grad_clip, Adam moments with the bias correction
    1 - beta^(epoch + 1) (and beta1 = beta2 = 0 in epoch 0), tau <- clamp(tau - lr m^ / (sqrt(v^) + eps),
    tau_min, tau_max). Arrays of the anchors' values -> (tau, m, v)."""
    grad = jnp.clip(grad, -config.v2_grad_clip, config.v2_grad_clip)
    first = jnp.asarray(epoch) == 0
    b1 = jnp.where(first, 0.0, config.v2_beta1)
    b2 = jnp.where(first, 0.0, config.v2_beta2)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    e = jnp.asarray(epoch).astype(m.dtype) + 1
    m_hat = m / (1 - b1 ** e)
    v_hat = v / (1 - b2 ** e)
    tau = jnp.clip(tau - lr * m_hat / (jnp.sqrt(v_hat) + config.v2_eps), config.tau_min, config.tau_max)
    return tau, m, v


def moving_average_log(log_u, log_target, gamma):
    """log((1 - gamma) u + gamma target) from logs; an entry still unseen (-inf), below 1e-35, or not finite restarts
    at the target (FastCLIP's reset)."""
    gamma = jnp.asarray(gamma, log_target.dtype)
    mixed = jnp.logaddexp(jnp.log1p(-gamma) + log_u, jnp.log(gamma) + log_target)
    restart = ~jnp.isfinite(log_u) | (log_u < U_FLOOR) | (gamma >= 1)
    return jnp.where(restart, log_target, mixed)


# ------------------------------------------------------------------------------------------------ the estimator


class Rows(NamedTuple):
    """One direction's anchor rows: Delta (with gradient), Z = sg(Delta - Delta_ref) / tau (masked to -inf at the
    positives), and the mask of the negatives."""

    delta: jax.Array  # [r, c]
    z: jax.Array  # [r, c]
    mask: jax.Array  # bool[r, c]


def _rows(delta, ref_delta, tau, mask) -> Rows:
    target = lax.stop_gradient(delta) - (0.0 if ref_delta is None else ref_delta)
    return Rows(delta, jnp.where(mask, target / tau[:, None], -jnp.inf), mask)


def _log_sum(rows: Rows):
    return jax.nn.logsumexp(rows.z, axis=1)


def _weights(rows: Rows, log_u, norm):
    return jnp.where(rows.mask, jnp.exp(rows.z - log_u[:, None]), 0.0) / norm


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _gather(x, axis):
    return x if axis is None else lax.all_gather(x, axis, axis=0, tiled=True)


def contrastive_terms(config: CLIPConfig, e1, e2, idx, tables: dict, temp: dict, gamma, *, epoch=0, lr_tau=0.0,
                      axis: str | None = None, reduction: str = "fastclip", ref1=None, ref2=None):
    """One device's share of the surrogate (a scalar) and the step's side results.

    e1, e2: float[b, d] this device's normalised image and text features (functions of the parameters);
    idx: int32[b] their sample ids (rows of the u tables); tables: init_tables' dict (replicated); temp:
    init_temperature's dict; gamma: u's weight this step; epoch, lr_tau: v2's temperature rule's epoch and rate;
    axis: the shard_map axis (None: one device, b = B);
    reduction: "fastclip" (features gathered without gradient; block 1 = local anchors x all candidates, block 2 =
    all anchors x local candidates) or "openclip" (features gathered with gradient; local anchors only);
    ref1, ref2: float[b, d_ref] the reference model's features (drrho).

    Returns (surrogate, aux): the sum over devices of the surrogates' gradients is the whole batch's estimator;
    aux holds, summed over devices where noted: "loss" (the batch estimate of the objective, summed),
    "tau_grad" (d objective / d tau for a global tau, summed), "tables" (the updated per-sample tables, identical on
    every device), "anchor_weight1/2" (float[b], sum_j w_ij of this device's anchors: ~1, less where eps dominates g).
    """
    loss = config.loss
    gcl = loss in GCL_LOSSES
    if loss == "drrho" and (ref1 is None or ref2 is None):
        raise ValueError("drrho: the reference model's features ref1, ref2 are required")
    b = e1.shape[0]
    k = 0 if axis is None else lax.axis_index(axis)
    with_grad = reduction == "openclip"
    if reduction not in ("fastclip", "openclip"):
        raise ValueError(f"reduction {reduction!r}: choose fastclip or openclip")
    g1 = _gather(e1 if with_grad else lax.stop_gradient(e1), axis)  # [B, d]
    g2 = _gather(e2 if with_grad else lax.stop_gradient(e2), axis)
    big_b = g1.shape[0]
    own = jnp.arange(b) + k * b  # each local anchor's positive column
    mask = jnp.arange(big_b)[None, :] != own[:, None]  # [b, B]
    pos = jnp.sum(e1 * e2, axis=-1)  # [b], gradient to both towers
    s12 = e1 @ g2.T  # [b, B] local images x all texts
    s21 = e2 @ g1.T  # [b, B] local texts x all images
    d1, d2 = s12 - pos[:, None], s21 - pos[:, None]
    rd1 = rd2 = rpos = r1_all = r2_all = None
    if ref1 is not None:
        r1_all, r2_all = _gather(ref1, axis), _gather(ref2, axis)
        rpos = jnp.sum(ref1 * ref2, axis=-1)
        rd1, rd2 = ref1 @ r2_all.T - rpos[:, None], ref2 @ r1_all.T - rpos[:, None]

    v2 = loss == "fastclip-v2"
    tau = tau_of(temp)
    tau1 = tables["tau1"][idx] if v2 else jnp.full((b,), tau, e1.dtype)
    tau2 = tables["tau2"][idx] if v2 else tau1
    rows1, rows2 = _rows(d1, rd1, tau1, mask), _rows(d2, rd2, tau2, mask)
    lse1, lse2 = _log_sum(rows1), _log_sum(rows2)
    new_tables = dict(tables)
    if gcl:
        log_norm = math.log(big_b - 1)
        log_eps = _log(config.eps)
        est1 = jnp.logaddexp(log_eps, lse1 - log_norm)  # log(eps + g_i) on this batch
        est2 = jnp.logaddexp(log_eps, lse2 - log_norm)
        log_u1 = moving_average_log(tables["log_u1"][idx], est1, gamma)
        log_u2 = moving_average_log(tables["log_u2"][idx], est2, gamma)
        norm = big_b - 1
    else:  # MBCL: the batch's own 1 + sum_j exp(Z_ij)
        log_u1, log_u2 = jnp.logaddexp(0.0, lse1), jnp.logaddexp(0.0, lse2)
        est1, est2 = log_u1, log_u2
        norm = 1
    w1, w2 = _weights(rows1, log_u1, norm), _weights(rows2, log_u2, norm)
    # model-gradient coefficient per anchor: GCL objectives carry tau in front (tau grad log g = sum_j w grad Delta);
    # MBCL is plain cross-entropy (1/tau); v2's model gradient has no tau_i prefactor (FastCLIP's code)
    c1 = 1.0 / tau1 if (v2 or not gcl) else jnp.ones_like(tau1)
    c2 = 1.0 / tau2 if (v2 or not gcl) else jnp.ones_like(tau2)
    block1 = jnp.sum(c1[:, None] * w1 * d1) + jnp.sum(c2[:, None] * w2 * d2)

    # d log u_i / d tau_i through Z (u for eps + g): sum_j w_ij (-Z_ij / tau_i)
    zt1 = jnp.sum(jnp.where(mask, w1 * -rows1.z, 0.0), axis=1) / tau1
    zt2 = jnp.sum(jnp.where(mask, w2 * -rows2.z, 0.0), axis=1) / tau2
    if loss == "fastclip-v3":
        value = tau * 0.5 * (est1 + est2) + config.rho * tau
        tau_grad = 0.5 * (log_u1 + tau * zt1 + log_u2 + tau * zt2) + config.rho
    elif v2:
        value = 0.5 * (tau1 * (est1 + config.rho) + tau2 * (est2 + config.rho))
        tau_grad = jnp.zeros_like(tau1)
    elif gcl:
        value = tau * 0.5 * (est1 + est2)
        tau_grad = 0.5 * (zt1 + zt2)  # v0: d/dtau of 1/2 (log(eps + g1) + log(eps + g2)), no tau prefactor
    else:
        value = 0.5 * (est1 + est2)
        tau_grad = 0.5 * (zt1 + zt2)

    if v2:
        grad1 = log_u1 + config.rho + tau1 * zt1  # d/dtau_i [tau_i (log(eps + g_i) + rho)]
        grad2 = log_u2 + config.rho + tau2 * zt2
        for n, t, grad in (("1", tau1, grad1), ("2", tau2, grad2)):
            new_tables[f"tau{n}"], new_tables[f"m{n}"], new_tables[f"v{n}"] = update_v2_tau(
                config, t, tables[f"m{n}"][idx], tables[f"v{n}"][idx], lax.stop_gradient(grad), epoch, lr_tau)

    if reduction == "fastclip":
        # block 2: every anchor of the global batch against this device's candidates (the b x B similarities
        # transposed: gradient to the local features only), with the anchors' updated u (and tau for v2) gathered
        lu1, lu2 = _gather(lax.stop_gradient(log_u1), axis), _gather(lax.stop_gradient(log_u2), axis)
        t1, t2 = _gather(tau1, axis), _gather(tau2, axis)
        pos_all = jnp.sum(g1 * g2, axis=-1)  # stop-gradient features
        mask_t = mask.T  # [B, b]
        rdt1 = rdt2 = None
        if ref1 is not None:
            rpos_all = jnp.sum(r1_all * r2_all, axis=-1)
            rdt1, rdt2 = r1_all @ ref2.T - rpos_all[:, None], r2_all @ ref1.T - rpos_all[:, None]
        rows1t = _rows(s21.T - pos_all[:, None], rdt1, t1, mask_t)  # image anchors m x local texts j
        rows2t = _rows(s12.T - pos_all[:, None], rdt2, t2, mask_t)  # text anchors m x local images j
        w1t, w2t = _weights(rows1t, lu1, norm), _weights(rows2t, lu2, norm)
        ct1 = 1.0 / t1 if (v2 or not gcl) else jnp.ones_like(t1)
        ct2 = 1.0 / t2 if (v2 or not gcl) else jnp.ones_like(t2)
        block2 = jnp.sum(ct1[:, None] * w1t * rows1t.delta) + jnp.sum(ct2[:, None] * w2t * rows2t.delta)
    else:
        block2 = 0.0
    surrogate = (block1 + block2) / (2 * big_b)

    if gcl:
        # every device learns every anchor's new u (FastCLIP all-gathers u with the indices)
        all_idx = _gather(idx, axis)
        new_tables["log_u1"] = tables["log_u1"].at[all_idx].set(_gather(log_u1, axis))
        new_tables["log_u2"] = tables["log_u2"].at[all_idx].set(_gather(log_u2, axis))
        if v2:
            for key in ("tau1", "tau2", "m1", "v1", "m2", "v2"):
                new_tables[key] = tables[key].at[all_idx].set(_gather(new_tables[key], axis))
    aux = {"loss": jnp.sum(value) / big_b, "tau_grad": jnp.sum(tau_grad) / big_b if not v2 else jnp.zeros(()),
           "tables": new_tables, "anchor_weight1": jnp.sum(w1, axis=1), "anchor_weight2": jnp.sum(w2, axis=1)}
    return surrogate, aux


# ------------------------------------------------------------------------------------------------ exact objectives


def similarity_deltas(e1, e2, ref1=None, ref2=None):
    """(Delta, Delta') float[n, n] for image and text anchors (rows), minus the reference's when given; the
    diagonal is meaningless (excluded by the callers)."""
    s = e1 @ e2.T
    pos = jnp.diagonal(s)
    d1, d2 = s - pos[:, None], s.T - pos[:, None]
    if ref1 is not None:
        r = ref1 @ ref2.T
        rp = jnp.diagonal(r)
        d1, d2 = d1 - (r - rp[:, None]), d2 - (r.T - rp[:, None])
    return d1, d2


def log_g(delta, tau, eps: float):
    """log(eps + g_i), g_i = mean_{j != i} exp(delta_ij / tau_i): float[n] from float[n, n] (tau scalar or [n])."""
    n = delta.shape[0]
    tau = jnp.broadcast_to(jnp.asarray(tau, delta.dtype), (n,))
    z = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, delta / tau[:, None])
    return jnp.logaddexp(_log(eps), jax.nn.logsumexp(z, axis=1) - math.log(n - 1))


def gcl_objective(e1, e2, tau, eps: float, ref1=None, ref2=None):
    """The global contrastive loss over all n pairs given: tau/2 mean_i [log(eps + g1_i) + log(eps + g2_i)]
    (DRRho's when reference features are given). tau: a scalar."""
    d1, d2 = similarity_deltas(e1, e2, ref1, ref2)
    return tau * 0.5 * jnp.mean(log_g(d1, tau, eps) + log_g(d2, tau, eps))


def mbcl_loss(e1, e2, tau):
    """OpenCLIP's loss on a batch: the two directions' cross-entropies of the logits s_ij / tau, averaged."""
    logits = e1 @ e2.T / tau
    labels = jnp.arange(e1.shape[0])
    ce = lambda x: -jnp.mean(jax.nn.log_softmax(x, axis=1)[labels, labels])  # noqa: E731
    return 0.5 * (ce(logits) + ce(logits.T))


def pair_losses(e1, e2, tau):
    """Each pair's own contrastive loss within the set given (OpenCLIP's two cross-entropies, averaged): float[n].
    JEST-style selection scores pairs by the learner's minus the reference's."""
    logits = e1 @ e2.T / tau
    diag = jnp.diagonal(logits)
    return 0.5 * ((jax.nn.logsumexp(logits, axis=1) - diag) + (jax.nn.logsumexp(logits, axis=0) - diag))


__all__ = ["GCL_LOSSES", "LEARNABLE_GLOBAL_TAU", "contrastive_terms", "drrho_gamma_min", "gamma_at",
           "gcl_objective", "init_tables", "init_temperature", "log_g", "mbcl_loss", "moving_average_log",
           "pair_losses", "similarity_deltas", "tau_of", "update_temperature", "update_v2_tau"]
