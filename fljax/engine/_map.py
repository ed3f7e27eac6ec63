"""The two primitives that carry all client parallelism: ``map_clients`` and ``reduce``.

``map_clients`` is the only place that vmaps, chunks or shards clients. ``reduce`` turns the
cohort's messages into one aggregate: densely (the aggregator sees ``[K, ...]``), or streamed
chunk by chunk for a linear aggregator (a ``lax.scan`` carry of the weighted sum; no
``[K, ...]`` stack of messages exists).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from fljax._devices import CLIENT_AXIS, client_sharding
from fljax.engine._robust import zero_rejected

PyTree = Any


CLIENT_MAPS = ("vmap", "device_vmap", "sequential")
"""How a round maps local training over its cohort (``simulate(client_map=...)``; ``"auto"``
times each)."""


class ClientMap(NamedTuple):
    """How the clients of a round are mapped (static).

    Attributes:
        chunk: clients per ``vmap``ped chunk (``lax.map`` over chunks), or ``None``: one
            ``vmap`` over the cohort.
        mesh: a ``clients`` mesh to split the cohort's inputs over, or ``None``.
        strategy: ``"vmap"``: every client batched under one ``vmap`` (partitioned over the
            mesh by XLA's SPMD partitioner); ``"device_vmap"``: each device ``vmap``s its own
            group of clients under ``shard_map`` (manual partitioning: nothing is gathered
            across devices); ``"sequential"``: each device runs its clients one after another
            (``lax.map``), so convolutions stay ordinary convolutions instead of the grouped
            ones ``vmap`` makes of per-client weights.
    """

    chunk: int | None = None
    mesh: jax.sharding.Mesh | None = None
    strategy: str = "vmap"

    def shard(self, tree: PyTree) -> PyTree:
        """``tree``'s leading (client) axis split over the mesh (unchanged without one)."""
        if self.mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, client_sharding(self.mesh))

    def _local(self, fn: Callable, per_client: tuple) -> PyTree:
        """``fn`` over the leading axis on one device: ``vmap``, chunks, or one at a time."""
        k = jax.tree.leaves(per_client)[0].shape[0]
        if self.strategy == "sequential":
            return jax.lax.map(lambda a: fn(*a), per_client)
        if self.chunk is None or self.chunk >= k:
            return jax.vmap(fn)(*per_client)
        return jax.lax.map(lambda a: fn(*a), per_client, batch_size=self.chunk)

    def __call__(self, fn: Callable, *per_client: PyTree) -> PyTree:
        """``fn`` over the leading (client) axis of ``per_client`` by :attr:`strategy`."""
        if self.mesh is None or self.strategy == "vmap":
            return self._local(fn, per_client)
        spec = PartitionSpec(CLIENT_AXIS)
        grouped = jax.shard_map(lambda *a: self._local(fn, a), mesh=self.mesh,
                                in_specs=spec, out_specs=spec, check_vma=False)  # fmt: skip
        return grouped(*per_client)

    def streams(self, aggregator, k: int) -> bool:
        """Whether a cohort of ``k`` reduces chunk by chunk: an aggregator with partial sums
        (``aggregator.linear``) and chunks smaller than the cohort."""
        return self.chunk is not None and aggregator.linear is not None and self.chunk < k

    def stream(
        self,
        train_client: Callable,
        transform: Callable,
        per_client: tuple,
        chain_states: PyTree,
        chain_keys: jax.Array,
        weights: jax.Array,
        linear,
        accept: Callable | None = None,
    ):
        """Local training, the client chain and a linear aggregator's partial sums
        (:class:`fljax.Linear`), chunk by chunk in a ``lax.scan`` carry; ``accept``
        (``messages[c] -> ok[c]``): the rejected messages are zeroed and weighted 0.

        Returns ``(summed rows, outputs without deltas [K], chain states [K], ok[K])``. The
        last chunk is padded with weight-0 copies of the last client (which add nothing).
        """
        k, c = weights.shape[0], self.chunk
        m = -(-k // c)

        def chunked(a):
            if m * c > k:
                a = jnp.concatenate([a, jnp.repeat(a[-1:], m * c - k, axis=0)])
            return a.reshape(m, c, *a.shape[1:])

        w = jnp.concatenate([weights, jnp.zeros((m * c - k,), weights.dtype)])
        xs = (*jax.tree.map(chunked, (per_client, chain_states, chain_keys)), w.reshape(m, c))

        def chunk(args, ts, tk, w):
            out = jax.vmap(train_client)(*args)
            deltas, ts = jax.vmap(transform)(out.delta, ts, tk)
            ok = jnp.ones(w.shape, bool)
            if accept is not None:
                ok = accept(deltas)
                deltas, w = zero_rejected(deltas, ok), jnp.where(ok, w, 0.0)
            return linear.chunk_sum(deltas, w, out.num_steps), out._replace(delta=()), ts, ok

        def body(acc, xs_i):
            sums, out, ts, ok = chunk(*xs_i)
            return jax.tree.map(jnp.add, acc, sums), (out, ts, ok)

        first = jax.tree.map(lambda a: a[0], xs)
        acc0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda a: chunk(*a)[0], first))
        total, (out, ts, ok) = jax.lax.scan(body, acc0, xs)
        unchunk = lambda a: a.reshape(m * c, *a.shape[2:])[:k]  # noqa: E731
        return total, jax.tree.map(unchunk, out), jax.tree.map(unchunk, ts), unchunk(ok)
