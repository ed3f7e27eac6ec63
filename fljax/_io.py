"""The run-folder contract: ``metrics.jsonl``, ``summary.json``, ``checkpoint/``, ``.hydra/``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"


class MetricsWriter:
    """Appends each history entry to ``metrics.jsonl`` and makes it durable at once.

    A fresh run refuses a ``metrics.jsonl`` that holds entries (never overwritten). Resuming
    (``resume=True``), the file is left as it is until the first new entry arrives; that
    entry's round ``r`` then replaces the lines of rounds ``>= r`` (those written after the
    saved step the run continues from), atomically. Nothing is touched by a resume that
    fails before it computes a new round.
    """

    def __init__(self, run_dir: str | os.PathLike, resume: bool = False):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.wrote = False
        if not resume and self.path.exists() and self.path.stat().st_size > 0:
            raise FileExistsError(
                f"{self.path} holds the metrics of another run; resume it, or remove it first"
            )

    def __call__(self, entry: dict) -> None:
        if not self.wrote and self.resume and self.path.exists():
            kept = [e for e in read_metrics(self.path.parent) if e["round"] < entry["round"]]
            write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in kept))
        self.wrote = True
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
    """Saves ``params`` with orbax under ``run_dir/checkpoint`` as host arrays (no device
    layout, so that any process, on any devices, reads them back)."""
    import jax
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / CHECKPOINT_DIR).resolve()
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, jax.tree.map(np.asarray, jax.device_get(params)), force=True)
    ckptr.wait_until_finished()
    return path


def load_params(run_dir: str | os.PathLike) -> Any:
    """Restores the parameters saved by :func:`save_params` (a pytree of arrays on this
    process's first device), whatever devices the writer had (a run saved with its arrays
    laid over 2 devices reads back in a process with 1)."""
    import jax
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / CHECKPOINT_DIR).resolve()
    ckptr = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          ckptr.metadata(path).item_metadata)  # fmt: skip
    return ckptr.restore(path, target)


STEP_PREFIX = "step_"
MANIFEST_FILE = "manifest.json"
STATE_DIR = "state"
PROGRESS_FILE = "progress.json"
KEEP_STEPS = 2


class CorruptCheckpointError(RuntimeError):
    """A saved resume step whose files do not match the content hashes written with it."""


def _is_key(x) -> bool:
    import jax

    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file made durable and renamed over it:
    a reader sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_durable(tmp, text)
    os.replace(tmp, path)


def remove_dir(path: Path) -> None:
    """Deletes a folder by renaming it out of the way first, so that no half-deleted folder
    keeps a valid name."""
    trash = path.with_name(f".trash_{path.name}_{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def step_rounds(directory: str | os.PathLike) -> list[int]:
    """The rounds of the complete resume steps in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    rounds = [int(p.name.removeprefix(STEP_PREFIX)) for p in directory.iterdir()
              if p.is_dir() and p.name.startswith(STEP_PREFIX)
              and p.name.removeprefix(STEP_PREFIX).isdigit()]  # fmt: skip
    return sorted(rounds, reverse=True)


def _step_dir(directory: Path, round_idx: int) -> Path:
    return directory / f"{STEP_PREFIX}{round_idx:08d}"


def save_state(directory: str | os.PathLike, state: Any, progress: dict,
               keep: int = KEEP_STEPS) -> Path:  # fmt: skip
    """Saves a simulation's full state (any pytree; PRNG keys as their key data, orbax) and
    ``progress`` (JSON: the round, the history so far) as ONE step ``step_<round>``.

    The step is written in a temporary folder with a manifest of the SHA-256 of every file,
    made durable (fsync) and renamed into place in one atomic rename; only then are the
    steps older than the newest ``keep`` removed. A kill at any point leaves the previous
    complete step (and its manifest) in place.
    """
    import jax
    import orbax.checkpoint as ocp

    from fljax import distributed

    directory = Path(directory).resolve()
    round_idx = int(progress["round"])
    arrays = {f"leaf_{i:05d}": _saved(x) for i, x in enumerate(jax.tree.leaves(state))}
    tmp = directory / f".{STEP_PREFIX}{round_idx:08d}.tmp"
    primary = distributed.is_primary()  # in a multi-process run process 0 owns the folder
    if primary:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob(".trash_*"), *directory.glob(f".{STEP_PREFIX}*.tmp")]:
            shutil.rmtree(stale)  # what a killed save or removal left behind; never a step
        tmp.mkdir()
    distributed.barrier("fljax_save_state_begin")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / STATE_DIR, arrays)  # every process: orbax's own multi-process protocol
    ckptr.wait_until_finished()
    distributed.barrier("fljax_save_state_written")  # every process's shards are on disk
    final = _step_dir(directory, round_idx)
    if primary:
        _seal_step(tmp, final, progress, keep)
    distributed.barrier("fljax_save_state_end")
    return final


