"""The compiled round, ``lax.scan`` over rounds between evaluations, and the history.

One round = select clients -> gather their data -> local training for all selected clients
under ``jax.vmap`` -> client transforms (vmapped) -> aggregation -> server optimizer on the
pseudo-gradient. It is one pure function; ``eval_every`` rounds run inside one ``lax.scan``
compiled once, so no Python loop touches clients or local steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fljax._base import chain
from fljax._devices import client_mesh, client_sharding, replicated
from fljax._io import load_state, save_state
from fljax.aggregate import normalize_weighted_sum, weighted_sum
from fljax.algorithms import Algorithm, rebuild
from fljax.client import (
    batch_loss_fn,
    evaluate_fn,
    make_client_update,
    num_local_steps,
    plan_local_work,
)
from fljax.compress import Compressor
from fljax.data import ClientData, FederatedData, gather_clients
from fljax.metrics import HIGHER_IS_BETTER, summarize
from fljax.models import Model, num_params, param_bytes
from fljax.privacy import (
    Privacy,
    PrivacyPlan,
    SecAgg,
    binomial_cap,
    graph_degree,
    message_bytes,
    secure_aggregator,
)
from fljax.privacy import plan as privacy_plan
from fljax.privacy._secagg import SHARE_BYTES
from fljax.system import SystemModel, client_times, steps_within

PyTree = Any


class NonFiniteUpdateError(FloatingPointError):
    """A round's aggregated update had NaN or inf entries; the run stops at that round."""


class ServerState(NamedTuple):
    """Everything that persists between rounds (a pytree, the ``lax.scan`` carry).

    Attributes:
        params: global model parameters.
        opt_state: server optimizer state.
        aggregator_state: aggregator transform state.
        algorithm_state: the algorithm's server state (e.g. SCAFFOLD's control variate c).
        client_transform_states: per-client transform states, stacked ``[C, ...]``.
        client_states: per-client algorithm states, stacked ``[C, ...]`` (SCAFFOLD's c_i,
            FedDyn's gradient memory, each client's own model in local-only training).
        round: ``()`` int32, rounds completed.
        broadcast: with downlink compression, the model the clients hold (else ``()``).
        downlink_state: the downlink compressor's state (else ``()``).
        system_state: :class:`SyncSystemState` with a system model, :class:`AsyncState` in
            asynchronous training (else ``()``).
    """

    params: PyTree
    opt_state: PyTree
    aggregator_state: PyTree
    algorithm_state: PyTree
    client_transform_states: PyTree
    client_states: PyTree
    round: jax.Array
    broadcast: PyTree = ()
    downlink_state: PyTree = ()
    system_state: PyTree = ()


class SyncSystemState(NamedTuple):
    """The simulated clock and Oort's per-client statistics in synchronous training.

    Attributes:
        now: ``()`` float32, simulated seconds elapsed.
        utility: ``[C]`` last statistical utility ``n_i * loss_i`` (Oort).
        last: ``[C]`` int32, the last round the client contributed (0: never).
    """

    now: jax.Array
    utility: jax.Array
    last: jax.Array


class AsyncState(NamedTuple):
    """Asynchronous training in flight (FedAsync / FedBuff).

    Attributes:
        models: ring buffer ``[S, ...]`` of the last ``S`` global models; version ``v`` is
            at ``v mod S``.
        version: ``()`` int32, server steps taken.
        ids: ``[M]`` clients training now; ``start``: ``[M]`` the version each started from;
        finish: ``[M]`` simulated time each will deliver its update; ``now``: the server clock.
    """

    models: PyTree
    version: jax.Array
    ids: jax.Array
    start: jax.Array
    finish: jax.Array
    now: jax.Array


class RoundMetrics(NamedTuple):
    """Per-round outputs of the compiled round (stacked ``[L, ...]`` over a block)."""

    train_loss: jax.Array  # (), float32: example-weighted mean local-step loss of contributors
    finite: jax.Array  # (), bool: aggregated update is finite
    client_ids: jax.Array  # (K,), int32: the selected clients
    contributed: jax.Array  # (K,), bool: the client's update was aggregated (not dropped)
    num_steps: jax.Array  # (K,), int32: local steps each selected client took
    sampled: jax.Array  # (K,), bool: the slot holds a sampled client (False: Poisson padding)
    aggregator_stats: Any = ()  # the aggregator's per-round counts (secure aggregation)


@dataclasses.dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    Attributes:
        params: final global parameters.
        history: one dict per evaluation (round 0 and every ``eval_every`` rounds): ``round``,
            ``metrics`` (global scalars: ``test_<m>`` example-weighted over clients, i.e. the
            pooled test metric, ``test_<m>_client_mean``, ``_client_std``, ``_worst``;
            ``local_loss``; ``train_<m>...`` with ``eval_train``), ``client_metrics`` (lists
            over clients), ``bytes_up`` / ``bytes_down`` (cumulative).
        state: final :class:`ServerState`.
        num_params: scalar parameters of the model.
        wall_s: wall time of the simulation, compilation included.
        compile_s: time spent compiling the round blocks and the evaluation.
        selected: ``[rounds, K]`` int32, the clients selected in each round.
        contributed: ``[rounds, K]`` bool, whose update was aggregated (stragglers dropped).
        num_steps: ``[rounds, K]`` int32, local steps each selected client took.
    """

    params: PyTree
    history: list[dict]
    state: ServerState
    num_params: int
    wall_s: float
    compile_s: float
    selected: np.ndarray
    contributed: np.ndarray
    num_steps: np.ndarray

    @property
    def final_metrics(self) -> dict:
        return self.history[-1]["metrics"]

    personal: Any = None  # the algorithm's Personal hooks (personalized algorithms)

    @property
    def client_params(self) -> PyTree:
        """Each client's own model ``[C, ...]``: local-only training's, or a personalized
        algorithm's assembled personalized models."""
        return client_models(self.state, self.personal)


def client_models(state: ServerState, personal=None) -> PyTree:
    """Every client's own model stacked ``[C, ...]`` from ``state``: its personalized model
    (``personal.model(global, client_state)``) or, without ``personal``, its local model."""
    if personal is None:
        return state.client_states
    return jax.vmap(personal.model, in_axes=(None, 0))(state.params, state.client_states)


def _tree_take(tree, ids):
    return jax.tree.map(lambda a: jnp.take(a, ids, axis=0), tree)


def _tree_put(tree, ids, values, keep=None):
    """Scatters ``values[K]`` into ``tree[C]`` at ``ids``; rows with ``keep == False`` are left."""
    if keep is None:
        return jax.tree.map(lambda a, v: a.at[ids].set(v), tree, values)

    def put(a, v):
        old = a[ids]
        k = keep.reshape(keep.shape + (1,) * (v.ndim - 1))
        return a.at[ids].set(jnp.where(k, v, old))

    return jax.tree.map(put, tree, values)


def _stack(tree, c):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *jnp.shape(a))), tree)


def _weighted_tree_mean(tree, w):
    total = jnp.maximum(jnp.sum(w), 1e-12)
    return jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1) / total, tree)


def select_uniform(key: jax.Array, num_clients: int, clients_per_round: int) -> jax.Array:
    """``K`` distinct client ids, uniformly without replacement."""
    return jax.random.choice(key, num_clients, (clients_per_round,), replace=False).astype(
        jnp.int32
    )


def poisson_cap(num_clients: int, expected: int) -> int:
    """The padded width of a Poisson cohort of ``expected`` clients: exceeded (and then
    truncated to a random subset) with probability below 1e-9 per round."""
    rate = expected / num_clients
    return int(max(expected, binomial_cap(num_clients, num_clients, rate, lambda t: t <= 1e-9)))


def select_poisson(
    key: jax.Array, num_clients: int, rate: float, cap: int
) -> tuple[jax.Array, jax.Array]:
    """Poisson sampling: every client joins independently with probability ``rate``.

    Returns ``ids[cap]`` and ``valid[cap]``: the sampled clients in random order, truncated to
    ``cap`` (a uniformly random subset when more were sampled), padded with unsampled ids
    marked invalid. The padded cohort keeps one static shape for ``vmap``.
    """
    u = jax.random.uniform(key, (num_clients,))
    sampled = u < rate
    order = jnp.argsort(jnp.where(sampled, u, 2.0 + u))[:cap].astype(jnp.int32)
    return order, sampled[order]


def pool_clients(data: ClientData) -> ClientData:
    """All clients' real examples concatenated into one client ``[1, sum n, ...]``."""
    x, y, n = (np.asarray(a) for a in data)
    mask = np.arange(x.shape[1])[None, :] < n[:, None]
    return ClientData(x[mask][None], y[mask][None], np.array([int(n.sum())], np.int32))


def init_state(algorithm: Algorithm, params: PyTree, num_clients: int) -> ServerState:
    """Initial :class:`ServerState` for ``params`` and ``num_clients`` clients."""
    client_states = ()
    if algorithm.mode == "local":
        client_states = _stack(params, num_clients)  # every client starts from the same model
    elif algorithm.personal is not None:
        client_states = _stack(algorithm.personal.init(params), num_clients)
    elif algorithm.client_state_init is not None:
        client_states = _stack(algorithm.client_state_init(params), num_clients)
    algorithm_state = (
        () if algorithm.server_state_init is None else (algorithm.server_state_init(params))
    )
    return ServerState(
        params=params,
        opt_state=algorithm.server_optimizer.init(params),
        aggregator_state=algorithm.aggregator.init(params),
        algorithm_state=algorithm_state,
        client_transform_states=_stack(algorithm.client_transform.init(params), num_clients),
        client_states=client_states,
        round=jnp.zeros((), jnp.int32),
    )


