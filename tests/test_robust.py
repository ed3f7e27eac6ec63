"""Robust aggregators, poisoning attacks and per-client fault isolation (issue 18): each rule
against a NumPy reference on hand-made cohorts (ties, an even count, absent clients), the
breakdown properties, the attacks' crafted updates, and runs through ``fljax.simulate``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fljax
from fljax.aggregate import _robust

D = 5


def _tree(x):
    """A cohort ``x[K, D]`` as a two-leaf pytree (the aggregators must ravel it)."""
    x = jnp.asarray(x, jnp.float32)
    return {"a": x[:, :2], "b": x[:, 2:].reshape(x.shape[0], D - 2, 1)}


def _flat(tree):
    return np.concatenate([np.asarray(tree["a"]), np.asarray(tree["b"]).reshape(-1)])


def _run(agg, x, w, state=None, server_update=None, key=0):
    t = agg.transform
    state = t.init(jnp.zeros(D)) if state is None else state
    extra = {} if server_update is None else {"server_update": {"a": server_update[:2],
                                                                 "b": server_update[2:, None]}}

    @jax.jit
    def go(x, w, state):
        return t.update(_tree(x), state, key=jax.random.key(key), weights=w, **extra)

    out, st = go(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), state)
    return _flat(out), st


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, D)).astype(np.float32)
    x[1, 0] = x[3, 0]  # ties
    x[4] = x[2]  # a duplicated update (a distance tie)
    return x


W_ALL = np.ones(6)
W_ABSENT = np.array([1.0, 2.0, 0.0, 1.0, 3.0, 1.0])  # client 2 absent


# --- NumPy references --------------------------------------------------------------------


def np_trimmed(x, trim):
    n = x.shape[0]
    b = int(np.floor(trim * n))
    s = np.sort(x, axis=0)
    return s[b : n - b].mean(axis=0)


def np_krum_scores(x, f):
    n = x.shape[0]
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    out = []
    for i in range(n):
        others = np.sort(np.delete(d2[i], i))
        out.append(others[: max(n - f - 2, 1)].sum())
    return np.array(out)


def np_bulyan(x, f):
    idx = list(range(x.shape[0]))
    theta = x.shape[0] - 2 * f
    chosen = []
    for _ in range(theta):
        s = np_krum_scores(x[idx], f)
        best = idx[int(np.argmin(s))]
        chosen.append(best)
        idx.remove(best)
    sel = x[sorted(chosen)]
    med = np.median(sel, axis=0)
    beta = theta - 2 * f
    order = np.argsort(np.abs(sel - med), axis=0, kind="stable")
    return np.take_along_axis(sel, order, axis=0)[:beta].mean(axis=0), sorted(chosen)


def np_weiszfeld(x, a, iters, nu):
    a = a / a.sum()
    v = a @ x
    for _ in range(iters):
        beta = a / np.maximum(nu, np.linalg.norm(x - v, axis=1))
        v = beta @ x / beta.sum()
    return v


def np_cc(x, p, v, tau, iters):
    for _ in range(iters):
        z = x - v
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        v = v + p @ (z * np.minimum(1.0, tau / norms))
    return v


# --- the aggregators ----------------------------------------------------------------------


@pytest.mark.parametrize("w", [W_ALL, W_ABSENT], ids=["all", "absent"])
def test_median_and_trimmed_mean_equal_numpy(cohort, w):
    x = cohort[w > 0]
    got, _ = _run(fljax.aggregate.get("median"), cohort, w)
    np.testing.assert_allclose(got, np.median(x, axis=0), rtol=1e-6, atol=1e-6)
    for trim in (0.0, 0.2, 0.4):
        got, _ = _run(fljax.aggregate.get("trimmed_mean", trim=trim), cohort, w)
        np.testing.assert_allclose(got, np_trimmed(x, trim), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("w", [W_ALL, W_ABSENT], ids=["all", "absent"])
def test_krum_and_multi_krum_equal_numpy(cohort, w):
    ids = np.flatnonzero(w > 0)
    x = cohort[ids]
    scores = np_krum_scores(x, 1)
    got, st = _run(fljax.aggregate.get("krum", f=1), cohort, w)
    best = ids[np.argmin(scores)]
    np.testing.assert_allclose(got, cohort[best], rtol=1e-5, atol=1e-6)
    assert np.flatnonzero(np.asarray(st.kept)).tolist() == [best]
    got, st = _run(fljax.aggregate.get("multi_krum", f=1, m=3), cohort, w)
    top = ids[np.argsort(scores, kind="stable")[:3]]
    np.testing.assert_allclose(got, cohort[top].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert sorted(np.flatnonzero(np.asarray(st.kept)).tolist()) == sorted(top.tolist())
    got, st = _run(fljax.aggregate.get("multi_krum", f=1), cohort, w)  # m = n - f
    top = ids[np.argsort(scores, kind="stable")[: len(ids) - 1]]
    np.testing.assert_allclose(got, cohort[top].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_bulyan_equals_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, D)).astype(np.float32)  # n = 8 >= 4f + 3 with f = 1 (even n)
    want, chosen = np_bulyan(x.astype(np.float64), 1)
    got, st = _run(fljax.aggregate.get("bulyan", f=1), x, np.ones(8))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.flatnonzero(np.asarray(st.kept)).tolist() == chosen


@pytest.mark.parametrize("w", [W_ALL, W_ABSENT], ids=["all", "absent"])
def test_geometric_median_equals_weiszfeld(cohort, w):
    got, _ = _run(fljax.aggregate.get("geometric_median", iterations=4, nu=1e-6), cohort, w)
    want = np_weiszfeld(cohort.astype(np.float64), w, 4, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_centered_clipping_equals_numpy_across_rounds(cohort):
    agg = fljax.aggregate.get("centered_clipping", tau=0.5, iterations=2)
    p = W_ABSENT / W_ABSENT.sum()
    v = np.zeros(D)
    state = None
    for r in range(2):  # the center is the previous round's aggregate
        x = cohort + r
        got, state = _run(agg, x, W_ABSENT, state)
        v = np_cc(x.astype(np.float64), p, v, 0.5, 2)
        np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-6)


def test_norm_bounding_equals_numpy(cohort):
    got, _ = _run(fljax.aggregate.get("norm_bounding", max_norm=1.0), cohort, W_ABSENT)
    norms = np.linalg.norm(cohort, axis=1, keepdims=True)
    want = W_ABSENT @ (cohort / np.maximum(1.0, norms)) / W_ABSENT.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fltrust_equals_numpy(cohort):
    g0 = np.array([1.0, -0.5, 0.2, 0.0, 0.3], np.float32)
    agg = fljax.aggregate.get("fltrust", root_size=10)
    got, st = _run(agg, cohort, W_ABSENT, server_update=jnp.asarray(g0))
    cos = cohort @ g0 / (np.linalg.norm(cohort, axis=1) * np.linalg.norm(g0))
    ts = np.maximum(cos, 0) * (W_ABSENT > 0)
    scaled = cohort * (np.linalg.norm(g0) / np.linalg.norm(cohort, axis=1))[:, None]
    np.testing.assert_allclose(got, ts @ scaled / ts.sum(), rtol=1e-5, atol=1e-6)
    assert np.asarray(st.kept).tolist() == (ts > 0).tolist()


def test_bucketing_one_bucket_is_the_mean_and_size_one_is_the_inner_rule(cohort):
    got, st = _run(fljax.aggregate.get("krum", f=1, bucket_size=6), cohort, W_ABSENT)
    np.testing.assert_allclose(got, cohort[W_ABSENT > 0].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.asarray(st.kept).tolist() == (W_ABSENT > 0).tolist()  # the one bucket kept
    inner, _ = _run(fljax.aggregate.get("median"), cohort, W_ABSENT)
    got, _ = _run(_robust.bucketing(fljax.aggregate.get("median"), 1), cohort, W_ABSENT)
    np.testing.assert_allclose(got, inner, rtol=1e-6, atol=1e-6)


def test_bucketing_averages_random_pairs(cohort):
    """Buckets of 2 of a shuffled cohort: the result is the median of 3 pair means, each
    pair a partition of the 6 clients."""
    got, _ = _run(fljax.aggregate.get("median", bucket_size=2), cohort, W_ALL, key=3)
    import itertools

    candidates = []
    for perm in itertools.permutations(range(6)):
        means = cohort[list(perm)].reshape(3, 2, D).mean(axis=1)
        candidates.append(np.median(means, axis=0))
    assert min(np.abs(c - got).max() for c in candidates) < 1e-5


# --- breakdown properties -----------------------------------------------------------------


@pytest.mark.parametrize("n, f", [(7, 3), (8, 3)])
def test_median_and_trimmed_mean_stay_within_the_honest_range(n, f):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, D)).astype(np.float32)
    x[:f] = rng.choice([-1e6, 1e6], size=(f, D))  # f < n / 2 arbitrary updates
    honest = x[f:]
    for agg in (fljax.aggregate.get("median"), fljax.aggregate.get("trimmed_mean", trim=0.45)):
        got, _ = _run(agg, x, np.ones(n))
        assert np.all(got >= honest.min(axis=0) - 1e-5) and np.all(got <= honest.max(axis=0) + 1e-5)


def test_krum_picks_an_honest_update_when_n_exceeds_2f_plus_2():
    rng = np.random.default_rng(3)
    n, f = 9, 3  # n > 2f + 2
    x = rng.normal(scale=0.1, size=(n, D)).astype(np.float32)
    x[:f] = rng.normal(loc=5.0, scale=0.01, size=(f, D))  # colluders, close to each other
    _, st = _run(fljax.aggregate.get("krum", f=f), x, np.ones(n))
    assert int(np.flatnonzero(np.asarray(st.kept))[0]) >= f


# --- the attacks ----------------------------------------------------------------------------


def _craft(attack, x, mal, benign, key=0):
    fn = jax.jit(lambda x, m, b: attack.craft(x, m, b, jax.random.key(key)))
    return np.asarray(fn(jnp.asarray(x), jnp.asarray(mal), jnp.asarray(benign)))


@pytest.fixture(scope="module")
def attacked():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, D)).astype(np.float32)
    mal = np.zeros(8, bool)
    mal[[1, 5]] = True
    benign = ~mal
    benign[7] = False  # a dropped straggler: neither
    return x, mal, benign


def test_own_update_attacks(attacked):
    x, mal, benign = attacked
    got = _craft(fljax.attacks.get("sign_flip", fraction=0.2, scale=2.0), x, mal, benign)
    np.testing.assert_allclose(got[mal], -2.0 * x[mal], rtol=1e-6)
    np.testing.assert_array_equal(got[~mal], x[~mal])
    got = _craft(fljax.attacks.get("scaling", fraction=0.2, scale=10.0), x, mal, benign)
    np.testing.assert_allclose(got[mal], 10.0 * x[mal], rtol=1e-6)
    rng_key_draw = _craft(fljax.attacks.get("gaussian", fraction=0.2, sigma=3.0), x, mal, benign)
    want = 3.0 * np.asarray(jax.random.normal(jax.random.key(0), x.shape))
    np.testing.assert_allclose(rng_key_draw[mal], want[mal], rtol=1e-6)
    np.testing.assert_array_equal(rng_key_draw[~mal], x[~mal])


def test_alie_ipm_equal_their_papers(attacked):
    x, mal, benign = attacked
    mu, sd = x[benign].mean(axis=0), x[benign].std(axis=0)
    n, m = int(benign.sum() + mal.sum()), int(mal.sum())
    s = np.floor(n / 2 + 1) - m
    z = stats.norm.ppf((n - s) / n)  # Baruch et al., Algorithm 3
    got = _craft(fljax.attacks.get("alie", fraction=0.2), x, mal, benign)
    np.testing.assert_allclose(got[mal], np.tile(mu - z * sd, (m, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[~mal], x[~mal])
    got = _craft(fljax.attacks.get("ipm", fraction=0.2, epsilon=0.5), x, mal, benign)
    np.testing.assert_allclose(got[mal], np.tile(-0.5 * mu, (m, 1)), rtol=1e-5, atol=1e-6)


def np_min_max_sum(x, rule, direction, gamma_init=10.0, steps=30):
    """Shejwalkar and Houmansadr (2021), Eq. (5) / (6): the largest feasible gamma."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    p = {"std": -sd, "sign": -np.sign(mu), "unit_vec": -mu / np.linalg.norm(mu)}[direction]
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    bound = d2.max() if rule == "max" else d2.sum(axis=1).max()

    def ok(gamma):
        dist = ((x - (mu + gamma * p)) ** 2).sum(-1)
        return (dist.max() if rule == "max" else dist.sum()) <= bound

    lo, hi = 0.0, gamma_init  # grow until infeasible, then bisect (argmax of Eq. 5 / 6)
    while ok(hi):
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    best = lo
    return mu + best * p, best


