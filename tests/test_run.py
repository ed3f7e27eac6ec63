"""The Hydra entry point and the run-folder contract."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import fljax
from fljax.run import CONF_DIR, run
from tests.cli import fljax_run

GROUPS = ("dataset", "model", "algorithm", "compression", "privacy", "secagg", "system")
FAST = ["rounds=4", "eval_every=2", "clients_per_round=3", "progress=false"]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "group, choice",
    [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))],
)
def test_every_config_composes_and_instantiates(group, choice, shared_data):
    overrides = [f"{group}={choice}"]
    folders = {
        "heart_disease": "heart_disease",
        "tcga_brca": "tcga_brca",
        "ham10000": "ham10000_metadata",
    }
    if group == "dataset" and choice in folders:
        overrides.append(f"dataset.data_dir={shared_data / folders[choice]}")
    cfg = _compose(overrides)
    if group == "dataset":
        if choice in fljax.data._tfds.MEDICAL_TFDS:
            tfds = pytest.importorskip("tensorflow_datasets")
            with tfds.testing.mock_data(num_examples=400):
                data = instantiate(cfg.dataset, _convert_="all")
        else:
            data = instantiate(cfg.dataset, _convert_="all")
        assert isinstance(data, fljax.data.FederatedData)
    elif group == "model":
        assert isinstance(
            instantiate(cfg.model, _convert_="all", num_classes=2), fljax.models.Model
        )
    elif group == "algorithm":
        assert isinstance(instantiate(cfg.algorithm, _convert_="all"), fljax.algorithms.Algorithm)
    elif group == "privacy":
        assert isinstance(instantiate(cfg.privacy, _convert_="all"), fljax.privacy.Privacy)
    elif group == "secagg":
        assert isinstance(instantiate(cfg.secagg, _convert_="all"), fljax.privacy.SecAgg)
    elif group == "system":
        built = instantiate(cfg.system, _convert_="all", num_clients=5)
        assert isinstance(built, fljax.system.SystemModel)
    else:
        assert isinstance(instantiate(cfg.compression, _convert_="all"), fljax.compress.Compressor)


def test_cli_downlink_group(tmp_path):
    run(
        _compose(
            [*FAST, "model=logistic", "compression@downlink=topk", "downlink.error_feedback=false"]
        ),
        tmp_path,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["downlink"] == "topk"
    assert summary["bytes_down"] == 4 * 8 * -(-(7 * (32 + 6)) // 8)  # 4 rounds, all 8 clients


def test_cli_compression_group_counts_compressed_bytes(tmp_path):
    result = run(_compose([*FAST, "model=logistic", "compression=qsgd"]), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compression"] == "qsgd"
    d = 30 * 2 + 2
    assert summary["bytes_up"] == 4 * 3 * -(-(32 + d * (1 + 5)) // 8)  # s = 16 -> 5 bits
    assert result.history[-1]["compression_ratio"] == pytest.approx(d * 32 / (32 + d * 6))


def test_cli_privacy_group_writes_epsilon(tmp_path):
    overrides = [*FAST, "model=logistic", "privacy=dp_sgd", "privacy.target_epsilon=3.0"]
    # Every hospital joins every round: the calibration's worst case is met exactly.
    overrides += ["privacy.noise_multiplier=null", "clients_per_round=8"]
    result = run(_compose(overrides), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["privacy"]["name"] == "dp_sgd"
    assert summary["epsilon"] == pytest.approx(3.0, rel=0.02)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epsilon"] for x in lines] == [e["epsilon"] for e in result.history]
    assert lines[-1]["privacy"]["relation"] == "add_remove"


def test_cli_system_group_reports_simulated_time(tmp_path):
    run(_compose([*FAST, "model=logistic", "system=hospital", "system.deadline=0.05"]), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["sim_time_s"] <= 4 * 0.05 + 1e-6  # 4 rounds, each at most the deadline


def test_cli_secagg_group_reports_protocol_costs(tmp_path):
    run(_compose([*FAST, "model=logistic", "secagg=secagg_plus", "secagg.degree=2"]), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["secagg"]["name"] == "secagg_plus"
    assert summary["secagg_costs"]["prg_client"] == 4 * 3 * 3  # 4 rounds, 3 clients, k + 1


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
)
def test_every_experiment_preset_runs_one_round(preset, tmp_path, shared_data):
    overrides = [
        f"+experiment={preset}",
        "rounds=1",
        "eval_every=1",
        "progress=false",
        "checkpoint=false",
    ]
    cfg = _compose(overrides)
    if cfg.dataset.get("data_dir"):
        folder = Path(cfg.dataset.data_dir).name
        cfg = _compose([*overrides, f"dataset.data_dir={shared_data / folder}"])
    result = run(cfg, tmp_path)
    assert result.history[-1]["round"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_run_folder_contract_and_reproducibility(tmp_path):
    cfg = _compose(FAST)
    a, b = tmp_path / "a", tmp_path / "b"
    result = run(cfg, a)
    run(cfg, b)
    lines = (a / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 2, 4]
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    summary = json.loads((a / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_round"] == 4
    assert summary["metrics"] == result.history[-1]["metrics"]
    record = fljax.load_run(a)
    assert record.history == result.history
    for x, y in zip(jax.tree.leaves(record.params), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_failed_run_keeps_metrics_and_says_why(tmp_path):
    cfg = _compose([*FAST, "algorithm.client_lr=1e30"])
    with pytest.raises(fljax.NonFiniteUpdateError, match="round"):
        run(cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["round"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "round" in summary["error"]


def test_bad_config_value_is_named(tmp_path):
    cfg = _compose([*FAST, "clients_per_round=100"])
    with pytest.raises(ValueError, match="clients_per_round"):
        run(cfg, tmp_path)


def test_cli_writes_the_run_folder(tmp_path):
    out = fljax_run(*FAST, "model=logistic", f"hydra.run.dir={tmp_path}")
    assert "client mean" in out.stdout  # the per-hospital table
    for name in (".hydra/config.yaml", "metrics.jsonl", "summary.json", "checkpoint"):
        assert (tmp_path / name).exists(), name
    assert fljax.load_run(tmp_path).config["model"]["name"] == "logistic"


def test_one_command_sweeps_every_algorithm(tmp_path):
    """`fljax-run -m algorithm=<all>`: one run folder per algorithm, each finished."""
    algos = sorted(p.stem for p in (Path(CONF_DIR) / "algorithm").glob("*.yaml"))
    assert set(algos) == set(fljax.algorithms.names())
    asynchronous = ["fedasync", "fedbuff"]  # these need a system model (the clock)
    partitioned = ["fedbn", "fedper", "fedrep"]  # these need a body, a head and batch norm
    common = ["rounds=2", "eval_every=2", "clients_per_round=4", "progress=false",
              "checkpoint=false"]  # fmt: skip
    sync = [a for a in algos if a not in asynchronous + partitioned]
    fljax_run("-m", f"algorithm={','.join(sync)}", "model=logistic", *common,
              f"hydra.sweep.dir={tmp_path}/s")  # fmt: skip
    fljax_run("-m", f"algorithm={','.join(asynchronous)}", "system=hospital", "model=logistic",
              *common, f"hydra.sweep.dir={tmp_path}/a")  # fmt: skip
    fljax_run("-m", f"algorithm={','.join(partitioned)}", "model=mlp_bn", "model.hidden=[8]",
              *common, f"hydra.sweep.dir={tmp_path}/p")  # fmt: skip
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/*/summary.json"))]
    assert sorted(s["algorithm"] for s in summaries) == algos
    assert all(s["status"] == "finished" for s in summaries)


def test_cli_seeds_run_as_one_program_with_a_folder_per_seed(tmp_path):
    """`fljax-run seeds=[0,1,2]`: one vmapped simulation, seed_<s>/ folders equal to the
    separate runs, and the summary's objective is the mean over seeds."""
    cfg = _compose([*FAST, "model=logistic", "seeds=[0,1,2]"])
    results = run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    per = summary["objective"]["per_seed"]
    assert summary["seeds"] == [0, 1, 2] and len(per) == 3
    assert summary["objective"]["value"] == pytest.approx(np.mean(per))
    for s, res in zip([0, 1, 2], results, strict=True):
        lines = (tmp_path / f"seed_{s}" / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1]) == json.loads(json.dumps(res.history[-1]))
        assert json.loads((tmp_path / f"seed_{s}" / "summary.json").read_text())["seed"] == s
    one = run(_compose([*FAST, "model=logistic", "seed=2"]), tmp_path / "single")
    assert per[2] == pytest.approx(one.history[-1]["metrics"][summary["objective"]["name"]],
                                   abs=1e-6)  # fmt: skip