STRAGGLER_POLICIES = ("drop", "partial")


class Stragglers(NamedTuple):
    """Each round, ``count`` of the selected clients are stragglers (static)."""

    count: int
    policy: str  # "drop": not aggregated; "partial": aggregated after fewer local epochs


def _train_spec(data: FederatedData, algorithm: Algorithm):
    """The training split the round sees: pooled into one client for ``centralized``."""
    if algorithm.mode == "centralized":
        return pool_clients(data.train)
    return ClientData(*(np.asarray(a) for a in data.train))


def build_round(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    clients_per_round: int,
    mesh: jax.sharding.Mesh | None = None,
    stragglers: Stragglers | None = None,
    downlink: Any | None = None,
    privacy: PrivacyPlan | None = None,
    system: SystemModel | None = None,
    wire_bytes: tuple[float, float] = (0.0, 0.0),
    client_chunk: int | None = None,
) -> Callable[[ServerState, jax.Array, ClientData], tuple[ServerState, RoundMetrics]]:
    """Builds the pure round ``(state, round_key, train) -> (state, RoundMetrics)``.

    ``client_chunk``: the selected clients train ``client_chunk`` at a time (``lax.map`` over
    ``vmap``ped chunks), so local training holds one chunk's activations at once; with a
    linear aggregator (``Transform.linear``: the weighted mean) the chunks' weighted delta sums
    are accumulated in a ``lax.scan`` carry (streaming aggregation: no ``[K, ...]`` stack of
    deltas).

    With a ``mesh``, the selected clients' data and local training are split over its
    ``clients`` axis (each device trains ``K / D`` clients); the aggregate's sum over clients
    becomes a cross-device reduction inserted by XLA.
    """
    spec = _train_spec(data, algorithm)
    num_clients = spec.x.shape[0]
    plan, client_update = _client_update_for(algorithm, model, data, spec, privacy)
    poisson = privacy is not None and privacy.poisson_clients
    cohort = privacy.cohort if poisson else clients_per_round
    rate = privacy.rate if poisson else None
    if system is not None and system.selection == "poisson":
        poisson, rate = True, clients_per_round / num_clients
        cohort = poisson_cap(num_clients, clients_per_round)
    steps_per_client = None
    if isinstance(algorithm.local_steps, tuple):
        steps_per_client = jnp.asarray(algorithm.local_steps, jnp.int32)
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))

    def map_clients(fn, *per_client):
        """``fn`` over the leading (client) axis of ``per_client``: one ``vmap``, or
        ``lax.map`` over chunks of ``client_chunk`` clients (each chunk ``vmap``ped)."""
        k = jax.tree.leaves(per_client)[0].shape[0]
        if client_chunk is None or client_chunk >= k:
            return jax.vmap(fn)(*per_client)
        return jax.lax.map(lambda a: fn(*a), per_client, batch_size=client_chunk)

    # Streaming aggregation: with chunks and a linear aggregator (the weighted mean), the
    # weighted sum of the deltas is accumulated chunk by chunk in a lax.scan carry.
    streaming = client_chunk is not None and algorithm.aggregator.linear

    def stream_clients(train_client, transform, per_client, t_states, t_keys, weights, params):
        k, c = weights.shape[0], client_chunk
        m = -(-k // c)  # chunks; the last is padded with weight-0 copies of the last client

        def chunked(a):
            if m * c > k:
                a = jnp.concatenate([a, jnp.repeat(a[-1:], m * c - k, axis=0)])
            return a.reshape(m, c, *a.shape[1:])

        w = jnp.concatenate([weights, jnp.zeros((m * c - k,), weights.dtype)])
        xs = (*jax.tree.map(chunked, (per_client, t_states, t_keys)), w.reshape(m, c))

        def body(acc, chunk):
            args, ts, tk, w = chunk
            out = jax.vmap(train_client)(*args)
            deltas, ts = jax.vmap(transform)(out.delta, ts, tk)
            acc = jax.tree.map(jnp.add, acc, weighted_sum(deltas, w))
            return acc, (out._replace(delta=()), ts)

        acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        total, (out, ts) = jax.lax.scan(body, acc0, xs)
        unchunk = lambda a: a.reshape(m * c, *a.shape[2:])[:k]  # noqa: E731
        return total, jax.tree.map(unchunk, out), jax.tree.map(unchunk, ts)

    if system is not None:
        prof = jax.tree.map(jnp.asarray, system.profiles)
        up_bytes, down_bytes = wire_bytes

        # Each client's time for its full local work (resource-aware selection, async).
        t_all = jnp.asarray(full_work_times(system, spec, plan, wire_bytes), jnp.float32)
        t_pref = system.deadline if system.deadline is not None else jnp.median(t_all)
        n_all = np.asarray(spec.num_examples)
        log_n = jnp.log(jnp.maximum(jnp.asarray(n_all, jnp.float32), 1e-6))
        task_loss = batch_loss_fn(data.task, **(data.loss_options or {}))

    def select_available(key, k_select, params, train, sys_state, round_idx, chosen=None):
        """Availability draw, then the cohort: ``ids[K]`` and ``valid[K]`` (reachable); with
        ``chosen`` ids (Poisson sampling) only their availability."""
        p_avail = prof.availability
        if system.diurnal > 0:  # daily cycle on the simulated clock, shifted per client
            day = sys_state.now / 86_400.0 + prof.phase
            p_avail = jnp.clip(p_avail * (1 + system.diurnal * jnp.cos(2 * jnp.pi * day)), 0, 1)
        avail = jax.random.uniform(jax.random.fold_in(key, 7), (num_clients,)) < p_avail
        if chosen is not None:
            return chosen, avail[chosen]
        u = jax.random.uniform(k_select, (num_clients,))
        k = clients_per_round
        rule = system.selection
        if rule == "uniform":
            ids = select_uniform(k_select, num_clients, k)
            return ids, avail[ids]
        if rule == "available":  # K uniformly among the available clients
            score = jnp.where(avail, u, 2.0 + u)
        elif rule == "fastest":  # the K available clients with the shortest round time
            score = jnp.where(avail, t_all, jnp.inf)
        elif rule == "feasible":  # K uniformly among available clients that meet the deadline
            score = jnp.where(avail & (t_all <= system.deadline), u, 2.0 + u)
        elif rule == "oort":  # Lai et al. (2021): explore unseen clients, exploit utility
            seen = sys_state.last > 0
            r = (round_idx + 1).astype(jnp.float32)
            bonus = jnp.sqrt(0.1 * jnp.log(r) / jnp.maximum(sys_state.last, 1))
            speed_ok = jnp.where(t_all > t_pref, (t_pref / t_all) ** 2, 1.0)
            exploit = (sys_state.utility + bonus) * speed_ok
            n_explore = int(round(system.exploration * k))
            fresh = avail & ~seen
            explore_rank = jnp.argsort(jnp.argsort(jnp.where(fresh, u, 2.0 + u)))
            explore = fresh & (explore_rank < n_explore)
            score = -jnp.where(
                explore, 1e30, jnp.where(avail & seen, exploit, jnp.where(avail, -1.0 + u, -2.0))
            )
        else:  # power_of_choice (Cho et al. 2022): d candidates drawn w.p. ~ n_k without
            # replacement (Gumbel top-d), then the K with the highest global-model loss
            gumbel = -jnp.log(-jnp.log(jnp.clip(u, 1e-12, 1.0 - 1e-7)))
            cand = jnp.argsort(-jnp.where(avail, log_n + gumbel, -jnp.inf))[: system.candidates]
            batch = gather_clients(train, cand)

            def loss(x, y, n):
                mask = jnp.arange(x.shape[0]) < n
                return task_loss(model.apply(params, x, train=False), y, mask)

            losses = jax.vmap(loss)(batch.x, batch.y, batch.num_examples)
            losses = jnp.where(avail[cand], losses, -jnp.inf)
            ids = cand[jnp.argsort(-losses)[:k]].astype(jnp.int32)
            return ids, avail[ids]
        ids = jnp.argsort(score)[:k].astype(jnp.int32)
        valid = avail[ids]
        if rule == "feasible":
            valid = valid & (t_all[ids] <= system.deadline)
        return ids, valid

    def clock(ids, batch, budget, contributed, valid):
        """Deadline policy and the round's simulated duration (Sec. 'system' of the README)."""
        n = batch.num_examples
        per_step = n if plan.full_batch else jnp.minimum(n, plan.batch_size)
        per_step = per_step.astype(jnp.float32)
        speed, up, down = prof.speed[ids], prof.uplink[ids], prof.downlink[ids]
        work = jnp.minimum(num_local_steps(n, plan), budget)
        partial = system.deadline is not None and system.deadline_policy == "partial"
        if partial:
            fit = steps_within(system.deadline, per_step, speed, up, down, up_bytes, down_bytes)
            budget = jnp.minimum(budget, fit)
            work = jnp.minimum(work, fit)
            contributed = contributed & (fit > 0)
        t = client_times(work, per_step, speed, up, down, up_bytes, down_bytes)
        if system.deadline is not None and not partial:  # late updates are discarded
            contributed = contributed & (t <= system.deadline)
        round_time = jnp.max(jnp.where(valid, t, 0.0))
        if system.deadline is not None:
            round_time = jnp.minimum(round_time, system.deadline)
        return budget, contributed & valid, round_time

    def budget_for(ids, key, batch):
        budget = jnp.full((ids.shape[0],), plan.max_steps, jnp.int32)
        if steps_per_client is not None:
            budget = steps_per_client[ids]
        contributed = jnp.ones(ids.shape, bool)
        if stragglers is not None and stragglers.count > 0:
            k_who, k_work = jax.random.split(key)
            late = (
                jnp.zeros(ids.shape, bool)
                .at[jax.random.permutation(k_who, ids.shape[0])[: stragglers.count]]
                .set(True)
            )
            if stragglers.policy == "drop":
                contributed = ~late
            else:  # partial work: uniform in [1, E - 1] epochs (or [1, T - 1] steps)
                if plan.local_epochs is not None:
                    epochs = jax.random.randint(k_work, ids.shape, 1, plan.local_epochs)
                    per_epoch = (batch.num_examples + plan.batch_size - 1) // plan.batch_size
                    partial = epochs * per_epoch
                else:
                    partial = jax.random.randint(k_work, ids.shape, 1, budget)
                budget = jnp.where(late, jnp.minimum(partial, budget), budget).astype(jnp.int32)
        return budget, contributed

    def federated(state: ServerState, key: jax.Array, train: ClientData):
        k_select, k_clients, k_transform, k_aggregate, k_straggle, k_down = jax.random.split(key, 6)
        start = state.params if downlink is None else state.broadcast  # what clients hold
        if poisson:
            ids, valid = select_poisson(k_select, num_clients, rate, cohort)
            if system is not None:  # Poisson among all clients; the unavailable drop out
                ids, avail = select_available(
                    key, k_select, start, train, state.system_state, state.round, ids
                )
                valid = valid & avail
        elif system is not None:
            ids, valid = select_available(
                key, k_select, start, train, state.system_state, state.round
            )
        else:
            ids = select_uniform(k_select, num_clients, clients_per_round)
        batch = gather_clients(train, ids)
        budget, contributed = budget_for(ids, k_straggle, batch)
        padded = poisson or system is not None  # some slots may hold no reachable client
        if system is not None:
            budget, contributed, round_time = clock(ids, batch, budget, contributed, valid)
        elif poisson:
            contributed = contributed & valid
        # Client randomness depends on (round, client id), not on the client's slot.
        client_keys = fold(k_clients, ids)
        client_states = _tree_take(state.client_states, ids)
        if mesh is not None:
            batch, client_keys, client_states, budget = jax.lax.with_sharding_constraint(
                (batch, client_keys, client_states, budget), client_sharding(mesh)
            )

        def train_client(x, y, n, k, cs, b):
            return client_update(start, x, y, n, k, cs, state.algorithm_state, b)

        def transform(delta, t_state, t_key):
            return algorithm.client_transform.update(delta, t_state, state.params, key=t_key)

        n = batch.num_examples.astype(jnp.float32)
        base = n if algorithm.weighting == "num_examples" else jnp.ones_like(n)
        weights = jnp.where(contributed, base, 0.0)
        t_states_in = _tree_take(state.client_transform_states, ids)
        t_keys = fold(k_transform, ids)
        per_client = (batch.x, batch.y, batch.num_examples, client_keys, client_states, budget)
        if streaming and client_chunk < ids.shape[0]:
            # Linear aggregator: sum w_k * delta_k chunk by chunk; no [K, ...] delta stack.
            total, out, t_states = stream_clients(
                train_client, transform, per_client, t_states_in, t_keys, weights, state.params
            )
            aggregate = normalize_weighted_sum(total, weights, state.params)
            agg_state = state.aggregator_state
        else:
            out = map_clients(train_client, *per_client)
            deltas, t_states = jax.vmap(transform)(out.delta, t_states_in, t_keys)
            aggregate, agg_state = algorithm.aggregator.update(
                deltas,
                state.aggregator_state,
                state.params,
                key=k_aggregate,
                weights=weights,
                num_steps=out.num_steps,
                num_clients=num_clients,
                client_ids=ids,
                active=valid if padded else None,
            )
        pseudo_grad = jax.tree.map(jnp.negative, aggregate)
        updates, opt_state = algorithm.server_optimizer.update(
            pseudo_grad, state.opt_state, state.params
        )
        algorithm_state = state.algorithm_state
        if algorithm.server_finalize is not None:
            c = contributed.astype(jnp.float32)
            algorithm_state = algorithm.server_finalize(
                algorithm_state, _weighted_tree_mean(out.upload, c), num_clients, jnp.sum(c)
            )
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(aggregate)]))
        new_params = optax.apply_updates(state.params, updates)
        broadcast, downlink_state = state.broadcast, state.downlink_state
        if downlink is not None:  # send C(x - x_hat); the gap carries over (implicit EF)
            gap = jax.tree.map(jnp.subtract, new_params, state.broadcast)
            sent, downlink_state = downlink.transform.update(
                gap, state.downlink_state, new_params, key=k_down
            )
            broadcast = jax.tree.map(jnp.add, state.broadcast, sent)
        new_state = ServerState(
            params=new_params,
            opt_state=opt_state,
            aggregator_state=agg_state,
            algorithm_state=algorithm_state,
            client_transform_states=_tree_put(
                state.client_transform_states, ids, t_states, contributed
            ),
            client_states=_tree_put(state.client_states, ids, out.client_state, contributed),
            round=state.round + 1,
            broadcast=broadcast,
            downlink_state=downlink_state,
            system_state=state.system_state,
        )
        w = jnp.where(contributed, n, 0.0)
        train_loss = jnp.sum(out.train_loss * w) / jnp.maximum(jnp.sum(w), 1.0)
        sampled = valid if padded else jnp.ones(ids.shape, bool)
        if system is not None:  # the clock, and Oort's statistics of who contributed
            sys_state = new_state.system_state
            utility = jnp.where(contributed, n * out.train_loss, sys_state.utility[ids])
            new_state = new_state._replace(
                system_state=SyncSystemState(
                    now=sys_state.now + round_time,
                    utility=sys_state.utility.at[ids].set(utility),
                    last=sys_state.last.at[ids].set(
                        jnp.where(contributed, state.round + 1, sys_state.last[ids])
                    ),
                )
            )
        stats = getattr(agg_state, "stats", ())
        metrics = RoundMetrics(train_loss, finite, ids, contributed, out.num_steps, sampled, stats)
        return new_state, metrics

    def cyclic(state: ServerState, key: jax.Array, train: ClientData):
        # Round r visits cycle positions rK, ..., rK + K - 1; position p is client p mod C, or
        # with shuffled cycles entry p mod C of a fresh permutation for cycle p // C.
        pos = state.round * clients_per_round + jnp.arange(clients_per_round)
        ids = (pos % num_clients).astype(jnp.int32)
        if algorithm.hparams.get("shuffle", False):
            perms = jax.vmap(
                lambda c: jax.random.permutation(
                    jax.random.fold_in(state.algorithm_state, c), num_clients
                )
            )(pos // num_clients)
            ids = jnp.take_along_axis(perms, ids[:, None], axis=1)[:, 0].astype(jnp.int32)
        keys = fold(key, ids)

        def visit(params, inputs):
            cid, ck = inputs
            out = client_update(params, train.x[cid], train.y[cid], train.num_examples[cid], ck)
            return jax.tree.map(jnp.add, params, out.delta), (out.train_loss, out.num_steps)

        end, (losses, steps) = jax.lax.scan(visit, state.params, (ids, keys))
        pseudo_grad = jax.tree.map(jnp.subtract, state.params, end)  # -(total change)
        updates, opt_state = algorithm.server_optimizer.update(
            pseudo_grad, state.opt_state, state.params
        )
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(end)]))
        n = train.num_examples[ids].astype(jnp.float32)
        train_loss = jnp.sum(losses * n) / jnp.maximum(jnp.sum(n), 1.0)
        new_state = state._replace(
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            round=state.round + 1,
        )
        contributed = jnp.ones(ids.shape, bool)
        return new_state, RoundMetrics(train_loss, finite, ids, contributed, steps, contributed)

    def local(state: ServerState, key: jax.Array, train: ClientData):
        k_select, k_clients = jax.random.split(key)
        ids = select_uniform(k_select, num_clients, clients_per_round)
        batch = gather_clients(train, ids)
        client_keys = fold(k_clients, ids)
        start = _tree_take(state.client_states, ids)
        if mesh is not None:
            batch, client_keys, start = jax.lax.with_sharding_constraint(
                (batch, client_keys, start), client_sharding(mesh)
            )
        out = map_clients(client_update, start, batch.x, batch.y, batch.num_examples, client_keys)
        new_params = jax.tree.map(jnp.add, start, out.delta)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(new_params)]))
        n = batch.num_examples.astype(jnp.float32)
        train_loss = jnp.sum(out.train_loss * n) / jnp.maximum(jnp.sum(n), 1.0)
        new_state = state._replace(
            client_states=_tree_put(state.client_states, ids, new_params),
            round=state.round + 1,
        )
        contributed = jnp.ones(ids.shape, bool)
        return new_state, RoundMetrics(
            train_loss, finite, ids, contributed, out.num_steps, contributed
        )

    def asynchronous(state: ServerState, key: jax.Array, train: ClientData):
        # One server step (Nguyen et al. 2022, Alg. 1; Xie et al. 2019 with B = 1): the B
        # earliest updates, each computed from the global model its client started from.
        a = state.system_state
        hp = algorithm.hparams
        b, s_max = hp["buffer_size"], hp["max_staleness"]
        k_clients, k_select = jax.random.split(key)
        slots = jnp.argsort(a.finish)[:b]
        ids, start = a.ids[slots], a.start[slots]
        now = a.finish[slots[-1]]
        stale = _tree_take(a.models, start % s_max)
        batch = gather_clients(train, ids)
        out = jax.vmap(client_update, in_axes=(0, 0, 0, 0, 0))(
            stale, batch.x, batch.y, batch.num_examples, fold(k_clients, ids)
        )
        tau = a.version - start
        fresh = tau < s_max  # older models have left the ring buffer: the update is discarded
        scale = jnp.power(1.0 + tau.astype(jnp.float32), -hp["staleness_exponent"])
        n = batch.num_examples.astype(jnp.float32)
        base = n if algorithm.weighting == "num_examples" else jnp.ones_like(n)
        w = jnp.where(fresh, base, 0.0)
        if hp["mixing"] is None:  # FedBuff: staleness-scaled mean of the buffered deltas
            mean = _weighted_tree_mean(
                jax.tree.map(lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), out.delta),
                w,
            )
        else:  # FedAsync: x + alpha s(tau) (x_stale + delta - x)
            alpha = hp["mixing"] * scale[0] * fresh[0]
            mean = jax.tree.map(
                lambda xs, d, x: alpha * (xs[0] + d[0] - x), stale, out.delta, state.params
            )
        updates, opt_state = algorithm.server_optimizer.update(
            jax.tree.map(jnp.negative, mean), state.opt_state, state.params
        )
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(mean)]))
        version = a.version + 1
        models = jax.tree.map(lambda r, p: r.at[version % s_max].set(p), a.models, new_params)
        # The finished slots restart with clients not in flight, from the new model.
        busy = jnp.zeros((num_clients,), bool).at[a.ids].set(True).at[ids].set(False)
        u = jax.random.uniform(k_select, (num_clients,))
        new_ids = jnp.argsort(jnp.where(busy, 2.0 + u, u))[:b].astype(jnp.int32)
        new_a = AsyncState(
            models=models,
            version=version,
            ids=a.ids.at[slots].set(new_ids),
            start=a.start.at[slots].set(version),
            finish=a.finish.at[slots].set(now + t_all[new_ids]),
            now=now,
        )
        new_state = state._replace(
            params=new_params, opt_state=opt_state, round=state.round + 1, system_state=new_a
        )
        train_loss = jnp.sum(out.train_loss * w) / jnp.maximum(jnp.sum(w), 1.0)
        metrics = RoundMetrics(
            train_loss, finite, ids, fresh, out.num_steps, jnp.ones(ids.shape, bool), tau
        )
        return new_state, metrics

    if algorithm.mode == "async":
        return asynchronous
    if algorithm.mode == "cyclic":
        return cyclic
    if algorithm.mode == "local":
        return local
    return federated  # "federated" and "centralized" (one pooled client)


