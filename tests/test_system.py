"""System heterogeneity: the simulated clock against a hand computation, deadlines,
availability, and the identity with plain FedAvg."""

import jax
import numpy as np
import pytest

import fljax
from fljax.models import param_bytes
from fljax.system import DeviceProfiles, profiles, system


def _three_clients():
    rng = np.random.default_rng(0)
    sizes = (10, 20, 40)
    xs = [rng.normal(size=(s, 3)).astype(np.float32) for s in sizes]
    ys = [rng.integers(0, 2, s) for s in sizes]
    return fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2)


MODEL = fljax.models.get("logistic", num_classes=2)
ALGO = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=8)
PROFILES = DeviceProfiles(
    speed=np.array([80.0, 40.0, 160.0]),
    uplink=np.array([1000.0, 500.0, 2000.0]),
    downlink=np.array([4000.0, 1000.0, 8000.0]),
    availability=np.ones(3),
)


def _run(fed, sys_model, rounds=1, k=3, **kw):
    return fljax.simulate(ALGO, MODEL, fed, rounds=rounds, clients_per_round=k, seed=0,
                          eval_every=1, system=sys_model, **kw)  # fmt: skip


def test_clock_matches_a_hand_computation_for_three_clients():
    fed = _three_clients()
    result = _run(fed, system(PROFILES))
    b = param_bytes(result.params)  # FedAvg sends the model down and the delta up: 32 bytes
    assert b == (3 * 2 + 2) * 4
    # steps = ceil(n / 8) = 2, 3, 5, each on 8 examples
    t = [b / 4000 + 2 * 8 / 80 + b / 1000, b / 1000 + 3 * 8 / 40 + b / 500,
         b / 8000 + 5 * 8 / 160 + b / 2000]  # fmt: skip
    assert result.history[-1]["sim_time_s"] == pytest.approx(max(t), rel=1e-6)  # client 1: 0.696
    # A deadline between the two fastest and the slowest drops the slowest, and the round
    # lasts until the deadline.
    late = _run(fed, system(PROFILES, deadline=0.4))
    order = np.asarray(late.selected[0])
    assert dict(zip(order.tolist(), late.contributed[0].tolist(), strict=True)) == {
        0: True, 1: False, 2: True
    }  # fmt: skip
    assert late.history[-1]["sim_time_s"] == pytest.approx(0.4)
    # Partial work: client 1 runs the steps that fit: floor((0.4 - b/1000 - b/500) / 0.2) = 1.
    partial = _run(fed, system(PROFILES, deadline=0.4, deadline_policy="partial"))
    steps = dict(zip(np.asarray(partial.selected[0]).tolist(),
                     partial.num_steps[0].tolist(), strict=True))  # fmt: skip
    assert steps == {0: 2, 1: 1, 2: 5}
    assert partial.contributed.all()


def test_identical_profiles_and_no_deadline_reproduce_plain_fedavg(breast_cancer_fed):
    fed = breast_cancer_fed
    plain = _run(fed, None, rounds=4, k=4)
    timed = _run(fed, system(profiles(fed.num_clients, kind="uniform")), rounds=4, k=4)
    np.testing.assert_array_equal(plain.selected, timed.selected)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(timed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [e["metrics"] for e in plain.history] == [e["metrics"] for e in timed.history]
    times = [e["sim_time_s"] for e in timed.history]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:], strict=False))


def test_availability_and_availability_aware_selection(breast_cancer_fed):
    fed = breast_cancer_fed
    low = profiles(fed.num_clients, kind="uniform", availability=0.3)
    uniform = _run(fed, system(low), rounds=60, k=2)
    assert 0.2 < uniform.contributed.mean() < 0.4  # unavailable picks contribute nothing
    aware = _run(fed, system(low, selection="available"), rounds=60, k=2)
    assert aware.contributed.mean() > uniform.contributed.mean() + 0.15
    hospital = profiles(50, kind="hospital", seed=1, availability=0.8)
    assert 0.65 < hospital.availability.mean() < 0.95
    assert hospital.speed.max() / hospital.speed.min() > 10  # heavy-tailed speeds


