"""Personalization baselines and the per-site evaluation that shows who benefits.

- :func:`finetune`: every site trains the global model further on its own training data (the
  local work of an :class:`fljax.algorithms.Algorithm`), all sites at once under ``jax.vmap``;
  the standard personalization baseline (e.g. Yu, Bagdasaryan and Shmatikov 2020, "Salvaging
  federated learning by local adaptation").
- :func:`evaluate_sites`: every site's test metrics under one global model or its own model.
- :func:`compare_sites`: for every site, the global model, the personalized model and (if given)
  local-only training side by side, the gain of personalization and the worst site of each.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fljax.algorithms import Algorithm
from fljax.client import evaluate_fn
from fljax.data import ClientData, FederatedData
from fljax.metrics import HIGHER_IS_BETTER
from fljax.models import Model

PyTree = Any


def finetune(
    algorithm: Algorithm, model: Model, data: FederatedData, params: PyTree, seed: int = 0
) -> PyTree:
    """Each site's model after ``algorithm``'s local work on its training split, starting from
    ``params``: stacked ``[C, ...]``. One compiled, vmapped program over all sites; the
    minibatch order of site ``c`` comes from ``fold_in(key(seed), c)``."""
    from fljax.engine._round import client_update_for as _client_update_for

    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be an fljax Algorithm, got {type(algorithm).__name__}")
    if algorithm.personal is not None:
        raise ValueError(
            f"finetune takes a plain algorithm's local work (e.g. 'local'), not the "
            f"personalized algorithm {algorithm.name!r}: its clients' models are "
            "SimulationResult.client_params"
        )
    spec = ClientData(*(np.asarray(a) for a in data.train))
    _, update = _client_update_for(algorithm, model, data, spec)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        jax.random.key(seed), jnp.arange(data.num_clients)
    )

    def one(x, y, n, key):
        out = update(params, x, y, n, key)
        return jax.tree.map(jnp.add, params, out.delta)

    return jax.jit(jax.vmap(one))(jnp.asarray(spec.x), jnp.asarray(spec.y),
                                  jnp.asarray(spec.num_examples), keys)  # fmt: skip


def evaluate_sites(
    model: Model, data: FederatedData, params: PyTree, per_client: bool = False
) -> dict[str, np.ndarray]:
    """``{metric: [C]}`` on every site's test split (``loss`` and the dataset's metrics);
    ``per_client``: ``params`` are stacked ``[C, ...]`` and site ``c`` uses its own."""
    score = evaluate_fn(model, data.task, per_client, data.metrics, data.loss_options)
    test = [jnp.asarray(a) for a in data.test]
    return {k: np.asarray(v, np.float64) for k, v in jax.jit(score)(params, *test).items()}


def compare_sites(
    model: Model,
    data: FederatedData,
    global_params: PyTree,
    personalized: PyTree,
    local: PyTree | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Per-site table of ``metric`` (default: the dataset's first) for the global model, the
    personalized models (stacked) and optionally local-only models (stacked).

    Returns ``rows`` (site, n_test, global, personalized, [local], gain = personalized -
    global, signed so that positive is better), ``summary`` (pooled, client mean and worst
    site per model, mean gain, sites that gain / lose) and ``table`` (Markdown).
    """
    metric = metric or data.metrics[0]
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric={metric!r} is not one of {sorted(HIGHER_IS_BETTER)}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    models = {
        "global": evaluate_sites(model, data, global_params)[metric],
        "personalized": evaluate_sites(model, data, personalized, per_client=True)[metric],
    }
    if local is not None:
        models["local"] = evaluate_sites(model, data, local, per_client=True)[metric]
    counts = np.asarray(data.test.num_examples, np.float64)
    gain = sign * (models["personalized"] - models["global"])
    rows = []
    for c, name in enumerate(data.client_names):
        row = {"site": name, "n_test": int(counts[c])}
        row.update({k: float(v[c]) for k, v in models.items()})
        row["gain"] = float(gain[c])
        rows.append(row)
    summary = {}
    for k, v in models.items():
        ok = np.isfinite(v)
        worst = np.min(v[ok]) if HIGHER_IS_BETTER[metric] else np.max(v[ok])
        summary[k] = {
            "pooled": float(np.sum(v[ok] * counts[ok]) / np.sum(counts[ok])),
            "client_mean": float(np.mean(v[ok])),
            "worst_site": float(worst),
        }
    finite = np.isfinite(gain)
    summary["mean_gain"] = float(np.mean(gain[finite]))
    summary["sites_gaining"] = int(np.sum(gain[finite] > 0))
    summary["sites_losing"] = int(np.sum(gain[finite] < 0))
    cols = ["site", "n_test", *models, "gain"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["site"], str(r["n_test"])] + [f"{r[k]:.4f}" for k in [*models, "gain"]]
        lines.append("| " + " | ".join(cells) + " |")
    worst = ["worst site", ""] + [f"{summary[k]['worst_site']:.4f}" for k in models] + [""]
    lines.append("| " + " | ".join(worst) + " |")
    return {"metric": metric, "rows": rows, "summary": summary, "table": "\n".join(lines)}
