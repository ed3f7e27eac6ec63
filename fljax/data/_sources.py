"""Dataset registry and the embedded sources (no network needed)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fljax._base import lookup
from fljax.data import _partition
from fljax.data._federated import FederatedData, from_client_arrays, standardize_clients
from fljax.distributed import hosted_rows, multiprocess

_REGISTRY: dict[str, Callable[..., FederatedData]] = {}


def register(name: str):
    """Registers a dataset builder ``fn(**kwargs) -> FederatedData`` under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(_REGISTRY)


def load(name: str, **kwargs) -> FederatedData:
    """Builds the federation ``name`` with the builder's keyword arguments.

    In a multi-process run (:mod:`fljax.distributed`) each process keeps only the clients it
    hosts (``FederatedData.hosted``); ``synthetic_hospitals`` never holds the others at all.

    Examples:
        >>> fed = load("breast_cancer", num_clients=4, partition="iid", seed=0)
        >>> fed.num_clients, fed.feature_shape, fed.num_classes
        (4, (30,), 2)
    """
    fn = lookup("dataset", _REGISTRY, name, kwargs)
    data = fn(**kwargs)
    if data.hosted is None and multiprocess():  # keep only this process's clients
        data = data.hosting(hosted_rows(data.num_clients))
    return data


get = load


def _check_split_args(num_clients: int, test_fraction: float, min_examples: int):
    if not isinstance(num_clients, int | np.integer) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if min_examples < 1:
        raise ValueError(f"min_examples must be >= 1, got {min_examples}")


def _client_parts(partition, labels, num_clients, seed, min_size, sites, name, **kwargs):
    """Example ids of each client: one per site (``natural``) or from the partitioner."""
    if partition != "natural":
        return _partition.partition(partition, labels, num_clients, seed=seed,
                                    min_size=min_size, **kwargs)  # fmt: skip
    if sites is None:
        raise ValueError(
            f"partition='natural' needs a site column, which dataset {name!r} does not have; "
            f"choose one of {[p for p in _partition.PARTITIONS if p != 'natural']}"
        )
    parts = _partition.natural(np.asarray(sites), min_size)
    if len(parts) != num_clients:
        raise ValueError(
            f"partition='natural' gives {len(parts)} clients (one per site) but "
            f"num_clients={num_clients}"
        )
    return parts


def _split_clients(x, y, parts, seed, test_fraction, min_examples):
    """Each client's examples shuffled, its first ``floor(test_fraction * n_i)`` to its test
    split; ``(train_xs, train_ys, test_xs, test_ys)`` lists over clients."""
    rng = np.random.default_rng([seed, 1])
    train_xs, train_ys, test_xs, test_ys = [], [], [], []
    for c, ids in enumerate(parts):
        ids = rng.permutation(ids)
        n_test = int(math.floor(test_fraction * len(ids)))
        if len(ids) - n_test < min_examples:
            raise ValueError(
                f"client {c} has {len(ids) - n_test} training examples < min_examples="
                f"{min_examples}"
            )
        test_xs.append(x[ids[:n_test]])
        test_ys.append(y[ids[:n_test]])
        train_xs.append(x[ids[n_test:]])
        train_ys.append(y[ids[n_test:]])
    return train_xs, train_ys, test_xs, test_ys