def full_work_times(system, spec: ClientData, plan, wire_bytes) -> np.ndarray:
    """``[C]`` simulated seconds each client needs for a full round of local work."""
    up_bytes, down_bytes = wire_bytes
    n = np.asarray(spec.num_examples)
    per_step = n if plan.full_batch else np.minimum(n, plan.batch_size)
    steps = np.asarray(num_local_steps(jnp.asarray(n), plan))
    p = system.profiles
    return (
        down_bytes / np.asarray(p.downlink, np.float64)
        + steps * per_step / np.asarray(p.speed, np.float64)
        + up_bytes / np.asarray(p.uplink, np.float64)
    )


def init_async(algorithm, system, spec, params, wire_bytes, key) -> AsyncState:
    """The first ``concurrency`` clients (uniform, distinct) start from version 0 at time 0."""
    hp = algorithm.hparams
    m, s_max = hp["concurrency"], hp["max_staleness"]
    ids = select_uniform(key, spec.x.shape[0], m)
    times = full_work_times(system, spec, plan_local_work_for(algorithm, spec), wire_bytes)
    return AsyncState(
        models=_stack(params, s_max),
        version=jnp.zeros((), jnp.int32),
        ids=ids,
        start=jnp.zeros((m,), jnp.int32),
        finish=jnp.asarray(times, jnp.float32)[ids],
        now=jnp.zeros((), jnp.float32),
    )


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


