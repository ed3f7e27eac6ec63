"""A training mode is a list of stages; :func:`build_round` composes the list for a run.

Synchronous (``federated``; ``centralized`` is the same list over one pooled client)::

    keys -> broadcast -> select -> gather data -> work budget -> [deadline and clock]
         -> gather client inputs -> weights -> local training -> [poison] -> client chain
         -> reject faulty -> [FLTrust root update] -> reduce
         (or the three fused and streamed in chunks) -> server optimizer
         -> [algorithm finalize] -> [downlink] -> scatter clients -> report loss
         -> [advance clock] -> next round

Cyclic: ``keys -> select cyclic -> gather data -> sequential visits -> all contribute ->
server optimizer -> report loss -> next round``. Local-only: ``keys -> select -> gather data
-> own models -> local training -> keep own models -> report loss -> next round``.
Asynchronous: ``keys -> arrivals -> gather data -> local training from the stale models ->
client chain -> staleness-scaled reduction -> server optimizer -> scatter chain states ->
restart -> next round``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax.algorithms import Algorithm
from fljax.client import batch_loss_fn, make_client_update, plan_local_work
from fljax.data import ClientData, FederatedData
from fljax.engine import _async, _clock, _modes, _reduce, _robust, _select, _server, _train
from fljax.engine._client_chain import client_chain
from fljax.engine._context import (
    CYCLE_ORDER_FOLD,
    AsyncKeys,
    LocalKeys,
    RoundCtx,
    Stage,
    SyncKeys,
    compose,
)
from fljax.engine._map import ClientMap
from fljax.engine._state import ServerState, stack
from fljax.models import Model

PyTree = Any


def pool_clients(data: ClientData) -> ClientData:
    """All clients' real examples concatenated into one client ``[1, sum n, ...]``."""
    x, y, n = (np.asarray(a) for a in data)
    mask = np.arange(x.shape[1])[None, :] < n[:, None]
    return ClientData(x[mask][None], y[mask][None], np.array([int(n.sum())], np.int32))


def train_spec(data: FederatedData, algorithm: Algorithm) -> ClientData:
    """The training split the round sees: pooled into one client for ``centralized``."""
    if algorithm.mode == "centralized":
        data.whole("centralized training")
        return pool_clients(data.train)
    return ClientData(*(np.asarray(a) for a in data.train))


def plan_local_work_for(algorithm: Algorithm, spec: ClientData):
    """The static :class:`fljax.client.LocalPlan` of ``algorithm`` on the split ``spec``."""
    return plan_local_work(
        spec.num_examples,
        spec.x.shape[1],
        local_epochs=algorithm.local_epochs,
        local_steps=algorithm.local_steps,
        batch_size=algorithm.batch_size,
    )


def client_update_for(algorithm: Algorithm, model: Model, data: FederatedData, spec, dp=None):
    """The static local plan and ONE client's update function for ``algorithm`` on ``spec``
    (with record-level DP-SGD when the privacy plan ``dp`` asks for it)."""
    plan = plan_local_work_for(algorithm, spec)
    dp_sgd = None
    if dp is not None and dp.privacy.level == "record":
        dp_sgd = dp.dp_sgd(plan.batch_size)
    update = make_client_update(
        model, data.task, algorithm.client_optimizer, plan, algorithm.regularizer,
        algorithm.client_finalize, data.loss_options, dp_sgd, algorithm.personal,
    )  # fmt: skip
    return plan, update


def init_state(algorithm: Algorithm, params: PyTree, num_clients: int) -> ServerState:
    """The :class:`ServerState` fields every mode has, for ``params`` and ``num_clients``."""
    client_states = ()
    if algorithm.mode == "local":
        client_states = stack(params, num_clients)  # every client starts from the same model
    elif algorithm.personal is not None:
        client_states = stack(algorithm.personal.init(params), num_clients)
    elif algorithm.client_state_init is not None:
        client_states = stack(algorithm.client_state_init(params), num_clients)
    algorithm_state = (
        () if algorithm.server_state_init is None else algorithm.server_state_init(params)
    )
    return ServerState(
        params=params,
        opt_state=algorithm.server_optimizer.init(params),
        aggregator_state=algorithm.aggregator.init(params),
        algorithm_state=algorithm_state,
        client_transform_states=stack(algorithm.client_transform.init(params), num_clients),
        client_states=client_states,
        round=jnp.zeros((), jnp.int32),
    )


def initial_state(round_fn, algorithm: Algorithm, params, num_clients: int, seed_key):
    """:func:`init_state` completed by the ``init`` of every stage of ``round_fn`` (the
    downlink copy, the clock, the asynchronous cohort, the cycle-order key), each from the
    run's seed key through its named derivation."""
    state = init_state(algorithm, params, num_clients)
    for stage in round_fn.stages:
        state = state._replace(**stage.init(params, num_clients, seed_key))
    return state


def round_keys(kind) -> Stage:
    """``ctx.keys``: the named keys of the round (:class:`SyncKeys`, ...)."""

    def apply(state, ctx: RoundCtx):
        return state, ctx._replace(keys=kind.of(ctx.key))

    return Stage("round_keys", apply)


