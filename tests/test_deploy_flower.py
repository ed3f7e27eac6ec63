"""fljax.deploy on Flower's real runtime: a SuperLink and 4 SuperNodes on localhost
(subprocesses), each SuperNode reading ONE Fed-Heart-Disease hospital file; the Flower App is
written by fljax.deploy.write_app and started with ``flwr run`` (fljax.deploy.launch).
Every ClientApp message runs in a fresh process (Flower's subprocess isolation), so a round
costs seconds here: the runs are few and short."""

from __future__ import annotations

import json
import subprocess
import time

import jax
import numpy as np
import pytest

import fljax
from fljax._io import load_params, read_metrics
from fljax.deploy import run_local
from fljax.deploy._app import (
    CONNECTION,
    deployment_from_json,
    flower_bin,
    write_app,
    write_connection,
)
from tests.flower_cluster import Cluster
from tests.test_deploy import FILES, assert_same_history, max_diff

pytestmark = pytest.mark.filterwarnings("ignore")

TASK = {"task": "classification", "num_classes": 2, "metrics": ["accuracy", "auroc"],
        "name": "heart_disease", "loss_options": {}}  # fmt: skip
MODEL = {"_target_": "fljax.models.get", "name": "mlp", "hidden": [16], "num_classes": None}


def _config(name: str, run_dir, **algorithm) -> dict:
    alg = {"_target_": "fljax.algorithms.get", "name": name, "client_lr": 0.05,
           "local_steps": 4, "local_epochs": None, "batch_size": None, **algorithm}  # fmt: skip
    return {"algorithm": alg, "model": MODEL, "task": TASK, "num_sites": 4, "rounds": 3,
            "seed": 7, "eval_every": 1, "run_dir": str(run_dir), "round_timeout": 60,
            "connect_timeout": 120}  # fmt: skip


@pytest.fixture(scope="module")
def heart(shared_data):
    return fljax.data.load("heart_disease", data_dir=shared_data / "heart_disease",
                           metrics=("accuracy", "auroc"))  # fmt: skip


@pytest.fixture(scope="module")
def nodes(shared_data):
    return [{"site": i, "data-path": str(shared_data / "heart_disease" / f)}
            for i, f in enumerate(FILES)]  # fmt: skip


def _start_run(cluster: Cluster, config: dict, folder):
    """``flwr run`` of the App for ``config`` against ``cluster`` (a running process)."""
    app = write_app(folder / "app", config)
    home = write_connection(folder / "flower", cluster.address, cluster.ca is None,
                            None if cluster.ca is None else str(cluster.ca))  # fmt: skip
    env = {**cluster.env, "FLWR_HOME": str(home)}
    log = (folder / "flwr_run.log").open("w")
    return subprocess.Popen([flower_bin("flwr"), "run", str(app), CONNECTION, "--stream"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _finished(run_dir, proc, folder, timeout: float = 900.0) -> dict:
    proc.wait(timeout=timeout)
    summary = run_dir / "summary.json"
    assert summary.exists(), (folder / "flwr_run.log").read_text()[-4000:]
    summary = json.loads(summary.read_text())
    assert summary["status"] == "finished", summary.get("error")
    return summary


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, nodes):
    """A SuperLink and 4 SuperNodes (insecure, localhost) shared by the runs below."""
    running = Cluster(tmp_path_factory.mktemp("cluster"), nodes)
    yield running
    running.close()


def _deployed(cluster, folder, config, heart, rounds: int):
    """Runs ``config`` on the cluster; the run folder, its summary and the simulation of
    the same deployment on the same federation."""
    run_dir = folder / "run"
    summary = _finished(run_dir, _start_run(cluster, config, folder), folder)
    dep = deployment_from_json(json.dumps(config, sort_keys=True))
    sim = fljax.simulate(dep.algorithm, dep.model, heart, rounds=rounds, clients_per_round=4,
                         seed=config["seed"], eval_every=1, progress=False)  # fmt: skip
    return run_dir, summary, sim


def test_flower_runtime_matches_simulation(tmp_path, cluster, heart):
    """FedAvg, FedProx and SCAFFOLD, 3 rounds of full-batch local steps, through the
    SuperLink and 4 SuperNodes: the parameters and every evaluation's per-site metrics of
    fljax.simulate on the same federation (1e-5)."""
    for name, extra in (("fedavg", {}), ("fedprox", {"mu": 0.1}), ("scaffold", {})):
        config = _config(name, tmp_path / name / "run", **extra)
        run_dir, summary, sim = _deployed(cluster, tmp_path / name, config, heart, 3)
        assert max_diff(load_params(run_dir), sim.params) < 1e-5, name
        history = read_metrics(run_dir)
        for entry in history:  # every site reported, none dropped
            assert entry["unreported_sites"] == [] and entry["dropped"] == {}
        assert_same_history(sim.history, history)
        assert summary["client_names"] == list(heart.client_names)


def test_flower_secagg_plus_gives_the_mean_within_quantization(tmp_path, cluster, heart):
    """Flower's SecAgg+ workflow through the SuperLink (setup, key sharing, masked vectors,
    unmasking: four round trips): the model of plain FedAvg within the quantization."""
    config = {**_config("fedavg", tmp_path / "run"), "rounds": 1, "secagg_plus": {}}
    run_dir, summary, sim = _deployed(cluster, tmp_path, config, heart, 1)
    assert 0 < max_diff(load_params(run_dir), sim.params) < 2e-5
    assert summary["secagg"]["name"] == "flower_secagg_plus" and summary["dropped"] == {}
    assert_same_history(sim.history, read_metrics(run_dir), tol=1e-4)


def test_flower_tls_run_survives_a_killed_site(tmp_path, heart, nodes):
    """TLS (a CA and certificate made here) and the VA Long Beach SuperNode killed once the
    run is under way: the run finishes with the other three sites, names the dropped site,
    and its model is the one of the same run with that site gone from the same round."""
    cluster = Cluster(tmp_path / "cluster", nodes, tls=True)
    run_dir = tmp_path / "run" / "run"
    config = _config("fedavg", run_dir)
    try:
        proc = _start_run(cluster, config, tmp_path / "run")
        metrics = run_dir / "metrics.jsonl"
        t0 = time.monotonic()
        while not (metrics.exists() and read_metrics(run_dir)):  # round 1 is done
            assert proc.poll() is None and time.monotonic() - t0 < 600
            time.sleep(0.5)
        cluster.kill_node(3)
        summary = _finished(run_dir, proc, tmp_path / "run")
    finally:
        cluster.close()
    dropped = {int(r): s for r, s in summary["dropped"].items()}
    assert dropped and all(s == [3] for s in dropped.values()), dropped
    first = min(dropped)
    assert first >= 2 and sorted(dropped) == list(range(first, 4))
    assert summary["client_metrics"]["participation"][:3] == [3, 3, 3]
    log = (tmp_path / "run" / "flwr_run.log").read_text()
    assert "site 3 (VA Long Beach) did not reply" in log

    def kill_va(server, done):
        if done == first - 1:
            server.grid.disconnect(server.sites[3][0])

    dep = deployment_from_json(json.dumps({**config, "run_dir": None}, sort_keys=True))
    reference = run_local(dep, nodes, on_round=kill_va)
    assert max_diff(load_params(run_dir), reference.state.params) < 1e-5
    assert jax.tree.structure(reference.state.params) is not None
    np.testing.assert_allclose(summary["metrics"]["test_accuracy"],
                               reference.record.log.history[-1]["metrics"]["test_accuracy"],
                               atol=1e-6)  # fmt: skip
