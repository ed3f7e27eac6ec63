"""Personalized algorithms: parameter partitioning (FedPer, FedRep, FedBN), Ditto and APFL.

Each is FedAvg's engine with :class:`Personal` hooks: every client keeps its own state (its
private leaves, or a whole personal model), local training starts from the client's assembled
model, and only shared leaves are sent and aggregated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fljax.algorithms._algorithm import Algorithm, Personal, _positive, register
from fljax.algorithms._builders import _common, tree_sq_dist

PyTree = Any
SHARED, PRIVATE = "shared", "private"
PRIVATE_PRESETS = ("head", "batchnorm")


def leaf_paths(params: PyTree) -> list[str]:
    """``"params/Dense_0/kernel"``-style names of the leaves of ``params``, in leaf order."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]


def _head_module(paths: list[str]) -> str:
    """The output layer: the ``Dense_<i>`` module with the largest ``i``."""
    dense = {}
    for p in paths:
        parts = p.split("/")
        for j, part in enumerate(parts[:-1]):
            m = re.fullmatch(r"Dense_(\d+)", part)
            if m:
                dense["/".join(parts[1 : j + 1] if parts[0] == "params" else parts[: j + 1])] = int(
                    m.group(1)
                )
    if not dense:
        raise ValueError("private='head' needs a model whose output layer is a Dense_<i> module")
    return max(dense, key=dense.get)


def partition(params: PyTree, private: str | Callable[[str], bool] = "head") -> PyTree:
    """The label pytree of ``params``: ``"private"`` for leaves that stay on the client,
    ``"shared"`` for leaves that are sent and aggregated.

    ``private``: ``"head"`` (the output layer: FedPer / FedRep), ``"batchnorm"`` (batch-norm
    scales, biases and running statistics: FedBN), a regular expression matched against the
    whole leaf path (``"params/Dense_2/kernel"``), or a predicate on that path.

    Examples:
        >>> import jax, jax.numpy as jnp, fljax
        >>> m = fljax.models.mlp(num_classes=2, hidden=(4,))
        >>> partition(m.init(jax.random.key(0), jnp.zeros((1, 3))), "head")["Dense_1"]
        {'bias': 'private', 'kernel': 'private'}
    """
    paths = leaf_paths(params)
    if callable(private):
        is_private = private
    elif private == "head":
        head = _head_module(paths)

        def is_private(p):
            rest = p.split("/", 1)[1] if p.startswith("params/") else p
            return rest.startswith(head + "/")
    elif private == "batchnorm":

        def is_private(p):
            return "BatchNorm" in p or p.startswith("batch_stats/")
    elif isinstance(private, str):
        pattern = _compile_private(private)

        def is_private(p):
            return pattern.fullmatch(p) is not None
    else:
        raise ValueError(f"private must be one of {PRIVATE_PRESETS}, a regex or a predicate")
    labels = [PRIVATE if is_private(p) else SHARED for p in paths]
    if PRIVATE not in labels:
        hint = " (the model has no batch norm: use mlp_bn or cnn_bn)"
        hint = hint if private == "batchnorm" else ""
        raise ValueError(f"private={private!r} matches no parameter{hint} of {paths}")
    if SHARED not in labels:
        raise ValueError(f"private={private!r} matches every parameter; nothing would be shared")
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def _private_mask(params, private) -> list[bool]:
    return [lab == PRIVATE for lab in jax.tree.leaves(partition(params, private))]


def _assemble(mask, private_leaves, params):
    """``params`` with its private leaves (``mask``) replaced by ``private_leaves`` in order."""
    it = iter(private_leaves)
    leaves, treedef = jax.tree.flatten(params)
    out = [next(it) if m else p for m, p in zip(mask, leaves, strict=True)]
    return jax.tree.unflatten(treedef, out)


def _private_leaves(mask, params) -> tuple:
    return tuple(p for m, p in zip(mask, jax.tree.leaves(params), strict=True) if m)


