"""The stage engine: a contract over every stage of every mode (pure, jit and vmap cleanly,
state a pytree that keeps its structure and survives a checkpoint round trip, keys never
reused), the requirement table, and the combinations the stages made possible, each against a
reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax import compress
from fljax import privacy as P
from fljax._io import load_state, save_state
from fljax.data import ClientData
from fljax.engine import (
    RULES,
    AsyncKeys,
    LocalKeys,
    Stage,
    SyncKeys,
    build_round,
    initial_state,
)
from fljax.engine._context import ASYNC_START_FOLD, AVAILABILITY_FOLD, CYCLE_ORDER_FOLD
from fljax.system import profiles, system

MODEL = fljax.models.get("logistic", num_classes=2)


def _algo(name="fedavg", **kw):
    return fljax.algorithms.get(name, **({"client_lr": 0.1, "local_epochs": 1, "batch_size": 16}
                                         | kw))  # fmt: skip


def _fed():
    return fljax.data.load("breast_cancer", num_clients=8, partition="dirichlet", alpha=0.5,
                           seed=0)  # fmt: skip


SYSTEM = system(profiles(8, kind="hospital", seed=0), deadline=2.0)
ROUNDS = {
    "federated": lambda: (_algo("scaffold"), dict(system=SYSTEM, downlink=compress.topk(0.5))),
    "compressed": lambda: (_algo(), dict(compression=compress.get("topk", fraction=0.3,
                                                                  error_feedback=True))),
    "chunked": lambda: (_algo(), dict(client_chunk=3)),
    "cyclic": lambda: (_algo("cyclic", shuffle=True), {}),
    "local": lambda: (_algo("local"), {}),
    "centralized": lambda: (_algo("centralized"), {}),
    "async": lambda: (_algo("fedbuff", buffer_size=3, concurrency=5), dict(system=SYSTEM)),
}  # fmt: skip


def _arr(a):
    """A leaf as a NumPy array (PRNG keys as their key data)."""
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a)


def _round(name):
    fed = _fed()
    algo, kw = ROUNDS[name]()
    k = 3 if algo.mode != "centralized" else 1
    if algo.mode == "async":
        k = algo.hparams["buffer_size"]
    spec = fljax.engine._round.train_spec(fed, algo)
    wire = (400.0, 400.0)
    round_fn = build_round(algo, MODEL, fed, k, None, None, kw.get("downlink"), None,
                           kw.get("system"), wire, kw.get("client_chunk"))  # fmt: skip
    if "compression" in kw:
        algo = algo._replace(client_transform=fljax.chain(algo.client_transform,
                                                          kw["compression"].transform))
        round_fn = build_round(algo, MODEL, fed, k)
    params = MODEL.init(jax.random.key(0), fed.sample())
    state = initial_state(round_fn, algo, params, spec.x.shape[0], jax.random.key(1))
    train = ClientData(*(jnp.asarray(a) for a in spec))
    return round_fn, state, train


@pytest.mark.parametrize("name", sorted(ROUNDS))
def test_every_stage_of_every_mode_honours_the_contract(name, tmp_path):
    round_fn, state, train = _round(name)
    names = [s.name for s in round_fn.stages]
    assert all(isinstance(s, Stage) for s in round_fn.stages)
    assert len(names) == len(set(names)), names  # one stage per job
    step = jax.jit(round_fn)
    key = jax.random.key(7)
    s1, m1 = step(state, key, train)
    s2, m2 = step(state, key, train)  # pure: same inputs, same outputs, bit for bit
    for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2)), strict=True):
        np.testing.assert_array_equal(_arr(a), _arr(b))
    # A lax.scan carry: the state keeps its structure, shapes and dtypes.
    assert jax.tree.structure(s1) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert int(s1.round) == 1 and bool(m1.finite)
    # vmaps cleanly over a leading run axis (what seeds= does).
    two = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    vs, _ = jax.jit(jax.vmap(round_fn, in_axes=(0, 0, None)))(
        two, jax.random.split(key), train
    )
    assert jax.tree.structure(vs) == jax.tree.structure(state)
    # Survives a checkpoint round trip.
    save_state(str(tmp_path), jax.device_get(s1), {"round": 1})
    back, progress = load_state(str(tmp_path), jax.device_get(s1))
    assert progress["round"] == 1
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(jax.device_get(s1)), strict=True):
        np.testing.assert_array_equal(_arr(a), _arr(b))


def test_round_keys_are_distinct_and_named():
    key = jax.random.key(3)
    for kind in (SyncKeys, AsyncKeys, LocalKeys):
        keys = kind.of(key)
        data = {tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in keys}
        assert len(data) == len(keys), kind.__name__  # no key reused for two purposes
    sync = SyncKeys.of(key)
    np.testing.assert_array_equal(
        jax.random.key_data(sync.availability),
        jax.random.key_data(jax.random.fold_in(key, AVAILABILITY_FOLD)),
    )
    assert len({ASYNC_START_FOLD, AVAILABILITY_FOLD, CYCLE_ORDER_FOLD}) == 3


def test_requirement_table_names_a_reason_for_every_rule():
    assert len(RULES) >= 20
    features = {r.feature for r in RULES}
    assert {"privacy", "secure_aggregation", "compression", "system", "stragglers"} <= features
    # Each broken rule is reported with its own reason (first rule broken wins).
    fed = _fed()
    setup = fljax.engine._rules.Setup(
        _algo("scaffold"), fed, 4, 0.0, "drop", None, None,
        P.get("central_dp", clip_norm=1.0, noise_multiplier=1.0), None, None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="control variates"):
        fljax.engine._rules.check(setup)


# ------------------------------------------------------------------- combinations now allowed
def _sim(algo, **kw):
    args = dict(rounds=4, clients_per_round=4, seed=0, eval_every=2) | kw
    return fljax.simulate(algo, MODEL, _fed(), **args)


ASYNC = dict(system=system(profiles(8, kind="hospital", seed=0)), rounds=5)


def _close(a, b, tol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_async_with_dense_compression_equals_async():
    algo = _algo("fedbuff", buffer_size=3, concurrency=5)
    plain = _sim(algo, **ASYNC)
    dense = _sim(algo, compression=compress.selective(".*"), **ASYNC)
    _close(plain.params, dense.params)
    assert plain.history[-1]["metrics"] == dense.history[-1]["metrics"]


def test_async_with_topk_error_feedback_and_local_dp_runs_and_counts():
    algo = _algo("fedbuff", buffer_size=3, concurrency=5)
    plain = _sim(algo, **ASYNC)
    top = _sim(algo, compression=compress.get("topk", fraction=0.25, error_feedback=True),
               **ASYNC)  # fmt: skip
    assert top.history[-1]["bytes_up"] < plain.history[-1]["bytes_up"]
    assert top.history[-1]["compression_ratio"] > 1
    residuals = jax.tree.leaves(top.state.client_transform_states)
    assert any(float(jnp.abs(r).sum()) > 0 for r in residuals)  # EF residuals persisted
    dp = _sim(algo, privacy=P.get("local_dp", clip_norm=1.0, noise_multiplier=1.0), **ASYNC)
    assert dp.history[-1]["epsilon"] > 0
    assert dp.history[-1]["privacy"]["level"] == "local"


def test_async_in_chunks_equals_async():
    algo = _algo("fedasync", concurrency=4)
    _close(_sim(algo, **ASYNC).params, _sim(algo, client_chunk=1, **ASYNC).params, 1e-6)


def test_client_dp_with_non_random_selection_is_accounted_conservatively():
    dp = P.get("central_dp", clip_norm=1.0, noise_multiplier=2.0, sampling="fixed")
    uniform = _sim(_algo(), privacy=dp)
    fastest = _sim(_algo(), privacy=dp, system=system(profiles(8, kind="hospital", seed=0),
                                                      selection="fastest"))  # fmt: skip
    info = fastest.history[-1]["privacy"]
    assert info["selection"] == "fastest" and "conservative" in info["amplification"]
    # Every client charged as if selected in all 4 rounds, replace-one (z / 2), no sampling.
    assert info["epsilon"] == pytest.approx(P.epsilon(1.0, 4, 1e-5))
    assert info["epsilon"] > uniform.history[-1]["epsilon"]
    assert "amplification" not in uniform.history[-1]["privacy"]


def test_poisson_client_dp_composes_with_availability():
    dp = P.get("central_dp", clip_norm=1.0, noise_multiplier=1.0)
    sys_model = system(profiles(8, kind="uniform", availability=0.5))
    res = _sim(_algo(), privacy=dp, system=sys_model)
    plain = _sim(_algo(), privacy=dp)
    np.testing.assert_array_equal(res.selected, plain.selected)  # the same Poisson draws
    assert res.contributed.sum() < plain.contributed.sum()  # the unreachable drop out
    assert res.history[-1]["epsilon"] == plain.history[-1]["epsilon"]
    with pytest.raises(ValueError, match="selection='fastest'"):
        _sim(_algo(), privacy=dp, system=system(profiles(8), selection="fastest"))


def test_client_params_are_each_clients_model():
    scaffold = _sim(_algo("scaffold"))
    stacked = scaffold.client_params
    for leaf, g in zip(jax.tree.leaves(stacked), jax.tree.leaves(scaffold.params), strict=True):
        assert leaf.shape == (8, *g.shape)
        np.testing.assert_array_equal(np.asarray(leaf[3]), np.asarray(g))
    local = _sim(_algo("local"))
    own = jax.tree.leaves(local.client_params)[0]
    assert own.shape[0] == 8 and not np.allclose(own[0], own[1])


@pytest.mark.parametrize(
    "components",
    [
        {"privacy": P.get("central_dp", clip_norm=1.0, noise_multiplier=1.0)},
        {"privacy": P.get("local_dp", clip_norm=1.0, noise_multiplier=1.0),
         "secure_aggregation": P.get("secagg")},
    ],
    ids=["client_dp", "local_dp_secagg"],
)
def test_sweep_with_privacy_equals_separate_runs(components):
    algo = _algo("fedavg", weighting="uniform")
    runs = _sim(algo, sweep={"client_lr": [0.05, 0.2]}, rounds=2, **components)
    assert not np.allclose(jax.tree.leaves(runs[0].params)[0], jax.tree.leaves(runs[1].params)[0])
    checked = (0.05, 0.2) if "secure_aggregation" not in components else (0.2,)
    for run, lr in zip(runs[-len(checked):], checked, strict=True):
        one = _sim(fljax.algorithms.rebuild(algo, client_lr=lr), rounds=2, **components)
        _close(run.params, one.params, 1e-6)
        assert run.history[-1]["epsilon"] == one.history[-1]["epsilon"]
        assert run.history[-1]["bytes_up"] == one.history[-1]["bytes_up"]


def test_training_data_is_sharded_along_clients_not_replicated():
    """8 host devices: each holds 1/8 of the federation's training data; results are the
    golden (replicated-data) ones, checked by tests/golden's sharded_8 case."""
    from fljax.engine import RunArgs, prepare

    fed = _fed()
    run = prepare(RunArgs(_algo(), MODEL, fed, rounds=1, clients_per_round=8))
    assert run.mesh is not None and run.mesh.devices.size == 8
    total = sum(np.asarray(a).nbytes for a in fed.train)
    for leaf in jax.tree.leaves(run.train):
        shards = leaf.addressable_shards
        assert len(shards) == 8
        assert shards[0].data.nbytes == leaf.nbytes // 8
    held = sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(run.train))
    assert held == pytest.approx(total / 8, rel=0.01)
    # 6 clients on 4 devices (K = 4): the client axis is padded to 8, 2 rows per device.
    small = fljax.data.load("breast_cancer", num_clients=6, seed=0)
    run = prepare(RunArgs(_algo(), MODEL, small, rounds=1, clients_per_round=4))
    assert run.train.x.shape[0] == 8 and run.train.x.addressable_shards[0].data.shape[0] == 2


