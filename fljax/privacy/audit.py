"""Empirical privacy auditing: how much does the trained model really leak, compared with the
epsilon the accountant claims?

:func:`one_shot` is the one-shot empirical privacy estimation of Andrew et al. (2024, "One-shot
Empirical Privacy Estimation for Federated Learning", Algorithm 1) for client-level DP:
``canaries`` extra clients join the federation, each sending a fixed random direction
``clip_norm * u_c`` as its update whenever selected (inside the compiled round, where a
malicious client's crafted update goes); ``held_out`` more directions are drawn but never
inserted. After training, the cosines of the final model's change ``w_T - w_0`` with the
inserted and with the held-out directions are fitted by Gaussians, and the estimate is the
epsilon of distinguishing them: ``mu``-GDP with ``mu = (mean_in - mean_out) / std_out``
(Dong, Roth and Su 2022, Cor. 2.13), at the accountant's ``delta``. A bootstrap over the
canaries gives its confidence interval. The estimate audits the final model only (what a
hospital publishes), so it is expected to sit far below the accountant's bound, which covers
every intermediate model; above the bound beyond its interval would be a bug.

:func:`lira` is a site-level likelihood-ratio membership attack (Carlini et al. 2022, LiRA)
against one target site: shadow federations with and without the site are trained as one
vmapped program (``simulate(subsets=..., seeds=...)``), the target's per-record confidence
statistic is fitted by a Gaussian in each world, and held-out federations are scored by the
likelihood ratio.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fljax.attacks import Attack
from fljax.data import ClientData, FederatedData


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ``epsilon`` with ``mu``-GDP implying ``(epsilon, delta)``-DP:
    ``delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Dong, Roth and Su 2022)."""
    from scipy import optimize, stats  # scipy.stats costs ~1 s at import: loaded when used

    if mu <= 0:
        return 0.0

    def gap(eps):
        return (stats.norm.cdf(-eps / mu + mu / 2)
                - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta)  # fmt: skip

    if gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0 and hi < 1e4:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi)) if gap(hi) <= 0 else float("inf")


@dataclasses.dataclass
class Audit:
    """An empirical privacy estimate beside the accountant's.

    Attributes:
        epsilon: the estimate; ``interval``: its bootstrap 95% interval ``(low, high)``.
        accounted: the accountant's epsilon for the run (``inf`` without noise).
        delta: the delta both are at; ``mu``: the fitted Gaussian-DP parameter.
        cos_in, cos_out: the cosines of the inserted and of the held-out canaries.
        noise_multiplier: ``z`` of the run; ``rounds``, ``canaries``: the run's size.
    """

    epsilon: float
    interval: tuple
    accounted: float
    delta: float
    mu: float
    cos_in: np.ndarray
    cos_out: np.ndarray
    noise_multiplier: float
    rounds: int
    canaries: int

    def to_dict(self) -> dict:
        return {"epsilon": self.epsilon, "interval": list(self.interval),
                "accounted": self.accounted, "delta": self.delta, "mu": self.mu,
                "noise_multiplier": self.noise_multiplier, "rounds": self.rounds,
                "canaries": self.canaries, "cos_in_mean": float(self.cos_in.mean()),
                "cos_out_std": float(self.cos_out.std(ddof=1))}  # fmt: skip


def _with_canaries(data: FederatedData, k: int) -> FederatedData:
    """``data`` with ``k`` canary clients appended: each holds a copy of client 0's training
    split (it trains, but its update is replaced) and no test examples."""
    data.whole("inserting audit canaries")

    def grow(split, n_rows):
        x, y, n = (np.asarray(a) for a in split)
        return ClientData(np.concatenate([x, np.repeat(x[:1], k, 0)]),
                          np.concatenate([y, np.repeat(y[:1], k, 0)]),
                          np.concatenate([n, np.full(k, n_rows, n.dtype)]))  # fmt: skip

    names = (*data.client_names, *(f"canary_{i}" for i in range(k)))
    return dataclasses.replace(data, train=grow(data.train, int(data.train.num_examples[0])),
                               test=grow(data.test, 0), client_names=names)  # fmt: skip


