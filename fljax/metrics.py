"""Metrics as plain functions of arrays, vmappable over clients.

Each takes an optional ``mask`` of real (non-padded) examples and returns a scalar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mask(labels, mask):
    return jnp.ones(labels.shape, bool) if mask is None else mask.astype(bool)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of ``argmax(logits[N, K]) == labels[N]`` over masked examples (0 if none).

    Examples:
        >>> import jax.numpy as jnp
        >>> float(accuracy(jnp.array([[2., 1.], [0., 3.]]), jnp.array([0, 0])))
        0.5
    """
    m = _mask(labels, mask).astype(jnp.float32)
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(hit * m) / jnp.maximum(jnp.sum(m), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over masked examples."""
    import optax

    m = _mask(labels, mask).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)


def mse(predictions: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error over masked examples; ``predictions`` may carry a trailing 1-axis."""
    if predictions.ndim == targets.ndim + 1:
        predictions = predictions[..., 0]
    m = _mask(targets, mask).astype(jnp.float32)
    return jnp.sum(jnp.square(predictions - targets) * m) / jnp.maximum(jnp.sum(m), 1.0)
