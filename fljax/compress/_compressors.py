"""Uplink compressors: client transforms that encode and decode ONE client's delta, with the
exact size of the encoded message in bits.

The simulation applies ``decode(encode(delta))`` (what the server receives) and counts
``bits(params)`` per message, from the wire format: values (float32), indices
(``ceil(log2 d)`` bits each), scales and seeds (32 bits), before any entropy coding. ``d`` is
the number of parameters of the whole model (the delta is flattened).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fljax._base import EmptyState, Transform, lookup


class Compressor(NamedTuple):
    """A client-side compressor.

    Attributes:
        name: registry name.
        transform: ``update(delta, state, params, key=...) -> (received delta, state)``, for
            one client (vmapped by the round); its state persists per client.
        bits: ``params -> int``, exact bits of one encoded message.
        unbiased: ``E[received] == delta``.
        hparams: the hyperparameters it was built with.
    """

    name: str
    transform: Transform
    bits: Callable[[Any], int]
    unbiased: bool
    hparams: dict


def _dim(params) -> int:
    return int(sum(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params)))


def _index_bits(d: int) -> int:
    return max(1, math.ceil(math.log2(d)))


def _k(fraction: float | None, k: int | None, d: int) -> int:
    if (fraction is None) == (k is None):
        raise ValueError(f"set exactly one of fraction and k, got fraction={fraction}, k={k}")
    if k is not None:
        if not 1 <= k <= d:
            raise ValueError(f"k must be in [1, {d}] (the number of parameters), got {k}")
        return int(k)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * d))


def _flat_transform(fn: Callable[[jax.Array, jax.Array | None, int], jax.Array]) -> Transform:
    """A stateless transform applying ``fn(flat_delta, key, d)`` to the flattened delta."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, weights, extra
        flat, unravel = ravel_pytree(updates)
        return unravel(fn(flat, key, flat.shape[0])), state

    return Transform(init, update)


def topk(fraction: float | None = None, k: int | None = None) -> Compressor:
    r"""Top-k sparsification: keeps the ``k`` entries of largest magnitude (``k = ceil(fraction
    d)``). Message: ``k`` (value, index) pairs, :math:`k (32 + \lceil\log_2 d\rceil)` bits.

    References:
        Stich, Cordonnier, Jaggi (2018), "Sparsified SGD with Memory", NeurIPS.
    """

    def fn(v, key, d):
        del key
        kk = _k(fraction, k, d)
        _, idx = jax.lax.top_k(jnp.abs(v), kk)
        return jnp.zeros_like(v).at[idx].set(v[idx])

    def bits(params):
        d = _dim(params)
        return _k(fraction, k, d) * (32 + _index_bits(d))

    return Compressor("topk", _flat_transform(fn), bits, False, dict(fraction=fraction, k=k))


def randk(fraction: float | None = None, k: int | None = None, scaled: bool = True) -> Compressor:
    r"""Random-k sparsification: ``k`` coordinates drawn without replacement from the client's
    private seed, scaled by ``d / k`` (unbiased) or not (``scaled=False``: contractive, as error
    feedback needs). Message: ``k`` float32 values and the 32-bit seed (the server regenerates
    the indices): :math:`32 k + 32` bits.

    References:
        Stich, Cordonnier, Jaggi (2018), NeurIPS; Wangni et al. (2018), NeurIPS.
    """

    def fn(v, key, d):
        kk = _k(fraction, k, d)
        idx = jax.random.choice(key, d, (kk,), replace=False)
        return jnp.zeros_like(v).at[idx].set(v[idx] * (d / kk if scaled else 1.0))

    def bits(params):
        return 32 * _k(fraction, k, _dim(params)) + 32

    return Compressor(
        "randk", _flat_transform(fn), bits, scaled, dict(fraction=fraction, k=k, scaled=scaled)
    )


