"""Checkpoint and resume: an interrupted run finishes exactly like an uninterrupted one."""

import json

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import fljax
from fljax.run import CONF_DIR, run


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("name", ["scaffold", "cyclic", "fedavg"])
def test_simulate_resumes_bit_identically(tmp_path, breast_cancer_fed, name):
    """SCAFFOLD: client and server state; cyclic: a key in the state; FedAvg with adaptive
    DP-FedAvg, Poisson sampling, SecAgg+ and dropouts: clip norm, epsilon and protocol counts."""
    model = fljax.models.get("mlp", num_classes=2, hidden=(8,))
    kw = dict(shuffle=True) if name == "cyclic" else {}
    algo = fljax.algorithms.get(name, client_lr=0.05, local_epochs=1, batch_size=16, **kw)
    args = dict(rounds=8, clients_per_round=4, seed=3, eval_every=2)
    if name == "fedavg":
        args.update(
            privacy=fljax.privacy.get("adaptive_dp", noise_multiplier=0.5, count_noise=1.0),
            secure_aggregation=fljax.privacy.get("secagg_plus", degree=2),
            stragglers=0.25,
        )
    full = fljax.simulate(algo, model, breast_cancer_fed, **args)

    def crash_at_round_6(entry):
        if entry["round"] == 6:
            raise Crash

    with pytest.raises(Crash):
        fljax.simulate(
            algo,
            model,
            breast_cancer_fed,
            checkpoint_dir=str(tmp_path),
            callbacks=[crash_at_round_6],
            **args,
        )
    seen = []
    resumed = fljax.simulate(
        algo,
        model,
        breast_cancer_fed,
        checkpoint_dir=str(tmp_path),
        resume=True,
        callbacks=[seen.append],
        **args,
    )
    assert [e["round"] for e in seen] == [6, 8]  # the last checkpoint was round 4
    assert json.dumps(resumed.history) == json.dumps(full.history)
    np.testing.assert_array_equal(resumed.selected, full.selected)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_cli_resume_extends_a_run_to_the_same_metrics(tmp_path):
    common = ["eval_every=2", "clients_per_round=4", "model=logistic", "progress=false"]
    run(_compose([*common, "rounds=8"]), tmp_path / "straight")
    run(_compose([*common, "rounds=4"]), tmp_path / "twice")
    run(_compose([*common, "rounds=8", "resume=true"]), tmp_path / "twice")
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert (tmp_path / "twice" / "metrics.jsonl").read_text() == straight
    assert [json.loads(x)["round"] for x in straight.splitlines()] == [0, 2, 4, 6, 8]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        run(_compose(["rounds=2", "resume=true", "progress=false"]), tmp_path)


def test_torn_last_metrics_line_is_skipped(tmp_path):
    good = {"round": 0, "metrics": {}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\n" + '{"round": 2, "met')
    assert fljax._io.read_metrics(tmp_path) == [good]


def test_seeds_and_sweep_resume_bit_identically(tmp_path, breast_cancer_fed):
    """Many runs in one program checkpoint as one step (every run's state and log) and resume
    to the uninterrupted histories; a checkpoint of other runs is refused."""
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    args = dict(rounds=6, clients_per_round=4, eval_every=2, seeds=[1, 2],
                sweep={"client_lr": [0.05, 0.2]})  # fmt: skip
    full = fljax.simulate(algo, model, breast_cancer_fed, **args)

    def crash_at_round_4(entry):
        if entry["round"] == 4:
            raise Crash

    with pytest.raises(Crash):
        fljax.simulate(algo, model, breast_cancer_fed, checkpoint_dir=str(tmp_path),
                       callbacks=[crash_at_round_4], **args)  # fmt: skip
    resumed = fljax.simulate(algo, model, breast_cancer_fed, checkpoint_dir=str(tmp_path),
                             resume=True, **args)  # fmt: skip
    assert len(resumed) == 4
    for a, b in zip(resumed, full, strict=True):
        assert json.dumps(a.history) == json.dumps(b.history)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="another simulation: seeds"):
        fljax.simulate(algo, model, breast_cancer_fed, checkpoint_dir=str(tmp_path),
                       resume=True, **(args | {"seeds": [1, 3]}))  # fmt: skip


def test_cli_resumes_a_seed_run(tmp_path):
    common = ["eval_every=2", "clients_per_round=4", "model=logistic", "progress=false",
              "seeds=[0,1]"]  # fmt: skip
    run(_compose([*common, "rounds=6"]), tmp_path / "straight")
    run(_compose([*common, "rounds=4"]), tmp_path / "twice")
    run(_compose([*common, "rounds=6", "resume=true"]), tmp_path / "twice")
    for seed in (0, 1):
        straight = (tmp_path / "straight" / f"seed_{seed}" / "metrics.jsonl").read_text()
        assert (tmp_path / "twice" / f"seed_{seed}" / "metrics.jsonl").read_text() == straight
        assert [json.loads(x)["round"] for x in straight.splitlines()] == [0, 2, 4, 6]
