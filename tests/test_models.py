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


def test_one_logit_logistic_is_sigmoid_bce():
    """one_logit=True: params are nn.Linear(d, 1)'s; cross-entropy, its gradient and the
    predicted class are those of sigmoid(w.x + b) with binary cross-entropy (NumPy)."""
    import numpy as np

    from fljax.client import batch_loss_fn

    model = fljax.models.get("logistic", num_classes=2, init="torch", one_logit=True)
    x = jax.random.normal(jax.random.key(1), (6, 5))
    y = jnp.array([0, 1, 1, 0, 1, 0])
    params = model.init(jax.random.key(0), x[:1])
    assert jax.tree.map(jnp.shape, params) == {"Dense_0": {"bias": (1,), "kernel": (5, 1)}}
    loss = batch_loss_fn("classification")

    def f(p):
        return loss(model.apply(p, x), y, jnp.ones(6, bool))

    w, b = np.asarray(params["Dense_0"]["kernel"][:, 0]), float(params["Dense_0"]["bias"][0])
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = xn @ w + b
    s = 1 / (1 + np.exp(-z))
    bce = -np.mean(yn * np.log(s) + (1 - yn) * np.log(1 - s))
    grad = jax.grad(f)(params)["Dense_0"]
    np.testing.assert_allclose(float(f(params)), bce, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad["kernel"][:, 0]), xn.T @ (s - yn) / 6, atol=1e-6)
    np.testing.assert_allclose(float(grad["bias"][0]), np.mean(s - yn), atol=1e-6)
    pred = jnp.argmax(model.apply(params, x), -1)
    np.testing.assert_array_equal(np.asarray(pred), (z > 0).astype(int))
    with pytest.raises(ValueError, match="one_logit=True needs num_classes=2"):
        fljax.models.get("logistic", num_classes=3, one_logit=True)
