"""Every algorithm against a NumPy float64 reference of its paper's equations (softmax
regression, full-batch local steps, K < C clients so persistent state is exercised)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from tests.oracle import NpFed, add, local_gd, logistic_params, scale, wmean, zeros_like

LR, EPOCHS, ROUNDS, K = 0.3, 3, 4, 3


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    sizes = (4, 12, 7, 9, 5)
    xs = [rng.normal(size=(s, 3)) + i * 0.3 for i, s in enumerate(sizes)]
    ys = [rng.integers(0, 3, s) for s in sizes]
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=3)
    model = fljax.models.get("logistic", num_classes=3)
    params0 = model.init(jax.random.key(2), fed.sample())
    return fed, model, params0, NpFed(fed, 3)


def _run(tiny, name, rounds=ROUNDS, k=K, **kw):
    fed, model, params0, _ = tiny
    kw.setdefault("client_lr", LR)
    kw.setdefault("batch_size", None)
    if "local_steps" not in kw:
        kw.setdefault("local_epochs", EPOCHS)
    else:
        kw["local_epochs"] = None
    algo = fljax.algorithms.get(name, **kw)
    return fljax.simulate(
        algo, model, fed, rounds=rounds, clients_per_round=k, seed=3, params=params0, eval_every=2
    )


def _close(result_params, ref, tol=2e-4):
    w, b = logistic_params(result_params)
    np.testing.assert_allclose(w, ref[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(b, ref[1], rtol=tol, atol=tol)


def _start(tiny):
    return tuple(logistic_params(tiny[2]))


def _fedavg_deltas(npf, x, ids, grad_extra=None, steps=None):
    deltas = []
    for j, c in enumerate(ids):

        def g(p, c=c):
            gr = npf.grad(c, p)
            return gr if grad_extra is None else add(gr, grad_extra(c, p))

        y = local_gd(x, EPOCHS if steps is None else steps[j], LR, g)
        deltas.append(add(y, x, -1.0))
    return deltas


def test_fedavgm_server_momentum(tiny):
    """Hsu et al. (2019) FedAvgM: v <- beta v + mean(delta); x <- x + eta v."""
    res = _run(tiny, "fedavgm", server_lr=0.8, server_momentum=0.7)
    npf, x = tiny[3], _start(tiny)
    v = zeros_like(x)
    for r in range(ROUNDS):
        ids = res.selected[r]
        d = wmean(_fedavg_deltas(npf, x, ids), npf.n[ids])
        v = add(scale(v, 0.7), d)
        x = add(x, v, 0.8)
    _close(res.params, x)


@pytest.mark.parametrize("kind", ["adagrad", "adam", "yogi"])
def test_fedopt_matches_reddi_algorithm_2(tiny, kind):
    """Reddi et al. (2021) Alg. 2: m = b1 m + (1-b1) D; v per kind; x += eta m / (sqrt v + tau),
    v_{-1} = tau^2, no bias correction."""
    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-2
    res = _run(tiny, f"fed{kind}", server_lr=eta, beta1=b1, beta2=b2, tau=tau)
    npf, x = tiny[3], _start(tiny)
    m = zeros_like(x)
    v = tuple(np.full_like(a, tau**2) for a in x)
    for r in range(ROUNDS):
        ids = res.selected[r]
        d = wmean(_fedavg_deltas(npf, x, ids), npf.n[ids])
        m = tuple(b1 * mi + (1 - b1) * di for mi, di in zip(m, d, strict=True))
        if kind == "adagrad":
            v = tuple(vi + di**2 for vi, di in zip(v, d, strict=True))
        elif kind == "adam":
            v = tuple(b2 * vi + (1 - b2) * di**2 for vi, di in zip(v, d, strict=True))
        else:
            v = tuple(
                vi - (1 - b2) * di**2 * np.sign(vi - di**2) for vi, di in zip(v, d, strict=True)
            )
        x = tuple(xi + eta * mi / (np.sqrt(vi) + tau) for xi, mi, vi in zip(x, m, v, strict=True))
    _close(res.params, x)


def test_fedopt_flamby_initial_accumulator_zero():
    opt = fljax.algorithms.fedopt("adam", 0.1, tau=1e-8, initial_accumulator=0.0)
    state = opt.init(jnp.zeros(2))
    np.testing.assert_array_equal(state.v, 0.0)
    upd, _ = opt.update(-jnp.array([1.0, -2.0]), state)
    # m = 0.1 D, v = 0.01 D^2 -> update = 0.1 * 0.1 D / (0.1 |D|) = 0.1 sign(D)
    np.testing.assert_allclose(upd, [0.1, -0.1], rtol=1e-5)


def test_fedprox_proximal_local_objective(tiny):
    """Li et al. (2020) Eq. (2): local gradient grad F_k(w) + mu (w - w^t)."""
    mu = 0.7
    res = _run(tiny, "fedprox", mu=mu)
    npf, x = tiny[3], _start(tiny)
    for r in range(ROUNDS):
        ids = res.selected[r]
        deltas = _fedavg_deltas(
            npf, x, ids, grad_extra=lambda c, p, x=x: scale(add(p, x, -1.0), mu)
        )
        x = add(x, wmean(deltas, npf.n[ids]))
    _close(res.params, x)


@pytest.mark.parametrize(
    "option, weighting", [("I", "uniform"), ("II", "uniform"), ("II", "num_examples")]
)
def test_scaffold_matches_karimireddy_algorithm_1(tiny, option, weighting):
    """SCAFFOLD Alg. 1 with Eq. (4) options; unsampled clients keep c_i; eta_g != 1. With
    ``weighting="num_examples"`` the mean of delta c is weighted like the mean of delta y
    (so that c stays the weighted mean of the c_i, as in FLamby's SCAFFOLD)."""
    eta_g = 0.9
    res = _run(tiny, "scaffold", option=option, server_lr=eta_g, weighting=weighting)
    npf, x = tiny[3], _start(tiny)
    c = zeros_like(x)
    ci = [zeros_like(x) for _ in range(5)]
    for r in range(ROUNDS):
        ids = res.selected[r]
        dys, dcs = [], []
        for cid in ids:
            y = local_gd(
                x, EPOCHS, LR, lambda p, cid=cid, c=c: add(add(npf.grad(cid, p), ci[cid], -1.0), c)
            )
            if option == "I":
                new = npf.grad(cid, x)
            else:
                new = add(add(ci[cid], c, -1.0), scale(add(x, y, -1.0), 1.0 / (EPOCHS * LR)))
            dys.append(add(y, x, -1.0))
            dcs.append(add(new, ci[cid], -1.0))
            ci[cid] = new
        w = npf.n[ids] if weighting == "num_examples" else np.ones(K)
        x = add(x, wmean(dys, w), eta_g)
        c = add(c, wmean(dcs, w), K / 5)
    _close(res.params, x)
    np.testing.assert_allclose(res.state.algorithm_state["Dense_0"]["kernel"], c[0], atol=2e-4)
    for cid in range(5):
        np.testing.assert_allclose(
            res.state.client_states["Dense_0"]["kernel"][cid], ci[cid][0], atol=2e-4
        )
    assert (
        res.history[-1]["bytes_up"]
        == res.history[-1]["bytes_down"]
        == (ROUNDS * K * 2 * 4 * res.num_params)
    )  # (delta y, delta c) up, (x, c) down


def test_fednova_normalized_averaging_with_unequal_steps(tiny):
    """Wang et al. (2020) Eq. (6)-(7): x <- x + tau_eff sum_i p_i delta_i / tau_i."""
    steps = [1, 6, 2, 4, 3]
    res = _run(tiny, "fednova", local_steps=steps, server_lr=1.0)
    npf, x = tiny[3], _start(tiny)
    for r in range(ROUNDS):
        ids = res.selected[r]
        tau = np.array([steps[c] for c in ids], np.float64)
        np.testing.assert_array_equal(res.num_steps[r], tau)
        deltas = _fedavg_deltas(npf, x, ids, steps=tau.astype(int))
        p = npf.n[ids] / npf.n[ids].sum()
        normalized = wmean([scale(d, 1.0 / t) for d, t in zip(deltas, tau, strict=True)], p)
        x = add(x, normalized, float(np.sum(p * tau)))
    _close(res.params, x)


def test_fednova_momentum_normalizer():
    from fljax.aggregate._normalized import _normalizer

    rho, tau = 0.9, 5
    a = float(_normalizer(jnp.array([tau]), rho, 0.0, 0.1)[0])
    # ||a||_1 = sum_{k<tau} (1 - rho^{tau-k}) / (1 - rho)  (heavy-ball coefficients)
    expected = sum((1 - rho ** (tau - k)) / (1 - rho) for k in range(tau))
    np.testing.assert_allclose(a, expected, rtol=1e-5)
    q = float(_normalizer(jnp.array([tau]), 0.0, 2.0, 0.1)[0])
    np.testing.assert_allclose(q, sum((1 - 0.2) ** k for k in range(tau)), rtol=1e-5)


def test_feddyn_matches_acar_algorithm_1(tiny):
    """FedDyn Alg. 1: local grad L_k - g_k + alpha (theta - theta^{t-1}); g_k -= alpha delta;
    h -= alpha/m sum delta; theta = mean theta_k - h / alpha."""
    alpha = 0.5
    res = _run(tiny, "feddyn", alpha=alpha)
    npf, x = tiny[3], _start(tiny)
    h = zeros_like(x)
    g = [zeros_like(x) for _ in range(5)]
    for r in range(ROUNDS):
        ids = res.selected[r]
        thetas = []
        for cid in ids:
            th = local_gd(
                x,
                EPOCHS,
                LR,
                lambda p, cid=cid, x=x: add(
                    add(npf.grad(cid, p), g[cid], -1.0), scale(add(p, x, -1.0), alpha)
                ),
            )
            g[cid] = add(g[cid], add(th, x, -1.0), -alpha)
            thetas.append(th)
        h = add(h, wmean([add(t, x, -1.0) for t in thetas], np.ones(K)), -alpha * K / 5)
        x = add(wmean(thetas, np.ones(K)), h, -1.0 / alpha)
    _close(res.params, x)


def test_cyclic_passes_the_model_site_to_site(tiny):
    """Round r visits clients rK..rK+K-1 (mod C), each training the model it receives."""
    res = _run(tiny, "cyclic", rounds=3, k=2)
    npf, x = tiny[3], _start(tiny)
    order = []
    for r in range(3):
        for j in range(2):
            c = (r * 2 + j) % 5
            order.append(c)
            x = local_gd(x, EPOCHS, LR, lambda p, c=c: npf.grad(c, p))
    assert res.selected.ravel().tolist() == order
    _close(res.params, x)


def test_centralized_is_gd_on_pooled_data(tiny):
    res = _run(tiny, "centralized", rounds=3, k=5)
    npf, x = tiny[3], _start(tiny)
    from tests.oracle import softmax_regression_grad

    xs, ys = np.concatenate(npf.x), np.concatenate(npf.y)
    for _ in range(3 * EPOCHS):
        x = add(x, softmax_regression_grad(x[0], x[1], xs, ys, 3), -LR)
    _close(res.params, x)
    assert res.history[-1]["bytes_up"] == 0


def test_local_training_keeps_one_model_per_client(tiny):
    res = _run(tiny, "local", rounds=3, k=5)
    npf, x0 = tiny[3], _start(tiny)
    for cid in range(5):
        ref = local_gd(x0, 3 * EPOCHS, LR, lambda p, cid=cid: npf.grad(cid, p))
        own = jax.tree.map(lambda a, cid=cid: a[cid], res.client_params)
        _close(own, ref)
    _close(res.params, x0)  # the global model is never trained


@pytest.mark.parametrize("name", fljax.algorithms.names())
def test_contract_every_algorithm(tiny, name):
    """Runs under jit for 3 rounds (one compiled block, state a valid scan carry), finite
    outputs, params keep their shapes, and the hyperparameters are recorded."""
    fed, model, params0, _ = tiny
    kw, extra = {}, {}
    if name in ("fedbuff", "fedasync"):  # asynchronous: profiles decide who finishes first
        kw = dict(concurrency=3) | (dict(buffer_size=2) if name == "fedbuff" else {})
        extra = dict(system=fljax.system.system(fljax.system.profiles(fed.num_clients, "hospital")))
    if name in ("fedbn", "fedper", "fedrep"):  # a body, a head and batch norm to partition
        model = fljax.models.get("mlp_bn", num_classes=fed.num_classes, hidden=(4,))
        params0 = model.init(jax.random.key(0), fed.sample())
    algo = fljax.algorithms.get(name, client_lr=0.1, batch_size=2, **kw)
    res = fljax.simulate(
        algo, model, fed, rounds=3, clients_per_round=3, eval_every=3, params=params0, **extra
    )
    assert jax.tree.structure(res.params) == jax.tree.structure(params0)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(params0), strict=True):
        assert a.shape == b.shape and np.all(np.isfinite(a))
    assert all(np.isfinite(v) for v in res.final_metrics.values())
    assert algo.hparams["client_lr"] == 0.1 and algo.mode in fljax.algorithms.MODES


