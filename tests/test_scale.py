"""Scale features: vmapped seeds and hyperparameter sweeps, chunked clients, device sharding."""

import jax
import numpy as np
import pytest

import fljax
from fljax.simulate import auto_client_chunk, client_memory_bytes


@pytest.fixture(scope="module")
def fed():
    return fljax.data.load("synthetic_hospitals", num_clients=12, num_features=5, mean_size=50,
                           seed=1)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return fljax.models.get("mlp", num_classes=2, hidden=(8,))


def _max_diff(a, b):
    return max([0.0] + [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)])  # fmt: skip


def _same_run(a, b, tol=0.0):
    assert _max_diff(a.params, b.params) <= tol
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_array_equal(a.num_steps, b.num_steps)
    assert [h["bytes_up"] for h in a.history] == [h["bytes_up"] for h in b.history]
    for ha, hb in zip(a.history, b.history, strict=True):
        for k, v in ha["metrics"].items():
            if v is not None:
                assert v == pytest.approx(hb["metrics"][k], abs=max(tol, 1e-12) * 100), k


def test_seeds_run_as_one_program_and_equal_separate_runs(fed, model):
    algo = fljax.algorithms.get("scaffold", client_lr=0.05, batch_size=8)
    seen = []
    many = fljax.simulate(algo, model, fed, rounds=4, clients_per_round=4, eval_every=2,
                          seeds=[3, 0, 7], callbacks=[seen.append])  # fmt: skip
    assert [r.history[0]["seed"] for r in many] == [3, 0, 7]
    assert len(seen) == 3 * 3 and {e["seed"] for e in seen} == {0, 3, 7}
    for s, r in ((3, many[0]), (7, many[2])):  # the first and last runs of the stack
        one = fljax.simulate(algo, model, fed, rounds=4, clients_per_round=4, eval_every=2, seed=s)
        _same_run(r, one, tol=1e-6)
    assert _max_diff(many[0].params, many[1].params) > 1e-3  # the seeds differ
    with pytest.raises(ValueError, match="distinct"):
        fljax.simulate(algo, model, fed, rounds=1, clients_per_round=2, seeds=[1, 1])


def test_sweep_of_learning_rates_equals_rebuilt_algorithms(fed, model):
    algo = fljax.algorithms.get("fedavgm", client_lr=0.1, batch_size=8)
    lrs, slrs = [0.03, 0.3, 0.1], [1.0, 0.5, 1.0]  # three values of two keys: six runs
    many = fljax.simulate(algo, model, fed, rounds=3, clients_per_round=4, eval_every=3,
                          seeds=[0, 1], sweep={"client_lr": lrs, "server_lr": slrs})  # fmt: skip
    order = [(s, i) for s in (0, 1) for i in range(3)]
    assert [r.history[-1]["sweep"]["client_lr"] for r in many] == [lrs[i] for _, i in order]
    for (s, i), r in ((order[1], many[1]), (order[3], many[3])):  # seed 0 lr 1, seed 1 lr 0
        assert r.history[-1]["sweep"] == {"client_lr": lrs[i], "server_lr": slrs[i]}
        ref = fljax.algorithms.rebuild(algo, client_lr=lrs[i], server_lr=slrs[i])
        one = fljax.simulate(ref, model, fed, rounds=3, clients_per_round=4, eval_every=3, seed=s)
        _same_run(r, one, tol=1e-6)  # float32 learning rates inside the program
    fedprox = fljax.algorithms.get("fedprox")
    with pytest.raises(ValueError, match="cannot vary inside one program"):
        fljax.simulate(fedprox, model, fed, rounds=1, clients_per_round=2, sweep={"mu": [0.1]})
    with pytest.raises(ValueError, match="only float"):
        fljax.simulate(fedprox, model, fed, rounds=1, clients_per_round=2,
                       sweep={"local_epochs": [1, 2]})  # fmt: skip
    with pytest.raises(ValueError, match="equal length"):
        fljax.simulate(algo, model, fed, rounds=1, clients_per_round=2,
                       sweep={"client_lr": [0.1], "server_lr": [1.0, 2.0]})  # fmt: skip


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "local"])
def test_chunked_clients_equal_one_vmap(fed, model, name):
    """Chunks of 3 (the last one short: 7 = 3 + 3 + 1) give the unchunked result, client
    states included: streaming (FedAvg, SCAFFOLD's weighted mean with control variates) and
    lax.map (local training)."""
    algo = fljax.algorithms.get(name, client_lr=0.05, batch_size=8)
    kw = dict(rounds=3, clients_per_round=7, eval_every=3, seed=2)
    whole = fljax.simulate(algo, model, fed, **kw)
    chunked = fljax.simulate(algo, model, fed, client_chunk=3, **kw)
    _same_run(chunked, whole, tol=1e-6)
    assert _max_diff(chunked.state.client_states, whole.state.client_states) <= 1e-6
    with pytest.raises(ValueError, match="client_chunk"):
        fljax.simulate(algo, model, fed, client_chunk=0, **kw)


