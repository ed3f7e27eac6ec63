"""Differential privacy: accounting golden values, mechanism identities, DP-SGD against NumPy,
the wiring into simulate, and the leakage attacks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax import privacy as P
from fljax.client import DPSGD, make_client_update, plan_local_work
from fljax.simulate import select_poisson
from tests.oracle import logistic_params

# ------------------------------------------------------------------------------ accounting


@pytest.mark.parametrize("accountant, expected", [("rdp", 5.632), ("pld", 5.193)])
def test_epsilon_golden_values(accountant, expected):
    """Poisson q = 0.01, z = 1.1, 10,000 rounds, delta = 1e-5 (the issue's golden values)."""
    eps = P.epsilon(1.1, 10_000, 1e-5, sampling_rate=0.01, accountant=accountant)
    assert round(eps, 3) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(count=10_000, sampling_rate=0.01, accountant="rdp"),
        dict(count=100, accountant="rdp"),  # cross-silo: every client, every round
        dict(count=200, sampling_rate=0.1, accountant="pld"),
        dict(count=50, sampling_rate=0.1, sampling="fixed", population=100),
    ],
)
def test_calibration_hits_the_target_within_one_percent(kwargs):
    target, delta = 3.0, 1e-5
    count = kwargs.pop("count")
    z = P.calibrate_noise_multiplier(target, delta, count, **kwargs)
    eps = P.epsilon(z, count, delta, **kwargs)
    assert eps <= target * 1.0001
    assert eps >= 0.99 * target


@pytest.mark.parametrize("target", [1e-6, 1e-3])
def test_an_unreachable_target_epsilon_is_refused_not_reported_as_zero(target):
    """Calibrating to 1e-6 used to land on z ~ 1.6e5 where the RDP bound is 0, and the run
    reported epsilon 0.0 (and 1e-3 landed on the same z)."""
    with pytest.raises(ValueError, match=f"target_epsilon={target:g} is out of reach"):
        P.calibrate_noise_multiplier(target, 1e-5, 10, sampling_rate=0.5)


def test_cross_silo_client_level_dp_is_weak():
    """q = 1, z = 1, 100 rounds: epsilon ~ 96 (the issue's motivation for record-level DP)."""
    assert 95 < P.epsilon(1.0, 100, 1e-5) < 97


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(delta=1.0), "delta"),
        (dict(delta=0.0), "delta"),
        (dict(sampling_rate=0.0), "sampling rate"),
        (dict(sampling_rate=1.5), "sampling rate"),
        (dict(noise_multiplier=-1.0), "noise_multiplier"),
        (dict(accountant="moments"), "accountant"),
    ],
)
def test_impossible_budgets_fail_clearly(kwargs, field):
    with pytest.raises(ValueError, match=field):
        P.validate_budget(**kwargs)


def test_bad_privacy_configs_fail_clearly():
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        P.get("central_dp")
    with pytest.raises(ValueError, match="epsilon must be"):
        P.get("central_dp", target_epsilon=0.0)
    with pytest.raises(ValueError, match="delta must be"):
        P.get("dp_sgd", noise_multiplier=1.0, delta=1.0)
    with pytest.raises(ValueError, match="sampling rate"):
        P.epsilon(1.0, 10, 1e-5, sampling_rate=2.0)
    with pytest.raises(ValueError, match=r"unknown privacy mechanism.*central_dp"):
        P.get("gaussian")
    with pytest.raises(ValueError, match="count_noise > noise_multiplier / 2"):
        P.adaptive_update_noise(1.0, 0.4)


# ------------------------------------------------------------------------------ mechanisms


def _deltas(k=6, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.array([0.1, 0.5, 1.0, 2.0, 5.0, 20.0])[:k, None]
    return {"w": jnp.asarray(rng.normal(size=(k, 4)) * scales, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(k, 2)), jnp.float32)}  # fmt: skip


