"""fljax.deploy in one process (LocalGrid: the real ServerApp logic and ClientApp handlers,
Flower's SecAgg+ mod and workflow included, exchanging real Flower messages in memory):
every result is compared with fljax.simulate on the same federation. The SuperLink /
SuperNode runtime itself is exercised in test_deploy_flower.py."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import fljax
from fljax.deploy import Deployment, SecAggPlus, Task, load_site, run_local

FILES = ("processed.cleveland.data", "processed.hungarian.data", "processed.switzerland.data",
         "processed.va.data")  # fmt: skip


@pytest.fixture(scope="module")
def heart(shared_data):
    return fljax.data.load("heart_disease", data_dir=shared_data / "heart_disease")


@pytest.fixture(scope="module")
def nodes(shared_data):
    """One node config per hospital, each naming ONE file."""
    return [{"site": i, "data-path": str(shared_data / "heart_disease" / f)}
            for i, f in enumerate(FILES)]  # fmt: skip


MODEL = fljax.models.get("mlp", hidden=[16], num_classes=2)


def _algorithm(name="fedavg", **kw):
    base = {"client_lr": 0.05, "local_steps": 4, "local_epochs": None, "batch_size": None}
    return fljax.algorithms.get(name, **{**base, **kw})


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


def assert_same_history(sim, dep, tol=1e-5):
    """Every evaluation: the same rounds, per-site test metrics and local loss."""
    assert [e["round"] for e in sim] == [e["round"] for e in dep]
    for s, d in zip(sim, dep, strict=True):
        for key in ("test_loss", "test_accuracy", "test_auroc"):
            np.testing.assert_allclose(d["client_metrics"][key], s["client_metrics"][key],
                                       atol=tol, err_msg=f"round {s['round']} {key}")
        if s["metrics"]["local_loss"] is not None:
            assert abs(d["metrics"]["local_loss"] - s["metrics"]["local_loss"]) < tol
        assert d["client_metrics"]["participation"] == s["client_metrics"]["participation"]


def deployed_and_simulated(heart, nodes, algorithm, rounds: int, seed: int, cohort: int = 4,
                           eval_every: int = 1, **components):
    """The deployment in one process and the simulation of the same configuration
    (``components``: compression / privacy / aggregator, given to both)."""
    dep = Deployment(algorithm, MODEL, Task.of(heart), num_sites=4, rounds=rounds, seed=seed,
                     clients_per_round=cohort, eval_every=eval_every, **components)
    sim = fljax.simulate(algorithm, MODEL, heart, rounds=rounds, clients_per_round=cohort,
                         seed=seed, eval_every=eval_every, progress=False, **components)
    return run_local(dep, nodes), sim


def test_site_reads_only_its_own_file(heart, nodes):
    """A site's arrays are its row of the simulated federation (split, z-score)."""
    for cfg in nodes:
        site = load_site(cfg)
        i, n, m = site.site, int(heart.train.num_examples[cfg["site"]]), len(site.x_test)
        assert site.name == heart.client_names[i] and len(site.x_train) == n
        np.testing.assert_allclose(site.x_train, heart.train.x[i, :n], atol=1e-6)
        np.testing.assert_array_equal(site.y_test, heart.test.y[i, :m])


def test_minibatch_run_matches_simulation(heart, nodes):
    """Minibatches: the same seeds give the same batches (per-site keys derived as in
    simulation), so every history entry and the final model agree."""
    server, sim = deployed_and_simulated(heart, nodes, _algorithm(batch_size=16), 3, seed=5)
    assert max_diff(server.state.params, sim.params) < 1e-5
    assert_same_history(sim.history, server.record.log.history)


def test_client_dp_noise_and_epsilon_match_simulation(heart, nodes):
    """Client-level DP on the server: the same cohort (2 of 4 sites), clipping, noise and
    epsilon at every evaluation as the simulation."""
    privacy = fljax.privacy.get("central_dp", noise_multiplier=1.0, clip_norm=1.0, delta=1e-3)
    server, sim = deployed_and_simulated(heart, nodes, _algorithm(), 3, seed=3, cohort=2,
                                         privacy=privacy)  # fmt: skip
    assert max_diff(server.state.params, sim.params) < 1e-5
    eps = [e["epsilon"] for e in server.record.log.history]
    assert eps == pytest.approx([e["epsilon"] for e in sim.history], rel=1e-12)
    assert eps[-1] > eps[1] > 0
    assert_same_history(sim.history, server.record.log.history)


