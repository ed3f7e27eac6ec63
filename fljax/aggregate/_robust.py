"""Byzantine-robust aggregators over ``deltas[K, ...]`` (a reduction stage of the round).

Every aggregator here sees the cohort's updates flattened to ``X[K, d]`` and a presence mask
(``weights > 0``: dropped stragglers, padding and rejected updates are absent); the number
``n`` of present updates may change from round to round inside one compiled program, so
every rank, count and trimming bound is computed from ``n`` at run time. The
coordinate-wise and selection rules are unweighted, as in their papers; the geometric median,
centered clipping and norm bounding use the aggregation weights (``n_k`` or 1).

Selection rules (Krum, Multi-Krum, Bulyan, FLTrust) report which clients they kept in their
state's ``kept[K]`` (read out by the reduction stage into the run's history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fljax._base import Transform, lookup
from fljax.aggregate._mean import normalize_weighted_sum, weighted_mean, weighted_sum

PyTree = Any
BUCKET_FOLD = 7  # fold_in(aggregation key, 7): bucketing's shuffle of the cohort


class RobustState(NamedTuple):
    """A robust aggregator's state: ``memory`` persists between rounds (centered clipping's
    last aggregate), ``kept`` is this round's ``[K]`` bool of kept clients (``()`` between
    rounds and for rules that keep no subset)."""

    memory: Any = ()
    kept: Any = ()


class Aggregator(NamedTuple):
    """A named aggregator for :func:`fljax.simulate` (``aggregator=``).

    Attributes:
        name: registry name (``bucketing(...)`` around another).
        transform: the :class:`fljax.Transform` over ``deltas[K, ...]``.
        hparams: the hyperparameters it was built with.
        min_cohort: ``k -> error message or None``: whether a cohort of ``k`` clients is
            enough (Krum needs ``k > 2f + 2``, Bulyan ``k >= 4f + 3``).
        root: FLTrust's server root dataset ``(x, y)`` or ``None``; ``root_size``: draw that
            many examples of the federation's pooled (clean) training data instead.
        selects: the rule keeps a subset of clients (``kept`` is recorded).
        weighted: the rule uses the aggregation weights (else only presence).
    """

    name: str
    transform: Transform
    hparams: dict
    min_cohort: Callable[[int], str | None] = lambda k: None
    root: Any = None
    root_size: int | None = None
    selects: bool = False
    weighted: bool = False


# --- helpers on the flattened cohort ----------------------------------------------------


def flatten(updates: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """``X[K, d]`` float32 (each client's update raveled) and ``unravel(v[d]) -> tree``."""
    one = jax.tree.map(lambda a: a[0], updates)
    _, unravel = ravel_pytree(one)
    x = jax.vmap(lambda t: ravel_pytree(t)[0])(updates).astype(jnp.float32)
    return x, unravel


def _present(weights: jax.Array | None, k: int) -> jax.Array:
    if weights is None:
        return jnp.ones((k,), bool)
    return weights > 0


def _weights(weights: jax.Array | None, k: int) -> jax.Array:
    """The aggregation weights as float32 (all 1 when none are given)."""
    return jnp.ones((k,)) if weights is None else weights.astype(jnp.float32)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _others(present: jax.Array) -> jax.Array:
    """``[K, K]``: both present and not the same client (the pairs Krum scores over)."""
    k = present.shape[0]
    return present[None, :] & present[:, None] & ~jnp.eye(k, dtype=bool)


def _cohort(updates: PyTree, weights: jax.Array | None):
    """``(X[K, d], unravel, present[K], n)`` of a cohort."""
    x, unravel = flatten(updates)
    present = _present(weights, x.shape[0])
    return x, unravel, present, jnp.sum(present.astype(jnp.int32))


_TOP = 0x80000000


def _keys(x: jax.Array, present: jax.Array) -> jax.Array:
    """``x`` as uint32 keys whose unsigned order is the float order (absent entries: the
    maximum key, after every value; ``present`` is ``[K]`` rows or ``[K, d]`` entries)."""
    u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    top = jnp.uint32(_TOP)
    key = jnp.where(u >= top, ~u, u | top)
    mask = present[:, None] if present.ndim == 1 else present
    return jnp.where(mask, key, jnp.uint32(0xFFFFFFFF))


def _values(key: jax.Array) -> jax.Array:
    u = jnp.where(key >= jnp.uint32(_TOP), key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def kth_smallest(x: jax.Array, present: jax.Array, k: jax.Array) -> jax.Array:
    """The ``k``-th smallest (0-based; ``k`` traced, a scalar or ``[d]``) of the present
    entries of ``x[K, d]``, coordinate by coordinate (``present``: ``[K]`` rows or ``[K, d]``
    entries): an exact selection by bisection on the float's order-preserving 32-bit key (32
    counting passes of O(K d) each, instead of an O(K log K d) sort)."""
    keys = _keys(x, present)
    need = (k + 1).astype(jnp.int32)

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // jnp.uint32(2)
        enough = jnp.sum((keys <= mid[None, :]).astype(jnp.int32), axis=0) >= need
        return jnp.where(enough, lo, mid + jnp.uint32(1)), jnp.where(enough, mid, hi)

    d = x.shape[1]
    lo = jnp.zeros((d,), jnp.uint32)
    hi = jnp.full((d,), 0xFFFFFFFF, jnp.uint32)
    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return _values(lo)


def _next_value(x, present, v, rank):
    """The element of rank ``rank`` given ``v``, the element of rank ``rank - 1``: ``v`` again
    when enough values tie with it, else the smallest present value above it."""
    at_most = jnp.sum((present[:, None] & (x <= v[None, :])).astype(jnp.int32), axis=0)
    above = jnp.min(jnp.where(present[:, None] & (x > v[None, :]), x, jnp.inf), axis=0)
    return jnp.where(at_most >= rank + 1, v, above)


def masked_median(x: jax.Array, present: jax.Array) -> jax.Array:
    """Coordinate-wise median of the present rows of ``x[K, d]`` (mean of the two middle
    values for an even count; zeros when none is present)."""
    n = jnp.sum(present.astype(jnp.int32))
    lo = kth_smallest(x, present, jnp.maximum((n - 1) // 2, 0))
    hi = _next_value(x, present, lo, n // 2)
    hi = jnp.where(n % 2 == 1, lo, hi)
    return jnp.where(n > 0, 0.5 * (lo + hi), 0.0)


def trimmed_sum(x: jax.Array, present: jax.Array, b: jax.Array) -> jax.Array:
    """Sum of each coordinate's present values of ranks ``b .. n - b - 1`` (ties counted by
    rank, as a sort would), from two exact selections."""
    n = jnp.sum(present.astype(jnp.int32))
    lo = kth_smallest(x, present, b)
    hi = kth_smallest(x, present, jnp.maximum(n - b - 1, 0))
    p = present[:, None]
    between = jnp.sum(jnp.where(p & (x > lo[None, :]) & (x < hi[None, :]), x, 0.0), axis=0)
    le_lo = jnp.sum((p & (x <= lo[None, :])).astype(jnp.int32), axis=0)
    lt_hi = jnp.sum((p & (x < hi[None, :])).astype(jnp.int32), axis=0)
    n_lo = (le_lo - b).astype(jnp.float32)  # kept copies of lo (ranks b .. le_lo - 1)
    n_hi = (n - b - lt_hi).astype(jnp.float32)  # kept copies of hi (ranks lt_hi .. n - b - 1)
    split = between + lo * n_lo + hi * n_hi
    return jnp.where(lo == hi, lo * (n - 2 * b).astype(jnp.float32), split)


def pairwise_sq_distances(x: jax.Array) -> jax.Array:
    """``D[i, j] = ||x_i - x_j||^2`` from the Gram matrix (one ``[K, d] x [d, K]`` product:
    O(K^2 d) work, vectorized)."""
    sq = jnp.sum(x * x, axis=1)
    gram = x @ x.T
    d = sq[:, None] + sq[None, :] - 2.0 * gram
    return jnp.maximum(d, 0.0) * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))


def krum_scores(d2: jax.Array, present: jax.Array, f: int) -> jax.Array:
    r"""Krum's score :math:`s(i) = \sum_{i \to j} \|V_i - V_j\|^2` over the
    :math:`m = n - f - 2` present clients closest to ``i`` (Blanchard et al. 2017, Sec. 4);
    ``inf`` for absent clients. Each row's :math:`m`-th smallest distance ``t`` by exact
    selection (:func:`kth_smallest`; ``d2`` is symmetric, so columns are rows), then the sum
    of the distances below ``t`` plus ``t`` for the remaining ties: no sort of the rows."""
    n = jnp.sum(present.astype(jnp.int32))
    others = _others(present)
    m = jnp.maximum(n - f - 2, 1)
    t = kth_smallest(d2, others, m - 1)
    below = others & (d2 < t[None, :])
    count = jnp.sum(below.astype(jnp.int32), axis=0)
    score = jnp.sum(jnp.where(below, d2, 0.0), axis=0) + t * (m - count).astype(jnp.float32)
    score = jnp.where(n > 1, score, 0.0)  # a lone update has no neighbours: it is chosen
    return jnp.where(present, score, jnp.inf)


def _sorted_neighbours(d2: jax.Array, present: jax.Array):
    """Each row's present others sorted by distance (``order``, ``dist``; absent and self
    last, at ``inf``): sorted once, then any candidate subset's Krum scores cost O(K^2)."""
    masked = jnp.where(_others(present), d2, jnp.inf)
    order = jnp.argsort(masked, axis=1)
    return order, jnp.take_along_axis(masked, order, axis=1)


def _subset_scores(order, dist, left: jax.Array, f: int) -> jax.Array:
    """Krum scores within the candidate set ``left`` from :func:`_sorted_neighbours`."""
    n = jnp.sum(left.astype(jnp.int32))
    ok = left[order] & jnp.isfinite(dist)
    m = jnp.maximum(n - f - 2, 1)
    take = ok & (jnp.cumsum(ok.astype(jnp.int32), axis=1) <= m)
    return jnp.where(left, jnp.sum(jnp.where(take, dist, 0.0), axis=1), jnp.inf)


def _finish(v: jax.Array, unravel, like: PyTree) -> PyTree:
    tree = unravel(v)
    return jax.tree.map(lambda t, d: t.astype(d.dtype), tree, jax.tree.map(lambda a: a[0], like))


def _stateless(update: Callable) -> Transform:
    def init(params):
        del params
        return RobustState()

    return Transform(init, update)


# --- coordinate-wise rules (Yin et al. 2018) --------------------------------------------


def median() -> Aggregator:
    r"""Coordinate-wise median of the present updates.

    References:
        Yin et al. (2018), "Byzantine-Robust Distributed Learning: Towards Optimal
        Statistical Rates", ICML, Option I (median-based gradient descent): :math:`g =
        \mathrm{med}\{g^i : i \in [m]\}` coordinate by coordinate.
    """

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, unravel, present, _ = _cohort(updates, weights)
        return _finish(masked_median(x, present), unravel, updates), state

    return Aggregator("median", _stateless(update), {})


def trimmed_mean(trim: float = 0.1) -> Aggregator:
    r"""Coordinate-wise :math:`\beta`-trimmed mean: drop the :math:`\lfloor \beta n \rfloor`
    largest and smallest values of each coordinate, average the rest.

    References:
        Yin et al. (2018), ICML, Option II (Definition 2): :math:`g = \mathrm{trmean}_\beta
        \{g^i\}`, :math:`\beta \in [0, 1/2)`.
    """
    if not (isinstance(trim, int | float) and 0.0 <= trim < 0.5):
        raise ValueError(f"trimmed_mean: trim must be a fraction in [0, 0.5), got {trim!r}")

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, unravel, present, n = _cohort(updates, weights)
        b = jnp.floor(trim * n).astype(jnp.int32)
        v = trimmed_sum(x, present, b) / jnp.maximum(n - 2 * b, 1).astype(jnp.float32)
        v = jnp.where(n > 0, v, 0.0)
        return _finish(v, unravel, updates), state

    return Aggregator("trimmed_mean", _stateless(update), {"trim": float(trim)})


# --- selection rules ----------------------------------------------------------------------


def _check_f(name: str, f) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"{name}: f (Byzantine clients tolerated) must be an integer >= 0, "
                         f"got {f!r}")  # fmt: skip
    return f


def krum(f: int = 1, m: int | None = 1) -> Aggregator:
    r"""Krum (``m = 1``) and Multi-Krum (the mean of the ``m`` best-scored updates;
    ``m=None``: ``n - f`` of the ``n`` present).

    :math:`s(i) = \sum_{i \to j} \|V_i - V_j\|^2` over the :math:`n - f - 2` nearest; Krum
    returns :math:`V_{i^*}`, :math:`i^* = \arg\min_i s(i)` (ties: the lower slot). Needs
    :math:`n > 2f + 2`. The pairwise distances cost O(K^2 d) (one Gram matrix).

    References:
        Blanchard et al. (2017), "Machine Learning with Adversaries: Byzantine Tolerant
        Gradient Descent", NeurIPS, Sec. 4 (Krum) and Sec. 5 (Multi-Krum).
    """
    f = _check_f("krum", f)
    if m is not None:
        _positive_int("krum: m (updates averaged; or None)", m)

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, unravel, present, n = _cohort(updates, weights)
        k = x.shape[0]
        scores = krum_scores(pairwise_sq_distances(x), present, f)
        rank = jnp.zeros((k,), jnp.int32).at[jnp.argsort(scores)].set(jnp.arange(k))
        count = jnp.maximum(n - f, 1) if m is None else m
        chosen = (rank < count) & present
        w = chosen.astype(jnp.float32)
        v = (w @ x) / jnp.maximum(jnp.sum(w), 1.0)
        return _finish(v, unravel, updates), RobustState(state.memory, chosen)

    name = "krum" if m == 1 else "multi_krum"

    def enough(k):
        if k <= 2 * f + 2:
            return (f"aggregator {name!r} with f={f} needs clients_per_round > 2f + 2 = "
                    f"{2 * f + 2}, got {k} (lower f or raise clients_per_round)")  # fmt: skip
        if m is not None and m > k - f:
            return f"aggregator {name!r}: m={m} exceeds clients_per_round - f = {k - f}"
        return None

    return Aggregator(name, _stateless(update), {"f": f, "m": m}, enough, selects=True)


def multi_krum(f: int = 1, m: int | None = None) -> Aggregator:
    """Multi-Krum (:func:`krum` averaging the ``m`` best; ``m=None``: ``n - f``, the choice
    of El Mhamdi et al. 2018)."""
    return krum(f, m)._replace(name="multi_krum")


def bulyan(f: int = 1) -> Aggregator:
    r"""Bulyan: :math:`\theta = n - 2f` updates chosen by Krum one at a time (each removed
    from the candidates), then coordinate by coordinate the mean of the
    :math:`\beta = \theta - 2f` values closest to the median of the chosen. Needs
    :math:`n \ge 4f + 3`.

    References:
        El Mhamdi, Guerraoui and Rouault (2018), "The Hidden Vulnerability of Distributed
        Learning in Byzantium", ICML, Sec. 4 (Algorithm: Bulyan(A) with A = Krum).
    """
    f = _check_f("bulyan", f)

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, unravel, present, n = _cohort(updates, weights)
        k = x.shape[0]
        theta = jnp.maximum(n - 2 * f, 1)
        order, dist = _sorted_neighbours(pairwise_sq_distances(x), present)

        def pick(i, carry):
            chosen, left = carry
            best = jnp.argmin(_subset_scores(order, dist, left, f))
            go = (i < theta) & jnp.any(left)
            chosen = chosen.at[best].set(chosen[best] | go)
            left = left.at[best].set(left[best] & ~go)
            return chosen, left

        chosen, _ = jax.lax.fori_loop(0, max(k - 2 * f, 1), pick,
                                      (jnp.zeros((k,), bool), present))  # fmt: skip
        med = masked_median(x, chosen)
        beta = jnp.maximum(theta - 2 * f, 1)
        # the beta values closest to the median (ties to the lower slot, as a stable sort)
        gap = jnp.abs(x - med[None, :])
        t = kth_smallest(gap, chosen, beta - 1)
        c = chosen[:, None]
        inside = c & (gap < t[None, :])
        tied = c & (gap == t[None, :])
        room = beta - jnp.sum(inside.astype(jnp.int32), axis=0)
        take = inside | (tied & (jnp.cumsum(tied.astype(jnp.int32), axis=0) <= room[None, :]))
        v = jnp.sum(jnp.where(take, x, 0.0), axis=0) / beta.astype(jnp.float32)
        return _finish(v, unravel, updates), RobustState(state.memory, chosen)

    def enough(k):
        if k < 4 * f + 3:
            return (f"aggregator 'bulyan' with f={f} needs clients_per_round >= 4f + 3 = "
                    f"{4 * f + 3}, got {k} (lower f or raise clients_per_round)")  # fmt: skip
        return None

    return Aggregator("bulyan", _stateless(update), {"f": f}, enough, selects=True)


# --- weighted rules -----------------------------------------------------------------------


def geometric_median(iterations: int = 3, nu: float = 1e-6) -> Aggregator:
    r"""Geometric median by the smoothed Weiszfeld algorithm (RFA):
    :math:`v \leftarrow \sum_i \beta_i x_i / \sum_i \beta_i`,
    :math:`\beta_i = \alpha_i / \max(\nu, \|v - x_i\|)`, from the weighted mean, ``iterations``
    times (:math:`\alpha_i` the aggregation weights).

    References:
        Pillutla, Kakade and Harchaoui (2022), "Robust Aggregation for Federated Learning",
        IEEE TSP, Algorithm 2 (smoothed Weiszfeld), Eq. (6).
    """
    _positive_int("geometric_median: iterations", iterations)
    if not nu > 0:
        raise ValueError(f"geometric_median: nu must be > 0, got {nu!r}")

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, unravel = flatten(updates)
        alpha = _weights(weights, x.shape[0])
        alpha = alpha / jnp.maximum(jnp.sum(alpha), 1e-30)
        v0 = alpha @ x

        def step(_, v):
            dist = jnp.sqrt(jnp.sum((x - v[None, :]) ** 2, axis=1))
            beta = alpha / jnp.maximum(nu, dist)
            return (beta @ x) / jnp.maximum(jnp.sum(beta), 1e-30)

        v = jax.lax.fori_loop(0, iterations, step, v0)
        return _finish(v, unravel, updates), state

    hp = {"iterations": iterations, "nu": float(nu)}
    return Aggregator("geometric_median", _stateless(update), hp, weighted=True)


def _clip_rows(x: jax.Array, tau) -> jax.Array:
    norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return x * jnp.minimum(1.0, tau / jnp.maximum(norms, 1e-30))


def centered_clipping(tau: float = 1.0, iterations: int = 1) -> Aggregator:
    r"""Centered clipping: from the previous round's aggregate :math:`v`,
    :math:`v \leftarrow v + \sum_i p_i \,\mathrm{clip}_\tau(x_i - v)` ``iterations`` times
    (:math:`p_i` the normalised aggregation weights; :math:`\mathrm{clip}_\tau(z) = z
    \min(1, \tau / \|z\|)`). With :math:`\tau = \infty` it is the weighted mean.

    References:
        Karimireddy, He and Jaggi (2021), "Learning from History for Byzantine Robust
        Optimization", ICML, Eq. (CC) / Algorithm 2 (the center is the last aggregate, their
        momentum).
    """
    if not tau > 0:
        raise ValueError(f"centered_clipping: tau must be > 0, got {tau!r}")
    _positive_int("centered_clipping: iterations", iterations)

    def init(params):
        flat, _ = ravel_pytree(params)
        return RobustState(memory=jnp.zeros(flat.shape, jnp.float32))

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, unravel = flatten(updates)
        w = _weights(weights, x.shape[0])
        total = jnp.sum(w)
        p = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)

        def step(_, v):
            return v + p @ _clip_rows(x - v[None, :], tau)

        v = jax.lax.fori_loop(0, iterations, step, state.memory)
        v = jnp.where(total > 0, v, 0.0)
        return _finish(v, unravel, updates), RobustState(memory=v)

    hp = {"tau": float(tau), "iterations": iterations}
    return Aggregator("centered_clipping", Transform(init, update), hp, weighted=True)


class CenteredDPState(NamedTuple):
    """Centered clipping under client-level DP: the center (the last released aggregate, a
    tree like the params) and the DP mechanism's state (adaptive clipping's norm)."""

    center: Any
    inner: Any


def centered_dp(parts) -> Transform:
    r"""Centered clipping as a client-level DP mechanism: one iteration around the last
    RELEASED aggregate :math:`v` (public: post-processing of earlier releases),
    :math:`v \leftarrow v + \frac{1}{m}\big(\sum_k \mathrm{clip}_C(\Delta_k - v) +
    \mathcal N(0, z^2 C^2 I)\big)`. One client moves the sum by at most :math:`C`, as in
    DP-FedAvg (whose clip is centered at 0), so the same accountant applies; ``parts`` is the
    run's :class:`fljax.privacy.ClippedSum` (clip norm :math:`C`, noise, fixed denominator
    :math:`m`, adaptive clipping).

    References:
        Karimireddy, He and Jaggi (2021), ICML (centered clipping); McMahan et al. (2018),
        "Learning Differentially Private Recurrent Language Models", ICLR (the Gaussian sum
        with a fixed denominator).
    """

    def init(params):
        return CenteredDPState(jax.tree.map(jnp.zeros_like, params), parts.init(params))

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, extra
        diff = jax.tree.map(lambda d, c: d - c[None].astype(d.dtype), updates, state.center)
        clipped, included, norms = parts.clip(diff, state.inner, weights)
        mask = included.astype(jnp.float32)
        total = jax.tree.map(lambda d: jnp.tensordot(mask, d, axes=1), clipped)
        step, inner = parts.finish(total, state.inner, key, included, norms)
        out = jax.tree.map(lambda c, s: (c + s).astype(c.dtype), state.center, step)
        return out, CenteredDPState(out, inner)

    return Transform(init, update)


def norm_bounding(max_norm: float = 1.0) -> Aggregator:
    r"""Norm bounding: every update clipped to :math:`\|\Delta_k\| \le M`, then the weighted
    mean (with no update longer than ``M`` it IS the weighted mean, bit for bit).

    References:
        Sun et al. (2019), "Can You Really Backdoor Federated Learning?", Sec. 3 (norm
        thresholding of updates: :math:`\Delta / \max(1, \|\Delta\| / M)`).
    """
    if not max_norm > 0:
        raise ValueError(f"norm_bounding: max_norm must be > 0, got {max_norm!r}")

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, extra
        x, _ = flatten(updates)
        w = _weights(weights, x.shape[0])
        norms = jnp.sqrt(jnp.sum(x * x, axis=1))
        scale = 1.0 / jnp.maximum(1.0, norms / max_norm)
        bounded = jax.tree.map(
            lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)).astype(d.dtype), updates
        )
        return normalize_weighted_sum(weighted_sum(bounded, w), w, bounded), state

    return Aggregator("norm_bounding", _stateless(update), {"max_norm": float(max_norm)},
                      weighted=True)  # fmt: skip


