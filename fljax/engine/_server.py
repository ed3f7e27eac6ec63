"""The server chain: the optax server optimizer on the pseudo-gradient ``-aggregate``, the
algorithm's server finalize, the downlink, then scattering per-client state back and the
round's reported loss and counter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fljax.engine._context import RoundCtx, Stage
from fljax.engine._state import (
    all_finite,
    example_weighted_loss,
    tree_put,
    weighted_tree_mean,
)


def server_optimizer(optimizer: optax.GradientTransformation) -> Stage:
    """``params <- params + optimizer(-aggregate)`` (Reddi et al. 2021, Alg. 2: FedOpt; SGD
    with learning rate 1 is FedAvg); ``ctx.finite`` checks the aggregate."""

    def apply(state, ctx: RoundCtx):
        pseudo_grad = jax.tree.map(jnp.negative, ctx.aggregate)
        updates, opt_state = optimizer.update(pseudo_grad, state.opt_state, state.params)
        state = state._replace(params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state)  # fmt: skip
        return state, ctx._replace(finite=all_finite(ctx.aggregate))

    return Stage("server_optimizer", apply)


def algorithm_finalize(server_finalize, num_clients: int) -> Stage:
    """The algorithm's server state from the contributors' uploads, averaged with the
    model's aggregation weights (SCAFFOLD's ``c``: the mean of ``delta c_i`` scaled by
    ``|S| / N``; unweighted as in the paper, or weighted by ``n_i`` with
    ``weighting="num_examples"`` so that ``c`` stays the same weighted mean of the ``c_i``
    as the model's update)."""

    def apply(state, ctx: RoundCtx):
        c = ctx.contributed.astype(jnp.float32)
        w = jnp.where(ctx.contributed, ctx.weights, 0.0)
        algorithm_state = server_finalize(
            state.algorithm_state, weighted_tree_mean(ctx.out.upload, w),
            ctx.population(num_clients), jnp.sum(c),
        )
        return state._replace(algorithm_state=algorithm_state), ctx

    return Stage("algorithm_finalize", apply)


def downlink(compressor) -> Stage:
    """Downlink compression: the server sends ``C(x - x_hat)`` and every client's copy
    becomes ``x_hat + C(x - x_hat)``; the untransmitted gap carries over (implicit error
    feedback)."""

    def init(params, num_clients, key):
        del num_clients, key
        return {"broadcast": params, "downlink_state": compressor.transform.init(params)}

    def apply(state, ctx: RoundCtx):
        gap = jax.tree.map(jnp.subtract, state.params, state.broadcast)
        sent, downlink_state = compressor.transform.update(
            gap, state.downlink_state, state.params, key=ctx.keys.downlink
        )
        broadcast = jax.tree.map(jnp.add, state.broadcast, sent)
        return state._replace(broadcast=broadcast, downlink_state=downlink_state), ctx

    return Stage("downlink", apply, init)


def scatter_clients() -> Stage:
    """The contributors' new chain states and algorithm states are written back to
    ``[C, ...]``; the others keep theirs."""

    def apply(state, ctx: RoundCtx):
        ids, keep = ctx.ids, ctx.contributed
        return state._replace(
            client_transform_states=tree_put(
                state.client_transform_states, ids, ctx.transform_states, keep
            ),
            client_states=tree_put(state.client_states, ids, ctx.out.client_state, keep),
        ), ctx

    return Stage("scatter_clients", apply)


def report_loss() -> Stage:
    """``ctx.train_loss``: the contributors' local-step loss weighted by their examples."""

    def apply(state, ctx: RoundCtx):
        w = jnp.where(ctx.contributed, ctx.batch.num_examples.astype(jnp.float32), 0.0)
        return state, ctx._replace(train_loss=example_weighted_loss(ctx.out.train_loss, w))

    return Stage("report_loss", apply)


def next_round() -> Stage:
    """``state.round += 1`` (the last stage of every mode)."""

    def apply(state, ctx: RoundCtx):
        return state._replace(round=state.round + 1), ctx

    return Stage("next_round", apply)