def test_stragglers_drop_policy_aggregates_only_on_time_clients(tiny):
    """FedProx protocol with FedAvg: K - round(K (1 - s)) stragglers per round are dropped."""
    fed, model, params0, npf = tiny
    algo = fljax.algorithms.get("fedavg", client_lr=LR, local_epochs=EPOCHS, batch_size=None)
    res = fljax.simulate(
        algo,
        model,
        fed,
        rounds=ROUNDS,
        clients_per_round=4,
        seed=1,
        params=params0,
        stragglers=0.5,
        straggler_policy="drop",
    )
    assert (res.contributed.sum(axis=1) == 2).all()
    x = _start(tiny)
    for r in range(ROUNDS):
        ids = res.selected[r][res.contributed[r]]
        x = add(x, wmean(_fedavg_deltas(npf, x, ids), npf.n[ids]))
    _close(res.params, x)
    assert sum(res.history[-1]["client_metrics"]["participation"]) == 2 * ROUNDS


def test_stragglers_partial_policy_sends_fewer_epochs(tiny):
    """FedProx's partial work: stragglers run a uniform 1..E-1 epochs and are aggregated."""
    fed, model, params0, npf = tiny
    algo = fljax.algorithms.get("fedprox", mu=0.5, client_lr=LR, local_epochs=EPOCHS, batch_size=2)
    res = fljax.simulate(
        algo,
        model,
        fed,
        rounds=6,
        clients_per_round=4,
        seed=1,
        params=params0,
        stragglers=0.5,
        straggler_policy="partial",
    )
    assert res.contributed.all()
    full = EPOCHS * np.ceil(fed.train.num_examples[res.selected] / 2)
    short = res.num_steps < full
    assert (short.sum(axis=1) <= 2).all() and short.any()
    per_epoch = np.ceil(fed.train.num_examples[res.selected] / 2)
    epochs = res.num_steps / per_epoch
    assert np.all(epochs[short] >= 1) and np.all(epochs[short] <= EPOCHS - 1)
    assert np.allclose(epochs, np.round(epochs))  # whole epochs