def fltrust(root: tuple | None = None, root_size: int | None = None) -> Aggregator:
    r"""FLTrust: the server trains on its own small clean root dataset from the global model
    (the same local training as the clients) to get :math:`g_0`; each update gets the trust
    score :math:`TS_i = \mathrm{ReLU}(\cos(g_i, g_0))`, is rescaled to :math:`\|g_0\|`, and
    :math:`g = \sum_i TS_i \frac{\|g_0\|}{\|g_i\|} g_i / \sum_j TS_j`.

    ``root``: the root dataset ``(x, y)``, or ``root_size``: that many examples drawn from the
    federation's pooled training data before any poisoning (the paper samples it from the
    same distribution). The engine computes :math:`g_0` each round (``server_update``).

    References:
        Cao et al. (2021), "FLTrust: Byzantine-robust Federated Learning via Trust
        Bootstrapping", NDSS, Eq. (3)-(5) and Algorithm 2.
    """
    if root is None and not (isinstance(root_size, int) and root_size > 0):
        raise ValueError("fltrust needs a root dataset: root=(x, y) (the server's clean "
                         f"examples) or root_size=N drawn from the federation, got "
                         f"root={root!r}, root_size={root_size!r}")  # fmt: skip

    def update(updates, state, params=None, *, key=None, weights=None, server_update=None,
               **extra):  # fmt: skip
        del params, key, extra
        if server_update is None:
            raise ValueError("fltrust needs the server's root update (server_update=)")
        x, unravel = flatten(updates)
        g0, _ = ravel_pytree(server_update)
        g0 = g0.astype(jnp.float32)
        present = _present(weights, x.shape[0])
        norms = jnp.sqrt(jnp.sum(x * x, axis=1))
        n0 = jnp.sqrt(jnp.sum(g0 * g0))
        cos = (x @ g0) / jnp.maximum(norms * n0, 1e-30)
        ts = jnp.where(present, jax.nn.relu(cos), 0.0)
        rescaled = x * (n0 / jnp.maximum(norms, 1e-30))[:, None]
        total = jnp.sum(ts)
        v = jnp.where(total > 0, (ts @ rescaled) / jnp.where(total > 0, total, 1.0), 0.0)
        return _finish(v, unravel, updates), RobustState(state.memory, ts > 0)

    hp = {"root_size": root_size if root is None else int(jax.tree.leaves(root)[0].shape[0])}
    return Aggregator("fltrust", _stateless(update), hp, root=root, root_size=root_size,
                      selects=True)  # fmt: skip


