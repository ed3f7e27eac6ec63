"""The API reference pages of the documentation site: one page per public module, one
mkdocstrings entry per exported name.

A name is exported by a package when its ``__init__`` re-exports it the house way
(``from fljax.x._y import name as name``) or defines it without a leading underscore; by a
plain module (``fljax.metrics``) when it defines it without a leading underscore.
``python tools/api_docs.py`` writes ``docs/api/*.md``; ``--check`` exits 1 when they are stale
(``make docs`` writes them, ``tests/test_docs.py`` checks them and the built site).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("fljax", "fljax.aggregate", "fljax.algorithms", "fljax.attacks", "fljax.client",
           "fljax.compress", "fljax.data", "fljax.deploy", "fljax.engine", "fljax.metrics",
           "fljax.models", "fljax.personalize", "fljax.privacy", "fljax.system",
           "fljax.unlearning", "fljax.valuation", "fljax.distributed", "fljax.report")  # fmt: skip


def source_of(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def exported(module: str) -> list[str]:
    """The names ``module`` exports (submodules excluded), in source order."""
    tree = ast.parse(source_of(module).read_text())
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fljax"):
            for alias in node.names:
                if alias.asname == alias.name and not alias.name.startswith("_"):
                    if f"{node.module}.{alias.name}" not in MODULES:
                        names.append(alias.name)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def page(module: str) -> str:
    doc = ast.get_docstring(ast.parse(source_of(module).read_text())) or ""
    entries = "\n\n".join(f"::: {module}.{name}" for name in exported(module))
    return f"# {module}\n\n{doc}\n\n{entries}\n"


def pages() -> dict[str, str]:
    """``{docs/api/<file>.md: text}`` for every public module."""
    return {f"docs/api/{m.removeprefix('fljax.') if m != 'fljax' else 'fljax'}.md": page(m)
            for m in MODULES}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api is stale")
    args = p.parse_args(argv)
    wanted = pages()
    stale = [f for f, text in wanted.items()
             if not (ROOT / f).exists() or (ROOT / f).read_text() != text]  # fmt: skip
    if args.check:
        if stale:
            print(f"stale API pages (run python tools/api_docs.py): {stale}")
        return 1 if stale else 0
    for f, text in wanted.items():
        (ROOT / f).write_text(text)
    print(f"wrote {len(wanted)} API pages ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
