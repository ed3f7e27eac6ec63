"""The named algorithms, each a composition of engine parts (see :class:`Algorithm`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fljax import aggregate
from fljax._base import identity
from fljax.algorithms._algorithm import (
    CLIENT_OPTIMIZERS,
    WEIGHTINGS,
    Algorithm,
    _positive,
    local_work,
    make_optimizer,
    register,
)
from fljax.algorithms._fedopt import fedopt


def tree_vdot(a, b) -> jax.Array:
    """:math:`\\sum` over leaves of ``<a, b>``."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def tree_sq_dist(a, b) -> jax.Array:
    """:math:`\\|a - b\\|^2` over all leaves."""
    return sum(
        jnp.sum(jnp.square(x - y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _common(
    name: str,
    *,
    client_lr,
    local_epochs,
    local_steps,
    batch_size,
    client_optimizer,
    client_momentum,
    weighting,
    server_optimizer,
    extra_hparams: dict,
    **parts,
) -> Algorithm:
    """Validates the shared hyperparameters and assembles an :class:`Algorithm`."""
    client_lr = _positive("client_lr", client_lr)
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
        local_steps=list(local_steps) if isinstance(local_steps, tuple) else local_steps,
        batch_size=batch_size,
        client_optimizer=client_optimizer,
        client_momentum=client_momentum,
        weighting=weighting,
        **extra_hparams,
    )
    parts.setdefault("client_transform", identity())
    parts.setdefault("aggregator", aggregate.weighted_mean())
    return Algorithm(
        name=name,
        client_optimizer=make_optimizer(
            client_optimizer, client_lr, CLIENT_OPTIMIZERS, "client_optimizer", **opt_kwargs
        ),
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        server_optimizer=server_optimizer,
        weighting=weighting,
        hparams=hparams,
        **parts,
    )


@register("fedavg")
def fedavg(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
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
    server_lr = _positive("server_lr", server_lr)
    return _common(
        "fedavg",
        client_lr=client_lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer=client_optimizer,
        client_momentum=client_momentum,
        weighting=weighting,
        server_optimizer=optax.sgd(server_lr),
        extra_hparams=dict(server_lr=server_lr),
    )


@register("fedavgm")
def fedavgm(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    server_lr: float = 1.0,
    server_momentum: float = 0.9,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""FedAvg with server momentum: :math:`v \leftarrow \beta v + \bar\Delta`,
    :math:`w \leftarrow w + \eta v` (optax heavy-ball SGD on :math:`-\bar\Delta`).

    References:
        Hsu, Qi, Brown (2019), "Measuring the Effects of Non-Identical Data Distribution for
        Federated Visual Classification", arXiv:1909.06335, Sec. 4 (FedAvgM); Reddi et al.
        (2021), Algorithm 1 with server SGD with momentum.
    """
    server_lr = _positive("server_lr", server_lr)
    if not 0 <= server_momentum < 1:
        raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
    return _common(
        "fedavgm",
        client_lr=client_lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer=client_optimizer,
        client_momentum=client_momentum,
        weighting=weighting,
        server_optimizer=optax.sgd(server_lr, momentum=float(server_momentum)),
        extra_hparams=dict(server_lr=server_lr, server_momentum=server_momentum),
    )


def _fedopt_builder(kind: str):
    name = f"fed{kind}"

    def build(
        client_lr: float = 0.1,
        local_epochs: int | None = 1,
        local_steps: int | list[int] | None = None,
        batch_size: int | None = 32,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_accumulator: float | None = None,
        client_optimizer: str = "sgd",
        client_momentum: float | None = None,
        weighting: str = "num_examples",
    ) -> Algorithm:
        return _common(
            name,
            client_lr=client_lr,
            local_epochs=local_epochs,
            local_steps=local_steps,
            batch_size=batch_size,
            client_optimizer=client_optimizer,
            client_momentum=client_momentum,
            weighting=weighting,
            server_optimizer=fedopt(kind, server_lr, beta1, beta2, tau, initial_accumulator),
            extra_hparams=dict(
                server_lr=server_lr,
                beta1=beta1,
                beta2=beta2,
                tau=tau,
                initial_accumulator=initial_accumulator,
            ),
        )

    build.__name__ = name
    build.__doc__ = (
        f"Fed{kind.capitalize()}: FedAvg's clients with the adaptive server optimizer "
        f":func:`fedopt` (kind={kind!r}).\n\n    References:\n        Reddi et al. (2021), "
        '"Adaptive Federated Optimization", ICLR, Algorithm 2.\n'
    )
    return register(name)(build)


fedadagrad = _fedopt_builder("adagrad")
fedadam = _fedopt_builder("adam")
fedyogi = _fedopt_builder("yogi")


@register("fedprox")
def fedprox(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    mu: float = 0.01,
    server_lr: float = 1.0,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""FedProx: each client minimises :math:`F_k(w) + \frac{\mu}{2}\|w - w^t\|^2`.

    References:
        Li et al. (2020), "Federated Optimization in Heterogeneous Networks", MLSys, Eq. (2)
        and Algorithm 2.
    """
    if not mu >= 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    server_lr = _positive("server_lr", server_lr)
    mu = float(mu)

    def prox(params, global_params, client_state, server_state):
        del client_state, server_state
        return 0.5 * mu * tree_sq_dist(params, global_params)

    return _common(
        "fedprox",
        client_lr=client_lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer=client_optimizer,
        client_momentum=client_momentum,
        weighting=weighting,
        server_optimizer=optax.sgd(server_lr),
        regularizer=prox,
        extra_hparams=dict(mu=mu, server_lr=server_lr),
    )


SCAFFOLD_OPTIONS = ("I", "II")


@register("scaffold")
def scaffold(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    server_lr: float = 1.0,
    option: str = "II",
    weighting: str = "uniform",
) -> Algorithm:
    r"""SCAFFOLD: local steps on the corrected gradient :math:`g_i(y) - c_i + c`.

    After :math:`K_i` local steps the client sets (option I)
    :math:`c_i^+ = \nabla f_i(x)` on its whole training data, or (option II)
    :math:`c_i^+ = c_i - c + \frac{1}{K_i \eta_l}(x - y_i)`, and sends
    :math:`(\Delta y_i, \Delta c_i = c_i^+ - c_i)`. The server sets
    :math:`x \leftarrow x + \eta_g \overline{\Delta y}` and
    :math:`c \leftarrow c + \frac{|S|}{N} \overline{\Delta c}`; clients not sampled keep their
    :math:`c_i`. Means are unweighted as in the paper (``weighting="uniform"``); with
    ``weighting="num_examples"`` both means are weighted by :math:`n_i`, so :math:`c` stays
    the same weighted mean of the :math:`c_i` as the model's update (FLamby's SCAFFOLD). Option II
    assumes plain local SGD, so the client optimizer is SGD without momentum.

    References:
        Karimireddy et al. (2020), "SCAFFOLD: Stochastic Controlled Averaging for Federated
        Learning", ICML, Algorithm 1 (Eq. (4) for the options).
    """
    if option not in SCAFFOLD_OPTIONS:
        raise ValueError(f"option={option!r} is not one of {SCAFFOLD_OPTIONS}")
    server_lr = _positive("server_lr", server_lr)
    lr = _positive("client_lr", client_lr)

    def correction(params, global_params, c_i, c):
        del global_params
        return tree_vdot(jax.tree.map(jnp.subtract, c, c_i), params)  # gradient c - c_i

    def finalize(ctx):
        c_i, c = ctx.client_state, ctx.server_state
        if option == "I":
            new = ctx.grad_fn(ctx.global_params)
        else:
            k = ctx.num_steps.astype(jnp.float32)
            inv = jnp.where(k > 0, 1.0 / (jnp.maximum(k, 1.0) * lr), 0.0)
            new = jax.tree.map(lambda ci, cc, d: ci - cc - inv * d, c_i, c, ctx.delta)
            new = jax.tree.map(lambda n, ci: jnp.where(k > 0, n, ci), new, c_i)
        return new, jax.tree.map(jnp.subtract, new, c_i)

    def server_finalize(c, mean_delta_c, num_clients, num_participants):
        return jax.tree.map(lambda cc, d: cc + num_participants / num_clients * d, c, mean_delta_c)

    return _common(
        "scaffold",
        client_lr=lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer="sgd",
        client_momentum=None,
        weighting=weighting,
        server_optimizer=optax.sgd(server_lr),
        regularizer=correction,
        client_state_init=_zeros,
        server_state_init=_zeros,
        client_finalize=finalize,
        server_finalize=server_finalize,
        extra_hparams=dict(server_lr=server_lr, option=option),
    )


@register("fednova")
def fednova(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    server_lr: float = 1.0,
    client_momentum: float | None = None,
    mu: float = 0.0,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""FedNova: FedAvg's clients (optionally with momentum or a proximal term ``mu``) and
    normalized averaging (:func:`fljax.aggregate.fednova`), removing the objective
    inconsistency that unequal local step counts cause.

    References:
        Wang et al. (2020), "Tackling the Objective Inconsistency Problem in Heterogeneous
        Federated Optimization", NeurIPS, Eq. (6)-(7).
    """
    server_lr = _positive("server_lr", server_lr)
    lr = _positive("client_lr", client_lr)
    if not mu >= 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    if mu > 0 and client_momentum:
        raise ValueError("fednova supports momentum or a proximal term mu, not both")
    regularizer = None
    if mu > 0:
        mu = float(mu)

        def regularizer(params, global_params, client_state, server_state):
            del client_state, server_state
            return 0.5 * mu * tree_sq_dist(params, global_params)

    return _common(
        "fednova",
        client_lr=lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer="sgd",
        client_momentum=client_momentum,
        weighting=weighting,
        server_optimizer=optax.sgd(server_lr),
        aggregator=aggregate.fednova(float(client_momentum or 0.0), float(mu), lr),
        regularizer=regularizer,
        extra_hparams=dict(server_lr=server_lr, mu=mu),
    )


@register("feddyn")
def feddyn(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    alpha: float = 0.01,
    client_optimizer: str = "sgd",
    weighting: str = "uniform",
) -> Algorithm:
    r"""FedDyn: each client minimises
    :math:`L_k(\theta) - \langle \nabla L_k(\theta_k^{t-1}), \theta \rangle +
    \frac{\alpha}{2}\|\theta - \theta^{t-1}\|^2`, then sets
    :math:`\nabla L_k(\theta_k^t) = \nabla L_k(\theta_k^{t-1}) - \alpha(\theta_k^t -
    \theta^{t-1})`; the server step is :func:`fljax.aggregate.feddyn`.

    References:
        Acar et al. (2021), "Federated Learning Based on Dynamic Regularization", ICLR,
        Algorithm 1.
    """
    alpha = _positive("alpha", alpha)

    def dyn(params, global_params, g_k, server_state):
        del server_state
        return -tree_vdot(g_k, params) + 0.5 * alpha * tree_sq_dist(params, global_params)

    def finalize(ctx):
        new = jax.tree.map(lambda g, d: g - alpha * d, ctx.client_state, ctx.delta)
        return new, ()

    return _common(
        "feddyn",
        client_lr=client_lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer=client_optimizer,
        client_momentum=None,
        weighting=weighting,
        server_optimizer=optax.sgd(1.0),
        aggregator=aggregate.feddyn(alpha),
        regularizer=dyn,
        client_state_init=_zeros,
        client_finalize=finalize,
        extra_hparams=dict(alpha=alpha),
    )


def _single_model(name: str, mode: str, doc: str):
    def build(
        client_lr: float = 0.1,
        local_epochs: int | None = 1,
        local_steps: int | list[int] | None = None,
        batch_size: int | None = 32,
        client_optimizer: str = "sgd",
        client_momentum: float | None = None,
    ) -> Algorithm:
        return _single(
            name,
            mode,
            client_lr,
            local_epochs,
            local_steps,
            batch_size,
            client_optimizer,
            client_momentum,
            {},
        )

    build.__name__ = name
    build.__doc__ = doc
    return register(name)(build)


def _single(
    name,
    mode,
    client_lr,
    local_epochs,
    local_steps,
    batch_size,
    client_optimizer,
    client_momentum,
    extra_hparams,
):
    return _common(
        name,
        client_lr=client_lr,
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
        client_optimizer=client_optimizer,
        client_momentum=client_momentum,
        weighting="num_examples",
        server_optimizer=optax.sgd(1.0),
        mode=mode,
        extra_hparams=extra_hparams,
    )


@register("cyclic")
def cyclic(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    shuffle: bool = False,
) -> Algorithm:
    """Cyclic (sequential institutional) training: the model visits the clients one after
    another, each training it for its local work and passing it on; a round visits
    ``clients_per_round`` sites (all of them for one full cycle). The cycle is the clients in
    order, or with ``shuffle`` a fresh random order for every cycle.

    References:
        Chang et al. (2018), "Distributed deep learning networks among institutions for
        medical imaging", JAMIA (cyclical weight transfer); Sheller et al. (2020), Sci. Rep.
    """
    return _single(
        "cyclic",
        "cyclic",
        client_lr,
        local_epochs,
        local_steps,
        batch_size,
        client_optimizer,
        client_momentum,
        {"shuffle": bool(shuffle)},
    )


centralized = _single_model(
    "centralized",
    "centralized",
    """Pooled (centralized) training: one model on the union of all clients' training data,
    ``local_epochs`` passes (or ``local_steps``) per round, evaluated on every client's test
    split like the federated algorithms. The baseline a results table always needs.
    """,
)
local = _single_model(
    "local",
    "local",
    """Local-only training: every client trains its own model on its own data and never
    shares it; each client is evaluated with its own model (``result.client_params``).
    """,
)


def _async_hparams(concurrency, max_staleness, staleness_exponent):
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if not isinstance(max_staleness, int) or max_staleness < 1:
        raise ValueError(f"max_staleness must be an integer >= 1, got {max_staleness!r}")
    if staleness_exponent < 0:
        raise ValueError(f"staleness_exponent must be >= 0, got {staleness_exponent}")
    return dict(
        concurrency=concurrency,
        max_staleness=max_staleness,
        staleness_exponent=float(staleness_exponent),
    )


@register("fedbuff")
def fedbuff(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    server_lr: float = 1.0,
    buffer_size: int = 10,
    concurrency: int = 20,
    max_staleness: int = 16,
    staleness_exponent: float = 0.5,
    weighting: str = "uniform",
    client_optimizer: str = "sgd",
) -> Algorithm:
    r"""FedBuff: buffered asynchronous aggregation (Nguyen et al. 2022, Algorithm 1).

    ``concurrency`` clients train at once, each from the global model current when it
    started. Each round (one server step) takes the ``buffer_size`` updates that finish first
    (by the simulated clock of ``simulate(system=...)``), scales each by
    :math:`s(\tau) = (1 + \tau)^{-a}` (``staleness_exponent`` a, staleness :math:`\tau` =
    server steps since the client started), averages them and applies the server optimizer;
    the finished slots restart with new clients from the new model. Updates staler than
    ``max_staleness`` (the ring buffer of past global models) are discarded.
    """
    if not isinstance(buffer_size, int) or buffer_size < 1:
        raise ValueError(f"buffer_size must be an integer >= 1, got {buffer_size!r}")
    hp = _async_hparams(concurrency, max_staleness, staleness_exponent)
    if buffer_size > concurrency:
        raise ValueError(f"buffer_size={buffer_size} exceeds concurrency={concurrency}")
    server_lr = _positive("server_lr", server_lr)
    return _common(
        "fedbuff", client_lr=client_lr, local_epochs=local_epochs, local_steps=local_steps,
        batch_size=batch_size, client_optimizer=client_optimizer, client_momentum=None,
        weighting=weighting, server_optimizer=optax.sgd(server_lr), mode="async",
        extra_hparams=dict(server_lr=server_lr, buffer_size=buffer_size, mixing=None, **hp),
    )  # fmt: skip


@register("fedasync")
def fedasync(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    mixing: float = 0.6,
    concurrency: int = 20,
    max_staleness: int = 16,
    staleness_exponent: float = 0.5,
    client_optimizer: str = "sgd",
) -> Algorithm:
    r"""FedAsync (Xie et al. 2019, Algorithm 1 with polynomial staleness): each server step
    applies the one update that finishes first,
    :math:`x_t = (1 - \alpha_t) x_{t-1} + \alpha_t x_{new}`,
    :math:`\alpha_t = \alpha (1 + \tau)^{-a}`, where :math:`x_{new}` is the client's model
    trained from the (stale) global model it received.
    """
    if not 0 < mixing <= 1:
        raise ValueError(f"mixing (alpha) must be in (0, 1], got {mixing}")
    hp = _async_hparams(concurrency, max_staleness, staleness_exponent)
    return _common(
        "fedasync", client_lr=client_lr, local_epochs=local_epochs, local_steps=local_steps,
        batch_size=batch_size, client_optimizer=client_optimizer, client_momentum=None,
        weighting="uniform", server_optimizer=optax.sgd(1.0), mode="async",
        extra_hparams=dict(buffer_size=1, mixing=float(mixing), **hp),
    )  # fmt: skip
