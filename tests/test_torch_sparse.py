"""Inputs where most pixels are ignored (voxel grids of LiDAR scans) and points ``[N, C]`` without
``offsets``: lovasz.torch gathers the pixels that count into points of scenes (``_torch_scenes.compact``).

The gathered path must give what the dense path gives: the same loss and gradient, bit for bit
where the math is the same (probabilities and scores in; from logits the softmax, taken over the
gathered points, differs in the last bits), an exact zero at every ignored pixel, the gradient laid out
as the input.
"""

import itertools

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")
S = require("lovasz._torch_scenes")


@pytest.fixture(autouse=True)
def gather_small_grids(monkeypatch):
    """The grids here are small, for speed: gathered all the same (but in the test of the minimum)."""
    monkeypatch.setattr(S, "COMPACT_MIN_VALUES", 0)


def test_a_grid_under_the_minimum_size_stays_dense(monkeypatch):
    """Under ``COMPACT_MIN_VALUES`` values a grid is not gathered, however few of its pixels count."""
    monkeypatch.undo()  # the fixture's patch: the real minimum
    logits, labels = grid(8, shape=(2, 20, 16, 16, 8))  # 81,920 values, 10% valid
    assert logits.numel() < S.COMPACT_MIN_VALUES
    probas = logits.softmax(1)
    assert (
        S.compact(probas.flatten(2), labels.flatten(1)[:, None], labels.flatten(1)[:, None] == 255, None, False) is None
    )
    big_logits, big_labels = grid(8, shape=(2, 20, 32, 16, 8))
    assert big_logits.numel() >= S.COMPACT_MIN_VALUES
    big = big_labels.flatten(1)[:, None]
    assert S.compact(big_logits.softmax(1).flatten(2), big, big == 255, None, False) is not None


def grid(seed, shape=(3, 5, 6, 7, 4), occupied=0.1, ignore=255, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g, dtype=dtype)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    labels[torch.rand(labels.shape, generator=g) >= occupied] = ignore
    labels[-1] = ignore  # an image with no valid voxel
    return logits, labels


