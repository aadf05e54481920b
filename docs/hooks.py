"""mkdocs hooks: README.md is the site's front page, CHANGELOG.md its changelog.

``docs/index.md`` and ``docs/changelog.md`` are stubs; their content is replaced by
README.md and CHANGELOG.md. README's links to ``docs/<page>.md`` (relative, so that they
work on GitHub) are made relative to the docs, and a list that follows its heading line
without a blank line (which GitHub renders as a list, Python-Markdown as one paragraph)
gets one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# README's links and images into docs/, and to the changelog, as seen from docs/index.md.
_LINKS = [
    (re.compile(r"\]\(docs/"), "]("),
    (re.compile(r"\]\(CHANGELOG\.md\)"), "](changelog.md)"),
]
# A list item right after a line of text: "Speed:\n- ..." becomes "Speed:\n\n- ...".
_LIST_AFTER_TEXT = re.compile(r"^([^\s\-*#|>`][^\n]*)\n([ \t]*[-*] )", re.MULTILINE)


def front_page(readme: str) -> str:
    """README's Markdown with its repository-relative links made relative to docs/."""
    for pattern, replacement in _LINKS:
        readme = pattern.sub(replacement, readme)
    return _LIST_AFTER_TEXT.sub(r"\1\n\n\2", readme)


def changelog(text: str) -> str:
    """CHANGELOG's Markdown, its lists separated from the lines that introduce them."""
    return _LIST_AFTER_TEXT.sub(r"\1\n\n\2", text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        return front_page((ROOT / "README.md").read_text(encoding="utf-8"))
    if page.file.src_uri == "changelog.md":
        return changelog((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    return markdown
