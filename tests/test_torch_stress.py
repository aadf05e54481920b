"""lovasz.torch under stress: interrupts, threads, processes, interpreter shutdown, memory failure,
every autograd mode, trace and export, empty and odd inputs. Each either gives the right answer or
raises a clear error; none crashes or answers wrong without a word.

The process-level checks run in child processes (a crash there is a failed assert here, not a
dead test run), on the CPU where they are about the C kernel's thread pool.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import dev, require

torch = require("torch")
L = require("lovasz.torch")
ORIGINAL = require("lovasz.peers").load_original()


def run_child(code: str, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )


# ----------------------------------------------------------------------------- processes and threads


def test_ctrl_c_during_the_kernel_waits_for_every_block_then_raises():
    """Interrupts land at spread-out moments of calls that run the C kernel on 2 threads; freed
    buffers are poisoned (MALLOC_PERTURB_), so a block still writing into one would crash or corrupt."""
    out = run_child(
        """
        import signal, time, torch
        import lovasz.torch as L

        def interrupt(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, interrupt)
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 16, 256, 512, generator=g)
        y = torch.randint(0, 16, (2, 256, 512), generator=g)

        def step():
            xr = x.clone().requires_grad_()
            loss = L.lovasz_softmax(xr, y, from_logits=True, per_image=True)
            loss.backward()
            return loss.item(), xr.grad

        expected, expected_grad = step()
        durations = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            durations.append(time.perf_counter() - start)
        duration = sorted(durations)[1]
        interrupted = 0
        # 16 moments spread over a call; again while fewer than 4 landed inside one (a loaded machine's calls
        # take longer or shorter than the one timed)
        for i in range(48):
            if i >= 16 and interrupted >= 4:
                break
            signal.setitimer(signal.ITIMER_REAL, duration * (i % 16 + 0.5) / 16)
            try:
                step()
                signal.setitimer(signal.ITIMER_REAL, 0)  # inside: a signal on the way lands in the try
            except KeyboardInterrupt:
                interrupted += 1
            value, grad = step()  # later calls are right
            assert value == expected and torch.equal(grad, expected_grad)
        print("survived", interrupted)
    """,
        env={"MALLOC_PERTURB_": "165", "MALLOC_CHECK_": "3"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "survived" in out.stdout
    assert int(out.stdout.split()[-1]) >= 4  # many interrupts landed inside a call (timing varies with load)


def test_calls_after_the_main_thread_finished_and_at_exit():
    out = run_child("""
        import atexit, threading, time, torch
        import lovasz.torch as L

        torch.set_num_threads(2)
        x, y = torch.randn(4, 128, 128), torch.randint(0, 2, (4, 128, 128))  # past the grain: on the pool
        expected = L.lovasz_hinge(x, y).item()

        def late():
            time.sleep(0.5)  # the main thread has returned: the interpreter is shutting down
            print("thread", L.lovasz_hinge(x, y).item() == expected, flush=True)

        atexit.register(lambda: print("atexit", L.lovasz_hinge(x, y).item() == expected, flush=True))
        threading.Thread(target=late).start()
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "thread True" in out.stdout and "atexit True" in out.stdout, out.stdout + out.stderr


