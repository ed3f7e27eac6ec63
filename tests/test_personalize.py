"""Local fine-tuning and the per-site comparison."""

import jax
import numpy as np
import pytest

import fljax
from fljax.personalize import compare_sites, evaluate_sites, finetune


@pytest.fixture(scope="module")
def hospitals():
    return fljax.data.load("synthetic_hospitals", num_clients=6, mean_size=60, seed=3)


def test_finetune_equals_one_round_of_local_training(hospitals):
    """Full-batch fine-tuning has no randomness: it equals the `local` algorithm's first round
    from the same model (every site trains its own copy), site by site."""
    model = fljax.models.get("logistic", num_classes=2)
    p0 = model.init(jax.random.key(0), hospitals.sample())
    algo = fljax.algorithms.get("local", client_lr=0.3, local_epochs=3, batch_size=None)
    tuned = finetune(algo, model, hospitals, p0)
    ref = fljax.simulate(algo, model, hospitals, rounds=1, clients_per_round=6, params=p0)
    for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(ref.client_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_compare_sites_reports_gains_and_worst_sites(hospitals):
    model = fljax.models.get("logistic", num_classes=2)
    fedavg = fljax.algorithms.get("fedavg", client_lr=0.2, local_epochs=1, batch_size=16)
    glob = fljax.simulate(fedavg, model, hospitals, rounds=10, clients_per_round=6).params
    tune = fljax.algorithms.get("local", client_lr=0.1, local_epochs=3, batch_size=16)
    tuned = finetune(tune, model, hospitals, glob)
    local = fljax.simulate(tune, model, hospitals, rounds=5, clients_per_round=6).client_params
    out = compare_sites(model, hospitals, glob, tuned, local, metric="loss")
    g = evaluate_sites(model, hospitals, glob)["loss"]
    p = evaluate_sites(model, hospitals, tuned, per_client=True)["loss"]
    np.testing.assert_allclose([r["gain"] for r in out["rows"]], g - p, rtol=1e-6)  # lower=better
    s = out["summary"]
    assert s["global"]["worst_site"] == pytest.approx(g.max())
    assert s["sites_gaining"] + s["sites_losing"] <= 6
    assert "| worst site |" in out["table"] and len(out["rows"]) == 6
    # A zero learning rate changes nothing: no site gains or loses.
    frozen = finetune(fljax.algorithms.get("local", client_lr=1e-12, local_epochs=1,
                                           batch_size=16), model, hospitals, glob)  # fmt: skip
    still = compare_sites(model, hospitals, glob, frozen)
    assert max(abs(r["gain"]) for r in still["rows"]) < 1e-6
    with pytest.raises(ValueError, match="metric="):
        compare_sites(model, hospitals, glob, tuned, metric="f1")
