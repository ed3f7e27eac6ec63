"""Algorithms are data: a NamedTuple of engine parts, built by registry functions."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import optax

from fljax import aggregate
from fljax._base import Transform, identity

CLIENT_OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "rmsprop", "yogi")
SERVER_OPTIMIZERS = ("sgd", "adam", "adagrad", "yogi")
WEIGHTINGS = ("num_examples", "uniform")


class Algorithm(NamedTuple):
    """The parts of a federated algorithm, composed by :func:`fljax.simulate`.

    Attributes:
        name: registry name.
        client_optimizer: optax optimizer of the local steps (re-initialised every round).
        local_epochs: passes over local data per round (``None`` in fixed-step mode).
        local_steps: fixed local steps per round (``None`` in epoch mode).
        batch_size: local minibatch size; ``None`` means full batch.
        client_transform: applied to ONE client's delta, vmapped; its state persists per client.
        aggregator: ``deltas[K, ...], weights[K] -> update``.
        server_optimizer: optax transform applied to the pseudo-gradient ``-aggregate``.
        weighting: aggregation weights, ``"num_examples"`` (FedAvg) or ``"uniform"``.
        regularizer: optional ``(params, global_params, client_state) -> scalar`` added to the
            local objective.
        hparams: the hyperparameters the algorithm was built with (for logs and tables).
    """

    name: str
    client_optimizer: optax.GradientTransformation
    local_epochs: int | None
    local_steps: int | None
    batch_size: int | None
    client_transform: Transform
    aggregator: Transform
    server_optimizer: optax.GradientTransformation
    weighting: str = "num_examples"
    regularizer: Callable | None = None
    hparams: dict = {}


def _positive(name: str, value, *, integer: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def make_optimizer(
    name: str, learning_rate: float, allowed: tuple[str, ...], field: str, **kwargs
) -> optax.GradientTransformation:
    """``optax.<name>(learning_rate, **kwargs)`` for a name in ``allowed``."""
    if name not in allowed:
        raise ValueError(f"{field}={name!r} is not one of {allowed}")
    return getattr(optax, name)(learning_rate=learning_rate, **kwargs)


def local_work(local_epochs, local_steps, batch_size):
    """Validates the local-work hyperparameters (exactly one of epochs / steps)."""
    local_epochs = _positive("local_epochs", local_epochs, integer=True, allow_none=True)
    local_steps = _positive("local_steps", local_steps, integer=True, allow_none=True)
    batch_size = _positive("batch_size", batch_size, integer=True, allow_none=True)
    if (local_epochs is None) == (local_steps is None):
        raise ValueError(
            "set exactly one of local_epochs and local_steps (the other to null), got "
            f"local_epochs={local_epochs}, local_steps={local_steps}"
        )
    return local_epochs, local_steps, batch_size


def fedavg(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | None = None,
    batch_size: int | None = 32,
    server_lr: float = 1.0,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""Federated Averaging.

    Each selected client runs local SGD from the global model; the server averages the deltas
    :math:`\Delta_k = w_k - w` with weights :math:`n_k` and applies the pseudo-gradient
    :math:`-\bar\Delta` with SGD at ``server_lr`` (``server_lr = 1`` is classic FedAvg,
    :math:`w \leftarrow w + \bar\Delta`).

    References:
        McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS, Algorithm 1; the server-optimizer view is Reddi et al.
        (2021), "Adaptive Federated Optimization", ICLR, Algorithm 1.
    """
    client_lr = _positive("client_lr", client_lr)
    server_lr = _positive("server_lr", server_lr)
    local_epochs, local_steps, batch_size = local_work(local_epochs, local_steps, batch_size)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is not one of {WEIGHTINGS}")
    opt_kwargs = {}
    if client_momentum is not None:
        if client_optimizer != "sgd":
            raise ValueError("client_momentum applies only to client_optimizer='sgd'")
        if not 0 <= client_momentum < 1:
            raise ValueError(f"client_momentum must be in [0, 1), got {client_momentum}")
        opt_kwargs["momentum"] = float(client_momentum)
    hparams = dict(
        client_lr=client_lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        server_lr=server_lr,
        client_optimizer=client_optimizer,
        client_momentum=client_momentum,
        weighting=weighting,
    )
    return Algorithm(
        name="fedavg",
        client_optimizer=make_optimizer(
            client_optimizer, client_lr, CLIENT_OPTIMIZERS, "client_optimizer", **opt_kwargs
        ),
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_transform=identity(),
        aggregator=aggregate.weighted_mean(),
        server_optimizer=optax.sgd(server_lr),
        weighting=weighting,
        hparams=hparams,
    )


_REGISTRY: dict[str, Callable[..., Algorithm]] = {"fedavg": fedavg}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def register(name: str):
    """Registers an algorithm builder under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def get(name: str, **kwargs: Any) -> Algorithm:
    """Builds the algorithm ``name`` with its hyperparameters.

    Examples:
        >>> get("fedavg", client_lr=0.05).hparams["client_lr"]
        0.05
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm name={name!r}; choose one of {names()}")
    fn = _REGISTRY[name]
    allowed = list(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"algorithm {name!r} got unknown arguments {unknown}; allowed: {allowed}")
    return fn(**kwargs)
