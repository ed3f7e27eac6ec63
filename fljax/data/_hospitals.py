"""A generator of clinically shaped synthetic hospital federations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fljax.data._federated import FederatedData, from_client_arrays
from fljax.data._sources import register
from fljax.distributed import hosted_rows, multiprocess


def _check_hospital_args(num_clients, num_features, prevalence, label_noise, test_fraction,
                         feature_shift, mean_size, size_sigma) -> None:  # fmt: skip
    if num_clients < 1 or num_features < 1:
        raise ValueError("num_clients and num_features must be >= 1")
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    if not 0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= feature_shift < 10:
        raise ValueError(f"feature_shift must be in [0, 10), got {feature_shift}")
    for name, v in (("mean_size", mean_size), ("size_sigma", size_sigma)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")


def _site_draws(rng, num_clients, min_total, mean_size, size_sigma, prevalence, prevalence_sd,
                label_noise):  # fmt: skip
    """Every site's size (lognormal, at least ``min_total``), prevalence (logit-normal) and
    label-flip rate (uniform)."""
    sizes = np.maximum(
        min_total,
        np.rint(mean_size * np.exp(rng.normal(-(size_sigma**2) / 2, size_sigma, num_clients))),
    ).astype(int)
    logit = math.log(prevalence / (1 - prevalence))
    p_site = 1 / (1 + np.exp(-(logit + rng.normal(0, prevalence_sd, num_clients))))
    return sizes, p_site, rng.uniform(0, label_noise, num_clients)


def _site_shifts(seed, num_clients, d, feature_shift) -> list:
    """Every site's measurement transform ``(a, b)`` (``None`` without feature shift), from
    a second stream of the seed."""
    shift_rng = np.random.default_rng([seed, 1])
    log_a = shift_rng.normal(0, feature_shift, (num_clients, d))
    b = shift_rng.normal(0, feature_shift, (num_clients, d))
    return [(np.exp(log_a[i]), b[i]) if feature_shift > 0 else None
            for i in range(num_clients)]  # fmt: skip


def _draw_sites(rng, sizes, w, covariate_shift, scale_shift, signal, p_site, flip, shifts,
                test_fraction, keep: range | None = None):  # fmt: skip
    """Every site drawn in turn (:func:`_draw_site`) and split at random into train and test;
    ``(train_xs, train_ys, test_xs, test_ys)`` lists over the sites in ``keep`` (all by
    default: every site is drawn either way, so the kept ones are the same)."""
    train_xs, train_ys, test_xs, test_ys = [], [], [], []
    for s, size in enumerate(sizes):
        x, y = _draw_site(rng, int(size), w, covariate_shift, scale_shift, signal, p_site[s],
                          flip[s], shifts[s])  # fmt: skip
        perm = rng.permutation(len(y))
        if keep is not None and s not in keep:
            continue
        n_test = int(math.floor(test_fraction * len(y)))
        test_xs.append(x[perm[:n_test]])
        test_ys.append(y[perm[:n_test]])
        train_xs.append(x[perm[n_test:]])
        train_ys.append(y[perm[n_test:]])
    return train_xs, train_ys, test_xs, test_ys


def _draw_site(rng, n, w, covariate_shift, scale_shift, signal, p_site, flip, shift):
    """One site's ``n`` examples: shifted covariates, cases by latent risk, label noise, and
    (``shift = (a, b)``) the site's measurement transform ``a x + b``."""
    d = len(w)
    mu = rng.normal(0, covariate_shift, d)
    scale = np.exp(rng.normal(0, scale_shift, d))
    x = mu + scale * rng.standard_normal((n, d))
    risk = signal * x @ w / math.sqrt(d) + rng.logistic(size=n)
    cases = max(1, int(rng.binomial(n, p_site)))
    y = np.zeros(n, np.int32)
    y[np.argsort(-risk)[:cases]] = 1
    y = np.where(rng.random(n) < flip, 1 - y, y).astype(np.int32)
    if shift is not None:
        x = shift[0] * x + shift[1]
    return x, y


