"""Point clouds and other ragged sets in lovasz.torch: ``batch=`` / ``offsets=`` on points-first inputs.

Each scene's loss must equal the oracle's on that scene alone, and the gradient that of the
dense loss of each scene; on every path (the C kernel, the one torch.sort of (scene, key)
int64 keys, float64's two sorts), the module classes, torch.compile, and the errors.
"""

import itertools
import re
import warnings

import numpy as np
import pytest

from conftest import DEVICE_NAME, dev, host, require
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")
core = require("lovasz._torch_core")

SIZES = [5, 0, 17, 1, 40, 9]  # an empty scene, a one-point scene


def scene_data(num_classes, seed, dtype=torch.float64, sizes=SIZES, multilabel=False):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, num_classes, generator=g, dtype=dtype) * 2
    if multilabel:
        y = torch.randint(0, 2, (n, num_classes), generator=g)
    else:
        y = torch.randint(0, num_classes, (n,), generator=g)
        y[sizes[0] : sizes[0] + 3] = 255  # ignored points, the first of the third scene
    offsets = torch.tensor(sizes).cumsum(0)
    return x, y, offsets


def runs(offsets):
    ends = offsets.tolist()
    return [slice(start, end) for start, end in zip([0] + ends[:-1], ends)]


@pytest.fixture(params=["kernel", "sort"])
def path(request, monkeypatch):
    """The C kernel where it applies (float32 on the CPU), or the torch.sort path forced."""
    if request.param == "sort":
        monkeypatch.setattr(core, "_use_c_kernel", lambda pred: False)
    return request.param