def _json_list(values: np.ndarray) -> list:
    """Per-client values for JSON: undefined (NaN) entries become ``None``."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _validate(
    algorithm,
    model,
    data,
    rounds,
    clients_per_round,
    eval_every,
    seed,
    stragglers,
    straggler_policy,
):
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be an fljax Algorithm, got {type(algorithm).__name__}")
    if not isinstance(model, Model):
        raise ValueError(f"model must be an fljax Model, got {type(model).__name__}")
    if not isinstance(data, FederatedData):
        raise ValueError(f"data must be a FederatedData, got {type(data).__name__}")
    for name, value in (("rounds", rounds), ("eval_every", eval_every)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if algorithm.mode != "centralized" and (
        not isinstance(clients_per_round, int | np.integer)
        or not (1 <= clients_per_round <= data.num_clients)
    ):
        raise ValueError(
            f"clients_per_round must be an integer in [1, num_clients={data.num_clients}], "
            f"got {clients_per_round!r}"
        )
    if not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if int(data.test.num_examples.sum()) == 0:
        raise ValueError("the federation has no test examples (test_fraction=0?)")
    if isinstance(algorithm.local_steps, tuple):
        if algorithm.mode == "centralized":
            raise ValueError("per-client local_steps make no sense for centralized training")
        if len(algorithm.local_steps) != data.num_clients:
            raise ValueError(
                f"local_steps has {len(algorithm.local_steps)} entries but the federation has "
                f"{data.num_clients} clients"
            )
    if not 0.0 <= stragglers < 1.0:
        raise ValueError(f"stragglers must be a fraction in [0, 1), got {stragglers}")
    if straggler_policy not in STRAGGLER_POLICIES:
        raise ValueError(
            f"straggler_policy={straggler_policy!r} is not one of {STRAGGLER_POLICIES}"
        )
    if stragglers > 0:
        if algorithm.mode != "federated":
            raise ValueError(f"stragglers need mode='federated', not {algorithm.mode!r}")
        work = algorithm.local_epochs or max(np.atleast_1d(algorithm.local_steps))
        if straggler_policy == "partial" and work < 2:
            raise ValueError(
                "straggler_policy='partial' needs local_epochs >= 2 (or local_steps >= 2): "
                "stragglers do a uniform 1..E-1 epochs"
            )
    if algorithm.mode == "cyclic" and (
        algorithm.client_state_init or algorithm.server_state_init or algorithm.client_finalize
    ):
        raise ValueError("mode='cyclic' supports no client or server algorithm state")


DP_MEAN_ALGORITHMS = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedprox")


def _with_privacy(privacy, algorithm, data, clients_per_round, rounds):
    """Checks that ``privacy`` composes with ``algorithm`` and wires it in; returns the plan."""
    if not isinstance(privacy, Privacy):
        raise ValueError(f"privacy must be a fljax.privacy.Privacy, got {privacy!r}")
    mode, level = algorithm.mode, privacy.level
    if algorithm.client_finalize is not None:
        raise ValueError(
            f"privacy={privacy.name!r} cannot protect algorithm {algorithm.name!r}: its extra "
            "per-client upload (control variates, gradient memory) is not privatized; use one "
            f"of {DP_MEAN_ALGORITHMS}"
        )
    if level in ("client", "local") and mode != "federated":
        raise ValueError(f"privacy={privacy.name!r} needs mode='federated', not {mode!r}")
    if level == "client" and algorithm.name not in DP_MEAN_ALGORITHMS:
        raise ValueError(
            f"client-level DP replaces the aggregator with a clipped noisy mean, which changes "
            f"algorithm {algorithm.name!r}; use one of {DP_MEAN_ALGORITHMS}"
        )
    if level == "record":
        if algorithm.batch_size is None:
            raise ValueError("privacy='dp_sgd' needs a minibatch algorithm (batch_size set)")
        if data.task == "survival":
            raise ValueError(
                "privacy='dp_sgd' needs a per-example loss; the Cox loss of task='survival' "
                "couples the records of a batch"
            )
    spec = _train_spec(data, algorithm)
    steps = np.asarray(
        num_local_steps(jnp.asarray(spec.num_examples), plan_local_work_for(algorithm, spec))
    )
    if isinstance(algorithm.local_steps, tuple):
        steps = np.asarray(algorithm.local_steps)
    num_units = spec.x.shape[0]
    dp_plan = privacy_plan(
        privacy,
        num_clients=num_units,
        clients_per_round=min(clients_per_round, num_units),
        rounds=rounds,
        steps=steps,
        num_examples=np.asarray(spec.num_examples),
        batch_size=algorithm.batch_size,
    )
    if level == "client":
        algorithm = algorithm._replace(aggregator=dp_plan.aggregator())
    elif level == "local":
        algorithm = algorithm._replace(
            client_transform=chain(algorithm.client_transform, dp_plan.client_transform())
        )
    return algorithm, dp_plan


def _with_secagg(secagg, algorithm, data, compression, dp_plan):
    """Checks that secure aggregation composes with the run and wraps the aggregator."""
    if not isinstance(secagg, SecAgg):
        raise ValueError(f"secure_aggregation must be a fljax.privacy.SecAgg, got {secagg!r}")
    if algorithm.mode != "federated":
        raise ValueError(f"secure aggregation needs mode='federated', not {algorithm.mode!r}")
    if algorithm.name not in DP_MEAN_ALGORITHMS or algorithm.client_finalize is not None:
        raise ValueError(
            f"secure aggregation replaces the server's sum; algorithm {algorithm.name!r} is "
            f"not a (weighted) mean of deltas; use one of {DP_MEAN_ALGORITHMS}"
        )
    if compression is not None and compression.name not in SECAGG_COMPRESSORS:
        raise ValueError(
            f"compression={compression.name!r} does not compose with secure aggregation: "
            "masks make every message a dense ring vector, so sparsifiers with client-specific "
            "indices (topk, randk) lose their savings, and per-client scales or factors (qsgd, "
            "sign, powersgd) do not add up in the ring; the ring encoding (bits=) is the "
            f"quantizer. Composable: {SECAGG_COMPRESSORS}"
        )
    if compression is not None and compression.hparams.get("error_feedback"):
        raise ValueError("error feedback is not needed with selective sharing; set it off")
    inner = None
    if dp_plan is not None and dp_plan.privacy.level == "client":
        inner = algorithm.aggregator  # the DP aggregator: its clipped sum becomes secure
    n = np.asarray(data.train.num_examples)
    bound = float(n.max()) if algorithm.weighting == "num_examples" else 1.0
    return algorithm._replace(aggregator=secure_aggregator(secagg, bound, inner))


SECAGG_COMPRESSORS = ("selective",)


def _check_async(algorithm, data, system, privacy, secagg, compression, downlink, stragglers):
    name = algorithm.name
    if system is None:
        raise ValueError(
            f"{name!r} is asynchronous: give system= (fljax.system.system(profiles)); the "
            "device profiles decide which clients finish first"
        )
    for what, value in (("privacy", privacy), ("secure_aggregation", secagg),
                        ("compression", compression), ("downlink", downlink)):  # fmt: skip
        if value is not None:
            raise ValueError(f"{what}= is not supported with asynchronous {name!r} yet")
    if stragglers:
        raise ValueError("stragglers= does not apply to asynchronous training: the profiles do")
    if algorithm.hparams["concurrency"] > data.num_clients:
        raise ValueError(
            f"concurrency={algorithm.hparams['concurrency']} exceeds the federation's "
            f"{data.num_clients} clients"
        )


def _check_system(system, algorithm, data, dp_plan, clients_per_round):
    if not isinstance(system, SystemModel):
        raise ValueError(f"system must be a fljax.system.SystemModel, got {system!r}")
    if algorithm.mode not in ("federated", "async"):
        raise ValueError(f"system= needs mode='federated' or 'async', not {algorithm.mode!r}")
    if len(system.profiles.speed) != data.num_clients:
        raise ValueError(
            f"system profiles describe {len(system.profiles.speed)} clients but the federation "
            f"has {data.num_clients}"
        )
    if dp_plan is not None and dp_plan.poisson_clients:
        raise ValueError(
            "system= with Poisson client sampling (client-level DP) is not supported; use "
            "sampling='fixed'"
        )
    if system.candidates is not None and not (
        clients_per_round <= system.candidates <= data.num_clients
    ):
        raise ValueError(
            f"candidates must be in [clients_per_round={clients_per_round}, "
            f"num_clients={data.num_clients}], got {system.candidates}"
        )


def _adaptive_clip_norm(aggregator_state):
    """The current clip norm of adaptive clipping, also when wrapped by secure aggregation."""
    return getattr(aggregator_state, "inner", aggregator_state).clip_norm


def _tree_bytes(tree) -> int:
    """Bytes of a dense encoding of arrays or shape structs."""
    return int(sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


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
    stragglers: float = 0.0,
    straggler_policy: str = "drop",
    eval_train: bool = False,
    compression: Any | None = None,
    downlink: Any | None = None,
    privacy: Privacy | None = None,
    secure_aggregation: SecAgg | None = None,
    system: SystemModel | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    callbacks: Sequence[Callable[[dict], None]] = (),
    progress: bool = False,
    seeds: Sequence[int] | None = None,
    sweep: dict[str, Sequence[float]] | None = None,
    client_chunk: int | None = None,
) -> SimulationResult | list[SimulationResult]:
    r"""Runs ``rounds`` rounds of ``algorithm`` on ``data`` and evaluates every ``eval_every``.

    Args:
        algorithm: from :func:`fljax.algorithms.get`.
        model: from :func:`fljax.models.get`.
        data: the federation, from :func:`fljax.data.load`.
        rounds: total rounds.
        clients_per_round: ``K`` clients sampled uniformly without replacement each round (in
            cyclic mode: the next ``K`` clients of the cycle; ignored by centralized training,
            which has one pooled dataset).
        seed: the one seed every random choice derives from (initialisation, client
            selection, minibatches, stragglers); equal seeds give bit-identical histories on one
            backend and device count.
        eval_every: rounds per compiled block; the global model is evaluated on every client's
            test split at round 0 and after each block (and at the last round).
        params: initial global parameters (a warm start or a pretrained model); by default
            ``model.init`` with a key derived from ``seed``.
        stragglers: fraction of the selected clients that are stragglers each round: exactly
            ``K - round(K (1 - stragglers))`` of them, chosen at random (FedProx's protocol).
        straggler_policy: ``"drop"`` (their updates are not aggregated, as FedAvg does) or
            ``"partial"`` (they send the work done in a uniform 1..E-1 local epochs, as
            FedProx does).
        eval_train: also evaluate the global model on every client's TRAINING split at each
            evaluation (``train_loss``, ``train_accuracy``, ...: the global objective
            :math:`\sum_k p_k F_k(w)` that FedProx's paper plots). ``local_loss`` is always
            reported: the mean loss of the local steps of the round block.
        compression: a :class:`fljax.compress.Compressor` applied to every client's delta after
            the algorithm's own client transform (its state, e.g. error-feedback residuals,
            persists per client); ``bytes_up`` then counts its exact message size and history
            entries carry ``compression_ratio`` (dense float32 bits / message bits).
        downlink: a :class:`fljax.compress.Compressor` for the broadcast: the server keeps its
            model x and the clients' copy x_hat, clients train from x_hat, and after each round
            the server sends ``C(x - x_hat)`` (the gap carries over: implicit error feedback);
            ``bytes_down`` counts its messages.
        privacy: a :class:`fljax.privacy.Privacy` (``fljax.privacy.get(...)``):
            client-level DP-FedAvg (replaces the aggregator; with Poisson client sampling
            ``clients_per_round`` is the EXPECTED cohort and the vmapped cohort is padded to a
            cap), local DP (a client transform before any compression) or record-level DP-SGD
            in the local steps. Every history entry then carries ``epsilon`` and ``privacy``
            (level, accountant, neighbouring relation, delta, noise multiplier, clip norm).
        secure_aggregation: a :class:`fljax.privacy.SecAgg` (``fljax.privacy.get("secagg")``
            or ``"secagg_plus"``): the server's sum becomes a simulated secure sum in
            ``Z_(2^b)`` (exact decoded sum of the fixed-point updates; stragglers dropped under
            ``straggler_policy="drop"`` are the protocol's dropouts, their masks recovered).
            Composes with client-level DP (the clipped updates are summed securely, the server
            adds the noise) and local DP; ``bytes_up`` then counts the protocol's messages and
            each history entry carries ``secagg`` (running totals of PRG expansions, recovered
            masks, recovery messages, dropouts).
        system: a :class:`fljax.system.SystemModel` (``fljax.system.system(profiles, ...)``):
            per-client availability each round, a simulated clock (download + local compute +
            upload from each client's profile and the exact message bytes) and a deadline
            (late clients dropped, or partial work). History entries then carry
            ``sim_time_s``, the simulated seconds elapsed.
        checkpoint_dir: save the full state (orbax) and the history at every evaluation
            there, replacing the previous checkpoint.
        resume: continue from the checkpoint in ``checkpoint_dir`` if there is one: the
            history up to it is returned as it was (callbacks see only the new entries), and
            the result equals that of an uninterrupted run, since round ``r`` always uses
            ``fold_in(rounds_key, r)``. ``rounds`` may be larger than before (extend a run).
        devices: devices to split the selected clients over (default: all local devices of
            the default backend; the largest count dividing ``clients_per_round`` is used).
            On CPU, :func:`fljax.set_host_device_count` exposes one device per core.
            Results are identical for a given device count; across counts they can differ
            in the last bits (the order of the cross-device sum).
        callbacks: called with each history entry as soon as it exists (e.g. to write
            ``metrics.jsonl`` so that nothing computed is lost).
        progress: show a tqdm progress bar.
        seeds: run one independent simulation per seed as ONE compiled program (the rounds
            ``vmap``ped over a leading seed axis of the state and the keys); each run equals
            ``simulate(..., seed=s)`` (up to the last bits where XLA batches arithmetic
            differently). Returns a list of results in the order of ``seeds``; callbacks see
            every run's entries, each with its ``seed``. Runs on one device (the seed axis
            is the batch); not with ``checkpoint_dir``.
        sweep: float hyperparameters of the algorithm to vary inside the same program,
            ``{"client_lr": [0.01, 0.03, 0.1]}`` (lists of equal length, zipped): one run per
            value and seed (seed-major order), each equal to the run with
            ``fljax.algorithms.rebuild(algorithm, client_lr=v)``; entries carry ``sweep``.
            Hyperparameters that fix shapes or Python control flow (epochs, batch size,
            names) cannot vary in one program and are refused; so are ``privacy`` and
            ``secure_aggregation``, whose plans are built per algorithm.
        client_chunk: train the selected clients in chunks of this many (``vmap``ped chunks
            one after another), bounding the memory of local training to one chunk's
            activations; with the weighted mean the deltas' weighted sum streams through the
            chunks (no stack of all deltas). The same result as one ``vmap`` over all of them.
            ``None``: all at once. :func:`auto_client_chunk` derives it from a memory budget.

    Returns:
        A :class:`SimulationResult` (a list of them with ``seeds``).

    Raises:
        ValueError: bad arguments, before anything is compiled.
        NonFiniteUpdateError: a round's aggregated update is NaN/inf; the message names the
            round, and the history entries already passed to ``callbacks`` stay valid.
    """
    _validate(
        algorithm,
        model,
        data,
        rounds,
        clients_per_round,
        eval_every,
        seed,
        stragglers,
        straggler_policy,
    )
    mode = algorithm.mode
    multi = seeds is not None
    if multi:
        if isinstance(seeds, str | bytes) or not len(seeds):
            raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
        for s_ in seeds:
            if isinstance(s_, bool) or not isinstance(s_, int | np.integer) or s_ < 0:
                raise ValueError(f"seeds must hold non-negative integers, got {s_!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        if checkpoint_dir is not None or resume:
            raise ValueError("checkpoint_dir / resume are for one run; leave them unset with seeds")
    run_seeds = [int(seed)] if not multi else [int(s_) for s_ in seeds]
    sweep_values = _check_sweep(sweep, algorithm, privacy, secure_aggregation, checkpoint_dir)
    user_algorithm = algorithm
    n_values = len(next(iter(sweep_values.values()))) if sweep_values else 1
    runs = [(s_, i) for s_ in run_seeds for i in range(n_values)]
    if sweep_values:
        multi = True
    if client_chunk is not None and (
        isinstance(client_chunk, bool) or not isinstance(client_chunk, int) or client_chunk < 1
    ):
        raise ValueError(f"client_chunk must be a positive integer or None, got {client_chunk!r}")
    if compression is not None:
        if not isinstance(compression, Compressor):
            raise ValueError(f"compression must be a fljax Compressor, got {compression!r}")
        if mode != "federated":
            raise ValueError(f"compression needs mode='federated', not {mode!r}")
    if downlink is not None:
        if not isinstance(downlink, Compressor):
            raise ValueError(f"downlink must be a fljax Compressor, got {downlink!r}")
        if mode != "federated":
            raise ValueError(f"downlink compression needs mode='federated', not {mode!r}")
        if downlink.hparams.get("error_feedback"):
            raise ValueError(
                "downlink already carries the untransmitted gap x - x_hat over; build the "
                "downlink compressor with error_feedback=False"
            )
    if mode == "centralized":
        clients_per_round = 1
    if mode == "async":  # a server step aggregates buffer_size updates
        clients_per_round = algorithm.hparams["buffer_size"]
    dp_plan = None
    if privacy is not None:
        algorithm, dp_plan = _with_privacy(privacy, algorithm, data, clients_per_round, rounds)
    if secure_aggregation is not None:
        algorithm = _with_secagg(secure_aggregation, algorithm, data, compression, dp_plan)

    def with_compression(algo):  # after the algorithm's (and local DP's) client transform
        if compression is None:
            return algo
        return algo._replace(client_transform=chain(algo.client_transform, compression.transform))

    algorithm = with_compression(algorithm)
    if mode == "async":
        _check_async(algorithm, data, system, privacy, secure_aggregation, compression, downlink,
                     stragglers)  # fmt: skip
    if system is not None:
        _check_system(system, algorithm, data, dp_plan, clients_per_round)
    width = dp_plan.cohort if dp_plan is not None and dp_plan.poisson_clients else None
    if system is not None and system.selection == "poisson":
        width = poisson_cap(data.num_clients, clients_per_round)
    width = width or clients_per_round  # the vmapped cohort
    t_start = time.perf_counter()
    given_params = params
    root = jax.random.key(run_seeds[0])
    k_init, k_rounds = jax.random.split(root)
    if params is None:
        params = model.init(k_init, data.sample())
    else:
        expected_tree = jax.tree.structure(jax.eval_shape(model.init, k_init, data.sample()))
        if jax.tree.structure(params) != expected_tree:
            raise ValueError(f"params do not match the structure of model {model.name!r}")
        params = jax.tree.map(jnp.asarray, params)
    for c in (compression, downlink):
        if c is not None:
            c.bits(params)  # validates fraction / k against the model before compiling
    out_shape = jax.eval_shape(lambda p, x: model.apply(p, x), params, data.sample()).shape
    expected = data.num_classes if data.task == "classification" else 1
    if out_shape[-1] != expected:
        raise ValueError(
            f"model {model.name!r} outputs {out_shape[-1]} values per example but the "
            f"{data.task} dataset {data.name!r} needs {expected} (num_classes)"
        )
    straggle = None
    if stragglers > 0:
        count = clients_per_round - int(round(clients_per_round * (1.0 - stragglers)))
        straggle = Stragglers(count, straggler_policy)
    spec = _train_spec(data, algorithm)
    num_train_clients = spec.x.shape[0]

    def fresh_state(run_root, run_params):
        st = init_state(algorithm, run_params, num_train_clients)
        if downlink is not None:
            down = downlink.transform.init(run_params)
            st = st._replace(broadcast=run_params, downlink_state=down)
        if mode == "cyclic":  # the key of the cycle orders persists across rounds
            st = st._replace(algorithm_state=jax.random.fold_in(run_root, 2))
        return st

    state = fresh_state(root, params)
    train = ClientData(*(jnp.asarray(a) for a in spec))
    test = ClientData(*(jnp.asarray(a) for a in data.test))
    serial = ("cyclic", "centralized", "async")
    mesh = None if multi or mode in serial else client_mesh(width, devices)
    if mesh is not None:  # data and server state replicated; per-round client work split
        state, train, test = jax.device_put((state, train, test), replicated(mesh))

    personal = algorithm.personal
    per_client = mode == "local" or personal is not None
    eval_params = (lambda st: client_models(st, personal)) if per_client else (lambda st: st.params)
    compile_s = 0.0
    t0 = time.perf_counter()
    evaluate = (
        jax.jit(evaluate_fn(model, data.task, per_client, data.metrics, data.loss_options))
        .lower(eval_params(state), *test)
        .compile()
    )
    compile_s += time.perf_counter() - t0
    train_counts = np.asarray(data.train.num_examples)
    train_eval, evaluate_train = None, None
    if eval_train:
        train_eval = ClientData(*(jnp.asarray(a) for a in data.train))
        if mesh is not None:
            train_eval = jax.device_put(train_eval, replicated(mesh))
        t0 = time.perf_counter()
        evaluate_train = (
            jax.jit(evaluate_fn(model, data.task, per_client, data.metrics, data.loss_options))
            .lower(eval_params(state), *train_eval)
            .compile()
        )
        compile_s += time.perf_counter() - t0
    evaluate_global = None
    if personal is not None and personal.reports_global:  # Ditto, APFL: the global model too
        t0 = time.perf_counter()
        evaluate_global = (
            jax.jit(evaluate_fn(model, data.task, False, data.metrics, data.loss_options))
            .lower(state.params, *test)
            .compile()
        )
        compile_s += time.perf_counter() - t0
    compiled_blocks: dict[int, Any] = {}

    # Bytes on the wire per client and round (dense float32 encoding of every message).
    model_bytes = param_bytes(params)
    broadcast_round = 0  # downlink bytes per round sent to every client (downlink compression)
    secagg_bytes = None
    if secure_aggregation is not None:
        sent = num_params(params)  # selective sharing masks only the shared leaves
        if compression is not None:
            sent = compression.bits(params) // 32
        secagg_bytes = message_bytes(secure_aggregation, sent, width)
    if personal is not None:  # private leaves never leave the client, in either direction
        sent_leaves = personal.shared(params)
        model_bytes = sum(
            int(jnp.size(p)) * jnp.dtype(p.dtype).itemsize
            for p, shared in zip(jax.tree.leaves(params), sent_leaves, strict=True)
            if shared
        )
    if mode in ("federated", "async"):
        delta_bytes = model_bytes
        if compression is not None:
            delta_bytes = math.ceil(compression.bits(params) / 8)
        up_each = delta_bytes + _tree_bytes(
            _client_upload_shape(algorithm, model, data, spec, params, state)
        )
        down_each = model_bytes + _tree_bytes(state.algorithm_state)
        if downlink is not None:  # every client must track x_hat: each broadcast goes to all C
            down_each = _tree_bytes(state.algorithm_state)
            broadcast_round = data.num_clients * math.ceil(downlink.bits(params) / 8)
    elif mode == "cyclic":
        up_each = down_each = model_bytes
    else:  # centralized and local training send nothing
        up_each = down_each = 0
    wire = (float(up_each), float(down_each))
    if secagg_bytes is not None:
        wire = (float(sum(v for k, v in secagg_bytes.items() if k != "unmasking_max")), wire[1])

    def with_clock(st, run_root, run_params):
        if mode == "async":
            return st._replace(
                system_state=init_async(
                    algorithm, system, spec, run_params, wire, jax.random.fold_in(run_root, 3)
                )
            )
        if system is not None:
            c = spec.x.shape[0]
            zeros = (jnp.zeros((), jnp.float32), jnp.zeros((c,), jnp.float32),
                     jnp.zeros((c,), jnp.int32))  # fmt: skip
            return st._replace(system_state=SyncSystemState(*zeros))
        return st

    state = with_clock(state, root, params)
    block = build_block(
        build_round(
            algorithm, model, data, clients_per_round, mesh, straggle, downlink, dp_plan,
            system, wire, client_chunk,
        )
    )  # fmt: skip
    if multi:  # every run from its own seed: init, selection, batches; one vmapped program
        starts = []
        for s_, _ in runs:
            r_root = jax.random.key(s_)
            r_init, r_rounds = jax.random.split(r_root)
            r_params = params if given_params is not None else model.init(r_init, data.sample())
            starts.append((with_clock(fresh_state(r_root, r_params), r_root, r_params), r_rounds))
        state = jax.tree.map(lambda *a: jnp.stack(a), *[st for st, _ in starts])
        k_rounds = jnp.stack([k for _, k in starts])
        if not sweep_values:
            block = jax.vmap(block, in_axes=(0, 0, None, None))
        else:  # the algorithm is rebuilt inside the trace from each run's values
            hp = {k: jnp.asarray([v[i] for _, i in runs], jnp.float32)
                  for k, v in sweep_values.items()}  # fmt: skip

            def block_for(values, st, key, ids, tr):
                algo = with_compression(rebuild(user_algorithm, **values))
                run_round = build_round(
                    algo, model, data, clients_per_round, None, straggle, downlink, None,
                    system, wire, client_chunk,
                )  # fmt: skip
                return build_block(run_round)(st, key, ids, tr)

            swept = jax.vmap(block_for, in_axes=(0, 0, 0, None, None))
            block = functools.partial(swept, hp)
    run_block = jax.jit(block)
    test_counts = np.asarray(data.test.num_examples)
    logs = [
        _RunLog(s_, data.num_clients, {k: v[i] for k, v in sweep_values.items()}) for s_, i in runs
    ]

    def record(round_idx: int, st, train_losses, log: _RunLog) -> dict:
        metrics, client_metrics = {}, {}
        splits = [("test", evaluate, test, test_counts)]
        if eval_train:
            splits.append(("train", evaluate_train, train_eval, train_counts))
        for prefix, scorer, split, counts in splits:
            for name, values in jax.device_get(scorer(eval_params(st), *split)).items():
                values = np.asarray(values, np.float64)
                client_metrics[f"{prefix}_{name}"] = _json_list(values)
                for suffix, v in summarize(values, counts, HIGHER_IS_BETTER[name]).items():
                    metrics[f"{prefix}_{name}{suffix}"] = v
        metrics["local_loss"] = float(np.mean(train_losses)) if train_losses is not None else None
        global_metrics = None
        if evaluate_global is not None:
            global_metrics = {}
            for name, values in jax.device_get(evaluate_global(st.params, *test)).items():
                values = np.asarray(values, np.float64)
                client_metrics[f"global_test_{name}"] = _json_list(values)
                for suffix, v in summarize(values, test_counts, HIGHER_IS_BETTER[name]).items():
                    global_metrics[f"test_{name}{suffix}"] = v
        client_metrics["num_test_examples"] = test_counts.tolist()
        client_metrics["participation"] = log.participation.tolist()
        entry = {
            "round": round_idx,
            "metrics": metrics,
            "client_metrics": client_metrics,
            "bytes_up": int(log.totals["up"]),
            "bytes_down": int(log.totals["down"]),
        }
        if global_metrics is not None:
            entry["global_metrics"] = global_metrics
        if compression is not None:
            entry["compression_ratio"] = 8 * model_bytes / compression.bits(params)
        if system is not None:
            entry["sim_time_s"] = float(jax.device_get(st.system_state.now))
        if mode == "async":
            done = max(log.totals["async_updates"], 1)
            entry["async"] = {
                "updates": log.totals["async_updates"],
                "discarded_stale": log.totals["async_discarded"],
                "staleness_mean": log.totals["async_staleness"] / done,
                "staleness_max": log.totals["async_staleness_max"],
            }
        if secure_aggregation is not None:
            entry["secagg"] = {
                "protocol": secure_aggregation.name,
                "bits": secure_aggregation.bits,
                "degree": graph_degree(secure_aggregation, width),
                **log.totals["secagg"],
                "bytes_per_client": secagg_bytes,
            }
        if dp_plan is not None:
            counts = np.array([round_idx]) if mode == "centralized" else log.participation
            clip = None
            if dp_plan.privacy.adaptive is not None:
                clip = float(jax.device_get(_adaptive_clip_norm(st.aggregator_state)))
            entry["privacy"] = dp_plan.report(round_idx, counts, clip)
            entry["epsilon"] = entry["privacy"]["epsilon"]
        if multi:
            entry["seed"] = log.seed
        if log.sweep:
            entry["sweep"] = log.sweep
        log.history.append(entry)
        for cb in callbacks:
            cb(entry)
        return entry

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, unit="round", desc=f"{algorithm.name}/{data.name}")

    def checkpoint(round_idx: int) -> None:
        if checkpoint_dir is None:
            return
        log = logs[0]  # checkpoints are refused with several seeds
        save_state(
            checkpoint_dir,
            jax.device_get(state),
            {
                "round": round_idx,
                "history": log.history,
                "selected": [a.tolist() for a in log.selected],
                "contributed": [a.tolist() for a in log.contributed],
                "num_steps": [a.tolist() for a in log.num_steps],
                "totals": log.totals,
            },
        )

    def run_of(tree, i: int):
        """Run ``i``'s slice of a pytree stacked over seeds (the tree itself for one run)."""
        return jax.tree.map(lambda a: a[i], tree) if multi else tree

    def absorb(log: _RunLog, metrics: RoundMetrics, start: int, length: int) -> None:
        """Host bookkeeping of one run's block: who took part, bytes, protocol counters."""
        if not np.all(metrics.finite):
            bad = start + int(np.argmin(metrics.finite)) + 1
            which = f"seed {log.seed}, " if multi else ""
            raise NonFiniteUpdateError(
                f"{which}round {bad}: the aggregated update is not finite (NaN or inf); lower "
                f"the learning rates or clip updates. Metrics up to round {start} were kept."
            )
        ids = np.asarray(metrics.client_ids)
        took_part = np.asarray(metrics.contributed)
        log.selected.append(ids)
        log.contributed.append(took_part)
        log.num_steps.append(np.asarray(metrics.num_steps))
        totals = log.totals
        if mode != "centralized":
            np.add.at(log.participation, ids[took_part], 1)
        if secure_aggregation is None:
            totals["up"] += int(took_part.sum()) * up_each
        else:  # every selected client keys and shares; survivors send the masked vector
            st = metrics.aggregator_stats
            for name in totals["secagg"]:
                totals["secagg"][name] += int(np.sum(st._asdict()[name]))
            b = secagg_bytes
            totals["up"] += (
                int(ids.size) * (b["advertise_keys"] + b["share_keys"])
                + int(np.sum(st.survivors)) * b["masked_input"]
                + int(np.sum(st.recovery_messages)) * SHARE_BYTES
            )
        totals["down"] += int(np.sum(metrics.sampled)) * down_each + length * broadcast_round
        if mode == "async":
            tau = np.asarray(metrics.aggregator_stats)
            totals["async_updates"] += int(took_part.sum())
            totals["async_discarded"] += int((~took_part).sum())
            totals["async_staleness"] += int(tau[took_part].sum())
            totals["async_staleness_max"] = max(
                totals["async_staleness_max"], int(tau.max(initial=0))
            )

    restored = None
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        restored = load_state(checkpoint_dir, jax.device_get(state))
    try:
        if restored is None:
            for i, log in enumerate(logs):
                record(0, run_of(state, i), None, log)
            checkpoint(0)
            start = 0
        else:
            host_state, progress = restored
            state = (
                jax.device_put(host_state, replicated(mesh))
                if mesh is not None
                else (jax.tree.map(jnp.asarray, host_state))
            )
            start = int(progress["round"])
            if start > rounds:
                raise ValueError(f"the checkpoint is at round {start}, past rounds={rounds}")
            log = logs[0]
            log.history.extend(progress["history"])
            log.selected.extend(np.asarray(a, np.int32) for a in progress["selected"])
            log.contributed.extend(np.asarray(a, bool) for a in progress["contributed"])
            log.num_steps.extend(np.asarray(a, np.int32) for a in progress["num_steps"])
            log.totals.update(progress["totals"])
            log.participation[:] = log.history[-1]["client_metrics"]["participation"]
            if bar is not None:
                bar.update(start)
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
            for i, log in enumerate(logs):
                absorb(log, run_of(metrics, i), start, length)
                entry = record(end, run_of(state, i), run_of(metrics.train_loss, i), log)
            checkpoint(end)
            if bar is not None:
                m = entry["metrics"]
                shown = {k: f"{m[k]:.4f}" for k in ("test_loss", "test_accuracy") if k in m}
                bar.set_postfix(shown)
                bar.update(length)
            start = end
    finally:
        if bar is not None:
            bar.close()
    wall_s = time.perf_counter() - t_start
    results = [
        SimulationResult(
            params=run_of(state, i).params,
            history=log.history,
            state=run_of(state, i),
            num_params=num_params(params),
            wall_s=wall_s,
            compile_s=compile_s,
            selected=_stack_rounds(log.selected, width, np.int32),
            contributed=_stack_rounds(log.contributed, width, bool),
            num_steps=_stack_rounds(log.num_steps, width, np.int32),
            personal=personal,
        )
        for i, log in enumerate(logs)
    ]
    return results if multi else results[0]


@dataclasses.dataclass
class _RunLog:
    """What the host keeps for one run between blocks: history, selections, counters."""

    seed: int
    num_clients: int
    sweep: dict = dataclasses.field(default_factory=dict)  # this run's swept values
    history: list = dataclasses.field(default_factory=list)
    selected: list = dataclasses.field(default_factory=list)
    contributed: list = dataclasses.field(default_factory=list)
    num_steps: list = dataclasses.field(default_factory=list)
    participation: np.ndarray = None
    totals: dict = None

    def __post_init__(self):
        self.participation = np.zeros(self.num_clients, np.int64)
        self.totals = {
            "up": 0, "down": 0, "async_updates": 0, "async_discarded": 0,
            "async_staleness": 0, "async_staleness_max": 0,
            "secagg": dict.fromkeys(("prg_client", "prg_server", "recovered_pairs",
                                     "recovery_messages", "dropped"), 0),
        }  # fmt: skip


def client_memory_bytes(algorithm: Algorithm, model: Model, data: FederatedData, width: int) -> int:
    """XLA's memory estimate (arguments + outputs + temporaries) of local training for
    ``width`` clients at once under ``vmap``, from the compiled program (nothing runs)."""
    spec = _train_spec(data, algorithm)
    _, update = _client_update_for(algorithm, model, data, spec)
    sample = data.sample()
    st = jax.eval_shape(lambda: init_state(algorithm, model.init(jax.random.key(0), sample), width))

    def stacked(a):
        return jax.ShapeDtypeStruct((width, *a.shape[1:]), a.dtype)

    x = jax.ShapeDtypeStruct((width, *spec.x.shape[1:]), spec.x.dtype)
    y = jax.ShapeDtypeStruct((width, *spec.y.shape[1:]), spec.y.dtype)
    n = jax.ShapeDtypeStruct((width,), jnp.int32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), width))
    budget = jax.ShapeDtypeStruct((width,), jnp.int32)
    states = jax.tree.map(stacked, st.client_states)

    def train(params, server_state, x, y, n, keys, states, budget):
        return jax.vmap(update, in_axes=(None, 0, 0, 0, 0, 0, None, 0))(
            params, x, y, n, keys, states, server_state, budget
        )

    mem = (
        jax.jit(train)
        .lower(st.params, st.algorithm_state, x, y, n, keys, states, budget)
        .compile()
        .memory_analysis()
    )
    if mem is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis")
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


