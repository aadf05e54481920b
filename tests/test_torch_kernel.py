"""The C kernel of lovasz.torch (float32 on CPU) against the torch.sort path and the oracle."""

import numpy as np
import pytest
from cases import Case, sweep

from conftest import REQUIRED, require

torch = require("torch")
L = require("lovasz.torch")
core = require("lovasz._torch_core")
ckernel = require("lovasz._ckernel")

pytestmark = pytest.mark.skipif(
    ckernel.kernel() is None and "kernel" not in REQUIRED, reason="lovasz was installed without its C kernel"
)
FUNCTIONS = {"softmax": L.lovasz_softmax, "hinge": L.lovasz_hinge, "multilabel": L.lovasz_multilabel}


def test_kernel_is_built():
    assert ckernel.kernel() is not None, "the C kernel did not build: pip install needs a C compiler"


def value_and_grad(function, pred, *args, **kwargs):
    x = pred.detach().clone().requires_grad_()
    out = function(x, *args, **kwargs)
    out.sum().backward()
    return out.detach(), x.grad


@pytest.fixture
def torch_path(monkeypatch):
    """Run the losses on the torch.sort path instead of the C kernel."""

    def use(enabled):
        monkeypatch.setattr(core, "_use_c_kernel", (lambda pred: False) if enabled else core._use_c_kernel)

    return use


