"""Uplink compressors: client transforms that encode and decode ONE client's delta, with the
exact size of the encoded message in bits.

The simulation applies ``decode(encode(delta))`` (what the server receives) and counts
``bits(params)`` per message, from the wire format: values (float32), indices
(``ceil(log2 d)`` bits each), scales and seeds (32 bits), before any entropy coding. ``d`` is
the number of parameters of the whole model (the delta is flattened).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fljax._base import EmptyState, Transform


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


def randk(fraction: float | None = None, k: int | None = None) -> Compressor:
    r"""Random-k sparsification, unbiased: ``k`` coordinates drawn without replacement from the
    client's private seed, scaled by ``d / k``. Message: ``k`` float32 values and the 32-bit seed
    (the server regenerates the indices): :math:`32 k + 32` bits.

    References:
        Stich, Cordonnier, Jaggi (2018), NeurIPS; Wangni et al. (2018), NeurIPS.
    """

    def fn(v, key, d):
        kk = _k(fraction, k, d)
        idx = jax.random.choice(key, d, (kk,), replace=False)
        return jnp.zeros_like(v).at[idx].set(v[idx] * (d / kk))

    def bits(params):
        return 32 * _k(fraction, k, _dim(params)) + 32

    return Compressor("randk", _flat_transform(fn), bits, True, dict(fraction=fraction, k=k))


def qsgd(levels: int = 16) -> Compressor:
    r"""QSGD stochastic quantization with ``s = levels``: :math:`Q(v_i) = \|v\|_2
    \operatorname{sign}(v_i)\, \xi_i`, :math:`\xi_i = (l + \text{Bernoulli}(s|v_i|/\|v\| - l))/s`,
    :math:`l = \lfloor s|v_i|/\|v\| \rfloor`; unbiased. Message: the norm and per entry a sign
    and a level: :math:`32 + d(1 + \lceil\log_2(s + 1)\rceil)` bits.

    References:
        Alistarh et al. (2017), "QSGD: Communication-Efficient SGD via Gradient Quantization
        and Encoding", NeurIPS, Sec. 3.1.
    """
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")

    def fn(v, key, d):
        del d
        norm = jnp.linalg.norm(v)
        safe = jnp.where(norm > 0, norm, 1.0)
        r = jnp.abs(v) / safe * levels
        lower = jnp.floor(r)
        up = jax.random.uniform(key, v.shape) < (r - lower)
        xi = (lower + up) / levels
        return jnp.where(norm > 0, norm * jnp.sign(v) * xi, 0.0)

    def bits(params):
        return 32 + _dim(params) * (1 + math.ceil(math.log2(levels + 1)))

    return Compressor("qsgd", _flat_transform(fn), bits, True, dict(levels=levels))


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


class ErrorFeedbackState(NamedTuple):
    residual: Any  # like params: what compression dropped so far (per client)


def error_feedback(compressor: Compressor) -> Compressor:
    r"""Error feedback: compress :math:`p = \Delta + e`, send :math:`c = C(p)`, keep
    :math:`e \leftarrow p - c` as the client's persistent residual.

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
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name: str, error_feedback: bool = False, **kwargs) -> Compressor:
    """Builds the compressor ``name``, wrapped in error feedback if asked.

    Examples:
        >>> c = get("topk", fraction=0.1, error_feedback=True)
        >>> c.name, c.bits({"w": jnp.zeros((10, 10))})
        ('topk+ef', 380)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown compressor name={name!r}; choose one of {names()}")
    fn = _REGISTRY[name]
    allowed = list(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"compressor {name!r} got unknown arguments {unknown}; allowed: {allowed}")
    c = fn(**kwargs)
    return _with_error_feedback(c) if error_feedback else c
