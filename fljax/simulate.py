"""The compiled round, ``lax.scan`` over rounds between evaluations, and the history.

One round = select clients -> gather their data -> local training for all selected clients
under ``jax.vmap`` -> client transforms (vmapped) -> aggregation -> server optimizer on the
pseudo-gradient. It is one pure function; ``eval_every`` rounds run inside one ``lax.scan``
compiled once, so no Python loop touches clients or local steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fljax._devices import client_mesh, client_sharding, replicated
from fljax.algorithms import Algorithm
from fljax.client import evaluate_fn, make_client_update, plan_local_work
from fljax.data import ClientData, FederatedData, gather_clients
from fljax.models import Model, num_params, param_bytes

PyTree = Any


class NonFiniteUpdateError(FloatingPointError):
    """A round's aggregated update had NaN or inf entries; the run stops at that round."""


class ServerState(NamedTuple):
    """Everything that persists between rounds (a pytree, the ``lax.scan`` carry).

    Attributes:
        params: global model parameters.
        opt_state: server optimizer state.
        aggregator_state: aggregator transform state.
        client_transform_states: per-client transform states, stacked ``[C, ...]``.
        client_states: per-client algorithm states, stacked ``[C, ...]``.
        round: ``()`` int32, rounds completed.
    """

    params: PyTree
    opt_state: PyTree
    aggregator_state: PyTree
    client_transform_states: PyTree
    client_states: PyTree
    round: jax.Array


class RoundMetrics(NamedTuple):
    """Per-round outputs of the compiled round (stacked ``[L, ...]`` over a block)."""

    train_loss: jax.Array  # (), float32: example-weighted mean local loss
    finite: jax.Array  # (), bool: aggregated update is finite
    client_ids: jax.Array  # (K,), int32: the selected clients
    num_steps: jax.Array  # (K,), int32: local steps each selected client took


