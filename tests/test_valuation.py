"""Counterfactual federations on the runs axis (``simulate(subsets=)``) and site valuation
(:mod:`fljax.valuation`): each subset run equals the run on the reduced federation, the
Shapley formulas meet the axioms, planted bad sites rank last, GTG-Shapley reconstructs the
very run it values."""

import itertools
import math

import jax
import numpy as np
import pytest

import fljax
from fljax import valuation as V
from fljax.data import from_client_arrays, select_clients

MODEL = fljax.models.get("logistic", num_classes=2)


def _site(rng, n, w, flip=0.0):
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x @ w > 0).astype(np.int32)
    y = np.where(rng.random(n) < flip, 1 - y, y)
    return x, y


def _fed(flips=(0.0, 0.0, 0.0, 0.0), sizes=(30, 24, 18, 12), twin=None, seed=0):
    """Sites of one linear task; ``flips``: per-site label flip rates; ``twin=(a, b)``: site b
    is an exact copy of site a."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=5)
    train = [_site(rng, n, w, f) for n, f in zip(sizes, flips, strict=True)]
    test = [_site(rng, 10, w) for _ in sizes]
    if twin is not None:
        train[twin[1]] = train[twin[0]]
    return from_client_arrays([t[0] for t in train], [t[1] for t in train],
                              [t[0] for t in test], [t[1] for t in test], num_classes=2)


def _validation(seed=1):
    rng = np.random.default_rng(0)
    w = rng.normal(size=5)
    return _site(np.random.default_rng(seed), 200, w)


def _algo(name="fedavg", **kw):
    return fljax.algorithms.get(name, client_lr=0.3, local_epochs=None, local_steps=3,
                                batch_size=None, **kw)  # fmt: skip


def _max_gap(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


MASKS = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0]], bool)


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "feddyn"])
def test_each_subset_run_equals_the_reduced_federation(name):
    """Full participation of each subset's sites == a run on the reduced federation (SCAFFOLD's
    and FedDyn's server updates count the run's sites as N)."""
    fed, algo = _fed(), _algo(name)
    seeds, masks = ([0, 5], MASKS) if name == "fedavg" else ([5], MASKS[1:3])
    runs = fljax.simulate(algo, MODEL, fed, rounds=3, clients_per_round=4, seeds=seeds,
                          eval_every=3, subsets=masks)  # fmt: skip
    assert len(runs) == len(seeds) * len(masks)
    for r, (seed, mask) in zip(runs, itertools.product(seeds, masks), strict=True):
        ids = np.flatnonzero(mask)
        ref = fljax.simulate(algo, MODEL, select_clients(fed, ids), rounds=3,
                             clients_per_round=len(ids), seed=seed, eval_every=3)  # fmt: skip
        assert _max_gap(r.params, ref.params) < 1e-5
        assert r.history[-1]["subset"] == ids.tolist() and r.history[-1]["seed"] == seed
        took_part = np.zeros(4, bool)
        took_part[np.unique(r.selected[r.contributed])] = True
        assert (took_part == mask).all()  # the excluded never train or count


def test_subsets_with_minibatches_equal_the_reduced_federation_when_ids_keep():
    """With minibatches the per-site keys fold in the site's index: excluding the last sites
    keeps every index, so the runs match exactly."""
    fed = _fed()
    algo = fljax.algorithms.get("fedprox", mu=0.1, client_lr=0.1, local_epochs=2, batch_size=4)
    masks = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    runs = fljax.simulate(algo, MODEL, fed, rounds=2, clients_per_round=4, subsets=masks)
    for r, k in zip(runs, (3, 2), strict=True):
        ref = fljax.simulate(algo, MODEL, select_clients(fed, range(k)), rounds=2,
                             clients_per_round=k)  # fmt: skip
        assert _max_gap(r.params, ref.params) < 1e-5


def test_fixed_cohorts_are_drawn_among_the_included_sites():
    """K < C: an all-sites mask reproduces the plain run exactly; a subset's cohorts hold only
    its sites."""
    fed = _fed(sizes=(20,) * 6, flips=(0.0,) * 6)
    algo = _algo()
    plain = fljax.simulate(algo, MODEL, fed, rounds=4, clients_per_round=2, seed=3)
    masks = np.array([[1] * 6, [0, 1, 1, 0, 1, 0]], bool)
    every, some = fljax.simulate(algo, MODEL, fed, rounds=4, clients_per_round=2, seed=3,
                                 subsets=masks)  # fmt: skip
    assert (every.selected == plain.selected).all()
    assert _max_gap(every.params, plain.params) == 0.0
    assert set(np.unique(some.selected)) <= {1, 2, 4} and some.contributed.all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(subsets=[[0, 0, 0, 0]]), "excludes every site"),
        (dict(subsets=[[1, 1, 0]]), r"subsets\[0\] must be 4 booleans"),
        (dict(subsets=[[1, 2, 0, 0]]), r"subsets\[0\] must be 4 booleans"),
        (dict(subsets=[]), "non-empty list"),
        (dict(subsets=[[1, 0, 0, 0]], clients_per_round=2), "fewer than clients_per_round=2"),
        (dict(subsets=[[1, 1, 0, 0]], privacy=fljax.privacy.get(
            "central_dp", clip_norm=1.0, noise_multiplier=1.0, sampling="fixed")),
         "client-level DP"),
        (dict(subsets=[[1, 1, 0, 0]], algorithm=fljax.algorithms.get("centralized")),
         "mode 'federated'"),
    ],
)
def test_bad_subsets_are_refused_naming_the_field(kwargs, match):
    args = dict(algorithm=_algo(), model=MODEL, data=_fed(), rounds=1, clients_per_round=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fljax.simulate(**args)


class _Game:
    """A game with a known utility (no training): tests the value formulas themselves."""

    def __init__(self, n, v, seeds=(0,)):
        self.num_sites, self.v, self.seeds = n, v, list(seeds)
        self.sites = tuple(f"s{i}" for i in range(n))
        self.cache, self.federations = {}, 0

    def utilities(self, masks):
        out = np.array([[self.v(frozenset(np.flatnonzero(m)), s) for m in masks]
                        for s in self.seeds])  # fmt: skip
        for m in masks:
            self.cache[tuple(m)] = None
        return out


def _reference_shapley(n, v):
    phi = np.zeros(n)
    for perm in itertools.permutations(range(n)):
        for d, i in enumerate(perm):
            phi[i] += v(frozenset(perm[: d + 1]), 0) - v(frozenset(perm[:d]), 0)
    return phi / math.factorial(n)


def test_shapley_formula_meets_the_axioms():
    """Efficiency, symmetry (sites 0 and 1 interchangeable), null player (site 4), and equality
    with the permutation definition on a non-additive game."""
    def v(s, seed):
        base = 1.0 * (0 in s) + 1.0 * (1 in s) + 0.5 * (2 in s) + 0.2 * (3 in s)
        return base + 0.7 * ({0, 2} <= s) + 0.7 * ({1, 2} <= s) - 0.3 * (len(s - {4}) >= 3)

    g = _Game(5, v)
    val = V.shapley(g)
    phi = val.values[0]
    np.testing.assert_allclose(phi, _reference_shapley(5, v), atol=1e-12)
    assert abs(phi.sum() - (val.full[0] - val.empty[0])) < 1e-12
    assert abs(phi[0] - phi[1]) < 1e-12 and abs(phi[4]) < 1e-12
    loo = V.leave_one_out(g).values[0]
    full = v(frozenset(range(5)), 0)
    np.testing.assert_allclose(loo, [full - v(frozenset(set(range(5)) - {i}), 0)
                                     for i in range(5)])  # fmt: skip


def test_tmc_shapley_approaches_the_exact_values():
    def v(s, seed):
        w = np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.0])
        return float(w[list(s)].sum()) + 0.2 * ({0, 1} <= s)

    exact = V.shapley(_Game(6, v)).values[0]
    tmc = V.tmc_shapley(_Game(6, v), tolerance=0.0, batch=32, max_permutations=800, seed=1)
    assert tmc.info["permutations"] <= 800
    np.testing.assert_allclose(tmc.values[0], exact, atol=0.03)
    assert list(np.argsort(-tmc.values[0]))[:3] == [0, 1, 2]


@pytest.fixture(scope="module")
def planted():
    """Sites 0-2 clean, site 1's twin at 3, site 4's labels all flipped."""
    fed = _fed(flips=(0.0, 0.0, 0.0, 0.0, 1.0), sizes=(30, 24, 18, 24, 24), twin=(1, 3))
    g = V.game(_algo(), MODEL, fed, validation=_validation(), rounds=3, seeds=[0, 1, 2],
               metric="loss")  # fmt: skip
    return fed, g


def test_exact_shapley_on_a_federation_planted_sites(planted):
    fed, g = planted
    val = V.shapley(g)
    assert g.programs == 1 and val.federations == 31 * 3  # 31 coalitions x 3 seeds, 1 program
    np.testing.assert_allclose(val.values.sum(axis=1), val.full - val.empty, atol=1e-5)
    np.testing.assert_allclose(val.values[:, 1], val.values[:, 3], atol=1e-4)  # the twins
    assert val.ranking()[-1] == fed.client_names[4]  # the flipped-label site
    assert val.mean[4] < 0 < val.mean[0]
    assert (val.interval() > 0).all() and "95% CI (3 seeds)" in val.table()
    loo = V.leave_one_out(g)
    assert loo.federations == 0  # every coalition it needs was trained already
    assert int(np.argmin(loo.mean)) == 4


def test_gtg_shapley_values_the_run_it_reconstructs(planted):
    fed, g = planted
    gtg = V.gtg_shapley(_algo(), MODEL, fed, validation=_validation(), rounds=3, seeds=[0, 1, 2],
                        metric="loss", between=0.0, within=0.0)  # fmt: skip
    assert gtg.info["reconstruction_gap"] < 1e-5
    # the run it values is simulate's own grand-coalition run of each seed
    np.testing.assert_allclose(gtg.full, g.utilities([(True,) * 5])[:, 0], atol=1e-5)
    np.testing.assert_allclose(gtg.empty, g.utilities([(False,) * 5])[:, 0], atol=1e-6)
    # no truncation: per-round efficiency adds up over rounds
    np.testing.assert_allclose(gtg.values.sum(axis=1), gtg.full - gtg.empty, atol=1e-4)
    assert gtg.ranking()[-1] == fed.client_names[4]
    with pytest.raises(ValueError, match="allowed: .*fedavg"):
        V.gtg_shapley(_algo("scaffold"), MODEL, fed, validation=_validation(), rounds=1)


def test_game_and_holdout_refuse_bad_input():
    fed = _fed()
    kept, val = V.holdout(fed, 0.25, seed=0)
    assert int(val.num_examples[0]) + int(kept.num_examples.sum()) == int(fed.num_examples.sum())
    np.testing.assert_array_equal(kept.test.x, fed.test.x)  # test splits untouched
    with pytest.raises(ValueError, match="fraction"):
        V.holdout(fed, 1.5)
    with pytest.raises(ValueError, match="validation must hold"):
        V.game(_algo(), MODEL, fed, validation=(np.zeros((3, 7)), np.zeros(3)), rounds=1)
    with pytest.raises(ValueError, match="unknown metrics"):
        V.game(_algo(), MODEL, fed, validation=val, rounds=1, metric="dice")
    with pytest.raises(ValueError, match="'subsets' is set by the game"):
        V.game(_algo(), MODEL, fed, validation=val, rounds=1, subsets=[[1, 1, 1, 1]])
    with pytest.raises(ValueError, match="at most 12"):
        V.shapley(_Game(13, lambda s, seed: 0.0))


def test_a_subsets_program_resumes_to_the_uninterrupted_result(tmp_path):
    fed, algo = _fed(), _algo()
    kw = dict(clients_per_round=4, seeds=[0, 1], subsets=MASKS[:2], eval_every=1)
    whole = fljax.simulate(algo, MODEL, fed, rounds=3, **kw)
    fljax.simulate(algo, MODEL, fed, rounds=2, checkpoint_dir=str(tmp_path), **kw)
    resumed = fljax.simulate(algo, MODEL, fed, rounds=3, checkpoint_dir=str(tmp_path),
                             resume=True, **kw)  # fmt: skip
    for a, b in zip(whole, resumed, strict=True):
        assert _max_gap(a.params, b.params) == 0.0
        assert a.history[-1]["subset"] == b.history[-1]["subset"]
    with pytest.raises(ValueError, match="subsets"):  # other subsets: another simulation
        fljax.simulate(algo, MODEL, fed, rounds=3, checkpoint_dir=str(tmp_path), resume=True,
                       **{**kw, "subsets": MASKS[2:]})  # fmt: skip


def test_subsets_cross_with_a_sweep_in_seed_sweep_subset_order():
    fed, algo = _fed(), _algo()
    runs = fljax.simulate(algo, MODEL, fed, rounds=2, clients_per_round=4, seeds=[1],
                          sweep={"client_lr": [0.1, 0.3]}, subsets=MASKS[1:3])  # fmt: skip
    assert [(r.history[-1]["sweep"]["client_lr"], r.history[-1]["subset"]) for r in runs] == [
        (0.1, [0, 2, 3]), (0.1, [2]), (0.3, [0, 2, 3]), (0.3, [2])]
    for r in runs:
        lr, ids = r.history[-1]["sweep"]["client_lr"], r.history[-1]["subset"]
        ref = fljax.simulate(fljax.algorithms.rebuild(algo, client_lr=lr), MODEL,
                             select_clients(fed, ids), rounds=2, clients_per_round=len(ids),
                             seed=1)  # fmt: skip
        assert _max_gap(r.params, ref.params) < 1e-5
    with pytest.raises(ValueError, match="distinct clients"):
        select_clients(fed, [1, 1])
