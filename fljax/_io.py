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
    """Appends each history entry to ``metrics.jsonl`` and flushes it to disk at once.

    With ``keep_until`` (resuming), lines up to that round are kept and later ones dropped.
    """

    def __init__(self, run_dir: str | os.PathLike, keep_until: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until is not None and self.path.exists():
            kept = [e for e in read_metrics(run_dir) if e["round"] <= keep_until]
        self.path.write_text("".join(json.dumps(e) + "\n" for e in kept))

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


STATE_DIR = "state"
PROGRESS_FILE = "progress.json"


def _is_key(x) -> bool:
    import jax

    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_state(directory: str | os.PathLike, state: Any, progress: dict) -> None:
    """Saves a simulation's full state (any pytree; PRNG keys as their key data) with orbax,
    and ``progress`` (JSON: history so far, per-round records) beside it, replacing the
    previous checkpoint only once the new one is complete."""
    import jax
    import orbax.checkpoint as ocp

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves(state)
    arrays = {
        f"leaf_{i:05d}": np.asarray(jax.random.key_data(x) if _is_key(x) else x)
        for i, x in enumerate(leaves)
    }
    tmp = directory / (STATE_DIR + ".tmp")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp, arrays, force=True)
    ckptr.wait_until_finished()
    (directory / (PROGRESS_FILE + ".tmp")).write_text(json.dumps(to_jsonable(progress)))
    import shutil

    shutil.rmtree(directory / STATE_DIR, ignore_errors=True)
    tmp.rename(directory / STATE_DIR)
    (directory / (PROGRESS_FILE + ".tmp")).replace(directory / PROGRESS_FILE)


def load_state(directory: str | os.PathLike, like: Any) -> tuple[Any, dict] | None:
    """Restores what :func:`save_state` wrote, shaped like the pytree ``like`` (None when
    there is no checkpoint)."""
    import jax
    import orbax.checkpoint as ocp

    directory = Path(directory).resolve()
    if not (directory / STATE_DIR).exists() or not (directory / PROGRESS_FILE).exists():
        return None
    arrays = ocp.StandardCheckpointer().restore(directory / STATE_DIR)
    leaves, treedef = jax.tree.flatten(like)
    if len(arrays) != len(leaves):
        raise ValueError(
            f"checkpoint in {directory} has {len(arrays)} arrays but this run's state has "
            f"{len(leaves)}: it belongs to another configuration"
        )
    restored = []
    for i, ref in enumerate(leaves):
        a = np.asarray(arrays[f"leaf_{i:05d}"])
        if _is_key(ref):
            restored.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref)))
        else:
            if a.shape != np.shape(ref):
                raise ValueError(f"checkpoint in {directory} does not match this run's state")
            restored.append(a)
    progress = json.loads((directory / PROGRESS_FILE).read_text())
    return jax.tree.unflatten(treedef, restored), progress


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