def _canary_attack(directions: np.ndarray, first: int, clip_norm: float) -> Attack:
    """The canaries (clients ``first..first+k-1``) send ``clip_norm * u_c``."""
    k, d = directions.shape
    table = jnp.concatenate([jnp.zeros((first, d), jnp.float32),
                             jnp.asarray(directions, jnp.float32) * clip_norm])  # fmt: skip

    def craft(x, malicious, benign, key, ids):
        del x, malicious, benign, key
        return table[ids]

    craft.uses_ids = True
    return Attack("canary", None, tuple(range(first, first + k)), 0,
                  {"canaries": k, "clip_norm": clip_norm}, craft=craft)


def _directions(rng, count: int, dim: int) -> np.ndarray:
    u = rng.normal(size=(count, dim))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(tree)])


def _check_one_shot(privacy, canaries: int, held_out: int, data: FederatedData) -> None:
    from fljax.privacy import Privacy

    if not isinstance(privacy, Privacy) or privacy.level != "client":
        raise ValueError("canaries audit client-level DP: give privacy=fljax.privacy.get("
                         "'central_dp', ...) (without client-level DP there is no clipped "
                         f"noisy sum to audit), got privacy={privacy!r}")  # fmt: skip
    if privacy.noise_multiplier is None:
        raise ValueError("one_shot needs privacy.noise_multiplier (not target_epsilon)")
    for name, value, least in (("canaries", canaries, 2), ("held_out", held_out, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def one_shot(algorithm, model, data: FederatedData, *, privacy, rounds: int,
             clients_per_round: int, canaries: int = 32, held_out: int = 1000, seed: int = 0,
             bootstrap: int = 1000, **simulate_options) -> Audit:  # fmt: skip
    """One-shot empirical epsilon of a client-level DP run (Andrew et al. 2024).

    ``canaries`` canary clients join the ``data.num_clients`` real ones (``clients_per_round``
    counts them as clients, as the accountant does: they are sampled like any other);
    ``held_out`` directions are never inserted. Returns an :class:`Audit` with the estimate,
    its bootstrap interval and the run's accounted epsilon. Raises ``ValueError`` without
    client-level DP."""
    from fljax.simulate import simulate

    _check_one_shot(privacy, canaries, held_out, data)
    fed = _with_canaries(data, canaries)
    params0 = simulate_options.pop("params", None)
    if params0 is None:
        params0 = model.init(jax.random.split(jax.random.key(seed))[0], data.sample())
    dim = _flat(params0).size
    rng = np.random.default_rng([seed, 0xCA7A])
    u = _directions(rng, canaries + held_out, dim)
    attack = _canary_attack(u[:canaries], data.num_clients, privacy.clip_norm)
    result = simulate(algorithm, model, fed, rounds=rounds, clients_per_round=clients_per_round,
                      seed=seed, eval_every=rounds, privacy=privacy, attack=attack,
                      params=params0, **simulate_options)  # fmt: skip
    change = _flat(result.params) - _flat(params0)
    cos = u @ change / max(np.linalg.norm(change), 1e-30)
    c_in, c_out = cos[:canaries], cos[canaries:]

    def estimate(a, b):
        mu = (a.mean() - b.mean()) / max(b.std(ddof=1), 1e-30)
        return gdp_epsilon(float(mu), privacy.delta), float(mu)

    eps, mu = estimate(c_in, c_out)
    boot = [estimate(rng.choice(c_in, canaries), rng.choice(c_out, held_out))[0]
            for _ in range(bootstrap)]  # fmt: skip
    accounted = result.history[-1].get("epsilon")
    return Audit(eps, (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))),
                 float("inf") if accounted is None else float(accounted), privacy.delta, mu,
                 c_in, c_out, float(privacy.noise_multiplier), rounds, canaries)  # fmt: skip


