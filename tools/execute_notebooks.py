"""Executes ``notebooks/*.ipynb`` top to bottom and saves them with their outputs.

The documentation site renders the notebooks from these committed outputs (mkdocs-jupyter,
``execute: false``), so ``make docs`` stays fast and needs no kernel; ``tests/test_notebooks.py``
re-executes every notebook and fails when its outputs no longer have the committed shape.
Run ``python tools/execute_notebooks.py`` after editing a notebook.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` executed in a fresh ``python3`` kernel (cwd: its folder)."""
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    for cell in nb.cells:  # no timing noise in the diff of a re-run
        cell.get("metadata", {}).pop("execution", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    names = argv if argv else sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names:
        path = NOTEBOOKS / name
        nbformat.write(execute(path), path)
        print(f"executed {path.relative_to(NOTEBOOKS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