def run(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    loss.sum().backward()
    return loss.detach(), x.grad


def dense_and_sparse(monkeypatch, fn, x, *args, **kwargs):
    calls = []
    compact = S.compact
    monkeypatch.setattr(S, "compact", lambda *a: calls.append(1) or compact(*a))
    sparse = run(fn, x, *args, **kwargs)
    assert calls, "the sparse path was not asked"
    below = S.COMPACT_BELOW
    monkeypatch.setattr(S, "COMPACT_BELOW", -1.0)  # never gathers: the dense path
    dense = run(fn, x, *args, **kwargs)
    monkeypatch.setattr(S, "COMPACT_BELOW", below)  # for the next call
    return dense, sparse


SOFTMAX_OPTIONS = list(itertools.product([False, True], ["present", "all", [1, 3, 3]], [False, True]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_image,classes,from_logits", SOFTMAX_OPTIONS)
def test_softmax_sparse_equals_dense(monkeypatch, dtype, per_image, classes, from_logits):
    logits, labels = grid(0, dtype=dtype)
    x = logits if from_logits else logits.softmax(1)
    options = dict(classes=classes, per_image=per_image, ignore=255, from_logits=from_logits, reduction="none")
    (dense_loss, dense_grad), (loss, grad) = dense_and_sparse(monkeypatch, L.lovasz_softmax, x, labels, **options)
    assert grad.is_contiguous()
    assert not grad.permute(0, 2, 3, 4, 1)[labels == 255].any()  # ignored: exact zeros
    if from_logits:  # the softmax's backward over the gathered pixels: the last bits
        torch.testing.assert_close(loss, dense_loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-8)
    else:
        torch.testing.assert_close(loss, dense_loss, rtol=1e-15 if dtype == torch.float64 else 0, atol=0)
        assert torch.equal(grad, dense_grad)
    probas = (logits.softmax(1) if from_logits else x).double().numpy()
    expected = R.lovasz_softmax(probas, labels.numpy(), classes, per_image, 255, reduction="none")
    np.testing.assert_allclose(loss.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_numpy_and_torch_find_the_same_pixels(monkeypatch):
    """On the CPU numpy counts and finds the valid pixels; on an accelerator torch's ``sum`` and
    ``nonzero_static`` do: the same indices (rising), None where too many are valid, and through the loss
    the same values and gradient, bit for bit."""
    g = torch.Generator().manual_seed(3)
    masks = [torch.rand(3, 40, generator=g) < p for p in (0.0, 0.1, 0.5, 0.9)] + [torch.zeros(0, 5, dtype=torch.bool)]
    by_numpy = [S._valid_pixels(mask) for mask in masks]
    logits, labels = grid(4)
    results = [run(L.lovasz_softmax, logits.softmax(1), labels, ignore=255, per_image=True)]
    monkeypatch.setattr(S, "_found_by_numpy", lambda valid: False)
    for mask, expected in zip(masks, by_numpy):
        got = S._valid_pixels(mask)
        assert (got is None) == (mask.float().mean() > S.COMPACT_BELOW) == (expected is None)
        if expected is not None:
            assert torch.equal(got, expected) and torch.equal(got, mask.view(-1).nonzero().squeeze(1))
    results.append(run(L.lovasz_softmax, logits.softmax(1), labels, ignore=255, per_image=True))
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("per_image", [False, True])
def test_the_kernels_gather_and_scatter_equal_torchs(monkeypatch, per_image):
    """On the CPU the C kernel gathers the valid pixels and writes the gradient back (zeros and all, in one
    pass); torch's indexing does elsewhere (an accelerator, float64): the same values, bit for bit, also
    through a second derivative."""
    C = require("lovasz._ckernel")
    if C.grid_kernel() is None:
        pytest.skip("the kernel is not built")
    logits, labels = grid(5, shape=(3, 6, 9, 8, 7))
    calls = []
    for name in ("gather_pixels", "scatter_pixels"):
        monkeypatch.setattr(C, name, lambda *a, f=getattr(C, name): calls.append(f.__name__) or f(*a))

    def results():
        x = logits.clone().requires_grad_()
        loss = L.lovasz_softmax(x.softmax(1), labels, ignore=255, per_image=per_image)
        (first,) = torch.autograd.grad(loss, x, create_graph=True)
        (second,) = torch.autograd.grad(first.square().sum(), x)
        return loss, first, second

    on_kernel = results()
    assert calls == ["gather_pixels", "scatter_pixels"] * 2  # the second derivative goes back through them too
    monkeypatch.setattr(C, "grid_kernel", lambda: None)
    for got, expected in zip(on_kernel, results()):
        assert torch.equal(got, expected)
    assert len(calls) == 4


def test_gather_and_scatter_are_each_others_gradient_at_every_order(monkeypatch):
    """y = gather(x): d sum(y^3) / dx = scatter(3 y^2), and its derivative along t is scatter(6 y gather(t)):
    reverse mode twice and forward mode, on the kernel and on torch's indexing alike."""
    g = torch.Generator().manual_seed(6)
    x, t = torch.randn(2, 3, 50, generator=g), torch.randn(2, 3, 50, generator=g)
    valid = torch.rand(2, 50, generator=g) < 0.3
    at = S.Pixels(*valid.nonzero(as_tuple=True), valid.sum(1).cumsum(0))

    def derivatives():
        xg = x.clone().requires_grad_()
        y = S._GatherPixels.apply(xg, at)
        (first,) = torch.autograd.grad(y.pow(3).sum(), xg, create_graph=True)
        (second,) = torch.autograd.grad((first * t).sum(), xg)
        with torch.autograd.forward_ad.dual_level():
            dual = S._GatherPixels.apply(torch.autograd.forward_ad.make_dual(x, t), at)
            tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
        return y.detach(), first.detach(), second, tangent

    y, first, second, tangent = derivatives()
    torch.testing.assert_close(y, x.permute(1, 0, 2)[:, at.image, at.pixel], rtol=0, atol=0)
    scatter = lambda v: S._scatter(v, at, x.shape)  # noqa: E731
    torch.testing.assert_close(first, scatter(3 * y**2))
    torch.testing.assert_close(second, scatter(6 * y * S._gather(t, at)))
    assert torch.equal(tangent, S._gather(t, at))
    monkeypatch.setattr(require("lovasz._ckernel"), "grid_kernel", lambda: None)
    for got, expected in zip((y, first, second, tangent), derivatives()):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("ignore", [255, None])  # gathered, and the dense path
def test_channels_last_grids_give_the_contiguous_values(from_logits, ignore):
    """A channels-last grid (torch.channels_last_3d, as a 3-D network may give it) is not contiguous: the
    gather takes torch's indexing there, the dense path reads it as it lies: the same loss and gradient, bit
    for bit."""
    logits, labels = grid(7)
    if ignore is None:
        labels = labels.remainder(logits.shape[1])
    x = logits if from_logits else logits.softmax(1)
    options = dict(ignore=ignore, from_logits=from_logits)
    loss, grad = run(L.lovasz_softmax, x, labels, **options)
    last_loss, last_grad = run(L.lovasz_softmax, x.contiguous(memory_format=torch.channels_last_3d), labels, **options)
    assert torch.equal(last_loss, loss)
    assert torch.equal(last_grad, grad)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [0, 19, 255, -1])  # the LiDAR codebases' ignore values
def test_hinge_and_multilabel_sparse_equal_dense(monkeypatch, per_image, ignore):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 9, 8, 6, generator=g)
    labels = torch.randint(0, 2, (2, 9, 8, 6), generator=g)
    labels[torch.rand(labels.shape, generator=g) > 0.1] = ignore
    options = dict(per_image=per_image, ignore=ignore, reduction="none")
    (dense_loss, dense_grad), (loss, grad) = dense_and_sparse(monkeypatch, L.lovasz_hinge, scores, labels, **options)
    torch.testing.assert_close(loss, dense_loss, rtol=0, atol=0)
    assert torch.equal(grad, dense_grad)

    # multi-label: a voxel may be ignored in some channels only, and still counts in the others
    logits = torch.randn(2, 4, 8, 6, 5, generator=g)
    targets = torch.randint(0, 2, logits.shape, generator=g)
    targets[:, :, torch.rand(8, 6, 5, generator=g) > 0.1] = ignore
    targets[0, 1, 0, 0, 0] = ignore
    for from_logits in (True, False):
        x = logits if from_logits else logits.sigmoid()
        options = dict(per_image=per_image, ignore=ignore, from_logits=from_logits, reduction="none")
        (dense_loss, dense_grad), (loss, grad) = dense_and_sparse(
            monkeypatch, L.lovasz_multilabel, x, targets, **options
        )
        torch.testing.assert_close(loss, dense_loss, rtol=0, atol=0)
        assert torch.equal(grad, dense_grad)


def test_bad_labels_on_a_gathered_grid_raise_as_on_the_dense_path(monkeypatch):
    """Labels are checked after the gathering (the few pixels that count): the same error, naming the
    first bad value in pixel order, whichever path runs."""
    logits, labels = grid(3)
    scores, binary = logits[:, 0], labels.remainder(2)
    binary[labels == 255] = 255
    gathered = []
    compact = S.compact
    monkeypatch.setattr(S, "compact", lambda *a: gathered.append(compact(*a)) or gathered[-1])
    for path_threshold in (S.COMPACT_BELOW, -1.0):  # gathered, then dense
        monkeypatch.setattr(S, "COMPACT_BELOW", path_threshold)
        gathered.clear()
        bad, bad_binary, bad_float = labels.clone(), binary.clone(), labels.double()
        at = (labels != 255).nonzero()
        first, second = tuple(at[3]), tuple(at[7])
        bad[second], bad[first] = -3, 9
        bad_binary[second], bad_binary[first] = 2, 5
        bad_float[first] = 1.5
        with pytest.raises(ValueError, match=r"labels must be in \[0, 4\] at every non-ignored pixel; found 9"):
            L.lovasz_softmax(logits, bad, ignore=255, from_logits=True)
        assert (gathered[0] is not None) == (path_threshold > 0)
        with pytest.raises(ValueError, match="whole numbers .*; found 1.5"):
            L.lovasz_softmax(logits, bad_float, ignore=255, from_logits=True)
        with pytest.raises(ValueError, match="labels must be 0 or 1 at every non-ignored pixel; found 5"):
            L.lovasz_hinge(scores, bad_binary, ignore=255)
        targets = torch.where(labels == 255, 255, labels.remainder(2))[:, None].expand(logits.shape).clone()
        targets[(first[0], 2, *first[1:])] = 7
        with pytest.raises(ValueError, match="must be 0 or 1 at every non-ignored pixel; found 7"):
            L.lovasz_multilabel(logits, targets, ignore=255)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("ignore", [None, -1])
def test_points_without_offsets_equal_offsets_of_one_scene(from_logits, ignore):
    """Pointcept's and mmdet3d's call, ``lovasz_softmax(probs [N, C], labels [N])``: one set of N points,
    the same as one scene, ``offsets=[N], per_image=True``, bit for bit (the same kernel, no gather)."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(500, 19, generator=g)
    labels = torch.randint(0, 19, (500,), generator=g)
    labels[::7] = -1
    x = logits if from_logits else logits.softmax(1)
    options = dict(ignore=ignore, from_logits=from_logits) if ignore is not None else dict(from_logits=from_logits)
    if ignore is None:
        labels = labels.clamp_min(0)
    loss, grad = run(L.lovasz_softmax, x, labels, **options)
    expected_loss, expected_grad = run(
        L.lovasz_softmax, x, labels, offsets=torch.tensor([500]), per_image=True, **options
    )
    assert torch.equal(loss, expected_loss) and torch.equal(grad, expected_grad)
    probas = logits.softmax(1) if from_logits else x
    expected = R.lovasz_softmax(probas.double().numpy()[..., None], labels.numpy()[:, None], ignore=ignore)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-5)


def test_sparse_grid_under_compile_forward_mode_and_create_graph():
    """torch.compile takes the dense path (a gather's size depends on the data), with the same values;
    forward-mode AD and second-order autograd go through the gather."""
    logits, labels = grid(3)
    probas = logits.softmax(1)
    loss, grad = run(L.lovasz_softmax, probas, labels, ignore=255)
    compiled = torch.compile(lambda x: L.lovasz_softmax(x, labels, ignore=255), fullgraph=True, backend="aot_eager")
    compiled_loss, compiled_grad = run(compiled, probas)
    torch.testing.assert_close(compiled_loss, loss)
    torch.testing.assert_close(compiled_grad, grad)

    tangent = torch.randn(probas.shape, generator=torch.Generator().manual_seed(4))
    _, jvp = torch.func.jvp(lambda x: L.lovasz_softmax(x, labels, ignore=255), (probas,), (tangent,))
    torch.testing.assert_close(jvp, (grad * tangent).sum())

    x = logits.clone().requires_grad_()
    (first,) = torch.autograd.grad(L.lovasz_softmax(x.softmax(1), labels, ignore=255), x, create_graph=True)
    (second,) = torch.autograd.grad((first * tangent).sum(), x)
    assert torch.isfinite(second).all() and not second.permute(0, 2, 3, 4, 1)[labels == 255].any()


def weak_points(seed, num_points=600, channels=7, labelled=0.1, ignore=-1):
    """Points ``[N, C]`` of a weakly labelled cloud: most points ignored, one scene with none labelled."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_points, channels, generator=g)
    labels = torch.randint(0, channels, (num_points,), generator=g)
    labels[torch.rand(num_points, generator=g) >= labelled] = ignore
    labels[100:200] = ignore  # the second scene of OFFSETS
    return logits, labels


OFFSETS = torch.tensor([100, 200, 450, 600])


def gathered_points(monkeypatch):
    """The sizes of the points that ``_gathered_points`` gathered, call by call."""
    sizes, gather = [], S._gathered_points

    def spy(*args):
        points = gather(*args)
        sizes.append(None if points is None else points.labels.shape[-1])
        return points

    monkeypatch.setattr(S, "_gathered_points", spy)
    return sizes


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("scenes", [None, "offsets", "batch", "batch, one set"])
def test_weakly_labelled_points_are_gathered_and_equal_the_dense_path(monkeypatch, from_logits, scenes):
    """Points of which few are labelled (weak supervision: 0.1-10% of a cloud), one set or per scene: the
    labelled points are gathered, the rest ignored as before. The same loss and gradient as the dense path,
    bit for bit (each point's softmax is its own), exact zeros at the ignored points, the gradient laid out
    as the points."""
    logits, labels = weak_points(0)
    x = logits if from_logits else logits.softmax(1)
    options = dict(ignore=-1, from_logits=from_logits, reduction="none")
    if scenes == "offsets":
        options.update(offsets=OFFSETS, per_image=True)
    elif scenes is not None:
        options.update(batch=torch.arange(4).repeat_interleave(torch.diff(OFFSETS, prepend=torch.tensor([0]))))
        options.update(per_image=scenes == "batch")
    sizes = gathered_points(monkeypatch)
    (dense_loss, dense_grad), (loss, grad) = dense_and_sparse(monkeypatch, L.lovasz_softmax, x, labels, **options)
    assert sizes[0] == (labels != -1).sum()
    assert torch.equal(loss, dense_loss) and torch.equal(grad, dense_grad)
    assert grad.is_contiguous() and not grad[labels == -1].any()
    probas = (logits.softmax(1) if from_logits else x).double().numpy()
    sets = (
        [(0, 600)] if scenes in (None, "batch, one set") else list(zip([0, *OFFSETS[:-1].tolist()], OFFSETS.tolist()))
    )
    expected = [R.lovasz_softmax(probas[a:b, :, None], labels[a:b, None].numpy(), ignore=-1) for a, b in sets]
    np.testing.assert_allclose(loss.double().numpy(), expected[0] if len(sets) == 1 else expected, rtol=1e-5)


@pytest.mark.parametrize("scenes", [None, "offsets"])
def test_weakly_labelled_points_of_the_hinge_and_multilabel_are_gathered(monkeypatch, scenes):
    """The hinge's scores ``[N]`` and multi-label logits ``[N, C]`` (a point may be ignored in some channels
    only, and counts in the others): gathered, bit for bit the dense path."""
    logits, labels = weak_points(1)
    options = dict(ignore=-1, reduction="none", per_image=scenes is not None)
    options |= {} if scenes is None else dict(offsets=OFFSETS)
    binary = torch.where(labels == -1, -1, labels.remainder(2))
    sizes = gathered_points(monkeypatch)
    (dense_loss, dense_grad), (loss, grad) = dense_and_sparse(
        monkeypatch, L.lovasz_hinge, logits[:, 0], binary, **options
    )
    assert sizes[0] == (labels != -1).sum()
    assert torch.equal(loss, dense_loss) and torch.equal(grad, dense_grad) and not grad[labels == -1].any()

    targets = torch.randint(0, 2, logits.shape, generator=torch.Generator().manual_seed(2))
    targets[labels == -1] = -1
    targets[labels != -1, 3] = -1  # ignored in one channel only: still gathered
    for from_logits in (True, False):
        x = logits if from_logits else logits.sigmoid()
        sizes.clear()
        (dense_loss, dense_grad), (loss, grad) = dense_and_sparse(
            monkeypatch, L.lovasz_multilabel, x, targets, from_logits=from_logits, **options
        )
        assert sizes[0] == (labels != -1).sum()
        assert torch.equal(loss, dense_loss) and torch.equal(grad, dense_grad) and not grad[labels == -1].any()


def test_mostly_labelled_points_are_not_gathered(monkeypatch):
    """Where more than ``COMPACT_BELOW`` of the points count, or under torch.compile, nothing is gathered."""
    logits, labels = weak_points(4, labelled=0.9)
    labels[100:200] = 0
    sizes = gathered_points(monkeypatch)
    run(L.lovasz_softmax, logits, labels, ignore=-1, from_logits=True)
    assert sizes == [None]
    weak, weak_labels = weak_points(4)
    compiled = torch.compile(lambda x: L.lovasz_softmax(x, weak_labels, ignore=-1), fullgraph=True, backend="aot_eager")
    loss, grad = run(compiled, weak.softmax(1))
    expected_loss, expected_grad = run(L.lovasz_softmax, weak.softmax(1), weak_labels, ignore=-1)
    assert sizes == [None, None, (weak_labels != -1).sum()]  # compiled: not gathered; eager: gathered
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


def test_gathered_points_at_second_order_and_in_forward_mode(monkeypatch):
    """Through the gathered points (``index_select``): a second derivative (``create_graph``) and forward-mode
    AD (``torch.autograd.forward_ad``) give the dense path's values."""
    logits, labels = weak_points(5)
    tangent = torch.randn(logits.shape, generator=torch.Generator().manual_seed(6))
    sizes = gathered_points(monkeypatch)

    def derivatives():
        x = logits.clone().requires_grad_()
        (first,) = torch.autograd.grad(L.lovasz_softmax(x.softmax(1), labels, ignore=-1), x, create_graph=True)
        (second,) = torch.autograd.grad((first * tangent).sum(), x)
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(logits.softmax(1), tangent)
            jvp = torch.autograd.forward_ad.unpack_dual(L.lovasz_softmax(dual, labels, ignore=-1)).tangent
        return first.detach(), second, jvp

    gathered = derivatives()
    assert sizes and all(size == (labels != -1).sum() for size in sizes)
    monkeypatch.setattr(S, "COMPACT_BELOW", -1.0)
    for got, expected in zip(gathered, derivatives()):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    assert not gathered[1][labels == -1].any()
