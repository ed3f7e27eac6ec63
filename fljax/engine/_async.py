"""Asynchronous training as stages (FedBuff, Nguyen et al. 2022, Alg. 1; FedAsync, Xie et
al. 2019, with a buffer of one): each round is one server step on the ``B`` earliest updates
in flight, each computed from the global model its client started from (a ring buffer of the
last ``S`` models), then the finished slots restart from the new model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.engine._context import ASYNC_START_FOLD, RoundCtx, Stage
from fljax.engine._select import select_uniform
from fljax.engine._state import (
    AsyncState,
    example_weighted_loss,
    stack,
    tree_put,
    tree_take,
    weighted_tree_mean,
)


def async_init(concurrency: int, max_staleness: int, times) -> callable:
    """The first ``concurrency`` clients (uniform, distinct) start from version 0 at time 0;
    ``times[C]``: each client's time for a full round of work."""

    def init(params, num_clients, key):
        ids = select_uniform(jax.random.fold_in(key, ASYNC_START_FOLD), num_clients, concurrency)
        return {
            "system_state": AsyncState(
                models=stack(params, max_staleness),
                version=jnp.zeros((), jnp.int32),
                ids=ids,
                start=jnp.zeros((concurrency,), jnp.int32),
                finish=jnp.asarray(times, jnp.float32)[ids],
                now=jnp.zeros((), jnp.float32),
            )
        }

    return init


def arrivals(buffer_size: int, max_staleness: int) -> Stage:
    """The ``B`` earliest updates in flight: ``ctx.ids``, their stale start models
    ``ctx.start[B]``, staleness ``tau`` and ``ctx.contributed`` (``tau < S``: older models have
    left the ring buffer and the update is discarded)."""

    def apply(state, ctx: RoundCtx):
        a = state.system_state
        slots = jnp.argsort(a.finish)[:buffer_size]
        ids, start = a.ids[slots], a.start[slots]
        tau = a.version - start
        return state, ctx._replace(
            ids=ids,
            valid=jnp.ones(ids.shape, bool),
            start=tree_take(a.models, start % max_staleness),
            staleness=tau,
            contributed=tau < max_staleness,
            arrivals=(slots, a.finish[slots[-1]]),
        )

    return Stage("async_arrivals", apply)


def staleness_reduce(weighting: str, exponent: float, mixing: float | None) -> Stage:
    r"""FedBuff: the mean of the buffered messages scaled by :math:`s(\tau) = (1 + \tau)^{-a}`;
    FedAsync: :math:`\alpha s(\tau) (x_{stale} + \Delta - x)` for its one update."""

    def apply(state, ctx: RoundCtx):
        tau, fresh = ctx.staleness, ctx.contributed
        scale = jnp.power(1.0 + tau.astype(jnp.float32), -exponent)
        n = ctx.batch.num_examples.astype(jnp.float32)
        base = n if weighting == "num_examples" else jnp.ones_like(n)
        w = jnp.where(fresh, base, 0.0)
        if mixing is None:
            scaled = jax.tree.map(
                lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), ctx.deltas
            )
            aggregate = weighted_tree_mean(scaled, w)
        else:
            alpha = mixing * scale[0] * fresh[0]
            aggregate = jax.tree.map(
                lambda xs, d, x: alpha * (xs[0] + d[0] - x), ctx.start, ctx.deltas, state.params
            )
        loss = example_weighted_loss(ctx.out.train_loss, w)
        return state, ctx._replace(weights=w, aggregate=aggregate, train_loss=loss)

    return Stage("staleness_reduce", apply)


def staleness_scale(exponent: float) -> Stage:
    r"""FedBuff's staleness weighting as a client-side scale, :math:`s(\tau) \Delta` with
    :math:`s(\tau) = (1 + \tau)^{-a} \le 1`, before a reduction that needs per-client rows
    (client-level DP's clipped sum, secure aggregation)."""

    def apply(state, ctx: RoundCtx):
        scale = jnp.power(1.0 + ctx.staleness.astype(jnp.float32), -exponent)
        deltas = jax.tree.map(
            lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), ctx.deltas
        )
        return state, ctx._replace(deltas=deltas)

    return Stage("staleness_scale", apply)


def scatter_chain_states() -> Stage:
    """The fresh clients' client-chain states (error-feedback residuals) are written back."""

    def apply(state, ctx: RoundCtx):
        states = tree_put(
            state.client_transform_states, ctx.ids, ctx.transform_states, ctx.contributed
        )
        return state._replace(client_transform_states=states), ctx

    return Stage("scatter_chain_states", apply)


def restart(buffer_size: int, max_staleness: int, num_clients: int, times,
            downlink: bool = False) -> Stage:  # fmt: skip
    """The new model enters the ring buffer (with downlink compression: the clients' copy
    ``x_hat`` of it, what a client starting now receives); the finished slots restart with
    clients not in flight (uniformly), from the new version, finishing ``times[client]``
    later."""
    t_all = jnp.asarray(times, jnp.float32)

    def apply(state, ctx: RoundCtx):
        a = state.system_state
        slots, now = ctx.arrivals
        version = a.version + 1
        sent = state.broadcast if downlink else state.params
        models = jax.tree.map(lambda r, p: r.at[version % max_staleness].set(p), a.models, sent)
        busy = jnp.zeros((num_clients,), bool).at[a.ids].set(True).at[ctx.ids].set(False)
        u = jax.random.uniform(ctx.keys.select, (num_clients,))
        new_ids = jnp.argsort(jnp.where(busy, 2.0 + u, u))[:buffer_size].astype(jnp.int32)
        new_a = AsyncState(
            models=models,
            version=version,
            ids=a.ids.at[slots].set(new_ids),
            start=a.start.at[slots].set(version),
            finish=a.finish.at[slots].set(now + t_all[new_ids]),
            now=now,
        )
        return state._replace(system_state=new_a), ctx

    return Stage("async_restart", apply)
