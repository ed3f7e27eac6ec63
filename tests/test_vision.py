"""Image models and their layers: the dot-product convolution against XLA's and Flax's,
published parameter counts, dropout, weights files, and a CNN round with each convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.models import conv2d, load_weights, max_pool, save_weights

CASES = [  # (H, W, Cin, Cout, kernel, stride, padding, groups)
    (9, 9, 1, 4, 3, 1, "SAME", 1), (9, 7, 4, 8, 3, 2, "SAME", 1), (9, 7, 4, 8, 5, 2, "VALID", 1),
    (8, 8, 6, 6, 3, 1, "SAME", 6), (8, 8, 6, 12, 5, 2, "SAME", 3), (10, 10, 3, 4, 1, 2, "SAME", 1),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_dot_convolution_equals_flax_conv_values_and_gradients(case):
    """conv="dot" (patches x kernel) and conv="xla" give nn.Conv's outputs and gradients, with
    nn.Conv's parameter names, shapes and initial values (checkpoints are interchangeable)."""
    h, w, ci, co, k, s, pad, g = case
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, h, w, ci)), jnp.float32)
    ref = nn.Conv(co, (k, k), strides=s, padding=pad, feature_group_count=g)
    params = ref.init(jax.random.key(0), x)
    for impl in fljax.models.CONV_IMPLS:
        mine = fljax.models.Conv(co, (k, k), s, pad, g, impl=impl)
        same = jax.tree.map(np.array_equal, params, mine.init(jax.random.key(0), x))
        assert all(jax.tree.leaves(same))

        def value_and_grads(m):
            loss = lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
            return jax.jit(lambda p, x: (m.apply(p, x), jax.grad(loss, (0, 1))(p, x)))

        got, want = value_and_grads(mine)(params, x), value_and_grads(ref)(params, x)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="conv="):
        conv2d(x, jnp.zeros((k, k, ci // g, co)), groups=g, impl="fft")


def test_max_pool_equals_flax_on_odd_sizes():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 9, 3)), jnp.float32)
    np.testing.assert_array_equal(max_pool(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("name,kw,count", [
    ("efficientnet_b0", {"num_classes": 1000}, 5_288_548),  # torchvision's efficientnet_b0
    ("resnet18", {"num_classes": 1000, "stem": "large"}, 11_689_512),  # torchvision resnet18
    ("resnet", {"num_classes": 10, "depth": 20}, 272_474),  # He et al.: ResNet-20 "0.27M"
    ("resnet8", {"num_classes": 10}, 78_042),
])  # fmt: skip
def test_image_models_have_the_published_parameter_counts(name, kw, count):
    """Group norm has batch norm's two parameters per channel, so the counts are the papers'
    (and torchvision's) exactly; shapes are traced only (nothing is computed)."""
    model = fljax.models.get(name, **kw)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert fljax.models.num_params(shapes) == count
    out = jax.eval_shape(lambda p: model.apply(p, jnp.zeros((2, 64, 64, 3))), shapes)
    assert out.shape == (2, kw["num_classes"])


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="depth=9"):
        fljax.models.get("resnet", num_classes=2, depth=9)
    with pytest.raises(ValueError, match="norm_groups=3"):
        fljax.models.get("resnet8", num_classes=2, norm_groups=3).init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 1)))  # fmt: skip
    with pytest.raises(ValueError, match="conv='fft'"):
        fljax.models.get("cnn", num_classes=2, conv="fft")
    with pytest.raises(ValueError, match="drop_path"):
        fljax.models.get("efficientnet_b0", num_classes=2, drop_path=1.0)


def test_efficientnet_dropout_and_weights_file(tmp_path):
    """Dropout and stochastic depth act only in training and need a key; EfficientNet-B0's
    weights go through a file the test writes (pretrained ones cannot be downloaded here) and
    come back into a fresh model with a new 3-class head kept."""
    model = fljax.models.get("efficientnet_b0", num_classes=3, dropout=0.5, drop_path=0.5,
                             conv="xla")  # the dropout under test does not depend on conv
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
    p = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def outputs(p, x):
        train = [model.apply(p, x, train=True, key=jax.random.key(i)) for i in (1, 2)]
        return model.apply(p, x), model.apply(p, x), *train

    plain, again, a, b = outputs(p, x)
    np.testing.assert_array_equal(plain, again)
    assert not np.allclose(a, b) and not np.allclose(a, plain)
    with pytest.raises(ValueError, match="needs a key"):
        jax.eval_shape(lambda p: model.apply(p, x, train=True), p)
    path = save_weights(tmp_path / "b0.npz", p)
    fresh = jax.jit(model.init)(jax.random.key(5), x)
    loaded = load_weights(path, fresh, exclude=["Dense_0"])  # the classifier head
    assert fljax.models.leaf_names(loaded) == fljax.models.leaf_names(p)
    for name, a, b, c in zip(fljax.models.leaf_names(p), jax.tree.leaves(loaded),
                             jax.tree.leaves(p), jax.tree.leaves(fresh), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, c if name.startswith("Dense_0/") else b)


def _tiny_images(clients=4, n=12, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, 8, 8, 1)).astype(np.float32) for _ in range(clients)]
    ys = [(x.mean(axis=(1, 2, 3)) > 0).astype(np.int32) for x in xs]
    return fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2, name="tiny")


def test_a_cnn_round_is_the_same_with_either_convolution():
    """FedAvg with the dot convolution ends where it does with XLA's (float rounding)."""
    fed = _tiny_images()
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=4)
    runs = {
        conv: fljax.simulate(algo, fljax.models.get("cnn", num_classes=2, features=(4,), dense=8,
                                                    conv=conv), fed, rounds=2,
                             clients_per_round=4)  # fmt: skip
        for conv in fljax.models.CONV_IMPLS
    }
    for a, b in zip(*(jax.tree.leaves(r.params) for r in runs.values()), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_weights_round_trip_strictly_with_named_errors(tmp_path):
    model = fljax.models.get("cnn", num_classes=3, features=(4,), dense=8)
    x = jnp.zeros((1, 8, 8, 1))
    params = model.init(jax.random.key(0), x)
    path = save_weights(tmp_path / "w.npz", params)
    fresh = model.init(jax.random.key(1), x)
    loaded = load_weights(path, fresh)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded, params)))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_weights(path, params)
    # a new head: a 5-class model takes the backbone, keeps its own initial head
    other = fljax.models.get("cnn", num_classes=5, features=(4,), dense=8)
    like = other.init(jax.random.key(2), x)
    with pytest.raises(ValueError, match=r"Dense_1/kernel has shape \(8, 3\)"):
        load_weights(path, like)
    mixed = load_weights(path, like, exclude=["Dense_1"])
    np.testing.assert_array_equal(mixed["Dense_1"]["kernel"], like["Dense_1"]["kernel"])
    np.testing.assert_array_equal(mixed["Conv_0"]["kernel"], params["Conv_0"]["kernel"])
    # missing, unexpected and non-finite leaves are each named
    broken = dict(np.load(path))
    del broken["Conv_0/kernel"]
    broken["extra/w"] = np.zeros(2)
    broken["Dense_1/bias"] = np.full(3, np.nan, np.float32)
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(ValueError) as err:
        load_weights(tmp_path / "broken.npz", fresh)
    for what in ("missing Conv_0/kernel", "unexpected extra/w", "Dense_1/bias has non-finite"):
        assert what in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "none.npz", fresh)