def qsgd(levels: int = 16, contractive: bool = False) -> Compressor:
    r"""QSGD stochastic quantization with ``s = levels``: :math:`Q(v_i) = \|v\|_2
    \operatorname{sign}(v_i)\, \xi_i`, :math:`\xi_i = (l + \text{Bernoulli}(s|v_i|/\|v\| - l))/s`,
    :math:`l = \lfloor s|v_i|/\|v\| \rfloor`; unbiased, with variance at most
    :math:`\omega \|v\|^2`, :math:`\omega = \min(d/s^2, \sqrt d/s)` (Lemma 3.1). With
    ``contractive`` the output is divided by :math:`1 + \omega`, which error feedback needs.
    Message: the norm and per entry a sign and a level:
    :math:`32 + d(1 + \lceil\log_2(s + 1)\rceil)` bits.

    References:
        Alistarh et al. (2017), "QSGD: Communication-Efficient SGD via Gradient Quantization
        and Encoding", NeurIPS, Sec. 3.1.
    """
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")

    def fn(v, key, d):
        omega = min(d / levels**2, math.sqrt(d) / levels)
        norm = jnp.linalg.norm(v)
        safe = jnp.where(norm > 0, norm, 1.0)
        r = jnp.abs(v) / safe * levels
        lower = jnp.floor(r)
        up = jax.random.uniform(key, v.shape) < (r - lower)
        xi = (lower + up) / levels
        q = jnp.where(norm > 0, norm * jnp.sign(v) * xi, 0.0)
        return q / (1.0 + omega) if contractive else q

    def bits(params):
        return 32 + _dim(params) * (1 + math.ceil(math.log2(levels + 1)))

    return Compressor(
        "qsgd",
        _flat_transform(fn),
        bits,
        not contractive,
        dict(levels=levels, contractive=contractive),
    )


def sign() -> Compressor:
    r"""1-bit sign compression with scale :math:`\|v\|_1 / d`: received
    :math:`(\|v\|_1/d)\operatorname{sign}(v)` (biased; use with error feedback). Message:
    :math:`d + 32` bits.

    References:
        Bernstein et al. (2018), "signSGD", ICML; Karimireddy et al. (2019), "Error Feedback
        Fixes SignSGD and other Gradient Compression Schemes", ICML, Algorithm 2 (EF-signSGD).
    """

    def fn(v, key, d):
        del key
        return jnp.sum(jnp.abs(v)) / d * jnp.sign(v)

    def bits(params):
        return _dim(params) + 32

    return Compressor("sign", _flat_transform(fn), bits, False, {})


class PowerSGDState(NamedTuple):
    """A client's PowerSGD state: the right factor ``Q`` of each leaf, warm-starting the next
    round's power iteration (Vogels et al. 2019)."""

    q: tuple  # per leaf: [m, r] right factor carried to the next round (warm start), or ()


def _as_matrix(x):
    return x.reshape(x.shape[0], -1)


