"""FLamby's initial weights (experiments/flamby_init.npz), as experiments/flamby.py uses them."""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _experiment(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stored_weights_are_pytorch_linear_draws():
    stored = np.load(ROOT / "experiments" / "flamby_init.npz")
    for name, d_in in (("heart", 13), ("tcga", 39)):
        for seed in (42, 43, 44, 45, 46):
            w, b = stored[f"{name}_{seed}_weight"], stored[f"{name}_{seed}_bias"]
            assert w.shape == (1, d_in) and b.shape == (1,) and w.dtype == np.float32
            assert np.abs(w).max() <= 1 / np.sqrt(d_in) and np.abs(b).max() <= 1 / np.sqrt(d_in)
    # torch.manual_seed(42); nn.Linear(39, 1) / nn.Linear(13, 1), identical in torch 1.13.1
    # (FLamby's era) and 2.13
    np.testing.assert_array_equal(
        stored["tcga_42_weight"][0, :3],
        np.float32([0.12242414057254791, 0.13290762901306152, -0.037513617426157]),
    )
    np.testing.assert_array_equal(stored["tcga_42_bias"], np.float32([-0.05050012469291687]))
    np.testing.assert_array_equal(
        stored["heart_42_weight"][0, :3],
        np.float32([0.2120448350906372, 0.230202779173851, -0.06497549265623093]),
    )
    try:
        import torch  # noqa: F401  (the bench extra)
    except ImportError:
        return
    assert _experiment("flamby_init").main(["--check"]) == 0


@pytest.mark.parametrize("name", ["heart", "tcga"])
def test_flamby_init_is_flambys_model(shared_data, name):
    """--init flamby: the model computes x . w + b with FLamby's w, b of that seed (heart
    disease: one logit z, outputs (0, z)); --init fljax: a draw from the seed."""
    flamby = _experiment("flamby")
    fed, _, _ = flamby.load_data(flamby.SETUPS[name], shared_data)
    model, init = flamby.model_and_init(name, fed, "flamby")
    stored = np.load(ROOT / "experiments" / "flamby_init.npz")
    x = np.asarray(fed.test.x[0, :5])
    z = x @ stored[f"{name}_43_weight"].T + stored[f"{name}_43_bias"]
    out = np.asarray(model.apply(init(43), jnp.asarray(x)))
    expected = np.concatenate([np.zeros_like(z), z], 1) if name == "heart" else z
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    model_j, init_j = flamby.model_and_init(name, fed, "fljax")
    assert model_j.apply(init_j(43), jnp.asarray(x)).shape == (5, fed.num_classes)
    with pytest.raises(ValueError, match="init='torch' is not one of"):
        flamby.model_and_init(name, fed, "torch")