def test_compression_residual_stays_on_the_site(heart, nodes):
    """Top-k with error feedback runs on each site, its residual kept in the node's state
    across rounds: the same model as the simulation, and a non-zero residual per site."""
    compression = fljax.compress.get("topk", fraction=0.25, error_feedback=True)
    server, sim = deployed_and_simulated(heart, nodes, _algorithm(), 3, seed=1, eval_every=3,
                                         compression=compression)  # fmt: skip
    assert max_diff(server.state.params, sim.params) < 1e-5
    last = server.record.log.history[-1]
    assert last["compression_ratio"] == pytest.approx(sim.history[-1]["compression_ratio"])
    for ctx in server.grid.contexts.values():
        residual = ctx.state.array_records["fljax.chain_state"].to_numpy_ndarrays()
        assert sum(float(np.abs(a).sum()) for a in residual) > 0


def test_robust_aggregator_on_the_server(heart, nodes):
    """A robust aggregator (coordinate-wise median) runs on the server over the sites'
    messages, as in the simulation."""
    aggregator = fljax.aggregate.get("median")
    algorithm = _algorithm()
    server, sim = deployed_and_simulated(heart, nodes, algorithm, 2, seed=6, eval_every=2,
                                         aggregator=aggregator)  # fmt: skip
    plain = fljax.simulate(algorithm, MODEL, heart, rounds=2, clients_per_round=4, seed=6,
                           eval_every=2, progress=False)  # fmt: skip
    assert max_diff(server.state.params, sim.params) < 1e-5
    assert max_diff(server.state.params, plain.params) > 1e-4  # not the weighted mean


def test_dropped_site_is_left_out_as_drop_would(heart, nodes):
    """A site whose node vanishes after round 1 is dropped from rounds 2 and 3 (named in the
    history) and the run goes on: rounds 2-3 equal a simulation over the three others started
    from the model after round 1."""
    algorithm = _algorithm()
    dep = Deployment(algorithm, MODEL, Task.of(heart), num_sites=4, rounds=3, seed=2)

    def kill_va(server, done):
        if done == 1:
            server.grid.disconnect(server.sites[3][0])

    server = run_local(dep, nodes, on_round=kill_va)
    last = server.record.log.history[-1]
    assert last["dropped"] == {"2": [3], "3": [3]}
    assert last["unreported_sites"] == [3]
    assert last["client_metrics"]["participation"] == [3, 3, 3, 1]
    first = fljax.simulate(algorithm, MODEL, heart, rounds=1, clients_per_round=4, seed=2,
                           progress=False)  # fmt: skip
    rest = fljax.simulate(algorithm, MODEL, heart, rounds=2, clients_per_round=4, seed=2,
                          params=first.params, subsets=[[1, 1, 1, 0]], progress=False)
    assert max_diff(server.state.params, rest[0].params) < 1e-5


def test_secagg_plus_gives_the_mean_within_quantization(heart, nodes):
    """Flower's SecAgg+ (key agreement, Shamir shares, masks) over the four sites: the
    unmasked weighted mean equals the plain one within its quantization (2 rounds)."""
    algorithm = _algorithm()
    dep = Deployment(algorithm, MODEL, Task.of(heart), num_sites=4, rounds=2, seed=3,
                     secagg=SecAggPlus())  # fmt: skip
    server = run_local(dep, nodes)
    sim = fljax.simulate(algorithm, MODEL, heart, rounds=2, clients_per_round=4, seed=3,
                         progress=False)  # fmt: skip
    # 4 sites x (2 * 8 / 2**22) per coordinate and round, scaled by at most 1 / sum(w / w_max)
    assert max_diff(server.state.params, sim.params) < 2e-5
    assert max_diff(server.state.params, sim.params) > 0  # quantized: not the float sum
    assert server.record.log.history[-1]["bytes_up"] > 0


@pytest.mark.parametrize(
    "change, match",
    [
        ({"algorithm": fljax.algorithms.get("cyclic")}, "simulation-only"),
        ({"algorithm": _algorithm("scaffold"), "secagg": SecAggPlus()}, "control"),
        ({"privacy": fljax.privacy.get("central_dp", noise_multiplier=1.0, clip_norm=1.0),
          "secagg": SecAggPlus()}, "clipped sum"),  # fmt: skip
        ({"num_sites": 5, "connect_timeout": 0.0}, "4 of num_sites=5"),
        ({"clients_per_round": 9}, "clients_per_round"),
    ],
)
def test_refused_configurations_name_the_reason(heart, nodes, change, match):
    dep = Deployment(_algorithm(), MODEL, Task.of(heart), num_sites=4, rounds=1)
    dep = Deployment(**{**dep.__dict__, **change})
    with pytest.raises((ValueError, TimeoutError), match=match):
        run_local(dep, nodes)