@pytest.mark.parametrize("name, rule", [("min_max", "max"), ("min_sum", "sum")])
@pytest.mark.parametrize("direction", ["std", "sign", "unit_vec"])
def test_min_max_min_sum_equal_their_search(attacked, name, rule, direction):
    x, mal, benign = attacked
    got = _craft(fljax.attacks.get(name, fraction=0.2, perturbation=direction), x, mal, benign)
    want, gamma = np_min_max_sum(x[benign].astype(np.float64), rule, direction)
    assert gamma > 0
    np.testing.assert_allclose(got[mal], np.tile(want, (2, 1)), rtol=1e-4, atol=1e-5)
    # the crafted update sits on the boundary of the constraint (the largest gamma)
    d = ((x[benign] - got[mal][0]) ** 2).sum(-1)
    pair = ((x[benign][:, None] - x[benign][None]) ** 2).sum(-1)
    used, bound = (d.max(), pair.max()) if rule == "max" else (d.sum(), pair.sum(1).max())
    assert bound * (1 - 1e-3) <= used <= bound * (1 + 1e-5)


def test_malicious_sets_and_bad_input():
    a = fljax.attacks.get("alie", fraction=0.2, seed=5)
    m = fljax.attacks.malicious_clients(a, 20)
    assert m.sum() == 4 and np.array_equal(m, fljax.attacks.malicious_clients(a, 20))
    b = fljax.attacks.get("alie", ids=[0, 19])
    assert np.flatnonzero(fljax.attacks.malicious_clients(b, 20)).tolist() == [0, 19]
    with pytest.raises(ValueError, match=r"malicious client ids \[20\] are outside"):
        fljax.attacks.malicious_clients(fljax.attacks.get("ipm", ids=[3, 20]), 20)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in \\[0, 1\\)"):
            fljax.attacks.get("sign_flip", fraction=bad)
    with pytest.raises(ValueError, match="unknown attack name='nope'"):
        fljax.attacks.get("nope")
    with pytest.raises(ValueError, match="perturbation='x' is not one of"):
        fljax.attacks.get("min_max", fraction=0.1, perturbation="x")


