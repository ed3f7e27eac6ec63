"""GTG-Shapley (Liu et al., 2022): Shapley values of one federated training run from its
own per-round updates, without retraining any coalition.

Round ``t`` of the grand coalition starts from ``w_t``; its sites' updates are recorded
(every site's one-site round from ``w_t`` with the round's own keys: local training folds
the site's index into the round key, so the updates are exactly those of the full round).
A coalition's round model is *reconstructed* as the aggregation of its members' updates
only, ``w_S = w_t + eta * sum_{i in S} p_i Delta_i / sum_{i in S} p_i``, and scored on the
validation split. Per round, permutations are sampled with guided sampling (every site
leads equally often) and truncated within the round; rounds whose utility barely moves
are skipped (between-round truncation). A site's value is the sum of its round values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fljax.algorithms import Algorithm
from fljax.data import ClientData, FederatedData
from fljax.models import Model
from fljax.valuation._game import Game, game
from fljax.valuation._shapley import Valuation, walk_permutations

RECONSTRUCTIBLE = ("fedavg", "fedprox")  # server SGD on the weighted mean, no client state


def record_rounds(algorithm, model, data, seeds, rounds: int, starts, options=None):
    """Every seed's training run of the grand coalition (full participation), recorded round
    by round as ONE program (rounds under ``lax.scan``, seeds under ``vmap``): each round's
    one-site models ``[S, T, n, ...]`` (the round from ``w_t`` with only site ``i``, same
    keys) and the round's model ``[S, T, ...]``. The runs are those of
    ``fljax.simulate(seed=s)``: the same round function, initial state (``starts[S, ...]``)
    and round keys ``fold_in(rounds_key, t)``."""
    from fljax.engine import RunArgs, build_round, initial_state, validate
    from fljax.engine._round import train_spec

    n = data.num_clients
    validate(RunArgs(algorithm, model, data, rounds, n, seeds=list(seeds),
                     subsets=np.ones((1, n), bool), **(options or {})))  # fmt: skip
    round_fn = build_round(algorithm, model, data, n, subsets=True)
    train = ClientData(*(jnp.asarray(a) for a in train_spec(data, algorithm)))
    alone, every = jnp.eye(n, dtype=bool), jnp.ones(n, bool)

    def run(params, seed_key):
        state = initial_state(round_fn, algorithm, params, n, seed_key)
        k_rounds = jax.random.split(seed_key)[1]

        def body(st, t):
            key = jax.random.fold_in(k_rounds, t)
            singles = jax.vmap(lambda m: round_fn(st, key, train, m)[0].params)(alone)
            st, _ = round_fn(st, key, train, every)
            return st, (singles, st.params)

        return jax.lax.scan(body, state, jnp.arange(rounds, dtype=jnp.int32))[1]

    keys = jnp.stack([jax.random.key(s) for s in seeds])
    return jax.jit(jax.vmap(run))(starts, keys)


def _reconstruct(singles, weights: np.ndarray):
    """Models of coalitions ``[R, n]`` (0/1 rows) as the weighted means of their members'
    one-site models (``w_t + eta * mean Delta``: the server step is linear in the mean)."""
    w = jnp.asarray(weights, jnp.float32)
    w = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-30)
    return jax.tree.map(lambda p: jnp.tensordot(w, p, axes=1), singles)


def _walk(g, singles, p, perms, u0, u_full, eps, memo) -> np.ndarray:
    """Marginals ``[P, n]`` of permutations ``perms`` in one round
    (:func:`walk_permutations`): the reconstructions of a depth scored as one batch, each
    coalition once per round via ``memo``."""
    n = g.num_sites

    def utilities(prefixes):
        coalitions = [tuple(sorted(m.tolist())) for m in prefixes]
        todo = list(dict.fromkeys(c for c in coalitions if c not in memo))
        if todo:
            coal = np.zeros((len(todo), n))
            for j, c in enumerate(todo):
                coal[j, list(c)] = p[list(c)]
            memo.update(zip(todo, g.score(_reconstruct(singles, coal)), strict=True))
        return np.asarray([[memo[c] for c in coalitions]])

    return walk_permutations(perms, np.array([u0]), u_full, eps, utilities)[0]


def _round_values(g, singles, p, u0, u_full, eps, rng, max_perms, convergence):
    """One round's Monte Carlo Shapley values ``[n]`` with guided sampling (a batch holds one
    permutation led by each site) and within-round truncation; the values and the number of
    permutations."""
    n, memo = g.num_sites, {}
    total, count, running = np.zeros(n), 0, []
    while count < max_perms:
        lead = np.arange(n)
        perms = np.stack([np.concatenate([[i], rng.permutation(np.delete(lead, i))])
                          for i in lead])  # fmt: skip
        total = total + _walk(g, singles, p, perms, u0, u_full, eps, memo).sum(axis=0)
        count += n
        running.append(total / count)
        if len(running) >= 4:
            last = running[-1]
            err = np.mean(np.abs(np.asarray(running[-4:]) - last) / (np.abs(last) + 1e-12))
            if err < convergence:
                break
    return total / count, count


def _check_gtg(algorithm: Algorithm, options: dict) -> None:
    if algorithm.name not in RECONSTRUCTIBLE:
        raise ValueError(f"gtg_shapley reconstructs coalition models as the weighted mean of "
                         f"their members' updates under server SGD; algorithm "
                         f"{algorithm.name!r} is not such an aggregation (allowed: "
                         f"{RECONSTRUCTIBLE}); use shapley or tmc_shapley")  # fmt: skip
    extra = sorted(set(options) - {"params", "eval_train"})
    if extra:
        raise ValueError(f"gtg_shapley reconstructs each round from its exact one-site "
                         f"updates and takes no other simulate options than params; got "
                         f"{extra}")  # fmt: skip


def gtg_shapley(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    *,
    validation: ClientData | tuple,
    rounds: int,
    seeds: Sequence[int] = (0,),
    metric: str | None = None,
    between: float = 0.005,
    within: float = 0.001,
    max_permutations: int = 200,
    convergence: float = 0.05,
    seed: int = 0,
    **simulate_options,
) -> Valuation:
    """GTG-Shapley values of ``data``'s sites for ``rounds`` rounds of FedAvg / FedProx with
    full participation, per training seed (Liu et al., 2022, Algorithm 1).

    Args:
        validation: the utility's test split (as for :func:`fljax.valuation.game`).
        metric: the utility's metric (as for :func:`fljax.valuation.game`).
        between: a round whose utility moves by less than this is skipped (value 0).
        within: a permutation stops once its prefix is within this of the round's utility.
        max_permutations: per round, at most this many guided permutations (``n`` per
            batch).
        convergence: per round, permutations stop once the running values move by less
            than this (relative, over the last 4 batches).
        seed: the permutation sampler's seed; ``seeds``: the training runs.
    """
    _check_gtg(algorithm, simulate_options)
    g = game(algorithm, model, data, validation=validation, rounds=rounds, seeds=seeds,
             metric=metric, **simulate_options)  # fmt: skip
    n, rng = g.num_sites, np.random.default_rng(seed)
    weights = (np.asarray(data.num_examples, np.float64)
               if algorithm.weighting == "num_examples" else np.ones(n))  # fmt: skip
    init = g._initial_utilities()
    starts = initial_models(model, data, g.seeds, g.options.get("params"))
    singles, models = record_rounds(algorithm, model, data, g.seeds, rounds, starts, g.options)
    walk = (within, rng, max_permutations, convergence)
    at = lambda tree, i: jax.tree.map(lambda p: p[i], tree)  # noqa: E731
    runs = [_seed_values(g, at(singles, i), at(models, i), float(init[i]), weights, between,
                         walk) for i in range(len(g.seeds))]  # fmt: skip
    info = {"rounds": rounds, "skipped_rounds": sum(r[2] for r in runs),
            "permutations": sum(r[3] for r in runs), "between": between, "within": within,
            "reconstruction_gap": max(r[4] for r in runs),
            "one_site_rounds": len(g.seeds) * rounds * n}  # fmt: skip
    return Valuation("gtg_shapley", g.sites, g.seeds, np.stack([r[0] for r in runs]),
                     np.asarray([r[1] for r in runs]), init,
                     len(g.seeds), info)  # fmt: skip


def _seed_values(g: Game, singles, models, u_t: float, weights, between, walk):
    """One training seed's run (:func:`record_rounds` ``[T, ...]``): ``(values [n], final
    utility, skipped rounds, permutations, largest |reconstructed grand-coalition model -
    trained round model|)``."""
    values, skipped, perms, gap = np.zeros(g.num_sites), 0, 0, 0.0
    rounds = jax.tree.leaves(models)[0].shape[0]
    utilities = g.score(models)  # [T]
    for t in range(rounds):
        round_singles = jax.tree.map(lambda p, t=t: p[t], singles)
        recon = _reconstruct(round_singles, weights[None])
        gap = max(gap, *(float(jnp.abs(a[0] - b[t]).max()) for a, b in
                         zip(jax.tree.leaves(recon), jax.tree.leaves(models), strict=True)))
        u_next = float(utilities[t])
        if abs(u_next - u_t) >= between:
            v, used = _round_values(g, round_singles, weights, u_t, u_next, *walk)
            values, perms = values + v, perms + used
        else:
            skipped += 1
        u_t = u_next
    return values, u_t, skipped, perms, gap


def initial_models(model, data, seeds, given=None):
    """Each seed's initial global model stacked ``[S, ...]``, as :func:`fljax.simulate`
    draws it (``given``: one warm start for every seed)."""
    from fljax.engine._setup import initial_params

    models = [initial_params(model, data, jax.random.key(s), given) for s in seeds]
    return jax.tree.map(lambda *p: jnp.stack(p), *models)
