"""Federated unlearning (:mod:`fljax.unlearning`) and empirical privacy auditing
(:mod:`fljax.privacy.audit`) on small federations."""

import numpy as np
import pytest

import fljax
from fljax import unlearning as U
from fljax.data import from_client_arrays
from fljax.privacy import audit as A


def _memorizing_fed():
    """3 sites of one linear task and site 3 with random labels (only memorization fits it)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=5)

    def site(n, noise=False):
        x = rng.normal(size=(n, 5)).astype(np.float32)
        y = rng.integers(0, 2, n) if noise else (x @ w > 0)
        return x, y.astype(np.int32)

    train = [site(30), site(30), site(30), site(48, True)]
    test = [site(10), site(10), site(10), site(48, True)]
    xs, ys = zip(*train, strict=True)
    txs, tys = zip(*test, strict=True)
    return from_client_arrays(list(xs), list(ys), list(txs), list(tys), num_classes=2)


MLP = fljax.models.get("mlp", num_classes=2, hidden=(128,))


def test_unlearning_forgets_the_site_and_federaser_approaches_the_retrain():
    fed = _memorizing_fed()
    algo = fljax.algorithms.get("fedavg", client_lr=0.5, local_epochs=20, batch_size=None)
    u = U.unlearn(algo, MLP, fed, site=3, rounds=8, seeds=[0, 1], calibration=1.0)
    m = u.metrics
    # the original model remembers the site's records; retraining without it does not
    assert all(o > r + 0.05 for o, r in zip(m["original"]["mia_auc"], m["retrained"]["mia_auc"],
                                            strict=True))  # fmt: skip
    assert np.mean(m["federaser"]["mia_auc"]) < np.mean(m["original"]["mia_auc"]) - 0.05
    assert m["retrained"]["distance_to_retrained"] == [0.0, 0.0]
    assert (np.asarray(m["federaser"]["distance_to_retrained"])
            < 0.5 * np.asarray(m["original"]["distance_to_retrained"])).all()  # fmt: skip
    assert u.local_steps == {"retrain": 8 * 3 * 20, "federaser_calibration": 8 * 3 * 20}
    assert "| federaser |" in u.table()


def test_unlearning_refuses_bad_input():
    fed = _memorizing_fed()
    algo = fljax.algorithms.get("fedavg", client_lr=0.5, local_epochs=1, batch_size=None)
    with pytest.raises(ValueError, match=r"site must be a site index in \[0, 4\)"):
        U.unlearn(algo, MLP, fed, site=4, rounds=2)
    with pytest.raises(ValueError, match="interval"):
        U.unlearn(algo, MLP, fed, site=0, rounds=2, interval=3)
    with pytest.raises(ValueError, match="calibration"):
        U.unlearn(algo, MLP, fed, site=0, rounds=2, calibration=0.0)
    with pytest.raises(ValueError, match="allowed: .*fedavg"):
        U.unlearn(fljax.algorithms.get("scaffold"), MLP, fed, site=0, rounds=2)


def test_gdp_epsilon_matches_the_gaussian_mechanism():
    """mu-GDP with mu = 1/z is the Gaussian mechanism of noise multiplier z: its exact
    (epsilon, delta) curve (Balle and Wang 2018) at the returned epsilon gives delta back."""
    from scipy.stats import norm

    for z in (0.5, 1.0, 2.0):
        eps = A.gdp_epsilon(1 / z, 1e-5)
        mu = 1 / z
        delta = norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        assert delta == pytest.approx(1e-5, rel=1e-6)
    assert A.gdp_epsilon(0.0, 1e-5) == 0.0
    assert A.gdp_epsilon(1.0, 1e-5) > A.gdp_epsilon(0.5, 1e-5)


@pytest.fixture(scope="module")
def audits():
    fed = fljax.data.load("synthetic_hospitals", num_clients=32, num_features=10,
                          mean_size=30, size_sigma=0.3, seed=0)  # fmt: skip
    model = fljax.models.get("mlp", num_classes=2, hidden=(32,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    out = {}
    for z in (0.0, 1.0, 3.0):
        priv = fljax.privacy.get("central_dp", clip_norm=0.5, noise_multiplier=z, delta=1e-5)
        out[z] = A.one_shot(algo, model, fed, privacy=priv, rounds=30, clients_per_round=12,
                            canaries=16, held_out=400, seed=0, bootstrap=200)  # fmt: skip
    return out


def test_one_shot_estimate_stays_below_the_accountant_and_falls_with_noise(audits):
    assert audits[0.0].accounted == float("inf") and audits[0.0].epsilon > 5
    for z in (1.0, 3.0):
        a = audits[z]
        assert np.isfinite(a.accounted)
        assert a.interval[0] <= a.epsilon <= a.interval[1]
        assert a.epsilon < a.accounted  # never above the bound
    assert audits[0.0].epsilon > audits[1.0].epsilon > audits[3.0].epsilon
    assert audits[1.0].cos_in.shape == (16,) and audits[1.0].cos_out.shape == (400,)


def test_canaries_need_client_level_dp():
    fed = _memorizing_fed()
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=None)
    for privacy in (None, fljax.privacy.get("local_dp", clip_norm=1.0, noise_multiplier=1.0)):
        with pytest.raises(ValueError, match="canaries audit client-level DP"):
            A.one_shot(algo, MLP, fed, privacy=privacy, rounds=1, clients_per_round=2)
    dp = fljax.privacy.get("central_dp", clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="canaries must be an integer >= 2"):
        A.one_shot(algo, MLP, fed, privacy=dp, rounds=1, clients_per_round=2, canaries=1)


def test_lira_detects_a_memorized_site():
    fed = _memorizing_fed()
    algo = fljax.algorithms.get("fedavg", client_lr=0.5, local_epochs=10, batch_size=None)
    r = A.lira(algo, MLP, fed, target=3, rounds=4, federations=16, seeds=[0])
    assert r.members.sum() == 8 and r.scores.shape == (16,)
    assert r.auc > 0.8
    with pytest.raises(ValueError, match="target must be a site index"):
        A.lira(algo, MLP, fed, target=9, rounds=1)
