"""Run folders as a small transactional store: one run at a time (an exclusive lock held for
the run's life), results never replaced without ``overwrite=true``, the configuration saved
at the start and compared on resume, Hydra's ``.hydra/`` record restored when a run in the
folder is refused."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fljax._io import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    SUMMARY_FILE,
    remove_dir,
    write_atomic,
)

META_DIR = ".fljax"  # lock, config.json, hydra/ (a copy of .hydra/ of the run's first start)
RESUME_DIR = "resume"  # the resume steps (fljax._io.save_state)
CONFIG_FILE = "config.json"
# Keys a resume may change: the length of the run, and how it is shown, logged and saved.
RESUMABLE_KEYS = ("rounds", "resume", "distributed", "overwrite", "progress", "objective",
                  "checkpoint", "save_state", "client_map", "client_chunk",
                  "client_memory_gb")  # fmt: skip
RESUMABLE_PREFIXES = ("loggers.",)


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunFolderExistsError(FileExistsError):
    """A fresh run was asked for in a folder that holds the results of another run."""


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``run_dir`` (``.fljax/lock``, released when the process
    ends however it ends); a second holder fails at once, naming the first's pid and start."""
    meta = run_dir / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    with (meta / "lock").open("a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            raise RunFolderBusyError(
                f"{run_dir} is in use by {holder}; wait for that run to end or choose "
                "another folder (hydra.run.dir=...)"
            ) from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def results_in(run_dir: Path) -> list[str]:
    """The results an earlier run left in ``run_dir`` (metrics, summary, saved state, final
    parameters, per-seed folders, event files)."""
    names = [METRICS_FILE, SUMMARY_FILE, RESUME_DIR, CHECKPOINT_DIR, "tensorboard"]
    found = [n for n in names if (run_dir / n).exists()]
    return found + sorted(p.name for p in run_dir.glob("seed_*") if p.is_dir())


def clear_results(run_dir: Path) -> None:
    """Deletes the results :func:`results_in` lists (asked for with ``overwrite=true``)."""
    for name in results_in(run_dir):
        path = run_dir / name
        if path.is_dir():
            remove_dir(path)
        else:
            path.unlink()
    shutil.rmtree(run_dir / META_DIR / "hydra", ignore_errors=True)
    (run_dir / META_DIR / CONFIG_FILE).unlink(missing_ok=True)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix.removesuffix("."): tree}


def _digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def save_config(run_dir: Path, config: dict) -> None:
    """Writes the resolved configuration and its SHA-256 (``.fljax/config.json``)."""
    record = {"sha256": _digest(config), "config": config}
    write_atomic(run_dir / META_DIR / CONFIG_FILE, json.dumps(record, indent=1))


def check_config(run_dir: Path, config: dict) -> None:
    """Refuses a resume whose configuration differs from the run's in anything but
    :data:`RESUMABLE_KEYS` (and ``loggers.*``), listing the differing keys.

    Raises:
        ValueError: a differing key, or no intact configuration record.
    """
    path = run_dir / META_DIR / CONFIG_FILE
    try:
        record = json.loads(path.read_text())
        saved = record["config"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"resume=true but {path} is missing or unreadable ({err}): the "
                         "run's configuration cannot be checked") from err  # fmt: skip
    if _digest(saved) != record.get("sha256"):
        raise ValueError(f"resume=true but {path} does not match its own hash (edited?)")
    old, new = _flat(saved), _flat(config)
    differ = sorted(
        k for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS
        and not k.startswith(RESUMABLE_PREFIXES)
    )  # fmt: skip
    if differ:
        listed = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise ValueError(
            f"resume=true with a configuration that differs from the run in {run_dir}: "
            f"{listed}. Only {', '.join(RESUMABLE_KEYS)} and loggers.* may change on resume; "
            "start a new run (another hydra.run.dir) for other settings"
        )


def snapshot_hydra(run_dir: Path) -> None:
    """Keeps a copy of ``.hydra/`` (the config of the run's start) in ``.fljax/hydra``."""
    src = run_dir / ".hydra"
    if src.is_dir():
        dst = run_dir / META_DIR / "hydra"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def restore_hydra(run_dir: Path) -> None:
    """Puts back the run's ``.hydra/`` record that a refused invocation's Hydra rewrote."""
    src = run_dir / META_DIR / "hydra"
    if src.is_dir():
        for f in src.iterdir():
            shutil.copy2(f, run_dir / ".hydra" / f.name)