CASES = list(itertools.product(["present", "all", [2, 0, 0]], [None, 255], [None, [1.0, 2.0, 0.5, 1.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("classes,ignore,weights", CASES)
def test_softmax_per_scene_equals_the_oracle_on_each_scene(path, dtype, from_logits, classes, ignore, weights):
    x, y, offsets = scene_data(4, seed=len(str(classes)) + (ignore or 0))
    if ignore is None:
        y = y.clamp(max=3)
    probas = x.softmax(1)
    expected = []
    for run in runs(offsets):
        p, labels = probas[run].numpy(), y[run].numpy()
        one = R.lovasz_softmax(p.T[None], labels[None], classes, True, ignore, weights=weights) if len(labels) else 0.0
        expected.append(one)
    inputs = dev((x if from_logits else probas).to(dtype))
    options = dict(classes=classes, per_image=True, ignore=ignore, from_logits=from_logits, weights=weights)
    got = L.lovasz_softmax(inputs, dev(y), offsets=dev(offsets), reduction="none", **options)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(host(got), expected, rtol=tol, atol=tol)
    mean = L.lovasz_softmax(inputs, dev(y), offsets=dev(offsets), **options)
    np.testing.assert_allclose(host(mean), np.mean(expected), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_logits", [False, True])
def test_softmax_gradient_equals_the_dense_gradient_of_each_scene(path, dtype, from_logits):
    x, y, offsets = scene_data(5, seed=3)
    y = torch.where(y == 255, 255, y.clamp(max=4))
    x = (x if from_logits else x.softmax(1)).to(dtype)
    points = dev(x).clone().requires_grad_()
    losses = L.lovasz_softmax(
        points, dev(y), "all", True, 255, from_logits=from_logits, offsets=dev(offsets), reduction="none"
    )
    factors = torch.arange(1.0, len(SIZES) + 1, dtype=dtype)  # a different weight per scene
    (losses * dev(factors)).sum().backward()
    for s, run in enumerate(runs(offsets)):
        scene = dev(x[run].T.unsqueeze(0)).detach().clone().requires_grad_()
        if scene.shape[-1] == 0:
            continue
        dense = L.lovasz_softmax(scene, dev(y[run].unsqueeze(0)), "all", True, 255, from_logits=from_logits)
        (dense * factors[s]).backward()
        torch.testing.assert_close(points.grad[run], scene.grad[0].T, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(points.grad[SIZES[0] : SIZES[0] + 3]) == 0  # ignored points


@pytest.mark.parametrize("margin,symmetric", [("relu", False), ("elu", False), ("relu", True)])
def test_hinge_per_scene_equals_the_oracle_with_batch_and_offsets(path, margin, symmetric):
    x, y, offsets = scene_data(1, seed=5, dtype=torch.float32)
    logits, labels = x[:, 0], torch.where(y == 255, 255, y % 2)
    expected = []
    for run in runs(offsets):
        s, t = logits[run].double().numpy(), labels[run].numpy()
        one = R.lovasz_hinge(s[None], t[None], True, 255, margin=margin, symmetric=symmetric) if len(t) else 0.0
        expected.append(one)
    options = dict(ignore=255, margin=margin, symmetric=symmetric, reduction="none")
    got = L.lovasz_hinge(dev(logits), dev(labels), offsets=dev(offsets), **options)
    np.testing.assert_allclose(host(got), expected, rtol=1e-5, atol=1e-6)
    # The same scenes as torch_geometric's batch vector, its points shuffled.
    scene = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    order = torch.randperm(len(scene), generator=torch.Generator().manual_seed(0))
    shuffled = L.lovasz_hinge(dev(logits[order]), dev(labels[order]), batch=dev(scene[order]), **options)
    np.testing.assert_allclose(host(shuffled), expected, rtol=1e-5, atol=1e-6)
    for count in (len(SIZES) + 2, np.int64(len(SIZES) + 2)):  # NumPy's ints count too, as everywhere else
        counted = L.lovasz_hinge(dev(logits), dev(labels), batch=dev(scene), num_scenes=count, **options)
        np.testing.assert_allclose(host(counted), expected + [0.0, 0.0], rtol=1e-5, atol=1e-6)


def test_multilabel_per_scene_equals_the_oracle_and_the_dense_loss(path):
    x, y, offsets = scene_data(3, seed=7, dtype=torch.float32, multilabel=True)
    expected, dense = [], []
    for run in runs(offsets):
        p, t = x[run].double().numpy(), y[run].numpy()
        expected.append(R.lovasz_multilabel(p.T[None], t.T[None], "present", True) if len(t) else 0.0)
        one = L.lovasz_multilabel(dev(x[run].T[None].sigmoid()), dev(y[run].T[None]), from_logits=False)
        dense.append(host(one) if len(t) else 0.0)
    got = L.lovasz_multilabel(dev(x), dev(y), offsets=dev(offsets), reduction="none")
    np.testing.assert_allclose(host(got), expected, rtol=1e-5, atol=1e-6)
    probabilities = L.lovasz_multilabel(
        dev(x.sigmoid()), dev(y), from_logits=False, offsets=dev(offsets), reduction="none"
    )
    np.testing.assert_allclose(host(probabilities), dense, rtol=1e-5, atol=1e-6)


def test_without_per_image_all_points_are_one_set(path):
    x, y, offsets = scene_data(4, seed=9, dtype=torch.float32)
    y = torch.where(y == 255, 255, y.clamp(max=3))
    expected = R.lovasz_softmax(x.softmax(1).double().numpy().T[None], y.numpy()[None], ignore=255)
    got = L.lovasz_softmax(dev(x), dev(y), ignore=255, from_logits=True, per_image=False, offsets=dev(offsets))
    np.testing.assert_allclose(host(got), expected, rtol=1e-5)


def test_without_per_image_every_layout_of_points_is_the_call_without_scenes(path):
    """``per_image=False`` with scenes (``offsets=``, or ``batch=`` in any order): one set of every point, the
    loss of the same points without scenes (one image of them for one channel), for each layout: ``[N, C]``,
    sigmoid probabilities ``[N]``, the hinge's ``[N]`` and ``[N, 1]``, multi-label ``[N, C]``. Gradients too,
    with the errors tied in many places: tied errors fall in the points' own order, not the scenes'."""
    x, y, offsets = scene_data(3, seed=12, dtype=torch.float64)
    x = ((x * 2).round() / 2).requires_grad_()  # ties

    def value_and_grad(loss):
        value = loss()
        return value.detach(), torch.autograd.grad(value, x)[0]

    binary = torch.where(y == 255, 255, y % 2)
    shuffled = dev(torch.randint(0, len(offsets), (x.shape[0],), generator=torch.Generator().manual_seed(3)))
    targets = torch.where(y[:, None] == 255, 255, (x.detach() > 0).long())
    calls = [
        (lambda **kw: L.lovasz_softmax(dev(x), dev(y), ignore=255, from_logits=True, **kw), None),
        (lambda **kw: L.lovasz_softmax(dev(x[:, 0].sigmoid()), dev(binary), ignore=255, **kw), "one image"),
        (lambda **kw: L.lovasz_hinge(dev(x[:, 0]), dev(binary), ignore=255, **kw), None),
        (lambda **kw: L.lovasz_hinge(dev(x[:, :1]), dev(binary), ignore=255, **kw), None),
        (lambda **kw: L.lovasz_multilabel(dev(x), dev(targets), ignore=255, **kw), None),
    ]
    for call, layout in calls:
        for scenes in (dict(offsets=dev(offsets)), dict(batch=shuffled)):
            got, got_grad = value_and_grad(lambda: call(per_image=False, **scenes))
            if layout == "one image":  # [N] alone would be N images of a pixel each
                expected, expected_grad = value_and_grad(
                    lambda: L.lovasz_softmax(
                        dev(x[:, 0].sigmoid())[None], dev(binary)[None], ignore=255, per_image=False
                    )
                )
            else:
                expected, expected_grad = value_and_grad(lambda: call(per_image=False))
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got_grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_sigmoid_points_and_the_loss_classes(path):
    x, y, offsets = scene_data(2, seed=11, dtype=torch.float32)
    y = torch.where(y == 255, 255, y % 2)
    logits = x[:, 0]
    # One channel of probabilities [N]: the two classes [1 - p, p].
    p = logits.sigmoid()
    two = torch.stack([1 - p, p], 1)
    a = L.lovasz_softmax(dev(p), dev(y), "all", True, 255, offsets=dev(offsets))
    b = L.lovasz_softmax(dev(two), dev(y), "all", True, 255, offsets=dev(offsets))
    torch.testing.assert_close(a, b)
    # LovaszLoss and CrossEntropyLovaszLoss pass the scenes on.
    multiclass = L.LovaszLoss("multiclass", per_image=True, ignore_index=255, from_logits=True)
    expected = L.lovasz_softmax(dev(x), dev(y), "present", True, 255, from_logits=True, offsets=dev(offsets))
    torch.testing.assert_close(multiclass(dev(x), dev(y), offsets=dev(offsets)), expected)
    binary = L.LovaszLoss("binary", per_image=True, ignore_index=255)
    expected = L.lovasz_hinge(dev(logits), dev(y), True, 255, offsets=dev(offsets))
    torch.testing.assert_close(binary(dev(logits), dev(y), offsets=dev(offsets)), expected)
    torch.testing.assert_close(binary(dev(logits[:, None]), dev(y), offsets=dev(offsets)), expected)
    combined = L.CrossEntropyLovaszLoss("multiclass", per_image=True, ignore_index=255)
    ce = torch.nn.functional.cross_entropy(dev(x), dev(y), ignore_index=255)
    lovasz = L.lovasz_softmax(dev(x), dev(y), "present", True, 255, from_logits=True, offsets=dev(offsets))
    torch.testing.assert_close(combined(dev(x), dev(y), offsets=dev(offsets)), ce + lovasz)


def test_empty_and_all_ignored_scenes_get_zero_with_zero_gradient(path):
    x = dev(torch.randn(6, 3)).requires_grad_()
    y = dev(torch.tensor([255, 255, 0, 1, 2, 255]))
    losses = L.lovasz_softmax(
        x, y, ignore=255, per_image=True, offsets=dev(torch.tensor([2, 2, 5, 6])), from_logits=True, reduction="none"
    )
    assert host(losses)[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0] and host(losses)[2] > 0
    losses.sum().backward()
    assert torch.count_nonzero(x.grad[[0, 1, 5]]) == 0
    nothing = L.lovasz_softmax(
        dev(torch.zeros(0, 3)),
        dev(torch.zeros(0, dtype=torch.long)),
        per_image=True,
        offsets=dev(torch.tensor([0, 0])),
        reduction="none",
    )
    assert host(nothing).tolist() == [0.0, 0.0]


def test_forward_mode_gives_the_reverse_mode_values(path):
    x, y, offsets = scene_data(3, seed=13, dtype=torch.float64)
    y = torch.where(y == 255, 255, y.clamp(max=2))
    x, y, offsets = dev(x.softmax(1)), dev(y), dev(offsets)
    tangent = torch.randn_like(x)
    fn = lambda p: L.lovasz_softmax(p, y, "all", True, 255, offsets=offsets, reduction="none")  # noqa: E731
    _, jvp = torch.func.jvp(fn, (x,), (tangent,))
    jacobian = torch.autograd.functional.jacobian(fn, x)  # [S, N, C]
    torch.testing.assert_close(jvp, (jacobian * tangent).sum((1, 2)))


def test_compiled_equals_eager():
    x, y, offsets = scene_data(4, seed=15, dtype=torch.float32)
    y = torch.where(y == 255, 255, y.clamp(max=3))
    x, y, offsets = dev(x), dev(y), dev(offsets)
    scene = dev(torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES)))

    def step(p, labels, offsets, scene):
        a = L.lovasz_softmax(p, labels, per_image=True, ignore=255, from_logits=True, offsets=offsets)
        b = L.lovasz_hinge(p[:, 0], labels.clamp(max=1), ignore=255, batch=scene, num_scenes=len(SIZES))
        return a + b

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = step(xe, y, offsets, scene)
    graph = compiled(xc, y, offsets, scene)
    torch.testing.assert_close(graph, eager)
    eager.backward()
    graph.backward()
    torch.testing.assert_close(xc.grad, xe.grad)
    uncounted = torch.compile(lambda p, s: L.lovasz_hinge(p[:, 0], y.clamp(max=1), ignore=255, batch=s), fullgraph=True)
    with pytest.raises(Exception, match="batch= needs num_scenes="):
        uncounted(x, scene)


def test_compiled_num_scenes_may_change_between_calls():
    """A second value of num_scenes makes it a SymInt (automatic dynamic shapes), whose check read hasattr(...,
    '__index__'): Dynamo's 'Unsupported hasattr call' under fullgraph=True."""
    step = torch.compile(
        lambda p, y, s, n: L.lovasz_softmax(p, y, from_logits=True, per_image=True, batch=s, num_scenes=n),
        backend="eager",
        fullgraph=True,
    )
    g = torch.Generator().manual_seed(18)
    for scenes in (2, 3, 4):
        points, labels = torch.randn(5 * scenes, 4, generator=g), torch.randint(0, 4, (5 * scenes,), generator=g)
        batch = torch.arange(scenes).repeat_interleave(5)
        eager = L.lovasz_softmax(points, labels, from_logits=True, per_image=True, batch=batch, num_scenes=scenes)
        torch.testing.assert_close(step(points, labels, batch, scenes), eager)


# On a GPU the check is a device-side assert, which ends the process's CUDA context: not caught here.
@pytest.mark.skipif(DEVICE_NAME != "cpu", reason="the CPU's message only")
@pytest.mark.parametrize("bad", [-1, len(SIZES)])
def test_compiled_scene_ids_out_of_range_raise_when_the_graph_runs(bad):
    """The check of ``batch=`` and ``offsets=`` runs in the compiled graph: a clear message, not an
    IndexError from inside the sort path, nor (a negative id) a point counted in the first scene."""
    x, y, offsets = scene_data(4, seed=16, dtype=torch.float32)
    y = torch.where(y == 255, 255, y.clamp(max=3))
    scene = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    scene[7] = bad
    by_batch = torch.compile(
        lambda p, s: L.lovasz_softmax(p, y, per_image=True, ignore=255, batch=s, num_scenes=len(SIZES)), fullgraph=True
    )
    by_offsets = torch.compile(lambda p, o: L.lovasz_softmax(p, y, per_image=True, ignore=255, offsets=o))
    with pytest.raises(RuntimeError, match=r"batch must hold scene indices in \[0, 5\]"):
        by_batch(x, scene)
    with pytest.raises(RuntimeError, match="offsets must be cumulative point counts"):
        by_offsets(x, offsets.flip(0))


def test_large_scenes_on_the_kernel_equal_the_sort_path(monkeypatch):
    """A LiDAR-like batch, smaller: the C kernel's rows against the torch.sort path's."""
    x, y, offsets = scene_data(19, seed=17, dtype=torch.float32, sizes=[3000, 4500, 2000, 5000])
    y = torch.where(y == 255, 255, y % 19)
    x = dev(x).requires_grad_()
    kernel = L.lovasz_softmax(x, dev(y), per_image=True, ignore=255, from_logits=True, offsets=dev(offsets))
    (grad_kernel,) = torch.autograd.grad(kernel, x)
    monkeypatch.setattr(core, "_use_c_kernel", lambda pred: False)
    sort = L.lovasz_softmax(x, dev(y), per_image=True, ignore=255, from_logits=True, offsets=dev(offsets))
    (grad_sort,) = torch.autograd.grad(sort, x)
    torch.testing.assert_close(kernel, sort)
    torch.testing.assert_close(grad_kernel, grad_sort, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("classes,weights", [(4, None), (4, [1.0, 0.0, 2.0, 0.5]), (40, None)])
def test_extreme_logits_on_the_kernel_equal_the_sort_path(monkeypatch, classes, weights):
    """The kernel takes the softmax of points-first logits itself: where the exponentials underflow (logits
    hundreds apart, a -inf), its values and gradients still equal those of torch.softmax and the sort."""
    x, y, offsets = scene_data(classes, seed=21, dtype=torch.float32, sizes=[300, 0, 450, 7])
    y = torch.where(y == 255, 255, y % classes)
    # some points' classes 80-500 apart: e^(-x) below float's range
    x = x * torch.tensor([1.0, 30.0, 90.0, 0.1]).repeat(classes // 4)
    x[5, 2] = -float("inf")  # a valid point with one impossible class
    x = dev(x).requires_grad_()
    options = dict(per_image=True, ignore=255, from_logits=True, offsets=dev(offsets), weights=weights)
    kernel = L.lovasz_softmax(x, dev(y), reduction="none", **options)
    (grad_kernel,) = torch.autograd.grad(kernel.sum(), x)
    monkeypatch.setattr(core, "_use_c_kernel", lambda pred: False)
    sort = L.lovasz_softmax(x, dev(y), reduction="none", **options)
    (grad_sort,) = torch.autograd.grad(sort.sum(), x)
    assert torch.isfinite(kernel).all() and torch.isfinite(grad_kernel).all()
    torch.testing.assert_close(kernel, sort, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_kernel, grad_sort, rtol=1e-5, atol=1e-7)


def test_every_thread_count_gives_the_same_result_on_the_kernel():
    """The points-first kernel splits the points, then the rows, over the threads: one scene on many threads,
    many scenes on one, a run of points that crosses scenes; the result is the same to the bit."""
    x, y, offsets = scene_data(5, seed=25, dtype=torch.float32, sizes=[10000, 37, 0, 25000])  # past the grain
    y = torch.where(y == 255, 255, y % 5)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3, 7):
            torch.set_num_threads(count)
            for one_scene in (False, True):
                points = x.clone().requires_grad_()
                scenes = torch.tensor([len(y)]) if one_scene else offsets
                losses = L.lovasz_softmax(
                    points, y, per_image=True, ignore=255, from_logits=True, offsets=scenes, reduction="none"
                )
                (losses * torch.arange(1.0, len(losses) + 1)).sum().backward()
                results.append((one_scene, losses.detach(), points.grad))
    finally:
        torch.set_num_threads(threads)
    for one_scene, losses, grad in results[2:]:
        first = results[int(one_scene)]
        assert torch.equal(losses, first[1]) and torch.equal(grad, first[2])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_logits_count_where_the_point_takes_part_and_not_where_ignored(path, bad):
    x, y, offsets = scene_data(4, seed=23, dtype=torch.float32)
    y = torch.where(y == 255, 255, y.clamp(max=3))
    ignored = SIZES[0]  # the first point of the third scene is ignored
    fn = lambda p: L.lovasz_softmax(  # noqa: E731
        p, dev(y), per_image=True, ignore=255, from_logits=True, offsets=dev(offsets), reduction="none"
    )
    clean = dev(x).clone().requires_grad_()
    expected = fn(clean)
    expected.sum().backward()
    for channels in (slice(None), slice(1, 2)):  # every logit of the point, or one
        noisy = x.clone()
        noisy[ignored, channels] = bad
        noisy = dev(noisy).clone().requires_grad_()
        got = fn(noisy)
        got.sum().backward()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(noisy.grad, clean.grad)
        assert torch.count_nonzero(noisy.grad[ignored]) == 0
    valid = x.clone()
    valid[-1, 0] = float("nan")  # a point of the last scene that takes part
    losses = host(fn(dev(valid)))
    assert np.isnan(losses[-1]) and np.isfinite(losses[:-1]).all()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(batch=[0, 0, 1, 1], offsets=[2, 4]), TypeError, "not both"),
        (dict(offsets=[3, 2, 4]), ValueError, "offsets must be cumulative point counts, rising to 4"),
        (dict(offsets=[1, 3]), ValueError, "rising to 4"),
        (dict(offsets=torch.tensor([1.0, 4.0])), TypeError, "offsets must be a 1-D integer tensor"),
        (dict(offsets=[[2, 4]]), TypeError, "offsets must be a 1-D integer tensor"),
        (dict(batch=[0, 1, 1]), ValueError, r"batch must give one scene per point, shape \[4\]"),
        (dict(batch=[0, 1, 5, 1], num_scenes=3), ValueError, r"scene indices in \[0, 2\]"),
        (dict(batch=[0, -1, 1, 1]), ValueError, r"scene indices in \[0, 1\]"),
        (dict(batch=[0, 0, 0, 0], num_scenes=0), ValueError, r"scene indices in a scene, and num_scenes=0 gives none"),
        (dict(offsets=[2, 4], num_scenes=2), TypeError, "num_scenes goes with batch="),
        (dict(batch=[0, 0, 1, 1], num_scenes=2.0), TypeError, "num_scenes must be a non-negative int"),
        (dict(batch=[0, 0, 1, 1], num_scenes=-1), ValueError, "num_scenes must be a non-negative int; got -1"),
        (dict(num_scenes=2), TypeError, "pass the scenes as batch="),
    ],
)
def test_bad_scenes_raise_clear_errors(kwargs, error, match):
    if DEVICE_NAME != "cpu" and error is ValueError and "shape" not in match:
        pytest.skip("on an accelerator the value checks are queued device asserts")
    kwargs = {
        k: dev(torch.tensor(v)) if isinstance(v, list) else dev(v) if isinstance(v, torch.Tensor) else v
        for k, v in kwargs.items()
    }
    with pytest.raises(error, match=match):
        L.lovasz_softmax(dev(torch.rand(4, 3)), dev(torch.tensor([0, 1, 2, 0])), per_image=True, **kwargs)


def test_scene_lists_of_floats_raise():
    """``offsets=[4.9, 8.9, 12]`` became ``[4, 8, 12]`` without a word (a float tensor raised)."""
    x, y = dev(torch.rand(12, 3)), dev(torch.randint(0, 3, (12,)))
    for scenes in [dict(offsets=[4.9, 8.9, 12.0]), dict(batch=[0.5] * 6 + [1.5] * 6), dict(offsets=[True, 12])]:
        name = next(iter(scenes))
        with pytest.raises(TypeError, match=f"^{name} must be a 1-D integer tensor or a list of ints; got"):
            L.lovasz_softmax(x, y, per_image=True, **scenes)
    assert L.lovasz_softmax(x, y, per_image=True, offsets=[4, np.int64(8), 12]).isfinite()


def test_shapes_that_are_not_points_first_raise():
    offsets = dev(torch.tensor([2, 4]))
    with pytest.raises(ValueError, match=r"probas must be points-first, \[N, C\]"):
        L.lovasz_softmax(dev(torch.rand(4, 3, 2)), dev(torch.zeros(4, dtype=torch.long)), offsets=offsets)
    with pytest.raises(ValueError, match=r"labels must have shape \[4\] for probas of shape \[4, 3\]"):
        L.lovasz_softmax(dev(torch.rand(4, 3)), dev(torch.zeros(4, 3, dtype=torch.long)), offsets=offsets)
    with pytest.raises(ValueError, match=r"targets must have shape \[4, 3\]"):
        L.lovasz_multilabel(dev(torch.rand(4, 3)), dev(torch.zeros(4, dtype=torch.long)), offsets=offsets)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        L.lovasz_hinge([0.5, 1.0], dev(torch.zeros(2)), offsets=offsets)
    with pytest.raises(ValueError, match=r"logits must be points-first, \[N\] \(or \[N, 1\].*; got \[4, 2\]"):
        L.lovasz_hinge(dev(torch.rand(4, 2)), dev(torch.zeros(4, dtype=torch.long)), offsets=offsets)  # (was [1, 2, 4])
    with pytest.raises(ValueError, match=r"logits must be points-first, \[N\] \(or \[N, 1\].*; got \[4, 1, 1\]"):
        L.lovasz_hinge(dev(torch.rand(4, 1, 1)), dev(torch.zeros(4, dtype=torch.long)), offsets=offsets)
    # LovaszLoss('binary') with scenes: one score per point, as lovasz_hinge (an [N, 2] input was read as two
    # per-channel hinges, where the dense binary mode reads one set), and the target's shape as given.
    binary = L.LovaszLoss("binary", from_logits=True)
    zeros = dev(torch.zeros(4, dtype=torch.long))
    shape_of = lambda shape: re.escape(str(list(shape)))  # noqa: E731  ("[4, 2]")
    for bad in [(4, 2), (4, 1, 1)]:
        for target in [zeros, dev(torch.zeros(bad, dtype=torch.long))]:
            with pytest.raises(
                ValueError, match=rf"input must be points-first, \[N\].*multilabel.*; got {shape_of(bad)}"
            ):
                binary(dev(torch.rand(*bad)), target, offsets=offsets)
    for target in [zeros[:3], zeros[:, None].expand(4, 2)]:
        with pytest.raises(ValueError, match=rf"target must be \[N\] \(or \[N, 1\]\).*; got {shape_of(target.shape)}$"):
            binary(dev(torch.rand(4)), target, offsets=offsets)
    stride_0 = dev(torch.tensor(0)).expand(4)  # one scene: searchsorted warned of a non-contiguous boundary
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.lovasz_softmax(dev(torch.rand(4, 3)), dev(torch.zeros(4, dtype=torch.long)), batch=stride_0, per_image=True)


@pytest.mark.skipif(not DEVICE_NAME.startswith("cuda"), reason="CUDA only: the host syncs of a GPU")
def test_no_host_sync_on_cuda():
    x, y, offsets = scene_data(4, seed=19, dtype=torch.float32)
    y = torch.where(y == 255, 255, y.clamp(max=3))
    x, y, offsets = dev(x).requires_grad_(), dev(y), dev(offsets)
    scene = dev(torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = L.lovasz_softmax(x, y, per_image=True, ignore=255, from_logits=True, offsets=offsets)
        loss = loss + L.lovasz_hinge(x[:, 0], y.clamp(max=1), ignore=255, batch=scene, num_scenes=len(SIZES))
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


# ----------------------------------------------------------------------------- nested tensors


def jagged(values, offsets):
    """The scenes as a nested tensor ``[S, j, ...]`` (``layout=torch.jagged``) over ``values``."""
    return torch.nested.nested_tensor_from_jagged(values, torch.cat([offsets.new_zeros(1), offsets]))


@pytest.mark.parametrize("per_image", [False, True])
def test_jagged_nested_scenes_equal_the_same_points_with_offsets(path, per_image):
    """A nested prediction and nested labels (as lovasz.tf takes RaggedTensors) are points with offsets=:
    the same losses and gradients, bit for bit, in every function and module (empty scene included)."""
    x, y, offsets = scene_data(4, seed=21, dtype=torch.float32)
    x, y, offsets = dev(x), dev(y), dev(offsets)
    calls = {
        "softmax": lambda p, t, **s: L.lovasz_softmax(p, t, "present", per_image, 255, from_logits=True, **s),
        "hinge": lambda p, t, **s: L.lovasz_hinge(p, t, per_image, 255, **s),
        "multilabel": lambda p, t, **s: L.lovasz_multilabel(p, t, per_image=per_image, **s),
        "LovaszLoss": lambda p, t, **s: L.LovaszLoss(per_image=per_image, ignore_index=255)(p, t, **s),
        "binary LovaszLoss": lambda p, t, **s: L.LovaszLoss("binary", per_image=per_image)(p, t, **s),
        "CrossEntropyLovaszLoss": lambda p, t, **s: L.CrossEntropyLovaszLoss(per_image=per_image, ignore_index=255)(
            p, t, **s
        ),
    }
    binary = torch.where(y == 255, 255, y % 2)
    inputs = {
        "hinge": (x[:, 0], binary),
        "multilabel": (x, x > 0.5),
        "binary LovaszLoss": (x[:, 0], binary.clamp(max=1)),
    }
    for name, call in calls.items():
        p, t = inputs.get(name, (x, y))
        flat, nested = p.clone().requires_grad_(), p.clone().requires_grad_()
        expected = call(flat, t, offsets=offsets)
        got = call(jagged(nested, offsets), jagged(t, offsets))
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
        expected.backward()
        got.backward()
        torch.testing.assert_close(nested.grad, flat.grad, rtol=0, atol=0, msg=name)


def test_jagged_nested_scenes_compiled_equal_eager():
    x, y, offsets = scene_data(4, seed=23, dtype=torch.float32)
    x, y, offsets = dev(x), dev(y), dev(offsets)

    def step(p, t):
        return L.lovasz_softmax(p, t, per_image=True, ignore=255, from_logits=True)

    compiled = torch.compile(step, fullgraph=True)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager, graph = step(jagged(xe, offsets), jagged(y, offsets)), compiled(jagged(xc, offsets), jagged(y, offsets))
    torch.testing.assert_close(graph, eager)
    eager.backward()
    graph.backward()
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_sparse_and_nested_inputs_that_are_not_scenes_raise_clear_errors():
    x, y, offsets = scene_data(3, seed=22, dtype=torch.float32, sizes=[4, 6])
    x, y, offsets = dev(x.softmax(1)), dev(y.clamp(max=2)), dev(offsets)
    grid = x.T.reshape(1, 3, 2, 5)
    dense = "must be a dense \\(strided\\) tensor; got layout torch.sparse_coo: pass {}.to_dense\\(\\)"
    with pytest.raises(TypeError, match=dense.format("probas")):
        L.lovasz_softmax(grid.to_sparse(), y.reshape(1, 2, 5))
    with pytest.raises(TypeError, match=dense.format("labels")):
        L.lovasz_softmax(grid, y.reshape(1, 2, 5).to_sparse())
    with pytest.raises(TypeError, match=dense.format("logits")):
        L.lovasz_hinge(grid[:, 0].to_sparse(), y.reshape(1, 2, 5) % 2)
    with pytest.raises(TypeError, match=dense.format("logits")):
        L.lovasz_multilabel(grid.to_sparse(), grid > 0.5)
    with pytest.raises(TypeError, match=dense.format("input")):
        L.LovaszLoss()(grid.to_sparse(), y.reshape(1, 2, 5))
    with pytest.raises(TypeError, match=dense.format("target")):
        L.CrossEntropyLovaszLoss()(grid, y.reshape(1, 2, 5).to_sparse())
    with pytest.raises(TypeError, match="offsets must be a dense 1-D integer tensor; got a torch.sparse_coo one"):
        L.lovasz_softmax(x, y, offsets=offsets.to_sparse())
    strided = torch.nested.nested_tensor([x[:4], x[4:]])
    with pytest.raises(TypeError, match="probas as a nested tensor must be scenes .* layout=torch.jagged"):
        L.lovasz_softmax(strided, jagged(y, offsets))
    with pytest.raises(TypeError, match="probas must be a dense tensor here; got a nested tensor"):
        L.lovasz_softmax_flat(jagged(x, offsets), y)
    with pytest.raises(TypeError, match="labels must be a nested tensor of the scenes of the nested probas"):
        L.lovasz_softmax(jagged(x, offsets), y)
    with pytest.raises(TypeError, match="a nested probas gives its scenes already"):
        L.lovasz_softmax(jagged(x, offsets), jagged(y, offsets), offsets=offsets)
    with pytest.raises(ValueError, match="labels must hold the 2 scenes of probas, on its device; got 1"):
        L.lovasz_softmax(jagged(x, offsets), jagged(y, offsets[1:]))
    if DEVICE_NAME == "cpu":  # elsewhere a queued device assert
        with pytest.raises(ValueError, match=r"point for point; got scenes of \[5, 5\] points against \[4, 6\]"):
            L.lovasz_softmax(jagged(x, offsets), jagged(y, dev(torch.tensor([5, 10]))))