def test_aggregator_bad_input():
    with pytest.raises(ValueError, match="trim must be a fraction in \\[0, 0.5\\)"):
        fljax.aggregate.get("trimmed_mean", trim=0.5)
    with pytest.raises(ValueError, match="fltrust needs a root dataset"):
        fljax.aggregate.get("fltrust")
    with pytest.raises(ValueError, match="unknown aggregator name='nope'"):
        fljax.aggregate.get("nope")
    assert "needs clients_per_round > 2f + 2 = 8, got 8" in fljax.aggregate.get(
        "krum", f=3).min_cohort(8)  # fmt: skip
    assert fljax.aggregate.get("krum", f=3).min_cohort(9) is None
    assert "needs clients_per_round >= 4f + 3 = 11, got 10" in fljax.aggregate.get(
        "bulyan", f=2).min_cohort(10)  # fmt: skip


def test_data_poisoning():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 10, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=(4, 10)).astype(np.int32)
    n = np.array([10, 8, 10, 6], np.int32)
    split = fljax.data.ClientData(x, y, n)
    fed = fljax.data.FederatedData(split, split, num_classes=3)
    mal = np.array([False, True, False, True])
    flipped = fljax.attacks.get("label_flip", ids=[1, 3]).poison(fed, mal, rng)
    np.testing.assert_array_equal(flipped.train.y[mal], 2 - y[mal])
    np.testing.assert_array_equal(flipped.train.y[~mal], y[~mal])
    bd = fljax.attacks.get("backdoor", ids=[1, 3], target=2, poison_fraction=0.5,
                           trigger_size=2, trigger_value=9.0)  # fmt: skip
    out = bd.poison(fed, mal, np.random.default_rng(0))
    for c, k in ((1, 4), (3, 3)):  # ceil(0.5 n) of the real examples
        hit = np.all(out.train.x[c, :, -2:] == 9.0, axis=-1)
        assert hit.sum() == k and not hit[n[c]:].any()
        assert np.all(out.train.y[c][hit] == 2)
    np.testing.assert_array_equal(out.train.x[~mal], x[~mal])
    img = np.zeros((2, 8, 8, 1))
    stamped = fljax.attacks.triggered(img, 3, 1.0)
    assert stamped[:, -3:, -3:].min() == 1.0 and stamped.sum() == 2 * 9


