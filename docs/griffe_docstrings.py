"""A griffe extension: the docstrings as written for ``help()``, read for the API reference.

- Sphinx roles become cross-references: ``:func:`lovasz_softmax``` names a function of the
  same module, ``:class:`lovasz.keras.CrossEntropyLovaszLoss``` one elsewhere. Each becomes a
  link (``[`name`][full.path]``) when its target is a public object of the package, and plain
  code otherwise (a private helper), so that no ``:func:`` is left in the rendered text.
- An ``Example:`` heading is read as Google style's ``Examples:``, so that its doctests
  render as code.
- An argument entry that names several arguments (``reduction, margin: as in ...``) becomes
  one entry per argument, so that each gets its own row with its type and default.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([A-Za-z_][\w.]*)`")
# Google style's section of doctests is "Examples:"; the docstrings say "Example:" (one each).
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` as seen from ``obj``'s docstring, or None if it is not public."""
    package = obj.package  # during loading, the package is not in griffe's collection yet
    if name == package.name or name.startswith(package.name + "."):
        candidates = [name]
    else:
        scope = obj if obj.is_module or obj.is_class else obj.parent
        candidates = []
        while scope is not None:
            candidates.append(f"{scope.path}.{name}")
            scope = scope.parent
    for path in candidates:
        head, _, rest = path.partition(".")
        if head != package.name:
            continue
        try:
            if rest:
                package[rest]
        except (KeyError, ValueError):
            continue
        return None if any(part.startswith("_") for part in path.split(".")) else path
    return None


_SECTION = re.compile(r"^(\s*)(?:Args|Arguments|Parameters):\s*$")
_GROUPED = re.compile(r"^(\s+)(\w+(?:\s*,\s*\w+)+):(.*)$")


def _split_grouped_args(text: str) -> str:
    """``a, b: text`` in an Args section becomes ``a: text`` and ``b: text`` (continuation lines too)."""
    lines = text.split("\n")
    out: list[str] = []
    i, section_indent = 0, None
    while i < len(lines):
        line = lines[i]
        header = _SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        if section_indent is not None and line.strip() and indent <= section_indent:
            section_indent = None
        grouped = _GROUPED.match(line) if section_indent is not None else None
        if grouped:
            item_indent = len(grouped.group(1))
            rest = []
            while (
                i + 1 < len(lines)
                and lines[i + 1].strip()
                and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > item_indent
            ):
                i += 1
                rest.append(lines[i])
            for name in (n.strip() for n in grouped.group(2).split(",")):
                out.append(f"{grouped.group(1)}{name}:{grouped.group(3)}")
                out.extend(rest)
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:

        def link(match: re.Match) -> str:
            name = match.group(1)
            path = _resolve(obj, name)
            return f"[`{name}`][{path}]" if path else f"`{name}`"

        value = _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(link, obj.docstring.value))
        obj.docstring.value = _split_grouped_args(value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)


class ReadDocstrings(griffe.Extension):
    """Rewrites every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        _rewrite(pkg)
