"""Exact tests of FastCLIP's and DRRho-CLIP's losses (float64): the FCCO surrogate's gradient against the gradient of
the objective it estimates, the bias test over all batches of a small data set, every temperature rule against a
hand derivation (autodiff of the closed-form objective), the log-domain u against the linear one, DRRho's limits."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.clip import losses
from qrjax.clip.config import LOSSES, get_config, replace


def cfg(loss, **kw):
    return replace(get_config("tiny"), loss=loss, **kw)


def unit(x):
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def features(rng, n, d=5, scale=1.0):
    return rng.normal(size=(n, d)) * scale, rng.normal(size=(n, d)) * scale


def relerr(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def fresh(config, n, tau=None):
    tables = losses.init_tables(config, n, jnp.float64)
    return tables, losses.init_temperature(config if tau is None else replace(config, temperature=tau), jnp.float64)


def surrogate_grad(config, x1, x2, tables, temp, gamma=1.0, ref=(None, None), **kw):
    idx = jnp.arange(x1.shape[0])

    def f(x1, x2):
        s, aux = losses.contrastive_terms(config, unit(x1), unit(x2), idx, tables, temp, gamma, ref1=ref[0],
                                          ref2=ref[1], **kw)
        return s, aux

    return jax.grad(f, argnums=(0, 1), has_aux=True)(x1, x2)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("loss", ["fastclip-v0", "fastclip-v1", "fastclip-v3"])
def test_surrogate_gradient_is_the_log_objectives_at_gamma_one(rng, loss):
    """gamma = 1 makes u = eps + g of the batch: the surrogate's gradient is the GCL objective's (diff ~ 0)."""
    config = cfg(loss, eps=1e-6)
    x1, x2 = features(rng, 9)
    tau = 0.05
    tables, temp = fresh(config, 9, tau)
    got, aux = surrogate_grad(config, x1, x2, tables, temp)
    want = jax.grad(lambda a, b: losses.gcl_objective(unit(a), unit(b), tau, config.eps), argnums=(0, 1))(x1, x2)
    assert relerr(got, want) < 1e-13
    value = losses.gcl_objective(unit(x1), unit(x2), tau, config.eps) + (config.rho * tau if loss.endswith("v3")
                                                                          else 0)
    assert abs(float(aux["loss"]) - float(value)) < 1e-13


def test_mbcl_surrogate_is_openclips_cross_entropy(rng):
    config = cfg("openclip")
    x1, x2 = features(rng, 7)
    tables, temp = fresh(config, 7, 0.1)
    got, aux = surrogate_grad(config, x1, x2, tables, temp)
    want = jax.grad(lambda a, b: losses.mbcl_loss(unit(a), unit(b), 0.1), argnums=(0, 1))(x1, x2)
    assert relerr(got, want) < 1e-13
    assert abs(float(aux["loss"]) - float(losses.mbcl_loss(unit(x1), unit(x2), 0.1))) < 1e-13
    # and the MBCL written as the paper's log(1 + (B-1) g) form
    d1, d2 = losses.similarity_deltas(unit(x1), unit(x2))
    n = 7
    paper = 0.5 * np.mean(np.log1p((n - 1) * np.exp(losses.log_g(d1, 0.1, 0.0)))
                          + np.log1p((n - 1) * np.exp(losses.log_g(d2, 0.1, 0.0))))
    assert abs(float(aux["loss"]) - paper) < 1e-13


def test_v2_model_gradient_is_the_per_sample_log_objective_without_tau(rng):
    """v2: per-sample temperatures; the model's gradient is grad 1/2 mean[log(eps + g1_i(tau1_i)) + ...] (FastCLIP's
    code omits the tau_i prefactor)."""
    config = cfg("fastclip-v2", eps=1e-8)
    n = 8
    x1, x2 = features(rng, n)
    tables, temp = fresh(config, n)
    tables["tau1"] = jnp.asarray(rng.uniform(0.02, 0.5, n))
    tables["tau2"] = jnp.asarray(rng.uniform(0.02, 0.5, n))
    got, _ = surrogate_grad(config, x1, x2, tables, temp)

    def objective(a, b):
        d1, d2 = losses.similarity_deltas(unit(a), unit(b))
        return 0.5 * jnp.mean(losses.log_g(d1, tables["tau1"], config.eps) + losses.log_g(d2, tables["tau2"],
                                                                                               config.eps))

    want = jax.grad(objective, argnums=(0, 1))(x1, x2)
    assert relerr(got, want) < 1e-13


def test_bias_fcco_with_exact_u_is_unbiased_the_minibatch_estimator_is_not():
    """All C(N, B) batches of N = 10 pairs: the mean of FCCO's gradient estimates with the exact u (eps + g over the
    whole data set) is the full objective's gradient; with u from the batch (the mini-batch log estimator, as an
    MBCL-style loss does) it is biased, less so as B grows."""
    rng = np.random.default_rng(1)
    n, tau, eps = 10, 0.2, 1e-8
    x1, x2 = features(rng, n, scale=2.0)
    e1, e2 = unit(jnp.asarray(x1)), unit(jnp.asarray(x2))
    full = jax.grad(lambda a, b: losses.gcl_objective(a, b, tau, eps), argnums=(0, 1))(e1, e2)
    full = np.concatenate([np.asarray(g) for g in full])
    d1, d2 = losses.similarity_deltas(e1, e2)
    exact = {"log_u1": losses.log_g(d1, tau, eps), "log_u2": losses.log_g(d2, tau, eps)}
    config = cfg("fastclip-v1", eps=eps, temperature=tau)
    temp = losses.init_temperature(config, jnp.float64)
    fresh_u = losses.init_tables(config, n, jnp.float64)

    @jax.jit
    def estimate(idx, tables, gamma):
        def f(a, b):
            return losses.contrastive_terms(config, a[idx], b[idx], idx, tables, temp, gamma)[0]
        return jnp.concatenate(jax.grad(f, argnums=(0, 1))(e1, e2))

    errors = {}
    for b in (2, 3, 5, 8):
        batches = np.array(list(itertools.combinations(range(n), b)))
        # gamma = 0 keeps the exact u; gamma = 1 on fresh tables takes the batch's own estimate
        fcco = sum(np.asarray(estimate(c, exact, 0.0)) for c in batches) / len(batches)
        minibatch = sum(np.asarray(estimate(c, fresh_u, 1.0)) for c in batches) / len(batches)
        assert relerr(fcco, full) < 1e-12, b
        errors[b] = relerr(minibatch, full)
    assert errors[2] > errors[3] > errors[5] > errors[8] > 1e-3, errors


def test_u_moving_average_in_log_domain_equals_linear(rng):
    u = rng.uniform(1e-3, 10, 50)
    target = rng.uniform(1e-3, 10, 50)
    for gamma in (0.1, 0.5, 0.9):
        got = np.exp(losses.moving_average_log(jnp.log(u), jnp.log(target), gamma))
        assert relerr(got, (1 - gamma) * u + gamma * target) < 1e-14
    # unseen (-inf), tiny, inf and NaN entries restart at the target (FastCLIP's reset), as does gamma = 1
    bad = jnp.array([-jnp.inf, math.log(1e-40), jnp.inf, jnp.nan, 0.0])
    got = losses.moving_average_log(bad, jnp.full(5, 2.0), 0.3)
    np.testing.assert_allclose(np.asarray(got)[:4], 2.0)
    assert float(got[4]) == pytest.approx(math.log(0.7 + 0.3 * math.exp(2.0)))
    assert float(losses.moving_average_log(jnp.array([5.0]), jnp.array([2.0]), 1.0)[0]) == 2.0


def test_log_domain_is_finite_at_small_tau_and_equals_linear_where_linear_fits():
    """Delta = 1.9 at tau = 0.01 is e^190: linear float32 overflows; the log-domain estimator stays finite and
    equals a float64 linear-domain computation."""
    e1 = unit(jnp.array([[1.0, 0.0], [-1.0, 0.05], [0.0, 1.0]]))
    e2 = unit(jnp.array([[-0.95, 0.0], [1.0, 0.0], [0.0, -1.0]]))  # negatives far above the positives
    config = cfg("fastclip-v1", eps=1e-14, temperature=0.01)
    idx = jnp.arange(3)
    d1, _ = losses.similarity_deltas(e1, e2)
    assert float(jnp.max(d1)) > 1.8
    linear = np.log(1e-14 + np.array([np.mean([np.exp(float(d1[i, j]) / 0.01) for j in range(3) if j != i])
                                      for i in range(3)]))
    with jax.enable_x64(False):
        tables, temp = losses.init_tables(config, 3), losses.init_temperature(config)
        with np.errstate(over="ignore"):
            assert not np.all(np.isfinite(np.exp(np.asarray(d1, np.float32) / np.float32(0.01))))
        f1, f2 = (jnp.asarray(np.asarray(e, np.float32)) for e in (e1, e2))
        s, aux = losses.contrastive_terms(config, f1, f2, jnp.arange(3), tables, temp, 1.0)
        assert np.isfinite(float(s)) and np.all(np.isfinite(np.asarray(aux["tables"]["log_u1"])))
        assert relerr(aux["tables"]["log_u1"], linear) < 1e-5
    tables, temp = fresh(config, 3)
    _, aux = losses.contrastive_terms(config, e1, e2, idx, tables, temp, 1.0)
    assert relerr(aux["tables"]["log_u1"], linear) < 1e-14


def test_u_tracks_the_moving_average_over_steps(rng):
    """Two steps with gamma 0.3 on the same pairs: u = 0.7 (eps + g_step1) + 0.3 (eps + g_step2), computed linearly."""
    config = cfg("fastclip-v0", eps=1e-6)
    n = 6
    tables, temp = fresh(config, 20, 0.1)
    idx = jnp.array([3, 7, 1, 19, 0, 12])
    lin = []
    for step in range(2):
        x1, x2 = features(rng, n)
        e1, e2 = unit(jnp.asarray(x1)), unit(jnp.asarray(x2))
        d1, _ = losses.similarity_deltas(e1, e2)
        lin.append(np.array([np.mean([np.exp(float(d1[i, j]) / 0.1) for j in range(n) if j != i])
                             for i in range(n)]) + 1e-6)
        _, aux = losses.contrastive_terms(config, e1, e2, idx, tables, temp, 1.0 if step == 0 else 0.3)
        tables = aux["tables"]
    want = 0.7 * lin[0] + 0.3 * lin[1]
    assert relerr(np.exp(np.asarray(tables["log_u1"])[np.asarray(idx)]), want) < 1e-14
    assert np.all(np.isneginf(np.delete(np.asarray(tables["log_u1"]), np.asarray(idx))))


# ------------------------------------------------------------------------------------------------ temperature rules


def _tau_grad(config, x1, x2, tau):
    tables, temp = fresh(config, x1.shape[0], tau)
    idx = jnp.arange(x1.shape[0])
    return losses.contrastive_terms(config, unit(x1), unit(x2), idx, tables, temp, 1.0)[1]["tau_grad"]


def test_v0_tau_gradient(rng):
    """v0: d/dtau of 1/2 mean[log(eps + g1) + log(eps + g2)] (no tau prefactor, no rho)."""
    config = cfg("fastclip-v0", eps=1e-6)
    x1, x2 = map(jnp.asarray, features(rng, 8))

    def objective(tau):
        d1, d2 = losses.similarity_deltas(unit(x1), unit(x2))
        return 0.5 * jnp.mean(losses.log_g(d1, tau, config.eps) + losses.log_g(d2, tau, config.eps))

    for tau in (0.03, 0.2):
        assert relerr(_tau_grad(config, x1, x2, tau), jax.grad(objective)(tau)) < 1e-12


def test_v3_tau_gradient_is_the_kl_dro_duals(rng):
    """v3: d/dtau of tau/2 mean[log(eps + g1) + log(eps + g2)] + rho tau."""
    config = cfg("fastclip-v3", eps=1e-6, rho=6.5)
    x1, x2 = map(jnp.asarray, features(rng, 8))

    def objective(tau):
        return losses.gcl_objective(unit(x1), unit(x2), tau, config.eps) + config.rho * tau

    for tau in (0.03, 0.2):
        assert relerr(_tau_grad(config, x1, x2, tau), jax.grad(objective)(tau)) < 1e-12


def test_openclip_logit_scale_gradient(rng):
    config = cfg("openclip")
    x1, x2 = map(jnp.asarray, features(rng, 8))
    want = jax.grad(lambda tau: losses.mbcl_loss(unit(x1), unit(x2), tau))(0.07)
    assert relerr(_tau_grad(config, x1, x2, 0.07), want) < 1e-12


def test_kl_dro_dual_identity():
    """The dual behind v3: max_{p: KL(p||unif) <= rho} sum_j p_j Delta_j = min_tau tau log mean exp(Delta/tau)
    + tau rho (solved by bisection on tau against the primal's exponential tilting)."""
    rng = np.random.default_rng(3)
    delta = rng.normal(size=12)
    rho = 0.3
    taus = np.exp(np.linspace(np.log(1e-3), np.log(1e3), 200001))
    z = delta[None] / taus[:, None]
    top = z.max(axis=1)
    dual = np.min(taus * (top + np.log(np.mean(np.exp(z - top[:, None]), axis=1))) + taus * rho)
    # primal: p ∝ exp(Delta / t) with t chosen so that KL(p || uniform) = rho
    lo, hi = 1e-4, 1e4
    for _ in range(200):
        t = math.sqrt(lo * hi)
        p = np.exp((delta - delta.max()) / t)
        p /= p.sum()
        kl = float(np.sum(p * np.log(p * len(delta))))
        lo, hi = (t, hi) if kl > rho else (lo, t)
    assert abs(float(p @ delta) - dual) < 1e-6


def test_v2_tau_gradient_and_rule(rng):
    """v2: per-sample d/dtau_i [tau_i (log(eps + g_i) + rho)], then the Adam-like rule by hand (numpy)."""
    config = cfg("fastclip-v2", eps=1e-6, rho=7.0)
    n = 6
    x1, x2 = map(jnp.asarray, features(rng, n))
    tables, temp = fresh(config, n)
    tau1 = jnp.asarray(rng.uniform(0.05, 0.3, n))
    tables["tau1"], tables["tau2"] = tau1, jnp.asarray(rng.uniform(0.05, 0.3, n))
    m0, v0 = rng.normal(size=n) * 0.1, rng.uniform(0.1, 1.0, n)
    tables["m1"], tables["v1"] = jnp.asarray(m0), jnp.asarray(v0)
    lr, epoch = 0.01, 2
    _, aux = losses.contrastive_terms(config, unit(x1), unit(x2), jnp.arange(n), tables, temp, 1.0, epoch=epoch,
                                      lr_tau=lr)

    d1, _ = losses.similarity_deltas(unit(x1), unit(x2))
    grad = np.array([jax.grad(lambda t, i=i: t * (losses.log_g(d1, jnp.full(n, t), config.eps)[i] + config.rho))(
        tau1[i]) for i in range(n)])
    g = np.clip(grad, -5, 5)
    m = 0.9 * m0 + 0.1 * g
    v = 0.999 * v0 + 0.001 * g * g
    m_hat, v_hat = m / (1 - 0.9 ** 3), v / (1 - 0.999 ** 3)
    want = np.clip(np.asarray(tau1) - lr * m_hat / (np.sqrt(v_hat) + 1e-8), 0.01, 1.0)
    assert relerr(aux["tables"]["m1"], m) < 1e-12 and relerr(aux["tables"]["v1"], v) < 1e-12
    assert relerr(aux["tables"]["tau1"], want) < 1e-12
    # epoch 0: beta1 = beta2 = 0, so the step is lr * sign(grad) (up to eps)
    _, aux0 = losses.contrastive_terms(config, unit(x1), unit(x2), jnp.arange(n), tables, temp, 1.0, epoch=0,
                                       lr_tau=lr)
    step0 = np.asarray(tau1) - np.asarray(aux0["tables"]["tau1"])
    np.testing.assert_allclose(step0, lr * np.sign(g) * np.abs(g) / (np.abs(g) + 1e-8), rtol=1e-12)


def test_global_temperature_adam_clamp_and_step_thresh():
    config = cfg("fastclip-v3", learning_rate=0.5, lr_tau=0.2, tau_step_thresh=0.03, warmup_steps=0,
                 end_learning_rate=0.5, temperature=0.035)
    from qrjax.clip.train import tau_learning_rate

    temp = losses.init_temperature(config)
    assert float(tau_learning_rate(config, 0)) == float(tau_learning_rate(config, 5)) == pytest.approx(0.2)
    # the first Adam step moves theta by lr (bias-corrected m / sqrt(v) = sign of the gradient)
    new = losses.update_temperature(config, temp, jnp.asarray(-1.0), 0, 0.2)
    assert float(new["theta"]) == pytest.approx(float(temp["theta"]) + 0.2, rel=1e-5)
    # tau = exp(-theta) is now 0.0287 <= 0.03: lr_tau x 1/3 from the next step on
    assert math.exp(-float(new["theta"])) <= 0.03 and bool(new["dropped"]) and not bool(temp["dropped"])
    newer = losses.update_temperature(config, new, jnp.asarray(-1.0), 1, 0.2)
    b2 = config.beta2
    m = 0.9 * float(new["m"]) + 0.1 * -1.0
    v = b2 * float(new["v"]) + (1 - b2)
    step = 0.2 / 3 * (m / (1 - 0.81)) / (math.sqrt(v / (1 - b2 ** 2)) + 1e-6)
    assert float(newer["theta"]) == pytest.approx(float(new["theta"]) - step, rel=1e-5)
    # the clamp: theta <= log(1 / tau_min) = log 100, however hard the gradient pushes
    for i in range(100):
        newer = losses.update_temperature(config, newer, jnp.asarray(-1.0), 2 + i, 0.2)
    assert float(newer["theta"]) == pytest.approx(math.log(100), rel=1e-6)
    # constant-temperature losses never move it
    frozen = cfg("fastclip-v1")
    t = losses.init_temperature(frozen)
    assert losses.update_temperature(frozen, t, jnp.asarray(5.0), 0, 0.1) is t


def test_gamma_schedules():
    config = cfg("fastclip-v3", num_samples=100, batch_size=10, steps=200, gamma_min=0.2, gamma_decay_epochs=10)
    assert config.epochs == 20
    got = [float(losses.gamma_at(config, e)) for e in range(20)]
    assert got[0] == 1.0
    for e in range(1, 10):
        assert got[e] == pytest.approx(0.5 * (1 + math.cos(math.pi * e / 10)) * 0.8 + 0.2, rel=1e-6)
    assert got[10:] == [pytest.approx(0.2)] * 10
    # default decay: half the epochs
    assert float(losses.gamma_at(replace(config, gamma_decay_epochs=0), 10)) == pytest.approx(0.2)
    # DRRho's rule: gamma_min = min(1, 4.177 E^-0.7265): E = 7 -> 1.0, 17 -> 0.53, 37 -> 0.30
    assert losses.drrho_gamma_min(7) == 1.0
    assert losses.drrho_gamma_min(17) == pytest.approx(0.53, abs=0.005)
    assert losses.drrho_gamma_min(37) == pytest.approx(0.30, abs=0.005)
    constant = replace(config, gamma_rule="constant", gamma_min=0.4)
    assert [float(losses.gamma_at(constant, e)) for e in (0, 1, 5)] == [1.0, pytest.approx(0.4), pytest.approx(0.4)]


# ------------------------------------------------------------------------------------------------ DRRho


def test_drrho_with_a_constant_reference_is_gcl(rng):
    """A reference whose similarities are all equal (every image and text the same unit vector) has Delta_ref = 0:
    DRRho's estimator is GCL's, exactly."""
    x1, x2 = features(rng, 8)
    ref = jnp.tile(unit(jnp.asarray(rng.normal(size=(1, 3)))), (8, 1))
    drrho, gcl = cfg("drrho", eps=1e-4, temperature=0.05), cfg("fastclip-v1", eps=1e-4, temperature=0.05)
    tables, temp = fresh(drrho, 8)
    got, aux = surrogate_grad(drrho, x1, x2, tables, temp, gamma=1.0, ref=(ref, ref))
    want, aux_g = surrogate_grad(gcl, x1, x2, tables, temp, gamma=1.0)
    # (Delta_ref is 0 up to the last bit: r.r by a matmul and by a sum round differently)
    assert relerr(got, want) < 1e-14
    assert abs(float(aux["loss"]) - float(aux_g["loss"])) < 1e-15


def test_drrho_gradient_is_the_excess_objectives(rng):
    x1, x2 = features(rng, 8)
    r1, r2 = map(lambda x: unit(jnp.asarray(x)), features(rng, 8, d=3))
    config = cfg("drrho", eps=1e-4, temperature=0.05)
    tables, temp = fresh(config, 8)
    got, _ = surrogate_grad(config, x1, x2, tables, temp, ref=(r1, r2))
    want = jax.grad(lambda a, b: losses.gcl_objective(unit(a), unit(b), 0.05, 1e-4, r1, r2), argnums=(0, 1))(x1, x2)
    assert relerr(got, want) < 1e-13


def test_drrho_with_reference_equal_to_target_weights_uniformly(rng):
    x1, x2 = map(lambda x: unit(jnp.asarray(x)), features(rng, 8))
    config = cfg("drrho", eps=1e-4, temperature=0.01)
    tables, temp = fresh(config, 8)
    _, aux = losses.contrastive_terms(config, x1, x2, jnp.arange(8), tables, temp, 1.0, ref1=x1, ref2=x2)
    # Delta - Delta_ref = 0: every negative weighs exp(0) / ((B - 1) u) with u = eps + 1
    np.testing.assert_allclose(np.asarray(aux["anchor_weight1"]), 1 / (1 + 1e-4), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(aux["tables"]["log_u1"]), math.log1p(1e-4), rtol=0, atol=1e-16)


def test_drrho_limits_of_tau(rng):
    """tau -> infinity: uniform weights over the negatives; tau -> 0: all weight on the argmax of Delta - Delta_ref."""
    x1, x2 = map(lambda x: unit(jnp.asarray(x)), features(rng, 6))
    r1, r2 = map(lambda x: unit(jnp.asarray(x)), features(rng, 6))
    d1, _ = losses.similarity_deltas(x1, x2, r1, r2)
    z = np.where(np.eye(6, dtype=bool), -np.inf, np.asarray(d1))
    for tau, check in ((1e6, lambda p: np.allclose(p[~np.eye(6, dtype=bool)].reshape(6, 5), 1 / 5, atol=1e-5)),
                       (1e-4, lambda p: np.allclose(p.argmax(1), z.argmax(1)) and np.all(p.max(1) > 0.99))):
        lz = np.where(np.eye(6, dtype=bool), -np.inf, np.asarray(d1) / tau)
        p = np.exp(lz - lz.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert check(p)


def test_every_loss_runs_and_is_finite(rng):
    x1, x2 = features(rng, 8)
    ref = tuple(unit(jnp.asarray(x)) for x in features(rng, 8, d=3))
    for loss in LOSSES:
        config = cfg(loss)
        tables, temp = fresh(config, 8)
        g, aux = surrogate_grad(config, x1, x2, tables, temp, ref=ref if loss == "drrho" else (None, None))
        assert all(np.all(np.isfinite(np.asarray(x))) for x in g), loss
        assert np.isfinite(float(aux["loss"])), loss
