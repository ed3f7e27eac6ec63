"""Stages of adversarial and faulty clients: model poisoning by the malicious clients (after
local training, before their client chain), per-client fault isolation (after the client
chain: a non-finite update, or one beyond a norm cap, is dropped from the round's aggregate
and counted) and FLTrust's server update on its root dataset (before the reduction)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax.aggregate._robust import flatten
from fljax.data import ClientData
from fljax.engine._context import ATTACK_FOLD, ROOT_FOLD, RoundCtx, Stage


class RobustPlan(NamedTuple):
    """What the adversarial stages of a run need (static).

    Attributes:
        malicious: ``[C]`` bool, the attack's malicious clients, or ``None``.
        craft: the attack's model-poisoning function (:class:`fljax.attacks.Attack`), or
            ``None``.
        reject_norm: updates longer than this are rejected too (``None``: only non-finite).
        root: FLTrust's root dataset as one client ``ClientData[1, N, ...]``, or ``None``.
    """

    malicious: Any = None
    craft: Any = None
    reject_norm: float | None = None
    root: Any = None


def _unflatten_like(x: jax.Array, unravel, like):
    tree = jax.vmap(unravel)(x)
    return jax.tree.map(lambda t, d: t.astype(d.dtype), tree, like)


def poison_updates(craft, malicious: np.ndarray) -> Stage:
    """The malicious contributors' updates replaced by ``craft(x[K, d], malicious[K],
    benign[K], key)`` (:mod:`fljax.attacks`), from the cohort's honest updates; the key is
    ``fold_in(aggregation key, ATTACK_FOLD)``. A ``craft`` with ``uses_ids = True`` also gets
    the cohort's client ids (``ids=``: per-client crafted updates, e.g. audit canaries)."""
    bad = jnp.asarray(malicious, bool)
    by_id = getattr(craft, "uses_ids", False)

    def apply(state, ctx: RoundCtx):
        mal = bad[ctx.ids] & ctx.contributed
        benign = ctx.contributed & ~mal
        x, unravel = flatten(ctx.out.delta)
        key = jax.random.fold_in(ctx.keys.aggregate, ATTACK_FOLD)
        crafted = craft(x, mal, benign, key, ids=ctx.ids) if by_id else craft(x, mal, benign, key)
        x = jnp.where(mal[:, None], crafted, x)
        delta = _unflatten_like(x, unravel, ctx.out.delta)
        return state, ctx._replace(out=ctx.out._replace(delta=delta))

    return Stage("poison_updates", apply)


def acceptable(reject_norm: float | None):
    """``deltas[K, ...] -> ok[K]``: every entry finite (and the norm at most
    ``reject_norm``)."""

    def ok(deltas):
        leaves = jax.tree.leaves(deltas)
        k = leaves[0].shape[0]
        finite = jnp.ones((k,), bool)
        sq = jnp.zeros((k,), jnp.float32)
        for a in leaves:
            flat = a.reshape(k, -1)
            finite = finite & jnp.all(jnp.isfinite(flat), axis=1)
            sq = sq + jnp.sum(jnp.where(jnp.isfinite(flat), flat, 0.0).astype(jnp.float32) ** 2,
                              axis=1)  # fmt: skip
        if reject_norm is not None:
            finite = finite & (jnp.sqrt(sq) <= reject_norm)
        return finite

    return ok


def zero_rejected(deltas, ok: jax.Array):
    """``deltas`` with the rows of rejected clients zeroed (``0 * nan`` is ``nan``)."""

    def z(d):
        keep = ok.reshape((-1,) + (1,) * (d.ndim - 1))
        return jnp.where(keep, d, jnp.zeros((), d.dtype))

    return jax.tree.map(z, deltas)


def isolate(ctx: RoundCtx, ok: jax.Array) -> RoundCtx:
    """``ctx`` with the contributors whose message is not ``ok`` moved to ``ctx.rejected``."""
    return ctx._replace(rejected=ctx.contributed & ~ok, contributed=ctx.contributed & ok)


def reject_updates(reject_norm: float | None) -> Stage:
    """Per-client fault isolation: a contributor whose message is non-finite (or longer than
    ``reject_norm``) is dropped from the aggregate (weight 0, message zeroed, its per-client
    states not written back) and flagged in ``ctx.rejected``. A rejected client still counts
    in client-level DP's fixed denominator (the clipped sum divides by the expected cohort)."""
    check = acceptable(reject_norm)

    def apply(state, ctx: RoundCtx):
        ok = check(ctx.deltas)
        ctx = ctx._replace(deltas=zero_rejected(ctx.deltas, ok),
                           weights=jnp.where(ok, ctx.weights, 0.0))  # fmt: skip
        return state, isolate(ctx, ok)

    return Stage("reject_updates", apply)


def root_client(root: tuple, like: ClientData) -> ClientData:
    """FLTrust's root dataset ``(x, y)`` as one client padded to the federation's ``N``."""
    x, y = (np.asarray(a) for a in root)
    n_max = like.x.shape[1]
    if x.shape[1:] != like.x.shape[2:] or y.shape[1:] != like.y.shape[2:]:
        raise ValueError(f"fltrust root dataset: examples of shape {x.shape[1:]} / labels "
                         f"{y.shape[1:]} do not match the federation's {like.x.shape[2:]} / "
                         f"{like.y.shape[2:]}")  # fmt: skip
    if x.shape[0] < 1:
        raise ValueError("fltrust root dataset is empty")
    n = min(x.shape[0], n_max)  # local training sees at most the padded client size
    xp = np.zeros((1, n_max, *x.shape[1:]), like.x.dtype)
    yp = np.zeros((1, n_max, *y.shape[1:]), like.y.dtype)
    xp[0, :n], yp[0, :n] = x[:n], y[:n]
    return ClientData(xp, yp, np.array([n], np.int32))


def sample_root(train: ClientData, size: int, rng: np.random.Generator) -> tuple:
    """``size`` examples drawn without replacement from the pooled real training examples."""
    train = ClientData(*(np.asarray(a) for a in train))
    xs, ys = train.x[train.mask], train.y[train.mask]
    if size > xs.shape[0]:
        raise ValueError(f"fltrust root_size={size} exceeds the federation's {xs.shape[0]} "
                         "training examples")  # fmt: skip
    rows = rng.choice(xs.shape[0], size=size, replace=False)
    return xs[rows], ys[rows]


def root_update(client_update, root: ClientData) -> Stage:
    """``ctx.server_update``: the update of the server's own training on FLTrust's root
    dataset from the global model (the clients' local training; key
    ``fold_in(aggregation key, ROOT_FOLD)``)."""
    rx, ry, rn = (jnp.asarray(a[0]) for a in root)

    def apply(state, ctx: RoundCtx):
        key = jax.random.fold_in(ctx.keys.aggregate, ROOT_FOLD)
        out = client_update(ctx.start, rx, ry, rn, key, (), state.algorithm_state)
        return state, ctx._replace(server_update=out.delta)

    return Stage("root_update", apply)
