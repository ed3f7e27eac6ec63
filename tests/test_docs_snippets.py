"""Every ```python block of the documentation guides runs (in a fresh namespace, from a
temporary working directory), so the examples cannot go stale."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SNIPPETS = [
    pytest.param(code, id=f"{page.name}:{n}")
    for page in sorted([*DOCS.glob("*.md"), *DOCS.glob("guides/*.md")])
    for n, code in enumerate(BLOCK.findall(page.read_text()))
]


def test_the_guides_have_examples():
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs snippet>", "exec"), {"__name__": "__docs__"})