def test_bad_system_settings_fail_clearly(breast_cancer_fed):
    with pytest.raises(ValueError, match="deadline must be"):
        system(PROFILES, deadline=-1.0)
    with pytest.raises(ValueError, match="deadline_policy"):
        system(PROFILES, deadline_policy="wait")
    with pytest.raises(ValueError, match="selection"):
        system(PROFILES, selection="random")
    with pytest.raises(ValueError, match="availability"):
        profiles(3, availability=0.0)
    with pytest.raises(ValueError, match="describe 3 clients but the federation has 8"):
        _run(breast_cancer_fed, system(PROFILES))


def test_resource_aware_and_power_of_choice_selection():
    fed = _three_clients()
    fastest = _run(fed, system(PROFILES, selection="fastest"), k=2)
    assert sorted(fastest.selected[0].tolist()) == [0, 2]  # times 0.24, 0.696, 0.27 s
    feasible = _run(fed, system(PROFILES, deadline=0.25, selection="feasible"), k=2)
    chosen = feasible.selected[0][feasible.contributed[0]].tolist()
    assert chosen == [0]  # only client 0 finishes within 0.25 s
    # Power-of-Choice with every client a candidate picks the highest-loss client.
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(12, 3)).astype(np.float32) for _ in range(4)]
    ys = [np.full(12, c % 2) for c in range(4)]
    fed4 = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=2)
    p0 = MODEL.init(jax.random.key(0), fed4.sample())
    loss = fljax.client.batch_loss_fn("classification")
    losses = [float(loss(MODEL.apply(p0, x), y, np.ones(12, bool))) for x, y in zip(xs, ys,
              strict=True)]  # fmt: skip
    uni = profiles(4, kind="uniform")
    poc = _run(fed4, system(uni, selection="power_of_choice", candidates=4), k=1, params=p0)
    assert poc.selected[0].tolist() == [int(np.argmax(losses))]
    with pytest.raises(ValueError, match="candidates must be in"):
        _run(fed4, system(uni, selection="power_of_choice", candidates=9), k=1)
    with pytest.raises(ValueError, match="needs a deadline"):
        system(uni, selection="feasible")


# ------------------------------------------------------------------------------ asynchronous


def test_fedbuff_with_buffer_equal_to_cohort_and_no_staleness_is_fedavg(breast_cancer_fed):
    fed = breast_cancer_fed
    c = fed.num_clients
    avg = fljax.algorithms.get("fedavg", client_lr=0.3, local_epochs=2, batch_size=None)
    buff = fljax.algorithms.get(
        "fedbuff", client_lr=0.3, local_epochs=2, batch_size=None, buffer_size=c,
        concurrency=c, weighting="num_examples",
    )  # fmt: skip
    sys_model = system(profiles(c, kind="hospital", seed=0))
    plain = fljax.simulate(avg, MODEL, fed, rounds=5, clients_per_round=c, eval_every=5)
    asynchronous = fljax.simulate(buff, MODEL, fed, rounds=5, clients_per_round=c,
                                  eval_every=5, system=sys_model)  # fmt: skip
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(asynchronous.params),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    info = asynchronous.history[-1]["async"]
    assert info["staleness_max"] == 0 and info["updates"] == 5 * c


