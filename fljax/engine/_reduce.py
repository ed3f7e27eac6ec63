"""Reduction: the cohort's messages become one aggregate, densely (the aggregator sees
``[K, ...]``: any aggregator, DP's clipped noisy sum, the secure sum) or streamed chunk by
chunk through :meth:`ClientMap.stream` for a linear aggregator."""

from __future__ import annotations

import jax.numpy as jnp

from fljax._base import Transform
from fljax.engine._client_chain import chain_fn, chain_inputs
from fljax.engine._context import RoundCtx, Stage
from fljax.engine._map import ClientMap
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
    """``ctx.aggregate`` from the ``[K, ...]`` messages; the aggregator state persists."""

    def apply(state, ctx: RoundCtx):
        aggregate, agg_state = aggregator.update(
            ctx.deltas,
            state.aggregator_state,
            state.params,
            key=ctx.keys.aggregate,
            weights=ctx.weights,
            num_steps=ctx.out.num_steps,
            num_clients=num_clients,
            client_ids=ctx.ids,
            active=ctx.valid if ctx.padded else None,
        )
        state = state._replace(aggregator_state=agg_state)
        return state, ctx._replace(aggregate=aggregate, secagg=getattr(agg_state, "stats", ()))

    return Stage("reduce", apply)


def streamed_training(client_update, transform: Transform, aggregator: Transform,
                      cmap: ClientMap) -> Stage:  # fmt: skip
    """Local training, the client chain and a linear aggregator's partial sums fused chunk by
    chunk (no ``[K, ...]`` stack of messages); replaces local training, the client chain and
    the dense reduction when :meth:`ClientMap.streams`."""
    make = trainer(client_update)
    linear = aggregator.linear

    def apply(state, ctx: RoundCtx):
        t_states, t_keys = chain_inputs(state, ctx)
        total, out, t_states = cmap.stream(
            make(state, ctx), chain_fn(transform, state), client_inputs(ctx), t_states, t_keys,
            ctx.weights, linear,
        )  # fmt: skip
        aggregate = linear.finish(total, state.params)
        return state, ctx._replace(out=out, transform_states=t_states, aggregate=aggregate)

    return Stage("streamed_training", apply)
