"""Algorithms are data: a NamedTuple of engine parts, built by registry functions."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from fljax._base import Transform, lookup

CLIENT_OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "rmsprop", "yogi")
SERVER_OPTIMIZERS = ("sgd", "adam", "adagrad", "yogi")
WEIGHTINGS = ("num_examples", "uniform")


MODES = ("federated", "cyclic", "centralized", "local", "async")
"""How an algorithm trains: federated rounds, a model passed site to site (cyclic), pooled data
(centralized), each site alone (local) or asynchronous updates."""


class Personal(NamedTuple):
    """How a personalized algorithm trains and keeps each client's own parameters (hooks on
    ONE client; the engine vmaps them).

    Attributes:
        name: ``"partition"`` (FedPer / FedRep / FedBN), ``"ditto"`` or ``"apfl"``.
        init: ``params -> state`` of one client (persisted, stacked ``[C, ...]``).
        start: ``(global_params, state) -> z``: the variable local training starts from.
        loss: ``(z, f, global_params) -> (objective, reported_loss)`` with ``f(params)`` the
            batch data loss; ``None``: ``z`` is a model and the objective is ``f(z)``.
        finish: ``(z, global_params, state) -> (model, state)``: the model whose delta from
            the global one is sent, and the client's new state.
        model: ``(global_params, state) -> params``: the client's personalized model.
        shared: ``params -> [bool]`` per leaf: sent over the wire (bytes are counted for
            these only).
        trainable: ``(z, t, steps) -> tree like z of 0.0 / 1.0``: leaves trained at local step
            ``t`` of ``steps`` (FedRep's alternation), or ``None`` (all).
        project: ``(z, global_params) -> z`` after every local step, or ``None``.
        reports_global: the global model is itself a model worth evaluating (Ditto, APFL).
    """

    name: str
    init: Callable
    start: Callable
    loss: Callable | None
    finish: Callable
    model: Callable
    shared: Callable
    trainable: Callable | None = None
    project: Callable | None = None
    reports_global: bool = False


class Algorithm(NamedTuple):
    """The parts of a federated algorithm, composed by :func:`fljax.simulate`.

    Attributes:
        name: registry name.
        client_optimizer: optax optimizer of the local steps (re-initialised every round).
        local_epochs: passes over local data per round (``None`` in fixed-step mode).
        local_steps: fixed local steps per round, one int or one per client (``None`` in
            epoch mode).
        batch_size: local minibatch size; ``None`` means full batch.
        client_transform: applied to ONE client's delta, vmapped; its state persists per client.
        aggregator: ``deltas[K, ...], weights[K] -> update``; also receives ``num_steps[K]``
            and ``num_clients`` as keyword arguments.
        server_optimizer: optax transform applied to the pseudo-gradient ``-aggregate``.
        weighting: aggregation weights, ``"num_examples"`` (FedAvg) or ``"uniform"``.
        regularizer: ``(params, global_params, client_state, server_state) -> scalar`` added to
            the local objective, or ``None``.
        client_state_init: ``params -> state`` of ONE client, persisted for every client
            (stacked ``[C, ...]``), gathered for the selected ones and scattered back.
        server_state_init: ``params -> state`` the server keeps and sends to the clients.
        client_finalize: ``ClientContext -> (client_state, upload)`` after local training.
        server_finalize: ``(server_state, mean_upload, num_clients, clients_per_round) ->
            server_state``, with the unweighted mean of the selected clients' uploads.
        mode: ``"federated"`` (clients train in parallel from the global model),
            ``"cyclic"`` (the model visits the selected clients one after another),
            ``"centralized"`` (one model on the pooled training data), ``"local"`` (every
            client trains only its own model) or ``"async"`` (FedAsync / FedBuff: each round
            is one server step on the buffered updates of the clients that finished first;
            hparams ``buffer_size``, ``concurrency``, ``max_staleness``,
            ``staleness_exponent``, ``mixing``).
        hparams: the hyperparameters the algorithm was built with (for logs and tables).
        personal: :class:`Personal` hooks of a personalized algorithm, or ``None``.
    """

    name: str
    client_optimizer: optax.GradientTransformation
    local_epochs: int | None
    local_steps: int | tuple[int, ...] | None
    batch_size: int | None
    client_transform: Transform
    aggregator: Transform
    server_optimizer: optax.GradientTransformation
    weighting: str = "num_examples"
    regularizer: Callable | None = None
    client_state_init: Callable | None = None
    server_state_init: Callable | None = None
    client_finalize: Callable | None = None
    server_finalize: Callable | None = None
    mode: str = "federated"
    hparams: dict = {}
    personal: Personal | None = None


def _positive(name: str, value, *, integer: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, jax.core.Tracer):  # a swept value, checked concretely before tracing
        return value
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    ok = ok and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive finite number"
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
    """Validates the local-work hyperparameters (exactly one of epochs / steps).

    ``local_steps`` may be one integer or a sequence with one integer per client.
    """
    local_epochs = _positive("local_epochs", local_epochs, integer=True, allow_none=True)
    if isinstance(local_steps, list | tuple):
        if not local_steps:
            raise ValueError("local_steps must not be an empty list")
        local_steps = tuple(_positive("local_steps", s, integer=True) for s in local_steps)
    else:
        local_steps = _positive("local_steps", local_steps, integer=True, allow_none=True)
    batch_size = _positive("batch_size", batch_size, integer=True, allow_none=True)
    if (local_epochs is None) == (local_steps is None):
        raise ValueError(
            "set exactly one of local_epochs and local_steps (the other to null), got "
            f"local_epochs={local_epochs}, local_steps={local_steps}"
        )
    return local_epochs, local_steps, batch_size


_REGISTRY: dict[str, Callable[..., Algorithm]] = {}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def register(name: str):
    """Registers an algorithm builder under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def rebuild(algorithm: Algorithm, **overrides: Any) -> Algorithm:
    """``algorithm`` built again by its registry builder with ``overrides`` replacing some of
    the hyperparameters it was built with (``algorithm.hparams``)."""
    if algorithm.name not in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is not in the registry; cannot rebuild it")
    builder = _REGISTRY[algorithm.name]
    allowed = inspect.signature(builder).parameters
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"algorithm {algorithm.name!r} has no hyperparameters {unknown}; "
            f"allowed: {list(allowed)}"
        )
    kwargs = {k: v for k, v in algorithm.hparams.items() if k in allowed}
    return builder(**(kwargs | overrides))


def get(name: str, **kwargs: Any) -> Algorithm:
    """Builds the algorithm ``name`` with its hyperparameters.

    Examples:
        >>> get("fedavg", client_lr=0.05).hparams["client_lr"]
        0.05
    """
    fn = lookup("algorithm", _REGISTRY, name, kwargs)
    return fn(**kwargs)