def test_auto_chunk_from_a_memory_budget(fed, model):
    algo = fljax.algorithms.get("fedavg", batch_size=8)
    one = client_memory_bytes(algo, model, fed, 1)
    eight = client_memory_bytes(algo, model, fed, 8)
    assert 0 < one < eight
    assert auto_client_chunk(algo, model, fed, 12, 1e12) is None  # everything fits
    chunk = auto_client_chunk(algo, model, fed, 12, (one + eight) / 2)
    assert 1 <= chunk < 8
    with pytest.raises(ValueError, match="holds no client"):
        auto_client_chunk(algo, model, fed, 12, 1.0)


def test_client_axis_sharded_over_8_devices_equals_one_device(fed, model):
    """conftest exposes 8 CPU devices: 8 clients per round are split one per device and the
    aggregation becomes a cross-device sum; the result equals the single-device run."""
    assert len(jax.devices()) == 8
    algo = fljax.algorithms.get("fedprox", client_lr=0.05, batch_size=8, mu=0.1)
    kw = dict(rounds=3, clients_per_round=8, eval_every=3, seed=4)
    sharded = fljax.simulate(algo, model, fed, **kw)
    single = fljax.simulate(algo, model, fed, devices=jax.devices()[:1], **kw)
    _same_run(sharded, single, tol=1e-6)


def test_streaming_aggregation_never_stacks_the_cohorts_deltas():
    """With chunks and the weighted mean, the compiled round's temporaries no longer hold a
    [K, P] stack of deltas: XLA's memory analysis is lower than for the same chunks with an
    aggregator that needs the stack, by more than half of K x P floats."""
    import jax.numpy as jnp

    from fljax.data import ClientData
    from fljax.simulate import build_block, build_round, init_state

    xs = [np.random.default_rng(c).normal(size=(8, 16)).astype(np.float32) for c in range(64)]
    ys = [np.zeros(8, np.int32) for _ in range(64)]
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2)
    model = fljax.models.get("mlp", num_classes=2, hidden=(256, 256))
    algo = fljax.algorithms.get("fedavg", local_steps=1, local_epochs=None, batch_size=8)
    params = model.init(jax.random.key(0), fed.sample())
    state = init_state(algo, params, 64)
    train = ClientData(*(jnp.asarray(a) for a in fed.train))
    ids = jnp.arange(1, dtype=jnp.int32)

    agg = algo.aggregator
    assert agg.linear
    opaque = algo._replace(aggregator=fljax.Transform(agg.init, agg.update))  # not streamable

    def temp_bytes(a, chunk):
        block = jax.jit(build_block(build_round(a, model, fed, 64, client_chunk=chunk)))
        mem = block.lower(state, jax.random.key(0), ids, train).compile().memory_analysis()
        return mem.temp_size_in_bytes

    stack = 64 * fljax.models.num_params(params) * 4
    assert temp_bytes(opaque, 8) - temp_bytes(algo, 8) > stack / 2