def test_no_lazy_import_inside_a_call():
    """torch._dynamo is imported with lovasz.torch: a Ctrl-C inside the first call cannot leave it
    half-imported, because that call imports nothing."""
    out = run_child("""
        import sys, torch
        import lovasz.torch as L
        before = set(sys.modules)
        x = torch.randn(1, 3, 4, 4, requires_grad=True)
        L.lovasz_softmax(x, torch.randint(0, 3, (1, 4, 4)), from_logits=True).backward()
        L.lovasz_hinge(x[:, 0], torch.randint(0, 2, (1, 4, 4))).backward()
        print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "lovasz")))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_threads_give_the_serial_results():
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(1)
    inputs = [
        (dev(torch.randn(2, 5, 40, 40, generator=g)), dev(torch.randint(0, 5, (2, 40, 40), generator=g)))
        for _ in range(8)
    ]

    def loss_and_grad(pair):
        x = pair[0].clone().requires_grad_()
        loss = L.lovasz_softmax(x, pair[1], from_logits=True, per_image=True)
        loss.backward()
        return loss.detach(), x.grad

    serial = [loss_and_grad(p) for p in inputs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(loss_and_grad, inputs * 3))
    for (a, ga), (b, gb) in zip(serial * 3, threaded):
        assert torch.equal(a, b) and torch.equal(ga, gb)


def test_dataloader_workers_fork_and_spawn(tmp_path):
    script = tmp_path / "workers.py"  # spawn re-imports the main module: it must be a file
    script.write_text(
        textwrap.dedent("""
        import multiprocessing as mp
        import torch
        import lovasz.torch as L

        class Losses(torch.utils.data.Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                g = torch.Generator().manual_seed(i)
                return L.lovasz_softmax(torch.randn(2, 3, 128, 128, generator=g),  # past the grain: on the pool
                                        torch.randint(0, 3, (2, 128, 128), generator=g), from_logits=True)

        def child(queue):
            # As DataLoader does in its workers: torch's own OpenMP ops hang in a forked child of a
            # parent that ran them on several threads (a plain softmax does), with or without lovasz.
            torch.set_num_threads(1)
            queue.put(float(Losses()[0]))

        if __name__ == "__main__":
            torch.set_num_threads(2)
            expected = [float(Losses()[i]) for i in range(4)]  # the parent's thread pool exists before fork
            for context in ("fork", "spawn"):
                loader = torch.utils.data.DataLoader(Losses(), batch_size=None, num_workers=2,
                                                     multiprocessing_context=context, timeout=120)
                assert [float(v) for v in loader] == expected, context
                queue = mp.get_context(context).Queue()
                process = mp.get_context(context).Process(target=child, args=(queue,))
                process.start()
                assert queue.get(timeout=120) == expected[0], context
                process.join(60)
            print("ok")
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=400, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_memory_failure_is_an_error_not_a_crash():
    """With the address space capped, a call fails with MemoryError or torch's allocation error;
    once the cap is lifted the next call is right."""
    out = run_child("""
        import resource, torch
        import lovasz.torch as L
        x = torch.randn(1, 8, 1024, 1024)
        y = torch.randint(0, 8, (1, 1024, 1024))
        expected = L.lovasz_softmax(x, y, from_logits=True).item()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (used + (16 << 20), hard))
        try:
            L.lovasz_softmax(x, y, from_logits=True)
            print("no failure")
        except MemoryError:
            print("MemoryError")
        except RuntimeError as error:
            print("RuntimeError", "memory" in str(error).lower() or "allocate" in str(error).lower())
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("after", L.lovasz_softmax(x, y, from_logits=True).item() == expected)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0] in ("MemoryError", "RuntimeError True", "no failure"), out.stdout
    assert "after True" in out.stdout


# ----------------------------------------------------------------------------- autograd modes


def _inputs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (2, 5, 6), generator=g)
    return dev(x), dev(y), dev(torch.randn(2, 3, 5, 6, generator=g, dtype=dtype))


LOSSES = {
    "softmax from logits": lambda x, y: L.lovasz_softmax(x, y, from_logits=True),
    "softmax of probabilities": lambda x, y: L.lovasz_softmax(x.softmax(1), y, classes=[0, 2], per_image=True),
    "hinge": lambda x, y: L.lovasz_hinge(x[:, 0], (y == 1).long(), per_image=False),
    "multilabel": lambda x, y: L.lovasz_multilabel(x, (y[:, None] == dev(torch.arange(3)).view(1, 3, 1, 1)).long()),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_forward_mode_equals_reverse_mode(name):
    fn = LOSSES[name]
    x, y, v = _inputs()
    a = x.clone().requires_grad_()
    fn(a, y).backward()
    expected = (a.grad * v).sum()
    with torch.autograd.forward_ad.dual_level():
        tangent = torch.autograd.forward_ad.unpack_dual(fn(torch.autograd.forward_ad.make_dual(x, v), y)).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, expected)
    _, tangent = torch.func.jvp(lambda t: fn(t, y), (x,), (v,))
    torch.testing.assert_close(tangent, expected)


@pytest.mark.parametrize("name", list(LOSSES))
def test_torch_func_grad(name):
    fn = LOSSES[name]
    x, y, _ = _inputs()
    a = x.clone().requires_grad_()
    fn(a, y).backward()
    torch.testing.assert_close(torch.func.grad(lambda t: fn(t, y))(x), a.grad)


def test_forward_mode_in_the_class_weights_alone():
    """A tangent of the class weights only (jvp, jacfwd of a module's learned weights) raised 'called with
    need_grad=False but a tangent was given' (a prediction requiring grad: a TypeError of None)."""
    x, y, _ = _inputs()
    w, v = dev(torch.tensor([0.5, 2.0, 1.0], dtype=x.dtype)), dev(torch.tensor([1.0, -1.0, 0.5], dtype=x.dtype))
    for pred in (x, x.clone().requires_grad_()):
        fn = lambda weights: L.lovasz_softmax(pred, y, from_logits=True, weights=weights)  # noqa: E731, B023
        leaf = w.clone().requires_grad_()
        (grad,) = torch.autograd.grad(fn(leaf), leaf)
        _, tangent = torch.func.jvp(fn, (w,), (v,))
        torch.testing.assert_close(tangent, grad @ v)
    module = L.LovaszLoss("multiclass", class_weights=torch.nn.Parameter(w.clone()))
    params = dict(module.named_parameters())
    jacobian = torch.func.jacfwd(lambda p: torch.func.functional_call(module, p, (x, y)))(params)
    torch.testing.assert_close(
        jacobian["class_weights"],
        torch.func.jacrev(lambda p: torch.func.functional_call(module, p, (x, y)))(params)["class_weights"],
    )


def test_second_derivative_equals_the_original():
    """Hessian-vector products through the softmax, and through a curved map before the hinge."""
    if ORIGINAL is None:
        pytest.skip("segmentation-models-pytorch is not installed")
    x, y, v = _inputs(dtype=torch.float32)

    def hvp(fn):
        a = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(a), a, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), a)
        return h

    mask = (y == 1).long()
    for ours, original in [
        (
            lambda a: L.lovasz_softmax(a.softmax(1), y, per_image=True),
            lambda a: ORIGINAL._lovasz_softmax(a.softmax(1), y, per_image=True),
        ),
        (
            lambda a: L.lovasz_hinge(torch.tanh(a[:, 0]), mask),
            lambda a: ORIGINAL._lovasz_hinge(torch.tanh(a[:, 0]), mask),
        ),
    ]:
        expected = hvp(original)
        assert expected.abs().max() > 1e-4  # a real curvature term, not a zero matching a zero
        torch.testing.assert_close(hvp(ours), expected, rtol=1e-4, atol=1e-6)


def test_second_derivative_in_the_loss_input_itself_is_zero_as_the_originals():
    """The gradient in the prediction is piecewise constant: differentiated again (a gradient penalty) it gives
    zeros, as the original's graph does; it raised PyTorch's 'element 0 of tensors does not require grad'."""
    x, y, _ = _inputs()
    mask = (y == 1).long()
    points = x.permute(0, 2, 3, 1).reshape(-1, 3)
    offsets = dev(torch.tensor([25, 60]))
    losses = [
        (lambda a: L.lovasz_softmax(a, y, per_image=True), x.softmax(1)),
        (lambda a: L.lovasz_hinge(a, mask), x[:, 0]),
        (lambda a: L.lovasz_multilabel(a, mask[:, None].expand(-1, 3, -1, -1)), x),
        (lambda a: L.lovasz_softmax(a, y.reshape(-1), per_image=True, offsets=offsets), points.softmax(1)),
        (lambda a: L.lovasz_hinge(a, mask, per_image=True), torch.where(mask.bool(), x[:, 0], float("inf"))),
    ]
    for fn, value in losses:
        a = value.clone().requires_grad_()
        loss = fn(a)
        (g,) = torch.autograd.grad(loss, a, create_graph=True)
        (first,) = torch.autograd.grad(fn(a), a)
        assert not first.requires_grad  # (without create_graph: a gradient to read, write and convert)
        torch.testing.assert_close(g.detach(), first)
        g.pow(2).sum().backward()
        assert torch.equal(a.grad, torch.zeros_like(a))
    if ORIGINAL is not None:
        a = x.float().softmax(1).requires_grad_()  # (its copy in segmentation-models-pytorch: float32 only)
        (g,) = torch.autograd.grad(ORIGINAL._lovasz_softmax(a, y, per_image=True), a, create_graph=True)
        g.pow(2).sum().backward()
        assert torch.equal(a.grad, torch.zeros_like(a))


def test_second_derivative_with_the_softmax_inside_is_a_clear_error():
    x, y, _ = _inputs()
    a = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"from_logits=True.*second derivative.*logits\.softmax\(1\)"):
        torch.autograd.grad(L.lovasz_softmax(a, y, from_logits=True), a, create_graph=True)


# ----------------------------------------------------------------------------- trace and export


class _Loss(torch.nn.Module):
    def forward(self, x, y):
        return L.lovasz_softmax(x, y, from_logits=True, ignore=255, per_image=True)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shapes become constants: that is tracing
def test_jit_trace_gives_the_eager_values_on_new_inputs():
    x, y, _ = _inputs(dtype=torch.float32)
    traced = torch.jit.trace(_Loss(), (x, y), check_trace=False)
    x2, y2, _ = _inputs(seed=1, dtype=torch.float32)
    torch.testing.assert_close(traced(x2, y2), _Loss()(x2, y2))


def _mostly_ignored(seed, shape):
    """Probabilities of ``shape`` (``[N, C]`` points or ``[B, C, *spatial]``) and labels, 5-10% valid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).softmax(1)
    y = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    y[torch.rand(y.shape, generator=g) > 0.05 + 0.05 * seed] = 255
    return dev(x), dev(y)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("shape", [(2000, 5), (1, 6, 40, 40, 10)], ids=["points", "grid"])
def test_jit_trace_of_mostly_ignored_inputs_gives_the_eager_values_on_new_inputs(monkeypatch, shape):
    """Eagerly the pixels that count are gathered (their places are the data's); a trace would keep those
    of the input it traced (it gave another input's loss wrong without a word, and a grid failed inside
    autograd): traced, the dense path serves, with the eager values and gradient on any input."""
    monkeypatch.setattr(require("lovasz._torch_scenes"), "COMPACT_MIN_VALUES", 0)

    class Loss(torch.nn.Module):
        def forward(self, x, y):
            return L.lovasz_softmax(x, y, ignore=255, per_image=len(shape) > 2)

    traced_x, traced_y = _mostly_ignored(0, shape)
    x, y = _mostly_ignored(1, shape)
    without_grad = torch.jit.trace(Loss(), (traced_x, traced_y), check_trace=False)  # keeps need_grad=False
    with pytest.raises(RuntimeError, match="trace or export with inputs that require grad"):
        without_grad(x.clone().requires_grad_(), y).backward()
    traced = torch.jit.trace(Loss(), (traced_x.requires_grad_(), traced_y), check_trace=False)

    def loss_and_grad(module):
        a = x.clone().requires_grad_()
        loss = module(a, y)
        loss.backward()
        return loss.detach(), a.grad

    for got, expected in zip(loss_and_grad(traced), loss_and_grad(Loss())):
        torch.testing.assert_close(got, expected)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_of_scenes_by_batch():
    """Traced, ``batch=`` needs ``num_scenes=`` (a count taken from the data would stay the traced input's),
    and the points are sorted by scene in the graph, whatever their order when traced."""
    g = torch.Generator().manual_seed(5)
    x, y = dev(torch.randn(300, 4, generator=g)), dev(torch.randint(0, 4, (300,), generator=g))
    in_order = dev(torch.arange(3).repeat_interleave(100))
    shuffled = dev(torch.randint(0, 3, (300,), generator=g))
    with pytest.raises(TypeError, match="torch.jit.trace, make_fx and FakeTensorMode, batch= needs num_scenes="):
        torch.jit.trace(
            lambda x, y, b: L.lovasz_softmax(x, y, batch=b, per_image=True, from_logits=True), (x, y, in_order)
        )
    traced = torch.jit.trace(
        lambda x, y, b: L.lovasz_softmax(
            x, y, batch=b, num_scenes=3, per_image=True, from_logits=True, reduction="none"
        ),
        (x, y, in_order),
        check_trace=False,
    )
    expected = L.lovasz_softmax(x, y, batch=shuffled, num_scenes=3, per_image=True, from_logits=True, reduction="none")
    torch.testing.assert_close(traced(x, y, shuffled), expected)


def test_export_with_dynamic_height_and_width():
    x, y, _ = _inputs(dtype=torch.float32)
    height, width = torch.export.Dim("height", min=2, max=2048), torch.export.Dim("width", min=2, max=2048)
    exported = torch.export.export(
        _Loss(), (x, y), dynamic_shapes={"x": {2: height, 3: width}, "y": {1: height, 2: width}}
    )
    g = torch.Generator().manual_seed(3)
    x2 = dev(torch.randn(2, 3, 17, 9, generator=g))
    y2 = dev(torch.randint(0, 3, (2, 17, 9), generator=g))
    torch.testing.assert_close(exported.module()(x2, y2), _Loss()(x2, y2))


@pytest.mark.parametrize("module", [L.LovaszLoss("multiclass"), L.CrossEntropyLovaszLoss("multiclass")])
def test_multiclass_modules_export_with_dynamic_height_and_width(module):
    """The modules' one-hot test compares ranks first: a tuple comparison of [B, C, H, W] with [B, H, W] made
    torch.export guard C == H and refuse a dynamic H."""
    x, y, _ = _inputs(dtype=torch.float32)
    y = torch.where(y == 255, 0, y)
    height, width = torch.export.Dim("height", min=2, max=2048), torch.export.Dim("width", min=2, max=2048)
    exported = torch.export.export(
        module, (x, y), dynamic_shapes={"input": {2: height, 3: width}, "target": {1: height, 2: width}}
    )
    g = torch.Generator().manual_seed(4)
    x2 = dev(torch.randn(2, 3, 3, 11, generator=g))  # H = C
    y2 = dev(torch.randint(0, 3, (2, 3, 11), generator=g))
    torch.testing.assert_close(exported.module()(x2, y2), module(x2, y2))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_losses_assert_the_labels_range(backend):
    """Out of range, a label fails an assert in the compiled graph (as on a GPU), not a silent value. On the
    CPU: on an accelerator the assert is a device-side one, which would end the run's CUDA context."""
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    bad, one_hot = y.clone(), torch.nn.functional.one_hot(y, 3).movedim(-1, 1)
    bad[0, 1, 2] = 7
    calls = [
        lambda x, y: L.lovasz_softmax(x, y, ignore=255, from_logits=True),
        lambda x, y: L.lovasz_hinge(x[:, 0], y),
        lambda x, y: L.LovaszLoss("multiclass", ignore_index=255)(x, y),
    ]
    for call in calls:
        compiled = torch.compile(call, backend=backend, fullgraph=True)
        expected = y % 2 if call is calls[1] else y
        torch.testing.assert_close(compiled(x, expected), call(x, expected))
        with pytest.raises(RuntimeError, match=r"labels|target"):
            compiled(x, bad)
    not_one_hot = one_hot.clone()
    not_one_hot[0, :, 0, 0] = 1
    compiled = torch.compile(L.LovaszLoss("multiclass"), backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(x, one_hot), L.LovaszLoss("multiclass")(x, y))
    with pytest.raises(RuntimeError, match="one-hot"):
        compiled(x, not_one_hot)


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5)])
@pytest.mark.parametrize("per_image", [False, True])
def test_empty_input_is_an_all_ignored_one(shape, per_image):
    x = dev(torch.randn(*shape)).requires_grad_()
    labels = dev(torch.zeros(shape[:1] + shape[2:], dtype=torch.long))
    targets = dev(torch.zeros(shape, dtype=torch.long))
    calls = [
        lambda r: L.lovasz_softmax(x, labels, per_image=per_image, from_logits=True, reduction=r),
        lambda r: L.lovasz_softmax(x[:, 0], labels, per_image=per_image, reduction=r),
        lambda r: L.lovasz_hinge(x[:, 0], labels, per_image=per_image, reduction=r),
        lambda r: L.lovasz_multilabel(x, targets, per_image=per_image, reduction=r),
        lambda r: L.LovaszLoss("multiclass", per_image, reduction=r)(x, labels),
        lambda r: L.CrossEntropyLovaszLoss("multiclass", per_image=per_image)(x, labels),
    ]
    for call in calls:
        for reduction in ("mean", "sum"):
            loss = call(reduction)
            assert loss.shape == () and loss.item() == 0
            (grad,) = torch.autograd.grad(loss, x)
            assert grad.shape == x.shape and torch.count_nonzero(grad) == 0
    none = L.lovasz_softmax(x, labels, per_image=per_image, from_logits=True, reduction="none")
    assert none.shape == ((shape[0],) if per_image else ())