@dataclasses.dataclass
class Lira:
    """A site-level LiRA membership attack against one target site.

    Attributes:
        target: the site; ``members``: ``[F]`` bool, whether each federation trained on it;
        scores: ``[F]`` the log likelihood ratio of each federation's model (leave-one-out:
        the Gaussians are fitted on the other federations); ``auc``: the attack's AUROC;
        ``tpr_at_fpr``: ``{fpr: tpr}`` at the listed false-positive rates.
    """

    target: int
    members: np.ndarray
    scores: np.ndarray
    auc: float
    tpr_at_fpr: dict


def _record_statistics(model, params_stack, x, y) -> np.ndarray:
    """``[F, M]`` per-record logit-scaled confidence ``log p_y - log(1 - p_y)`` (LiRA's
    statistic) of each model on the target's training records."""

    def one(p):
        logp = jax.nn.log_softmax(model.apply(p, x, train=False))
        ly = jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
        return ly - jnp.log(jnp.maximum(-jnp.expm1(ly), 1e-12))

    return np.asarray(jax.jit(jax.vmap(one))(params_stack), np.float64)


def _loo_ratio(stat: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Each federation's summed per-record log likelihood ratio, IN and OUT Gaussians per
    record fitted on the OTHER federations."""
    from scipy import stats

    scores = np.zeros(stat.shape[0])
    for j in range(stat.shape[0]):
        rest = np.arange(stat.shape[0]) != j
        s_in, s_out = stat[rest & members], stat[rest & ~members]
        mi, si = s_in.mean(0), s_in.std(0, ddof=1) + 1e-6
        mo, so = s_out.mean(0), s_out.std(0, ddof=1) + 1e-6
        scores[j] = np.sum(stats.norm.logpdf(stat[j], mi, si) - stats.norm.logpdf(stat[j], mo, so))
    return scores


def lira(algorithm, model, data: FederatedData, *, target: int, rounds: int,
         federations: int = 32, seeds: Sequence[int] = (0,), seed: int = 0,
         fprs: Sequence[float] = (0.1,), **simulate_options) -> Lira:  # fmt: skip
    """Site-level LiRA (Carlini et al. 2022) on ``target``: ``federations`` random coalitions
    (every other site in with probability 1/2, the target in exactly half), each x ``seeds``,
    trained as ONE program with full participation; each model attacked leave-one-out."""
    from fljax.metrics import auroc_scores
    from fljax.simulate import simulate
    from fljax.valuation._game import stack_params

    n = data.num_clients
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n:
        raise ValueError(f"target must be a site index in [0, {n}), got {target!r}")
    if federations < 8 or federations % 2:
        raise ValueError(f"federations must be an even number >= 8, got {federations}")
    rng = np.random.default_rng([seed, 0x11A])
    masks = rng.random((federations, n)) < 0.5
    masks[:, target] = np.arange(federations) % 2 == 0
    empty = ~masks.any(axis=1)
    masks[empty, (target + 1) % n] = True  # a federation needs a site
    runs = simulate(algorithm, model, data, rounds=rounds, clients_per_round=n,
                    seeds=list(seeds), eval_every=rounds, subsets=masks,
                    **simulate_options)  # fmt: skip
    stack = stack_params(runs)
    x, y, m = (np.asarray(a)[target] for a in data.train)
    stat = _record_statistics(model, stack, jnp.asarray(x[:m]), jnp.asarray(y[:m]))
    members = np.tile(masks[:, target], len(list(seeds)))
    scores = _loo_ratio(stat, members)
    auc = float(auroc_scores(jnp.asarray(scores), jnp.asarray(members.astype(np.int32))))
    tpr = {}
    for f in fprs:
        thr = np.quantile(scores[~members], 1 - f)
        tpr[float(f)] = float(np.mean(scores[members] > thr))
    return Lira(target, members, scores, auc, tpr)
