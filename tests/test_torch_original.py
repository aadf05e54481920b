"""lovasz.torch against the original implementation (the copy in segmentation-models-pytorch 0.6.0).

Inputs are drawn on the CPU and moved to the test device; both implementations run there.
"""

import itertools

import pytest

from conftest import dev, require
from lovasz.peers import load_original

torch = require("torch")
L = require("lovasz.torch")
ORIGINAL = load_original()
if ORIGINAL is None:
    if "torch" in __import__("conftest").REQUIRED:
        raise ImportError("segmentation-models-pytorch==0.6.0 is needed to compare with the original")
    pytest.skip("segmentation-models-pytorch is not installed", allow_module_level=True)

SHAPES = [(6, 7), (3, 4, 5), (16, 16)]


def both(fn_ours, fn_orig, x, *args, **kwargs):
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = fn_ours(a, *args, **kwargs), fn_orig(b, *args, **kwargs)
    la.backward()
    lb.backward()
    return la, lb, a.grad, b.grad


@pytest.mark.parametrize(
    "batch,num_classes,spatial,per_image,classes,ignore",
    [
        case
        for case in itertools.product(
            [1, 3], [2, 3, 7, 21], SHAPES, [False, True], ["present", "all", [1, 0], [2]], [None, 255]
        )
        if case[4] != [2] or case[1] > 2  # class 2 needs three classes
    ],
)
def test_softmax_equals_original(batch, num_classes, spatial, per_image, classes, ignore):
    g = torch.Generator().manual_seed(batch * 1000 + num_classes)
    probas = torch.randn(batch, num_classes, *spatial, generator=g).softmax(1)
    labels = torch.randint(0, num_classes, (batch, *spatial), generator=g)
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) < 0.3] = ignore
    probas, labels = dev(probas), dev(labels)
    la, lb, ga, gb = both(
        L.lovasz_softmax, ORIGINAL._lovasz_softmax, probas, labels, classes=classes, per_image=per_image, ignore=ignore
    )
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)


def test_sigmoid_with_listed_foreground_equals_original():
    g = torch.Generator().manual_seed(1)
    probas = dev(torch.rand(4, 8, 8, generator=g))
    labels = dev(torch.randint(0, 2, (4, 8, 8), generator=g))
    for per_image in (False, True):
        la, lb, ga, gb = both(
            L.lovasz_softmax, ORIGINAL._lovasz_softmax, probas, labels, classes=[1], per_image=per_image
        )
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "batch,spatial,per_image,ignore", list(itertools.product([1, 4], SHAPES + [(1000,)], [False, True], [None, 255]))
)
def test_hinge_equals_original(batch, spatial, per_image, ignore):
    g = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, *spatial, generator=g) * 3
    labels = torch.randint(0, 2, (batch, *spatial), generator=g)
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) < 0.3] = ignore
    logits, labels = dev(logits), dev(labels)
    la, lb, ga, gb = both(L.lovasz_hinge, ORIGINAL._lovasz_hinge, logits, labels, per_image=per_image, ignore=ignore)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)


def test_flat_functions_equal_original():
    g = torch.Generator().manual_seed(2)
    probas = dev(torch.randn(50, 4, generator=g).softmax(1))
    labels = dev(torch.randint(0, 4, (50,), generator=g))
    for classes in ("present", "all", [3, 1]):
        la, lb, ga, gb = both(L.lovasz_softmax_flat, ORIGINAL._lovasz_softmax_flat, probas, labels, classes=classes)
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)
    logits = dev(torch.randn(50, generator=g))
    bits = dev(torch.randint(0, 2, (50,), generator=g))
    la, lb, ga, gb = both(L.lovasz_hinge_flat, ORIGINAL._lovasz_hinge_flat, logits, bits)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)
    gt = dev(torch.randint(0, 2, (200,), generator=g))
    torch.testing.assert_close(L.lovasz_grad(gt), ORIGINAL._lovasz_grad(gt.float()), rtol=0, atol=1e-6)
    # a bool mask too (the original fails on one, at 1 - gt_sorted; round() has no bool kernel either)
    torch.testing.assert_close(L.lovasz_grad(gt == 1), ORIGINAL._lovasz_grad(gt.float()), rtol=0, atol=1e-6)
    scores, labels255 = torch.randn(2, 5, 5, generator=g), torch.randint(0, 2, (2, 5, 5), generator=g)
    labels255[0, 0] = 255
    scores, labels255 = dev(scores), dev(labels255)
    for ours, theirs in zip(
        L.flatten_binary_scores(scores, labels255, 255), ORIGINAL._flatten_binary_scores(scores, labels255, 255)
    ):
        assert torch.equal(ours, theirs)
    probas4 = dev(torch.rand(2, 3, 5, 5, generator=g))
    for ours, theirs in zip(
        L.flatten_probas(probas4, labels255, 255), ORIGINAL._flatten_probas(probas4, labels255, 255)
    ):
        assert torch.equal(ours, theirs)