def test_clipped_sum_matches_numpy_and_every_clipped_update_is_within_c():
    deltas, c, m = _deltas(), 1.5, 4.0
    weights = jnp.array([1.0, 0.0, 3.0, 1.0, 1.0, 2.0])  # client 1 not included
    agg = P.gaussian_sum_aggregator(c, 0.0, m)
    out, _ = agg.update(deltas, agg.init(None), key=jax.random.key(0), weights=weights)
    flat = np.concatenate([np.asarray(deltas["w"]), np.asarray(deltas["b"])], axis=1)
    norms = np.linalg.norm(flat, axis=1)
    clipped = flat * np.minimum(1.0, c / norms)[:, None]
    assert np.all(np.linalg.norm(clipped, axis=1) <= c * (1 + 1e-6))
    expected = (clipped * (np.asarray(weights) > 0)[:, None]).sum(0) / m  # each counts once
    got = np.concatenate([np.asarray(out["w"]), np.asarray(out["b"])])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for d in jax.vmap(lambda d: fljax.client.clip_by_norm(d, c)[0])(deltas)["w"]:
        assert float(jnp.linalg.norm(d)) <= c * (1 + 1e-6)


def test_noise_std_is_z_c_over_expected_cohort():
    z, c, m = 1.3, 0.7, 5.0
    agg = P.gaussian_sum_aggregator(c, z, m)
    zeros = {"w": jnp.zeros((3, 500))}
    draw = jax.vmap(lambda k: agg.update(zeros, agg.init(None), key=k, weights=jnp.ones(3))[0]["w"])
    samples = np.asarray(draw(jax.random.split(jax.random.key(1), 400))).ravel()  # 200k values
    assert abs(samples.mean()) < 5 * z * c / m / math.sqrt(samples.size)
    np.testing.assert_allclose(samples.std(), z * c / m, rtol=0.01)


def test_adaptive_clipping_follows_the_geometric_update():
    """Andrew et al. (2021): C <- C exp(-eta (b - gamma)), b = fraction unclipped (noise ~ 0)."""
    deltas = _deltas()
    flat_norms = np.linalg.norm(
        np.concatenate([np.asarray(deltas["w"]), np.asarray(deltas["b"])], axis=1), axis=1
    )
    c0, eta, gamma, m = 2.0, 0.2, 0.5, 6.0
    adaptive = P.AdaptiveClipping(gamma, eta, count_noise=1e-6)
    agg = P.gaussian_sum_aggregator(c0, 0.0, m, adaptive)
    state = agg.init(None)
    _, state = agg.update(deltas, state, key=jax.random.key(0), weights=jnp.ones(6))
    b = np.mean(flat_norms <= c0)
    np.testing.assert_allclose(float(state.clip_norm), c0 * np.exp(-eta * (b - gamma)), rtol=1e-5)
    # Theorem 1: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
    np.testing.assert_allclose(P.adaptive_update_noise(1.0, 1.0), (1 - 0.25) ** -0.5)
    # Repeated rounds move C toward the median norm.
    for _ in range(60):
        _, state = agg.update(deltas, state, key=jax.random.key(0), weights=jnp.ones(6))
    assert np.sort(flat_norms)[2] <= float(state.clip_norm) <= np.sort(flat_norms)[3]


def test_local_dp_clips_and_noises_each_client():
    t = P.local_gaussian(1.0, 0.0)
    out, _ = t.update({"w": jnp.full((4,), 3.0)}, t.init(None), key=jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out["w"]), np.full(4, 0.5), rtol=1e-6)
    t = P.local_gaussian(2.0, 0.5)
    out, _ = t.update({"w": jnp.zeros((20_000,))}, t.init(None), key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(out["w"]).std(), 1.0, rtol=0.03)


