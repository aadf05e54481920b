"""The Triton path (float32 on a CUDA GPU) against the torch.sort path and the oracle.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before
Triton is imported, hence a child process), on CPU tensors: the same kernel code, so CI
checks it on every change. On a GPU (LOVASZ_TEST_DEVICE=cuda) they run compiled.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import DEVICE_NAME, require

torch = require("torch")
require("lovasz.torch")
if "triton" not in __import__("conftest").REQUIRED:
    pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import itertools, torch
    from lovasz import _torch_core as core, _triton_rows as T, reference as R
    import lovasz.torch as L

    device = torch.device({device!r})
    g = torch.Generator().manual_seed(0)
    for sets, rows, n, hinge, with_grad in itertools.product([1, 3], [1, 4], [1, 7, 2500], [False, True],
                                                              [False, True]):
        pred = torch.randn(sets, rows, n, generator=g) * (2 if hinge else 0.7) + (0 if hinge else 0.5)
        pred[0, 0, :3] = torch.tensor([0.0, 1.0, -0.0])[: min(n, 3)]  # errors of exactly 0 and -0
        codes = torch.randint(0, 3, (sets, rows, n), generator=g, dtype=torch.uint8)
        if n == 7:
            codes[:, 0] = 2  # a row with every pixel ignored
            codes[:, -1] = codes[:, -1].clamp(max=0)  # a row without foreground
        if with_grad != hinge:  # pixels strided, as a channels-last tensor's are: same values, other strides
            pred, codes = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (pred, codes)]
        pred, codes = pred.to(device), codes.to(device)
        expected_grad = torch.full_like(pred, 7.0, dtype=torch.float64)
        loss, present = core._rows_torch(pred.double(), codes, hinge, expected_grad if with_grad else None)
        grad = torch.full(pred.shape, 7.0, device=device)  # poisoned: every entry must be written
        got, got_present = T.rows(pred, codes, hinge, grad if with_grad else None, 3)
        assert torch.equal(got_present, present), (got_present, present)
        torch.testing.assert_close(got.double(), loss, rtol=1e-5, atol=1e-6)
        if with_grad:
            torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-6)

    # The softmax's backward: one kernel against torch's, NaN and inf logits, weights, strided logits.
    from lovasz import _triton_softmax as S
    for batch, channels, n, weighted in itertools.product([1, 2], [1, 3, 19, 150], [1, 300], [False, True]):
        wide = torch.randn(batch, channels + 2, n, generator=g) * 3
        logits = wide[:, 1:-1] if weighted else wide[:, :channels].transpose(1, 2).contiguous().transpose(1, 2)
        logits[0, 0, 0] = float("nan")
        logits[-1, -1, -1] = float("inf") if n > 1 else logits[-1, -1, -1]
        grad_probs = torch.randn(batch, channels, n, generator=g)
        scale = torch.rand(batch, channels, 1, generator=g) if weighted else None
        p = logits.double().softmax(1).nan_to_num(0.0)
        weighted_grad = grad_probs.double() * (scale.double() if weighted else 1)
        expected = torch._softmax_backward_data(weighted_grad, p, 1, torch.float64)
        got = grad_probs.clone().to(device)
        S.softmax_backward_(got, logits.to(device), None if scale is None else scale.to(device))
        torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-5, atol=1e-6)

    # Whole losses through the path (forced on where it would not run by itself) against the oracle.
    core._use_c_kernel = lambda pred: False
    core._use_triton = lambda pred: pred.dtype == torch.float32
    calls = []
    rows = T.rows
    T.rows = lambda *args: calls.append(1) or rows(*args)
    probas = torch.randn(2, 3, 5, 6, generator=g).softmax(1)
    labels = torch.randint(0, 3, (2, 5, 6), generator=g)
    labels[0, 0] = 255
    for per_image, classes in itertools.product([False, True], ["present", "all", [2, 0, 0]]):
        x = probas.clone().to(device).requires_grad_()
        loss = L.lovasz_softmax(x, labels.to(device), classes, per_image, 255)
        loss.backward()
        expected = R.lovasz_softmax(probas.double().numpy(), labels.numpy(), classes, per_image, 255)
        assert abs(loss.item() - expected) < 1e-5, (loss.item(), expected)
        x64 = probas.double().to(device).requires_grad_()
        L.lovasz_softmax(x64, labels.to(device), classes, per_image, 255).backward()  # the torch.sort path
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
        # Logits: the softmax inside, and its backward in its kernel.
        logits = probas.log().to(device).requires_grad_()
        L.lovasz_softmax(logits, labels.to(device), classes, per_image, 255, from_logits=True).backward()
        logits64 = probas.log().double().to(device).requires_grad_()
        L.lovasz_softmax(logits64, labels.to(device), classes, per_image, 255, from_logits=True).backward()
        torch.testing.assert_close(logits.grad.double(), logits64.grad, rtol=1e-5, atol=1e-6)
    scores = torch.randn(3, 40, generator=g) * 2
    masks = torch.randint(0, 2, (3, 40), generator=g)
    for per_image in (False, True):
        loss = L.lovasz_hinge(scores.to(device), masks.to(device), per_image)
        expected = R.lovasz_hinge(scores.double().numpy(), masks.numpy(), per_image)
        assert abs(loss.item() - expected) < 1e-5, (loss.item(), expected)
    nan = scores.clone()
    nan[0, 0] = float("nan")
    assert torch.isnan(L.lovasz_hinge(nan.to(device), masks.to(device)))
    assert len(calls) == 6 * 2 + 2 + 1, len(calls)  # every float32 call above took the path

    # Points of scenes: the scene kernels against the torch.sort path (empty scenes, scenes across and
    # on the blocks' bounds, ties, NaN, rows without foreground, points-first predictions and gradient).
    for sizes, rows, hinge, with_grad in itertools.product(
        [[7], [3, 0, 1500, 2], [1024, 1025, 0], [0, 5], [5, 0, 17, 1, 0, 0, 900, 3, 1100, 64, 2, 0, 1]],
        [1, 4],
        [False, True],
        [False, True],
    ):
        n = sum(sizes)
        ends = torch.tensor(sizes).cumsum(0)
        pred = torch.randn(rows, n, generator=g) * (2 if hinge else 0.7) + (0 if hinge else 0.5)
        pred[0, :3] = torch.tensor([0.0, 1.0, -0.0])[: min(n, 3)]
        pred[-1, :2] = float("nan") if with_grad else 0.5
        pred[:, 5:400] = 0.25  # ties
        codes = torch.randint(0, 3, (rows, n), generator=g, dtype=torch.uint8)
        codes[-1] = codes[-1].clamp(max=0)  # a row without foreground
        expected_grad = torch.full(pred.shape, 7.0, dtype=torch.float64)
        loss, present = core._scene_rows_torch(pred.double(), codes, ends, hinge, expected_grad if with_grad else None)
        grad = (torch.full((n, rows), 7.0).T if hinge else torch.full(pred.shape, 7.0)).to(device)
        if hinge != with_grad:  # points-first [N, K], read where they lie
            pred = pred.T.contiguous().T
        pred, codes, ends = pred.to(device), codes.to(device), ends.to(device)
        got, got_present = T.scene_rows(pred, codes, ends, hinge, grad if with_grad else None, 3)
        assert torch.equal(got_present.cpu(), present), (sizes, got_present, present)
        torch.testing.assert_close(got.double().cpu(), loss, rtol=1e-5, atol=1e-6, equal_nan=True)
        if with_grad:
            torch.testing.assert_close(grad.double().cpu(), expected_grad, rtol=1e-5, atol=1e-6, equal_nan=True)
    scene_calls = []
    scene_rows = T.scene_rows
    T.scene_rows = lambda *args: scene_calls.append(1) or scene_rows(*args)
    points = torch.randn(60, 4, generator=g)
    point_labels = torch.randint(0, 4, (60,), generator=g)
    point_labels[:9] = 255
    offsets = torch.tensor([25, 25, 60])  # the second scene empty
    for from_logits in (False, True):
        x = (points.clone() if from_logits else points.softmax(1)).to(device).requires_grad_()
        loss = L.lovasz_softmax(x, point_labels.to(device), per_image=True, ignore=255, from_logits=from_logits,
                                offsets=offsets.to(device))
        loss.backward()
        x64 = x.detach().double().requires_grad_()
        loss64 = L.lovasz_softmax(x64, point_labels.to(device), per_image=True, ignore=255,
                                  from_logits=from_logits, offsets=offsets.to(device))
        loss64.backward()
        assert abs(loss.item() - loss64.item()) < 1e-5, (loss.item(), loss64.item())
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
        # The op's own gradient is points-first, as the points are: no transposed copy on the way back.
        y = x.detach().clone().requires_grad_() * 1
        kwargs = dict(per_image=True, ignore=255, from_logits=from_logits, offsets=offsets.to(device))
        (grad_y,) = torch.autograd.grad(L.lovasz_softmax(y, point_labels.to(device), **kwargs), y)
        assert grad_y.is_contiguous(), grad_y.stride()
        torch.testing.assert_close(grad_y, x.grad, rtol=0, atol=0)
    probas = points.double().softmax(1).numpy()
    expected = sum(R.lovasz_softmax(probas[a:b].T[None], point_labels[a:b].numpy()[None], ignore=255)
                   for a, b in [(0, 25), (25, 60)]) / 3  # the empty scene counts 0 in the mean
    assert abs(loss.item() - expected) < 1e-5, (loss.item(), expected)
    assert len(scene_calls) == 4, len(scene_calls)  # every float32 scene call took the path
    print("triton path ok")
""")


def run_check(device: str, interpret: bool):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(device=device)], capture_output=True, text=True, timeout=600, env=env
    )
    assert "triton path ok" in out.stdout, out.stdout + out.stderr


def test_kernels_in_the_interpreter_match_the_sort_path_and_the_oracle():
    run_check("cpu", interpret=True)


@pytest.mark.skipif(not DEVICE_NAME.startswith("cuda"), reason="compiled kernels need LOVASZ_TEST_DEVICE=cuda")
def test_compiled_kernels_match_the_sort_path_and_the_oracle():
    run_check(DEVICE_NAME, interpret=False)
