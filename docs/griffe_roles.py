"""A griffe extension: the docstrings' Sphinx roles (``:func:`name```) become cross-references.

The docstrings are written for ``help()`` and Sphinx-like readers: ``:func:`lovasz_softmax```
names a function of the same module, ``:class:`lovasz.keras.CrossEntropyLovaszLoss``` one
elsewhere. In the API reference each becomes a link (``[`name`][full.path]``) when its target
is a public object of the package, and plain code otherwise (a private helper), so that no
``:func:`` is left in the rendered text. An ``Example:`` heading is read as Google style's
``Examples:``, so that its doctests render as code.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([A-Za-z_][\w.]*)`")
# Google style's section of doctests is "Examples:"; the docstrings say "Example:" (one each).
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` as seen from ``obj``'s docstring, or None if it is not public."""
    if name.startswith("lovasz"):
        candidates = [name]
    else:
        scope = obj if obj.is_module or obj.is_class else obj.parent
        candidates = []
        while scope is not None:
            candidates.append(f"{scope.path}.{name}")
            scope = scope.parent
    package = obj.package  # during loading, the package is not in griffe's collection yet
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


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:

        def link(match: re.Match) -> str:
            name = match.group(1)
            path = _resolve(obj, name)
            return f"[`{name}`][{path}]" if path else f"`{name}`"

        obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", _ROLE.sub(link, obj.docstring.value))
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        _rewrite(pkg)
