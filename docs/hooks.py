"""mkdocs hooks: README.md is the site's front page.

``docs/index.md`` is a stub; its content is replaced by README.md, whose links to
``docs/<page>.md`` (relative, so that they work on GitHub) are made relative to the docs.
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


def front_page(readme: str) -> str:
    """README's Markdown with its repository-relative links made relative to docs/."""
    for pattern, replacement in _LINKS:
        readme = pattern.sub(replacement, readme)
    return readme


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        return front_page((ROOT / "README.md").read_text(encoding="utf-8"))
    return markdown
