"""Model weights to and from ``.npz`` files: warm starts, pretrained or converted weights.

A file holds one array per parameter leaf, named by the leaf's path (``Conv_0/kernel``).
Loading is strict: the file must hold exactly the leaves of the model, with the same shapes and
finite values, except the leaves under ``exclude`` (e.g. a new classifier head), which keep the
model's own initial values. Errors name every offending leaf.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

PyTree = Any


def _name(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return "/".join(parts)


def _named(tree: PyTree) -> dict[str, Any]:
    """``{leaf name: leaf}`` of ``tree``, in its flattening order."""
    return {_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def leaf_names(params: PyTree) -> list[str]:
    """The names :func:`save_weights` gives the leaves of ``params`` (``"Conv_0/kernel"``)."""
    return list(_named(params))


def save_weights(path: str | os.PathLike, params: PyTree, *, overwrite: bool = False) -> Path:
    """Writes ``params`` to the ``.npz`` file ``path`` (one array per leaf, by its name).
    An existing file is kept (``FileExistsError``) unless ``overwrite=True``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path must end in .npz, got {str(path)!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    arrays = {n: np.asarray(jax.device_get(v)) for n, v in _named(params).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # never a half-written file under the real name
    return path


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e.rstrip("/") + "/") for e in exclude)


def _read(path: Path) -> dict[str, np.ndarray]:
    """``{leaf name: array}`` of a ``.npz`` weights file, or of the final parameters of a run
    folder (``<run>/checkpoint``, orbax) or an orbax checkpoint folder."""
    if path.is_dir():
        from fljax._io import CHECKPOINT_DIR, load_params

        run = path if (path / CHECKPOINT_DIR).exists() else path.parent
        if not (run / CHECKPOINT_DIR).exists():
            raise FileNotFoundError(f"{path} is neither a run folder nor an orbax checkpoint")
        return {n: np.asarray(v) for n, v in _named(load_params(run)).items()}
    if not path.exists():
        raise FileNotFoundError(f"no weights file at {path}")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_weights(path: str | os.PathLike, like: PyTree, *, exclude: Sequence[str] = ()) -> PyTree:
    """The parameters saved in ``path`` (a :func:`save_weights` ``.npz`` file, or a run
    folder whose final parameters fljax saved) in the structure of ``like`` (a model's initial
    parameters), each cast to ``like``'s dtype.

    Leaves whose name is in ``exclude`` or under one of its prefixes (``"Dense_0"``) keep
    ``like``'s values and may be absent from the file or differ in shape. Every other leaf
    must be in the file with ``like``'s shape and finite values, and the file may hold no
    other arrays: ``ValueError`` lists each missing, unexpected, mis-shaped or non-finite one.
    """
    path = Path(path)
    saved = _read(path)
    names = _named(like)
    wanted = {n for n in names if not _excluded(n, exclude)}
    problems = [f"missing {n}" for n in names if n in wanted and n not in saved]
    problems += [f"unexpected {n}" for n in saved if n not in names and not _excluded(n, exclude)]
    out = []
    for n, ref in names.items():
        if n not in wanted:
            out.append(ref)
            continue
        if n not in saved:
            continue
        a = saved[n]
        if a.shape != tuple(np.shape(ref)):
            problems.append(f"{n} has shape {a.shape}, the model wants {tuple(np.shape(ref))}")
        elif np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            problems.append(f"{n} has non-finite values")
        out.append(a.astype(np.dtype(ref.dtype)))
    if problems:
        raise ValueError(f"{path} does not fit the model: " + "; ".join(problems))
    return jax.tree.unflatten(jax.tree.structure(like), [jax.numpy.asarray(v) for v in out])
