"""The documentation site builds with ``mkdocs build --strict``, and its API reference holds every public name.

The public names are read from the ``__all__`` of each module's source (no framework is imported);
mkdocstrings gives each documented object a heading whose id is its full path
(``lovasz.torch.lovasz_softmax``), and the test looks for that id in the generated pages.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "lovasz"
# The public modules: the package, one module per framework, the metrics, the schedule and the oracle.
MODULES = ["lovasz", "lovasz.torch", "lovasz.tf", "lovasz.keras", "lovasz.jax", "lovasz.metrics"]
MODULES += ["lovasz.schedule", "lovasz.reference"]


def _source(module: str) -> Path:
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    return PACKAGE.joinpath(*parts[:-1], parts[-1] + ".py")


def public_names(module: str) -> list[str]:
    """The names in the ``__all__`` of ``module``'s source ([] for a module without one)."""
    tree = ast.parse(_source(module).read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(node.value))
    return []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module's tests."""
    require("mkdocs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    result = subprocess.run(
        command + ["-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return out


def test_modules_have_sources():
    for module in MODULES:
        assert _source(module).is_file(), module
    assert public_names("lovasz.torch"), "__all__ of lovasz.torch not found"


def test_front_page_is_the_readme(site):
    html = (site / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)  # highlighted code is split into spans
    assert "Exact, vectorised Lovász-Softmax" in text
    assert "make demo" in text and "make test" in text
    assert 'href="docs/' not in html, "a README link into docs/ was not made relative to the site"


def test_nav_pages_built(site):
    for page in ["conventions", "migrating", "training", "metrics", "benchmark", "testing", "faq", "api/torch"]:
        assert (site / page / "index.html").is_file(), page


@pytest.mark.parametrize("module", MODULES)
def test_public_names_in_api_reference(site, module):
    html = "".join(page.read_text(encoding="utf-8") for page in (site / "api").rglob("*.html"))
    assert f'id="{module}"' in html, f"{module} has no section in the API reference (docs/api/)"
    missing = [name for name in public_names(module) if f'id="{module}.{name}"' not in html]
    assert not missing, f"public names of {module} missing from the API reference: {missing}"