# --- bucketing ------------------------------------------------------------------------------


def bucketing(inner: Aggregator, bucket_size: int = 2) -> Aggregator:
    r"""Bucketing: the present clients in a random order (from the round's aggregation key),
    averaged in buckets of ``bucket_size``, and ``inner`` applied to the bucket means
    (weights: the bucket's summed weights). A client is kept when its bucket is.

    References:
        Karimireddy, He and Jaggi (2022), "Byzantine-Robust Learning on Heterogeneous
        Datasets via Bucketing", ICLR, Algorithm 1.
    """
    _positive_int("bucketing: bucket_size", bucket_size)
    s = bucket_size
    t = inner.transform

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        x, unravel = flatten(updates)
        k = x.shape[0]
        w = _weights(weights, k)
        present = w > 0
        noise = jax.random.uniform(jax.random.fold_in(key, BUCKET_FOLD), (k,))
        order = jnp.argsort(jnp.where(present, noise, 2.0))  # present first, shuffled
        nb = -(-k // s)
        pad = nb * s - k
        xs = jnp.concatenate([x[order], jnp.zeros((pad, x.shape[1]), x.dtype)])
        ws = jnp.concatenate([w[order], jnp.zeros((pad,), w.dtype)])
        pres = (ws > 0).astype(jnp.float32).reshape(nb, s)
        counts = pres.sum(axis=1)
        means = (
            jnp.einsum("bs,bsd->bd", pres, xs.reshape(nb, s, -1))
            / jnp.maximum(counts, 1.0)[:, None]
        )
        bw = ws.reshape(nb, s).sum(axis=1) if inner.weighted else counts
        bucket_tree = jax.vmap(unravel)(means)
        agg, inner_state = t.update(bucket_tree, state, params, key=key, weights=bw, **extra)
        kept = getattr(inner_state, "kept", ())
        if isinstance(kept, jax.Array) and kept.shape == (nb,):
            slot_bucket = jnp.zeros((k,), jnp.int32).at[order].set(jnp.arange(k) // s)
            inner_state = inner_state._replace(kept=kept[slot_bucket] & present)
        return agg, inner_state

    def enough(k):
        return inner.min_cohort(-(-k // s))

    name = f"bucketing({inner.name})"
    return inner._replace(
        name=name,
        transform=Transform(t.init, update),
        hparams={**inner.hparams, "bucket_size": s},
        min_cohort=enough,
    )


# --- the registry ---------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Aggregator]] = {
    "mean": lambda: Aggregator("mean", weighted_mean(), {}, weighted=True),
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geometric_median": geometric_median,
    "centered_clipping": centered_clipping,
    "norm_bounding": norm_bounding,
    "fltrust": fltrust,
}


def names() -> list[str]:
    """The registered aggregator names."""
    return sorted(_REGISTRY)


def get(name: str, bucket_size: int | None = None, **kwargs) -> Aggregator:
    """The aggregator ``name`` built with ``kwargs``; ``bucket_size``: wrapped in
    :func:`bucketing` (Karimireddy et al. 2022).

    Examples:
        >>> import fljax
        >>> fljax.aggregate.get("krum", f=1).hparams
        {'f': 1, 'm': 1}
    """
    agg = lookup("aggregator", _REGISTRY, name, kwargs)(**kwargs)
    if bucket_size is not None and bucket_size != 1:
        agg = bucketing(agg, bucket_size)
    return agg
