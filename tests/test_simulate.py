"""simulate(): reproducibility, history contract, bad input, non-finite rounds, demo accuracy."""

import json

import jax
import numpy as np
import pytest

import fljax


@pytest.fixture(scope="module")
def setup(breast_cancer_fed):
    model = fljax.models.get("mlp", num_classes=2, hidden=(16,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    return breast_cancer_fed, model, algo


def _run(setup, **kw):
    fed, model, algo = setup
    args = dict(rounds=6, clients_per_round=3, seed=0, eval_every=3)
    args.update(kw)
    return fljax.simulate(algo, model, fed, **args)


def test_same_seed_is_bit_identical_and_seeds_differ(setup):
    a, b, c = _run(setup), _run(setup), _run(setup, seed=1)
    assert json.dumps(a.history) == json.dumps(b.history)
    np.testing.assert_array_equal(a.selected, b.selected)
    assert not np.array_equal(a.selected, c.selected)
    assert json.dumps(a.history) != json.dumps(c.history)


def test_results_do_not_depend_on_eval_every(setup):
    a = _run(setup, eval_every=2)
    b = _run(setup, eval_every=6)
    np.testing.assert_array_equal(a.selected, b.selected)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_history_contract(setup):
    fed, model, _ = setup
    result = _run(setup, rounds=5, eval_every=2)
    assert [h["round"] for h in result.history] == [0, 2, 4, 5]
    last = result.history[-1]
    assert set(last) == {"round", "metrics", "client_metrics", "bytes_up", "bytes_down",
                         "rejected"}  # fmt: skip
    assert last["rejected"] == {"total": 0, "per_client": [0] * fed.num_clients,
                                "rounds": [[]]}  # fmt: skip
    assert len(last["client_metrics"]["test_accuracy"]) == fed.num_clients
    assert sum(last["client_metrics"]["participation"]) == 5 * 3
    assert last["bytes_up"] == last["bytes_down"] == 5 * 3 * 4 * result.num_params
    m, cm = last["metrics"], last["client_metrics"]
    counts = np.array(cm["num_test_examples"])
    acc = np.array(cm["test_accuracy"])
    np.testing.assert_allclose(m["test_accuracy"], (acc * counts).sum() / counts.sum())
    np.testing.assert_allclose(m["test_accuracy_client_mean"], acc.mean())
    np.testing.assert_allclose(m["test_accuracy_worst"], acc.min())
    assert result.history[0]["metrics"]["local_loss"] is None
    assert np.isfinite(m["local_loss"])
    assert not any(k.startswith("train_") for k in m)
    json.dumps(result.history)  # JSON-serialisable


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"clients_per_round": 9}, "clients_per_round"),
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"rounds": 0}, "rounds"),
        ({"eval_every": 0}, "eval_every"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_fail_before_compiling(setup, kwargs, field):
    with pytest.raises(ValueError, match=field):
        _run(setup, **kwargs)


def test_model_output_must_match_classes(setup):
    fed, _, algo = setup
    wrong = fljax.models.get("logistic", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        fljax.simulate(algo, wrong, fed, rounds=1, clients_per_round=2)


def test_eval_train_scores_the_global_model_on_training_data(setup):
    fed, model, _ = setup
    result = _run(setup, rounds=2, eval_every=2, eval_train=True)
    m, cm = result.final_metrics, result.history[-1]["client_metrics"]
    evaluate = fljax.client.evaluate_fn(model, fed.task)
    ref = evaluate(result.params, *fed.train)
    np.testing.assert_allclose(cm["train_loss"], ref["loss"], rtol=1e-5)
    n = fed.num_examples
    np.testing.assert_allclose(
        m["train_loss"], (np.asarray(ref["loss"]) * n).sum() / n.sum(), rtol=1e-5
    )


def test_non_finite_update_stops_with_round_and_keeps_history(setup):
    fed, model, _ = setup
    algo = fljax.algorithms.get("fedavg", client_lr=1e30, local_epochs=1, batch_size=16)
    seen = []
    with pytest.raises(fljax.NonFiniteUpdateError, match=r"round [12]\b"):
        fljax.simulate(
            algo, model, fed, rounds=4, clients_per_round=3, eval_every=2, callbacks=[seen.append]
        )
    assert [h["round"] for h in seen] == [0]


def test_breast_cancer_demo_budget_reaches_093(breast_cancer_fed):
    """The `make demo` setting: FedAvg, MLP(64, 64), 8 Dirichlet(0.5) hospitals, 50 rounds."""
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=32)
    result = fljax.simulate(
        algo, model, breast_cancer_fed, rounds=50, clients_per_round=8, eval_every=25
    )
    m = result.final_metrics
    assert m["test_accuracy"] >= 0.93
    assert m["test_accuracy_client_mean"] >= 0.93
