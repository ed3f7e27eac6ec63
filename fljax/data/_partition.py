"""Partitioners: split one pooled dataset into ``num_clients`` index sets (host-side NumPy).

Every partitioner takes ``labels[n]`` (or sites), a ``numpy.random.Generator`` and
``min_size`` (the fewest examples any client may get), returns a list of sorted index arrays,
and raises ``ValueError`` when the minimum cannot be met.
"""

from __future__ import annotations

import numpy as np

PARTITIONS = ("iid", "dirichlet", "shards", "quantity_skew", "natural")
"""The partitioners ``load(..., partition=...)`` accepts."""
SIZE_DISTRIBUTIONS = ("lognormal", "power_law")


def _check_common(n: int, num_clients: int, min_size: int):
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if min_size * num_clients > n:
        raise ValueError(
            f"cannot give each of num_clients={num_clients} clients >= {min_size} examples "
            f"from {n} examples; lower num_clients or min_examples"
        )


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, min_size: int = 1):
    """Uniformly random, equal-size (±1) split."""
    n = len(labels)
    _check_common(n, num_clients, min_size)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_size: int = 1,
    *,
    alpha: float = 0.5,
    max_tries: int = 1000,
):
    r"""Label skew: for every class, client shares :math:`p \sim \mathrm{Dir}(\alpha 1_C)`.

    Draws are repeated (from the same generator, so deterministic) until every client has at
    least ``min_size`` examples.

    References:
        Hsu, Qi, Brown (2019), "Measuring the Effects of Non-Identical Data Distribution for
        Federated Visual Classification", arXiv:1909.06335, Sec. 3.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 for partition='dirichlet', got {alpha}")
    n = len(labels)
    _check_common(n, num_clients, min_size)
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for ids in by_class:
            ids = rng.permutation(ids)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(ids)).astype(int)
            for c, chunk in enumerate(np.split(ids, cuts)):
                parts[c].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise ValueError(
        f"partition='dirichlet' with alpha={alpha} gave some client fewer than {min_size} "
        f"examples in {max_tries} draws; raise alpha or lower num_clients or min_examples"
    )


def shards(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_size: int = 1,
    *,
    classes_per_client: int = 2,
):
    """Pathological non-IID: each client holds exactly ``classes_per_client`` classes.

    Classes are dealt round-robin over a random class order (every class is used when
    ``num_clients * classes_per_client >= num_classes``); each class's examples are split
    evenly among the clients that hold it.

    References:
        McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS, Sec. 3 (pathological non-IID partition).
    """
    classes = np.unique(labels)
    if not 1 <= classes_per_client <= len(classes):
        raise ValueError(
            f"classes_per_client must be in [1, {len(classes)}] (the number of classes), "
            f"got {classes_per_client}"
        )
    n = len(labels)
    _check_common(n, num_clients, min_size)
    order = rng.permutation(classes)
    owners: dict[int, list[int]] = {int(k): [] for k in classes}
    for c in range(num_clients):
        for j in range(classes_per_client):
            owners[int(order[(c * classes_per_client + j) % len(order)])].append(c)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for k, holders in owners.items():
        if not holders:
            continue
        ids = rng.permutation(np.flatnonzero(labels == k))
        for c, chunk in zip(holders, np.array_split(ids, len(holders)), strict=True):
            parts[c].append(chunk)
    out = [np.sort(np.concatenate(p)) for p in parts]
    if min(len(o) for o in out) < min_size:
        raise ValueError(
            f"partition='shards' gave some client fewer than {min_size} examples; lower "
            "num_clients or min_examples, or raise classes_per_client"
        )
    return out


def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_size: int = 1,
    *,
    size_distribution: str = "lognormal",
    size_sigma: float = 1.0,
):
    """Quantity skew: IID labels, client sizes ``min_size + share * (n - C * min_size)``.

    Shares are proportional to ``LogNormal(0, size_sigma)`` draws (``"lognormal"``), or follow a
    power law (``"power_law"``): the client of rank ``r`` (ranks dealt in random order) gets a
    share proportional to ``r ** -size_sigma`` (Zipf-like, as LEAF's client sizes).
    """
    if size_distribution not in SIZE_DISTRIBUTIONS:
        raise ValueError(
            f"size_distribution={size_distribution!r} is not one of {SIZE_DISTRIBUTIONS}"
        )
    if not size_sigma > 0:
        raise ValueError(f"size_sigma must be > 0, got {size_sigma}")
    n = len(labels)
    _check_common(n, num_clients, min_size)
    if size_distribution == "lognormal":
        w = rng.lognormal(0.0, size_sigma, num_clients)
    else:
        w = (rng.permutation(num_clients) + 1.0) ** -float(size_sigma)
    free = n - num_clients * min_size
    extra = np.floor(w / w.sum() * free).astype(int)
    extra[np.argsort(-w)[: free - extra.sum()]] += 1  # hand out the rounding remainder
    sizes = min_size + extra
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


def natural(sites: np.ndarray, min_size: int = 1):
    """Natural partition: one client per distinct value of a site column, in sorted order."""
    values = np.unique(sites)
    out = [np.flatnonzero(sites == v) for v in values]
    small = [str(v) for v, o in zip(values, out, strict=True) if len(o) < min_size]
    if small:
        raise ValueError(f"sites {small} have fewer than {min_size} examples")
    return out


def partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    *,
    seed: int,
    min_size: int = 1,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    size_distribution: str = "lognormal",
    size_sigma: float = 1.0,
) -> list[np.ndarray]:
    """Dispatches to a partitioner by name (all but ``"natural"``, which needs sites)."""
    rng = np.random.default_rng(seed)
    if name == "iid":
        return iid(labels, num_clients, rng, min_size)
    if name == "dirichlet":
        return dirichlet(labels, num_clients, rng, min_size, alpha=alpha)
    if name == "shards":
        return shards(labels, num_clients, rng, min_size, classes_per_client=classes_per_client)
    if name == "quantity_skew":
        return quantity_skew(
            labels,
            num_clients,
            rng,
            min_size,
            size_distribution=size_distribution,
            size_sigma=size_sigma,
        )
    if name == "natural":
        raise ValueError("partition='natural' needs a dataset with a site column")
    raise ValueError(f"unknown partition={name!r}; choose one of {PARTITIONS}")
