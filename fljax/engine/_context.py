"""The round context, the stage interface, and the round's named key derivations.

A stage is a pure pair over the round: ``init(params, num_clients, key) -> dict`` gives the
:class:`ServerState` fields it owns at round 0 (``{}`` when it owns none), and
``apply(state, ctx) -> (state, ctx)`` reads what earlier stages put in the :class:`RoundCtx`
and adds its own part. A round is :func:`compose` of a list of stages; a training mode
(synchronous, cyclic, local, centralized, asynchronous) is such a list
(:mod:`fljax.engine._round`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from fljax.engine._state import RoundMetrics, ServerState

PyTree = Any

# Named derivations of the fixed keys that are not split from a round key.
INIT_SPLIT = 0  # jax.random.split(seed key) -> (init key, rounds key)
CYCLE_ORDER_FOLD = 2  # fold_in(seed key, 2): the key of cyclic training's shuffled orders
ASYNC_START_FOLD = 3  # fold_in(seed key, 3): the first asynchronous cohort
AVAILABILITY_FOLD = 7  # fold_in(round key, 7): which clients are reachable this round
ASYNC_CHAIN_FOLD = 11  # fold_in(round key, 11): the client chain of an asynchronous step
ASYNC_AGGREGATE_FOLD = 13  # fold_in(round key, 13): the reduction (DP noise, SecAgg masks)
ASYNC_DOWNLINK_FOLD = 17  # fold_in(round key, 17): the downlink compressor
ATTACK_FOLD = 101  # fold_in(aggregation key, 101): the malicious clients' crafted updates
ROOT_FOLD = 103  # fold_in(aggregation key, 103): FLTrust's server update on its root data


class SyncKeys(NamedTuple):
    """The keys of a synchronous round, ``jax.random.split(round_key, 6)`` in this order."""

    select: jax.Array  # the cohort
    clients: jax.Array  # local training (folded with each client id)
    transform: jax.Array  # the client chain (folded with each client id)
    aggregate: jax.Array  # the reduction (DP noise, SecAgg masks)
    stragglers: jax.Array  # who straggles and how much work they do
    downlink: jax.Array  # the downlink compressor
    availability: jax.Array  # fold_in(round_key, AVAILABILITY_FOLD)

    @classmethod
    def of(cls, key: jax.Array) -> SyncKeys:
        return cls(*jax.random.split(key, 6), jax.random.fold_in(key, AVAILABILITY_FOLD))


class AsyncKeys(NamedTuple):
    """The keys of an asynchronous server step: ``jax.random.split(round_key)``, then the
    client chain's, the reduction's and the downlink's ``fold_in(round_key, ASYNC_*_FOLD)``."""

    clients: jax.Array  # local training of the finished clients (folded with client id)
    select: jax.Array  # the clients that start next
    transform: jax.Array  # the client chain (folded with client id)
    aggregate: jax.Array  # the reduction: DP noise, SecAgg masks
    downlink: jax.Array  # the downlink compressor

    @classmethod
    def of(cls, key: jax.Array) -> AsyncKeys:
        fold = functools.partial(jax.random.fold_in, key)
        return cls(*jax.random.split(key), fold(ASYNC_CHAIN_FOLD), fold(ASYNC_AGGREGATE_FOLD),
                   fold(ASYNC_DOWNLINK_FOLD))  # fmt: skip


class LocalKeys(NamedTuple):
    """The keys of a local-only round, ``jax.random.split(round_key)``."""

    select: jax.Array
    clients: jax.Array

    @classmethod
    def of(cls, key: jax.Array) -> LocalKeys:
        return cls(*jax.random.split(key))


