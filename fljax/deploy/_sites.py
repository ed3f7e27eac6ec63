"""A site's own data, read on its node from the node config (nothing but messages leaves it).

Node-config keys (``flower-supernode --node-config "site=0 data-path='...'"``):
``site`` (its index 0..C-1 in the federation), ``data-path`` (its file), ``format``
(``"heart_disease"``: one UCI hospital file with FLamby's split and the site's own z-score;
``"npz"``: arrays ``x_train, y_train, x_test, y_test``; default from the file name) and an
optional ``name``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fljax.data._medical import HEART_SITE_NAMES, HEART_SITES, _flamby_zscore, heart_split

SITE_FORMATS = ("heart_disease", "npz")
"""The file formats a SuperNode's ``data-path`` may hold: one Fed-Heart-Disease hospital file, or
an ``.npz`` of a site's arrays."""


class SiteData(NamedTuple):
    """One site's arrays and name."""

    site: int
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def arrays(self) -> tuple:
        return self.x_train, self.y_train, self.x_test, self.y_test


def _heart(path: Path) -> tuple[str, tuple]:
    x_train, y_train, x_test, y_test = heart_split(path)
    x_train, x_test = _flamby_zscore(x_train, x_test)  # the site's own statistics
    stem = path.name.removeprefix("processed.").removesuffix(".data")
    name = HEART_SITE_NAMES[HEART_SITES.index(stem)] if stem in HEART_SITES else stem
    return name, (x_train, y_train, x_test, y_test)


def _npz(path: Path) -> tuple[str, tuple]:
    with np.load(path) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise ValueError(f"data-path {str(path)!r}: the npz file lacks {missing}")
        return path.stem, tuple(f[k] for k in ("x_train", "y_train", "x_test", "y_test"))


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = "npz" if path.suffix == ".npz" else "heart_disease"
    if fmt not in SITE_FORMATS:
        raise ValueError(f"node config format={fmt!r} is not one of {SITE_FORMATS}")
    return fmt


def load_site(node_config: dict) -> SiteData:
    """The site's data from its node config (see the module docstring); errors name the key."""
    if "site" not in node_config or "data-path" not in node_config:
        raise ValueError(
            "node config needs site=<index 0..C-1> and data-path='<this site's file>' "
            f"(flower-supernode --node-config); got keys {sorted(node_config)}"
        )
    site = node_config["site"]
    if not isinstance(site, int) or isinstance(site, bool) or site < 0:
        raise ValueError(f"node config site={site!r} must be an integer >= 0")
    path = Path(os.path.expanduser(str(node_config["data-path"])))
    if not path.is_file():
        raise FileNotFoundError(f"node config data-path={str(path)!r}: no such file")
    fmt = _format_of(path, node_config.get("format"))
    name, arrays = (_heart if fmt == "heart_disease" else _npz)(path)
    return SiteData(site, str(node_config.get("name", name)), *arrays)