def partitioned(private: str | Callable[[str], bool], head_fraction=None) -> Personal:
    """Hooks for parameter partitioning: the client state is the tuple of its private leaves
    (nothing else is stored per client); local training starts from the global shared leaves
    and the client's private ones; the sent model has the global private leaves (delta zero).

    ``head_fraction``: ``(h, b)`` for FedRep: the first ``floor(steps * h / (h + b))`` local
    steps train the private leaves only, the rest the shared leaves only.
    """

    def init(params):
        return _private_leaves(_private_mask(params, private), params)

    def start(global_params, state):
        return _assemble(_private_mask(global_params, private), state, global_params)

    def finish(z, global_params, state):
        del state
        mask = _private_mask(global_params, private)
        sent = _assemble(mask, _private_leaves(mask, global_params), z)
        return sent, _private_leaves(mask, z)

    def shared(params):
        return [not m for m in _private_mask(params, private)]

    trainable = None
    if head_fraction is not None:
        h, b = head_fraction

        def trainable(z, t, steps):
            head_phase = t < (steps * h) // (h + b)
            on, off = jnp.where(head_phase, 1.0, 0.0), jnp.where(head_phase, 0.0, 1.0)
            mask = _private_mask(z, private)
            return jax.tree.unflatten(jax.tree.structure(z), [on if m else off for m in mask])

    return Personal("partition", init, start, None, finish, start, shared, trainable)


def _compile_private(private: str) -> re.Pattern:
    """``private`` as a regular expression, or a ValueError naming the presets."""
    try:
        return re.compile(private)
    except re.error as e:
        raise ValueError(
            f"private={private!r} is neither one of {PRIVATE_PRESETS} nor a regular "
            f"expression ({e})"
        ) from None


def _check_private(private):
    if callable(private):
        return private
    if not isinstance(private, str) or not private:
        raise ValueError(f"private must be one of {PRIVATE_PRESETS} or a regex, got {private!r}")
    if private not in PRIVATE_PRESETS:
        _compile_private(private)
    return private


def _partition_algorithm(name, private, head_fraction, server_lr, extra, **common) -> Algorithm:
    server_lr = _positive("server_lr", server_lr)
    private = _check_private(private)
    algo = _common(
        name,
        server_optimizer=optax.sgd(server_lr),
        extra_hparams=dict(server_lr=server_lr, private=private, **extra),
        **common,
    )
    return algo._replace(personal=partitioned(private, head_fraction))


def _partition_builder(name: str, default_private: str, doc: str):
    """Registers a partitioned FedAvg (the private leaves stay on the clients)."""

    def build(
        client_lr: float = 0.1,
        local_epochs: int | None = 1,
        local_steps: int | list[int] | None = None,
        batch_size: int | None = 32,
        private: str = default_private,
        server_lr: float = 1.0,
        client_optimizer: str = "sgd",
        client_momentum: float | None = None,
        weighting: str = "num_examples",
    ) -> Algorithm:
        return _partition_algorithm(
            name, private, None, server_lr, {},
            client_lr=client_lr, local_epochs=local_epochs, local_steps=local_steps,
            batch_size=batch_size, client_optimizer=client_optimizer,
            client_momentum=client_momentum, weighting=weighting,
        )  # fmt: skip

    build.__name__, build.__doc__ = name, doc
    return register(name)(build)


fedper = _partition_builder(
    "fedper",
    "head",
    r"""FedPer: a shared base (body) learned by FedAvg and a personal head per client, trained
    together in the local steps; only the base is sent and averaged.

    References:
        Arivazhagan et al. (2019), "Federated Learning with Personalization Layers",
        arXiv:1912.00818, Sec. 3 (Algorithm 1).
    """,
)
fedbn = _partition_builder(
    "fedbn",
    "batchnorm",
    r"""FedBN: FedAvg on everything except the batch-norm layers (scale, bias and running
    statistics), which every client keeps local; needs a model with batch norm
    (``mlp_bn``, ``cnn_bn``).

    References:
        Li, Jiang, Zhang, Kamp, Dou (2021), "FedBN: Federated Learning on Non-IID Features via
        Local Batch Normalization", ICLR, Algorithm 1.
    """,
)


