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


@st.composite
def point_clouds(draw):
    """Points of a few scenes (some empty), their layout drawn (``[N, C]`` probabilities or logits, sigmoid
    probabilities ``[N]``, the hinge's ``[N]``, multi-label ``[N, C]``), scores on a grid of halves (ties),
    labels partly ignored (255), and the scenes as offsets or as a batch vector in scene order or shuffled."""
    sizes = draw(st.lists(st.integers(0, 30), min_size=1, max_size=4))
    num_points, num_scenes = sum(sizes), len(sizes)
    kind = draw(st.sampled_from(["probabilities", "logits", "sigmoid", "hinge", "multilabel"]))
    channels = 1 if kind in ("sigmoid", "hinge") else draw(st.integers(2, 4))
    shape = (num_points,) if channels == 1 else (num_points, channels)
    x = torch.tensor(draw(arrays(np.int64, shape, elements=st.integers(-4, 4))) / 2.0, dtype=torch.float64)
    x = x.sigmoid() if kind == "sigmoid" else x
    labels = draw(arrays(np.int64, shape if kind == "multilabel" else (num_points,), elements=st.integers(0, 3)))
    labels = labels % (channels if kind in ("probabilities", "logits") else 2)
    ignored = draw(arrays(np.bool_, labels.shape, elements=st.booleans()))
    labels = torch.tensor(np.where(ignored, 255, labels))
    scene = torch.repeat_interleave(torch.arange(num_scenes), torch.tensor(sizes))
    if draw(st.sampled_from(["offsets", "batch"])) == "offsets":
        scenes = dict(offsets=torch.tensor(np.cumsum(sizes)))
    else:
        order = (
            torch.tensor(draw(st.permutations(range(num_points))), dtype=torch.int64)
            if draw(st.booleans())
            else slice(None)
        )
        x, labels, scene = x[order], labels[order], scene[order]
        scenes = dict(batch=scene, num_scenes=num_scenes)
    return kind, x, labels, scene, scenes


@settings(max_examples=200, deadline=None)
@given(point_clouds(), st.booleans(), st.sampled_from(["present", "all"]))
def test_points_of_scenes_equal_the_calls_of_each_scene(cloud, per_image, classes):
    """Values and gradients, ties included: per scene, each scene's points alone in their own order (the
    dense layout ``[1, C, n]``); without ``per_image``, all the points as one set in the order given."""
    kind, x, labels, scene, scenes = cloud
    leaf = dev(x).requires_grad_()

    def loss(points, point_labels, **kwargs):
        options = dict(per_image=per_image, ignore=255, reduction="none", **kwargs)
        if kind == "hinge":
            return L.lovasz_hinge(points, point_labels, **options)
        if kind == "sigmoid":
            return L.lovasz_softmax(points, point_labels, **options)
        if kind == "multilabel":
            return L.lovasz_multilabel(points, point_labels, classes, **options)
        return L.lovasz_softmax(points, point_labels, classes, from_logits=kind == "logits", **options)

    def dense(points, point_labels):  # [1, C, n] (the hinge's [1, n]) and its labels
        points = points[None] if points.ndim == 1 else points.T[None]
        return loss(points, (point_labels.T if kind == "multilabel" else point_labels)[None]).reshape(-1)

    def grad_of(value):  # zeros where no point takes part
        grad = torch.autograd.grad(value.sum(), leaf, allow_unused=True)[0] if value.requires_grad else None
        return torch.zeros_like(leaf) if grad is None else grad

    got = loss(leaf, dev(labels), **{k: dev(v) if torch.is_tensor(v) else v for k, v in scenes.items()})
    got_grad = grad_of(got)
    if per_image:
        runs = [dev((scene == s).nonzero().squeeze(1)) for s in range(len(got))]
        expected = torch.cat([dense(leaf[run], dev(labels)[run]) if len(run) else leaf.new_zeros(1) for run in runs])
    else:
        expected = dense(leaf, dev(labels)).reshape(())
    expected_grad = grad_of(expected)
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-12, atol=1e-12)
