"""On a CUDA device (LOVASZ_TEST_DEVICE=cuda): no host sync, CUDA graphs, reduce-overhead compile,
autocast, and the asynchronous label check. The rest of the suite runs there through the same switch."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import DEVICE_NAME, require, torch_device

torch = require("torch")
L = require("lovasz.torch")

if not DEVICE_NAME.startswith("cuda"):
    pytest.skip("CUDA-only checks: run with LOVASZ_TEST_DEVICE=cuda", allow_module_level=True)

DEVICE = torch_device()


def inputs(batch=2, num_classes=5, spatial=(16, 24), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, *spatial, generator=g)
    labels = torch.randint(0, num_classes, (batch, *spatial), generator=g)
    labels[:, :2] = 255
    return logits.to(DEVICE), labels.to(DEVICE)


# Scenes of the 768 points, made here: a tensor made from Python values is a copy to the device.
OFFSETS = torch.tensor([100, 300, 768], device=DEVICE)
BATCH = torch.arange(768, device=DEVICE) // 200


def _points(x, y):
    """The pixels of ``inputs()`` as points ``[N, C]`` (2 x 16 x 24 = 768 of them) and their labels ``[N]``."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]), y.reshape(-1)


LOSSES = {
    "softmax logits": lambda x, y: L.lovasz_softmax(x, y, from_logits=True, ignore=255),
    "softmax per image, listed classes, weights": lambda x, y: L.lovasz_softmax(
        x.softmax(1), y, classes=[4, 0, 0], per_image=True, ignore=255, weights=[1.0, 2.0, 1.0, 1.0, 3.0]
    ),
    "softmax all classes": lambda x, y: L.lovasz_softmax(x, y, classes="all", from_logits=True, ignore=255),
    "sigmoid": lambda x, y: L.lovasz_softmax(x[:, 0], (y == 1).long(), from_logits=True),
    "hinge": lambda x, y: L.lovasz_hinge(x[:, 0], (y > 2).long().masked_fill(y == 255, 255), ignore=255),
    "multilabel": lambda x, y: L.lovasz_multilabel(x, (x > 0.5).long(), per_image=False),
    "points with offsets": lambda x, y: L.lovasz_softmax(
        *_points(x, y),
        per_image=True,
        ignore=255,
        from_logits=True,
        offsets=OFFSETS,
    ),
    "points with batch= and num_scenes": lambda x, y: L.lovasz_softmax(
        *_points(x, y), ignore=255, from_logits=True, batch=BATCH, num_scenes=4
    ),
    "points [N, C], one set": lambda x, y: L.lovasz_softmax(*_points(x, y), ignore=255, from_logits=True),
    "module with class weights": L.LovaszLoss("multiclass", ignore_index=255, class_weights=[1, 2, 3, 4, 5]).to(DEVICE),
    "CE + Lovász": L.CrossEntropyLovaszLoss("multiclass", ignore_index=255, class_weights=[1, 2, 3, 4, 5]).to(DEVICE),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_no_host_sync_in_forward_or_backward(name):
    loss_fn = LOSSES[name]
    x, y = inputs()
    x.requires_grad_()
    loss_fn(x, y).backward()  # first call: lazy initialisation (cuBLAS handles, cached constants)
    torch.cuda.synchronize()
    x.grad = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = loss_fn(x, y)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item() and torch.isfinite(x.grad).all().item()


@pytest.mark.parametrize(
    "name", ["softmax logits", "softmax per image, listed classes, weights", "hinge", "CE + Lovász"]
)
def test_cuda_graph_replays_the_loss_and_gradient(name):
    loss_fn = LOSSES[name]
    x, y = inputs()
    static_x = x.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            static_x.grad = None
            loss_fn(static_x, y).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_loss = loss_fn(static_x, y)
        static_loss.backward()
    for seed in (1, 2):  # new data into the captured input: the replay must compute the new loss
        fresh, _ = inputs(seed=seed)
        with torch.no_grad():
            static_x.copy_(fresh)
        graph.replay()
        expected_x = fresh.clone().requires_grad_()
        expected = loss_fn(expected_x, y)
        expected.backward()
        torch.testing.assert_close(static_loss, expected)
        torch.testing.assert_close(static_x.grad, expected_x.grad)


def test_compile_reduce_overhead():
    def step(x, y):
        return L.lovasz_softmax(x, y, from_logits=True, per_image=True, ignore=255)

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    for seed in range(3):
        x, y = inputs(seed=seed)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, expected = compiled(a, y), step(b, y)
        got.backward()
        expected.backward()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["softmax", "hinge", "multilabel"])
def test_autocast_matches_float32(dtype, kind):
    """Under autocast the network hands half-precision output to the loss: it is computed in float32,
    and given in float32 as autocast gives its losses, so it matches float32 on the same values."""
    x, y = inputs(seed=3)
    half = x.to(dtype)
    fn = {
        "softmax": lambda x: L.lovasz_softmax(x, y, from_logits=True, ignore=255),
        "hinge": lambda x: L.lovasz_hinge(x[:, 0], (y == 1).long()),
        "multilabel": lambda x: L.lovasz_multilabel(x, (y.unsqueeze(1) == 2).long().expand_as(x)),
    }[kind]
    a = half.clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        got = fn(a)
    got.backward()
    b = half.float().requires_grad_()
    expected = fn(b)
    expected.backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(a.grad.float(), b.grad, rtol=0, atol=1e-3)


def test_label_check_is_asynchronous_and_fires():
    """An out-of-range label is caught by a device-side assert, queued without a host sync (it surfaces
    at a later CUDA call): run in a child process, since the assert leaves its CUDA context unusable."""
    code = textwrap.dedent(f"""
        import torch, lovasz.torch as L
        x = torch.randn(1, 3, 4, 4, device="{DEVICE}")
        y = torch.zeros(1, 4, 4, dtype=torch.long, device="{DEVICE}")
        y[0, 0, 0] = 7
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # a sync in the loss would raise a RuntimeError saying so
        try:
            L.lovasz_softmax(x, y, from_logits=True)
            torch.cuda.synchronize()
        except Exception as error:
            print("raised:", type(error).__name__, str(error).splitlines()[0])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "raised:" in out.stdout, out.stdout + out.stderr
    assert "synchroniz" not in out.stdout, out.stdout  # the error is the assert, not a sync
    assert "labels must be in [0, 2] at every non-ignored pixel" in out.stderr, out.stderr