@pytest.mark.parametrize("case", list(sweep(240))[::3], ids=lambda c: c.name)
def test_matches_oracle_in_float32(case):
    pred = torch.tensor(case.pred, dtype=torch.float32)
    assert core._use_c_kernel(pred)
    out, grad = value_and_grad(FUNCTIONS[case.kind], pred, torch.from_numpy(case.labels), **case.options)
    np.testing.assert_allclose(out.numpy(), case.oracle(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.numpy(), case.oracle_grad(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("kind", ["softmax", "hinge"])
def test_matches_torch_path_on_large_inputs(kind, per_image, torch_path):
    g = torch.Generator().manual_seed(3)
    shape = (3, 5, 40, 60) if kind == "softmax" else (3, 40, 60)
    pred = torch.randn(*shape, generator=g)
    if kind == "softmax":
        pred = pred.softmax(1)
    labels = torch.randint(0, shape[1] if kind == "softmax" else 2, (3, 40, 60), generator=g)
    labels[0, :5] = 255
    function = FUNCTIONS[kind]
    out_c, grad_c = value_and_grad(function, pred, labels, per_image=per_image, ignore=255)
    torch_path(True)
    out_t, grad_t = value_and_grad(function, pred.double(), labels, per_image=per_image, ignore=255)
    torch.testing.assert_close(out_c.double(), out_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_c.double(), grad_t, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", list(sweep(240))[1::6], ids=lambda c: c.name)
def test_the_gpus_flat_scan_matches_the_oracle_on_the_cpu(case, torch_path, monkeypatch):
    """The torch.sort path's running counts as a GPU takes them (one flat scan, each row's start
    subtracted), run on the CPU: the GPU's only arithmetic of its own in that path. Its foreground
    flags are bool, and a bool took no subtraction there (every CUDA call of the path failed)."""
    torch_path(True)
    monkeypatch.setattr(core, "_scans_flat", lambda fg_sorted: fg_sorted.ndim > 1)
    pred = torch.tensor(case.pred, dtype=torch.float64)
    out, grad = value_and_grad(FUNCTIONS[case.kind], pred, torch.from_numpy(case.labels), **case.options)
    np.testing.assert_allclose(out.numpy(), case.oracle(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grad.numpy(), case.oracle_grad(), rtol=1e-6, atol=1e-9)


def test_probabilities_outside_the_unit_interval_get_the_slope_of_the_absolute_value(torch_path):
    """|[y = c] - p| has slope -1 for p > 1 at the foreground and for p < 0 at the background."""
    case = Case(
        "softmax",
        np.array([[[1.5, -0.25, 0.4, 0.1], [-0.5, 1.25, 0.7, 1.2]]]),
        np.array([[0, 0, 1, 1]]),
        {"classes": "all"},
    )
    probas, labels = torch.tensor(case.pred, dtype=torch.float32), torch.from_numpy(case.labels)
    for path in ("C", "torch"):
        torch_path(path == "torch")
        out, grad = value_and_grad(L.lovasz_softmax, probas, labels, "all")
        np.testing.assert_allclose(out.numpy(), case.oracle(), rtol=1e-6, err_msg=path)
        np.testing.assert_allclose(grad.numpy(), case.oracle_grad(), rtol=1e-5, atol=1e-7, err_msg=path)


def test_nan_prediction_gives_nan_loss():
    probas = torch.full((1, 2, 4), 0.5)
    probas[0, 0, 1] = float("nan")
    assert torch.isnan(L.lovasz_softmax(probas, torch.tensor([[0, 1, 0, 1]])))
    logits = torch.tensor([[1.0, float("nan"), -2.0]])
    assert torch.isnan(L.lovasz_hinge(logits, torch.tensor([[1, 0, 0]])))


def test_nan_at_an_ignored_pixel_is_ignored():
    logits = torch.tensor([[1.0, float("nan"), -2.0]], requires_grad=True)
    loss = L.lovasz_hinge(logits, torch.tensor([[1, 255, 0]]), ignore=255)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad[0, 1] == 0


def test_every_thread_count_gives_the_same_result(executor):
    g = torch.Generator().manual_seed(5)
    probas = torch.randn(4, 3, 128, 128, generator=g).softmax(1)  # past the kernel's grain: on the threads
    labels = torch.randint(0, 3, (4, 128, 128), generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 7):
            torch.set_num_threads(n)
            results.append(value_and_grad(L.lovasz_softmax, probas, labels, per_image=True))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


FORKED_CHILD = """
import multiprocessing, sys
import numpy as np
on_team = sys.argv[1] == "openmp team"
if on_team:
    import torch  # loads its libgomp: the parent runs the kernel on torch's OpenMP team
from lovasz import _ckernel as C

rng = np.random.default_rng(0)
pred = rng.random((2, 3, 128 * 128), dtype=np.float32)  # past the grain: on 2 threads
codes = rng.integers(0, 2, pred.shape).astype(np.uint8)
ran_on = []
run_on_team = C._run_on_team
C._run_on_team = lambda *args: ran_on.append("team") or run_on_team(*args)

def rows():  # no torch op: torch's own OpenMP hangs in a forked child of a parent that ran it on threads
    return C.lovasz_rows(pred, codes, C.SOFTMAX, None, 2)[0], list(ran_on), C._POOL is not None

expected, parent_ran_on, parent_pool = rows()
assert parent_ran_on == ["team"] if on_team else parent_pool  # the parent's team ran, or its pool exists
ran_on.clear()
with multiprocessing.get_context("fork").Pool(1) as pool:
    got, child_ran_on, child_pool = pool.apply_async(rows).get(timeout=60)
    assert np.array_equal(got, expected) and child_ran_on == [] and child_pool, (child_ran_on, child_pool)
"""


@pytest.mark.parametrize("parent_ran_on", ["pool", "openmp team"])
def test_a_forked_child_runs_the_kernel(parent_ran_on):
    """The thread pool made before a fork has no threads in the child: the child must not wait on it.
    Nor has it the threads of the OpenMP team its parent ran the kernel on: it runs on a pool of its own.

    In a process of its own, away from the other frameworks' threads that pytest's process holds.
    """
    import subprocess
    import sys

    if parent_ran_on == "openmp team" and ckernel._team() is None:
        pytest.skip("no libgomp loaded (not Linux, or torch built without OpenMP)")
    subprocess.run([sys.executable, "-c", FORKED_CHILD, parent_ran_on], check=True, timeout=120)