def auto_client_chunk(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    clients_per_round: int,
    memory_bytes: float,
) -> int | None:
    """The most clients whose local training fits in ``memory_bytes`` at once (for
    ``simulate(client_chunk=...)``), from :func:`client_memory_bytes` at widths 1 and 8
    extrapolated linearly; ``None`` when all ``clients_per_round`` fit."""
    if not memory_bytes > 0:
        raise ValueError(f"memory_bytes must be > 0, got {memory_bytes}")
    one, eight = (client_memory_bytes(algorithm, model, data, w) for w in (1, 8))
    per_client = max((eight - one) / 7.0, 1.0)
    base = max(one - per_client, 0.0)
    chunk = int((memory_bytes - base) // per_client)
    if chunk < 1:
        raise ValueError(
            f"memory_bytes={memory_bytes:.3g} holds no client: one needs about {one:.3g} bytes"
        )
    return None if chunk >= clients_per_round else chunk


def _check_sweep(sweep, algorithm, privacy, secure_aggregation, checkpoint_dir) -> dict:
    """Validates ``simulate(sweep=...)``: ``{name: [floats]}`` of equal lengths, each value
    accepted by the algorithm's builder. Returns ``{}`` without a sweep."""
    if sweep is None:
        return {}
    if not isinstance(sweep, dict) or not sweep:
        raise ValueError(f"sweep must be a non-empty dict of lists, got {sweep!r}")
    if privacy is not None or secure_aggregation is not None:
        raise ValueError("sweep does not compose with privacy or secure_aggregation; run each "
                         "value separately")  # fmt: skip
    if checkpoint_dir is not None:
        raise ValueError("checkpoint_dir is for one run; leave it unset with sweep")
    lengths = {k: len(v) if isinstance(v, list | tuple) else -1 for k, v in sweep.items()}
    if min(lengths.values()) < 1 or len(set(lengths.values())) != 1:
        raise ValueError(f"sweep values must be non-empty lists of equal length, got {lengths}")
    values = {}
    for k, vs in sweep.items():
        if k not in algorithm.hparams:
            raise ValueError(
                f"sweep key {k!r} is not a hyperparameter of {algorithm.name!r}; "
                f"allowed: {sorted(algorithm.hparams)}"
            )
        current = algorithm.hparams[k]
        if isinstance(current, bool) or not isinstance(current, float):
            raise ValueError(
                f"sweep key {k!r} is {current!r} in {algorithm.name!r}: only float "
                "hyperparameters (learning rates, coefficients) can vary inside one program"
            )
        for v in vs:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"sweep[{k!r}] must hold numbers, got {v!r}")
        values[k] = [float(v) for v in vs]
    for i in range(len(next(iter(values.values())))):
        rebuild(algorithm, **{k: v[i] for k, v in values.items()})  # the builder's checks
    probe = {k: jnp.float32(v[0]) for k, v in values.items()}
    try:  # does the builder accept traced values (no float(), no Python branching on them)?
        jax.eval_shape(lambda p: rebuild(algorithm, **p).hparams and 0, probe)
    except (jax.errors.ConcretizationTypeError, TypeError) as e:
        raise ValueError(
            f"sweep {sorted(values)}: {algorithm.name!r} uses these values in Python control "
            f"flow or shapes, so they cannot vary inside one program; run them separately "
            f"({type(e).__name__})"
        ) from None
    return values


