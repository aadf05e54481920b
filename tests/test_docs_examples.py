"""Every ```python block of the documentation runs, page by page, in page order.

The pages are those of mkdocs.yml's nav (README.md for the front page, CHANGELOG.md for the changelog).
Each page's blocks run one after the other in one namespace, as a reader pasting them into one session
would, in a fresh Python process per page: pages import different frameworks, and Keras fixes its backend
(``KERAS_BACKEND``, set here) at its first import. A block whose first line is a ``>>>`` prompt runs as a
doctest in that namespace, its printed output compared. The processes run in the page's own temporary
folder, so files a page writes (``model.save``) land there.

Two HTML comments, invisible on the site and on GitHub, steer a page's run:

- ``<!-- docs-test: skip (REASON) -->`` on the line before a block (blank lines between are allowed)
  leaves that block out: one that needs a GPU, several processes or several devices;
- ``<!-- docs-test: setup`` ... ``-->`` holds Python that runs, hidden, before the next block (rare: a
  page should run as written).

A ``docs-test:`` comment of another form, or one followed by no Python block, fails the parse, so a
misspelt marker does not silently let a block through.

Run by hand: ``python tests/test_docs_examples.py docs/faq.md`` runs one page the way the test does.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Pages whose Markdown lives outside docs/ (docs/hooks.py puts it in place of the stub).
STAND_INS = {"index.md": ROOT / "README.md", "changelog.md": ROOT / "CHANGELOG.md"}
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")
# Keras' default backend: the pages run on it, except those that say their code runs on every backend.
KERAS_BACKEND = "tensorflow"
EVERY_KERAS_BACKEND = {"getting-started/keras.md": ("tensorflow", "jax", "torch")}
PAGE_TIMEOUT_S = 600

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
_MARKER = re.compile(r"^[ \t]*<!--[ \t]*docs-test:(?P<rest>.*)$")
_SKIP = re.compile(r"^[ \t]*skip[ \t]+\((?P<reason>[^)]+)\)[ \t]*-->[ \t]*$")
_SETUP = re.compile(r"^[ \t]*setup[ \t]*$")
_IMPORT = re.compile(r"^[ \t]*(?:import|from)[ \t]+(?P<module>[\w.]+)", re.MULTILINE)
# lovasz's framework modules import their framework.
_LOVASZ_MODULES = {"lovasz.torch": "torch", "lovasz.tf": "tensorflow", "lovasz.keras": "keras", "lovasz.jax": "jax"}


@dataclass(frozen=True)
class Block:
    """A piece of a page's Python: ``line`` is the page's line (1-based) of its first line of code."""

    line: int
    code: str
    kind: str  # "code", "doctest" or "setup"
    skip: str | None = None  # the reason, for a block left out


def nav_pages(mkdocs_yml: Path = ROOT / "mkdocs.yml") -> list[str]:
    """The pages of the nav, in its order, as paths relative to docs/."""
    text = mkdocs_yml.read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^[ \t]*-[ \t]+(?:[^:\n]+:[ \t]+)?([\w./-]+\.md)[ \t]*$", nav, re.MULTILINE)


def page_source(page: str) -> Path:
    """The Markdown file of the nav entry ``page``."""
    return STAND_INS.get(page, DOCS / page)


def _dedent(lines: list[str], indent: str) -> str:
    """A fenced block's lines without the fence's indentation (a block inside a list item)."""
    return "\n".join(line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines) + "\n"


def _marker_error(where: str, line: int, text: str) -> ValueError:
    return ValueError(
        f"{where}:{line}: a docs-test comment must be '<!-- docs-test: skip (REASON) -->' or "
        f"'<!-- docs-test: setup' with the code on the next lines and '-->' on its own line; got {text.strip()!r}"
    )


def _fence_end(lines: list[str], start: int, mark: str) -> int:
    """The index of the line closing the fence opened at ``start`` with ``mark`` (``len(lines)`` if none)."""
    for j in range(start + 1, len(lines)):
        text = lines[j].strip()
        if text.startswith(mark) and not text.strip(mark[0]):
            return j
    return len(lines)


def _setup_end(lines: list[str], start: int, where: str) -> int:
    """The index of the ``-->`` line closing the setup comment opened at ``start``."""
    for j in range(start + 1, len(lines)):
        if lines[j].strip() == "-->":
            return j
    raise ValueError(f"{where}:{start + 1}: a docs-test setup comment has no closing '-->' line")


def parse_blocks(markdown: str, where: str = "<page>") -> list[Block]:
    """The page's Python blocks and hidden setups, in page order."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str | None] | None = None  # (line, skip reason) of a marker awaiting its block
    i = 0
    while i < len(lines):
        fence, marker = _FENCE.match(lines[i]), _MARKER.match(lines[i])
        if marker:
            if pending is not None:
                raise ValueError(f"{where}:{pending[0]}: a docs-test comment is followed by another, not a block")
            skip, setup = _SKIP.match(marker["rest"]), _SETUP.match(marker["rest"])
            if skip:
                pending = (i + 1, skip["reason"].strip())
            elif setup:
                end = _setup_end(lines, i, where)
                blocks.append(Block(i + 2, textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n", "setup"))
                pending, i = (i + 1, None), end
            else:
                raise _marker_error(where, i + 1, lines[i])
        elif fence:
            end = _fence_end(lines, i, fence["fence"])
            info = fence["info"].lower()
            if info in ("python", "py", "python3", "pycon"):
                code = _dedent(lines[i + 1 : end], fence["indent"])
                kind = "doctest" if code.lstrip().startswith(">>>") else "code"
                blocks.append(Block(i + 2, code, kind, pending[1] if pending else None))
            elif pending is not None:
                raise ValueError(f"{where}:{pending[0]}: a docs-test comment is followed by a {info or 'plain'} block")
            pending, i = None, end
        elif pending is not None and lines[i].strip():
            raise ValueError(f"{where}:{pending[0]}: a docs-test comment is followed by text, not a Python block")
        i += 1
    if pending is not None:
        raise ValueError(f"{where}:{pending[0]}: a docs-test comment at the end of the page, with no block after it")
    return blocks


def frameworks_used(blocks: list[Block], keras_backend: str = KERAS_BACKEND) -> set[str]:
    """The frameworks the page's blocks that run import (and Keras' backend where Keras is one)."""
    modules = {m for b in blocks if b.skip is None for m in _IMPORT.findall(b.code)}
    used = {_LOVASZ_MODULES.get(m, m.split(".")[0]) for m in modules} & set(FRAMEWORKS)
    if "keras" in used:
        used.add(keras_backend)
    return used


# ---- the run of one page, in its own process -------------------------------------------------------


def _run_doctest(block: Block, namespace: dict, path: Path) -> bool:
    """The ``>>>`` block, in the page's namespace (which keeps what it defines); True if it passed."""
    name = f"{path.name}:{block.line}"
    test = doctest.DocTestParser().get_doctest(block.code, namespace, name, str(path), block.line - 1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, clear_globs=False)
    namespace.update(test.globs)
    return result.failed == 0


def run_page(path: Path) -> int:
    """Runs ``path``'s blocks in order in one namespace: 0 when all ran, 1 at the first failure."""
    namespace: dict = {"__name__": "__main__"}
    for block in parse_blocks(path.read_text(encoding="utf-8"), str(path)):
        if block.skip is not None:
            print(f"{path}:{block.line}: skipped ({block.skip})")
            continue
        print(f"{path}:{block.line}: {block.kind}", flush=True)
        start = time.perf_counter()
        if block.kind == "doctest":
            if not _run_doctest(block, namespace, path):
                return 1
        else:
            # Padded to the block's line: a traceback names the page's file and line, and shows that line.
            exec(compile("\n" * (block.line - 1) + block.code, str(path), "exec"), namespace)
        print(f"    {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_page(Path(sys.argv[1]).resolve()))


# ---- the tests -------------------------------------------------------------------------------------

import pytest  # noqa: E402  (the page runner above needs only the standard library)

from conftest import REQUIRED  # noqa: E402

PAGES = nav_pages()
PAGES_WITH_CODE = [page for page in PAGES if parse_blocks(page_source(page).read_text(encoding="utf-8"), page)]


def _run_id(page: str, keras_backend: str) -> str:
    """The file's path in the repository (README.md, docs/faq.md), and the backend where there are several."""
    name = page_source(page).relative_to(ROOT).as_posix()
    return f"{name}-{keras_backend}" if page in EVERY_KERAS_BACKEND else name


RUNS = [
    pytest.param(page, backend, id=_run_id(page, backend))
    for page in PAGES_WITH_CODE
    for backend in EVERY_KERAS_BACKEND.get(page, (KERAS_BACKEND,))
]


def _require_frameworks(blocks: list[Block], keras_backend: str) -> None:
    """Skip a page whose framework is missing, unless LOVASZ_REQUIRE names it (then fail)."""
    missing = sorted(f for f in frameworks_used(blocks, keras_backend) if importlib.util.find_spec(f) is None)
    required = [f for f in missing if f in REQUIRED]
    if required:
        pytest.fail(f"LOVASZ_REQUIRE names {', '.join(required)}, which is not installed")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.mark.parametrize(("page", "keras_backend"), RUNS)
def test_page_runs(page: str, keras_backend: str, tmp_path: Path) -> None:
    path = page_source(page)
    blocks = parse_blocks(path.read_text(encoding="utf-8"), page)
    runnable = [b for b in blocks if b.kind != "setup" and b.skip is None]
    if not runnable:
        pytest.skip(f"every block is marked: {'; '.join(sorted({b.skip for b in blocks if b.skip}))}")
    _require_frameworks(blocks, keras_backend)
    env = {
        **os.environ,
        "KERAS_BACKEND": keras_backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # a GPU machine's other test processes keep their memory (TensorFlow and JAX take most of it)
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    command = [sys.executable, str(Path(__file__).resolve()), str(path)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"{page}: a block failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    ran = result.stdout.count(": code\n") + result.stdout.count(": doctest\n")
    assert ran == len(runnable), result.stdout


def test_nav_pages_are_found() -> None:
    """The nav's parse finds the pages (a change to mkdocs.yml's layout would otherwise test nothing)."""
    assert PAGES[0] == "index.md" and "getting-started/pytorch.md" in PAGES and "faq.md" in PAGES
    assert len(PAGES) == len(set(PAGES))
    for page in PAGES:
        assert page_source(page).is_file(), page
    assert {"index.md", "faq.md", "training.md", "getting-started/keras.md"} <= set(PAGES_WITH_CODE)


PAGE = """\
Text.

```python
x = 1
```

- a list item:

    ```python
    y = x + 1
    ```

<!-- docs-test: skip (needs two GPUs) -->

```python
raise RuntimeError
```

```sh
pip install lovasz
```

<!-- docs-test: setup
z = 40
-->
```python
>>> z + y
42
```
"""


def test_blocks_parse_in_page_order() -> None:
    blocks = parse_blocks(PAGE)
    assert [(b.line, b.kind, b.skip) for b in blocks] == [
        (4, "code", None),
        (10, "code", None),
        (16, "code", "needs two GPUs"),
        (24, "setup", None),
        (27, "doctest", None),
    ]
    assert blocks[1].code == "y = x + 1\n"  # the list item's indentation is gone
    assert blocks[3].code == "z = 40\n"


def test_page_runs_in_one_namespace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    assert run_page(page) == 0  # the skipped block would raise
    assert "page.md:16: skipped (needs two GPUs)" in capsys.readouterr().out
    page.write_text(PAGE.replace("42\n```", "41\n```"))
    assert run_page(page) == 1  # a doctest's output is compared
    assert "Expected:\n    41\nGot:\n    42" in capsys.readouterr().out


def test_a_failing_block_names_the_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```python\nx = 1\nundefined_name\n```\n")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(page)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f'File "{page}", line 5' in result.stderr and "NameError" in result.stderr


@pytest.mark.parametrize(
    "text",
    [
        "<!-- docs-test: skp (typo) -->\n```python\nx = 1\n```\n",
        "<!-- docs-test: skip -->\n```python\nx = 1\n```\n",  # no reason
        "<!-- docs-test: skip (reason) -->\nSome text.\n```python\nx = 1\n```\n",
        "<!-- docs-test: skip (reason) -->\n```sh\nls\n```\n",
        "```python\nx = 1\n```\n<!-- docs-test: skip (reason) -->\n",
        "<!-- docs-test: setup\nx = 1\n",
    ],
    ids=["misspelt", "no-reason", "text-between", "shell-block", "at-the-end", "setup-unclosed"],
)
def test_stray_or_misspelt_markers_fail(text: str) -> None:
    with pytest.raises(ValueError, match="docs-test"):
        parse_blocks(text)