def test_flatten_reads_ignore_as_the_losses_do():
    """``ignore`` is checked, and one the labels' dtype cannot hold leaves out no pixel: compared as it is,
    -1 wrapped to 255 in uint8 labels (255 to -1 in int8) and dropped those pixels without a word."""
    probas = dev(torch.rand(1, 3, 1, 4))
    for labels, ignore in [
        (torch.tensor([[[0, 1, 255, 2]]], dtype=torch.uint8), -1),
        (torch.tensor([[[0, -1, 2, 1]]], dtype=torch.int8), 255),
    ]:
        labels = dev(labels)
        flat_probas, flat_labels = L.flatten_probas(probas, labels, ignore)
        assert flat_probas.shape == (4, 3) and torch.equal(flat_labels, labels.reshape(-1))
        scores, flat_labels = L.flatten_binary_scores(probas[:, 0], labels, ignore)
        assert scores.shape == (4,) and torch.equal(flat_labels, labels.reshape(-1))
    labels = dev(torch.tensor([[[0, 1, 255, 2]]]))
    assert L.flatten_probas(probas, labels, 255)[1].tolist() == [0, 1, 2]
    for bad in (True, "255", 255.5):
        for flatten, prediction in ((L.flatten_probas, probas), (L.flatten_binary_scores, probas[:, 0])):
            with pytest.raises(TypeError, match=r"ignore must be an int or None"):
                flatten(prediction, labels, bad)


@pytest.mark.parametrize("per_image", [False, True])
def test_ties_give_equal_loss_and_a_subgradient(per_image):
    """With tied errors the order is arbitrary: the loss is still equal, the gradient a subgradient.

    The per-class loss is convex in the probabilities (a convex, non-decreasing
    extension of convex errors), so a subgradient g at p satisfies
    f(q) >= f(p) + <g, q - p> for every q.
    """
    g = torch.Generator().manual_seed(3)
    probas = (torch.rand(2, 3, 6, 6, generator=g) * 4).round() / 4  # many exact ties
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    probas, labels = dev(probas), dev(labels)
    for classes in ("all", [0], [2, 1]):
        p = probas.clone().requires_grad_()
        loss = L.lovasz_softmax(p, labels, classes=classes, per_image=per_image)
        loss.backward()
        original = ORIGINAL._lovasz_softmax(probas, labels, classes=classes, per_image=per_image)
        torch.testing.assert_close(loss.detach(), original, rtol=0, atol=1e-6)
        for _ in range(200):
            q = (probas + 0.3 * dev(torch.randn(probas.shape, generator=g))).clamp(0, 1)
            fq = L.lovasz_softmax(q, labels, classes=classes, per_image=per_image)
            assert fq >= loss.detach() + (p.grad * (q - probas)).sum() - 1e-5


@pytest.mark.parametrize(
    "mode,per_image,ignore_index",
    [("binary", False, None), ("binary", True, 255), ("multiclass", False, 255), ("multiclass", True, None)],
)
def test_module_takes_smp_positional_arguments_and_defaults(mode, per_image, ignore_index):
    """smp's LovaszLoss(mode, per_image, ignore_index, from_logits): same order, defaults and values."""
    g = torch.Generator().manual_seed(5)
    channels = 1 if mode == "binary" else 4
    logits = torch.randn(3, channels, 6, 7, generator=g)
    target = torch.randint(0, max(channels, 2), (3, 6, 7), generator=g)
    if ignore_index is not None:
        target[:, 0] = ignore_index
    if mode == "binary":
        target = target[:, None]
    defaults = [(L.LovaszLoss(mode), ORIGINAL.LovaszLoss(mode))] if ignore_index is None else []
    for ours, theirs in defaults + [
        (L.LovaszLoss(mode, per_image, ignore_index, True), ORIGINAL.LovaszLoss(mode, per_image, ignore_index, True))
    ]:
        a, b = dev(logits).requires_grad_(), dev(logits).requires_grad_()
        la, lb = ours(a, dev(target)), theirs(b, dev(target))
        la.backward()
        lb.backward()
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)
