"""Compressors: exact selection, unbiasedness, error feedback, exact byte accounting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax import compress


def _apply(c, tree, key=0, state=None):
    state = c.transform.init(tree) if state is None else state
    return c.transform.update(tree, state, key=jax.random.key(key))


def test_topk_keeps_exactly_the_k_largest_magnitudes():
    rng = np.random.default_rng(0)
    tree = {"a": jnp.asarray(rng.normal(size=(7, 5))), "b": jnp.asarray(rng.normal(size=9))}
    out, _ = _apply(compress.topk(fraction=0.2), tree)
    flat = np.concatenate([np.ravel(tree["a"]), tree["b"]])
    got = np.concatenate([np.ravel(out["a"]), out["b"]])
    k = math.ceil(0.2 * 44)
    top = np.argsort(-np.abs(flat))[:k]
    np.testing.assert_array_equal(np.flatnonzero(got), np.sort(top))
    np.testing.assert_array_equal(got[top], flat[top])


@pytest.mark.parametrize(
    "c", [compress.randk(fraction=0.25), compress.qsgd(levels=2)], ids=["randk", "qsgd"]
)
def test_unbiased_compressors_are_unbiased(c):
    v = jnp.asarray(np.random.default_rng(1).normal(size=16), jnp.float32)
    draws = 20000
    outs = jax.vmap(lambda k: c.transform.update(v, c.transform.init(v), key=k)[0])(
        jax.random.split(jax.random.key(0), draws)
    )
    mean, se = outs.mean(0), outs.std(0) / np.sqrt(draws)
    assert c.unbiased
    assert np.all(np.abs(mean - v) <= 5 * se + 1e-6)  # 5 standard errors per coordinate
    assert not np.allclose(outs[0], v)  # it does compress


def test_qsgd_levels_and_sign_scale():
    v = jnp.array([3.0, -4.0, 0.0])
    out, _ = _apply(compress.qsgd(levels=4), v)
    # |Q(v_i)| is ||v|| * l / s with l an integer level
    levels = np.asarray(jnp.abs(out)) / 5.0 * 4
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)
    assert np.all(np.sign(out) == np.sign(v))
    s, _ = _apply(compress.sign(), v)
    np.testing.assert_allclose(s, [7 / 3, -7 / 3, 0.0], rtol=1e-6)


def test_error_feedback_residual_plus_sent_is_input_plus_old_residual():
    c = compress.get("topk", fraction=0.3, error_feedback=True)
    rng = np.random.default_rng(2)
    v = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}
    state = c.transform.init(v)
    for step in range(3):
        old = state[0].residual
        sent, state = c.transform.update(v, state, key=jax.random.key(step))
        lhs = jax.tree.map(jnp.add, state[0].residual, sent)
        rhs = jax.tree.map(jnp.add, v, old)
        np.testing.assert_array_equal(lhs["w"], rhs["w"])  # exactly: top-k keeps or zeroes


def test_bits_match_hand_computation():
    params = {"kernel": jnp.zeros((30, 2)), "bias": jnp.zeros(2)}  # d = 62
    assert compress.topk(fraction=0.1).bits(params) == 7 * (32 + 6)  # k = ceil(6.2), log2 62
    assert compress.randk(k=10).bits(params) == 32 * 10 + 32
    assert compress.qsgd(levels=4).bits(params) == 32 + 62 * (1 + 3)  # ceil(log2 5) = 3
    assert compress.sign().bits(params) == 62 + 32
    with pytest.raises(ValueError, match="fraction"):
        compress.topk(fraction=1.5).bits(params)
    with pytest.raises(ValueError, match="qsgd"):
        compress.get("qsgd", levls=3)


def test_simulate_counts_compressed_bytes_and_keeps_residuals_per_client(breast_cancer_fed):
    fed = breast_cancer_fed
    model = fljax.models.get("logistic", num_classes=2)  # 30 x 2 + 2 = 62 parameters
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    c = compress.get("topk", fraction=0.1, error_feedback=True)
    res = fljax.simulate(
        algo, model, fed, rounds=4, clients_per_round=3, eval_every=2, compression=c
    )
    message = math.ceil(7 * (32 + 6) / 8)  # 34 bytes instead of 248
    assert res.history[-1]["bytes_up"] == 4 * 3 * message
    assert res.history[-1]["bytes_down"] == 4 * 3 * 62 * 4
    assert res.history[-1]["compression_ratio"] == pytest.approx(62 * 32 / 266)
    residual = res.state.client_transform_states.inner[1][0].residual["Dense_0"]["kernel"]
    picked = np.unique(res.selected)
    never = np.setdiff1d(np.arange(fed.num_clients), picked)
    assert np.all(np.asarray(residual)[never] == 0)  # untouched clients keep a zero residual
    assert np.all(np.abs(np.asarray(residual)[picked]).sum(axis=(1, 2)) > 0)
    with pytest.raises(ValueError, match="compression"):
        fljax.simulate(
            fljax.algorithms.get("cyclic"), model, fed, rounds=1, clients_per_round=2, compression=c
        )


def test_compressed_fedavg_still_learns(breast_cancer_fed):
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    for c in (compress.get("topk", fraction=0.2, error_feedback=True), compress.qsgd(levels=8)):
        res = fljax.simulate(
            algo,
            model,
            breast_cancer_fed,
            rounds=20,
            clients_per_round=8,
            eval_every=20,
            compression=c,
        )
        assert res.final_metrics["test_accuracy"] > 0.9, c.name


def test_sparsifier_needs_exactly_one_of_fraction_and_k():
    params = {"w": jnp.zeros(10)}
    for kwargs in ({}, {"fraction": 0.1, "k": 2}):
        with pytest.raises(ValueError, match="exactly one of fraction and k"):
            compress.topk(**kwargs).bits(params)


def test_powersgd_is_exact_on_low_rank_matrices_and_counts_factors():
    rng = np.random.default_rng(3)
    low = rng.normal(size=(12, 2)) @ rng.normal(size=(2, 9))  # rank 2
    tree = {"w": jnp.asarray(low, jnp.float32), "b": jnp.asarray(rng.normal(size=9), jnp.float32)}
    c = compress.powersgd(rank=2)
    out, state = _apply(c, tree)
    np.testing.assert_allclose(out["w"], low, rtol=1e-4, atol=1e-4)  # one power step suffices
    np.testing.assert_array_equal(out["b"], tree["b"])  # vectors go dense
    assert state.q[1].shape == (9, 2) and state.q[0] == ()  # leaves sorted: b, w
    assert c.bits(tree) == 32 * 2 * (12 + 9) + 32 * 9
    full = rng.normal(size=(12, 9)).astype(np.float32)
    approx, _ = _apply(c, {"w": jnp.asarray(full)})
    err = np.linalg.norm(approx["w"] - full) / np.linalg.norm(full)
    assert 0 < err < 1  # a real, lossy rank-2 approximation


def test_selective_sharing_sends_only_matching_leaves(breast_cancer_fed):
    params = {
        "Dense_0": {"kernel": jnp.ones((30, 8)), "bias": jnp.ones(8)},
        "Dense_1": {"kernel": jnp.ones((8, 2)), "bias": jnp.ones(2)},
    }
    c = compress.selective(shared="Dense_0/.*")
    out, _ = _apply(c, params)
    assert float(jnp.sum(out["Dense_1"]["kernel"])) == 0.0
    np.testing.assert_array_equal(out["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    assert c.bits(params) == 32 * (30 * 8 + 8)
    with pytest.raises(ValueError, match="matches no parameter"):
        _apply(compress.selective(shared="Conv_9/.*"), params)
    # in a run, the unshared head keeps its initial value on the server
    model = fljax.models.get("mlp", num_classes=2, hidden=(8,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    p0 = model.init(jax.random.key(0), breast_cancer_fed.sample())
    res = fljax.simulate(
        algo, model, breast_cancer_fed, rounds=2, clients_per_round=4, params=p0, compression=c
    )
    np.testing.assert_array_equal(res.params["Dense_1"]["kernel"], p0["Dense_1"]["kernel"])
    assert not np.array_equal(res.params["Dense_0"]["kernel"], p0["Dense_0"]["kernel"])


def test_error_feedback_uses_contractive_variants():
    v = jnp.asarray(np.random.default_rng(4).normal(size=64), jnp.float32)
    ef_rand = compress.get("randk", fraction=0.25, error_feedback=True)
    assert ef_rand.hparams["scaled"] is False
    out, _ = _apply(ef_rand, v)
    kept = np.flatnonzero(np.asarray(out))
    np.testing.assert_array_equal(np.asarray(out)[kept], np.asarray(v)[kept])  # no d/k scale
    ef_q = compress.get("qsgd", levels=4, error_feedback=True)
    plain, _ = _apply(compress.qsgd(levels=4), v, key=5)
    shrunk, _ = _apply(ef_q, v, key=5)
    omega = min(64 / 16, 8 / 4)
    # same draw, divided by 1 + omega: ||C(v) - v|| < ||v|| (contractive)
    np.testing.assert_allclose(shrunk, np.asarray(plain) / (1 + omega), rtol=1e-5)
    assert np.linalg.norm(np.asarray(shrunk) - np.asarray(v)) < np.linalg.norm(v)


def test_downlink_compression_tracks_the_server_model(breast_cancer_fed):
    fed = breast_cancer_fed
    model = fljax.models.get("logistic", num_classes=2)  # 62 parameters
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    p0 = model.init(jax.random.key(0), fed.sample())
    args = dict(rounds=6, clients_per_round=4, eval_every=3, params=p0)
    plain = fljax.simulate(algo, model, fed, **args)
    # sending the whole gap densely is the identity: same run up to float rounding
    dense = fljax.simulate(algo, model, fed, downlink=compress.selective(".*"), **args)
    for a, b in zip(jax.tree.leaves(dense.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    top = fljax.simulate(algo, model, fed, downlink=compress.topk(fraction=0.2), **args)
    message = math.ceil(13 * (32 + 6) / 8)  # k = ceil(0.2 * 62) = 13
    assert top.history[-1]["bytes_down"] == 6 * fed.num_clients * message
    assert top.history[-1]["bytes_up"] == plain.history[-1]["bytes_up"]
    # clients train from x_hat, which lags the server model by the untransmitted gap
    gap = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(
            jax.tree.leaves(top.params), jax.tree.leaves(top.state.broadcast), strict=True
        )
    ]
    assert 0 < max(gap)
    # ... and since clients start from x_hat, the trajectory differs from plain FedAvg
    assert (
        max(
            np.abs(np.asarray(a) - np.asarray(b)).max()
            for a, b in zip(jax.tree.leaves(top.params), jax.tree.leaves(plain.params), strict=True)
        )
        > 1e-3
    )
    long = fljax.simulate(
        algo,
        model,
        fed,
        rounds=30,
        clients_per_round=8,
        eval_every=30,
        downlink=compress.topk(fraction=0.2),
    )
    assert long.final_metrics["test_accuracy"] > 0.9


def test_downlink_rejects_error_feedback(breast_cancer_fed):
    model = fljax.models.get("logistic", num_classes=2)
    with pytest.raises(ValueError, match="error_feedback=False"):
        fljax.simulate(
            fljax.algorithms.get("fedavg"),
            model,
            breast_cancer_fed,
            rounds=1,
            clients_per_round=2,
            downlink=compress.get("topk", fraction=0.1, error_feedback=True),
        )