def federate(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_clients: int,
    partition: str = "dirichlet",
    seed: int = 0,
    test_fraction: float = 0.2,
    min_examples: int = 10,
    standardize: str = "global",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    size_distribution: str = "lognormal",
    size_sigma: float = 1.0,
    sites: np.ndarray | None = None,
    task: str = "classification",
    num_classes: int | None = None,
    name: str = "custom",
    standardize_target: bool = False,
    metrics=None,
) -> FederatedData:
    """Partitions a pooled dataset into clients, then splits each client into train/test.

    Each client's examples are shuffled and its first ``floor(test_fraction * n_i)`` go to its
    test split, so every client's test set follows its own distribution. Partitions guarantee
    ``min_examples`` TRAINING examples per client or raise ``ValueError``. Features are
    standardized with training-split statistics only (see :func:`standardize_clients`), and
    regression targets too with ``standardize_target`` (pooled training mean and std).
    """
    _check_split_args(num_clients, test_fraction, min_examples)
    if partition not in _partition.PARTITIONS:
        raise ValueError(f"unknown partition={partition!r}; choose one of {_partition.PARTITIONS}")
    x = np.asarray(x, np.float64)  # standardized in float64, stored as float32
    if not np.all(np.isfinite(x)):
        raise ValueError(f"dataset {name!r}: features contain NaN or inf")
    if task != "classification" and partition in ("dirichlet", "shards"):
        raise ValueError(
            f"partition={partition!r} skews class labels and needs a classification task; "
            f"for task={task!r} use 'iid' or 'quantity_skew'"
        )
    min_size = math.ceil(min_examples / (1.0 - test_fraction))
    strat_labels = y if task == "classification" else np.zeros(len(y), np.int32)
    parts = _client_parts(partition, strat_labels, num_clients, seed, min_size, sites, name,
                          alpha=alpha, classes_per_client=classes_per_client,
                          size_distribution=size_distribution, size_sigma=size_sigma)  # fmt: skip
    train_xs, train_ys, test_xs, test_ys = _split_clients(x, y, parts, seed, test_fraction,
                                                          min_examples)  # fmt: skip
    train_xs, test_xs = standardize_clients(train_xs, test_xs, standardize)
    if standardize_target:
        pooled = np.concatenate(train_ys).astype(np.float64)
        mu, sd = pooled.mean(), pooled.std() or 1.0
        train_ys = [(t - mu) / sd for t in train_ys]
        test_ys = [(t - mu) / sd for t in test_ys]
    info = dict(
        partition=partition,
        seed=seed,
        test_fraction=test_fraction,
        min_examples=min_examples,
        standardize=standardize,
    )
    if partition == "dirichlet":
        info["alpha"] = alpha
    elif partition == "shards":
        info["classes_per_client"] = classes_per_client
    elif partition == "quantity_skew":
        info.update(size_distribution=size_distribution, size_sigma=size_sigma)
    return from_client_arrays(
        train_xs,
        train_ys,
        test_xs,
        test_ys,
        task=task,
        num_classes=num_classes,
        name=name,
        info=info,
        metrics=metrics,
    )


@register("breast_cancer")
def breast_cancer(
    num_clients: int = 8,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_client: int = 1,
    size_distribution: str = "lognormal",
    size_sigma: float = 1.0,
    test_fraction: float = 0.2,
    min_examples: int = 10,
    standardize: str = "global",
    seed: int = 0,
    metrics: tuple[str, ...] = ("accuracy",),
) -> FederatedData:
    """Wisconsin Diagnostic Breast Cancer (569 tumours, 30 features, malignant vs benign),
    shipped with scikit-learn, split into ``num_clients`` hospitals by a partitioner.

    References:
        Street, Wolberg, Mangasarian (1993), "Nuclear feature extraction for breast tumor
        diagnosis", UCI dataset 17.
    """
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    return federate(
        ds.data,
        ds.target.astype(np.int32),
        num_clients=num_clients,
        partition=partition,
        seed=seed,
        test_fraction=test_fraction,
        min_examples=min_examples,
        standardize=standardize,
        alpha=alpha,
        classes_per_client=classes_per_client,
        size_distribution=size_distribution,
        size_sigma=size_sigma,
        num_classes=2,
        name="breast_cancer",
        metrics=metrics,
    )


@register("diabetes")
def diabetes(
    num_clients: int = 8,
    partition: str = "iid",
    size_distribution: str = "lognormal",
    size_sigma: float = 1.0,
    test_fraction: float = 0.2,
    min_examples: int = 10,
    standardize: str = "global",
    standardize_target: bool = True,
    seed: int = 0,
    metrics: tuple[str, ...] = ("mse", "mae"),
) -> FederatedData:
    """scikit-learn's diabetes regression (442 patients, 10 baseline variables, disease
    progression after one year) split into hospitals (``iid`` or ``quantity_skew``); the target
    is z-scored with pooled training statistics by default.

    References:
        Efron, Hastie, Johnstone, Tibshirani (2004), "Least Angle Regression", Ann. Stat.
    """
    from sklearn.datasets import load_diabetes

    ds = load_diabetes()
    return federate(
        ds.data,
        ds.target.astype(np.float32),
        num_clients=num_clients,
        partition=partition,
        seed=seed,
        test_fraction=test_fraction,
        min_examples=min_examples,
        standardize=standardize,
        size_distribution=size_distribution,
        size_sigma=size_sigma,
        task="regression",
        num_classes=1,
        name="diabetes",
        standardize_target=standardize_target,
        metrics=metrics,
    )