def test_straggler_and_mode_errors(tiny):
    fed, model, params0, _ = tiny
    algo = fljax.algorithms.get("fedavg", local_epochs=1)
    with pytest.raises(ValueError, match="stragglers"):
        fljax.simulate(algo, model, fed, rounds=1, clients_per_round=2, stragglers=1.0)
    with pytest.raises(ValueError, match="straggler_policy"):
        fljax.simulate(
            algo,
            model,
            fed,
            rounds=1,
            clients_per_round=2,
            stragglers=0.5,
            straggler_policy="ignore",
        )
    with pytest.raises(ValueError, match="local_epochs >= 2"):
        fljax.simulate(
            algo,
            model,
            fed,
            rounds=1,
            clients_per_round=2,
            stragglers=0.5,
            straggler_policy="partial",
        )
    with pytest.raises(ValueError, match="mode='federated'"):
        fljax.simulate(
            fljax.algorithms.get("cyclic"),
            model,
            fed,
            rounds=1,
            clients_per_round=2,
            stragglers=0.5,
        )
    with pytest.raises(ValueError, match="local_steps has 2 entries"):
        fljax.simulate(
            fljax.algorithms.get("fedavg", local_epochs=None, local_steps=[1, 2]),
            model,
            fed,
            rounds=1,
            clients_per_round=2,
        )
    for name, kw, field in [
        ("scaffold", {"option": "III"}, "option"),
        ("fedprox", {"mu": -1.0}, "mu"),
        ("feddyn", {"alpha": 0.0}, "alpha"),
        ("fedadam", {"beta1": 1.0}, "beta1"),
        ("fedyogi", {"tau": 0.0}, "tau"),
        ("fedavgm", {"server_momentum": 1.0}, "server_momentum"),
    ]:
        with pytest.raises(ValueError, match=field):
            fljax.algorithms.get(name, **kw)


def test_cyclic_shuffled_cycles_visit_every_client_once_per_cycle(tiny):
    res = _run(tiny, "cyclic", rounds=6, k=5, shuffle=True)  # 6 full cycles of 5 clients
    order = res.selected.ravel()
    cycles = order.reshape(6, 5)
    assert all(sorted(c.tolist()) == list(range(5)) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # a fresh order each cycle
    npf, x = tiny[3], _start(tiny)
    for c in order:
        x = local_gd(x, EPOCHS, LR, lambda p, c=c: npf.grad(c, p))
    _close(res.params, x)
