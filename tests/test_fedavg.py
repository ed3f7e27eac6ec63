"""FedAvg through the full compiled round, against exact references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from tests.oracle import logistic_params, softmax_regression_grad


def test_full_batch_one_step_fedavg_equals_centralized_gd(breast_cancer_fed):
    """One full-batch local step from every client, weights n_k: the mean delta is
    -lr * sum_k n_k grad_k / n = -lr * grad of the pooled loss (McMahan et al. 2017, FedSGD)."""
    fed = breast_cancer_fed
    model = fljax.models.get("logistic", num_classes=2)
    params0 = model.init(jax.random.key(5), fed.sample())
    lr, rounds = 0.5, 6
    algo = fljax.algorithms.get("fedavg", client_lr=lr, local_epochs=1, batch_size=None)
    result = fljax.simulate(
        algo,
        model,
        fed,
        rounds=rounds,
        clients_per_round=fed.num_clients,
        eval_every=3,
        params=params0,
    )
    mask = fed.train.mask
    x, y = fed.train.x[mask].astype(np.float64), fed.train.y[mask]
    w, b = logistic_params(params0)
    for _ in range(rounds):
        gw, gb = softmax_regression_grad(w, b, x, y, 2)
        w, b = w - lr * gw, b - lr * gb
    got_w, got_b = logistic_params(result.params)
    np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-5)


def _tiny_federation(seed=0, sizes=(4, 12, 7, 9, 5), d=3, k=3):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(s, d)) for s in sizes]
    ys = [rng.integers(0, k, s) for s in sizes]
    return fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=k)


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_multi_step_fedavg_matches_numpy(weighting):
    """Algorithm 1 of McMahan et al. (2017) with E full-batch local steps on K < C clients of
    unequal sizes, server SGD at eta_s (Reddi et al. 2021, Alg. 1: w <- w + eta_s mean(delta))."""
    fed = _tiny_federation()
    model = fljax.models.get("logistic", num_classes=3)
    params0 = model.init(jax.random.key(2), fed.sample())
    lr, server_lr, epochs, rounds = 0.3, 0.7, 4, 3
    algo = fljax.algorithms.get(
        "fedavg",
        client_lr=lr,
        local_epochs=epochs,
        batch_size=None,
        server_lr=server_lr,
        weighting=weighting,
    )
    result = fljax.simulate(
        algo, model, fed, rounds=rounds, clients_per_round=3, seed=4, params=params0
    )
    assert result.selected.shape == (rounds, 3)
    w, b = logistic_params(params0)
    for r in range(rounds):
        ids = result.selected[r]
        assert len(set(ids.tolist())) == 3
        dws, dbs, weights = [], [], []
        for c in ids:
            n = int(fed.train.num_examples[c])
            x, y = fed.train.x[c, :n].astype(np.float64), fed.train.y[c, :n]
            wc, bc = w.copy(), b.copy()
            for _ in range(epochs):
                gw, gb = softmax_regression_grad(wc, bc, x, y, 3)
                wc, bc = wc - lr * gw, bc - lr * gb
            dws.append(wc - w)
            dbs.append(bc - b)
            weights.append(n if weighting == "num_examples" else 1.0)
        p = np.array(weights, np.float64) / np.sum(weights)
        w = w + server_lr * np.tensordot(p, np.stack(dws), axes=1)
        b = b + server_lr * np.tensordot(p, np.stack(dbs), axes=1)
    got_w, got_b = logistic_params(result.params)
    np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-5)


def test_fedavg_hyperparameter_errors():
    for kwargs, field in [
        ({"client_lr": 0.0}, "client_lr"),
        ({"client_lr": -1.0}, "client_lr"),
        ({"server_lr": 0}, "server_lr"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"local_epochs": 1, "local_steps": 5}, "exactly one"),
        ({"local_epochs": None}, "exactly one"),
        ({"weighting": "size"}, "weighting"),
        ({"client_optimizer": "lbfgs"}, "client_optimizer"),
    ]:
        with pytest.raises(ValueError, match=field):
            fljax.algorithms.get("fedavg", **kwargs)


def test_server_update_is_sgd_on_negative_mean_delta():
    algo = fljax.algorithms.get("fedavg", server_lr=0.5)
    agg = jnp.array([2.0, -4.0])
    updates, _ = algo.server_optimizer.update(-agg, algo.server_optimizer.init(agg))
    np.testing.assert_allclose(updates, 0.5 * agg)