# --- through simulate -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def setting():
    fed = fljax.data.load("breast_cancer", num_clients=10, partition="iid", seed=0)
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=32)
    return fed, model, algo


def _sim(setting, **kw):
    fed, model, algo = setting
    kw.setdefault("rounds", 6)
    kw.setdefault("eval_every", 6)
    return fljax.simulate(kw.pop("algorithm", algo), model, fed, clients_per_round=10, **kw)


@pytest.fixture(scope="module")
def fedavg(setting):
    return _sim(setting)


def test_mean_based_rules_equal_fedavg_without_attackers(setting, fedavg):
    bounded = _sim(setting, aggregator=fljax.aggregate.get("norm_bounding", max_norm=1e9))
    assert [e["robust"]["aggregator"] for e in bounded.history] == ["norm_bounding"] * 2
    assert [{k: v for k, v in e.items() if k != "robust"} for e in bounded.history] == (
        fedavg.history
    )  # bit for bit
    cc = _sim(setting, aggregator=fljax.aggregate.get("centered_clipping", tau=1e9))
    for a, b in zip(jax.tree.leaves(cc.params), jax.tree.leaves(fedavg.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


ROBUST = [("median", {}), ("trimmed_mean", {"trim": 0.2}), ("krum", {"f": 2}),
          ("multi_krum", {"f": 2}), ("bulyan", {"f": 1}), ("geometric_median", {}),
          ("centered_clipping", {"tau": 1.0}), ("norm_bounding", {"max_norm": 1.0}),
          ("fltrust", {"root_size": 40}), ("centered_clipping", {"bucket_size": 2})]  # fmt: skip


@pytest.mark.parametrize("name, kw", ROBUST, ids=[f"{n}{'_b' * ('bucket_size' in k)}"
                                                   for n, k in ROBUST])  # fmt: skip
def test_every_robust_rule_trains_like_fedavg_without_attackers(setting, fedavg, name, kw):
    r = _sim(setting, aggregator=fljax.aggregate.get(name, **kw))
    want = fedavg.final_metrics["test_accuracy"]
    assert r.final_metrics["test_accuracy"] >= want - 0.02, (name, r.final_metrics, want)
    if r.history[-1]["robust"].get("kept") is not None:
        assert len(r.history[-1]["robust"]["kept"]) == 6


def test_median_survives_the_issue_attacks(setting, fedavg):
    """The issue's reproduction: one hospital sending its update x1e3 or -10x."""
    big = fljax.attacks.get("scaling", ids=[3], scale=1e3)
    flip = fljax.attacks.get("sign_flip", ids=[3], scale=10.0)
    med = fljax.aggregate.get("median")
    plain = _sim(setting, attack=flip)
    robust = _sim(setting, attack=flip, aggregator=med)
    assert robust.final_metrics["test_accuracy"] > plain.final_metrics["test_accuracy"]
    assert robust.final_metrics["test_accuracy"] >= fedavg.final_metrics["test_accuracy"] - 0.03
    capped = _sim(setting, attack=big, reject_norm=50.0)
    rej = capped.history[-1]["rejected"]
    assert rej["total"] == 6 and rej["per_client"][3] == 6  # every round, client 3
    assert capped.history[-1]["attack"]["malicious"] == [3]
    assert capped.final_metrics["test_accuracy"] >= fedavg.final_metrics["test_accuracy"] - 0.03


def test_nonfinite_client_is_rejected_not_fatal(setting):
    nan = fljax.attacks.get("scaling", ids=[2, 7], scale=float("nan"))
    r = _sim(setting, attack=nan, eval_every=3)
    assert r.history[-1]["rejected"]["per_client"] == [0, 0, 6, 0, 0, 0, 0, 6, 0, 0]
    assert r.history[1]["rejected"]["rounds"] == [[2, 7]] * 3
    assert not r.contributed[np.isin(r.selected, [2, 7])].any()
    assert r.contributed[~np.isin(r.selected, [2, 7])].all()
    assert r.history[-1]["client_metrics"]["participation"][2] == 0
    assert np.isfinite(r.final_metrics["test_loss"])


def test_streamed_rejection_equals_dense(setting):
    """A client with a mis-scaled feature (a corrupted export): its update is far beyond the
    norm cap; the streamed (client_chunk) round rejects it like the dense one."""
    fed, model, algo = setting
    x = np.array(fed.train.x, copy=True)
    x[4, :, 0] *= 1e6
    import dataclasses

    bad = dataclasses.replace(fed, train=fljax.data.ClientData(x, fed.train.y,
                                                                 fed.train.num_examples))
    kw = dict(rounds=2, clients_per_round=10, eval_every=2, reject_norm=100.0)
    dense = fljax.simulate(algo, model, bad, **kw)
    chunked = fljax.simulate(algo, model, bad, client_chunk=4, **kw)
    assert dense.history[-1]["rejected"]["per_client"][4] == 2
    assert chunked.history[-1]["rejected"] == dense.history[-1]["rejected"]
    np.testing.assert_allclose(chunked.final_metrics["test_loss"],
                               dense.final_metrics["test_loss"], rtol=1e-5)  # fmt: skip


def test_rejected_client_counts_in_dp_denominator():
    """Under client-level DP a rejected client adds nothing to the clipped sum and the sum is
    still divided by the expected cohort (the fixed denominator)."""
    from fljax.engine._robust import reject_updates
    from fljax.privacy._mechanisms import gaussian_sum_aggregator

    x = jnp.asarray([[3.0, 4.0], [jnp.nan, 1.0], [0.3, 0.4]])
    stage = reject_updates(None)
    ctx = fljax.engine._context.RoundCtx(key=jax.random.key(0), deltas=x,
                                          weights=jnp.ones(3), contributed=jnp.ones(3, bool))
    _, ctx = stage.apply(None, ctx)
    assert np.asarray(ctx.rejected).tolist() == [False, True, False]
    agg = gaussian_sum_aggregator(clip_norm=1.0, noise_multiplier=0.0, expected_clients=3)
    out, _ = agg.update(ctx.deltas, agg.init(None), key=jax.random.key(1), weights=ctx.weights)
    np.testing.assert_allclose(out, (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 3, rtol=1e-6)


def test_backdoor_success_is_reported_and_norm_bounding_lowers_it(setting):
    bd = fljax.attacks.get("backdoor", fraction=0.3, target=0, poison_fraction=1.0,
                           trigger_size=5, scale=5.0)  # fmt: skip
    plain = _sim(setting, attack=bd)
    bounded = _sim(setting, attack=bd, aggregator=fljax.aggregate.get("norm_bounding",
                                                                      max_norm=0.05))
    asr = plain.final_metrics["backdoor_success"]
    assert 0.0 <= bounded.final_metrics["backdoor_success"] <= asr
    assert asr > 0.5
    assert plain.history[-1]["attack"]["name"] == "backdoor"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(aggregator=functools.partial(fljax.aggregate.get, "krum", f=4)),
         "needs clients_per_round > 2f \\+ 2 = 10, got 10"),
        (dict(aggregator=functools.partial(fljax.aggregate.get, "bulyan", f=2)),
         "needs clients_per_round >= 4f \\+ 3 = 11"),
        (dict(aggregator=functools.partial(fljax.aggregate.get, "median"),
              secure_aggregation=lambda: fljax.privacy.get("secagg")),
         "secure aggregation shows the server only their sum"),
        (dict(aggregator=functools.partial(fljax.aggregate.get, "median"),
              algorithm=lambda: fljax.algorithms.get("fednova", client_lr=0.1, local_epochs=1)),
         "FedNova's normalised averaging"),
        (dict(attack=lambda: fljax.attacks.get("ipm", ids=[10])),
         "malicious client ids \\[10\\] are outside"),
        (dict(reject_norm=lambda: -1.0), "reject_norm must be a positive finite number"),
        (dict(aggregator=lambda: "median"), "aggregator must be a fljax Aggregator"),
    ],
)  # fmt: skip
def test_bad_combinations_are_refused(setting, kw, match):
    with pytest.raises(ValueError, match=match):
        _sim(setting, rounds=1, eval_every=1, **{k: v() for k, v in kw.items()})