def powersgd(rank: int = 2) -> Compressor:
    r"""PowerSGD rank-``r`` compression of every matrix leaf (tensors as ``[n, prod(rest)]``):
    one power-iteration step :math:`P = M Q`, orthonormalize :math:`P`, :math:`Q = M^\top P`,
    received :math:`\hat M = P Q^\top`, with :math:`Q` kept per client as the next warm start;
    vectors go dense. Biased: use it with error feedback. Message: :math:`32 r (n + m)` bits per
    matrix, 32 bits per vector entry.

    References:
        Vogels, Karimireddy, Jaggi (2019), "PowerSGD: Practical Low-Rank Gradient Compression
        for Distributed Optimization", NeurIPS, Algorithm 1.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")

    def init(params):
        leaves = jax.tree.leaves(params)
        qs = []
        for i, p in enumerate(leaves):
            if jnp.ndim(p) >= 2:
                m = math.prod(jnp.shape(p)[1:])
                qs.append(
                    jax.random.normal(
                        jax.random.fold_in(jax.random.key(0), i), (m, rank), jnp.float32
                    )
                )
            else:
                qs.append(())
        return PowerSGDState(tuple(qs))

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, weights, extra
        leaves, treedef = jax.tree.flatten(updates)
        out, qs = [], []
        for leaf, q in zip(leaves, state.q, strict=True):
            if leaf.ndim < 2:
                out.append(leaf)
                qs.append(())
                continue
            mat = _as_matrix(leaf)
            p_, _ = jnp.linalg.qr(mat @ q)
            q_new = mat.T @ p_
            out.append((p_ @ q_new.T).reshape(leaf.shape))
            qs.append(q_new)
        return jax.tree.unflatten(treedef, out), PowerSGDState(tuple(qs))

    def bits(params):
        total = 0
        for p in jax.tree.leaves(params):
            shape = jnp.shape(p)
            if len(shape) >= 2:
                total += 32 * rank * (shape[0] + math.prod(shape[1:]))
            else:
                total += 32 * math.prod(shape)
        return total

    return Compressor("powersgd", Transform(init, update), bits, False, dict(rank=rank))


def selective(shared: str = ".*") -> Compressor:
    """Selective parameter sharing: only leaves whose path (``"Dense_0/kernel"``) matches the
    regular expression ``shared`` are sent, dense; the others are not sent (zero delta, so the
    server leaves them unchanged). Message: 32 bits per shared entry.

    Keeping the unshared leaves as per-client personal parameters is the personalization
    issue's job; this counts and simulates what goes over the wire.
    """
    import re

    pattern = re.compile(shared)

    def _mask(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
        return [bool(pattern.fullmatch(n)) for n in names]

    def init(params):
        if not any(_mask(params)):
            raise ValueError(f"shared={shared!r} matches no parameter")
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        del params, key, weights, extra
        leaves, treedef = jax.tree.flatten(updates)
        keep = _mask(updates)
        out = [x if k else jnp.zeros_like(x) for x, k in zip(leaves, keep, strict=True)]
        return jax.tree.unflatten(treedef, out), state

    def bits(params):
        sizes = [math.prod(jnp.shape(p)) for p in jax.tree.leaves(params)]
        return 32 * sum(n for n, k in zip(sizes, _mask(params), strict=True) if k)

    return Compressor("selective", Transform(init, update), bits, False, dict(shared=shared))


class ErrorFeedbackState(NamedTuple):
    """A client's error-feedback state: the ``residual`` compression has dropped so far, added
    to its next update before compressing."""

    residual: Any  # like params: what compression dropped so far (per client)


def error_feedback(compressor: Compressor) -> Compressor:
    r"""Error feedback: compress :math:`p = \Delta + e`, send :math:`c = C(p)`, keep
    :math:`e \leftarrow p - c` as the client's persistent residual. ``C`` must be contractive
    (:func:`get` builds random-k unscaled and QSGD divided by :math:`1 + \omega` for it).

    References:
        Karimireddy et al. (2019), ICML, Algorithm 2; Stich et al. (2018).
    """
    inner = compressor.transform

    def init(params):
        return ErrorFeedbackState(jax.tree.map(jnp.zeros_like, params)), inner.init(params)

    def update(updates, state, params=None, *, key=None, weights=None, **extra):
        ef, inner_state = state
        p = jax.tree.map(jnp.add, updates, ef.residual)
        sent, inner_state = inner.update(p, inner_state, params, key=key, weights=weights)
        residual = jax.tree.map(jnp.subtract, p, sent)
        return sent, (ErrorFeedbackState(residual), inner_state)

    return Compressor(
        compressor.name + "+ef",
        Transform(init, update),
        compressor.bits,
        False,
        dict(compressor.hparams, error_feedback=True),
    )


_with_error_feedback = error_feedback

_REGISTRY: dict[str, Callable[..., Compressor]] = {
    "topk": topk,
    "randk": randk,
    "qsgd": qsgd,
    "sign": sign,
    "powersgd": powersgd,
    "selective": selective,
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name: str, error_feedback: bool = False, **kwargs) -> Compressor:
    """Builds the compressor ``name``, wrapped in error feedback if asked.

    Examples:
        >>> c = get("topk", fraction=0.1, error_feedback=True)
        >>> c.name, c.bits({"w": jnp.zeros((10, 10))})
        ('topk+ef', 390)
    """
    fn = lookup("compressor", _REGISTRY, name, kwargs)
    if error_feedback and name == "randk":
        kwargs.setdefault("scaled", False)  # EF needs a contractive compressor
    if error_feedback and name == "qsgd":
        kwargs.setdefault("contractive", True)
    c = fn(**kwargs)
    return _with_error_feedback(c) if error_feedback else c