def test_cli_client_chunk_auto_and_fixed_give_the_unchunked_run(tmp_path):
    base = run(_compose([*FAST, "model=logistic"]), tmp_path / "a").history[-1]["metrics"]
    for i, chunk in enumerate(["2", "auto"]):
        over = [*FAST, "model=logistic", f"client_chunk={chunk}", "client_memory_gb=0.0001"]
        got = run(_compose(over), tmp_path / f"c{i}").history[-1]["metrics"]
        assert got["test_loss"] == pytest.approx(base["test_loss"], abs=1e-6)
    with pytest.raises(ValueError, match="client_chunk"):
        run(_compose([*FAST, "model=logistic", "client_chunk=many"]), tmp_path / "bad")


def test_cli_sweep_of_learning_rates_reports_the_best_setting(tmp_path):
    cfg = _compose([*FAST, "model=logistic", "sweep={client_lr:[0.001,0.1]}"])
    run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    means = {s["sweep"]["client_lr"]: s["mean"] for s in summary["settings"]}
    assert set(means) == {0.001, 0.1} and summary["seeds"] == [0]
    assert summary["objective"]["value"] == max(means.values())  # accuracy: higher is better
    for lr in ("0.001", "0.1"):
        one = json.loads((tmp_path / f"seed_0_client_lr_{lr}" / "summary.json").read_text())
        assert one["hparams"]["client_lr"] == float(lr)


