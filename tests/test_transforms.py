"""A contract over every registered transform on the update path (compressors with and
without error feedback, aggregators, DP mechanisms, secure aggregation): pure under jit (one
key, one result), shapes preserved for client transforms and the leading axis dropped for
aggregators, outputs finite, the state keeps its structure over 3 rounds (a lax.scan carry)
and survives a checkpoint round trip, and one trace serves all rounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fljax import aggregate, compress
from fljax import privacy as P
from fljax._io import load_state, save_state

TREE = {"Dense_0": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3),
                    "bias": jnp.asarray([0.5, -0.25, 0.125])}}  # fmt: skip
K = 3


def _client_transforms():
    out = {}
    for name in compress.names():
        kw = {"fraction": 0.5} if name in ("topk", "randk") else {}
        if name == "selective":
            kw = {"shared": "Dense_0/bias"}
        out[name] = compress.get(name, **kw).transform
        if name != "selective":
            out[f"{name}+ef"] = compress.get(name, error_feedback=True, **kw).transform
    out["local_gaussian"] = P.local_gaussian(1.0, 0.5)
    return out


def _aggregators():
    sec = P.get("secagg")
    mean = aggregate.weighted_mean()
    return {
        "weighted_mean": mean,
        "mean": aggregate.mean(),
        "fednova": aggregate.fednova(),
        "feddyn": aggregate.feddyn(0.1),
        "gaussian_sum": P.gaussian_sum_aggregator(1.0, 1.0, K),
        "adaptive_gaussian_sum": P.gaussian_sum_aggregator(
            1.0, 1.0, K, P.AdaptiveClipping(0.5, 0.2, 1.0)
        ),
        "secure_mean": P.secure_aggregator(sec, 10.0, linear=mean.linear),
        "secure_fednova": P.secure_aggregator(sec, 10.0, linear=aggregate.fednova().linear,
                                              max_steps=4),  # fmt: skip
        "secure_dp": P.secure_aggregator(sec, 1.0, inner=P.gaussian_sum_parts(1.0, 1.0, K)),
    }


def _leaves(tree):
    return [np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                       else a) for a in jax.tree.leaves(tree)]  # fmt: skip


def _assert_pure_and_carried(step, inputs, state, key, tmp_path):
    """One key gives one result; outputs keep the parameters' shapes and are finite; 3 rounds
    reuse one trace; the state stays a scan carry that survives a checkpoint."""
    out1, s1 = step(inputs, state, key)
    out2, s2 = step(inputs, state, key)
    for a, b in zip(_leaves((out1, s1)), _leaves((out2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(out1), jax.tree.leaves(TREE), strict=True):
        assert a.shape == b.shape and np.all(np.isfinite(np.asarray(a)))
    s = state
    for r in range(3):
        _, s = step(inputs, s, jax.random.fold_in(key, r))
    _check_state(state, s, tmp_path)
    return out1


def _check_state(state, new, tmp_path):
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    if not jax.tree.leaves(new):  # a stateless transform: nothing to save
        return
    save_state(str(tmp_path), jax.device_get(new), {"round": 1})
    back, _ = load_state(str(tmp_path), jax.device_get(new))
    for a, b in zip(_leaves(back), _leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(_client_transforms()))
def test_client_transform_contract(name, tmp_path):
    t = _client_transforms()[name]
    traces = []

    def step(u, s, key):
        traces.append(1)
        return t.update(u, s, TREE, key=key)

    state = t.init(TREE)
    key = jax.random.key(0)
    _assert_pure_and_carried(jax.jit(step), TREE, state, key, tmp_path)
    assert len(traces) == 1  # one trace serves every round
    # vmaps over clients (the round lifts it so).
    stacked = jax.tree.map(lambda a: jnp.stack([a] * K), TREE)
    states = jax.tree.map(lambda a: jnp.stack([a] * K), state)
    outs, _ = jax.vmap(lambda u, st, k: t.update(u, st, TREE, key=k))(
        stacked, states, jax.random.split(key, K)
    )
    assert jax.tree.leaves(outs)[0].shape[0] == K


@pytest.mark.parametrize("name", sorted(_aggregators()))
def test_aggregator_contract(name, tmp_path):
    agg = _aggregators()[name]
    rng = np.random.default_rng(1)
    deltas = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=(K, *a.shape)) * 0.1,
                                                jnp.float32), TREE)  # fmt: skip
    kw = dict(weights=jnp.asarray([2.0, 1.0, 3.0]), num_steps=jnp.asarray([1, 2, 3]),
              num_clients=5, client_ids=jnp.asarray([4, 0, 2], jnp.int32))  # fmt: skip
    traces = []

    def step(d, s, key):
        traces.append(1)
        return agg.update(d, s, TREE, key=key, **kw)

    state = agg.init(TREE)
    key = jax.random.key(3)
    out1 = _assert_pure_and_carried(jax.jit(step), deltas, state, key, tmp_path)  # K dropped
    assert len(traces) == 1
    if agg.linear is not None:  # its partial sums finish to its update
        lin = agg.linear
        like = jax.tree.map(lambda a: a[0], deltas)
        sums = lin.chunk_sum(deltas, kw["weights"], kw["num_steps"])
        if not name.startswith("secure"):
            for a, b in zip(jax.tree.leaves(lin.finish(sums, like)), jax.tree.leaves(out1),
                            strict=True):  # fmt: skip
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
