"""Linear aggregators over a leading client axis ``deltas[K, ...]`` with ``weights[K]``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax._base import EmptyState, Linear, Transform


def weighted_mean() -> Transform:
    r"""Aggregate :math:`\sum_k w_k \Delta_k / \sum_k w_k` (zero when all weights are zero).

    With ``weights = num_examples`` this is FedAvg's aggregation.

    References:
        McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS, Algorithm 1:
        :math:`w_{t+1} = \sum_k \frac{n_k}{n} w^k_{t+1}`.

    Examples:
        >>> import jax.numpy as jnp
        >>> agg = weighted_mean()
        >>> deltas, w = jnp.array([[1.0], [4.0]]), jnp.array([2.0, 1.0])
        >>> out, _ = agg.update(deltas, agg.init(None), weights=w)
        >>> out.tolist()
        [2.0]
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        if weights is None:
            raise ValueError("weighted_mean needs weights[K]")
        return normalize_weighted_sum(weighted_sum(updates, weights), weights, updates), state

    return Transform(init, update, linear=WEIGHTED_MEAN_SUMS)


def weighted_sum(updates, weights: jax.Array):
    r""":math:`\sum_k w_k u_k` over the leading client axis, in float32 (a partial sum that
    streaming aggregation adds up chunk by chunk)."""
    w = weights.astype(jnp.float32)
    return jax.tree.map(lambda d: jnp.tensordot(w, d.astype(jnp.float32), axes=1), updates)


def normalize_weighted_sum(total, weights: jax.Array, like):
    """``total / sum(weights)`` in the dtypes of ``like`` (zero when all weights are zero):
    :func:`weighted_mean` from a :func:`weighted_sum`, however that sum was accumulated."""
    s = jnp.sum(weights.astype(jnp.float32))
    scale = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
    return jax.tree.map(lambda t, d: t.astype(d.dtype) * scale, total, like)


def _rows(updates, weights, num_steps=None):
    del num_steps
    w = weights.astype(jnp.float32)
    scaled = jax.tree.map(lambda d: d * w.reshape((-1,) + (1,) * (d.ndim - 1)), updates)
    return scaled, w


def _chunk_sum(updates, weights, num_steps=None):
    del num_steps
    return weighted_sum(updates, weights), jnp.sum(weights.astype(jnp.float32))


def _finish(sums, like):
    total, w = sums
    scale = jnp.where(w > 0, 1.0 / jnp.where(w > 0, w, 1.0), 0.0)
    return jax.tree.map(lambda t, d: t.astype(d.dtype) * scale, total, like)


def _bounds(clip_range, max_steps):
    del max_steps
    return clip_range, 1.0


# sum_k (w_k u_k, w_k) -> sum / sum of weights: the weighted mean as partial sums.
WEIGHTED_MEAN_SUMS = Linear(_rows, _chunk_sum, _finish, _bounds)


def mean() -> Transform:
    """Unweighted mean over the client axis (``weighted_mean`` with equal weights)."""
    inner = weighted_mean()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        k = jax.tree.leaves(updates)[0].shape[0]
        return inner.update(updates, state, params, key=key, weights=jnp.ones((k,)), **extra)

    return Transform(inner.init, update)
