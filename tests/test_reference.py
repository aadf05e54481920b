"""The oracle checked by brute force on tiny inputs, and by hand."""

import itertools

import numpy as np
import pytest

from lovasz import reference as R


def all_gt(max_pixels=7):
    for p in range(1, max_pixels + 1):
        for bits in itertools.product([0, 1], repeat=p):
            yield np.array(bits)


def test_extension_equals_jaccard_at_binary_errors():
    """At 0/1 error vectors, the Lovász extension is the Jaccard loss of the mistaken set."""
    rng = np.random.default_rng(0)
    checked = 0
    for gt in all_gt(7):
        p = len(gt)
        # every mistake set for small p, a sample of them for p = 6, 7
        masks = itertools.product([0, 1], repeat=p) if p <= 5 else (rng.integers(0, 2, p) for _ in range(20))
        for mistakes in masks:
            mistakes = np.asarray(mistakes)
            assert R.lovasz_extension(mistakes, gt) == pytest.approx(R.jaccard_loss(mistakes, gt), abs=1e-12)
            checked += 1
    assert checked > 5000


def greedy_sum(errors, gt, order):
    """sum_k m_(k) (J(k) - J(k-1)) along an arbitrary order of the pixels."""
    total, previous, chosen = 0.0, 0.0, np.zeros(len(gt), bool)
    for i in order:
        chosen[i] = True
        current = R.jaccard_loss(chosen, gt)
        total += errors[i] * (current - previous)
        previous = current
    return total


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 6])
def test_extension_is_max_over_orderings(p):
    """The Jaccard loss is submodular, so the sorted (greedy) order maximises the sum."""
    rng = np.random.default_rng(p)
    for _ in range(10):
        errors = rng.random(p)
        gt = rng.integers(0, 2, p)
        best = max(greedy_sum(errors, gt, order) for order in itertools.permutations(range(p)))
        assert R.lovasz_extension(errors, gt) == pytest.approx(best, abs=1e-12)


def test_lovasz_grad_by_hand():
    # gt = [1, 0, 1], G = 2: J(1) = 1 - 1/2, J(2) = 1 - 1/3, J(3) = 1 - 0/3.
    np.testing.assert_allclose(R.lovasz_grad([1, 0, 1]), [1 / 2, 1 / 6, 1 / 3])
    # no foreground: the first mistake already makes the Jaccard loss 1
    np.testing.assert_allclose(R.lovasz_grad([0, 0, 0]), [1, 0, 0])
    # all foreground: each mistake costs 1/P
    np.testing.assert_allclose(R.lovasz_grad([1, 1, 1, 1]), [0.25] * 4)


def test_softmax_by_hand():
    probas = np.array([[[0.9, 0.4], [0.1, 0.6]]])  # B=1, C=2, N=2
    labels = np.array([[0, 1]])
    # class 0: errors [0.1, 0.4], gt [1, 0]; sorted 0.4 (bg), 0.1 (fg): J = 1/2, 1 -> 0.4/2 + 0.1/2 = 0.25
    # class 1: errors [0.1, 0.4], gt [0, 1]; sorted 0.4 (fg), 0.1 (bg): J = 1, 1   -> 0.4
    assert R.lovasz_softmax(probas, labels) == pytest.approx((0.25 + 0.4) / 2)
    assert R.lovasz_softmax(probas, labels, classes=[1]) == pytest.approx(0.4)
    # with pixel 1 ignored only class 0 is present: error 0.1 on its one pixel -> 0.1
    assert R.lovasz_softmax(probas, np.array([[0, 255]]), ignore=255) == pytest.approx(0.1)


def test_hinge_by_hand():
    # errors 1 - s x: [1 - 2, 1 - 1, 1 - 0.5] -> relu [0, 0, 0.5]; sorted: 0.5 (fg), then the two zeros.
    # gt sorted [1, ...], G = 2: J(1) = 1 - 1/2 = 0.5 -> loss 0.5 * 0.5 = 0.25
    assert R.lovasz_hinge(np.array([[2.0, -1.0, 0.5]]), np.array([[1, 0, 1]])) == pytest.approx(0.25)


