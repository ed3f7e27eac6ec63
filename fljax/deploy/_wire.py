"""Pytrees and keys in Flower messages. Both ends build the same model and algorithm, so a
tree travels as its leaves in order (an ``ArrayRecord``) and is rebuilt on the template the
receiver derives itself; a key travels as its raw data."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def to_record(tree: PyTree):
    """``tree``'s leaves as a Flower ``ArrayRecord`` (NumPy, in tree order)."""
    from flwr.app import ArrayRecord

    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    return ArrayRecord(leaves)


def from_record(record, like: PyTree) -> PyTree:
    """The tree of ``like``'s structure whose leaves are ``record``'s arrays (checked)."""
    leaves = record.to_numpy_ndarrays()
    want = jax.tree.leaves(like)
    if len(leaves) != len(want):
        raise ValueError(f"message holds {len(leaves)} arrays, the model's tree has {len(want)}: "
                         "the server and the site run different models")  # fmt: skip
    for got, ref in zip(leaves, want, strict=True):
        if got.shape != np.shape(ref):
            raise ValueError(f"message array of shape {got.shape} where the tree has "
                             f"{np.shape(ref)}: the server and the site run different models")
    return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(x) for x in leaves])


def tree_bytes(record) -> int:
    """Bytes of a record's arrays (what a message costs on the wire, before framing)."""
    return int(sum(a.nbytes for a in record.to_numpy_ndarrays()))


def key_to_list(key: jax.Array) -> list[int]:
    """A typed PRNG key as a list of ints (its raw data)."""
    return [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()]


def key_from_list(data) -> jax.Array:
    """The typed key of :func:`key_to_list`."""
    return jax.random.wrap_key_data(jnp.asarray(np.asarray(data, np.uint32)))
