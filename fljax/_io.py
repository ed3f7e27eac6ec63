"""The run-folder contract: ``metrics.jsonl``, ``summary.json``, ``checkpoint/``, ``.hydra/``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"


class MetricsWriter:
    """Appends each history entry to ``metrics.jsonl`` and flushes it to disk at once."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def __call__(self, entry: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """History entries of a run; a torn last line (a run killed mid-write) is skipped."""
    out = []
    for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def save_params(run_dir: str | os.PathLike, params: Any) -> Path:
    """Saves ``params`` with orbax under ``run_dir/checkpoint``."""
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / CHECKPOINT_DIR).resolve()
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
    return path


def load_params(run_dir: str | os.PathLike) -> Any:
    """Restores the parameters saved by :func:`save_params` (a pytree of arrays)."""
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / CHECKPOINT_DIR).resolve()
    return ocp.StandardCheckpointer().restore(path)


@dataclasses.dataclass
class RunRecord:
    """A finished run folder read back: final ``params``, ``history``, ``summary``, ``config``."""

    params: Any
    history: list[dict]
    summary: dict
    config: dict | None
    path: Path


def load_run(folder: str | os.PathLike) -> RunRecord:
    """Reads a run folder written by ``fljax-run``.

    Raises:
        FileNotFoundError: ``folder`` is not a finished run (no ``summary.json``).
    """
    folder = Path(folder)
    summary_path = folder / SUMMARY_FILE
    if not summary_path.exists():
        raise FileNotFoundError(f"{folder} has no {SUMMARY_FILE}; is it an fljax run folder?")
    config = None
    cfg_path = folder / ".hydra" / "config.yaml"
    if cfg_path.exists():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    params = load_params(folder) if (folder / CHECKPOINT_DIR).exists() else None
    return RunRecord(
        params=params,
        history=read_metrics(folder),
        summary=json.loads(summary_path.read_text()),
        config=config,
        path=folder,
    )


def to_jsonable(x):
    """Converts NumPy scalars/arrays inside nested containers to plain Python."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x
