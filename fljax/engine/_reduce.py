"""Reduction: the cohort's messages become one aggregate, densely (the aggregator sees
``[K, ...]``: any aggregator, DP's clipped noisy sum, the secure sum) or streamed chunk by
chunk through :meth:`ClientMap.stream` for a linear aggregator."""

from __future__ import annotations

import jax.numpy as jnp

from fljax._base import Transform
from fljax.aggregate._robust import RobustState
from fljax.engine._client_chain import chain_fn, chain_inputs
from fljax.engine._context import RoundCtx, Stage
from fljax.engine._map import ClientMap
from fljax.engine._robust import isolate
from fljax.engine._train import client_inputs, trainer


def aggregation_weights(weighting: str) -> Stage:
    """``ctx.weights``: ``n_k`` (``"num_examples"``) or 1 (``"uniform"``) for clients that
    contribute, 0 for the others."""

    def apply(state, ctx: RoundCtx):
        n = ctx.batch.num_examples.astype(jnp.float32)
        base = n if weighting == "num_examples" else jnp.ones_like(n)
        return state, ctx._replace(weights=jnp.where(ctx.contributed, base, 0.0))

    return Stage("aggregation_weights", apply)


def dense_reduce(aggregator: Transform, num_clients: int) -> Stage:
    """``ctx.aggregate`` from the ``[K, ...]`` messages; the aggregator state persists (a
    robust aggregator's ``kept[K]`` goes to ``ctx.kept``, not into the carry)."""

    def apply(state, ctx: RoundCtx):
        extra = {} if ctx.server_update is None else {"server_update": ctx.server_update}
        aggregate, agg_state = aggregator.update(
            ctx.deltas,
            state.aggregator_state,
            state.params,
            key=ctx.keys.aggregate,
            weights=ctx.weights,
            num_steps=ctx.out.num_steps,
            num_clients=ctx.population(num_clients),
            client_ids=ctx.ids,
            active=ctx.valid if ctx.padded else None,
            **extra,
        )
        kept = ()
        if isinstance(agg_state, RobustState):
            kept, agg_state = agg_state.kept, agg_state._replace(kept=())
        state = state._replace(aggregator_state=agg_state)
        return state, ctx._replace(aggregate=aggregate, secagg=getattr(agg_state, "stats", ()),
                                   kept=kept)  # fmt: skip

    return Stage("reduce", apply)


def streamed_training(client_update, transform: Transform, aggregator: Transform,
                      cmap: ClientMap, accept=None) -> Stage:  # fmt: skip
    """Local training, the client chain and a linear aggregator's partial sums fused chunk by
    chunk (no ``[K, ...]`` stack of messages); replaces local training, the client chain, fault
    isolation (``accept``: ``messages[c] -> ok[c]``, the rejected zeroed and weighted 0) and
    the dense reduction when :meth:`ClientMap.streams`."""
    make = trainer(client_update)
    linear = aggregator.linear

    def apply(state, ctx: RoundCtx):
        t_states, t_keys = chain_inputs(state, ctx)
        total, out, t_states, ok = cmap.stream(
            make(state, ctx), chain_fn(transform, state), client_inputs(ctx), t_states, t_keys,
            ctx.weights, linear, accept,
        )  # fmt: skip
        aggregate = linear.finish(total, state.params)
        ctx = ctx._replace(out=out, transform_states=t_states, aggregate=aggregate)
        return state, ctx if accept is None else isolate(ctx, ok)

    return Stage("streamed_training", apply)