def test_resume_keeps_robust_state_and_counts(setting, tmp_path):
    """Centered clipping's center, the rejection counts and Krum-style kept counts survive a
    checkpoint: a resumed run equals the uninterrupted one."""
    kw = dict(aggregator=fljax.aggregate.get("centered_clipping", tau=0.3),
              attack=fljax.attacks.get("scaling", ids=[4], scale=1e3), reject_norm=20.0,
              eval_every=2)  # fmt: skip
    full = _sim(setting, rounds=4, **kw)
    _sim(setting, rounds=2, checkpoint_dir=str(tmp_path), **kw)
    resumed = _sim(setting, rounds=4, checkpoint_dir=str(tmp_path), resume=True, **kw)
    assert resumed.history == full.history
    assert full.history[-1]["rejected"]["per_client"][4] == 4


def test_centered_clipping_under_client_dp_equals_its_numpy_mechanism():
    """v <- v + (sum_k clip_C(x_k - v) + noise) / m, the center the last release."""
    from fljax.aggregate._robust import centered_dp
    from fljax.privacy._mechanisms import gaussian_sum_parts

    agg = centered_dp(gaussian_sum_parts(1.0, 0.0, expected_clients=4))
    rng = np.random.default_rng(5)
    w = np.array([1.0, 1.0, 0.0, 1.0])  # client 2 absent: still in the denominator m = 4
    state, v = agg.init(jnp.zeros(D)), np.zeros(D)
    update = jax.jit(lambda x, s: agg.update(x, s, key=jax.random.key(0), weights=jnp.asarray(w)))
    for _ in range(2):
        x = rng.normal(size=(4, D)).astype(np.float32) * 2
        out, state = update(jnp.asarray(x), state)
        z = x - v
        clipped = z * np.minimum(1.0, 1.0 / np.linalg.norm(z, axis=1, keepdims=True))
        v = v + (w @ clipped) / 4
        np.testing.assert_allclose(out, v, rtol=1e-5, atol=1e-6)