def test_poisson_selection_rates_and_cap():
    n, q, cap = 40, 0.2, 16
    ids, valid = jax.vmap(lambda k: select_poisson(k, n, q, cap))(
        jax.random.split(jax.random.key(0), 4000)
    )
    ids, valid = np.asarray(ids), np.asarray(valid)
    assert all(len(set(r)) == cap for r in ids[:50])  # distinct ids per round
    counts = np.zeros(n)
    for r, v in zip(ids, valid, strict=True):
        counts[r[v]] += 1
    np.testing.assert_allclose(counts / 4000, q, atol=0.03)  # every client joins w.p. q
    np.testing.assert_allclose(valid.sum(1).mean(), n * q, rtol=0.03)
    assert P.cohort_cap(n, q, rounds=100, delta=1e-5) <= n


# ------------------------------------------------------------------------------ DP-SGD


def _per_example_reference(w, b, x, y, k):
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p - np.eye(k)[y]
    return np.einsum("nd,nk->ndk", x, g), g  # per-example dW, db


def test_dp_sgd_step_is_the_mean_of_clipped_per_example_gradients():
    """Abadi et al. (2016), Alg. 1 with z = 0 and q = 1 (B >= n): one step of SGD on
    sum_i clip(g_i, C) / n; compared with NumPy per-example gradients."""
    rng = np.random.default_rng(0)
    n, d, k, c, lr = 9, 3, 3, 0.3, 0.5
    x = rng.normal(size=(n, d)).astype(np.float32) * 2
    y = rng.integers(0, k, n).astype(np.int32)
    model = fljax.models.get("logistic", num_classes=k)
    params = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    plan = plan_local_work(np.array([n]), n, local_epochs=1, local_steps=None, batch_size=n)
    update = make_client_update(
        model, "classification", optax.sgd(lr), plan, dp_sgd=DPSGD(c, 0.0, n)
    )
    out = update(params, jnp.asarray(x), jnp.asarray(y), jnp.int32(n), jax.random.key(1))
    w, b = logistic_params(params)
    gw, gb = _per_example_reference(w, b, x.astype(np.float64), y, k)
    norms = np.sqrt((gw**2).sum((1, 2)) + (gb**2).sum(1))
    s = np.minimum(1.0, c / norms)
    assert np.any(s < 1)  # clipping is active
    exp_w = -lr * (gw * s[:, None, None]).sum(0) / n
    exp_b = -lr * (gb * s[:, None]).sum(0) / n
    dw, db = logistic_params(out.delta)
    np.testing.assert_allclose(dw, exp_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db, exp_b, rtol=1e-4, atol=1e-6)


def test_dp_sgd_samples_records_with_rate_b_over_n_and_noises_the_sum():
    """With a zero model gradient (all-equal inputs and zero features), the step is pure noise
    / (q n); its std is z C / B. Sampled counts follow Binomial(n, B / n)."""
    n, b, z, c, lr = 40, 8, 2.0, 0.5, 1.0
    x = jnp.zeros((n, 5))
    y = jnp.zeros((n,), jnp.int32)
    model = fljax.models.get("logistic", num_classes=2)
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0), x[:1]))
    plan = plan_local_work(np.array([n]), n, local_epochs=None, local_steps=1, batch_size=b)
    update = make_client_update(model, "classification", optax.sgd(lr), plan,
                                dp_sgd=DPSGD(c, z, b))  # fmt: skip
    deltas = jax.vmap(lambda k: update(params, x, y, jnp.int32(n), k).delta["Dense_0"]["kernel"])(
        jax.random.split(jax.random.key(3), 2000)
    )
    # Gradient of the bias is nonzero (p - onehot), the kernel's is exactly zero (x = 0):
    np.testing.assert_allclose(np.asarray(deltas).std(), lr * z * c / b, rtol=0.03)


# ------------------------------------------------------------------------------ simulate


def _run(fed, privacy, algo=None, rounds=6, k=None, **kw):
    algo = algo or fljax.algorithms.get("fedavg", client_lr=0.2, local_epochs=1, batch_size=16)
    model = fljax.models.get("logistic", num_classes=2)
    return fljax.simulate(algo, model, fed, rounds=rounds, clients_per_round=k or fed.num_clients,
                          eval_every=3, seed=0, privacy=privacy, **kw)  # fmt: skip


