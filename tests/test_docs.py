"""The documentation site: API pages up to date, a strict MkDocs build, and every exported
public name in the generated API reference."""

import importlib
import inspect
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import api_docs  # noqa: E402


def _inventory(site: Path) -> set[str]:
    """Object names in the built site's ``objects.inv`` (Sphinx inventory v2)."""
    raw = (site / "objects.inv").read_bytes()
    start = 0
    for _ in range(4):  # four header lines, then zlib
        start = raw.index(b"\n", start) + 1
    return {line.split()[0] for line in zlib.decompress(raw[start:]).decode().splitlines()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_api_pages_are_up_to_date():
    assert api_docs.main(["--check"]) == 0, "run python tools/api_docs.py"


def test_exported_names_match_the_modules():
    """The names the pages list are the modules' public attributes (AST and import agree)."""
    for name in api_docs.MODULES:
        module = importlib.import_module(name)
        listed = set(api_docs.exported(name))
        assert all(hasattr(module, n) for n in listed), name
        # A package exports what it re-exports from fljax; a plain module what it defines.
        home = "fljax" if api_docs.source_of(name).name == "__init__.py" else name
        public = {
            n for n, v in vars(module).items()
            if not n.startswith("_") and not inspect.ismodule(v)
            and (getattr(v, "__module__", "") or "").startswith(home)
        }  # fmt: skip
        assert public <= listed, (name, sorted(public - listed))


def test_every_exported_name_is_in_the_api_reference(site):
    names = _inventory(site)
    missing = [f"{m}.{n}" for m in api_docs.MODULES for n in api_docs.exported(m)
               if f"{m}.{n}" not in names]  # fmt: skip
    assert not missing, missing
    assert sum(len(api_docs.exported(m)) for m in api_docs.MODULES) > 250
    for page in ("index.html", "getting-started.html", "api/algorithms.html"):
        assert (site / page).exists(), page


def test_every_exported_name_has_a_docstring():
    """What the API reference shows for each exported name: its source docstring, or for a
    factory-built name the runtime one (tools/griffe_roles.py); none may be empty."""
    griffe = pytest.importorskip("griffe")
    import griffe_roles

    pkg = griffe.load("fljax", search_paths=[str(ROOT)], resolve_aliases=True)
    assert griffe_roles.runtime_docstrings(pkg) == []


def test_docstring_roles_are_rendered(site):
    """No Sphinx role is left raw (tools/griffe_roles.py): cross-references became links or
    code, and formulas MathML."""
    pages = sorted((site / "api").glob("*.html"))
    raw = [(p.name, m) for p in pages for m in re.findall(
        r":(?:func|class|meth|attr|data|obj|mod|math):`[^`<]*`", p.read_text())]  # fmt: skip
    assert not raw, raw[:5]
    compress = (site / "api" / "compress.html").read_text()
    assert compress.count("<math") > 5  # QSGD's and Top-k's formulas
    aggregate = (site / "api" / "aggregate.html").read_text()
    links = re.findall(r'<a class="autorefs autorefs-internal"[^>]* href="([^"]+)"', aggregate)
    assert "fljax.html#fljax.simulate" in links  # ":func:`fljax.simulate`", linked
    algorithms = (site / "api" / "algorithms.html").read_text()
    assert "_fedopt_builder" not in algorithms  # factory-built: a signature, not the call


def test_every_guide_has_an_example_and_every_notebook_is_rendered(site):
    for guide in sorted((ROOT / "docs" / "guides").glob("*.md")):
        assert "```python" in guide.read_text(), f"{guide.name} has no runnable example"
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (site / "notebooks" / f"{nb.stem}.html").read_text()
        assert page.count("data:image/png") >= 1, f"{nb.name}: no figure in the rendered page"
