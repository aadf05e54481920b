"""lovasz.metrics against hand counts and an independent confusion-matrix computation."""

import numpy as np
import pytest

from conftest import dev, require, torch_device
from lovasz import metrics as M

torch = require("torch")


def confusion_matrix(pred, target, num_classes, ignore=None):
    """Independent: a bincount confusion matrix, rows = target, columns = prediction."""
    keep = np.ones(target.shape, bool) if ignore is None else target != ignore
    index = target[keep] * num_classes + pred[keep]
    return np.bincount(index.ravel(), minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_matrix(cm):
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def test_hand_counts():
    pred = np.array([[0, 1, 1, 2]])
    target = np.array([[0, 1, 0, 255]])
    inter, union = M.confusion_counts(pred, target, 3, ignore_index=255)
    assert inter.tolist() == [[1, 1, 0]] and union.tolist() == [[2, 2, 0]]
    assert M.dataset_miou(pred, target, 3, 255) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_against_confusion_matrix_numpy_and_torch(seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 4, (3, 6, 7))
    target = rng.integers(0, 4, (3, 6, 7))
    target[rng.random(target.shape) < 0.2] = 255
    expected = iou_from_matrix(confusion_matrix(pred, target, 4, 255))
    np.testing.assert_allclose(M.iou_per_class(pred, target, 4, 255), expected)
    assert M.dataset_miou(pred, target, 4, 255) == pytest.approx(np.nanmean(expected))
    per_image = np.mean([np.nanmean(iou_from_matrix(confusion_matrix(p, t, 4, 255))) for p, t in zip(pred, target)])
    assert M.per_image_miou(pred, target, 4, 255) == pytest.approx(per_image)
    tp, tt = dev(pred), dev(target)
    assert M.dataset_miou(tp, tt, 4, 255).item() == pytest.approx(np.nanmean(expected))
    assert M.per_image_miou(tp, tt, 4, 255).item() == pytest.approx(per_image)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_streaming_equals_one_shot(kind):
    rng = np.random.default_rng(9)
    pred, target = rng.integers(0, 3, (6, 5, 5)), rng.integers(0, 3, (6, 5, 5))
    given = dev if kind == "torch" else np.asarray  # torch: the counts stay on the test device
    meter = M.IoUMeter(3)
    for i in range(0, 6, 2):
        meter.update(given(pred[i : i + 2]), given(target[i : i + 2]))
    assert kind == "numpy" or meter.state.device == torch_device()
    out = meter.compute()
    assert out["dataset_miou"] == pytest.approx(M.dataset_miou(pred, target, 3))
    assert out["per_image_miou"] == pytest.approx(M.per_image_miou(pred, target, 3))
    assert out["pixel_accuracy"] == pytest.approx(np.mean(pred == target))
    meter.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        meter.compute()


def test_original_helpers():
    preds = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    labels = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    # image 0: foreground IoU 1/2; image 1: empty union -> EMPTY = 1
    assert M.iou_binary(preds, labels) == pytest.approx(75.0)
    assert M.iou_binary(preds, labels, per_image=False) == pytest.approx(50.0)
    np.testing.assert_allclose(M.iou(preds, labels, 2), [100 * 6 / 7, 50.0])


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"pred and target .* \[2, 3\] and \[2, 4\]"):
        M.confusion_counts(np.zeros((2, 3)), np.zeros((2, 4)), 2)


def test_per_class_image_miou_by_hand():
    # image 0: class 0 IoU 1/2, class 1 IoU 1/2; image 1: class 0 IoU 1, class 1 absent
    pred = np.array([[0, 1, 1], [0, 0, 0]])
    target = np.array([[0, 0, 1], [0, 0, 0]])
    # class 0: mean(1/2, 1) = 3/4; class 1: 1/2 (only image 0) -> 5/8
    assert M.per_class_image_miou(pred, target, 2) == pytest.approx(5 / 8)
    meter = M.IoUMeter(2)
    meter.update(pred[:1], target[:1])
    meter.update(pred[1:], target[1:])
    assert meter.compute()["per_class_image_miou"] == pytest.approx(5 / 8)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_an_image_or_class_without_iou_is_left_out_of_the_means(kind):
    """An all-ignored image has no IoU (no class occurs): it is not a 0 in the mean over images;
    a class that occurs in no image is not a 0 in the mean over classes."""
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    target = np.array([[0, 1, 1, 0], [255, 255, 255, 255]])
    as_kind = (lambda x: dev(torch.as_tensor(x))) if kind == "torch" else (lambda x: x)
    image_0 = (1 / 2 + 2 / 3) / 2  # class 0: 1/2, class 1: 2/3; classes 2 and 3 occur nowhere
    assert float(M.per_image_miou(as_kind(pred), as_kind(target), 4, ignore_index=255)) == pytest.approx(image_0)
    assert float(M.per_class_image_miou(as_kind(pred), as_kind(target), 4, 255)) == pytest.approx(image_0)
    meter = M.IoUMeter(4, ignore_index=255)
    meter.update(as_kind(pred), as_kind(target))
    result = meter.compute()
    assert result["per_image_miou"] == pytest.approx(image_0)
    assert result["per_class_image_miou"] == pytest.approx(image_0)
    only_ignored = as_kind(target[1:])
    assert float(M.per_image_miou(as_kind(pred[1:]), only_ignored, 4, ignore_index=255)) == 0.0
