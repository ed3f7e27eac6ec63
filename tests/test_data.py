import numpy as np
import pytest

import fljax
from fljax.data import _partition


def _labels(n=600, classes=4, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _check_disjoint_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n


def test_iid_equal_sizes_cover_all():
    parts = _partition.iid(_labels(), 7, np.random.default_rng(0), 10)
    _check_disjoint_cover(parts, 600)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def _mean_label_entropy(parts, labels, classes=4):
    ents = []
    for p in parts:
        q = np.bincount(labels[p], minlength=classes) / len(p)
        q = q[q > 0]
        ents.append(-(q * np.log(q)).sum())
    return np.mean(ents)


def test_dirichlet_min_size_cover_and_skew_grows_as_alpha_shrinks():
    labels = _labels()
    skewed = _partition.dirichlet(labels, 6, np.random.default_rng(0), 20, alpha=0.1)
    mild = _partition.dirichlet(labels, 6, np.random.default_rng(0), 20, alpha=100.0)
    for parts in (skewed, mild):
        _check_disjoint_cover(parts, 600)
        assert min(len(p) for p in parts) >= 20
    assert _mean_label_entropy(skewed, labels) < _mean_label_entropy(mild, labels) - 0.3
    assert _mean_label_entropy(mild, labels) > np.log(4) - 0.05  # near-IID at large alpha


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_rejects_nonpositive_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        fljax.data.load("breast_cancer", partition="dirichlet", alpha=alpha)


def test_dirichlet_impossible_min_raises():
    with pytest.raises(ValueError, match="min_examples|fewer than"):
        _partition.dirichlet(_labels(60), 6, np.random.default_rng(0), 10, alpha=0.01, max_tries=5)


def test_shards_exactly_k_classes_per_client():
    labels = _labels(800, classes=10)
    parts = _partition.shards(labels, 10, np.random.default_rng(1), 5, classes_per_client=2)
    _check_disjoint_cover(parts, 800)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    with pytest.raises(ValueError, match="classes_per_client"):
        _partition.shards(labels, 10, np.random.default_rng(1), 5, classes_per_client=11)


@pytest.mark.parametrize("dist", ["lognormal", "power_law"])
def test_quantity_skew_sizes(dist):
    parts = _partition.quantity_skew(
        _labels(), 8, np.random.default_rng(2), 15, size_distribution=dist, size_sigma=1.5
    )
    _check_disjoint_cover(parts, 600)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 15
    assert sizes.std() / sizes.mean() > 0.3  # visibly unequal
    with pytest.raises(ValueError, match="size_distribution"):
        _partition.quantity_skew(_labels(), 8, np.random.default_rng(0), size_distribution="x")


def test_natural_partition_by_site():
    sites = np.array(["b", "a", "b", "c", "a", "a"])
    parts = _partition.natural(sites)
    assert [p.tolist() for p in parts] == [[1, 4, 5], [0, 2], [3]]
    with pytest.raises(ValueError, match="fewer than 3"):
        _partition.natural(sites, min_size=3)
    with pytest.raises(ValueError, match="site column"):
        fljax.data.load("breast_cancer", partition="natural")


def test_unknown_partition_lists_choices():
    with pytest.raises(ValueError, match="dirichlet"):
        fljax.data.load("breast_cancer", partition="random")


def test_breast_cancer_federation(breast_cancer_fed):
    fed = breast_cancer_fed
    assert fed.num_clients == 8 and fed.feature_shape == (30,) and fed.num_classes == 2
    total = int(fed.train.num_examples.sum() + fed.test.num_examples.sum())
    assert total == 569
    assert fed.num_examples.min() >= 10
    mask = fed.train.mask
    pooled = fed.train.x[mask]
    np.testing.assert_allclose(pooled.mean(0), 0.0, atol=1e-4)  # global TRAIN statistics
    np.testing.assert_allclose(pooled.std(0), 1.0, atol=1e-4)
    # padding stays zero
    assert np.all(fed.train.x[~mask] == 0)


def test_min_examples_guarantee_or_error():
    with pytest.raises(ValueError, match="num_clients|min_examples"):
        fljax.data.load("breast_cancer", num_clients=60, partition="iid", min_examples=10)
    fed = fljax.data.load(
        "breast_cancer", num_clients=20, partition="quantity_skew", min_examples=12
    )
    assert fed.num_examples.min() >= 12


def test_standardization_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = [rng.normal(3, 2, (20, 3)), rng.normal(-1, 1, (10, 3))]
    test = [rng.normal(0, 1, (5, 3)), rng.normal(0, 1, (4, 3))]
    for mode in ("global", "client"):
        a_train, a_test = fljax.data.standardize_clients(train, test, mode)
        b_train, b_test = fljax.data.standardize_clients(train, [t * 100 + 7 for t in test], mode)
        for a, b in zip(a_train, b_train, strict=True):
            np.testing.assert_array_equal(a, b)  # test data cannot influence training features
    g_train, g_test = fljax.data.standardize_clients(train, test, "global")
    mean, std = np.concatenate(train).mean(0), np.concatenate(train).std(0)
    np.testing.assert_allclose(g_test[1], (test[1] - mean) / std)
    c_train, _ = fljax.data.standardize_clients(train, test, "client")
    np.testing.assert_allclose(c_train[1].mean(0), 0, atol=1e-12)


def test_nan_in_data_is_a_clear_error():
    x = [np.ones((3, 2)), np.array([[1.0, np.nan]])]
    y = [np.zeros(3, int), np.zeros(1, int)]
    with pytest.raises(ValueError, match=r"train\.x has NaN.*client 1"):
        fljax.data.from_client_arrays(x, y, x, y)


def test_gather_selects_clients(breast_cancer_fed):
    fed = breast_cancer_fed
    got = fed.gather(np.array([3, 1]))
    np.testing.assert_array_equal(got.x[0], fed.train.x[3])
    np.testing.assert_array_equal(got.num_examples, fed.train.num_examples[[3, 1]])


def test_synthetic_generative_process():
    fed = fljax.data.load("synthetic", num_clients=30, alpha=0.5, beta=0.5, seed=1)
    assert fed.num_clients == 30 and fed.feature_shape == (60,) and fed.num_classes == 10
    sizes = fed.train.num_examples + fed.test.num_examples
    assert sizes.min() >= 50  # floor(LogNormal(4, 2)) + 50
    assert np.all(fed.test.num_examples == np.floor(0.1 * sizes))
    # Within a client, feature j has variance j^-1.2 (Sigma = diag(j^-1.2)).
    big = int(np.argmax(fed.train.num_examples))
    x = fed.train.x[big, : fed.train.num_examples[big]]
    assert len(x) > 400
    var = x.var(0)
    target = np.arange(1, 61) ** -1.2
    assert np.all(np.abs(var / target - 1) < 0.35)
    again = fljax.data.load("synthetic", num_clients=30, alpha=0.5, beta=0.5, seed=1)
    np.testing.assert_array_equal(again.train.x, fed.train.x)


def test_synthetic_iid_shares_feature_distribution():
    iid = fljax.data.load("synthetic", iid=True, alpha=0.0, beta=0.0, num_clients=10, seed=0)
    noniid = fljax.data.load("synthetic", alpha=0.0, beta=1.0, num_clients=10, seed=0)

    def spread_of_client_means(fed):
        means = [fed.train.x[c, : fed.train.num_examples[c]].mean() for c in range(fed.num_clients)]
        return np.std(means)

    assert spread_of_client_means(iid) < 0.1  # v_k = B_k 1 = 0 for beta = 0
    assert spread_of_client_means(noniid) > 0.3


def test_labels_the_task_would_change_are_refused_naming_the_client():
    """Probabilities, negative or out-of-range classes, non-finite targets, negative survival
    times and events other than 0/1 are refused instead of being cast (issue: silent input
    conversion); integer-valued float labels are accepted as they are."""
    x = [np.zeros((3, 2), np.float32)] * 2
    ok = fljax.data.from_client_arrays(x, [np.array([0.0, 1.0, 1.0])] * 2, x,
                                       [np.array([1, 0, 0])] * 2)  # fmt: skip
    np.testing.assert_array_equal(ok.train.y[0, :3], [0, 1, 1])
    cases = [
        ({}, [np.array([0.0, 1.0, 0.0]), np.array([0.2, 0.9, 0.5])], "train client 1.*0.2"),
        ({}, [np.array([0, 1, -1])] * 2, "class indices.*-1"),
        ({"num_classes": 2}, [np.array([0, 1, 2])] * 2, r"0\.\.1, got 2"),
        ({"task": "regression"}, [np.array([0.0, np.nan, 1.0])] * 2, "finite"),
        ({"task": "survival"}, [np.array([[1.0, 1], [-2.0, 0], [3.0, 1]])] * 2, ">= 0"),
        ({"task": "survival"}, [np.array([[1.0, 2], [2.0, 0], [3.0, 1]])] * 2, "events 0 or 1"),
    ]
    for kw, ys, match in cases:
        with pytest.raises(ValueError, match=match):
            fljax.data.from_client_arrays(x, ys, x, ys, **kw)
    # as many labels as feature rows, per client and split
    short = [np.array([0, 1, 0]), np.array([1, 0])]
    with pytest.raises(ValueError, match="test client 1: 3 rows of features but 2 labels"):
        fljax.data.from_client_arrays(x, [np.array([0, 1, 0])] * 2, x, short)


def test_silent_conversions_are_refused():
    """Issue 19, item 7: an infinite learning rate, a seed beyond 64 bits and 1-D scores given
    to a binary metric each get an error naming the field and the fix."""
    with pytest.raises(ValueError, match="client_lr must be a positive finite number"):
        fljax.algorithms.get("fedavg", client_lr=float("inf"), local_epochs=1, batch_size=8)
    y = np.array([0, 1, 1, 0])
    for fn in (fljax.metrics.auroc, fljax.metrics.auprc):
        with pytest.raises(ValueError, match="use fljax.metrics.auroc_scores"):
            fn(np.array([0.1, 0.9, 0.8, 0.3]), y)
    fed = fljax.data.load("breast_cancer", num_clients=2, partition="iid", seed=0)
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="seed must fit in a signed 64-bit integer"):
        fljax.simulate(algo, model, fed, rounds=1, clients_per_round=2, seed=2**70)
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        fljax.simulate(algo, model, fed, rounds=1, clients_per_round=2, seeds=[0, 2**64])