def test_centered_clipping_composes_with_client_dp(setting):
    dp = fljax.privacy.get("central_dp", clip_norm=0.5, noise_multiplier=1.0, sampling="fixed")
    cc = fljax.aggregate.get("centered_clipping", tau=0.5)
    plain = _sim(setting, rounds=1, eval_every=1, privacy=dp)
    first = _sim(setting, rounds=1, eval_every=1, privacy=dp, aggregator=cc)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # round 1: center 0, DP-FedAvg
    both = _sim(setting, rounds=3, eval_every=3, privacy=dp, aggregator=cc)
    ref = _sim(setting, rounds=3, eval_every=3, privacy=dp)
    assert both.history[-1]["epsilon"] == ref.history[-1]["epsilon"]  # same accountant
    with pytest.raises(ValueError, match="tau equal to the privacy clip_norm=0.5"):
        _sim(setting, rounds=1, privacy=dp, aggregator=fljax.aggregate.get("centered_clipping"))
    with pytest.raises(ValueError, match="Composable: centered_clipping"):
        _sim(setting, rounds=1, privacy=dp, aggregator=fljax.aggregate.get("median"))


def test_exact_selection_equals_a_sort_with_ties_and_extremes():
    """The bisection selection behind the median, trimmed mean and Bulyan is exact: every
    rank of every column equals NumPy's sort, with ties, negatives, +-inf and absent rows."""
    rng = np.random.default_rng(6)
    x = rng.choice([-3.5, -1.0, 0.0, 0.25, 2.0, 1e30, -np.inf, np.inf], size=(9, 7))
    x[:, 0] = rng.normal(size=9)
    x = x.astype(np.float32)
    present = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    want = np.sort(x[present], axis=0)
    kth = jax.jit(_robust.kth_smallest)
    for k in range(int(present.sum())):
        np.testing.assert_array_equal(kth(x, present, jnp.int32(k)), want[k])
    finite = np.where(np.isfinite(x), x, 7.0).astype(np.float32)
    wf = np.sort(finite[present], axis=0)
    for b in range(4):
        got = jax.jit(_robust.trimmed_sum)(finite, present, jnp.int32(b))
        np.testing.assert_allclose(got, wf[b : len(wf) - b].sum(axis=0), rtol=1e-6)