class RoundSpec(NamedTuple):
    """Everything :func:`build_round` derives once from a run's configuration."""

    algorithm: Algorithm
    model: Model
    data: FederatedData
    spec: ClientData
    plan: Any
    client_update: Any
    k: int
    cmap: ClientMap
    stragglers: Any
    downlink: Any
    dp_plan: Any  # the run's PrivacyPlan, or None
    system: Any
    wire_bytes: tuple
    secure: bool = False  # the aggregator is a secure sum
    robust: _robust.RobustPlan = _robust.RobustPlan()  # attack, fault isolation, FLTrust root
    subsets: bool = False  # each run's sites come in as a participation mask (RoundCtx.subset)


def _selection(r: RoundSpec) -> list[Stage]:
    num_clients = r.spec.num_examples.shape[0]
    system, dp = r.system, r.dp_plan
    if r.subsets:  # the rules leave uniform selection only
        return [_select.subset_selection(num_clients, r.k)]
    available = None if system is None else _select.availability_fn(system, num_clients)
    if dp is not None and dp.poisson_clients:
        return [_select.poisson_selection(num_clients, dp.rate, dp.cohort, available)]
    if system is not None and system.selection == "poisson":
        cap = _select.poisson_cap(num_clients, r.k)
        return [_select.poisson_selection(num_clients, r.k / num_clients, cap, available)]
    if system is None:
        return [_select.uniform_selection(num_clients, r.k)]
    t_all = jnp.asarray(_clock.full_work_times(system, r.spec, r.plan, r.wire_bytes), jnp.float32)
    t_pref = system.deadline if system.deadline is not None else jnp.median(t_all)
    task_loss = batch_loss_fn(r.data.task, **(r.data.loss_options or {}))
    return [_select.system_selection(system, r.model, task_loss, r.k, r.spec, t_all, t_pref)]


def _training(r: RoundSpec) -> list[Stage]:
    """Local training, [model poisoning], the client chain, fault isolation, [FLTrust's root
    update] and the reduction; fused and streamed in chunks when the aggregator is linear,
    ``client_chunk`` is below the cohort and no attacker needs the whole cohort."""
    algorithm, num_clients, rb = r.algorithm, r.spec.num_examples.shape[0], r.robust
    width = _select.cohort_width(num_clients, r.k, r.dp_plan, r.system)
    if rb.craft is None and r.cmap.streams(algorithm.aggregator, width):
        return [_reduce.streamed_training(r.client_update, algorithm.client_transform,
                                          algorithm.aggregator, r.cmap,
                                          _robust.acceptable(rb.reject_norm))]  # fmt: skip
    stages = [_train.local_training(r.client_update, r.cmap)]
    if rb.craft is not None:
        stages.append(_robust.poison_updates(rb.craft, rb.malicious))
    stages += [client_chain(algorithm.client_transform), _robust.reject_updates(rb.reject_norm)]
    if rb.root is not None:
        stages.append(_robust.root_update(r.client_update, rb.root))
    return [*stages, _reduce.dense_reduce(algorithm.aggregator, num_clients)]


def synchronous(r: RoundSpec) -> list[Stage]:
    """The stages of a synchronous round (``federated``, ``centralized``)."""
    algorithm, system = r.algorithm, r.system
    num_clients = r.spec.num_examples.shape[0]
    steps = algorithm.local_steps if isinstance(algorithm.local_steps, tuple) else None
    stages = [round_keys(SyncKeys), _train.broadcast(r.downlink is not None), *_selection(r),
              _train.gather_data(), _clock.work_budget(r.plan, steps, r.stragglers)]  # fmt: skip
    if system is not None:
        stages.append(_clock.deadline(system, r.plan, r.wire_bytes))
    elif r.subsets or (r.dp_plan is not None and r.dp_plan.poisson_clients):
        stages.append(_clock.drop_unreachable())
    stages += [_train.gather_clients_inputs(r.cmap),
               _reduce.aggregation_weights(algorithm.weighting), *_training(r),
               _server.server_optimizer(algorithm.server_optimizer)]  # fmt: skip
    if algorithm.server_finalize is not None:
        stages.append(_server.algorithm_finalize(algorithm.server_finalize, num_clients))
    if r.downlink is not None:
        stages.append(_server.downlink(r.downlink))
    stages += [_server.scatter_clients(), _server.report_loss()]
    if system is not None:
        stages.append(_clock.advance_clock())
    return [*stages, _server.next_round()]


def cyclic(r: RoundSpec) -> list[Stage]:
    """The stages of a cyclic round: the model visits the next ``K`` clients in turn."""
    num_clients = r.spec.num_examples.shape[0]
    order = _select.cyclic_order(num_clients, r.k, bool(r.algorithm.hparams.get("shuffle")))

    def order_key(params, c, key):
        del params, c
        return {"algorithm_state": jax.random.fold_in(key, CYCLE_ORDER_FOLD)}

    return [order._replace(init=order_key), _train.gather_data(),
            _modes.sequential_visits(r.client_update), _modes.all_contribute(),
            _server.server_optimizer(r.algorithm.server_optimizer), _server.report_loss(),
            _server.next_round()]  # fmt: skip


