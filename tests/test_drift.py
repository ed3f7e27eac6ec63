"""Client drift on federations of quadratics (regression with a linear model), many rounds."""

import itertools

import jax
import numpy as np
import pytest

import fljax


def _linear_weights(params):
    return np.r_[
        np.asarray(params["Dense_0"]["kernel"])[:, 0], np.asarray(params["Dense_0"]["bias"])
    ]


def _run(fed, name, rounds, **kw):
    model = fljax.models.get("logistic", num_classes=1)
    params0 = model.init(jax.random.key(0), fed.sample())
    algo = fljax.algorithms.get(name, local_epochs=None, batch_size=None, **kw)
    res = fljax.simulate(
        algo,
        model,
        fed,
        rounds=rounds,
        clients_per_round=fed.num_clients,
        eval_every=rounds,
        params=params0,
    )
    return _linear_weights(res.params)


@pytest.fixture(scope="module")
def heterogeneous_quadratics():
    """4 clients, equal sizes, different curvatures and minimisers: f_i(w) = mean (x.w+b-y)^2."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(4):
        x = rng.normal(size=(20, 2)) @ (rng.normal(size=(2, 2)) * (0.3 + i))
        xs.append(x)
        ys.append(x @ (3 * rng.normal(size=2)) + 2 * rng.normal())
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, task="regression")
    design = np.concatenate([np.c_[x, np.ones(len(x))] for x in xs])
    optimum = np.linalg.lstsq(design, np.concatenate(ys), rcond=None)[0]
    return fed, optimum


def test_fedavg_drifts_while_scaffold_and_feddyn_reach_the_optimum(heterogeneous_quadratics):
    """Karimireddy et al. (2020) Sec. 3 / Acar et al. (2021) Sec. 3: with several local steps
    FedAvg's fixed point is biased; SCAFFOLD's control variates and FedDyn's dynamic
    regulariser remove the drift."""
    fed, optimum = heterogeneous_quadratics
    common = dict(client_lr=0.01, local_steps=20, rounds=400)
    fedavg = _run(fed, "fedavg", **common)
    scaffold = _run(fed, "scaffold", **common)
    feddyn = _run(fed, "feddyn", alpha=0.5, **common)
    assert np.linalg.norm(fedavg - optimum) > 0.5
    assert np.linalg.norm(scaffold - optimum) < 1e-3
    assert np.linalg.norm(feddyn - optimum) < 1e-3


def test_fednova_removes_the_objective_inconsistency_of_unequal_steps():
    """Wang et al. (2020) Sec. 3 example: f_i(w) = ||w - w_i||^2 (identity Hessians), tau_i
    local GD steps. FedAvg converges to sum q_i w_i with q_i ~ p_i (1 - (1 - 2 eta)^tau_i)
    (about p_i tau_i: the surrogate objective); FedNova divides by tau_i, which gives back
    nearly p_i, the true optimum."""
    rng = np.random.default_rng(1)
    design = np.array(list(itertools.product([-1.0, 1.0], repeat=2)))  # mean 0, cov I
    targets = rng.normal(size=(4, 3)) * 2  # per client (w_1, w_2, b)
    reps = [2, 3, 2, 5]  # unequal sizes: p_i = n_i / n
    xs = [np.tile(design, (r, 1)) for r in reps]
    ys = [x @ t[:2] + t[2] for x, t in zip(xs, targets, strict=True)]
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, task="regression")
    p = np.array(reps, float) / sum(reps)
    tau = np.array([1, 4, 10, 30])
    eta = 0.005
    contraction = 1 - (1 - 2 * eta) ** tau
    optimum = p @ targets

    def fixed_point(q):
        return (q / q.sum()) @ targets

    fedavg = _run(fed, "fedavg", client_lr=eta, local_steps=tau.tolist(), rounds=600)
    fednova = _run(fed, "fednova", client_lr=eta, local_steps=tau.tolist(), rounds=600)
    np.testing.assert_allclose(fedavg, fixed_point(p * contraction), atol=2e-3)
    np.testing.assert_allclose(fednova, fixed_point(p * contraction / tau), atol=2e-3)
    assert np.linalg.norm(fedavg - optimum) > 0.3
    assert np.linalg.norm(fednova - optimum) < 0.1 * np.linalg.norm(fedavg - optimum)
