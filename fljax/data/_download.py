"""Find, download and verify dataset files: data_dir -> cache -> official source."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path
from typing import NamedTuple

from fljax._io import sha256_file


class ChecksumError(ValueError):
    """A data file's sha256 differs from the published one (corrupt, truncated or edited)."""


class RemoteFile(NamedTuple):
    name: str  # file name on disk
    url: str  # official source
    sha256: str


def cache_root() -> Path:
    """``$FLJAX_DATA_DIR`` or ``~/.cache/fljax``."""
    return Path(os.environ.get("FLJAX_DATA_DIR", Path.home() / ".cache" / "fljax"))




def verify(path: Path, expected: str) -> Path:
    """Raises :class:`ChecksumError` naming ``path`` when its sha256 is not ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"{path}: sha256 {got} does not match the published {expected}; the file is "
            "corrupt, truncated or not the official one. Delete it and download it again."
        )
    return path


def _download(file: RemoteFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(file.url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"{dest} is missing and could not be downloaded from {file.url} ({err}). Put the "
            f"file there by hand, or pass data_dir= pointing at a folder that holds it."
        ) from err
    tmp.replace(dest)


def fetch(
    dataset: str,
    files: list[RemoteFile],
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Paths of ``files``, each verified against its sha256.

    With ``data_dir`` (an existing folder: a mistyped path is refused, not created), files are
    read there (a read-only folder works) and any missing one is downloaded into it; without,
    into the cache ``cache_root() / dataset``.
    """
    folder = Path(data_dir) if data_dir is not None else cache_root() / dataset
    if data_dir is not None and not folder.is_dir():
        raise FileNotFoundError(
            f"data_dir={str(data_dir)!r} is not a folder (a typo?); pass the folder that holds "
            f"the {dataset} files ({', '.join(f.name for f in files)}), create it to download "
            "them into it, or leave data_dir unset to use the cache"
        )
    out = {}
    for file in files:
        path = folder / file.name
        if not path.exists():
            if not download:
                raise FileNotFoundError(
                    f"{path} is missing (download=False); expected the official file from "
                    f"{file.url}"
                )
            _download(file, path)
        out[file.name] = verify(path, file.sha256)
    return out
