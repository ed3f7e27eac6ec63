"""Removing a site from a trained federation: exact unlearning (retraining without it) and
FedEraser (Liu et al., 2021), compared by test metrics, distance to the retrained model and a
membership-inference attack on the removed site's records.

Exact unlearning trains the federation without the site from the same initial model and
seeds; the original and the retrained federations are two runs of ONE program
(``simulate(subsets=[all, all but the site], seeds=...)``). FedEraser keeps the clients'
updates of the original run every ``interval`` rounds, then rebuilds the model from the
initial one: at each kept round the remaining sites train ``calibration`` of their local
steps from the unlearned model, and each site's new update is its OLD update's norm (per
parameter array) along its calibrated direction,
:math:`U_i = \\lVert \\Delta_i \\rVert \\, \\Delta'_i / \\lVert \\Delta'_i \\rVert`
(Liu et al. 2021, Eq. 3), aggregated with the usual weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fljax.algorithms import Algorithm, rebuild
from fljax.data import ClientData, FederatedData
from fljax.models import Model
from fljax.privacy import loss_threshold_mia
from fljax.valuation._game import stack_params
from fljax.valuation._gtg import RECONSTRUCTIBLE, initial_models, record_rounds


@dataclasses.dataclass
class Unlearning:
    """The three models of each seed and how they compare.

    Attributes:
        site: the removed site's index; ``site_name`` its name.
        original, retrained, federaser: ``[seeds, ...]`` stacked global models.
        metrics: per model (``"original"``, ``"retrained"``, ``"federaser"``), lists over
            seeds of ``remaining_<metric>`` (pooled over the other sites' test splits),
            ``removed_<metric>`` (the removed site's test split), ``distance_to_retrained``
            (L2) and ``mia_auc`` (loss-threshold membership inference: the removed site's
            training records against its test records; 0.5 = no membership signal).
        local_steps: local steps (summed over sites) of one seed's retraining and of
            FedEraser's calibration.
    """

    site: int
    site_name: str
    seeds: list
    original: object
    retrained: object
    federaser: object
    metrics: dict
    local_steps: dict

    def summary(self) -> dict:
        """Mean over seeds of every figure, per model."""
        return {m: {k: float(np.mean(v)) for k, v in figs.items()}
                for m, figs in self.metrics.items()}  # fmt: skip

    def table(self) -> str:
        """A Markdown table: one row per model, the seed means."""
        s = self.summary()
        keys = list(s["original"])
        head = "| model | " + " | ".join(keys) + " |"
        rows = [f"| {m} | " + " | ".join(f"{v[k]:.4f}" for k in keys) + " |" for m, v in s.items()]
        return "\n".join([head, "|---|" + "---:|" * len(keys), *rows])


def _own_steps(algo, spec) -> list[int]:
    """Each client's local steps per round under ``algo`` (its epochs over its own data, or
    the fixed steps)."""
    n = np.asarray(spec.num_examples)
    if isinstance(algo.local_steps, tuple):
        return list(algo.local_steps)
    if algo.local_steps is not None:
        return [int(algo.local_steps)] * n.size
    if algo.batch_size is None:  # full batch: one step per epoch
        return [int(algo.local_epochs)] * n.size
    return [int(algo.local_epochs * math.ceil(k / algo.batch_size)) for k in n]


def _federaser_fn(algo, model, data, rounds: int, site: int, interval: int, calibration: float,
                  weights):  # fmt: skip
    """``(initial params, seed key, kept one-site models [T, n, ...], models [T, ...]) ->
    unlearned params``: FedEraser's calibrated reconstruction over the kept rounds, each site
    training ``calibration`` x its own local steps."""
    from fljax.engine import build_round, initial_state
    from fljax.engine._round import train_spec

    n = data.num_clients
    spec = train_spec(data, algo)
    steps = tuple(max(1, math.ceil(calibration * t)) for t in _own_steps(algo, spec))
    cal = rebuild(algo, local_epochs=None, local_steps=steps)
    round_fn = build_round(cal, model, data, n, subsets=True)
    train = ClientData(*(jnp.asarray(a) for a in spec))
    keep = np.arange(n) != site
    alone = jnp.asarray(np.eye(n, dtype=bool)[keep])
    p = jnp.asarray(weights[keep] / weights[keep].sum(), jnp.float32)
    kept_rounds = jnp.arange(0, rounds, interval, dtype=jnp.int32)

    def unlearn(params0, seed_key, singles, models):
        k_rounds = jax.random.split(seed_key)[1]

        def step(w, t):
            start = jax.tree.map(lambda m0, m: jnp.where(t == 0, m0, m[t - 1]), params0, models)
            old = jax.tree.map(lambda s, w0: s[t][keep] - w0[None], singles, start)
            st = initial_state(round_fn, cal, w, n, seed_key)
            key = jax.random.fold_in(k_rounds, t)
            new = jax.vmap(lambda m: round_fn(st, key, train, m)[0].params)(alone)
            new = jax.tree.map(lambda a, w0: a - w0[None], new, w)
            axes = lambda a: tuple(range(1, a.ndim))  # noqa: E731
            u = jax.tree.map(lambda o, d: jnp.sqrt(jnp.sum(o * o, axes(o), keepdims=True)) * d
                             / jnp.maximum(jnp.sqrt(jnp.sum(d * d, axes(d), keepdims=True)),
                                           1e-12), old, new)  # fmt: skip
            return jax.tree.map(lambda a, b: a + jnp.tensordot(p, b, axes=1), w, u), None

        return jax.lax.scan(step, params0, kept_rounds)[0]

    cost = int(len(kept_rounds) * np.asarray(steps)[keep].sum())
    return jax.jit(jax.vmap(unlearn)), cost


def _mia_auc(model, task, params, members: ClientData, others: ClientData) -> float:
    """AUROC of the loss-threshold attack (Yeom et al., 2018,
    :func:`fljax.privacy.loss_threshold_mia`): the removed site's training records against
    its test records."""
    def records(split):
        x, y, n = (np.asarray(a)[0] for a in split)
        return jnp.asarray(x[:n]), jnp.asarray(y[:n])

    return loss_threshold_mia(model, params, records(members), records(others), task).auc


def _scores(model, data: FederatedData, metric: str, params, site: int) -> dict:
    """``remaining_<metric>`` (pooled over the other sites' test splits) and
    ``removed_<metric>`` (the site's own test split) of one model."""
    from fljax.client import evaluate_fn

    fn = evaluate_fn(model, data.task, False, (metric,), data.loss_options)
    x, y, n = (jnp.asarray(a) for a in data.test)
    per_site = np.asarray(fn(params, x, y, n)[metric], np.float64)
    counts = np.asarray(data.test.num_examples, np.float64)
    rest = np.arange(data.num_clients) != site
    pooled = float(np.sum(per_site[rest] * counts[rest]) / np.sum(counts[rest]))
    return {f"remaining_{metric}": pooled, f"removed_{metric}": float(per_site[site])}


def _site_split(split: ClientData, site: int) -> ClientData:
    return ClientData(*(np.asarray(a)[site:site + 1] for a in split))


def _distance(a, b) -> float:
    return float(math.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in
                               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))))