@pytest.mark.parametrize("name", ["fedbuff", "fedasync"])
def test_async_updates_come_from_the_stale_model(name):
    """Replays one server step by hand: the finishing client's delta is computed from the
    global model of the version it started at, S >= 1 steps old, and applied as the paper
    says (FedBuff: x + eta s(tau) delta; FedAsync: x + alpha s(tau) (x_stale + delta - x))."""
    fed = _three_clients()
    kw = dict(mixing=0.6) if name == "fedasync" else dict(buffer_size=1, server_lr=0.8)
    kw.update(concurrency=3, max_staleness=8, staleness_exponent=0.5)
    algo = fljax.algorithms.get(name, client_lr=0.2, local_epochs=1, batch_size=None, **kw)
    p0 = MODEL.init(jax.random.key(0), fed.sample())
    runs = [
        fljax.simulate(
            algo,
            MODEL,
            fed,
            rounds=r,
            clients_per_round=1,
            eval_every=1,
            system=system(PROFILES),
            params=p0,
        )  # fmt: skip
        for r in range(1, 7)
    ]
    params = [p0] + [r.params for r in runs]  # params[v]: the global model of version v
    update = fljax.client.make_client_update(
        MODEL, "classification", algo.client_optimizer,
        fljax.client.plan_local_work(fed.train.num_examples, fed.train.x.shape[1],
                                     local_epochs=1, local_steps=None, batch_size=None),
    )  # fmt: skip
    seen_stale = False
    for step in range(2, 7):
        before = runs[step - 2].state.system_state
        slot = int(np.argmin(np.asarray(before.finish)))
        cid, start = int(before.ids[slot]), int(before.start[slot])
        assert int(runs[step - 1].selected[-1][0]) == cid
        tau = step - 1 - start
        seen_stale |= tau >= 1
        out = update(params[start], fed.train.x[cid], fed.train.y[cid],
                     fed.train.num_examples[cid], jax.random.key(0))  # fmt: skip
        s = (1.0 + tau) ** -0.5
        x = params[step - 1]
        if name == "fedbuff":
            expected = jax.tree.map(lambda p, d, s=s: p + 0.8 * s * d, x, out.delta)
        else:
            expected = jax.tree.map(
                lambda p, xs, d, s=s: p + 0.6 * s * (xs + d - p), x, params[start], out.delta
            )
        for a, b in zip(jax.tree.leaves(params[step]), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert seen_stale  # some update really was computed from an older model
    last = runs[-1].history[-1]
    assert last["sim_time_s"] == pytest.approx(float(runs[-1].state.system_state.now))


def test_oort_explores_then_exploits_fast_high_loss_clients(breast_cancer_fed):
    fed = breast_cancer_fed
    prof = profiles(fed.num_clients, kind="hospital", seed=0)
    res = _run(fed, system(prof, selection="oort", exploration=0.5), rounds=12, k=2)
    sel = np.asarray(res.selected)
    assert len(set(sel[:4].ravel().tolist())) >= 5  # early rounds keep trying unseen clients
    st = res.state.system_state
    assert int(np.sum(np.asarray(st.last) > 0)) == fed.num_clients  # all explored by the end
    # Exploitation: a never-explore run re-picks the clients with the best utility.
    greedy = _run(fed, system(prof, selection="oort", exploration=0.0), rounds=8, k=2)
    assert len(set(np.asarray(greedy.selected)[4:].ravel().tolist())) <= 4


def test_diurnal_availability_follows_the_simulated_day(breast_cancer_fed):
    fed = breast_cancer_fed
    c = fed.num_clients
    night = DeviceProfiles(*profiles(c, kind="uniform", availability=0.5)[:4],
                           phase=np.full(c, 0.5, np.float32))  # fmt: skip
    day = night._replace(phase=np.zeros(c, np.float32))
    # Rounds last seconds, so the clock stays near t = 0: cos(2 pi phase) = -1 or +1.
    off = _run(fed, system(night, diurnal=1.0), rounds=5, k=4)
    on = _run(fed, system(day, diurnal=1.0), rounds=5, k=4)
    assert off.contributed.sum() == 0 and on.contributed.all()


def test_poisson_selection_under_a_system_model(breast_cancer_fed):
    fed = breast_cancer_fed
    res = _run(fed, system(profiles(fed.num_clients, kind="uniform", availability=0.5),
                           selection="poisson"), rounds=80, k=4)  # fmt: skip
    assert res.selected.shape[1] > 4  # the padded cohort
    counts = np.zeros(fed.num_clients)
    for ids, took in zip(res.selected, res.contributed, strict=True):
        counts[ids[took]] += 1
    np.testing.assert_allclose(counts / 80, 0.5 * 4 / fed.num_clients, atol=0.12)
