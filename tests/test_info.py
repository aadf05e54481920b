"""`lovasz info`, and the one warning that a missing C kernel gives where it matters."""

import warnings

import pytest

import lovasz
from conftest import require
from lovasz import _ckernel as C
from lovasz import cli


def test_info_lists_versions_kernel_and_devices(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    assert lovasz.__version__ in rows["lovasz"]
    assert {"numpy", "torch", "jax", "C kernel"} <= set(rows)
    loaded = C.kernel() is not None
    assert ("loaded" in rows["C kernel"]) and (("NOT" in rows["C kernel"]) != loaded)
    torch = require("torch")
    if not torch.cuda.is_available():  # (it named Triton's kernels on a CPU build that has Triton)
        assert rows["GPU path"].endswith("none: torch sees no CUDA device")


def test_a_missing_kernel_is_said_once_with_its_reason(monkeypatch):
    torch = require("torch")
    L = require("lovasz.torch")
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    expected = L.lovasz_softmax(x, y, from_logits=True)
    monkeypatch.setattr(C, "kernel", lambda: None)
    monkeypatch.setattr(C, "_WHY_NOT", "ImportError: no module named lovasz._kernel")
    monkeypatch.setattr(C, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="C kernel is not loaded \\(ImportError: no module named"):
        got = L.lovasz_softmax(x, y, from_logits=True)
    torch.testing.assert_close(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second call is silent
        L.lovasz_softmax(x, y, from_logits=True)
