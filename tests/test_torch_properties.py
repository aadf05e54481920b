"""Hypothesis properties of lovasz.torch, on the test device (examples drawn on the host)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import dev, require

torch = require("torch")
L = require("lovasz.torch")

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def segmentations(draw, max_classes=5):
    batch = draw(st.integers(1, 3))
    num_classes = draw(st.integers(2, max_classes))
    pixels = draw(st.integers(1, 20))
    logits = draw(
        arrays(np.float64, (batch, num_classes, pixels), elements=st.floats(-4, 4, allow_nan=False, width=32))
    )
    labels = draw(arrays(np.int64, (batch, pixels), elements=st.integers(0, num_classes - 1)))
    return dev(logits).softmax(1), dev(labels)


@SETTINGS
@given(segmentations(), st.randoms(use_true_random=False), st.booleans(), st.sampled_from(["present", "all"]))
def test_permuting_pixels_changes_nothing(case, rnd, per_image, classes):
    probas, labels = case
    order = list(range(labels.shape[1]))
    rnd.shuffle(order)
    order = dev(order)
    a = L.lovasz_softmax(probas, labels, classes, per_image)
    b = L.lovasz_softmax(probas[..., order], labels[:, order], classes, per_image)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


@SETTINGS
@given(segmentations(), st.data(), st.booleans())
def test_ignored_pixels_equal_removed_pixels(case, data, per_image):
    probas, labels = case
    keep = dev(data.draw(st.lists(st.booleans(), min_size=labels.shape[1], max_size=labels.shape[1])))
    masked = torch.where(keep, labels, 255)
    a = L.lovasz_softmax(probas, masked, per_image=per_image, ignore=255)
    b = L.lovasz_softmax(probas[..., keep], labels[:, keep], per_image=per_image)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    scores = probas[:, 0] * 4 - 2
    binary = (labels == 0).long()
    h1 = L.lovasz_hinge(scores, torch.where(keep, binary, 255), per_image=per_image, ignore=255)
    h2 = L.lovasz_hinge(scores[:, keep], binary[:, keep], per_image=per_image)
    assert h1.item() == pytest.approx(h2.item(), abs=1e-12)


@SETTINGS
@given(segmentations(), st.sampled_from(["present", "all", [0, 1]]))
def test_per_image_is_mean_of_single_image_calls(case, classes):
    probas, labels = case
    whole = L.lovasz_softmax(probas, labels, classes, per_image=True)
    singles = [L.lovasz_softmax(probas[i : i + 1], labels[i : i + 1], classes) for i in range(len(labels))]
    assert whole.item() == pytest.approx(torch.stack(singles).mean().item(), abs=1e-12)


@SETTINGS
@given(segmentations(), st.booleans())
def test_perfect_predictions_give_zero(case, per_image):
    _, labels = case
    one_hot = torch.nn.functional.one_hot(labels, 5).movedim(-1, 1).double()
    assert L.lovasz_softmax(one_hot, labels, "all", per_image).item() == 0
    binary = (labels == 0).long()
    assert L.lovasz_hinge(binary * 2.0 - 1.0, binary, per_image).item() == 0


@SETTINGS
@given(segmentations(), st.data())
def test_one_hot_prediction_gives_one_minus_iou(case, data):
    probas, labels = case
    num_classes = probas.shape[1]
    pred = dev(data.draw(arrays(np.int64, labels.shape, elements=st.integers(0, num_classes - 1))))
    one_hot = torch.nn.functional.one_hot(pred, num_classes).movedim(-1, 1).double()
    ious = [
        ((labels == c) & (pred == c)).sum().double() / ((labels == c) | (pred == c)).sum()
        for c in range(num_classes)
        if (labels == c).any()
    ]
    expected = 1 - torch.stack(ious).double().mean()
    assert L.lovasz_softmax(one_hot, labels).item() == pytest.approx(expected.item(), abs=1e-12)