@register("synthetic_hospitals")
def synthetic_hospitals(
    num_clients: int = 100,
    num_features: int = 10,
    mean_size: float = 200.0,
    size_sigma: float = 1.0,
    min_examples: int = 10,
    prevalence: float = 0.2,
    prevalence_sd: float = 0.5,
    covariate_shift: float = 0.5,
    scale_shift: float = 0.2,
    label_noise: float = 0.05,
    signal: float = 2.0,
    test_fraction: float = 0.2,
    feature_shift: float = 0.0,
    seed: int = 0,
    metrics: Sequence[str] = ("accuracy", "auroc", "auprc", "balanced_accuracy"),
) -> FederatedData:
    r"""Synthetic hospitals with the heterogeneity of real clinical federations, from one seed.

    Every site draws, independently:

    - **size** :math:`n_s = \max(m, \lfloor \bar n \cdot e^{Z - \sigma^2/2} \rceil)`,
      :math:`Z \sim N(0, \sigma^2)` (``mean_size``, ``size_sigma``, ``min_examples`` training
      examples at least after the test split);
    - **covariate shift**: features :math:`x = \mu_s + e^{\gamma_s} \odot \epsilon`,
      :math:`\mu_s \sim N(0, \text{covariate\_shift}^2 I)`,
      :math:`\gamma_s \sim N(0, \text{scale\_shift}^2 I)`, :math:`\epsilon \sim N(0, I)`;
    - **prevalence**: :math:`\text{logit}\, p_s = \text{logit}(\text{prevalence}) +
      N(0, \text{prevalence\_sd}^2)`; the site has :math:`\text{Binomial}(n_s, p_s)` cases, at
      least one (a rare disease, e.g. ``prevalence=0.01``, gives a handful per site);
    - **outcome**: one disease model shared by all sites: the cases are the examples with the
      highest latent risk :math:`r = \text{signal} \cdot x^\top w / \sqrt{d} + \text{Logistic}`
      (:math:`w \sim N(0, I)`), so features predict disease everywhere;
    - **label noise**: each label flipped with a site rate :math:`\sim U(0, \text{label\_noise})`
      (coding errors differ between hospitals);
    - **feature shift** (measurement, not population): after the outcome is drawn, the site
      records :math:`\tilde x = a_s \odot x + b_s` with :math:`\log a_s, b_s \sim
      N(0, \text{feature\_shift}^2 I)` (assay units, calibration, scanner settings), so the
      same patient looks different at each site; the FedBN setting. Drawn from a second
      stream, so ``feature_shift=0`` gives the same federation as before it existed.

    Each site is split at random into train and test (``test_fraction``). The embedded default
    for large simulations: ``num_clients`` may be in the tens of thousands. In a
    multi-process run each process keeps only the sites it hosts (every site is still drawn,
    one at a time, so the federation is the same).
    """
    _check_hospital_args(num_clients, num_features, prevalence, label_noise, test_fraction,
                         feature_shift, mean_size, size_sigma)  # fmt: skip
    rng = np.random.default_rng(seed)
    d = num_features
    w = rng.standard_normal(d)
    min_total = math.ceil(min_examples / (1 - test_fraction))
    sizes, p_site, flip = _site_draws(rng, num_clients, min_total, mean_size, size_sigma,
                                      prevalence, prevalence_sd, label_noise)  # fmt: skip
    shifts = _site_shifts(seed, num_clients, d, feature_shift)
    keep = hosted_rows(num_clients) if multiprocess() else None
    train_xs, train_ys, test_xs, test_ys = _draw_sites(
        rng, sizes, w, covariate_shift, scale_shift, signal, p_site, flip, shifts, test_fraction,
        keep,
    )
    n_test = np.floor(test_fraction * sizes).astype(np.int32)
    return from_client_arrays(
        train_xs, train_ys, test_xs, test_ys, num_classes=2, name="synthetic_hospitals",
        client_names=[f"hospital_{s}" for s in range(num_clients)],
        metrics=metrics,
        hosted=None if keep is None else (keep, sizes - n_test, n_test, (d,), ()),
        info=dict(
            seed=seed,
            prevalence=prevalence,
            prevalence_sd=prevalence_sd,
            covariate_shift=covariate_shift,
            scale_shift=scale_shift,
            label_noise=label_noise,
            feature_shift=feature_shift,
            site_prevalence=p_site.round(4).tolist(),
            site_label_noise=flip.round(4).tolist(),
        ),
    )
