"""Optional experiment loggers, called with each history entry like any ``simulate`` callback.

Off by default; ``fljax-run loggers.tensorboard=true`` / ``loggers.mlflow=true`` turn them on.
Each logs every global scalar of ``entry["metrics"]`` (and the byte counters) at
``step = round``.
"""

from __future__ import annotations

import os
from pathlib import Path


def _scalars(entry: dict) -> dict[str, float]:
    out = {k: float(v) for k, v in entry["metrics"].items() if isinstance(v, int | float)}
    out["bytes_up"] = float(entry["bytes_up"])
    out["bytes_down"] = float(entry["bytes_down"])
    if "rejected" in entry:  # updates dropped by fault isolation so far
        out["rejected_updates"] = float(entry["rejected"]["total"])
    return out


class TensorBoardLogger:
    """Writes TensorBoard event files under ``log_dir`` (needs ``tensorboardX``)."""

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError("loggers.tensorboard needs: pip install tensorboardX") from err
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(logdir=str(self.log_dir))

    def __call__(self, entry: dict) -> None:
        for name, value in _scalars(entry).items():
            self.writer.add_scalar(name, value, global_step=entry["round"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """Logs to an MLflow run (needs ``mlflow``; ``pip install 'fljax[mlflow]'``): the flat
    config as params at start, then the metrics of every evaluation."""

    def __init__(
        self,
        params: dict,
        experiment: str = "fljax",
        run_name: str | None = None,
        tracking_uri: str | None = None,
    ):
        try:
            import mlflow
        except ImportError as err:
            raise ImportError("loggers.mlflow needs: pip install 'fljax[mlflow]'") from err
        self.mlflow = mlflow
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def __call__(self, entry: dict) -> None:
        self.mlflow.log_metrics(_scalars(entry), step=entry["round"])

    def close(self) -> None:
        self.mlflow.end_run()


def flatten(cfg: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