def _saved(x):
    """A leaf as saved: PRNG keys as their key data; host arrays, except an array split over
    several processes' devices, which each process saves its own shards of (orbax)."""
    import jax

    x = jax.random.key_data(x) if _is_key(x) else x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
    return np.asarray(x)


def _seal_step(tmp: Path, final: Path, progress: dict, keep: int) -> None:
    """The progress and the manifest written into ``tmp``, made durable, renamed to
    ``final`` in one step; then the steps older than the newest ``keep`` removed."""
    round_idx = int(progress["round"])
    directory = final.parent
    _write_durable(tmp / PROGRESS_FILE, json.dumps(to_jsonable(progress)))
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_durable(tmp / MANIFEST_FILE, json.dumps({"round": round_idx, "sha256": files}))
    _fsync_dir(tmp)
    if final.exists():  # the same round saved again (a resumed run's first step)
        remove_dir(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
    for old in step_rounds(directory)[keep:]:
        remove_dir(_step_dir(directory, old))


def verify_step(step: str | os.PathLike) -> dict:
    """The progress of a saved step after checking every file against its manifest.

    Raises:
        CorruptCheckpointError: a file missing, added or changed, naming it and the step.
    """
    step = Path(step)
    manifest_path = step / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"{manifest_path}: unreadable manifest ({err})") from err
    present = {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()}
    present.discard(MANIFEST_FILE)
    for name in sorted(present - expected.keys()):
        raise CorruptCheckpointError(f"{step / name}: a file the step's manifest does not list")
    for name, digest in sorted(expected.items()):
        path = step / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: missing from step {step.name}")
        if sha256_file(path) != digest:
            raise CorruptCheckpointError(
                f"{path}: content differs from the hash saved with step {step.name} "
                "(a flipped bit or an edit)"
            )
    progress = json.loads((step / PROGRESS_FILE).read_text())
    if int(progress.get("round", -1)) != int(manifest.get("round", -2)):
        raise CorruptCheckpointError(f"{step}: progress and manifest disagree on the round")
    return progress


def latest_step(directory: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest step of ``directory`` whose files match their hashes and its progress
    (``None`` when nothing was saved). A corrupt step is reported (a warning naming the file)
    and the previous one used.

    Raises:
        CorruptCheckpointError: every saved step is corrupt.
    """
    directory = Path(directory)
    errors = []
    for r in step_rounds(directory):
        step = _step_dir(directory, r)
        try:
            progress = verify_step(step)
        except CorruptCheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            warnings.warn(
                f"resume: {'; '.join(errors)}; falling back to step {step.name} (round {r})",
                stacklevel=2,
            )
        return step, progress
    if errors:
        raise CorruptCheckpointError("no intact resume step: " + "; ".join(errors))
    return None


def load_state(directory: str | os.PathLike, like: Any,
               placement: Any = None) -> tuple[Any, dict] | None:  # fmt: skip
    """Restores the newest intact step :func:`save_state` wrote (see :func:`latest_step`),
    shaped like the pytree ``like`` (arrays or shape structs); ``None`` when there is no step.

    ``placement``: a sharding, or a tree of them like ``like``, to restore the arrays onto
    directly (each process reading only its devices' shards: a multi-process run); without
    it, host arrays."""
    import jax
    import orbax.checkpoint as ocp

    found = latest_step(directory)
    if found is None:
        return None
    step, progress = found
    leaves, treedef = jax.tree.flatten(like)
    path = (step / STATE_DIR).resolve()
    ckptr = ocp.StandardCheckpointer()
    if placement is None:
        arrays = ckptr.restore(path)
    else:
        if isinstance(placement, jax.sharding.Sharding):
            placement = jax.tree.map(lambda _: placement, like)
        where = jax.tree.leaves(placement, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
        arrays = ckptr.restore(path, {
            f"leaf_{i:05d}": _saved_like(ref, w)
            for i, (ref, w) in enumerate(zip(leaves, where, strict=True))})  # fmt: skip
    if len(arrays) != len(leaves):
        raise ValueError(
            f"checkpoint {step} has {len(arrays)} arrays but this run's state has "
            f"{len(leaves)}: it belongs to another configuration"
        )
    restored = []
    for i, ref in enumerate(leaves):
        a = arrays[f"leaf_{i:05d}"]
        a = np.asarray(a) if placement is None else a
        if _is_key(ref):
            restored.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref)))
        else:
            if a.shape != np.shape(ref):
                raise ValueError(f"checkpoint {step} does not match this run's state")
            restored.append(a)
    return jax.tree.unflatten(treedef, restored), progress


def _saved_like(ref, sharding):
    """The shape and dtype a leaf is saved with (key data for PRNG keys), on ``sharding``."""
    import jax

    saved = jax.eval_shape(jax.random.key_data, ref) if _is_key(ref) else ref
    return jax.ShapeDtypeStruct(np.shape(saved), saved.dtype, sharding=sharding)


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