def test_standardization_in_float64_keeps_a_huge_spread_feature():
    """A feature spread ~1e18: its float32 sum of squares overflows (std inf, the feature
    became all zeros); float64 statistics z-score it like a NumPy float64 reference."""
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=400), rng.normal(size=400) * 1e18], axis=1)
    y = (x[:, 0] > 0).astype(np.int64)
    fed = fljax.data.federate(x, y, num_clients=2, partition="iid", seed=0)
    z = fed.train.x[fed.train.mask]
    assert np.all(np.isfinite(z)) and z[:, 1].std() > 0.5
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-5)


def test_clients_without_training_examples_are_refused_or_dropped():
    """An empty client is refused by simulate, naming it; dropped, it is never selected nor
    counted as a participant, and the run equals the one on the federation built without it."""
    rng = np.random.default_rng(0)
    sizes = [30, 0, 25, 40]
    xs = [rng.normal(size=(n, 3)) for n in sizes]
    ys = [(x[:, 0] > 0).astype(np.int64) for x in xs]
    tx = [rng.normal(size=(8, 3)) for _ in sizes]
    ty = [(x[:, 0] > 0).astype(np.int64) for x in tx]
    fed = fljax.data.from_client_arrays(xs, ys, tx, ty, num_classes=2,
                                        client_names=("a", "b", "c", "d"))  # fmt: skip
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=8,
                                weighting="uniform")  # fmt: skip
    with pytest.raises(ValueError, match=r"client\(s\) 1 \(b\) have no training examples"):
        fljax.simulate(algo, model, fed, rounds=2, clients_per_round=3)
    kept = fljax.data.drop_empty_clients(fed)
    assert kept.client_names == ("a", "c", "d") and kept.info["dropped_empty_clients"] == ["b"]
    res = fljax.simulate(algo, model, kept, rounds=2, clients_per_round=3)
    assert res.contributed.all() and res.selected.max() == 2
    keep = [0, 2, 3]
    alone = fljax.data.from_client_arrays([xs[i] for i in keep], [ys[i] for i in keep],
                                          [tx[i] for i in keep], [ty[i] for i in keep],
                                          num_classes=2)  # fmt: skip
    ref = fljax.simulate(algo, model, alone, rounds=2, clients_per_round=3)
    assert res.history[-1]["metrics"] == ref.history[-1]["metrics"]