@dataclasses.dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    Attributes:
        params: final global parameters.
        history: one dict per evaluation (round 0 and every ``eval_every`` rounds): ``round``,
            ``metrics`` (global scalars), ``client_metrics`` (lists over clients),
            ``bytes_up`` / ``bytes_down`` (cumulative).
        state: final :class:`ServerState`.
        num_params: scalar parameters of the model.
        wall_s: wall time of the simulation, compilation included.
        compile_s: time spent compiling the round blocks and the evaluation.
        selected: ``[rounds, K]`` int32, the clients selected in each round.
    """

    params: PyTree
    history: list[dict]
    state: ServerState
    num_params: int
    wall_s: float
    compile_s: float
    selected: np.ndarray

    @property
    def final_metrics(self) -> dict:
        return self.history[-1]["metrics"]


def _tree_take(tree, ids):
    return jax.tree.map(lambda a: jnp.take(a, ids, axis=0), tree)


def _tree_put(tree, ids, values):
    return jax.tree.map(lambda a, v: a.at[ids].set(v), tree, values)


def _stack(tree, c):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *jnp.shape(a))), tree)


def select_uniform(key: jax.Array, num_clients: int, clients_per_round: int) -> jax.Array:
    """``K`` distinct client ids, uniformly without replacement."""
    return jax.random.choice(key, num_clients, (clients_per_round,), replace=False).astype(
        jnp.int32
    )


def init_state(algorithm: Algorithm, params: PyTree, num_clients: int) -> ServerState:
    """Initial :class:`ServerState` for ``params`` and ``num_clients`` clients."""
    return ServerState(
        params=params,
        opt_state=algorithm.server_optimizer.init(params),
        aggregator_state=algorithm.aggregator.init(params),
        client_transform_states=_stack(algorithm.client_transform.init(params), num_clients),
        client_states=(),
        round=jnp.zeros((), jnp.int32),
    )


def build_round(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    clients_per_round: int,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[ServerState, jax.Array, ClientData], tuple[ServerState, RoundMetrics]]:
    """Builds the pure round ``(state, round_key, train) -> (state, RoundMetrics)``.

    With a ``mesh``, the selected clients' data and local training are split over its
    ``clients`` axis (each device trains ``K / D`` clients); the aggregate's sum over clients
    becomes a cross-device reduction inserted by XLA.
    """
    plan = plan_local_work(
        data.train.num_examples,
        data.train.x.shape[1],
        local_epochs=algorithm.local_epochs,
        local_steps=algorithm.local_steps,
        batch_size=algorithm.batch_size,
    )
    client_update = make_client_update(
        model, data.task, algorithm.client_optimizer, plan, algorithm.regularizer
    )
    vmapped_update = jax.vmap(client_update, in_axes=(None, 0, 0, 0, 0, 0), axis_name="clients")
    num_clients = data.num_clients
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))

    def round_fn(state: ServerState, key: jax.Array, train: ClientData):
        k_select, k_clients, k_transform, k_aggregate = jax.random.split(key, 4)
        ids = select_uniform(k_select, num_clients, clients_per_round)
        batch = gather_clients(train, ids)
        # Client randomness depends on (round, client id), not on the client's slot.
        client_keys = fold(k_clients, ids)
        client_states = _tree_take(state.client_states, ids)
        if mesh is not None:
            batch, client_keys, client_states = jax.lax.with_sharding_constraint(
                (batch, client_keys, client_states), client_sharding(mesh)
            )
        out = vmapped_update(
            state.params, batch.x, batch.y, batch.num_examples, client_keys, client_states
        )

        def transform(delta, t_state, t_key):
            return algorithm.client_transform.update(delta, t_state, state.params, key=t_key)

        deltas, t_states = jax.vmap(transform)(
            out.delta, _tree_take(state.client_transform_states, ids), fold(k_transform, ids)
        )
        if algorithm.weighting == "num_examples":
            weights = batch.num_examples.astype(jnp.float32)
        else:
            weights = jnp.ones((clients_per_round,), jnp.float32)
        aggregate, agg_state = algorithm.aggregator.update(
            deltas, state.aggregator_state, state.params, key=k_aggregate, weights=weights
        )
        pseudo_grad = jax.tree.map(jnp.negative, aggregate)
        updates, opt_state = algorithm.server_optimizer.update(
            pseudo_grad, state.opt_state, state.params
        )
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(aggregate)]))
        new_state = ServerState(
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            aggregator_state=agg_state,
            client_transform_states=_tree_put(state.client_transform_states, ids, t_states),
            client_states=_tree_put(state.client_states, ids, out.client_state),
            round=state.round + 1,
        )
        n = batch.num_examples.astype(jnp.float32)
        train_loss = jnp.sum(out.train_loss * n) / jnp.maximum(jnp.sum(n), 1.0)
        return new_state, RoundMetrics(train_loss, finite, ids, out.num_steps)

    return round_fn


def build_block(round_fn):
    """``run_block(state, rounds_key, round_ids[L], train)``: ``L`` rounds under ``lax.scan``.

    Round ``r`` uses ``fold_in(rounds_key, r)``, so results do not depend on how rounds are
    grouped into blocks.
    """

    def run_block(state, rounds_key, round_ids, train):
        def body(s, r):
            return round_fn(s, jax.random.fold_in(rounds_key, r), train)

        return jax.lax.scan(body, state, round_ids)

    return run_block


def summarize_clients(values: np.ndarray, counts: np.ndarray, higher_is_better: bool) -> dict:
    """Example-weighted (pooled) mean, unweighted client mean, std and worst client.

    Clients with no examples are left out of every figure.
    """
    keep = counts > 0
    v, c = values[keep], counts[keep].astype(np.float64)
    worst = v.min() if higher_is_better else v.max()
    return {
        "": float(np.sum(v * c) / np.sum(c)),
        "_client_mean": float(v.mean()),
        "_client_std": float(v.std()),
        "_worst": float(worst),
    }


_HIGHER_IS_BETTER = {"accuracy": True, "loss": False, "mse": False}


def _validate(algorithm, model, data, rounds, clients_per_round, eval_every, seed):
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be an fljax Algorithm, got {type(algorithm).__name__}")
    if not isinstance(model, Model):
        raise ValueError(f"model must be an fljax Model, got {type(model).__name__}")
    if not isinstance(data, FederatedData):
        raise ValueError(f"data must be a FederatedData, got {type(data).__name__}")
    for name, value in (("rounds", rounds), ("eval_every", eval_every)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(clients_per_round, int | np.integer) or not (
        1 <= clients_per_round <= data.num_clients
    ):
        raise ValueError(
            f"clients_per_round must be an integer in [1, num_clients={data.num_clients}], "
            f"got {clients_per_round!r}"
        )
    if not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if int(data.test.num_examples.sum()) == 0:
        raise ValueError("the federation has no test examples (test_fraction=0?)")


def simulate(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    *,
    rounds: int,
    clients_per_round: int,
    seed: int = 0,
    eval_every: int = 1,
    params: PyTree | None = None,
    devices: Sequence[jax.Device] | None = None,
    callbacks: Sequence[Callable[[dict], None]] = (),
    progress: bool = False,
) -> SimulationResult:
    """Runs ``rounds`` rounds of ``algorithm`` on ``data`` and evaluates every ``eval_every``.

    Args:
        algorithm: from :func:`fljax.algorithms.get`.
        model: from :func:`fljax.models.get`.
        data: the federation, from :func:`fljax.data.load`.
        rounds: total rounds.
        clients_per_round: ``K`` clients sampled uniformly without replacement each round.
        seed: the one seed every random choice derives from (initialisation, client
            selection, minibatches); equal seeds give bit-identical histories on one backend.
        eval_every: rounds per compiled block; the global model is evaluated on every client's
            test split at round 0 and after each block (and at the last round).
        params: initial global parameters (a warm start or a pretrained model); by default
            ``model.init`` with a key derived from ``seed``.
        devices: devices to split the selected clients over (default: all local devices of
            the default backend; the largest count dividing ``clients_per_round`` is used).
            On CPU, :func:`fljax.set_host_device_count` exposes one device per core.
            Results are identical for a given device count; across counts they can differ
            in the last bits (the order of the cross-device sum).
        callbacks: called with each history entry as soon as it exists (e.g. to write
            ``metrics.jsonl`` so that nothing computed is lost).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SimulationResult`.

    Raises:
        ValueError: bad arguments, before anything is compiled.
        NonFiniteUpdateError: a round's aggregated update is NaN/inf; the message names the
            round, and the history entries already passed to ``callbacks`` stay valid.
    """
    _validate(algorithm, model, data, rounds, clients_per_round, eval_every, seed)
    t_start = time.perf_counter()
    root = jax.random.key(int(seed))
    k_init, k_rounds = jax.random.split(root)
    if params is None:
        params = model.init(k_init, data.sample())
    else:
        expected_tree = jax.tree.structure(jax.eval_shape(model.init, k_init, data.sample()))
        if jax.tree.structure(params) != expected_tree:
            raise ValueError(f"params do not match the structure of model {model.name!r}")
        params = jax.tree.map(jnp.asarray, params)
    out_shape = jax.eval_shape(lambda p, x: model.apply(p, x), params, data.sample()).shape
    expected = data.num_classes if data.task == "classification" else 1
    if out_shape[-1] != expected:
        raise ValueError(
            f"model {model.name!r} outputs {out_shape[-1]} values per example but the "
            f"{data.task} dataset {data.name!r} needs {expected} (num_classes)"
        )
    state = init_state(algorithm, params, data.num_clients)
    train = ClientData(*(jnp.asarray(a) for a in data.train))
    test = ClientData(*(jnp.asarray(a) for a in data.test))
    mesh = client_mesh(clients_per_round, devices)
    if mesh is not None:  # data and server state replicated; per-round client work split
        state, train, test = jax.device_put((state, train, test), replicated(mesh))
        params = state.params

    compile_s = 0.0
    t0 = time.perf_counter()
    evaluate = jax.jit(evaluate_fn(model, data.task)).lower(params, *test).compile()
    compile_s += time.perf_counter() - t0
    run_block = jax.jit(build_block(build_round(algorithm, model, data, clients_per_round, mesh)))
    compiled_blocks: dict[int, Any] = {}

    model_bytes = param_bytes(params)
    test_counts = np.asarray(data.test.num_examples)
    participation = np.zeros(data.num_clients, np.int64)
    history: list[dict] = []
    selected: list[np.ndarray] = []

    def record(round_idx: int, params, train_losses) -> dict:
        per_client = jax.device_get(evaluate(params, *test))
        metrics, client_metrics = {}, {}
        for name, values in per_client.items():
            values = np.asarray(values, np.float64)
            client_metrics[f"test_{name}"] = values.tolist()
            for suffix, v in summarize_clients(
                values, test_counts, _HIGHER_IS_BETTER.get(name, True)
            ).items():
                metrics[f"test_{name}{suffix}"] = v
        metrics["train_loss"] = float(np.mean(train_losses)) if train_losses is not None else None
        client_metrics["num_test_examples"] = test_counts.tolist()
        client_metrics["participation"] = participation.tolist()
        entry = {
            "round": round_idx,
            "metrics": metrics,
            "client_metrics": client_metrics,
            "bytes_up": int(round_idx * clients_per_round * model_bytes),
            "bytes_down": int(round_idx * clients_per_round * model_bytes),
        }
        history.append(entry)
        for cb in callbacks:
            cb(entry)
        return entry

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, unit="round", desc=f"{algorithm.name}/{data.name}")
    try:
        record(0, state.params, None)
        start = 0
        while start < rounds:
            end = min(start + eval_every, rounds)
            length = end - start
            round_ids = jnp.arange(start, end, dtype=jnp.int32)
            if length not in compiled_blocks:
                t0 = time.perf_counter()
                compiled_blocks[length] = run_block.lower(
                    state, k_rounds, round_ids, train
                ).compile()
                compile_s += time.perf_counter() - t0
            state, metrics = compiled_blocks[length](state, k_rounds, round_ids, train)
            metrics = jax.device_get(metrics)
            if not np.all(metrics.finite):
                bad = start + int(np.argmin(metrics.finite)) + 1
                raise NonFiniteUpdateError(
                    f"round {bad}: the aggregated update is not finite (NaN or inf); lower the "
                    f"learning rates or clip updates. Metrics up to round {start} were kept."
                )
            selected.append(np.asarray(metrics.client_ids))
            np.add.at(participation, selected[-1].ravel(), 1)
            entry = record(end, state.params, metrics.train_loss)
            if bar is not None:
                m = entry["metrics"]
                shown = {k: f"{m[k]:.4f}" for k in ("test_loss", "test_accuracy") if k in m}
                bar.set_postfix(shown)
                bar.update(length)
            start = end
    finally:
        if bar is not None:
            bar.close()
    return SimulationResult(
        params=state.params,
        history=history,
        state=state,
        num_params=num_params(state.params),
        wall_s=time.perf_counter() - t_start,
        compile_s=compile_s,
        selected=np.concatenate(selected, axis=0),
    )