def test_bad_node_configs_are_refused(heart, nodes, tmp_path):
    dep = Deployment(_algorithm(), MODEL, Task.of(heart), num_sites=4, rounds=1)
    twice = [*nodes[:3], {**nodes[3], "site": 2}]
    with pytest.raises(ValueError, match="served by two nodes"):
        run_local(dep, twice)
    with pytest.raises(ValueError, match="data-path"):
        load_site({"site": 0})
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_site({"site": 0, "data-path": str(tmp_path / "nope.data")})
    with pytest.raises(ValueError, match="format='csv'"):
        load_site({**nodes[0], "format": "csv"})


def test_npz_site_and_app_config(tmp_path, heart):
    """A site exported as .npz; a Flower App written from a config builds the same
    deployment on both sides (the run config carries the resolved fljax config)."""
    n = int(heart.train.num_examples[0])
    np.savez(tmp_path / "site.npz", x_train=heart.train.x[0, :n], y_train=heart.train.y[0, :n],
             x_test=heart.test.x[0, :5], y_test=heart.test.y[0, :5])  # fmt: skip
    site = load_site({"site": 0, "data-path": str(tmp_path / "site.npz")})
    assert site.name == "site" and site.x_test.shape == (5, 13)
    config = {"algorithm": {"_target_": "fljax.algorithms.get", "name": "fedprox", "mu": 0.1},
              "model": {"_target_": "fljax.models.get", "name": "mlp", "hidden": [8],
                        "num_classes": None},
              "task": {"task": "classification", "num_classes": 2, "metrics": ["accuracy"],
                       "name": "heart_disease", "loss_options": {}},
              "num_sites": 4, "rounds": 2, "seed": 0, "eval_every": 1}  # fmt: skip
    app = fljax.deploy.write_app(tmp_path / "app", config)
    text = (app / "pyproject.toml").read_text()
    assert 'serverapp = "fljax_flower_app:server"' in text
    dep = fljax.deploy.deployment_from_json(json.dumps(config, sort_keys=True))
    assert dep.algorithm.name == "fedprox" and dep.algorithm.hparams["mu"] == 0.1
    assert dep.model.name == "mlp" and dep.task.metrics == ("accuracy",)


def _deploy_lines() -> list[str]:
    """The ``fljax-deploy`` command lines of the README and the docs pages."""
    from tests.doc_commands import bash_lines

    return [line for line in bash_lines() if line.startswith("fljax-deploy")]


@pytest.mark.parametrize("line", _deploy_lines())
def test_documented_deploy_commands_build_a_deployment(line, tmp_path):
    """Every documented ``fljax-deploy`` line composes (conf/deploy.yaml) into a config that
    builds its Deployment (what the ServerApp and ClientApp will build)."""
    import shlex

    from hydra import compose, initialize_config_dir

    from fljax.deploy._cli import deploy_config
    from fljax.run import CONF_DIR

    overrides = [o for o in shlex.split(line)[1:] if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="deploy", overrides=overrides)
    config = deploy_config(cfg, tmp_path)
    dep = fljax.deploy.deployment_from_json(json.dumps(config, sort_keys=True))
    assert dep.num_sites == cfg.num_sites and dep.rounds == cfg.rounds
    assert dep.algorithm.name == cfg.algorithm.name and "superlink" not in config


def test_fljax_deploy_refuses_mixed_security(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "fljax-deploy"
    done = subprocess.run([str(exe), "insecure=true", "root_certificates=ca.crt",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "insecure=true and root_certificates are exclusive" in done.stderr


def test_the_simulation_never_imports_flower():
    """fljax[deploy] is optional: importing fljax (fljax.deploy included) and simulating
    loads no Flower module."""
    import subprocess
    import sys

    code = ("import sys, fljax, fljax.deploy\n"
            "fed = fljax.data.load('breast_cancer', num_clients=2)\n"
            "model = fljax.models.get('logistic', num_classes=2)\n"
            "fljax.simulate(fljax.algorithms.get('fedavg'), model, fed, rounds=1,"
            " clients_per_round=2, progress=False)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'flwr'], 'flwr imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