def test_noiseless_unclipped_dp_fedavg_equals_uniform_fedavg(breast_cancer_fed):
    """z = 0, C = inf, every client every round: sum / m is FedAvg's unweighted mean."""
    fed = breast_cancer_fed
    algo = fljax.algorithms.get(
        "fedavg", client_lr=0.2, local_epochs=1, batch_size=16, weighting="uniform"
    )
    plain = _run(fed, None, algo)
    dp = _run(fed, P.get("central_dp", clip_norm=1e9, noise_multiplier=0.0), algo)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(dp.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert dp.history[-1]["epsilon"] == math.inf


def test_reported_epsilon_equals_dp_accounting(breast_cancer_fed):
    fed = breast_cancer_fed
    result = _run(fed, P.get("central_dp", clip_norm=1.0, noise_multiplier=1.1), k=2, rounds=6)
    n = fed.num_clients
    assert result.selected.shape[1] > 2  # padded Poisson cohort
    for entry in result.history:
        info = entry["privacy"]
        assert info["relation"] == "add_remove" and info["accountant"] == "rdp"
        assert info["delta_cap"] <= 1e-5 / 100  # the cap's cost under RDP stays negligible
        expected = P.epsilon(1.1, entry["round"], 1e-5, sampling_rate=2 / n)
        assert entry["epsilon"] == pytest.approx(expected)
    eps = [e["epsilon"] for e in result.history]
    assert eps == sorted(eps) and eps[0] == 0.0
    contributed = result.contributed.sum(1)
    assert contributed.min() >= 0 and contributed.max() <= result.selected.shape[1]
    # Fixed-size sampling is accounted under replace-one with sensitivity 2C.
    fixed = _run(
        fed, P.get("central_dp", clip_norm=1.0, noise_multiplier=1.1, sampling="fixed"), k=2
    )
    info = fixed.history[-1]["privacy"]
    assert info["relation"] == "replace_one"
    assert fixed.history[-1]["epsilon"] == pytest.approx(
        P.epsilon(0.55, 6, 1e-5, sampling_rate=2 / n, sampling="fixed", population=n)
    )


def test_target_epsilon_is_met_at_the_last_round(breast_cancer_fed):
    for name in ("central_dp", "local_dp", "dp_sgd"):
        result = _run(breast_cancer_fed, P.get(name, clip_norm=1.0, target_epsilon=4.0))
        eps = result.history[-1]["epsilon"]
        assert 0.98 * 4.0 <= eps <= 4.0 * 1.0001, (name, eps)


def test_record_level_accounting_is_per_client(breast_cancer_fed):
    fed = breast_cancer_fed
    result = _run(fed, P.get("dp_sgd", clip_norm=1.0, noise_multiplier=1.0), rounds=6)
    info = result.history[-1]["privacy"]
    assert info["unit"] == "record" and info["relation"] == "add_remove"
    n = np.asarray(fed.train.num_examples)
    for i, eps in enumerate(info["epsilon_per_client"]):
        steps = 6 * math.ceil(n[i] / 16)
        assert eps == pytest.approx(P.epsilon(1.0, steps, 1e-5, sampling_rate=min(1, 16 / n[i])))
    assert result.history[-1]["epsilon"] == max(info["epsilon_per_client"])


def test_privacy_refuses_what_it_cannot_protect(breast_cancer_fed):
    fed = breast_cancer_fed
    dp = P.get("central_dp", noise_multiplier=1.0)
    for name in ("scaffold", "fednova"):
        algo = fljax.algorithms.get(name, client_lr=0.1, local_epochs=1, batch_size=16)
        with pytest.raises(ValueError, match=name):
            _run(fed, dp, algo)
    full_batch = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=None)
    with pytest.raises(ValueError, match="batch_size"):
        _run(fed, P.get("dp_sgd", noise_multiplier=1.0), full_batch)
    with pytest.raises(ValueError, match="max_cohort"):
        _run(fed, P.get("central_dp", noise_multiplier=1.0, max_cohort=1), k=3)