def test_seeds_run_on_a_runs_by_clients_mesh_and_equal_one_device():
    from fljax.engine import RunArgs, prepare

    fed = _fed()
    run = prepare(RunArgs(_algo(), MODEL, fed, rounds=1, clients_per_round=4, seeds=[0, 1]))
    assert dict(run.mesh.shape) == {"runs": 2, "clients": 4}
    leaf = jax.tree.leaves(run.state.params)[0]
    assert leaf.sharding.spec[0] == "runs"  # each run's state on its own device row
    sharded = _sim(_algo(), seeds=[0, 1])
    single = _sim(_algo(), seeds=[0, 1], devices=jax.devices()[:1])
    for a, b in zip(sharded, single, strict=True):
        _close(a.params, b.params, 1e-6)
        np.testing.assert_array_equal(a.selected, b.selected)


# ------------------------------------------------------- partial sums: streamed and secure
def test_linear_partial_sums_equal_each_aggregators_update():
    """``finish(sum_k rows_k) == finish(chunk sums) == update`` for every aggregator with
    partial sums, on a hand-made cohort with unequal weights and step counts."""
    from fljax.aggregate import fednova, weighted_mean

    rng = np.random.default_rng(0)
    deltas = {"w": jnp.asarray(rng.normal(size=(5, 3, 2)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)}  # fmt: skip
    weights = jnp.asarray([3.0, 0.0, 5.0, 1.0, 2.0])
    steps = jnp.asarray([4, 2, 7, 1, 3], jnp.int32)
    like = jax.tree.map(lambda a: a[0], deltas)
    for agg in (weighted_mean(), fednova(), fednova(momentum=0.9), fednova(prox_mu=0.1)):
        want, _ = agg.update(deltas, agg.init(like), weights=weights, num_steps=steps)
        lin = agg.linear
        rows = lin.rows(deltas, weights, steps)
        whole = lin.finish(jax.tree.map(lambda r: r.sum(0), rows), like)
        halves = jax.tree.map(jnp.add, lin.chunk_sum(*(jax.tree.map(lambda a: a[:2], x)
                                                       for x in (deltas, weights, steps))),
                              lin.chunk_sum(*(jax.tree.map(lambda a: a[2:], x)
                                              for x in (deltas, weights, steps))))  # fmt: skip
        _close(whole, want, 1e-6)
        _close(lin.finish(halves, like), want, 1e-6)
    # FedNova by hand: tau_eff sum_k p_k d_k / tau_k with p = w / sum w.
    p = np.asarray(weights) / 11.0
    tau = np.asarray(steps, np.float64)
    want_b = (p * tau).sum() * np.tensordot(p / tau, np.asarray(deltas["b"]), axes=1)
    got, _ = fednova().update(deltas, (), weights=weights, num_steps=steps)
    np.testing.assert_allclose(np.asarray(got["b"]), want_b, rtol=1e-5)


def test_fednova_streams_in_chunks_and_runs_under_secure_aggregation():
    algo = _algo("fednova", local_epochs=2)
    dense = _sim(algo, clients_per_round=6)
    chunked = _sim(algo, clients_per_round=6, client_chunk=4)
    _close(dense.params, chunked.params, 1e-6)
    secure = _sim(algo, clients_per_round=6, secure_aggregation=P.get("secagg", bits=32))
    _close(dense.params, secure.params, 1e-4)  # fixed-point encoding of the rows
    assert secure.history[-1]["secagg"]["prg_client"] > 0
    for name in ("scaffold", "feddyn"):
        with pytest.raises(ValueError, match="secure aggregation"):
            _sim(_algo(name), secure_aggregation=P.get("secagg"))


def test_fedbuff_with_client_dp_and_secure_aggregation():
    """The buffer is a server step's cohort: with SecAgg the step equals plain FedBuff up to
    the fixed-point encoding; with client-level DP (z = 0, no clipping) it is the staleness-
    scaled mean with the fixed denominator B, and the accountant is conservative."""
    algo = _algo("fedbuff", buffer_size=3, concurrency=5)
    plain = _sim(algo, **ASYNC)
    # SecAgg's larger messages change who arrives first; with bandwidth out of the picture
    # the arrival order, hence the buffers, are the same.
    fast = profiles(8, kind="hospital", seed=0)._replace(uplink=np.full(8, 1e15),
                                                         downlink=np.full(8, 1e15))  # fmt: skip
    timed = dict(system=system(fast), rounds=5)
    secure = _sim(algo, secure_aggregation=P.get("secagg"), **timed)
    np.testing.assert_array_equal(secure.selected, _sim(algo, **timed).selected)
    _close(_sim(algo, **timed).params, secure.params, 1e-5)
    assert secure.history[-1]["secagg"]["prg_client"] > 0
    dp = P.get("central_dp", clip_norm=1e9, noise_multiplier=0.0, sampling="fixed")
    noiseless = _sim(algo, privacy=dp, **ASYNC)
    # FedBuff's uniform weighting: the mean over fresh updates = sum / B when none is stale.
    assert plain.history[-1]["async"]["discarded_stale"] == 0
    _close(plain.params, noiseless.params, 1e-5)
    noisy = _sim(algo, privacy=P.get("central_dp", clip_norm=1.0, noise_multiplier=2.0,
                                     sampling="fixed"), **ASYNC)  # fmt: skip
    info = noisy.history[-1]["privacy"]
    assert info["selection"] == "arrival_order"
    assert info["epsilon"] == pytest.approx(P.epsilon(1.0, 5, 1e-5))
    with pytest.raises(ValueError, match="sampling='fixed'"):
        _sim(algo, privacy=P.get("central_dp", clip_norm=1.0, noise_multiplier=1.0), **ASYNC)
    with pytest.raises(ValueError, match="FedBuff"):
        _sim(_algo("fedasync", concurrency=4), secure_aggregation=P.get("secagg"), **ASYNC)


def test_async_buffer_on_the_mesh_equals_one_device():
    algo = _algo("fedbuff", buffer_size=4, concurrency=6)
    from fljax.engine import RunArgs, prepare

    run = prepare(RunArgs(algo, MODEL, _fed(), clients_per_round=4, **ASYNC))
    assert run.mesh is not None and run.mesh.devices.size == 4  # the buffer is split
    sharded = _sim(algo, **ASYNC)
    single = _sim(algo, devices=jax.devices()[:1], **ASYNC)
    _close(sharded.params, single.params, 1e-6)
    np.testing.assert_array_equal(sharded.selected, single.selected)


def test_async_with_downlink_compression():
    """Clients start from their copy x_hat of the version they received: with a dense
    downlink x_hat = x and the run equals plain asynchronous training; top-k on the downlink
    sends fewer bytes down and trains from the copies."""
    algo = _algo("fedbuff", buffer_size=3, concurrency=5)
    plain = _sim(algo, **ASYNC)
    dense = _sim(algo, downlink=compress.selective(".*"), **ASYNC)
    _close(plain.params, dense.params, 1e-6)
    top = _sim(algo, downlink=compress.topk(fraction=0.5), **ASYNC)
    a = top.state.system_state
    latest = jax.tree.map(lambda r: r[int(a.version) % algo.hparams["max_staleness"]], a.models)
    _close(latest, top.state.broadcast)  # the ring holds what clients receive
    assert not np.allclose(jax.tree.leaves(top.state.broadcast)[0],
                           jax.tree.leaves(top.params)[0])  # fmt: skip


# ------------------------------------------------------------- client-mapping strategies
@pytest.mark.parametrize("strategy", ["device_vmap", "sequential"])
def test_every_client_map_strategy_equals_vmap(strategy):
    """Per-device groups under shard_map and one-client-at-a-time give vmap's result (1e-6),
    on the 4-device mesh and on one device, with per-client state (SCAFFOLD) and per-client
    models (local-only training)."""
    for algo, kw in ((_algo("scaffold"), {}), (_algo("local"), {}),
                     (_algo("fedbuff", buffer_size=4, concurrency=6), ASYNC)):  # fmt: skip
        base = _sim(algo, **kw)
        for devices in (None, jax.devices()[:1]):
            other = _sim(algo, client_map=strategy, devices=devices, **kw)
            _close(base.params, other.params, 1e-6)
            _close(base.client_params, other.client_params, 1e-6)
            np.testing.assert_array_equal(base.selected, other.selected)
    with pytest.raises(ValueError, match="client_map"):
        _sim(_algo(), client_map="pmap")
    with pytest.raises(ValueError, match="leave client_chunk unset"):
        _sim(_algo(), client_map="sequential", client_chunk=2)


def test_auto_client_map_times_the_candidates_and_keeps_its_choice_on_resume(tmp_path):
    """auto times every applicable strategy on the run's first round, gives the result of the
    strategy it picked (1e-6 of vmap), records the timings, and a resumed run keeps the
    choice its checkpoint recorded instead of timing again."""
    algo = _algo()
    base = _sim(algo)
    auto = _sim(algo, client_map="auto")
    info = auto.client_map
    assert info["auto"] and set(info["seconds_per_round"]) == {"vmap", "device_vmap",
                                                               "sequential"}  # fmt: skip
    assert info["strategy"] == min(info["seconds_per_round"], key=info["seconds_per_round"].get)
    _close(base.params, auto.params, 1e-6)
    assert base.client_map == {"strategy": "vmap"}
    # one device: device_vmap is vmap; client_chunk: sequential is refused
    one = _sim(algo, client_map="auto", devices=jax.devices()[:1], client_chunk=2)
    assert one.client_map == {"strategy": "vmap", "auto": True, "seconds_per_round": {}}
    ckpt = str(tmp_path / "ckpt")
    first = _sim(algo, client_map="auto", checkpoint_dir=ckpt, rounds=2)
    resumed = _sim(algo, client_map="auto", checkpoint_dir=ckpt, resume=True)
    assert resumed.client_map == {"strategy": first.client_map["strategy"], "auto": True,
                                  "from": "checkpoint"}  # fmt: skip
    _close(base.params, resumed.params, 1e-6)
