"""Flax models as two pure functions over a plain parameter dict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fljax._base import lookup
from fljax.models._layers import Conv, _check_impl, max_pool
from fljax.models._vision import RESNET_STAGES, _EfficientNet, _ResNet

PyTree = Any

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu, "silu": nn.silu}


class Model(NamedTuple):
    """A model: ``init(key, sample[B, ...]) -> params`` and
    ``apply(params, x[B, ...], *, train, key) -> out[B, O]``.

    ``params`` is a plain pytree (a dict of arrays), so stacking it over clients and ``vmap``
    over the stack is trivial.

    Models with batch statistics (batch norm) keep them in the same pytree,
    ``{"params": ..., "batch_stats": ...}``, and give ``apply_train(params, x, mask, key) ->
    (out, batch_stats)``: the forward pass in training mode (normalising with the statistics
    of the batch's real examples, ``mask``) and the updated running statistics. ``apply``
    with ``train=False`` normalises with the running statistics; local training replaces the
    ``batch_stats`` leaves after each step instead of descending on them.
    """

    init: Callable[..., PyTree]
    apply: Callable[..., jax.Array]
    name: str = "model"
    apply_train: Callable[..., tuple[jax.Array, PyTree]] | None = None


def from_linen(module: nn.Module, name: str | None = None) -> Model:
    """Wraps a Flax linen module (no mutable collections) as a :class:`Model`."""

    def init(key, sample):
        return module.init(key, jnp.asarray(sample))["params"]

    def apply(params, x, *, train: bool = False, key=None):
        del train, key
        return module.apply({"params": params}, x)

    return Model(init, apply, name or type(module).__name__.lower())


def from_linen_bn(module: nn.Module, name: str) -> Model:
    """Wraps a Flax linen module whose ``__call__(x, train, mask)`` uses ``nn.BatchNorm``:
    params ``{"params", "batch_stats"}`` and :attr:`Model.apply_train`."""

    def init(key, sample):
        v = module.init(key, jnp.asarray(sample), train=False)
        return {"params": v["params"], "batch_stats": v["batch_stats"]}

    def apply_train(params, x, mask=None, key=None):
        del key
        out, new = module.apply(params, x, train=True, mask=mask, mutable=["batch_stats"])
        return out, new["batch_stats"]

    def apply(params, x, *, train: bool = False, key=None):
        if train:  # batch statistics; the updated running averages are dropped
            return apply_train(params, x, key=key)[0]
        return module.apply(params, x, train=False)

    return Model(init, apply, name, apply_train)


def from_linen_dropout(module: nn.Module, name: str) -> Model:
    """Wraps a Flax linen module whose ``__call__(x, train)`` uses ``nn.Dropout``: ``apply``
    with ``train=True`` drops with ``key`` (required), with ``train=False`` it is the
    deterministic forward pass."""

    def init(key, sample):
        return module.init(key, jnp.asarray(sample), train=False)["params"]

    def apply(params, x, *, train: bool = False, key=None):
        if not train:
            return module.apply({"params": params}, x, train=False)
        if key is None:
            raise ValueError(f"{name}: apply(train=True) needs a key for dropout")
        return module.apply({"params": params}, x, train=True, rngs={"dropout": key})

    return Model(init, apply, name)


INITS = ("lecun", "torch")


def _dense(features: int, fan_in: int, init: str) -> nn.Dense:
    """Flax's default (lecun-normal kernel, zero bias) or PyTorch's ``nn.Linear`` default:
    kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for parity with torch baselines."""
    if init == "lecun":
        return nn.Dense(features)
    bound = 1.0 / float(fan_in) ** 0.5

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.Dense(features, kernel_init=uniform, bias_init=uniform)


class _Logistic(nn.Module):
    num_classes: int
    init_scheme: str = "lecun"
    one_logit: bool = False

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        if self.one_logit:  # binary: logits (0, z), softmax = (1 - sigmoid(z), sigmoid(z))
            z = _dense(1, x.shape[-1], self.init_scheme)(x)
            return jnp.concatenate([jnp.zeros_like(z), z], axis=-1)
        return _dense(self.num_classes, x.shape[-1], self.init_scheme)(x)


class _MLP(nn.Module):
    num_classes: int
    hidden: Sequence[int]
    activation: str
    init_scheme: str = "lecun"

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = ACTIVATIONS[self.activation](_dense(width, x.shape[-1], self.init_scheme)(x))
        return _dense(self.num_classes, x.shape[-1], self.init_scheme)(x)


class _CNN(nn.Module):
    num_classes: int
    features: Sequence[int]
    dense: int
    conv: str = "dot"

    @nn.compact
    def __call__(self, x):
        if x.ndim == 3:  # [B, H, W] grey images
            x = x[..., None]
        for f in self.features:
            x = max_pool(nn.relu(Conv(f, impl=self.conv)(x)))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(self.num_classes)(x)


class _MLPBN(nn.Module):
    num_classes: int
    hidden: Sequence[int]
    activation: str
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        x = x.reshape((x.shape[0], -1))
        m = None if mask is None else mask[:, None]
        for width in self.hidden:
            x = nn.Dense(width)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x, mask=m)
            x = ACTIVATIONS[self.activation](x)
        return nn.Dense(self.num_classes)(x)


class _CNNBN(nn.Module):
    num_classes: int
    features: Sequence[int]
    dense: int
    momentum: float = 0.9
    conv: str = "dot"

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        if x.ndim == 3:
            x = x[..., None]
        for f in self.features:
            x = Conv(f, impl=self.conv)(x)
            m = None if mask is None else jnp.broadcast_to(mask[:, None, None, None], x.shape)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x, mask=m)
            x = max_pool(nn.relu(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.dense)(x)
        m = None if mask is None else mask[:, None]
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x, mask=m))
        return nn.Dense(self.num_classes)(x)


def _check_classes(num_classes):
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    return activation


def _check_hidden(hidden):
    if any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden}")
    return tuple(int(h) for h in hidden)


def _check_init(init):
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {INITS}")
    return init


def logistic(num_classes: int, init: str = "lecun", one_logit: bool = False) -> Model:
    """Multinomial logistic regression (one output: linear regression or a linear Cox model):
    one dense layer on flattened inputs. ``init``: ``"lecun"`` (Flax) or ``"torch"``.

    ``one_logit=True`` (``num_classes=2`` only) is binary logistic regression as PyTorch
    baselines write it, ``sigmoid(w.x + b)`` with one weight vector (FLamby's Fed-Heart-Disease
    model, ``nn.Linear(d, 1)``): the model outputs the logits ``(0, z)``, whose softmax is
    ``(1 - sigmoid(z), sigmoid(z))``, so the cross-entropy is the binary cross-entropy of
    ``z``, its gradient in ``z`` is ``sigmoid(z) - y``, and the predicted class is ``z > 0``.
    """
    num_classes = _check_classes(num_classes)
    if one_logit and num_classes != 2:
        raise ValueError(f"one_logit=True needs num_classes=2 (binary), got {num_classes}")
    return from_linen(_Logistic(num_classes, _check_init(init), bool(one_logit)), "logistic")


def mlp(
    num_classes: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    init: str = "lecun",
) -> Model:
    """Multilayer perceptron with ``hidden`` widths and ``activation`` between layers."""
    return from_linen(
        _MLP(
            _check_classes(num_classes),
            _check_hidden(hidden),
            _check_activation(activation),
            _check_init(init),
        ),
        "mlp",
    )


def cnn(
    num_classes: int, features: Sequence[int] = (32, 64), dense: int = 128, conv: str = "dot"
) -> Model:
    """Small CNN: [3x3 conv, ReLU, 2x2 max-pool] per entry of ``features``, dense, output.

    ``conv``: ``"dot"`` (patches times kernel, fast under ``vmap`` and in loops) or ``"xla"``
    (``lax.conv_general_dilated``); same parameters, same values up to float rounding
    (:mod:`fljax.models._layers`)."""
    module = _CNN(
        _check_classes(num_classes), tuple(int(f) for f in features), int(dense),
        _check_impl(conv),
    )  # fmt: skip
    return from_linen(module, "cnn")


def _check_momentum(momentum):
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return float(momentum)


def mlp_bn(
    num_classes: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    momentum: float = 0.9,
) -> Model:
    """MLP with batch norm after every hidden dense layer (dense, BN, activation); running
    statistics with ``momentum``. The FedBN model for tabular data (Li et al. 2021, ICLR)."""
    module = _MLPBN(
        _check_classes(num_classes), _check_hidden(hidden), _check_activation(activation),
        _check_momentum(momentum),
    )  # fmt: skip
    return from_linen_bn(module, "mlp_bn")


def cnn_bn(
    num_classes: int,
    features: Sequence[int] = (32, 64),
    dense: int = 128,
    momentum: float = 0.9,
    conv: str = "dot",
) -> Model:
    """:func:`cnn` with batch norm after every convolution and the hidden dense layer (the
    FedBN paper's image models put BN after each conv / fc layer)."""
    module = _CNNBN(
        _check_classes(num_classes), tuple(int(f) for f in features), int(dense),
        _check_momentum(momentum), _check_impl(conv),
    )  # fmt: skip
    return from_linen_bn(module, "cnn_bn")


def resnet(
    num_classes: int,
    depth: int = 8,
    width: int | None = None,
    norm_groups: int = 8,
    conv: str = "dot",
    stem: str = "small",
) -> Model:
    """ResNet (He et al. 2016) of basic blocks with group norm (Wu & He 2018) instead of batch
    norm. ``depth`` 8, 14, 20, 32: the CIFAR ResNets (6n + 2 layers, 3 stages of n blocks,
    widths ``width`` x 1, 2, 4, default 16); 18, 34: the ImageNet ones (4 stages, default width
    64). ``stem``: ``"small"`` (one 3x3 convolution, for images up to ~64 px) or ``"large"``
    (7x7 stride 2 and a max-pool). ``norm_groups`` must divide every layer's width."""
    if depth not in RESNET_STAGES:
        raise ValueError(f"depth={depth!r} is not one of {sorted(RESNET_STAGES)}")
    if stem not in ("small", "large"):
        raise ValueError(f"stem={stem!r} is not one of ('small', 'large')")
    stages = RESNET_STAGES[depth]
    width = int(width) if width is not None else (16 if len(stages) == 3 else 64)
    module = _ResNet(_check_classes(num_classes), stages, width, int(norm_groups),
                     _check_impl(conv), stem)  # fmt: skip
    return from_linen(module, f"resnet{int(depth)}")


def resnet8(
    num_classes: int, width: int = 16, norm_groups: int = 8, conv: str = "dot"
) -> Model:
    """:func:`resnet` with ``depth=8`` (3 stages of one block; 78 k parameters at width 16)."""
    return resnet(num_classes, 8, width, norm_groups, conv, "small")


def resnet18(
    num_classes: int, width: int = 64, norm_groups: int = 8, conv: str = "dot", stem: str = "small"
) -> Model:
    """:func:`resnet` with ``depth=18`` (4 stages of two blocks; 11 M parameters at width 64)."""
    return resnet(num_classes, 18, width, norm_groups, conv, stem)


def efficientnet_b0(
    num_classes: int,
    norm_groups: int = 8,
    conv: str = "dot",
    dropout: float = 0.2,
    drop_path: float = 0.2,
) -> Model:
    """EfficientNet-B0 (Tan & Le 2019, Table 1; 5.3 M parameters at 1000 classes) with group
    norm: the architecture of FLamby's Fed-ISIC2019 recipe, trained from scratch here or
    started from converted weights (:func:`fljax.models.load_weights`). ``dropout`` before the
    classifier and ``drop_path`` (stochastic depth, growing linearly to this rate over the
    blocks) act when ``apply(train=True, key=...)``."""
    for name, rate in (("dropout", dropout), ("drop_path", drop_path)):
        if not 0 <= rate < 1:
            raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    module = _EfficientNet(_check_classes(num_classes), int(norm_groups), _check_impl(conv),
                           float(dropout), float(drop_path))  # fmt: skip
    return from_linen_dropout(module, "efficientnet_b0")


_REGISTRY: dict[str, Callable[..., Model]] = {
    "logistic": logistic,
    "mlp": mlp,
    "cnn": cnn,
    "mlp_bn": mlp_bn,
    "cnn_bn": cnn_bn,
    "resnet": resnet,
    "resnet8": resnet8,
    "resnet18": resnet18,
    "efficientnet_b0": efficientnet_b0,
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Model:
    """Builds the model ``name`` with its hyperparameters.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> m = get("mlp", num_classes=2, hidden=(8,))
        >>> p = m.init(jax.random.key(0), jnp.zeros((1, 3)))
        >>> m.apply(p, jnp.zeros((5, 3))).shape
        (5, 2)
    """
    fn = lookup("model", _REGISTRY, name, kwargs)
    return fn(**kwargs)


def num_params(params: PyTree) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(jnp.size(p) for p in jax.tree.leaves(params)))


def param_bytes(params: PyTree) -> int:
    """Bytes of a dense encoding of ``params`` (sum of ``size * itemsize``)."""
    return int(sum(jnp.size(p) * jnp.dtype(p.dtype).itemsize for p in jax.tree.leaves(params)))
