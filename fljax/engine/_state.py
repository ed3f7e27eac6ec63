"""What persists between rounds (the ``lax.scan`` carry) and what a round reports.

The carry is one :class:`ServerState`; each stage of the round owns some of its fields and
says which in its docstring. Per-client fields are stacked ``[C, ...]`` over the whole
federation, gathered for the selected clients and scattered back (DESIGN.md, principle 4).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class NonFiniteUpdateError(FloatingPointError):
    """A round's aggregated update had NaN or inf entries; the run stops at that round."""


class ServerState(NamedTuple):
    """Everything that persists between rounds (a pytree, the ``lax.scan`` carry).

    Attributes:
        params: global model parameters (server optimizer stage).
        opt_state: server optimizer state (server optimizer stage).
        aggregator_state: aggregator transform state (reduction stage).
        algorithm_state: the algorithm's server state, sent to every client (SCAFFOLD's
            control variate c; the cycle-order key in cyclic training).
        client_transform_states: per-client states of the client chain, stacked ``[C, ...]``
            (error-feedback residuals).
        client_states: per-client algorithm states, stacked ``[C, ...]`` (SCAFFOLD's c_i,
            FedDyn's gradient memory, personal layers; in local-only training each client's
            own model).
        round: ``()`` int32, rounds completed.
        broadcast: with downlink compression, the model the clients hold (else ``()``).
        downlink_state: the downlink compressor's state (else ``()``).
        system_state: :class:`ClockState` with a system model, :class:`AsyncState` in
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


class ClockState(NamedTuple):
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
    finite: jax.Array  # (), bool: the round's update to the model is finite
    client_ids: jax.Array  # (K,), int32: the selected clients
    contributed: jax.Array  # (K,), bool: the client's update was aggregated (not dropped)
    num_steps: jax.Array  # (K,), int32: local steps each selected client took
    sampled: jax.Array  # (K,), bool: the slot holds a reachable client (False: padding)
    secagg: Any = ()  # SecAggStats of the round (secure aggregation), else ()
    staleness: Any = ()  # (K,), int32: server versions each update is behind (async), else ()
    rejected: Any = ()  # (K,), bool: update dropped by fault isolation (synchronous), else ()
    kept: Any = ()  # (K,), bool: kept by a selection-based robust aggregator, else ()


def stack(tree: PyTree, c: int) -> PyTree:
    """``tree`` repeated along a new leading axis of size ``c``."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *jnp.shape(a))), tree)


def tree_take(tree: PyTree, ids: jax.Array) -> PyTree:
    """Rows ``ids`` of every leaf (the gather of per-client state)."""
    return jax.tree.map(lambda a: jnp.take(a, ids, axis=0), tree)


def tree_put(tree: PyTree, ids: jax.Array, values: PyTree, keep: jax.Array | None = None):
    """Scatters ``values[K]`` into ``tree[C]`` at ``ids``; rows with ``keep == False`` are left."""
    if keep is None:
        return jax.tree.map(lambda a, v: a.at[ids].set(v), tree, values)

    def put(a, v):
        old = a[ids]
        k = keep.reshape(keep.shape + (1,) * (v.ndim - 1))
        return a.at[ids].set(jnp.where(k, v, old))

    return jax.tree.map(put, tree, values)


def weighted_tree_mean(tree: PyTree, w: jax.Array) -> PyTree:
    """``sum_k w_k tree_k / sum_k w_k`` over the leading axis (0 when every weight is 0)."""
    total = jnp.maximum(jnp.sum(w), 1e-12)
    return jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1) / total, tree)


def all_finite(tree: PyTree) -> jax.Array:
    """``()`` bool: every entry of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def example_weighted_loss(losses: jax.Array, w: jax.Array) -> jax.Array:
    """The round's reported local loss: ``sum_k w_k loss_k / max(sum_k w_k, 1)``."""
    losses = jnp.where(w > 0, losses, 0.0)  # a rejected client's loss may be nan
    return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)
