"""Flax models as two pure functions over a plain parameter dict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fljax._base import lookup

PyTree = Any

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu, "silu": nn.silu}


class Model(NamedTuple):
    """A model: ``init(key, sample[B, ...]) -> params`` and
    ``apply(params, x[B, ...], *, train, key) -> out[B, O]``.

    ``params`` is a plain pytree (a dict of arrays), so stacking it over clients and ``vmap``
    over the stack is trivial.
    """

    init: Callable[..., PyTree]
    apply: Callable[..., jax.Array]
    name: str = "model"


def from_linen(module: nn.Module, name: str | None = None) -> Model:
    """Wraps a Flax linen module (no mutable collections) as a :class:`Model`."""

    def init(key, sample):
        return module.init(key, jnp.asarray(sample))["params"]

    def apply(params, x, *, train: bool = False, key=None):
        del train, key
        return module.apply({"params": params}, x)

    return Model(init, apply, name or type(module).__name__.lower())


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

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
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

    @nn.compact
    def __call__(self, x):
        if x.ndim == 3:  # [B, H, W] grey images
            x = x[..., None]
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(self.num_classes)(x)


def _check_classes(num_classes):
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_init(init):
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {INITS}")
    return init


def logistic(num_classes: int, init: str = "lecun") -> Model:
    """Multinomial logistic regression (one output: linear regression or a linear Cox model):
    one dense layer on flattened inputs. ``init``: ``"lecun"`` (Flax) or ``"torch"``."""
    return from_linen(_Logistic(_check_classes(num_classes), _check_init(init)), "logistic")


def mlp(
    num_classes: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    init: str = "lecun",
) -> Model:
    """Multilayer perceptron with ``hidden`` widths and ``activation`` between layers."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    if any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden}")
    return from_linen(
        _MLP(
            _check_classes(num_classes),
            tuple(int(h) for h in hidden),
            activation,
            _check_init(init),
        ),
        "mlp",
    )


def cnn(num_classes: int, features: Sequence[int] = (32, 64), dense: int = 128) -> Model:
    """Small CNN: [3x3 conv, ReLU, 2x2 max-pool] per entry of ``features``, dense, output."""
    return from_linen(
        _CNN(_check_classes(num_classes), tuple(int(f) for f in features), int(dense)), "cnn"
    )


_REGISTRY: dict[str, Callable[..., Model]] = {"logistic": logistic, "mlp": mlp, "cnn": cnn}


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
