"""Optional loggers: off by default; TensorBoard event files; MLflow calls (stand-in module)."""

import sys
import types

import pytest
from hydra import compose, initialize_config_dir

from fljax.run import CONF_DIR, run

FAST = [
    "rounds=2",
    "eval_every=1",
    "clients_per_round=4",
    "model=logistic",
    "progress=false",
    "checkpoint=false",
]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_loggers_are_off_by_default(tmp_path):
    run(_compose(FAST), tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_logger_writes_every_evaluation(tmp_path):
    pytest.importorskip("tensorboardX")
    tf = pytest.importorskip("tensorflow")

    run(_compose([*FAST, "loggers.tensorboard=true"]), tmp_path)
    scalars = {}
    for path in (tmp_path / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert [s for s, _ in scalars["test_accuracy"]] == [0, 1, 2]
    assert scalars["bytes_up"][-1][1] > 0


def test_mlflow_logger_logs_params_and_metrics(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("mlflow")
    fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    fake.set_experiment = lambda name: calls.append(("experiment", name))
    fake.start_run = lambda run_name=None: calls.append(("start", run_name))
    fake.log_params = lambda p: calls.append(("params", p))
    fake.log_metrics = lambda m, step: calls.append(("metrics", step, m))
    fake.end_run = lambda: calls.append(("end",))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    run(_compose([*FAST, "loggers.mlflow=true", "loggers.mlflow_uri=file:/tmp/x"]), tmp_path)
    kinds = [c[0] for c in calls]
    assert kinds[:4] == ["uri", "experiment", "start", "params"] and kinds[-1] == "end"
    params = calls[3][1]
    assert params["algorithm.name"] == "fedavg" and params["rounds"] == "2"
    metric_calls = [c for c in calls if c[0] == "metrics"]
    assert [c[1] for c in metric_calls] == [0, 1, 2]
    assert "test_accuracy" in metric_calls[-1][2]
