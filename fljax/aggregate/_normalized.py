"""Aggregators that need more than the deltas: FedNova and FedDyn."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fljax._base import EmptyState, Linear, Transform


def _normalizer(num_steps, momentum: float, prox_mu: float, lr: float):
    """``||a_i||_1`` of FedNova for local SGD, heavy-ball momentum or a proximal term."""
    tau = num_steps.astype(jnp.float32)
    if momentum > 0:
        rho = momentum
        return (tau - rho * (1.0 - rho**tau) / (1.0 - rho)) / (1.0 - rho)
    if prox_mu > 0:
        q = 1.0 - lr * prox_mu
        return (1.0 - q**tau) / (lr * prox_mu)
    return tau


def fednova(momentum: float = 0.0, prox_mu: float = 0.0, client_lr: float = 1.0) -> Transform:
    r"""FedNova's normalized averaging.

    Each delta is divided by its client's :math:`\|a_i\|_1` (local steps :math:`\tau_i` for
    SGD; :math:`[\tau_i - \rho(1-\rho^{\tau_i})/(1-\rho)]/(1-\rho)` with momentum :math:`\rho`;
    :math:`[1-(1-\eta\mu)^{\tau_i}]/(\eta\mu)` with a proximal term), averaged with weights
    :math:`p_i`, and rescaled by :math:`\tau_{\text{eff}} = \sum_i p_i \|a_i\|_1`:
    :math:`\Delta = \tau_{\text{eff}} \sum_i p_i \Delta_i / \|a_i\|_1`.

    References:
        Wang et al. (2020), "Tackling the Objective Inconsistency Problem in Heterogeneous
        Federated Optimization", NeurIPS, Eq. (6)-(7) and Appendix (momentum and prox).
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, key=None, weights=None, num_steps=None, **extra):
        del params, key, extra
        if weights is None or num_steps is None:
            raise ValueError("fednova needs weights[K] and num_steps[K]")
        a = _normalizer(num_steps, momentum, prox_mu, client_lr)
        p = weights.astype(jnp.float32) / jnp.maximum(jnp.sum(weights), 1e-12)
        scale = jnp.where(a > 0, p / jnp.where(a > 0, a, 1.0), 0.0)
        tau_eff = jnp.sum(p * a)
        return jax.tree.map(lambda d: tau_eff * jnp.tensordot(scale, d, axes=1), updates), state

    # The same step as sums of rows (w_k Delta_k / a_k, w_k, w_k a_k): with S1, S2, S3 their
    # sums, Delta = (S3 / S2) S1 / S2 (tau_eff = S3 / S2, p_k = w_k / S2).
    def inverse(num_steps):
        a = _normalizer(num_steps, momentum, prox_mu, client_lr)
        return a, jnp.where(a > 0, 1.0 / jnp.where(a > 0, a, 1.0), 0.0)

    def rows(updates, weights, num_steps):
        a, inv = inverse(num_steps)
        w = weights.astype(jnp.float32)
        scaled = jax.tree.map(lambda d: d * (w * inv).reshape((-1,) + (1,) * (d.ndim - 1)),
                              updates)  # fmt: skip
        return scaled, w, w * a

    def chunk_sum(updates, weights, num_steps):
        a, inv = inverse(num_steps)
        w = weights.astype(jnp.float32)
        total = jax.tree.map(lambda d: jnp.tensordot(w * inv, d, axes=1), updates)
        return total, jnp.sum(w), jnp.sum(w * a)

    def finish(sums, like):
        total, s2, s3 = sums
        ok = s2 > 0
        safe = jnp.where(ok, s2, 1.0)
        scale = jnp.where(ok, (s3 / safe) / safe, 0.0)
        return jax.tree.map(lambda t, d: (t * scale).astype(d.dtype), total, like)

    def bounds(clip_range, max_steps):  # a_i >= 1, so |w Delta / a| <= clip_range
        top = float(max_steps) / (1.0 - momentum) if momentum > 0 else float(max_steps)
        return clip_range, 1.0, top

    return Transform(init, update, linear=Linear(rows, chunk_sum, finish, bounds))


class FedDynState(NamedTuple):
    """The server state of :func:`feddyn`: ``h``, its correction term h^t (Acar et al. 2021,
    Algorithm 1), updated by the clients' mean drift each round."""

    h: Any  # server state h^t, like params


def feddyn(alpha: float) -> Transform:
    r"""FedDyn's server step as an aggregator.

    :math:`h^t = h^{t-1} - \alpha \frac{1}{m} \sum_{k \in P_t} (\theta_k^t - \theta^{t-1})` and
    :math:`\theta^t = \frac{1}{|P_t|}\sum_{k\in P_t} \theta_k^t - \frac{1}{\alpha} h^t`, i.e.
    the aggregate :math:`\bar\Delta - h^t / \alpha` (``m`` = all clients, passed as
    ``num_clients``; the mean uses ``weights``, uniform in the paper).

    References:
        Acar et al. (2021), "Federated Learning Based on Dynamic Regularization", ICLR,
        Algorithm 1.
    """

    def init(params):
        return FedDynState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None, *, key=None, weights=None, num_clients=None, **extra):
        del params, key, extra
        if weights is None or num_clients is None:
            raise ValueError("feddyn needs weights[K] and num_clients")
        w = weights.astype(jnp.float32)
        took_part = (w > 0).astype(jnp.float32)
        mean = jax.tree.map(
            lambda d: jnp.tensordot(w, d, axes=1) / jnp.maximum(w.sum(), 1e-12), updates
        )
        h = jax.tree.map(
            lambda h, d: h - alpha * jnp.tensordot(took_part, d, axes=1) / num_clients,
            state.h,
            updates,
        )
        return jax.tree.map(lambda m, h: m - h / alpha, mean, h), FedDynState(h)

    return Transform(init, update)