def _stack_rounds(blocks: list, k: int, dtype) -> np.ndarray:
    """Per-block ``[L, K]`` records as one ``[rounds, K]`` array (``[0, K]`` when none)."""
    if not blocks:
        return np.zeros((0, k), dtype)
    return np.concatenate([np.asarray(b, dtype).reshape(-1, k) for b in blocks], axis=0)


def plan_local_work_for(algorithm: Algorithm, spec: ClientData):
    """The static :class:`fljax.client.LocalPlan` of ``algorithm`` on the split ``spec``."""
    return plan_local_work(
        spec.num_examples,
        spec.x.shape[1],
        local_epochs=algorithm.local_epochs,
        local_steps=algorithm.local_steps,
        batch_size=algorithm.batch_size,
    )


def _client_update_for(algorithm: Algorithm, model: Model, data: FederatedData, spec, privacy=None):
    """The static local plan and ONE client's update function for ``algorithm`` on ``spec``."""
    plan = plan_local_work_for(algorithm, spec)
    update = make_client_update(
        model,
        data.task,
        algorithm.client_optimizer,
        plan,
        algorithm.regularizer,
        algorithm.client_finalize,
        data.loss_options,
        None if privacy is None or privacy.privacy.level != "record"
        else privacy.dp_sgd(plan.batch_size),
        algorithm.personal,
    )  # fmt: skip
    return plan, update


def _client_upload_shape(algorithm, model, data, spec, params, state):
    """Shape of one client's extra upload (``()`` for most algorithms)."""
    if algorithm.client_finalize is None:
        return ()
    _, update = _client_update_for(algorithm, model, data, spec)
    one_state = jax.tree.map(lambda a: a[0], state.client_states)
    out = jax.eval_shape(
        update,
        params,
        spec.x[0],
        spec.y[0],
        spec.num_examples[0],
        jax.random.key(0),
        one_state,
        state.algorithm_state,
    )
    return out.upload
