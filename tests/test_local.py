"""The vmapped local-training loop: minibatch schedule, masking, and a NumPy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax.client import batch_indices, make_client_update, num_local_steps, plan_local_work
from tests.oracle import logistic_params, softmax_regression_grad


def test_every_epoch_visits_each_real_example_once():
    plan = plan_local_work(np.array([7, 10]), 10, local_epochs=3, local_steps=None, batch_size=3)
    assert plan.max_steps == 3 * 4  # ceil(10 / 3) = 4 steps per epoch for the largest client
    idx, mask = batch_indices(jax.random.key(0), jnp.int32(7), 10, plan)
    assert int(num_local_steps(jnp.int32(7), plan)) == 9  # 3 epochs x ceil(7 / 3)
    idx, mask = np.asarray(idx), np.asarray(mask)
    for e in range(3):
        rows = slice(3 * e, 3 * e + 3)
        seen = idx[rows][mask[rows]]
        assert sorted(seen.tolist()) == list(range(7))
    assert not mask[9:].any()  # masked no-op steps after the client's own work
    # different epochs are reshuffled
    assert idx[0:3][mask[0:3]].tolist() != idx[3:6][mask[3:6]].tolist()


def test_fixed_local_steps_cycle_through_epochs():
    plan = plan_local_work(np.array([5, 40]), 40, local_epochs=None, local_steps=7, batch_size=2)
    assert plan.max_steps == 7 and plan.num_epochs == 3  # ceil(7 / ceil(5 / 2))
    idx, mask = batch_indices(jax.random.key(1), jnp.int32(5), 40, plan)
    assert int(num_local_steps(jnp.int32(5), plan)) == 7
    assert np.asarray(mask).any(axis=1).all()
    assert sorted(np.asarray(idx)[:3][np.asarray(mask)[:3]].tolist()) == list(range(5))


def test_plan_requires_exactly_one_of_epochs_and_steps():
    with pytest.raises(ValueError, match="exactly one"):
        plan_local_work(np.array([5]), 5, local_epochs=1, local_steps=3, batch_size=2)


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_client_update_matches_numpy_sgd(momentum):
    """Local minibatch SGD (heavy-ball momentum as optax.sgd: v <- g + m v, w <- w - lr v)
    on softmax regression, with padding and masked no-op steps, equals a NumPy loop."""
    rng = np.random.default_rng(0)
    n_max, n, d, k, lr = 9, 5, 3, 3, 0.4
    x = np.zeros((n_max, d), np.float32)
    x[:n] = rng.normal(size=(n, d))
    y = np.zeros(n_max, np.int32)
    y[:n] = rng.integers(0, k, n)
    plan = plan_local_work(
        np.array([n, n_max]), n_max, local_epochs=3, local_steps=None, batch_size=2
    )
    model = fljax.models.get("logistic", num_classes=k)
    params = model.init(jax.random.key(1), jnp.zeros((1, d)))
    opt = optax.sgd(lr, momentum=momentum)
    update = jax.jit(make_client_update(model, "classification", opt, plan))
    key = jax.random.key(7)
    out = update(params, jnp.asarray(x), jnp.asarray(y), jnp.int32(n), key)

    idx, mask = map(np.asarray, batch_indices(jax.random.split(key)[0], jnp.int32(n), n_max, plan))
    w, b = logistic_params(params)
    w0, b0 = w.copy(), b.copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    steps = 3 * int(np.ceil(n / 2))
    for t in range(steps):
        rows = idx[t][mask[t]]
        gw, gb = softmax_regression_grad(w, b, x[rows].astype(np.float64), y[rows], k)
        if momentum:
            vw, vb = gw + momentum * vw, gb + momentum * vb
            gw, gb = vw, vb
        w, b = w - lr * gw, b - lr * gb
    assert int(out.num_steps) == steps < plan.max_steps
    np.testing.assert_allclose(out.delta["Dense_0"]["kernel"], w - w0, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.delta["Dense_0"]["bias"], b - b0, rtol=1e-4, atol=1e-6)


def test_regularizer_enters_the_local_objective():
    """A proximal term mu/2 ||w - w_g||^2 with zero data shrinks nothing; with data it pulls the
    local model back: delta_prox = delta of GD on (loss + mu/2 ||w - w_g||^2)."""
    model = fljax.models.get("logistic", num_classes=2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
    y = jnp.array([0, 1, 1, 0], jnp.int32)
    plan = plan_local_work(np.array([4]), 4, local_epochs=2, local_steps=None, batch_size=None)
    mu, lr = 0.5, 0.1

    def prox(p, g, s, server):
        return (
            0.5
            * mu
            * sum(
                jnp.sum((a - c) ** 2)
                for a, c in zip(jax.tree.leaves(p), jax.tree.leaves(g), strict=True)
            )
        )

    out = make_client_update(model, "classification", optax.sgd(lr), plan, prox)(
        params, x, y, jnp.int32(4), jax.random.key(0)
    )
    w, b = logistic_params(params)
    w0, b0 = w.copy(), b.copy()
    for _ in range(2):
        gw, gb = softmax_regression_grad(w, b, np.asarray(x, np.float64), np.asarray(y), 2)
        w, b = w - lr * (gw + mu * (w - w0)), b - lr * (gb + mu * (b - b0))
    np.testing.assert_allclose(out.delta["Dense_0"]["kernel"], w - w0, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_max", [7, 600])  # packed single-sort path and key-value path
def test_shuffle_is_a_uniform_permutation_of_real_examples(n_max):
    from fljax.client import shuffle_real_first

    n = 5
    keys = jax.random.split(jax.random.key(0), 6000)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: shuffle_real_first(k, n, n_max)))(keys))
    assert all(sorted(p[:n].tolist()) == list(range(n)) for p in perms[:200])
    np.testing.assert_array_equal(
        perms[:, n:], np.broadcast_to(np.arange(n, n_max), (6000, n_max - n))
    )
    # every (position, example) cell is hit 1/n of the time: chi-square over the 5x5 table
    counts = np.stack([np.bincount(perms[:, j], minlength=n)[:n] for j in range(n)])
    expected = 6000 / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45.0  # 16 dof (rows and columns fixed): p ~ 1e-4
