import jax
import jax.numpy as jnp
import pytest

import fljax


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("logistic", {}, (5, 7)),
        ("mlp", {"hidden": (16, 8)}, (5, 7)),
        ("cnn", {"features": (4,), "dense": 8}, (5, 8, 8)),
        ("cnn", {"features": (4, 4), "dense": 8}, (5, 8, 8, 3)),
    ],
)
def test_models_output_logits(name, kwargs, shape):
    model = fljax.models.get(name, num_classes=3, **kwargs)
    params = model.init(jax.random.key(0), jnp.zeros((1, *shape[1:])))
    assert isinstance(params, dict)
    assert model.apply(params, jnp.ones(shape)).shape == (5, 3)
    # a plain pytree: vmap over stacked params works
    stacked = jax.tree.map(lambda p: jnp.stack([p, p]), params)
    out = jax.vmap(model.apply, in_axes=(0, None))(stacked, jnp.ones(shape))
    assert out.shape == (2, 5, 3)


def test_model_bad_hyperparameters():
    with pytest.raises(ValueError, match="num_classes"):
        fljax.models.get("mlp", num_classes=0)
    with pytest.raises(ValueError, match="activation"):
        fljax.models.get("mlp", num_classes=2, activation="swishy")


def test_param_counting():
    model = fljax.models.get("mlp", num_classes=2, hidden=(64, 64))
    params = model.init(jax.random.key(0), jnp.zeros((1, 30)))
    n = 30 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2
    assert fljax.models.num_params(params) == n
    assert fljax.models.param_bytes(params) == 4 * n


def test_torch_init_matches_pytorch_linear_default():
    model = fljax.models.get("logistic", num_classes=1, init="torch")
    ws = [model.init(jax.random.key(s), jnp.zeros((1, 39)))["Dense_0"] for s in range(20)]
    kernel = jnp.concatenate([w["kernel"].ravel() for w in ws])
    bias = jnp.concatenate([w["bias"] for w in ws])
    bound = 1 / jnp.sqrt(39.0)
    assert float(jnp.abs(kernel).max()) <= bound and float(jnp.abs(bias).max()) <= bound
    assert float(jnp.abs(bias).mean()) > 0.3 * bound  # bias drawn too, not zero
    # U(-b, b) has variance b^2 / 3
    assert abs(float(kernel.var()) - float(bound**2 / 3)) < 0.15 * float(bound**2 / 3)
    with pytest.raises(ValueError, match="init"):
        fljax.models.get("mlp", num_classes=2, init="xavier")