class RoundCtx(NamedTuple):
    """What the stages of one round hand each other (lives only inside the trace).

    Attributes:
        key: the round key, ``fold_in(rounds_key, round)``; ``keys``: its named derivations.
        train: the federation's training split ``ClientData[C, N, ...]``.
        ids: ``[K]`` int32 cohort; ``valid``: ``[K]`` reachable (False: padding, offline).
        padded: static, some slots may hold no reachable client (Poisson, availability).
        contributed: ``[K]`` bool, the update will be aggregated.
        budget: ``[K]`` int32, local steps each client may take.
        batch: the cohort's data ``ClientData[K, N, ...]``.
        start: what clients train from: one model, or ``[K, ...]`` per client.
        client_keys: ``[K]`` local-training keys; ``client_states``: ``[K, ...]`` gathered.
        out: :class:`fljax.client.ClientOutput` of local training, ``[K, ...]``.
        deltas: ``[K, ...]`` messages after the client chain; ``transform_states``: their
            new per-client chain states.
        weights: ``[K]`` aggregation weights (0 for clients that do not contribute).
        aggregate: the reduced update; ``new_params``: the global model after the server.
        finite: ``()`` bool; ``train_loss``: ``()`` the round's reported local loss.
        round_time: ``()`` simulated seconds of the round (system model).
        secagg, staleness: per-round statistics of the reduction and of async training.
        arrivals: asynchronous training's ``(slots, start versions, arrival time)`` of the
            updates this server step consumes.
        rejected: ``[K]`` bool, updates dropped by fault isolation (non-finite or too long).
        kept: ``[K]`` bool, the clients a selection-based robust aggregator kept.
        server_update: FLTrust's update on the server's root dataset.
        subset: ``[C]`` bool, the sites of this run's federation (``simulate(subsets=)``);
            ``None``: every site.
    """

    key: jax.Array
    keys: Any = None
    train: Any = None
    ids: Any = None
    valid: Any = None
    padded: bool = False
    contributed: Any = None
    budget: Any = None
    batch: Any = None
    start: Any = None
    client_keys: Any = None
    client_states: Any = None
    out: Any = None
    deltas: Any = None
    transform_states: Any = None
    weights: Any = None
    aggregate: Any = None
    finite: Any = None
    train_loss: Any = None
    round_time: Any = None
    secagg: Any = ()
    staleness: Any = ()
    arrivals: Any = None
    rejected: Any = ()
    kept: Any = ()
    server_update: Any = None
    subset: Any = None

    def population(self, num_clients: int):
        """The federation's size ``N``: ``num_clients``, or the sites of this run's subset."""
        if self.subset is None:
            return num_clients
        return jax.numpy.sum(self.subset).astype(jax.numpy.float32)

    def metrics(self) -> RoundMetrics:
        ones = jax.numpy.ones(self.ids.shape, bool)
        return RoundMetrics(
            train_loss=self.train_loss,
            finite=self.finite,
            client_ids=self.ids,
            contributed=self.contributed,
            num_steps=self.out.num_steps,
            sampled=self.valid if self.padded else ones,
            secagg=self.secagg,
            staleness=self.staleness,
            rejected=self.rejected,
            kept=self.kept,
        )


Apply = Callable[[ServerState, RoundCtx], tuple[ServerState, RoundCtx]]


def _no_state(params, num_clients, key):
    del params, num_clients, key
    return {}


class Stage(NamedTuple):
    """One step of the round: ``apply(state, ctx) -> (state, ctx)`` and
    ``init(params, num_clients, key) -> {ServerState field: value}`` for the fields it owns."""

    name: str
    apply: Apply
    init: Callable[[PyTree, int, jax.Array], dict] = _no_state


def compose(stages: Sequence[Stage]) -> Callable:
    """The round ``(state, round_key, train, subset=None) -> (state, RoundMetrics)`` running
    ``stages`` (``subset``: the run's ``[C]`` participation mask, see ``RoundCtx.subset``)."""
    stages = tuple(stages)

    def round_fn(state: ServerState, key: jax.Array, train,
                 subset=None) -> tuple[ServerState, RoundMetrics]:  # fmt: skip
        ctx = RoundCtx(key=key, train=train, subset=subset)
        for stage in stages:
            state, ctx = stage.apply(state, ctx)
        return state, ctx.metrics()

    round_fn.stages = stages
    return round_fn