def test_dp_sgd_runs_centralized_as_the_pooled_baseline(breast_cancer_fed):
    algo = fljax.algorithms.get("centralized", client_lr=0.2, local_epochs=1, batch_size=32)
    result = _run(breast_cancer_fed, P.get("dp_sgd", clip_norm=1.0, noise_multiplier=1.0), algo)
    n = int(np.sum(breast_cancer_fed.train.num_examples))
    expected = P.epsilon(1.0, 6 * math.ceil(n / 32), 1e-5, sampling_rate=32 / n)
    assert result.history[-1]["epsilon"] == pytest.approx(expected)


# ------------------------------------------------------------------------------ attacks


def test_membership_metrics_extremes():
    perfect = P.membership_metrics([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert perfect.auc == 1.0 and perfect.advantage == 1.0
    rng = np.random.default_rng(0)
    chance = P.membership_metrics(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(chance.auc - 0.5) < 0.03 and chance.advantage < 0.06


def _overfit_client(seed=0, n=20, d=400):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, d)).astype(np.float32)
    y = rng.integers(0, 2, 2 * n).astype(np.int32)  # random labels: pure memorization
    return (x[:n], y[:n]), (x[n:], y[n:])


def test_loss_threshold_and_gradient_alignment_attacks_detect_members():
    members, nonmembers = _overfit_client()
    model = fljax.models.get("logistic", num_classes=2)
    params0 = model.init(jax.random.key(0), jnp.asarray(members[0][:1]))
    n = len(members[1])
    plan = plan_local_work(np.array([n]), n, local_epochs=30, local_steps=None, batch_size=None)
    update = make_client_update(model, "classification", optax.sgd(0.5), plan)
    out = update(params0, jnp.asarray(members[0]), jnp.asarray(members[1]), jnp.int32(n),
                 jax.random.key(1))  # fmt: skip
    trained = jax.tree.map(jnp.add, params0, out.delta)
    loss_attack = P.loss_threshold_mia(model, trained, members, nonmembers)
    align = P.gradient_alignment_mia(model, params0, out.delta, members, nonmembers)
    # Non-members with random labels are right half the time, and then confidently so: the
    # loss attack's advantage shows in the tail; the update-based attack is much stronger.
    assert loss_attack.auc > 0.55 and loss_attack.advantage > 0.3
    assert align.auc > 0.85
    # Heavy noise on the update (local DP) removes the alignment signal.
    noisy = jax.tree.map(
        lambda d, e: d + 100.0 * e, out.delta,
        fljax.client.gaussian_noise_like(jax.random.key(2), out.delta, 1.0),
    )  # fmt: skip
    assert P.gradient_alignment_mia(model, params0, noisy, members, nonmembers).auc < 0.75


def test_gradient_inversion_recovers_a_single_record():
    """Geiping et al. (2020) on an MLP with one record and its label known: the reconstruction
    of the patient's features from the update is near exact."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 6)), jnp.float32)
    y = jnp.array([1], jnp.int32)
    model = fljax.models.get("mlp", num_classes=2, hidden=(16,))
    params = model.init(jax.random.key(0), x)
    loss_fn = fljax.client.batch_loss_fn("classification")
    grad = jax.grad(lambda p: loss_fn(model.apply(p, x), y, jnp.ones((1,), bool)))(params)
    x_hat = P.invert_gradients(model, params, grad, y, x.shape, jax.random.key(1), steps=1500,
                               learning_rate=0.05)  # fmt: skip
    mse, psnr = P.reconstruction_error(x, x_hat)
    assert psnr > 30, (mse, psnr)
    noisy = jax.tree.map(
        lambda g, e: g + e, grad, fljax.client.gaussian_noise_like(jax.random.key(2), grad, 1.0)
    )
    x_noisy = P.invert_gradients(model, params, noisy, y, x.shape, jax.random.key(1), steps=1500,
                                 learning_rate=0.05)  # fmt: skip
    assert P.reconstruction_error(x, x_noisy)[1] < psnr - 10