@pytest.mark.parametrize(
    "dtype",
    [
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.float32,
        torch.float64,
    ],
)
def test_every_label_dtype_holding_class_indices(dtype):
    x, y, _ = _inputs(dtype=torch.float32)
    expected = L.lovasz_softmax(x, y, from_logits=True)
    labels = y.cpu().to(dtype).to(y.device) if dtype in (torch.uint16, torch.uint32, torch.uint64) else y.to(dtype)
    torch.testing.assert_close(L.lovasz_softmax(x, labels, from_logits=True), expected)
    mask = (y == 1).to(dtype) if dtype.is_floating_point else (y == 1).cpu().to(dtype).to(y.device)
    torch.testing.assert_close(L.lovasz_hinge(x[:, 0], mask), L.lovasz_hinge(x[:, 0], (y == 1).long()))


def test_labels_with_a_size_1_axis():
    x, y, _ = _inputs(dtype=torch.float32)
    expected = L.lovasz_softmax(x, y, from_logits=True)
    torch.testing.assert_close(L.lovasz_softmax(x, y[..., None], from_logits=True), expected)  # [B, H, W, 1]
    torch.testing.assert_close(L.lovasz_softmax(x, y[:, None], from_logits=True), expected)  # [B, 1, H, W]
    mask = (y == 1).long()
    for scores in (x[:, 0], x[:, :1]):
        torch.testing.assert_close(L.lovasz_hinge(scores, mask[..., None]), L.lovasz_hinge(x[:, 0], mask))


def test_nan_and_inf():
    x, y, _ = _inputs(dtype=torch.float32)
    bad = x.clone()
    bad[0, :, 0, 0] = float("nan")
    assert torch.isnan(L.lovasz_softmax(bad, y, from_logits=True))
    assert torch.isnan(L.lovasz_hinge(bad[:, 0], (y == 1).long()))
    labels = y.clone()
    labels[0, 0, 0] = 255
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = x.clone()
        bad[0, :, 0, 0] = value
        for fn in (
            lambda t: L.lovasz_softmax(t, labels, from_logits=True, ignore=255),
            lambda t: L.lovasz_softmax(
                t[:, 0], (labels == 1).long().masked_fill(labels == 255, 255), from_logits=True, ignore=255
            ),
            lambda t: L.lovasz_hinge(t[:, 0], (y == 1).long().masked_fill(labels == 255, 255), ignore=255),
        ):
            a = bad.clone().requires_grad_()
            loss = fn(a)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and a.grad[0, :, 0, 0].eq(0).all()
            torch.testing.assert_close(loss, fn(x))
