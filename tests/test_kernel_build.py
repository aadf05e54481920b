"""The C kernel is portable C99: every compiler found (gcc, clang) builds src/lovasz/_kernel.c with
``-std=c99 -Wall -Wextra -pedantic -Werror``, against the limited API as setup.py builds it and against
the full API (free-threaded CPython), and each build, loaded with ctypes, gives the oracle's losses and
the installed kernel's gradients.

A compiler that is not installed is skipped, except gcc where LOVASZ_REQUIRE names ``kernel`` (as in
``make test``). clang is Debian's ``clang`` package where someone installed it; CI may not have it.
"""

import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import pytest

import lovasz
from conftest import REQUIRED
from lovasz import _ckernel, reference

SOURCE = Path(__file__).resolve().parent.parent / "src" / "lovasz" / "_kernel.c"
FLAGS = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O2"]
APIS = {"limited-api": ["-DPy_LIMITED_API=0x030A0000"], "full-api": []}
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _compiler(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if name == "gcc" and "kernel" in REQUIRED:
            pytest.fail("gcc is not on PATH, but LOVASZ_REQUIRE names the kernel (install gcc)")
        pytest.skip(f"{name} is not installed")
    return path


def _python_include() -> str:
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        if "kernel" in REQUIRED:
            pytest.fail(f"no Python.h in {include}, but LOVASZ_REQUIRE names the kernel")
        pytest.skip(f"no Python.h in {include} (the Python headers are not installed)")
    return include


def _clear_kernel_caches():
    for value in vars(_ckernel).values():
        if hasattr(value, "cache_clear"):
            value.cache_clear()


@pytest.fixture
def use_library(monkeypatch):
    """Make lovasz._ckernel load the given shared library as if it were the installed kernel."""

    def use(library: Path):
        module = types.ModuleType("lovasz._kernel")
        module.__file__ = str(library)
        monkeypatch.setitem(sys.modules, "lovasz._kernel", module)
        monkeypatch.setattr(lovasz, "_kernel", module, raising=False)
        _clear_kernel_caches()
        assert _ckernel.kernel() is not None, _ckernel.why_not()

    yield use
    monkeypatch.undo()
    _clear_kernel_caches()


def _rows(mode: int, seed: int = 0):
    """Loss and gradient of 3 rows of 2 sets of 300 pixels (some ignored), by the loaded kernel."""
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=(2, 3, 300)).astype(np.float32)
    if mode == _ckernel.SOFTMAX:
        pred = 1 / (1 + np.exp(-pred))
    codes = rng.integers(0, 2, size=pred.shape).astype(np.uint8)
    codes[:, :, :20] = 2  # ignored
    grad = np.empty_like(pred)
    loss, present = _ckernel.lovasz_rows(pred, codes, mode, grad, 1)
    return pred, codes, loss, present, grad


def _oracle(pred, codes, mode: int) -> np.ndarray:
    losses = []
    for r in range(pred.shape[1]):
        x, c = pred[:, r].reshape(-1).astype(np.float64), codes[:, r].reshape(-1)
        x, fg = x[c != 2], (c[c != 2] == 1).astype(np.float64)
        if mode == _ckernel.SOFTMAX:
            losses.append(reference.lovasz_extension(np.abs(fg - x), fg))
        else:
            losses.append(reference.lovasz_hinge_flat(x, fg))
    return np.array(losses)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", ["gcc", "clang"])
def test_kernel_compiles_warning_free(name, api, tmp_path, use_library):
    compiler, include = _compiler(name), _python_include()
    if api == "limited-api" and FREE_THREADED:
        pytest.skip("free-threaded CPython before 3.15 has no limited API: setup.py builds the full one")
    library = tmp_path / f"_kernel_{name}_{api}.so"
    link = ["-shared", "-fPIC"] + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else [])
    command = [compiler, *FLAGS, *APIS[api], *link, f"-I{include}", str(SOURCE), "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not result.stderr.strip(), (
        f"{' '.join(command)}\nexit {result.returncode}\n{result.stderr}{result.stdout}"
    )

    installed = _ckernel.kernel() is not None
    expected = {mode: _rows(mode) for mode in (_ckernel.SOFTMAX, _ckernel.HINGE)} if installed else {}
    use_library(library)
    for mode in (_ckernel.SOFTMAX, _ckernel.HINGE):
        pred, codes, loss, present, grad = _rows(mode)
        np.testing.assert_allclose(loss, _oracle(pred, codes, mode), rtol=1e-5, atol=1e-6)
        assert present.all()
        if installed:  # the installed build (setup.py's flags) and this one: the same gradients
            np.testing.assert_allclose(grad, expected[mode][4], rtol=0, atol=1e-7)


