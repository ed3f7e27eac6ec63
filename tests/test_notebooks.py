"""Every notebook runs top to bottom (nbclient), each well under two minutes on CPU, and its
committed outputs (what the documentation site renders) have the shape a fresh run gives."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _shape(nb) -> list[list[str]]:
    """Per code cell, the kinds of its outputs: stdout text (consecutive chunks as one: how a
    stream is split depends on timing), figures and other results; stderr is left out (its
    warnings depend on the machine)."""
    shapes = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        kinds: list[str] = []
        for o in cell.get("outputs", []):
            kind = o.get("name") or ("figure" if "image/png" in o.get("data", {})
                                     else o["output_type"])  # fmt: skip
            if kind != "stderr" and not (kinds and kind == "stdout" == kinds[-1]):
                kinds.append(kind)
        shapes.append(kinds)
    return shapes


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    sys.path.insert(0, str(ROOT / "tools"))
    import execute_notebooks

    committed = nbformat.read(path, as_version=4)
    nb = execute_notebooks.execute(path)  # raises CellExecutionError on a failing cell
    assert any("figure" in kinds for kinds in _shape(nb))  # figures were drawn
    assert _shape(committed) == _shape(nb), (
        f"{path.name}: the committed outputs are stale; run python tools/execute_notebooks.py"
    )
