"""The client chain: the algorithm's transform, local DP and compression with error feedback
(one :class:`fljax.Transform` chain written for ONE client's delta, ``vmap``ped), its state
persisting per client in ``state.client_transform_states``."""

from __future__ import annotations

import jax

from fljax._base import Transform
from fljax.engine._context import RoundCtx, Stage
from fljax.engine._state import tree_take
from fljax.engine._train import fold_ids


def chain_fn(transform: Transform, state):
    """``(delta, chain_state, key) -> (message, chain_state)`` for one client."""

    def fn(delta, t_state, t_key):
        return transform.update(delta, t_state, state.params, key=t_key)

    return fn


def chain_inputs(state, ctx: RoundCtx):
    """The cohort's chain states (gathered) and keys (from the client ids)."""
    return tree_take(state.client_transform_states, ctx.ids), fold_ids(ctx.keys.transform, ctx.ids)


def client_chain(transform: Transform) -> Stage:
    """``ctx.deltas``: the messages the clients send; ``ctx.transform_states``: their states."""

    def apply(state, ctx: RoundCtx):
        t_states, t_keys = chain_inputs(state, ctx)
        deltas, t_states = jax.vmap(chain_fn(transform, state))(ctx.out.delta, t_states, t_keys)
        return state, ctx._replace(deltas=deltas, transform_states=t_states)

    return Stage("client_chain", apply)
