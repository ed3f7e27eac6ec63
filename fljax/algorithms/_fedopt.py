"""Adaptive server optimizers of Reddi et al. (2021) as optax transforms."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

FEDOPT_KINDS = ("adagrad", "adam", "yogi")


class FedOptState(NamedTuple):
    """State of :func:`fedopt`."""

    m: Any  # first moment of the aggregated delta, like params
    v: Any  # second-moment accumulator, like params


def fedopt(
    kind: str,
    learning_rate: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
    r"""FedAdagrad / FedAdam / FedYogi server update, exactly Algorithm 2 of Reddi et al.

    Applied to the pseudo-gradient :math:`g = -\Delta_t` (``\Delta_t`` the aggregated delta):

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) \Delta_t, \\
        v_t = v_{t-1} + \Delta_t^2 \ \text{(Adagrad)}, \quad
        \beta_2 v_{t-1} + (1 - \beta_2) \Delta_t^2 \ \text{(Adam)}, \quad
        v_{t-1} - (1 - \beta_2) \Delta_t^2 \operatorname{sign}(v_{t-1} - \Delta_t^2) \
        \text{(Yogi)}, \\
        x_{t+1} = x_t + \eta \, m_t / (\sqrt{v_t} + \tau),

    with no bias correction. ``initial_accumulator`` is :math:`v_{-1}`: the paper takes
    :math:`\tau^2` (the default, ``None``); FLamby's implementation starts from 0.

    References:
        Reddi et al. (2021), "Adaptive Federated Optimization", ICLR, Algorithm 2; defaults
        :math:`\beta_1 = 0.9, \beta_2 = 0.99, \tau = 10^{-3}` from its Sec. 5.
    """
    if kind not in FEDOPT_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {FEDOPT_KINDS}")
    if not learning_rate > 0:
        raise ValueError(f"server_lr must be > 0, got {learning_rate}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    v0 = tau**2 if initial_accumulator is None else float(initial_accumulator)
    if v0 < 0:
        raise ValueError(f"initial_accumulator must be >= 0, got {v0}")

    def init(params):
        return FedOptState(
            m=jax.tree.map(jnp.zeros_like, params),
            v=jax.tree.map(lambda p: jnp.full_like(p, v0), params),
        )

    def update(grads, state, params=None):
        del params
        delta = jax.tree.map(jnp.negative, grads)
        m = jax.tree.map(lambda m, d: beta1 * m + (1 - beta1) * d, state.m, delta)
        if kind == "adagrad":
            v = jax.tree.map(lambda v, d: v + d * d, state.v, delta)
        elif kind == "adam":
            v = jax.tree.map(lambda v, d: beta2 * v + (1 - beta2) * d * d, state.v, delta)
        else:
            v = jax.tree.map(
                lambda v, d: v - (1 - beta2) * d * d * jnp.sign(v - d * d), state.v, delta
            )
        updates = jax.tree.map(lambda m, v: learning_rate * m / (jnp.sqrt(v) + tau), m, v)
        return updates, FedOptState(m, v)

    return optax.GradientTransformation(init, update)