def test_cli_init_from_a_run_folder_or_weights_file_and_auto_client_map(tmp_path):
    """init_from warm-starts from a finished run's saved params (round 0 of the new run
    scores exactly the old run's final model) or a weights file, refused with the leaf named
    when it does not fit; client_map=auto records its choice in summary.json."""
    first = run(_compose([*FAST, "model=logistic"]), tmp_path / "a")
    warm = run(_compose([*FAST, "model=logistic", f"init_from={tmp_path / 'a'}",
                         "client_map=auto"]), tmp_path / "b")  # fmt: skip
    scored = lambda m: {k: v for k, v in m.items() if k != "local_loss"}  # noqa: E731
    assert scored(warm.history[0]["metrics"]) == scored(first.history[-1]["metrics"])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["client_map"]["auto"] and summary["client_map"]["strategy"] in (
        "vmap", "device_vmap", "sequential")  # fmt: skip
    params = jax.tree.map(np.asarray, first.params)
    params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"][:-1]
    bad = fljax.models.save_weights(tmp_path / "bad.npz", params)
    with pytest.raises(ValueError, match="Dense_0/kernel has shape"):
        run(_compose([*FAST, "model=logistic", f"init_from={bad}"]), tmp_path / "c")


def test_site_table_shows_at_most_20_rows_worst_and_best(breast_cancer_fed):
    """Beyond ``max_rows`` clients: the 10 worst and 10 best on the first metric, a line
    counting the others, then the pooled and client-mean rows."""
    import dataclasses

    n = 30
    names = tuple(f"site_{i}" for i in range(n))
    nums = np.ones(n, np.int32)
    data = dataclasses.replace(
        breast_cancer_fed, client_names=names,
        train=fljax.data.ClientData(np.zeros((n, 1, 30)), np.zeros((n, 1)), nums),
        test=fljax.data.ClientData(np.zeros((n, 1, 30)), np.zeros((n, 1)), nums),
    )  # fmt: skip
    acc = [(i * 7) % n / n for i in range(n)]  # a permutation of 0, 1/30, ...
    entry = {"client_metrics": {"test_accuracy": acc, "num_test_examples": [1] * n},
             "metrics": {"test_accuracy": 0.5, "test_accuracy_client_mean": 0.5}}  # fmt: skip
    lines = fljax.run.client_table(data, entry).splitlines()
    body = lines[2:-2]
    assert len(body) == 21 and "... 10 more" in body[10]
    shown = [float(r.split()[-1]) for r in body[:10] + body[11:]]
    rounded = sorted(round(a, 4) for a in acc)
    assert shown[:10] == rounded[:10] and sorted(shown[10:]) == rounded[-10:]
    assert lines[-2].split()[0] == "pooled"
    assert len(fljax.run.client_table(data, entry, None).splitlines()) == n + 4


def test_a_configuration_mistake_is_one_line_without_traceback(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fljax.run", "clients_per_round=100",
                          "rounds=1", f"hydra.run.dir={tmp_path}"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2
    assert "fljax-run: error: ValueError: clients_per_round must be an integer in [1, " in (
        out.stderr)
    assert "Traceback" not in out.stderr and "Unable to initialize backend" not in out.stderr


def test_progress_without_a_terminal_is_one_line_per_evaluation(breast_cancer_fed, capsys):
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=1, batch_size=16)
    fljax.simulate(algo, model, breast_cancer_fed, rounds=4, clients_per_round=4, eval_every=2,
                   progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("fedavg/breast_cancer")]
    assert lines[0] == "fedavg/breast_cancer: 4 rounds, compiling..."
    assert [x.split()[2] for x in lines[1:]] == ["2/4", "4/4"] and "test_accuracy" in lines[2]