def unlearn(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    *,
    site: int,
    rounds: int,
    seeds: Sequence[int] = (0,),
    interval: int = 1,
    calibration: float = 0.5,
    metric: str | None = None,
) -> Unlearning:
    """Removes ``site`` from ``rounds`` rounds of ``algorithm`` (FedAvg / FedProx, full
    participation) per seed: the original run, the exact retrain without the site (one
    program with it) and FedEraser's reconstruction (``interval``: rounds between kept
    updates; ``calibration``: fraction of the local steps the calibration trains), scored
    on the test splits and by a membership-inference attack on the site's records."""
    from fljax.simulate import simulate

    if algorithm.name not in RECONSTRUCTIBLE:
        raise ValueError(f"FedEraser rebuilds the model from the weighted mean of calibrated "
                         f"client updates; algorithm {algorithm.name!r} is not such an "
                         f"aggregation (allowed: {RECONSTRUCTIBLE})")  # fmt: skip
    n = data.num_clients
    if isinstance(site, bool) or not isinstance(site, int | np.integer) or not 0 <= site < n:
        raise ValueError(f"site must be a site index in [0, {n}), got {site!r}")
    if not isinstance(interval, int) or not 1 <= interval <= rounds:
        raise ValueError(f"interval must be an integer in [1, rounds={rounds}], got {interval!r}")
    if not 0.0 < calibration <= 1.0:
        raise ValueError(f"calibration must lie in (0, 1], got {calibration}")
    metric = data.metrics[0] if metric is None else metric
    seeds = [int(s) for s in seeds]
    masks = np.ones((2, n), bool)
    masks[1, site] = False
    runs = simulate(algorithm, model, data, rounds=rounds, clients_per_round=n, seeds=seeds,
                    eval_every=rounds, subsets=masks)  # fmt: skip
    original, retrained = stack_params(runs[0::2]), stack_params(runs[1::2])
    starts = initial_models(model, data, seeds)
    singles, models = record_rounds(algorithm, model, data, seeds, rounds, starts)
    weights = (np.asarray(data.num_examples, np.float64)
               if algorithm.weighting == "num_examples" else np.ones(n))  # fmt: skip
    fn, cost = _federaser_fn(algorithm, model, data, rounds, site, interval, calibration, weights)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    erased = jax.device_get(fn(starts, keys, singles, models))
    models_of = {"original": original, "retrained": retrained, "federaser": erased}
    members, others = _site_split(data.train, site), _site_split(data.test, site)
    figures = {}
    for name, stacked in models_of.items():
        per_seed = []
        for i in range(len(seeds)):
            p = jax.tree.map(lambda a, i=i: a[i], stacked)
            q = jax.tree.map(lambda a, i=i: a[i], retrained)
            per_seed.append({**_scores(model, data, metric, p, site),
                             "distance_to_retrained": _distance(p, q),
                             "mia_auc": _mia_auc(model, data.task, p, members, others)})
        figures[name] = {k: [d[k] for d in per_seed] for k in per_seed[0]}
    steps = int((np.asarray(runs[1].num_steps) * np.asarray(runs[1].contributed)).sum())
    return Unlearning(site, data.client_names[site], seeds, original, retrained, erased,
                      figures, {"retrain": steps, "federaser_calibration": cost})