@register("fedrep")
def fedrep(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | None = None,
    batch_size: int | None = 32,
    head_epochs: int | None = 10,
    head_steps: int | None = None,
    private: str = "head",
    server_lr: float = 1.0,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""FedRep: each client first trains its personal head for ``head_epochs`` (or
    ``head_steps``) with the shared representation frozen, then the representation for
    ``local_epochs`` (or ``local_steps``) with its new head frozen; only the representation
    is sent and averaged. Defaults: 10 head epochs, then 1 body epoch (many head updates per
    body update, as the paper's Algorithm 1 prescribes; tune ``head_epochs`` per task).

    References:
        Collins, Hassani, Mokhtari, Shakkottai (2021), "Exploiting Shared Representations for
        Personalized Federated Learning", ICML, Algorithm 1.
    """
    if local_steps is not None:  # step mode: head_steps then local_steps
        if isinstance(local_steps, list | tuple):
            raise ValueError("fedrep takes one local_steps for all clients, not a list")
        if head_steps is None:
            raise ValueError("fedrep with local_steps needs head_steps (and head_epochs=null)")
        h = _positive("head_steps", head_steps, integer=True)
        b = _positive("local_steps", local_steps, integer=True)
        work = dict(local_epochs=None, local_steps=h + b)
    else:
        if head_steps is not None:
            raise ValueError("fedrep with local_epochs takes head_epochs, not head_steps")
        h = _positive("head_epochs", head_epochs, integer=True)
        b = _positive("local_epochs", local_epochs, integer=True)
        work = dict(local_epochs=h + b, local_steps=None)
    algo = _partition_algorithm(
        "fedrep", private, (h, b), server_lr,
        dict(head_epochs=head_epochs, head_steps=head_steps),
        client_lr=client_lr, batch_size=batch_size, client_optimizer=client_optimizer,
        client_momentum=client_momentum, weighting=weighting, **work,
    )  # fmt: skip
    # hparams keep the body's work as given (the Algorithm's fields hold head + body).
    body = dict(local_epochs=local_epochs, local_steps=local_steps)
    return algo._replace(hparams=algo.hparams | body)


DITTO_PROX = ("gradient", "exact")


@register("ditto")
def ditto(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    lam: float = 0.1,
    prox: str = "gradient",
    server_lr: float = 1.0,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""Ditto: FedAvg for the global model :math:`w`, and for every client a personal model
    :math:`v_k` persisted across rounds that minimises
    :math:`h_k(v; w^t) = F_k(v) + \frac{\lambda}{2}\|v - w^t\|^2` (Eq. (2)) with
    :math:`w^t` the global model the client received. In each local step the client updates
    its copy of :math:`w` on :math:`\nabla F_k(w)` and :math:`v_k` on the same minibatch:
    ``prox="gradient"``: :math:`v \leftarrow v - \eta(\nabla F_k(v) + \lambda(v - w^t))`
    (Algorithm 1); ``prox="exact"``: the gradient step on :math:`F_k` followed by the exact
    proximal step :math:`v \leftarrow (v + \eta\lambda w^t)/(1 + \eta\lambda)`, stable for any
    :math:`\lambda` (plain SGD only). :math:`\lambda = 0` is local training,
    :math:`\lambda \to \infty` the global model.

    References:
        Li, Hu, Beirami, Smith (2021), "Ditto: Fair and Robust Federated Learning Through
        Personalization", ICML, Eq. (2) and Algorithm 1.
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if prox not in DITTO_PROX:
        raise ValueError(f"prox={prox!r} is not one of {DITTO_PROX}")
    if prox == "exact" and (client_optimizer != "sgd" or client_momentum):
        raise ValueError("ditto prox='exact' needs client_optimizer='sgd' without momentum")
    server_lr = _positive("server_lr", server_lr)
    lr = _positive("client_lr", client_lr)
    lam = float(lam)

    def loss(z, f, global_params):
        data = f(z["global"])
        personal = f(z["personal"])
        if prox == "gradient":
            personal = personal + 0.5 * lam * tree_sq_dist(z["personal"], global_params)
        return data + personal, data

    def project(z, global_params):
        c = lr * lam
        v = jax.tree.map(lambda v, w: (v + c * w) / (1.0 + c), z["personal"], global_params)
        return {"global": z["global"], "personal": v}

    personal = Personal(
        "ditto",
        init=lambda params: params,
        start=lambda g, v: {"global": g, "personal": v},
        loss=loss,
        finish=lambda z, g, v: (z["global"], z["personal"]),
        model=lambda g, v: v,
        shared=lambda params: [True] * len(jax.tree.leaves(params)),
        project=project if prox == "exact" else None,
        reports_global=True,
    )
    algo = _common(
        "ditto",
        client_lr=lr, local_epochs=local_epochs, local_steps=local_steps,
        batch_size=batch_size, client_optimizer=client_optimizer,
        client_momentum=client_momentum, weighting=weighting,
        server_optimizer=optax.sgd(server_lr),
        extra_hparams=dict(server_lr=server_lr, lam=lam, prox=prox),
    )  # fmt: skip
    return algo._replace(personal=personal)


@register("apfl")
def apfl(
    client_lr: float = 0.1,
    local_epochs: int | None = 1,
    local_steps: int | list[int] | None = None,
    batch_size: int | None = 32,
    alpha: float = 0.5,
    adaptive_alpha: bool = True,
    server_lr: float = 1.0,
    client_optimizer: str = "sgd",
    client_momentum: float | None = None,
    weighting: str = "num_examples",
) -> Algorithm:
    r"""APFL: every client keeps a local model :math:`v_i` and a mixing weight
    :math:`\alpha_i`; its personalized model is :math:`\bar v_i = \alpha_i v_i +
    (1 - \alpha_i) w`. In each local step, on the same minibatch,
    :math:`w \leftarrow w - \eta \nabla f_i(w)`,
    :math:`v_i \leftarrow v_i - \eta \nabla_v f_i(\bar v_i)` and (``adaptive_alpha``)
    :math:`\alpha_i \leftarrow \Pi_{[0,1]}(\alpha_i - \eta \langle v_i - w,
    \nabla f_i(\bar v_i)\rangle)`; :math:`w` is sent and averaged. One objective gives all
    three gradients: :math:`f_i(w) + f_i(\alpha v + (1 - \alpha)\,\mathrm{sg}(w))`.
    Evaluation mixes the client's :math:`v_i, \alpha_i` with the current global model.

    References:
        Deng, Kamani, Mahdavi (2020), "Adaptive Personalized Federated Learning",
        arXiv:2003.13461, Algorithm 1 and Eq. (8) (the update of :math:`\alpha`).
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    server_lr = _positive("server_lr", server_lr)
    alpha0 = float(alpha)

    def mix(a, v, w):
        return jax.tree.map(lambda vi, wi: a * vi + (1.0 - a) * wi, v, w)

    def loss(z, f, global_params):
        del global_params
        data = f(z["global"])
        w = jax.lax.stop_gradient(z["global"])
        return data + f(mix(z["alpha"], z["personal"], w)), data

    def freeze_alpha(z, t, steps):
        del t, steps
        return {**jax.tree.map(lambda _: 1.0, z), "alpha": 0.0}

    def project(z, global_params):
        del global_params
        return {**z, "alpha": jnp.clip(z["alpha"], 0.0, 1.0)}

    personal = Personal(
        "apfl",
        init=lambda params: {"personal": params, "alpha": jnp.asarray(alpha0, jnp.float32)},
        start=lambda g, st: {"global": g, "personal": st["personal"], "alpha": st["alpha"]},
        loss=loss,
        finish=lambda z, g, st: (z["global"], {"personal": z["personal"], "alpha": z["alpha"]}),
        model=lambda g, st: mix(st["alpha"], st["personal"], g),
        shared=lambda params: [True] * len(jax.tree.leaves(params)),
        trainable=None if adaptive_alpha else freeze_alpha,
        project=project,
        reports_global=True,
    )
    algo = _common(
        "apfl",
        client_lr=client_lr, local_epochs=local_epochs, local_steps=local_steps,
        batch_size=batch_size, client_optimizer=client_optimizer,
        client_momentum=client_momentum, weighting=weighting,
        server_optimizer=optax.sgd(server_lr),
        extra_hparams=dict(server_lr=server_lr, alpha=alpha0, adaptive_alpha=adaptive_alpha),
    )  # fmt: skip
    return algo._replace(personal=personal)
