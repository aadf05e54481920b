"""lovasz.torch against the NumPy oracle: values and gradients over a seeded sweep."""

import numpy as np
import pytest
from cases import sweep

from conftest import dev, host, require

torch = require("torch")
L = require("lovasz.torch")

FUNCTIONS = {"softmax": "lovasz_softmax", "hinge": "lovasz_hinge", "multilabel": "lovasz_multilabel"}
CASES = list(sweep(240))


def run(case, dtype):
    pred = dev(torch.tensor(case.pred, dtype=dtype)).requires_grad_()
    out = getattr(L, FUNCTIONS[case.kind])(pred, dev(case.labels), **case.options)
    out.sum().backward()
    return out, pred.grad


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_value_matches_oracle(case):
    expected = case.oracle()
    out64, _ = run(case, torch.float64)
    np.testing.assert_allclose(host(out64), expected, rtol=1e-10, atol=1e-12)
    out32, _ = run(case, torch.float32)
    np.testing.assert_allclose(host(out32), expected, rtol=1e-5, atol=1e-6)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64


@pytest.mark.parametrize("case", CASES[::4], ids=lambda c: c.name)
def test_gradient_matches_oracle(case):
    _, grad = run(case, torch.float64)
    np.testing.assert_allclose(host(grad), case.oracle_grad(), rtol=1e-5, atol=1e-7)


def test_sweep_covers_the_options():
    seen = {(c.kind, c.pred.ndim - (c.kind != "hinge")) for c in CASES}
    assert {("softmax", 2), ("softmax", 3), ("softmax", 4), ("hinge", 2), ("hinge", 4)} <= seen
    opts = [c.options for c in CASES]
    assert {str(o.get("classes"))[:1] for o in opts} == {"p", "a", "[", "N"}
    assert any("weights" in o for o in opts) and {o["reduction"] for o in opts} == {"mean", "sum", "none"}
    assert {c.pred.shape[1] for c in CASES if c.kind == "softmax" and c.pred.ndim > 2} >= {2, 3, 7, 21}
