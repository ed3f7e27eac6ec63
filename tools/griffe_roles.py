"""A griffe extension for the API reference: renders the Sphinx roles of fljax's docstrings.

The docstrings are Google style with reStructuredText roles (the house style, read as-is by
``help()`` and IDEs). In the site:

- ``:func:`name```, ``:class:``, ``:meth:``, ``:attr:``, ``:data:``, ``:obj:``, ``:mod:``
  become links to the name's entry in the API reference when the name (as written, or
  relative to the documenting module's public package) is an exported name
  (``tools/api_docs.py``), else inline code (modules too: a module has a page, not an
  entry). A link whose target is missing fails the strict build, so only targets known to
  exist are linked.
- ``:math:`tex``` becomes MathML (``latex2mathml``), which browsers render natively: no
  script, no network; a formula it cannot convert fails the build.

A name built by a factory (``fedadam = _fedopt_builder("adam")``) has no docstring in the
source griffe reads; its entry gets the runtime ``__doc__`` the factory set.

Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions``); ``tests/test_docs.py`` checks that no
role is left in the built pages.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import griffe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_docs  # noqa: E402

ROLE = re.compile(r":(func|class|meth|attr|data|obj|mod|math):`([^`]+)`")
DOCUMENTED = {f"{m}.{n}" for m in api_docs.MODULES for n in api_docs.exported(m)}


def public_package(path: str) -> str:
    """``fljax.aggregate._mean.weighted_mean`` -> ``fljax.aggregate`` (up to the first private
    component, objects dropped)."""
    parts = []
    for part in path.split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    while parts and ".".join(parts) not in api_docs.MODULES:  # fljax.metrics: a module
        parts.pop()
    return ".".join(parts) or "fljax"


def resolve(name: str, where: str) -> str | None:
    """The documented identifier ``name`` refers to from the object at ``where``, or None."""
    if name in DOCUMENTED:
        return name
    head, _, rest = name.partition(".")
    for package in (public_package(where), "fljax"):
        if f"{package}.{head}" in DOCUMENTED:
            return f"{package}.{name}" if not rest else None
    matches = sorted(d for d in DOCUMENTED if d.endswith("." + name))
    return matches[0] if len(matches) == 1 else None


def math(tex: str, where: str) -> str:
    """``tex`` as inline MathML; a formula latex2mathml cannot read fails the build, naming
    the object (all 202 of fljax's convert)."""
    from latex2mathml.converter import convert

    try:
        mathml = convert(tex)
    except Exception as err:
        raise ValueError(f"{where}: cannot render :math:`{tex}` ({err!r})") from err
    # In a span: Python-Markdown takes a line that starts with <math> for an HTML block.
    return f'<span class="math">{mathml}</span>'


def render(text: str, where: str) -> str:
    """``text`` with every role replaced (see the module docstring)."""

    def one(match: re.Match) -> str:
        role, body = match.groups()
        if role == "math":
            return math(body, where)
        name = body.lstrip("~").removesuffix("()")
        shown = name.rsplit(".", 1)[-1] if body.startswith("~") else name
        target = resolve(name, where)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

    return ROLE.sub(one, text)


def runtime_docstrings(pkg: griffe.Module) -> list[str]:
    """Gives every exported name of ``pkg`` without a source docstring its runtime
    ``__doc__`` (roles rendered); returns the names still without one."""
    missing = []
    for module in api_docs.MODULES:
        if module.split(".")[0] != pkg.path:
            continue
        node = pkg if module == pkg.path else pkg[module.removeprefix(pkg.path + ".")]
        for name in api_docs.exported(module):
            target = node[name].final_target if node[name].is_alias else node[name]
            if target.docstring is not None and target.docstring.value.strip():
                continue
            value = getattr(importlib.import_module(module), name)
            doc = inspect.getdoc(value) if callable(value) else None
            if not doc or doc == inspect.getdoc(type(value)):
                missing.append(f"{module}.{name}")
                continue
            if target.is_attribute and inspect.isfunction(value):
                target = as_function(target, value)
            target.docstring = griffe.Docstring(render(doc, target.path), parent=target)
    return missing


def _text(value: Any, annotation: bool = False) -> str | None:
    """A runtime default, or annotation (a string under postponed evaluation), as griffe's
    source text (None: absent)."""
    if value is inspect.Parameter.empty:
        return None
    return value if annotation and isinstance(value, str) else repr(value)


def as_function(attribute: griffe.Object, fn: Any) -> griffe.Function:
    """A griffe function with ``fn``'s runtime signature in place of the module attribute
    ``name = factory(...)`` that made it, so its entry shows a signature, not the call."""
    sig = inspect.signature(fn)
    params = griffe.Parameters(*[
        griffe.Parameter(p.name, annotation=_text(p.annotation, True), default=_text(p.default),
                         kind=griffe.ParameterKind(p.kind.description))
        for p in sig.parameters.values()
    ])  # fmt: skip
    function = griffe.Function(
        attribute.name, parameters=params, returns=_text(sig.return_annotation, True),
        lineno=attribute.lineno, endlineno=attribute.endlineno,
    )  # fmt: skip
    attribute.parent.set_member(attribute.name, function)
    return function


class SphinxRoles(griffe.Extension):
    """Rewrites each docstring's roles when griffe creates the object, and fills factory-built
    names' docstrings once the package is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = render(obj.docstring.value, obj.path)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        runtime_docstrings(pkg)
