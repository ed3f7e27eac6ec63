"""The documentation site: API pages up to date, a strict MkDocs build, and every exported
public name in the generated API reference."""

import importlib
import inspect
import os
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
        public = {
            n for n, v in vars(module).items()
            if not n.startswith("_") and not inspect.ismodule(v)
            and (getattr(v, "__module__", "") or "").startswith("fljax")
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
