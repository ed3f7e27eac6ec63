"""The one interface on the update path: optax-style ``init`` / ``update`` transforms.

Every piece that touches model updates (aggregators, clipping, noise, masking, compression,
error feedback) is a :class:`Transform`: a pair of pure functions over parameter pytrees with
a ``NamedTuple`` state, composable with :func:`chain`. Server optimizers are plain optax
``GradientTransformation``s applied to the pseudo-gradient ``-aggregate(delta)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax

PyTree = Any


class UpdateFn(Protocol):
    def __call__(
        self,
        updates: PyTree,
        state: Any,
        params: PyTree | None = None,
        *,
        key: jax.Array | None = None,
        weights: jax.Array | None = None,
        **extra: Any,
    ) -> tuple[PyTree, Any]: ...


class Linear(NamedTuple):
    """A stateless aggregator written as a sum of per-client rows,
    ``update(u[K], ...) == finish(sum_k rows(u, w, steps)_k)``, so that the sum can be
    accumulated chunk by chunk (streaming) or computed by secure aggregation.

    Attributes:
        rows: ``(updates[K], weights[K], num_steps[K]) -> rows`` (a pytree, leading axis ``K``):
            what each client contributes; computable by the client itself.
        chunk_sum: ``(updates[K], weights[K], num_steps[K]) -> sums``: the rows summed over the
            leading axis (how a chunk is accumulated).
        finish: ``(sums, like) -> aggregate`` on the server (``like``: one update's tree).
        bounds: ``(clip_range, max_steps) -> tree like one row's sums of max |entry|`` for
            rows built with weights in ``[0, 1]`` and updates clipped to ``clip_range``
            (fixed-point encoding under secure aggregation).
    """

    rows: Callable
    chunk_sum: Callable
    finish: Callable
    bounds: Callable


class Transform(NamedTuple):
    """A pure pair: ``init(params) -> state`` and
    ``update(updates, state, ...) -> (updates, state)``.

    ``update`` takes ``params`` (the current global parameters), a PRNG ``key`` (derived by the
    round, never stored unless it must persist) and ``weights`` (per-client weights, for
    transforms that see a leading client axis).
    """

    init: Callable[[PyTree], Any]
    update: UpdateFn
    linear: Linear | None = None  # an aggregator's partial sums: it streams and runs securely


class EmptyState(NamedTuple):
    """State of a stateless transform: no leaves."""


def identity() -> Transform:
    """The transform that returns its input unchanged."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, weights, extra
        return updates, state

    return Transform(init, update)


def stateless(fn: Callable[..., PyTree]) -> Transform:
    """Lifts ``fn(updates, params, *, key, weights) -> updates`` into a :class:`Transform`."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del extra
        return fn(updates, params, key=key, weights=weights), state

    return Transform(init, update)


class ChainState(NamedTuple):
    """States of the chained transforms, in order."""

    inner: tuple


def chain(*transforms: Transform) -> Transform:
    """Composes transforms left to right; transform ``i`` gets ``fold_in(key, i)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> t = chain(identity(), stateless(lambda u, p, key, weights: 2 * u))
        >>> out, _ = t.update(jnp.ones(2), t.init(jnp.ones(2)))
        >>> out.tolist()
        [2.0, 2.0]
    """

    def init(params):
        return ChainState(tuple(t.init(params) for t in transforms))

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        new_states = []
        for i, (t, s) in enumerate(zip(transforms, state.inner, strict=True)):
            sub_key = None if key is None else jax.random.fold_in(key, i)
            updates, s = t.update(updates, s, params, key=sub_key, weights=weights, **extra)
            new_states.append(s)
        return updates, ChainState(tuple(new_states))

    return Transform(init, update)


def lookup(kind: str, registry: Mapping[str, Callable], name: str, kwargs: Mapping) -> Callable:
    """The builder ``registry[name]``, after checking ``name`` and the argument names.

    Raises ``ValueError`` listing the valid names for an unknown ``name``, or naming the
    unknown arguments and listing the allowed ones; ``kind`` words the message ("model").
    """
    if name not in registry:
        raise ValueError(f"unknown {kind} name={name!r}; choose one of {sorted(registry)}")
    fn = registry[name]
    allowed = list(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{kind} {name!r} got unknown arguments {unknown}; allowed: {allowed}")
    return fn