def _softmax_argmax(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits, axis=-1).astype(np.int32)  # argmax(softmax(z)) == argmax(z)


@register("synthetic")
def synthetic(
    num_clients: int = 30,
    alpha: float = 1.0,
    beta: float = 1.0,
    iid: bool = False,
    num_classes: int = 10,
    dimension: int = 60,
    test_fraction: float = 0.1,
    min_examples: int = 1,
    seed: int = 0,
) -> FederatedData:
    r"""FedProx's ``Synthetic(alpha, beta)`` federation (exact generative process).

    For client :math:`k`: :math:`u_k \sim N(0, \alpha^2)`, :math:`W_k \in R^{60\times10}` and
    :math:`b_k` entries :math:`\sim N(u_k, 1)`; :math:`B_k \sim N(0, \beta^2)`,
    :math:`v_k \in R^{60}` entries :math:`\sim N(B_k, 1)`; :math:`x \sim N(v_k, \Sigma)` with
    :math:`\Sigma = \mathrm{diag}(j^{-1.2})`; :math:`y = \arg\max \mathrm{softmax}(x W_k + b_k)`.
    Sizes are ``floor(LogNormal(4, 2)) + 50`` (the paper's power law). ``iid=True`` gives
    ``Synthetic_IID``: one shared :math:`W, b \sim N(0, 1)` and :math:`v_k = B_k 1`. As in the
    reference code, ``alpha`` and ``beta`` are standard deviations, the first
    ``ceil((1 - test_fraction) n_k)`` examples of each client train and the rest test.

    References:
        Li et al. (2020), "Federated Optimization in Heterogeneous Networks" (FedProx), MLSys,
        Sec. 5.1 and Appendix C.1; the generator follows Shamir et al. (2014).
    """
    _check_split_args(num_clients, test_fraction, min_examples)
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_clients).astype(np.int64) + 50
    mean_w = rng.normal(0.0, alpha, num_clients)
    b_center = rng.normal(0.0, beta, num_clients)
    cov_diag = np.power(np.arange(1, dimension + 1, dtype=np.float64), -1.2)
    if iid:
        v = np.repeat(b_center[:, None], dimension, axis=1)
        w_global = rng.normal(0.0, 1.0, (dimension, num_classes))
        b_global = rng.normal(0.0, 1.0, num_classes)
    else:
        v = rng.normal(b_center[:, None], 1.0, (num_clients, dimension))
    train_xs, train_ys, test_xs, test_ys = [], [], [], []
    for k in range(num_clients):
        if iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(mean_w[k], 1.0, (dimension, num_classes))
            b = rng.normal(mean_w[k], 1.0, num_classes)
        x = v[k] + rng.standard_normal((sizes[k], dimension)) * np.sqrt(cov_diag)
        y = _softmax_argmax(x @ w + b)
        n_train = len(x) - int(math.floor(test_fraction * len(x)))
        if n_train < min_examples:
            raise ValueError(f"client {k} has {n_train} training examples < min_examples")
        train_xs.append(x[:n_train])
        train_ys.append(y[:n_train])
        test_xs.append(x[n_train:])
        test_ys.append(y[n_train:])
    info = dict(alpha=alpha, beta=beta, iid=iid, seed=seed, test_fraction=test_fraction)
    return from_client_arrays(
        train_xs,
        train_ys,
        test_xs,
        test_ys,
        num_classes=num_classes,
        name="synthetic_iid" if iid else f"synthetic({alpha},{beta})",
        info=info,
    )
