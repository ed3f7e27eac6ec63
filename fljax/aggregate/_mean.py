"""Linear aggregators over a leading client axis ``deltas[K, ...]`` with ``weights[K]``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax._base import EmptyState, Transform


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
        w = weights.astype(jnp.float32)
        total = jnp.sum(w)
        scale = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)

        def reduce(d):
            return jnp.tensordot(w, d.astype(jnp.float32), axes=1).astype(d.dtype) * scale

        return jax.tree.map(reduce, updates), state

    return Transform(init, update, linear=True)


def mean() -> Transform:
    """Unweighted mean over the client axis (``weighted_mean`` with equal weights)."""
    inner = weighted_mean()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        k = jax.tree.leaves(updates)[0].shape[0]
        return inner.update(updates, state, params, key=key, weights=jnp.ones((k,)), **extra)

    return Transform(inner.init, update)