def test_fast_math_build_is_refused(tmp_path):
    """-ffast-math (or -Ofast) would break the exponential's rounding and the NaN selects: no build."""
    compiler, include = _compiler("gcc"), _python_include()
    command = [compiler, "-O2", "-ffast-math", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", "x.so"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "must not be built with -ffast-math" in result.stderr


@pytest.mark.parametrize("version", [None, 1, 99])
def test_library_of_another_abi_is_refused(tmp_path, monkeypatch, version):
    """An in-place build left from an older commit (no version, or another) is not called: the torch.sort /
    lax.sort paths serve, and why_not() says to rebuild."""
    compiler = _compiler("gcc")
    source = tmp_path / "old.c"
    entry = "int lovasz_rows_f32(void) { return 0; }\n"
    source.write_text(entry + ("" if version is None else f"int lovasz_abi_version(void) {{ return {version}; }}\n"))
    library = tmp_path / "old.so"
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(library)], check=True, timeout=300)
    module = types.ModuleType("lovasz._kernel")
    module.__file__ = str(library)
    monkeypatch.setitem(sys.modules, "lovasz._kernel", module)
    monkeypatch.setattr(lovasz, "_kernel", module, raising=False)
    _clear_kernel_caches()
    try:
        assert _ckernel.kernel() is None
        assert f"ABI {version or 1}, this one {_ckernel.ABI}" in _ckernel.why_not() and "rebuild" in _ckernel.why_not()
    finally:
        monkeypatch.undo()
        _clear_kernel_caches()


def test_ctypes_boundary_checks_are_real():
    """Checks at the boundary raise (python -O strips asserts; a wrong array would be read as garbage)."""
    if _ckernel.kernel() is None:
        pytest.skip("the kernel is not built")
    pred = np.random.default_rng(0).random((1, 2, 50)).astype(np.float32)
    codes = np.zeros(pred.shape, np.uint8)
    with pytest.raises(TypeError, match="pred must be a float32 array; got float64"):
        _ckernel.lovasz_rows(pred.astype(np.float64), codes, _ckernel.SOFTMAX, None, 1)
    with pytest.raises(TypeError, match="codes must be a uint8 array; got int64"):
        _ckernel.lovasz_rows(pred, codes.astype(np.int64), _ckernel.SOFTMAX, None, 1)
    with pytest.raises(ValueError, match="grad must be a writeable C-contiguous array"):
        _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, np.empty((1, 50, 2), np.float32).transpose(0, 2, 1), 1)
    with pytest.raises(ValueError, match=r"grad must have shape \[1, 2, 50\]"):
        _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, np.empty((1, 2, 49), np.float32), 1)
    points = np.ascontiguousarray(pred[0].T)
    with pytest.raises(ValueError, match="with logits, grad must not be the points"):
        _ckernel.lovasz_points(
            points, codes[0], np.array([50]), _ckernel.SOFTMAX, points, 1, True, lambda loss, present: loss
        )


def test_kernel_source_and_codes_agree():
    """The C kernel's enums say what lovasz._codes says (the pixel codes, the error forms): a change on
    one side only would have the kernel read every row wrong."""
    from lovasz import _codes

    source = SOURCE.read_text()
    assert f"enum {{ FOREGROUND = {_codes.FOREGROUND}, IGNORED = {_codes.IGNORED} }};" in source
    modes = sorted(
        [("SOFTMAX", _codes.SOFTMAX), ("HINGE", _codes.HINGE), ("ERRORS", _codes.ERRORS)], key=lambda m: m[1]
    )
    assert [value for _, value in modes] == list(range(len(modes)))  # an enum without initialisers counts from 0
    assert f"enum {{ {', '.join(name for name, _ in modes)} }};" in source
    assert _codes.BACKGROUND == 0  # the kernel tests foreground and ignored; every other code is background
