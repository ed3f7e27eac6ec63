"""Gather and broadcast, then local training: what each selected client starts from, its
data and state, and ONE client's update run over the cohort by :class:`ClientMap`."""

from __future__ import annotations

import jax

from fljax.data import gather_clients
from fljax.engine._context import RoundCtx, Stage
from fljax.engine._map import ClientMap
from fljax.engine._state import tree_take

fold_ids = jax.vmap(jax.random.fold_in, in_axes=(None, 0))  # one key per client id


def broadcast(downlink: bool) -> Stage:
    """``ctx.start``: the model the clients hold, the global model or (with downlink
    compression) the clients' copy ``x_hat``."""

    def apply(state, ctx: RoundCtx):
        return state, ctx._replace(start=state.broadcast if downlink else state.params)

    return Stage("broadcast", apply)


def own_models() -> Stage:
    """Local-only training: every client starts from its own model (``state.client_states``)."""

    def apply(state, ctx: RoundCtx):
        return state, ctx._replace(start=tree_take(state.client_states, ctx.ids))

    return Stage("own_models", apply)


def gather_data() -> Stage:
    """``ctx.batch``: the cohort's training data ``[K, N, ...]``."""

    def apply(state, ctx: RoundCtx):
        return state, ctx._replace(batch=gather_clients(ctx.train, ctx.ids))

    return Stage("gather_data", apply)


def gather_clients_inputs(cmap: ClientMap, with_state: bool = True) -> Stage:
    """Per-client keys (from ``(round, client id)``, not the slot) and algorithm states of the
    cohort, split with its data over the device mesh."""

    def apply(state, ctx: RoundCtx):
        client_keys = fold_ids(ctx.keys.clients, ctx.ids)
        if not with_state:  # local-only training: the start models are per client
            batch, client_keys, start = cmap.shard((ctx.batch, client_keys, ctx.start))
            return state, ctx._replace(batch=batch, client_keys=client_keys, start=start)
        client_states = tree_take(state.client_states, ctx.ids)
        batch, client_keys, client_states, budget = cmap.shard(
            (ctx.batch, client_keys, client_states, ctx.budget)
        )
        return state, ctx._replace(
            batch=batch, client_keys=client_keys, client_states=client_states, budget=budget
        )

    return Stage("gather_client_inputs", apply)


def trainer(client_update):
    """``(state, ctx) -> f(x, y, n, key, client_state, budget)``: one client's training from
    the broadcast model with the server's algorithm state."""

    def make(state, ctx: RoundCtx):
        def train_client(x, y, n, k, cs, b):
            return client_update(ctx.start, x, y, n, k, cs, state.algorithm_state, b)

        return train_client

    return make


def client_inputs(ctx: RoundCtx) -> tuple:
    b = ctx.batch
    return (b.x, b.y, b.num_examples, ctx.client_keys, ctx.client_states, ctx.budget)


def local_training(client_update, cmap: ClientMap) -> Stage:
    """``ctx.out``: every selected client's :class:`fljax.client.ClientOutput` ``[K, ...]``."""
    make = trainer(client_update)

    def apply(state, ctx: RoundCtx):
        out = cmap(make(state, ctx), *client_inputs(ctx))
        return state, ctx._replace(out=out)

    return Stage("local_training", apply)


def own_model_training(client_update, cmap: ClientMap) -> Stage:
    """Local-only training: each client trains its own model from ``ctx.start[K]``."""

    def apply(state, ctx: RoundCtx):
        b = ctx.batch
        out = cmap(client_update, ctx.start, b.x, b.y, b.num_examples, ctx.client_keys)
        return state, ctx._replace(out=out)

    return Stage("own_model_training", apply)
