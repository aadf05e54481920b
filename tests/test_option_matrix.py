"""docs/options.md's tables of options per loss and framework against the real signatures.

Each table's header names a function or class per column (``lovasz.torch.lovasz_softmax``); a cell
names that callable's parameters in backticks (`` `ignore_index` ``), or starts with ``—`` where it
has none of its row's. The test reads the tables, so the page cannot drift from the code: every name
in a cell must be a parameter, a ``—`` must be true, every parameter must be in its column, and every
public loss of every framework must head a column.
"""

import importlib
import inspect
import re
from pathlib import Path

import pytest

from conftest import require

DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"
CALLABLE = re.compile(r"^`(lovasz\.\w+\.\w+)`$")
NAME = re.compile(r"`([a-z_][a-z0-9_]*)`")  # a parameter; `'multiclass'`, `jax.jit`, `y_true [N, 2]` are not
ABSENT = "—"
# Public, and no option matrix: the original's flat API, kept as the original has it (no options to match).
FLAT = {"lovasz_grad", "lovasz_softmax_flat", "lovasz_hinge_flat", "flatten_probas", "flatten_binary_scores"}
# ... and its other helpers, in lovasz.torch as in the original (tested against it in test_torch_legacy.py)
FLAT |= {"iou", "iou_binary", "isnan", "mean", "xloss", "binary_xloss", "StableBCELoss"}
# Public, and not a loss: lovasz.jax's context for jax.export.
NOT_LOSSES = {"exportable"}


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The markdown tables of ``text`` whose header names at least one callable: (header, rows) of cells."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append([cell.strip() for cell in lines[i].strip().strip("|").split("|")])
            i += 1
        header, rows = block[0], block[2:]  # block[1] is the |---| line
        if any(CALLABLE.match(cell) for cell in header):
            assert all(len(row) == len(header) for row in rows), (
                f"a row of the table {header} has a cell too many or few"
            )
            found.append((header, rows))
    return found


def resolve(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(require(module), name)


def parameters(obj) -> set[str]:
    """The options of a loss: a function's parameters after its two inputs; a class's constructor's, and
    the keyword-only ones of a torch module's ``forward`` (per-call options, such as the scenes)."""
    if not inspect.isclass(obj):
        return set(list(inspect.signature(obj).parameters)[2:])
    names = set(inspect.signature(obj).parameters)
    forward = getattr(obj, "forward", None)
    if forward is not None:
        kinds = inspect.signature(forward).parameters.values()
        names |= {p.name for p in kinds if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return names


@pytest.fixture(scope="module")
def matrix():
    for module in ("lovasz.torch", "lovasz.tf", "lovasz.jax", "lovasz.keras"):
        require(module)
    found = tables(DOC.read_text(encoding="utf-8"))
    assert len(found) >= 4, "docs/options.md: the tables of options were not found"
    return found


def columns(matrix):
    """(callable path, callable, [(its cell, the row's option and callable cells)]) per callable column; the
    last column's reasons are no cells of a callable."""
    for header, rows in matrix:
        called = [j for j, cell in enumerate(header) if CALLABLE.match(cell)]
        for j in called:
            path = CALLABLE.match(header[j]).group(1)
            yield path, resolve(path), [(row[j], [row[0]] + [row[k] for k in called]) for row in rows]


def wrong_names(matrix) -> list[str]:
    """Cells that name something their column's callable has not (or name nothing)."""
    wrong = []
    for path, obj, cells in columns(matrix):
        params = parameters(obj)
        for cell, row in cells:
            if cell.startswith(ABSENT):
                continue
            names = NAME.findall(cell)
            if not names:
                wrong.append(f"{path}, row {row[0]!r}: the cell names no parameter (write {ABSENT} where it has none)")
            wrong += [f"{path}, row {row[0]!r}: no parameter {name!r}" for name in names if name not in params]
    return wrong


def wrong_dashes(matrix) -> list[str]:
    """``—`` cells whose callable has a parameter that their row names elsewhere."""
    wrong = []
    for path, obj, cells in columns(matrix):
        params = parameters(obj)
        for cell, row in cells:
            if cell.startswith(ABSENT):
                named = {name for other in row if not other.startswith(ABSENT) for name in NAME.findall(other)}
                wrong += [f"{path} has {name!r}, marked {ABSENT} in row {row[0]!r}" for name in sorted(named & params)]
    return wrong


def missing(matrix) -> list[str]:
    """Parameters that no cell of their callable's column names."""
    out = []
    for path, obj, cells in columns(matrix):
        named = {name for cell, _ in cells if not cell.startswith(ABSENT) for name in NAME.findall(cell)}
        out += [f"{path}: {name}" for name in sorted(parameters(obj) - named)]
    return out


def test_every_name_in_a_cell_is_a_parameter(matrix):
    assert not wrong_names(matrix), "\n".join(wrong_names(matrix))


def test_every_dash_is_true(matrix):
    assert not wrong_dashes(matrix), "\n".join(wrong_dashes(matrix))


def test_every_parameter_is_in_its_column(matrix):
    assert not missing(matrix), "parameters missing from docs/options.md:\n" + "\n".join(missing(matrix))


def public_losses() -> set[str]:
    """Every public loss: the functions of lovasz.torch, lovasz.tf and lovasz.jax (but the flat API), the
    torch modules and the Keras losses."""
    keras = require("keras")
    nn = require("torch.nn")
    losses = set()
    for module in ("lovasz.torch", "lovasz.tf", "lovasz.jax", "lovasz.keras"):
        loaded = importlib.import_module(module)
        for name in loaded.__all__:
            obj = getattr(loaded, name)
            if name in FLAT | NOT_LOSSES:
                continue
            if inspect.isclass(obj):
                if issubclass(obj, (keras.losses.Loss, nn.Module)):
                    losses.add(f"{module}.{name}")
            elif callable(obj):
                losses.add(f"{module}.{name}")
    return losses


def test_every_public_loss_heads_a_column(matrix):
    headed = {path for path, _, _ in columns(matrix)}
    assert public_losses() - headed == set(), "public losses without a column in docs/options.md"
    assert "lovasz.keras.CrossEntropyLovaszLoss" in headed and "lovasz.jax.lovasz_hinge" in headed


def test_a_drifted_table_fails():
    """Each check catches its drift, on a table made up here."""
    require("lovasz.torch")
    text = (
        "| option | `lovasz.torch.lovasz_hinge` | why |\n|---|---|---|\n"
        "| ignored label | `ignore_index` | the function says ignore |\n"
        "| scenes (`batch`) | — | it has batch |\n"
    )
    matrix = tables(text)
    assert wrong_names(matrix) == ["lovasz.torch.lovasz_hinge, row 'ignored label': no parameter 'ignore_index'"]
    assert wrong_dashes(matrix) == ["lovasz.torch.lovasz_hinge has 'batch', marked — in row 'scenes (`batch`)'"]
    assert "lovasz.torch.lovasz_hinge: margin" in missing(matrix)