@pytest.mark.parametrize("ignore", [0, 1])
def test_symmetric_hinge_with_ignore_0_or_1_by_hand(ignore):
    """The flipped term re-applied ``ignore`` to the flipped labels: with ``ignore=0`` every valid 1 became 0 and
    left the flipped term (0.2083 for 0.5833)."""
    x, y = np.array([[2.0, -1.0, 0.5, 0.25]]), np.array([[1, 0, 1, 1]])
    keep = y != ignore
    by_hand = (R.lovasz_hinge(x[keep][None], y[keep][None]) + R.lovasz_hinge(-x[keep][None], 1 - y[keep][None])) / 2
    assert R.lovasz_hinge(x, y, ignore=ignore, symmetric=True) == pytest.approx(by_hand)
    one_channel = R.lovasz_multilabel(x[:, None], y[:, None], classes="all", ignore=ignore, symmetric=True)
    assert one_channel == pytest.approx(by_hand)


def test_one_hot_prediction_is_one_minus_iou():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (1, 4, 5))
    pred = rng.integers(0, 3, (1, 4, 5))
    probas = np.moveaxis(np.eye(3)[pred], -1, 1)
    ious = [
        np.sum((labels == c) & (pred == c)) / np.sum((labels == c) | (pred == c))
        for c in range(3)
        if np.any(labels == c)
    ]
    assert R.lovasz_softmax(probas, labels) == pytest.approx(1 - np.mean(ious))


def test_sigmoid_input_is_two_classes():
    rng = np.random.default_rng(4)
    p = rng.random((2, 3, 4))
    labels = rng.integers(0, 2, (2, 3, 4))
    two = np.stack([1 - p, p], axis=1)
    for classes in ["present", "all", [1]]:
        assert R.lovasz_softmax(p, labels, classes) == pytest.approx(R.lovasz_softmax(two, labels, classes))
        # [B, 1, *spatial]: the same foreground probability with its channel, as the backends read it (the
        # oracle read one class there, and refused the label 1)
        assert R.lovasz_softmax(p[:, None], labels, classes) == pytest.approx(R.lovasz_softmax(two, labels, classes))


def test_the_oracle_checks_its_arguments_as_the_backends_do():
    """An oracle that computed a wrong loss from a bad argument would pass a backend as wrong as itself: a typo
    in ``margin`` gave the elu loss, ``symmetric='no'`` the symmetric one, negative weights or a void 255
    without ``ignore`` a value; an empty batch per image gave NaN (the backends: 0)."""
    rng = np.random.default_rng(3)
    probas, labels = rng.dirichlet(np.ones(3), size=(2, 4)).transpose(0, 2, 1), rng.integers(0, 3, (2, 4))
    scores, masks = rng.normal(size=(2, 4)), rng.integers(0, 2, (2, 4))
    with pytest.raises(ValueError, match="margin must be one of"):
        R.lovasz_hinge(scores, masks, margin="reluu")
    for flag in ("symmetric", "per_image"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False; got 'no'"):
            R.lovasz_hinge(scores, masks, **{flag: "no"})
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        R.lovasz_softmax(probas, labels, from_logits="no")
    for weights, match in (([1, -1, 1], "finite numbers >= 0"), ([1, np.nan, 1], "finite"), ([1, 1], r"shape \[3\]")):
        with pytest.raises(ValueError, match=match):
            R.lovasz_softmax(probas, labels, weights=weights)
        with pytest.raises(ValueError, match=match):
            R.lovasz_multilabel(probas, (probas > 0.3).astype(int), weights=weights)
    void = labels.copy()
    void[0, 0] = 255
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] at every non-ignored pixel; found 255"):
        R.lovasz_softmax(probas, void)
    assert R.lovasz_softmax(probas, void, ignore=255) > 0
    with pytest.raises(ValueError, match="labels must be 0 or 1 at every non-ignored pixel; found 255"):
        R.lovasz_hinge(scores, np.where(void == 255, 255, masks))
    assert R.lovasz_hinge(np.zeros((0, 4)), np.zeros((0, 4), int)) == 0.0
    assert R.lovasz_softmax(np.zeros((0, 3, 4)), np.zeros((0, 4), int), per_image=True) == 0.0
