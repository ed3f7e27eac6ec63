"""Local fine-tuning and the per-site comparison."""

import jax
import numpy as np
import pytest

import fljax
from fljax.personalize import compare_sites, evaluate_sites, finetune


@pytest.fixture(scope="module")
def hospitals():
    return fljax.data.load("synthetic_hospitals", num_clients=6, mean_size=60, seed=3)


def test_finetune_equals_one_round_of_local_training(hospitals):
    """Full-batch fine-tuning has no randomness: it equals the `local` algorithm's first round
    from the same model (every site trains its own copy), site by site."""
    model = fljax.models.get("logistic", num_classes=2)
    p0 = model.init(jax.random.key(0), hospitals.sample())
    algo = fljax.algorithms.get("local", client_lr=0.3, local_epochs=3, batch_size=None)
    tuned = finetune(algo, model, hospitals, p0)
    ref = fljax.simulate(algo, model, hospitals, rounds=1, clients_per_round=6, params=p0)
    for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(ref.client_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_compare_sites_reports_gains_and_worst_sites(hospitals):
    model = fljax.models.get("logistic", num_classes=2)
    fedavg = fljax.algorithms.get("fedavg", client_lr=0.2, local_epochs=1, batch_size=16)
    glob = fljax.simulate(fedavg, model, hospitals, rounds=10, clients_per_round=6).params
    tune = fljax.algorithms.get("local", client_lr=0.1, local_epochs=3, batch_size=16)
    tuned = finetune(tune, model, hospitals, glob)
    local = fljax.simulate(tune, model, hospitals, rounds=5, clients_per_round=6).client_params
    out = compare_sites(model, hospitals, glob, tuned, local, metric="loss")
    g = evaluate_sites(model, hospitals, glob)["loss"]
    p = evaluate_sites(model, hospitals, tuned, per_client=True)["loss"]
    np.testing.assert_allclose([r["gain"] for r in out["rows"]], g - p, rtol=1e-6)  # lower=better
    s = out["summary"]
    assert s["global"]["worst_site"] == pytest.approx(g.max())
    assert s["sites_gaining"] + s["sites_losing"] <= 6
    assert "| worst site |" in out["table"] and len(out["rows"]) == 6
    # A zero learning rate changes nothing: no site gains or loses.
    frozen = finetune(fljax.algorithms.get("local", client_lr=1e-12, local_epochs=1,
                                           batch_size=16), model, hospitals, glob)  # fmt: skip
    still = compare_sites(model, hospitals, glob, frozen)
    assert max(abs(r["gain"]) for r in still["rows"]) < 1e-6
    with pytest.raises(ValueError, match="metric="):
        compare_sites(model, hospitals, glob, tuned, metric="f1")


# ---------------------------------------------------------------- partitioned personalization


def _full_batch_gd(model, params, x, y, n, lr, steps, trainable=None):
    """Reference: ``steps`` full-batch gradient steps on one client's masked mean loss,
    updating only the leaves ``trainable(path)`` allows."""
    loss_fn = fljax.client.batch_loss_fn("classification")
    mask = np.arange(x.shape[0]) < n
    paths = fljax.algorithms._personal.leaf_paths(params)
    for _ in range(steps):
        g = jax.grad(lambda p: loss_fn(model.apply(p, x, train=True), y, mask))(params)
        flat, treedef = jax.tree.flatten(params)
        gl = jax.tree.leaves(g)
        flat = [
            p - lr * gi if trainable is None or trainable(path) else p
            for p, gi, path in zip(flat, gl, paths, strict=True)
        ]
        params = jax.tree.unflatten(treedef, flat)
    return params


def _client(fed, c):
    return (np.asarray(fed.train.x[c]), np.asarray(fed.train.y[c]),
            int(fed.train.num_examples[c]))  # fmt: skip


def _is_head(path):
    return path.startswith("Dense_1/")


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_fedper_and_fedrep_match_a_hand_computed_round(hospitals, name):
    """One full-batch round from (global body, own head): FedPer trains both, FedRep the head
    (2 steps, body frozen) then the body (1 step, head frozen); the server averages only the
    body (weights n_k) and every client keeps its head."""
    model = fljax.models.get("mlp", num_classes=2, hidden=(4,))
    p0 = model.init(jax.random.key(1), hospitals.sample())
    lr = 0.5
    if name == "fedper":
        algo = fljax.algorithms.get("fedper", client_lr=lr, local_epochs=2, batch_size=None)
    else:
        algo = fljax.algorithms.get("fedrep", client_lr=lr, local_epochs=1, head_epochs=2,
                                    batch_size=None)  # fmt: skip
    r = fljax.simulate(algo, model, hospitals, rounds=1, clients_per_round=6, params=p0)
    n = np.asarray(hospitals.train.num_examples, np.float64)
    locals_ = []
    for c in range(6):
        x, y, nc = _client(hospitals, c)
        if name == "fedper":
            locals_.append(_full_batch_gd(model, p0, x, y, nc, lr, 2))
        else:
            head = _full_batch_gd(model, p0, x, y, nc, lr, 2, _is_head)
            locals_.append(_full_batch_gd(model, head, x, y, nc, lr, 1,
                                          lambda p: not _is_head(p)))  # fmt: skip
    bodies = [{"Dense_0": p["Dense_0"]} for p in locals_]
    body = jax.tree.map(
        lambda *ls: sum(w * np.asarray(v) for w, v in zip(n, ls, strict=True)) / n.sum(), *bodies
    )
    np.testing.assert_allclose(r.params["Dense_0"]["kernel"], body["Dense_0"]["kernel"],
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    # The global head is never aggregated: it is still the initial one, bit for bit.
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(r.params["Dense_1"][k], p0["Dense_1"][k])
    personal = r.client_params
    for c in range(6):
        for k in ("kernel", "bias"):
            np.testing.assert_allclose(personal["Dense_1"][k][c], locals_[c]["Dense_1"][k],
                                       rtol=1e-4, atol=1e-6)  # fmt: skip
            # Shared leaves are the global ones in every client's model.
            np.testing.assert_array_equal(personal["Dense_0"][k][c], r.params["Dense_0"][k])
    # Only the body goes over the wire (both ways); the client state stores no shared leaf.
    body_bytes = 4 * (p0["Dense_0"]["kernel"].size + p0["Dense_0"]["bias"].size)
    assert r.history[-1]["bytes_up"] == 6 * body_bytes == r.history[-1]["bytes_down"]
    stored = jax.tree.leaves(r.state.client_states)
    assert [a.shape for a in stored] == [(6, 2), (6, 4, 2)]  # the head's bias and kernel only


def test_fedbn_keeps_batch_norm_local_and_its_statistics_follow_each_site(hospitals):
    """FedBN with an MLP-BN: BN scale/bias and running statistics stay per site (never
    aggregated, never sent); after one full-batch step a site's running mean is
    momentum * init + (1 - momentum) * the mean of its own (real) pre-BN activations."""
    model = fljax.models.get("mlp_bn", num_classes=2, hidden=(4,), momentum=0.9)
    p0 = model.init(jax.random.key(2), hospitals.sample())
    algo = fljax.algorithms.get("fedbn", client_lr=0.1, local_steps=1, local_epochs=None,
                                batch_size=None)  # fmt: skip
    r = fljax.simulate(algo, model, hospitals, rounds=1, clients_per_round=6, params=p0)
    personal = r.client_params
    k0, b0 = p0["params"]["Dense_0"]["kernel"], p0["params"]["Dense_0"]["bias"]
    for c in range(6):
        x, _, nc = _client(hospitals, c)
        h = np.asarray(x[:nc]) @ np.asarray(k0) + np.asarray(b0)
        np.testing.assert_allclose(personal["batch_stats"]["BatchNorm_0"]["mean"][c],
                                   0.1 * h.mean(0), rtol=1e-4, atol=1e-6)  # fmt: skip
    means = np.asarray(personal["batch_stats"]["BatchNorm_0"]["mean"])
    assert np.ptp(means, axis=0).max() > 1e-3  # the sites differ
    for tree in ("params", "batch_stats"):
        for a, b in zip(jax.tree.leaves(r.params[tree]["BatchNorm_0"]),
                        jax.tree.leaves(p0[tree]["BatchNorm_0"]), strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, b)  # global BN untouched by the aggregator
    dense = sum(np.size(v) for k, m in p0["params"].items() if k.startswith("Dense")
                for v in m.values())  # fmt: skip
    assert r.history[-1]["bytes_up"] == 6 * 4 * dense


def test_partition_labels_and_errors():
    mlp = fljax.models.get("mlp", num_classes=2, hidden=(4, 4))
    p = mlp.init(jax.random.key(0), np.zeros((1, 3), np.float32))
    labels = fljax.algorithms.partition(p, "head")
    assert labels["Dense_2"]["kernel"] == "private" and labels["Dense_0"]["bias"] == "shared"
    labels = fljax.algorithms.partition(p, "Dense_[01]/kernel")
    assert [v for v in jax.tree.leaves(labels)].count("private") == 2
    with pytest.raises(ValueError, match="no batch norm"):
        fljax.algorithms.partition(p, "batchnorm")
    with pytest.raises(ValueError, match="every parameter"):
        fljax.algorithms.partition(p, ".*")
    with pytest.raises(ValueError, match="private="):
        fljax.algorithms.get("fedper", private="(")
    cnn = fljax.models.get("cnn_bn", num_classes=3, features=(2,), dense=4)
    q = cnn.init(jax.random.key(0), np.zeros((1, 6, 6), np.float32))
    bn = fljax.algorithms.partition(q, "batchnorm")
    assert bn["batch_stats"]["BatchNorm_1"]["var"] == "private"
    assert bn["params"]["Conv_0"]["kernel"] == "shared"
    assert fljax.algorithms.partition(q, "head")["params"]["Dense_1"]["bias"] == "private"


# ---------------------------------------------------------------- Ditto and APFL


def _local_reference(model, fed, p0, lr, rounds):
    local = fljax.algorithms.get("local", client_lr=lr, local_epochs=1, batch_size=None)
    return fljax.simulate(local, model, fed, rounds=rounds, clients_per_round=6,
                          params=p0).client_params  # fmt: skip


def _fedavg_reference(model, fed, p0, lr, rounds):
    fedavg = fljax.algorithms.get("fedavg", client_lr=lr, local_epochs=1, batch_size=None)
    return fljax.simulate(fedavg, model, fed, rounds=rounds, clients_per_round=6, params=p0)


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_ditto_limits_lambda_zero_is_local_and_infinity_is_global(hospitals):
    model = fljax.models.get("mlp", num_classes=2, hidden=(4,))
    p0 = model.init(jax.random.key(3), hospitals.sample())
    lr, rounds = 0.3, 3
    run = lambda **kw: fljax.simulate(  # noqa: E731
        fljax.algorithms.get("ditto", client_lr=lr, local_epochs=1, batch_size=None, **kw),
        model, hospitals, rounds=rounds, clients_per_round=6, params=p0, eval_every=1,
    )  # fmt: skip
    zero = run(lam=0.0)
    _close(zero.client_params, _local_reference(model, hospitals, p0, lr, rounds))
    _close(zero.params, _fedavg_reference(model, hospitals, p0, lr, rounds).params)
    # lambda -> infinity (exact proximal step): every personal model is the global model it
    # last received, i.e. the one before the final aggregation.
    big = run(lam=1e12, prox="exact")
    before = _fedavg_reference(model, hospitals, p0, lr, rounds - 1).params
    _close(big.client_params, jax.tree.map(lambda a: np.broadcast_to(a, (6, *a.shape)), before))
    assert big.history[-1]["global_metrics"]["test_loss"] > 0
    # The paper's gradient step: v <- v - lr (grad F(v) + lam (v - w)), by hand, one client.
    one = fljax.simulate(
        fljax.algorithms.get("ditto", client_lr=lr, local_steps=2, local_epochs=None,
                             batch_size=None, lam=0.7),
        model, hospitals, rounds=1, clients_per_round=6, params=p0,
    )  # fmt: skip
    x, y, n = _client(hospitals, 2)
    loss_fn = fljax.client.batch_loss_fn("classification")
    mask = np.arange(x.shape[0]) < n
    v = p0
    for _ in range(2):
        g = jax.grad(lambda p: loss_fn(model.apply(p, x), y, mask))(v)
        v = jax.tree.map(lambda vi, gi, wi: vi - lr * (gi + 0.7 * (vi - wi)), v, g, p0)
    _close(jax.tree.map(lambda a: a[2], one.client_params), v)
    with pytest.raises(ValueError, match="batch statistics"):
        fljax.simulate(fljax.algorithms.get("ditto"),
                       fljax.models.get("mlp_bn", num_classes=2, hidden=(4,)),
                       hospitals, rounds=1, clients_per_round=2)  # fmt: skip


def test_apfl_mixing_limits_and_alpha_gradient(hospitals):
    model = fljax.models.get("mlp", num_classes=2, hidden=(4,))
    p0 = model.init(jax.random.key(4), hospitals.sample())
    lr, rounds = 0.3, 2
    run = lambda **kw: fljax.simulate(  # noqa: E731
        fljax.algorithms.get("apfl", client_lr=lr, local_epochs=1, batch_size=None, **kw),
        model, hospitals, rounds=rounds, clients_per_round=6, params=p0,
    )  # fmt: skip
    one = run(alpha=1.0, adaptive_alpha=False)  # v trains alone: local training
    _close(one.state.client_states["personal"], _local_reference(model, hospitals, p0, lr, rounds))
    _close(one.params, _fedavg_reference(model, hospitals, p0, lr, rounds).params)
    zero = run(alpha=0.0, adaptive_alpha=False)  # personalized model = the global model
    _close(zero.client_params, jax.tree.map(lambda a: np.broadcast_to(a, (6, *a.shape)),
                                            zero.params))  # fmt: skip
    # Adaptive alpha, one full-batch step by hand: alpha <- clip(alpha - lr <v - w, g(vbar)>).
    step = fljax.simulate(
        fljax.algorithms.get("apfl", client_lr=lr, local_steps=1, local_epochs=None,
                             batch_size=None, alpha=0.5),
        model, hospitals, rounds=2, clients_per_round=6, params=p0,
    )  # fmt: skip
    x, y, n = _client(hospitals, 1)
    loss_fn = fljax.client.batch_loss_fn("classification")
    mask = np.arange(x.shape[0]) < n
    f = lambda p: loss_fn(model.apply(p, x), y, mask)  # noqa: E731
    w, v, a = p0, p0, 0.5
    for r in range(2):
        vbar = jax.tree.map(lambda vi, wi, a=a: a * vi + (1 - a) * wi, v, w)
        g = jax.grad(f)(vbar)
        da = sum(np.vdot(vi - wi, gi) for vi, wi, gi in zip(
            jax.tree.leaves(v), jax.tree.leaves(w), jax.tree.leaves(g), strict=True))  # fmt: skip
        v = jax.tree.map(lambda vi, gi, a=a: vi - lr * a * gi, v, g)
        a = float(np.clip(a - lr * da, 0, 1))
        if r == 0:  # the next round starts from the FedAvg global model
            w = _fedavg_reference(model, hospitals, p0, lr, 1).params
    # local_steps=1 per round: FedAvg's global after round 1 is what round 2 mixes with.
    np.testing.assert_allclose(float(step.state.client_states["alpha"][1]), a, rtol=1e-4)
    _close(jax.tree.map(lambda t: t[1], step.state.client_states["personal"]), v, 1e-4)
    with pytest.raises(ValueError, match="alpha"):
        fljax.algorithms.get("apfl", alpha=1.5)
    with pytest.raises(ValueError, match="not the personalized"):
        finetune(fljax.algorithms.get("fedper"), model, hospitals, p0)


def test_fedbn_trains_a_cnn_with_batch_norm_on_images():
    """CNN-BN under FedBN on tiny grey images: finite training, per-site BN statistics."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(loc=c, size=(6, 8, 8)).astype(np.float32) for c in range(3)]
    ys = [rng.integers(0, 3, 6).astype(np.int32) for _ in range(3)]
    fed = fljax.data.from_client_arrays(xs, ys, xs, ys, num_classes=3)
    model = fljax.models.get("cnn_bn", num_classes=3, features=(2,), dense=4)
    algo = fljax.algorithms.get("fedbn", client_lr=0.05, local_epochs=1, batch_size=4)
    r = fljax.simulate(algo, model, fed, rounds=2, clients_per_round=3, eval_every=2)
    assert np.isfinite(r.final_metrics["test_loss"])
    means = np.asarray(r.client_params["batch_stats"]["BatchNorm_0"]["mean"])
    assert means.shape == (3, 2) and np.ptp(means[:, 0]) > 0.1  # sites at loc 0, 1, 2 differ
