"""Stages particular to one training mode: cyclic visits (the model travels from client to
client), local-only training (each client keeps its own model) and a contribution mask for
modes where every selected client contributes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.client import ClientOutput
from fljax.engine._context import RoundCtx, Stage
from fljax.engine._state import all_finite, tree_put
from fljax.engine._train import fold_ids


def all_contribute() -> Stage:
    """Every selected client contributes (cyclic and local-only training)."""

    def apply(state, ctx: RoundCtx):
        return state, ctx._replace(contributed=jnp.ones(ctx.ids.shape, bool))

    return Stage("all_contribute", apply)


def sequential_visits(client_update) -> Stage:
    """Cyclic training: the model visits the cohort one client after another (``lax.scan``);
    ``ctx.aggregate`` is the total change, so the server optimizer applies it as is."""

    def apply(state, ctx: RoundCtx):
        train, ids = ctx.train, ctx.ids
        keys = fold_ids(ctx.key, ids)

        def visit(params, inputs):
            cid, ck = inputs
            out = client_update(params, train.x[cid], train.y[cid], train.num_examples[cid], ck)
            return jax.tree.map(jnp.add, params, out.delta), (out.train_loss, out.num_steps)

        end, (losses, steps) = jax.lax.scan(visit, state.params, (ids, keys))
        out = ClientOutput(delta=(), client_state=(), upload=(), train_loss=losses,
                           num_steps=steps)  # fmt: skip
        aggregate = jax.tree.map(jnp.subtract, end, state.params)
        return state, ctx._replace(out=out, aggregate=aggregate)

    return Stage("sequential_visits", apply)


def keep_own_models() -> Stage:
    """Local-only training: each client's trained model replaces its own; nothing is sent."""

    def apply(state, ctx: RoundCtx):
        models = jax.tree.map(jnp.add, ctx.start, ctx.out.delta)
        state = state._replace(client_states=tree_put(state.client_states, ctx.ids, models))
        return state, ctx._replace(finite=all_finite(models))

    return Stage("keep_own_models", apply)