def local(r: RoundSpec) -> list[Stage]:
    """The stages of local-only training: each selected client trains its own model."""
    num_clients = r.spec.num_examples.shape[0]
    return [round_keys(LocalKeys), _select.uniform_selection(num_clients, r.k),
            _train.gather_data(), _train.own_models(),
            _train.gather_clients_inputs(r.cmap, with_state=False),
            _train.own_model_training(r.client_update, r.cmap), _modes.keep_own_models(),
            _modes.all_contribute(), _server.report_loss(), _server.next_round()]  # fmt: skip


def asynchronous(r: RoundSpec) -> list[Stage]:
    """The stages of one asynchronous server step (FedBuff / FedAsync). With client-level DP
    or secure aggregation the buffer is the step's cohort: staleness-scaled updates go through
    the dense reduction (clipped noisy sum, secure sum)."""
    hp, num_clients = r.algorithm.hparams, r.spec.num_examples.shape[0]
    b, s_max = hp["buffer_size"], hp["max_staleness"]
    times = _clock.full_work_times(r.system, r.spec, r.plan, r.wire_bytes)
    arrivals = _async.arrivals(b, s_max)._replace(
        init=_async.async_init(hp["concurrency"], s_max, times)
    )
    reduction = [_async.staleness_reduce(r.algorithm.weighting, hp["staleness_exponent"],
                                         hp["mixing"])]  # fmt: skip
    if r.secure or (r.dp_plan is not None and r.dp_plan.privacy.level == "client"):
        reduction = [_async.staleness_scale(hp["staleness_exponent"]),
                     _reduce.aggregation_weights(r.algorithm.weighting),
                     _reduce.dense_reduce(r.algorithm.aggregator, num_clients),
                     _server.report_loss()]  # fmt: skip
    return [round_keys(AsyncKeys), arrivals, _train.gather_data(),
            _train.gather_clients_inputs(r.cmap, with_state=False),
            _train.own_model_training(r.client_update, r.cmap),
            client_chain(r.algorithm.client_transform), *reduction,
            _server.server_optimizer(r.algorithm.server_optimizer),
            *([_server.downlink(r.downlink)] if r.downlink is not None else []),
            _async.scatter_chain_states(),
            _async.restart(b, s_max, num_clients, times, r.downlink is not None),
            _server.next_round()]  # fmt: skip


MODES = {"federated": synchronous, "centralized": synchronous, "cyclic": cyclic,
         "local": local, "async": asynchronous}  # fmt: skip
"""The stage list that builds each mode's round (see the round engine page)."""


def build_round(
    algorithm: Algorithm,
    model: Model,
    data: FederatedData,
    clients_per_round: int,
    mesh: jax.sharding.Mesh | None = None,
    stragglers: _clock.Stragglers | None = None,
    downlink: Any | None = None,
    dp_plan: Any | None = None,
    system: Any | None = None,
    wire_bytes: tuple[float, float] = (0.0, 0.0),
    client_chunk: int | None = None,
    secure: bool = False,
    client_map: str = "vmap",
    robust: _robust.RobustPlan | None = None,
    subsets: bool = False,
):
    """The pure round ``(state, round_key, train) -> (state, RoundMetrics)`` of ``algorithm``
    as the composition of its mode's stages (``round_fn.stages`` lists them).

    ``client_chunk``: the selected clients train ``client_chunk`` at a time; with a linear
    aggregator the chunks' weighted sums stream through a ``lax.scan`` carry. ``mesh``: the
    cohort's inputs and local training are split over its ``clients`` axis. ``secure``: the
    aggregator is a secure sum (asynchronous training then reduces densely). ``client_map``:
    the :class:`ClientMap` strategy (``"vmap"``, ``"device_vmap"``, ``"sequential"``).
    ``robust``: the malicious clients' crafted updates, the fault-isolation norm cap and
    FLTrust's root dataset (:class:`fljax.engine._robust.RobustPlan`). ``subsets``: the
    round takes each run's participation mask (``round_fn(..., subset)``; synchronous mode).
    """
    spec = train_spec(data, algorithm)
    plan, client_update = client_update_for(algorithm, model, data, spec, dp_plan)
    r = RoundSpec(algorithm, model, data, spec, plan, client_update, clients_per_round,
                  ClientMap(client_chunk, mesh, client_map), stragglers, downlink, dp_plan, system,
                  wire_bytes, secure, robust or _robust.RobustPlan(), subsets)  # fmt: skip
    return compose(MODES[algorithm.mode](r))


def build_block(round_fn):
    """``run_block(state, rounds_key, round_ids[L], train, subset=None)``: ``L`` rounds under
    ``lax.scan`` (``subset``: the run's participation mask, :class:`RoundCtx`).

    Round ``r`` uses ``fold_in(rounds_key, r)``, so results do not depend on how rounds are
    grouped into blocks.
    """

    def run_block(state, rounds_key, round_ids, train, subset=None):
        def body(s, r):
            return round_fn(s, jax.random.fold_in(rounds_key, r), train, subset)

        return jax.lax.scan(body, state, round_ids)

    return run_block
