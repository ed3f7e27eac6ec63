"""Metrics against scikit-learn / lifelines on random inputs with ties and padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from fljax import metrics as M


def _binary_case(seed, n=60, pad=13):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=n), 1)  # many ties
    labels = (rng.random(n) < 0.4).astype(np.int32)
    logits = np.stack([np.zeros(n), scores], axis=1).astype(np.float32)
    # padding with garbage that the mask must hide
    logits_p = np.concatenate([logits, rng.normal(size=(pad, 2)).astype(np.float32) * 9])
    labels_p = np.concatenate([labels, np.ones(pad, np.int32)])
    mask = np.arange(n + pad) < n
    return logits, labels, jnp.asarray(logits_p), jnp.asarray(labels_p), jnp.asarray(mask)


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed):
    logits, labels, lp, yp, mask = _binary_case(seed)
    pred = logits.argmax(1)
    scores = logits[:, 1] - logits[:, 0]
    cases = {
        "accuracy": skm.accuracy_score(labels, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "sensitivity": skm.recall_score(labels, pred, pos_label=1),
        "specificity": skm.recall_score(labels, pred, pos_label=0),
        "auroc": skm.roc_auc_score(labels, scores),
        "auprc": skm.average_precision_score(labels, scores),
    }
    for name, expected in cases.items():
        got = float(M.CLASSIFICATION[name](lp, yp, mask))
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)


def test_multiclass_balanced_accuracy_and_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)).astype(np.float32) * 2
    labels = rng.integers(0, 3, 200)  # class 3 absent: sklearn averages over present classes
    np.testing.assert_allclose(
        float(M.balanced_accuracy(jnp.asarray(logits), jnp.asarray(labels))),
        skm.balanced_accuracy_score(labels, logits.argmax(1)),
        rtol=1e-6,
    )
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    conf, hit = probs.max(1), probs.argmax(1) == labels
    bins = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ref += inb.mean() * abs(hit[inb].mean() - conf[inb].mean())
    np.testing.assert_allclose(
        float(M.ece(jnp.asarray(logits), jnp.asarray(labels))), ref, rtol=1e-5
    )


def test_single_class_client_is_nan_and_reported():
    logits = jnp.array([[0.0, 1.0], [0.0, 2.0]])
    labels = jnp.array([1, 1])
    assert np.isnan(float(M.auroc(logits, labels)))
    assert np.isnan(float(M.specificity(logits, labels)))
    assert float(M.sensitivity(logits, labels)) == 1.0
    s = M.summarize([0.8, np.nan, 0.6], [10, 5, 30])
    assert s["_undefined_clients"] == 1
    np.testing.assert_allclose(s[""], (0.8 * 10 + 0.6 * 30) / 40)
    assert s["_worst"] == 0.6 and s["_client_mean"] == pytest.approx(0.7)
    assert M.summarize([np.nan], [3])[""] is None


def test_regression_metrics():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(30, 1)), rng.normal(size=30)
    np.testing.assert_allclose(
        float(M.mse(jnp.asarray(p), jnp.asarray(t))), skm.mean_squared_error(t, p[:, 0]), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(M.mae(jnp.asarray(p), jnp.asarray(t))), skm.mean_absolute_error(t, p[:, 0]), rtol=1e-5
    )


@pytest.mark.parametrize("seed", range(4))
def test_c_index_matches_lifelines_with_ties(seed):
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(seed)
    n = 50
    time = rng.integers(1, 15, n).astype(float)  # tied times
    event = (rng.random(n) < 0.6).astype(float)
    risk = np.round(rng.normal(size=n), 1)  # tied risks
    expected = concordance_index(time, -risk, event)
    y = np.stack([time, event], 1)
    pad = np.zeros((7, 2))
    got = M.c_index(
        jnp.asarray(np.r_[risk, np.ones(7)]), jnp.asarray(np.r_[y, pad]), jnp.arange(n + 7) < n
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_cox_loss_matches_breslow_formula():
    rng = np.random.default_rng(0)
    n = 20
    risk = rng.normal(size=n)
    time = rng.integers(1, 6, n).astype(float)
    event = (rng.random(n) < 0.7).astype(float)
    ref = 0.0
    for i in range(n):
        if event[i]:
            ref -= risk[i] - np.log(np.exp(risk[time >= time[i]]).sum())
    ref /= event.sum()
    got = M.cox_loss(jnp.asarray(risk, jnp.float32), jnp.asarray(np.stack([time, event], 1)))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_metrics_vmap_over_clients():
    _, _, lp, yp, mask = _binary_case(0)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), (lp, yp, mask))
    out = jax.vmap(M.auroc)(*stacked)
    assert out.shape == (2,) and out[0] == out[1]


def test_metric_names_are_checked():
    with pytest.raises(ValueError, match="auroc"):
        M.check_metrics("classification", ["auroc"], num_classes=3)
    with pytest.raises(ValueError, match="c_index"):
        M.check_metrics("classification", ["c_index"], num_classes=2)
