"""lovasz.metrics against hand counts, an independent confusion-matrix computation and the former mask definition."""

import functools
import tracemalloc

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


# ----------------------------------------------------------------------------- the mask-based definition
# The metrics count (target, prediction) pairs with one bincount per block of pixels; the oracle below is the
# former implementation, one [B, C, N] mask per class, whose results the counts must reproduce exactly.


def mask_metrics(pred, target, num_classes, ignore=None):
    classes = np.arange(num_classes).reshape(1, -1, 1)
    p, t = pred.reshape(len(pred), 1, -1), target.reshape(len(target), 1, -1)
    valid = np.ones(t.shape, bool) if ignore is None else t != ignore
    pc, tc = (p == classes) & valid, (t == classes) & valid
    inter, union = (pc & tc).sum(-1), (pc | tc).sum(-1)

    def ratio(i, u):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(u > 0, i / np.maximum(u, 1), np.nan)

    def nanmean(x, axis=None, empty=0.0):
        count = np.sum(~np.isnan(x), axis=axis)
        return np.where(count > 0, np.nansum(x, axis=axis) / np.maximum(count, 1), empty)

    image_class, per_class = ratio(inter, union), ratio(inter.sum(0), union.sum(0))
    counted = target != ignore if ignore is not None else target == target
    return {
        "inter": inter,
        "union": union,
        "per_class": per_class,
        "dataset_miou": float(nanmean(per_class)),
        "per_image_miou": float(nanmean(nanmean(image_class, axis=1, empty=np.nan))),
        "per_class_image_miou": float(nanmean(nanmean(image_class, axis=0, empty=np.nan))),
        "pixel_accuracy": ((pred == target) & counted).sum() / max(counted.sum(), 1),
    }


def mask_iou(preds, labels, C, EMPTY=1.0, ignore=None, per_image=False):
    if not per_image:
        preds, labels = (preds,), (labels,)
    ious = []
    for pred, label in zip(preds, labels):
        image = []
        for i in range(C):
            if i != ignore:
                intersection = np.sum((label == i) & (pred == i))
                union = np.sum((label == i) | ((pred == i) & (label != ignore)))
                image.append(EMPTY if not union else float(intersection) / float(union))
        ious.append(image)
    return 100 * np.array([np.mean(per_class) for per_class in zip(*ious)])


def mask_iou_binary(preds, labels, EMPTY=1.0, ignore=None, per_image=True):
    if not per_image:
        preds, labels = (preds,), (labels,)
    ious = []
    for pred, label in zip(preds, labels):
        intersection = np.sum((label == 1) & (pred == 1))
        union = np.sum((label == 1) | ((pred == 1) & (label != ignore)))
        ious.append(EMPTY if not union else float(intersection) / float(union))
    return 100 * float(np.mean(ious))


def random_maps(rng, shape, dtype, ignore):
    """Class maps with values outside the classes on both sides, equal pairs of them, and ignored targets."""
    num_classes = 2 if dtype == "bool" else 4
    low = 0 if dtype in ("uint8", "bool") else -1
    high = 2 if dtype == "bool" else num_classes + 2
    target, pred = rng.integers(low, high, shape), rng.integers(low, high, shape)
    same = rng.random(shape) < 0.3
    pred[same] = target[same]  # hits, and a value outside the classes predicted as it is labelled
    if ignore is not None:
        target[rng.random(shape) < 0.2] = ignore
    if dtype == "float64":
        target, pred = target.astype(float), pred.astype(float)
        target[rng.random(shape) < 0.1] = 2.5  # not a whole number: in no class
        pred[rng.random(shape) < 0.1] = np.nan
    elif dtype == "uint8":
        target = target.astype(np.uint8)
    elif dtype == "bool":
        target, pred = target.astype(bool), pred.astype(bool)
    return pred, target, num_classes


SHAPES = [(3, 6, 7), (2, 50), (2, 3, 4, 5), (5,), (1, 16, 16)]
CASES = [  # (dtype, ignore_index): uint8 targets beside int64 predictions; an ignored value inside the classes
    ("int64", 255),
    ("int64", None),
    ("int64", 0),
    ("int64", -1),
    ("uint8", 255),
    ("uint8", 0),
    ("float64", 255),
    ("bool", None),
    ("bool", 0),
]


@pytest.mark.parametrize("block", [None, 7, 100], ids=["default-block", "block-7", "block-100"])
@pytest.mark.parametrize(("dtype", "ignore"), CASES)
def test_counts_equal_the_mask_definition(dtype, ignore, block, monkeypatch):
    """Every metric and the meter, on NumPy and torch, blocks splitting images (7) and grouping them (100)."""
    if block is not None:
        monkeypatch.setattr(M, "_HOST_BLOCK", block)
        monkeypatch.setattr(M, "_DEVICE_BLOCK", block)
    rng = np.random.default_rng([CASES.index((dtype, ignore)), block or 0])
    for shape in SHAPES:
        pred, target, c = random_maps(rng, shape, dtype, ignore)
        points = len(shape) == 1  # [N]: the points of one scene, one image
        want = mask_metrics(pred[None], target[None], c, ignore) if points else mask_metrics(pred, target, c, ignore)
        for kind, given in (("numpy", np.asarray), ("torch", dev)):
            p, t = given(pred), given(target)
            inter, union = M.confusion_counts(p, t, c, ignore)
            as_numpy = (lambda x: x.cpu().numpy()) if kind == "torch" else np.asarray
            np.testing.assert_array_equal(as_numpy(inter), want["inter"], err_msg=f"{kind} {shape}")
            np.testing.assert_array_equal(as_numpy(union), want["union"], err_msg=f"{kind} {shape}")
            np.testing.assert_allclose(as_numpy(M.iou_per_class(p, t, c, ignore)), want["per_class"], rtol=1e-12)
            for name in ("dataset_miou", "per_image_miou", "per_class_image_miou"):
                got = float(getattr(M, name)(p, t, c, ignore))
                assert got == pytest.approx(want[name], rel=1e-12), (kind, shape, name)
            meter = M.IoUMeter(c, ignore)
            half = len(pred) // 2  # the first update is empty when B = 1
            for p_part, t_part in [(p, t)] if points else [(p[:half], t[:half]), (p[half:], t[half:])]:
                meter.update(p_part, t_part)
            out = meter.compute()
            for name in ("dataset_miou", "per_image_miou", "per_class_image_miou", "pixel_accuracy"):
                assert out[name] == pytest.approx(want[name], rel=1e-12), (kind, shape, name)
            np.testing.assert_allclose(as_numpy(out["per_class"]), want["per_class"], rtol=1e-12)
        for per_image in (False, True):
            np.testing.assert_allclose(
                M.iou(pred, target, c, ignore=ignore, per_image=per_image),
                mask_iou(pred, target, c, ignore=ignore, per_image=per_image),
            )
        for binary_ignore in (ignore, 1):  # ignore=1 ignores nothing in the original's iou_binary
            for per_image in (False, True):
                assert M.iou_binary(pred, target, ignore=binary_ignore, per_image=per_image) == pytest.approx(
                    mask_iou_binary(pred, target, ignore=binary_ignore, per_image=per_image)
                )


@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0)])
def test_empty_batches_and_images_count_nothing(shape):
    for given in (np.asarray, dev):
        pred = target = given(np.zeros(shape, np.int64))
        inter, union = M.confusion_counts(pred, target, 3)
        assert tuple(inter.shape) == tuple(union.shape) == (shape[0], 3)
        assert int(inter.sum()) == int(union.sum()) == 0
        assert float(M.dataset_miou(pred, target, 3)) == float(M.per_image_miou(pred, target, 3)) == 0.0


def test_values_that_are_no_class_index_are_refused():
    with pytest.raises(ValueError, match="target must hold class indices .* got dtype <U1"):
        M.dataset_miou(np.zeros((1, 2), int), np.array([["a", "b"]]), 2)
    with pytest.raises(ValueError, match="pred must hold class indices .* got dtype torch.complex64"):
        M.dataset_miou(torch.zeros(1, 2, dtype=torch.complex64), torch.zeros(1, 2), 2)


def test_sparse_and_nested_maps_are_refused_with_what_to_pass():
    pred, target = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    sparse = r"must be a dense class map \[B, \*spatial\]; got a tensor of layout torch.sparse_coo: pass .to_dense"
    with pytest.raises(TypeError, match="pred " + sparse):
        M.dataset_miou(pred.to_sparse(), target, 2)
    with pytest.raises(TypeError, match="target " + sparse):
        M.IoUMeter(2).update(pred, target.to_sparse())
    with pytest.raises(TypeError, match="labels " + sparse):
        M.iou(pred, target.to_sparse(), 2)
    nested = torch.nested.nested_tensor([pred[0], pred[1, :2]], layout=torch.jagged)
    with pytest.raises(
        TypeError, match=r"pred must be a dense class map .* got a nested tensor: .*\.values\(\)\[None\]"
    ):
        M.per_image_miou(nested, nested, 2)


# ----------------------------------------------------------------------------- options and mixed inputs

MIXED_PRED, MIXED_TARGET = np.array([[0, 1, 1, 2]]), np.array([[0, 1, 2, 2]])
MIXED_PER_CLASS = [1.0, 0.5, 0.5]  # class 0: 1/1, class 1: 1/2 (pixel 2), class 2: 1/2 (pixel 2)


@pytest.mark.parametrize("first", ["numpy", "torch"])
def test_meter_takes_numpy_and_torch_batches_in_any_order(first):
    """The first update decides where the counts live; later batches of the other kind are counted there
    (the other kind's batch is a perfect prediction: the totals show it was counted)."""
    kinds = {"numpy": np.asarray, "torch": dev}
    second = "torch" if first == "numpy" else "numpy"
    meter = M.IoUMeter(3)
    for kind, pred in ((first, MIXED_PRED), (second, MIXED_TARGET), (first, MIXED_PRED)):
        meter.update(kinds[kind](pred), kinds[kind](MIXED_TARGET))
    if first == "numpy":
        assert isinstance(meter.state, np.ndarray)
    else:
        assert torch.is_tensor(meter.state) and meter.state.device == torch_device()
    out = meter.compute()
    per_class = out["per_class"].cpu().numpy() if first == "torch" else out["per_class"]
    # class 0: 3/3; class 1: 1/2 + 1/1 + 1/2 = 3/5; class 2: 1/2 + 2/2 + 1/2 = 4/6
    np.testing.assert_allclose(per_class, [1.0, 3 / 5, 4 / 6])
    assert out["dataset_miou"] == pytest.approx((1 + 3 / 5 + 4 / 6) / 3)
    assert out["per_image_miou"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert out["pixel_accuracy"] == pytest.approx(10 / 12)
    meter.reset()  # and after a reset the next update decides again
    meter.update(kinds[second](MIXED_PRED), kinds[second](MIXED_TARGET))
    assert torch.is_tensor(meter.state) == (second == "torch")


BAD_IGNORE = [("x", "'x'"), (1.5, "1.5"), (True, "True"), (np.float64(255.0), "")]


@pytest.mark.parametrize(("bad", "shown"), BAD_IGNORE, ids=lambda v: repr(v))
def test_ignore_index_must_be_an_int_or_none(bad, shown):
    message = "ignore_index must be an int or None; got " + shown
    with pytest.raises(TypeError, match=message):
        M.IoUMeter(3, ignore_index=bad)  # at construction, not at the first update
    for name in PUBLIC_FUNCTIONS:
        for given in (np.asarray, dev):
            with pytest.raises(TypeError, match=message):
                getattr(M, name)(given(MIXED_PRED), given(MIXED_TARGET), 3, ignore_index=bad)
    with pytest.raises(TypeError, match="ignore must be an int or None; got " + shown):
        M.iou(MIXED_PRED, MIXED_TARGET, 3, ignore=bad)
    with pytest.raises(TypeError, match="ignore must be an int or None; got " + shown):
        M.iou_binary(MIXED_PRED, MIXED_TARGET, ignore=bad)


@pytest.mark.parametrize(
    ("bad", "error", "shown"),
    [
        (True, TypeError, "True of type bool"),
        (np.True_, TypeError, r"(np\.True_|True) of type bool"),
        ("3", TypeError, "'3' of type str"),
        (3.0, TypeError, "3.0 of type float"),
        (None, TypeError, "None of type NoneType"),
        (0, ValueError, "0$"),
        (-2, ValueError, "-2$"),
    ],
    ids=repr,
)
def test_num_classes_must_be_a_positive_int(bad, error, shown):
    with pytest.raises(error, match="num_classes must be a positive int; got " + shown):
        M.IoUMeter(bad)
    for name in PUBLIC_FUNCTIONS:
        with pytest.raises(error, match="num_classes must be a positive int; got " + shown):
            getattr(M, name)(MIXED_PRED, MIXED_TARGET, bad)
    with pytest.raises(error, match="C must be a positive int; got " + shown):
        M.iou(MIXED_PRED, MIXED_TARGET, bad)


def test_numpy_ints_are_ints_and_sync_is_a_flag():
    meter = M.IoUMeter(np.int64(3), ignore_index=np.uint8(255))
    assert (type(meter.num_classes), type(meter.ignore_index)) == (int, int)
    meter.update(MIXED_PRED, MIXED_TARGET)
    np.testing.assert_allclose(meter.compute()["per_class"], MIXED_PER_CLASS)
    np.testing.assert_allclose(M.iou_per_class(MIXED_PRED, MIXED_TARGET, np.int32(3), np.int16(-1)), MIXED_PER_CLASS)
    with pytest.raises(TypeError, match="sync must be True or False; got 'no'"):
        M.IoUMeter(3, sync="no")


# An ignore value that the labels' dtype cannot hold ignores nothing, in NumPy and torch alike (torch's own
# comparison would wrap -1 to 255 in uint8). Pixel 3 is void (255 in uint8, -1 in int8), predicted class 1.
NARROW_PRED = [[0, 1, 2, 1, 1, 0]]
NARROW_TARGET = {"uint8": [[0, 1, 2, 255, 1, 0]], "int8": [[0, 1, 2, -1, 1, 0]]}
NAN = float("nan")
NARROW_CASES = {  # (dtype, ignore_index): hand-computed IoU of classes 0, 1, 2
    ("uint8", -1): [1.0, 2 / 3, 1.0],  # nothing ignored: the void pixel is in class 1's union (2 of 3)
    ("uint8", 255): [1.0, 1.0, 1.0],  # the void pixel ignored
    ("uint8", 0): [NAN, 2 / 3, 1.0],  # class 0's pixels ignored: no class 0 left; the void pixel counts
    ("int8", -1): [1.0, 1.0, 1.0],
    ("int8", 255): [1.0, 2 / 3, 1.0],
    ("int8", 0): [NAN, 2 / 3, 1.0],
}


@pytest.mark.parametrize("pred_dtype", ["same", "int64"])
@pytest.mark.parametrize(("dtype", "ignore"), list(NARROW_CASES), ids=str)
def test_numpy_and_torch_agree_on_narrow_labels_whatever_the_ignore_value(dtype, ignore, pred_dtype):
    target = np.array(NARROW_TARGET[dtype], dtype=dtype)
    pred = np.array(NARROW_PRED, dtype=dtype if pred_dtype == "same" else "int64")
    want = NARROW_CASES[dtype, ignore]
    results = {}
    for kind, given in (("numpy", np.asarray), ("torch", dev)):
        p, t = given(pred), given(target)
        per_class = M.iou_per_class(p, t, 3, ignore_index=ignore)
        np.testing.assert_allclose(np.asarray(per_class.cpu() if kind == "torch" else per_class), want, err_msg=kind)
        meter = M.IoUMeter(3, ignore)
        meter.update(p, t)
        out = meter.compute()
        results[kind] = {name: float(getattr(M, name)(p, t, 3, ignore)) for name in PUBLIC_FUNCTIONS[2:]} | {
            "meter " + name: out[name] for name in ("dataset_miou", "per_image_miou", "pixel_accuracy")
        }
        inter, union = M.confusion_counts(p, t, 3, ignore)
        results[kind]["counts"] = (np.asarray(inter.tolist()).tolist(), np.asarray(union.tolist()).tolist())
    assert results["numpy"] == results["torch"]
    assert results["numpy"]["dataset_miou"] == pytest.approx(np.nanmean(want))
    # the original's iou leaves the ignored class out (and no class is empty in the others)
    np.testing.assert_allclose(
        M.iou(pred, target, 3, ignore=ignore), [100 * v for c, v in enumerate(want) if c != ignore]
    )


@pytest.mark.parametrize("given", [np.asarray, dev], ids=["numpy", "torch"])
def test_an_ignore_value_a_float_dtype_rounds_ignores_nothing(given):
    """float16 holds 2048 but not 2049 (which it would round to 2048): ignore_index=2049 leaves 2048 counted."""
    target = given(np.array([[0, 2048, 1]], dtype=np.float16))
    pred = given(np.array([[0, 1, 1]], dtype=np.float16))
    as_list = lambda x: np.asarray(x.cpu() if torch.is_tensor(x) else x).tolist()  # noqa: E731
    assert as_list(M.iou_per_class(pred, target, 2, ignore_index=2049)) == [1.0, 0.5]
    assert as_list(M.iou_per_class(pred, target, 2, ignore_index=2048)) == [1.0, 1.0]
    assert as_list(M.iou_per_class(pred, target, 2, ignore_index=10**400)) == [1.0, 0.5]  # beyond every float


# ----------------------------------------------------------------------------- memory

BIG, BIG_CLASSES = (2, 2048, 2048), 19
MASK_BYTES = 2 * 19 * 2048 * 2048  # one [B, C, N] bool mask: the former code built several of these
BOUND = MASK_BYTES // 4


def every_metric(pred, target):
    """Each public metric (and the meter) as a call on one batch."""
    calls = {name: functools.partial(getattr(M, name), pred, target, BIG_CLASSES, 255) for name in PUBLIC_FUNCTIONS}

    def meter():
        m = M.IoUMeter(BIG_CLASSES, 255)
        m.update(pred, target)
        return m.compute()

    return calls | {"IoUMeter": meter}


PUBLIC_FUNCTIONS = ["confusion_counts", "iou_per_class", "dataset_miou", "per_image_miou", "per_class_image_miou"]


def big_maps():
    rng = np.random.default_rng(0)
    target = rng.integers(0, BIG_CLASSES, BIG, dtype=np.uint8)
    target[:, ::7] = 255
    return rng.integers(0, BIG_CLASSES, BIG), target


def test_numpy_metrics_allocate_no_class_masks():
    pred, target = big_maps()
    calls = every_metric(pred, target)
    calls["iou"] = lambda: M.iou(pred, target, BIG_CLASSES, ignore=255)
    calls["iou_binary"] = lambda: M.iou_binary(pred, target, ignore=255)
    for call in every_metric(pred[:, :8, :8], target[:, :8, :8]).values():
        call()  # imports and first-call caches out of the measurement
    tracemalloc.start()
    try:
        for name, call in calls.items():
            tracemalloc.reset_peak()
            call()
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < BOUND, f"{name}: {peak / 2**20:.1f} MiB at peak, bound {BOUND / 2**20:.0f} MiB"
    finally:
        tracemalloc.stop()


def _resident_peak(call):
    """Bytes by which the process's resident set grew at its peak during ``call`` (Linux: clear_refs resets it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("measuring the CPU peak needs Linux's writable /proc/self/clear_refs")

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    before = status("VmRSS")
    call()
    return status("VmHWM") - before


def test_torch_metrics_allocate_no_class_masks():
    device = torch_device()
    if device.type not in ("cpu", "cuda"):
        pytest.skip(f"no peak-memory reading on {device.type}")
    pred, target = (dev(x) for x in big_maps())
    for call in every_metric(pred[:, :8, :8], target[:, :8, :8]).values():
        call()
    for name, call in every_metric(pred, target).items():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            call()
            peak = torch.cuda.max_memory_allocated(device) - before
        else:
            peak = _resident_peak(call)
        assert peak < BOUND, f"{name}: {peak / 2**20:.1f} MiB at peak, bound {BOUND / 2**20:.0f} MiB"


def test_nested_lists_are_class_maps_and_no_image_scores_zero():
    """Lists are read as NumPy reads them (each was an AttributeError on ``.shape``), beside a tensor too;
    ``iou_binary`` of no image is 0, as the original's ``mean(..., empty=0)`` (it was NaN)."""
    pred, target = [[0, 1, 1], [1, 1, 0]], [[0, 1, 0], [1, 1, 1]]
    expected = M.dataset_miou(np.array(pred), np.array(target), 2)
    assert M.dataset_miou(pred, target, 2) == expected
    assert float(M.dataset_miou(torch.tensor(pred), target, 2)) == pytest.approx(expected)
    assert M.dataset_miou(pred, torch.tensor(target), 2) == pytest.approx(expected)
    meter = M.IoUMeter(2)
    meter.update(pred, target)
    assert meter.compute()["dataset_miou"] == pytest.approx(expected)
    empty = np.zeros((0, 3), int)
    assert M.iou_binary(empty, empty) == 0.0


def test_bfloat16_class_maps_of_tf_and_jax_are_counted():
    """TF's and JAX's bfloat16 reach NumPy as an ml_dtypes type of kind 'V': refused as no class indices (torch's
    bfloat16 was taken); they are whole-number floats like any other."""
    tf, jnp = require("tensorflow"), require("jax.numpy")
    pred, target = np.array([[0, 1, 2, 2]]), np.array([[0, 1, 1, 2]])
    expected = M.dataset_miou(pred, target, 3)
    assert M.dataset_miou(tf.constant(pred, tf.bfloat16), tf.constant(target), 3) == expected
    assert M.dataset_miou(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target, jnp.bfloat16), 3) == expected
    meter = M.IoUMeter(3)
    meter.update(jnp.asarray(pred, jnp.bfloat16), target)
    assert meter.compute()["dataset_miou"] == expected


@pytest.mark.parametrize(
    ("torch_dtype", "numpy_dtype", "c"), [(torch.bfloat16, None, 301), (torch.float16, np.float16, 2049)]
)
def test_a_value_above_the_classes_of_a_half_precision_map_is_in_no_class(torch_dtype, numpy_dtype, c):
    """Values above C - 1 were clamped to C in the map's own dtype, where C rounds to C - 1 (301 in bfloat16,
    2049 in float16): a real class, silently counted (IoU 1.0 where 0.5)."""
    target, pred = [[c - 1, 4 * c]], [[c - 1, c - 1]]  # class C - 1: intersection 1, union 2
    for kind, dtype in (("torch", torch_dtype), ("numpy", numpy_dtype)):
        if dtype is None:
            continue
        make = (
            functools.partial(torch.tensor, dtype=dtype)
            if kind == "torch"
            else functools.partial(np.array, dtype=dtype)
        )
        for p, t in ((make(pred), make(target)), (make(pred), np.array(target)), (np.array(pred), make(target))):
            assert float(M.iou_per_class(p, t, c)[c - 1]) == 0.5, (kind, dtype, type(p), type(t))


def test_maps_of_the_two_kinds_side_by_side():
    """A torch map beside a NumPy one went through the other library as it was: a flipped NumPy view, a string
    array, a bfloat16 or grad-requiring tensor raised NumPy's or torch's own errors."""
    pred, target = np.array([[0, 1, 2, 2]]), np.array([[2, 1, 1, 0]])[:, ::-1]
    expected = M.dataset_miou(pred, target, 3)
    assert float(M.dataset_miou(torch.tensor(pred), target, 3)) == pytest.approx(expected)
    assert M.dataset_miou(pred, torch.tensor(target.copy(), dtype=torch.bfloat16), 3) == pytest.approx(expected)
    grad = torch.tensor(target.copy(), dtype=torch.float32, requires_grad=True)
    assert M.dataset_miou(pred, grad, 3) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"target must hold class indices .*; got dtype <U1"):
        M.dataset_miou(torch.tensor(pred), np.array([["a", "b", "c", "d"]]), 3)
    assert M.iou(torch.tensor(pred), torch.tensor(target.copy()), 3).tolist() == M.iou(pred, target, 3).tolist()


def test_tensor_subclasses_are_tensors():
    """MONAI's MetaTensor (a torch.Tensor subclass from another package) was read as NumPy: copied to the host,
    with a NumPy result where the docs promise a tensor on the input's device."""

    class MetaTensor(torch.Tensor):
        __module__ = "monai.data.meta_tensor"

    pred, target = torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 2]])
    got = M.dataset_miou(pred.as_subclass(MetaTensor), target.as_subclass(MetaTensor), 3)
    assert isinstance(got, torch.Tensor) and float(got) == pytest.approx(float(M.dataset_miou(pred, target, 3)))
    meter = M.IoUMeter(3)
    meter.update(pred.as_subclass(MetaTensor), target)
    assert isinstance(meter.compute()["per_class"], torch.Tensor)


def test_an_ignore_value_too_large_for_float16_ignores_nothing_without_a_warning():
    import warnings

    target = np.array([[0, 1, 1, 2]], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "overflow encountered in cast"
        got = M.dataset_miou(target, target, 3, ignore_index=10**6)
    assert got == 1.0


def test_many_small_images_of_many_classes_stay_in_bounded_memory():
    """Per-image counts are reduced block by block: they took a [B, C+4, C+4] histogram at once (1,000 images
    of 16 pixels and 150 classes: 190 MB; 20,000 points read as images of one pixel: 176 MB and 1.2 s)."""
    rng = np.random.default_rng(5)
    pred, target = rng.integers(0, 150, (1000, 4, 4)), rng.integers(0, 150, (1000, 4, 4))
    want = mask_metrics(pred, target, 150)
    tracemalloc.start()
    try:
        inter, union = M.confusion_counts(pred, target, 150)
        meter = M.IoUMeter(150)
        meter.update(pred, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20, f"{peak / 2**20:.1f} MiB at peak"
    np.testing.assert_array_equal(inter, want["inter"])
    np.testing.assert_array_equal(union, want["union"])
    assert meter.compute()["per_image_miou"] == pytest.approx(want["per_image_miou"], rel=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_points_of_one_scene_are_one_image(kind):
    """A 1-D map [N] (``logits.argmax(1)`` of points [N, C]) is one image, as the losses read points [N, C]."""
    rng = np.random.default_rng(6)
    pred, target = rng.integers(0, 5, 3000), rng.integers(0, 5, 3000)
    given = dev if kind == "torch" else np.asarray
    as_numpy = (lambda x: x.cpu().numpy()) if kind == "torch" else np.asarray
    inter, union = M.confusion_counts(given(pred), given(target), 5)
    want = mask_metrics(pred[None], target[None], 5)
    np.testing.assert_array_equal(as_numpy(inter), want["inter"])
    np.testing.assert_array_equal(as_numpy(union), want["union"])
    assert float(M.per_image_miou(given(pred), given(target), 5)) == pytest.approx(want["per_image_miou"])


def test_pixel_accuracy_compares_by_value_across_dtypes():
    """torch compared int64 predictions with float16 targets in float16: 2049 (no class) equalled 2048."""
    for dtype, value in ((torch.float16, 2048), (torch.bfloat16, 256)):
        pred, target = torch.tensor([[0, value + 1]]), torch.tensor([[0, value]], dtype=dtype)
        for p, t in ((pred, target), (pred.numpy(), target.float().numpy())):
            meter = M.IoUMeter(3)
            meter.update(p, t)
            assert meter.compute()["pixel_accuracy"] == 0.5, (dtype, type(p))


def test_float8_maps_are_counted():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 in this torch")
    pred, target = torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 2]])
    expected = M.confusion_counts(pred, target, 3)
    for got in (
        M.confusion_counts(pred.to(torch.float8_e4m3fn), target, 3),
        M.confusion_counts(pred, target.to(torch.float8_e4m3fn), 3),
    ):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)


def test_original_helpers_check_their_arguments():
    """``zip`` dropped the longer batch's last images, a string ``per_image`` counted as True, a ``None`` EMPTY
    failed inside NumPy, and a shape mismatch was reported with the names and the shapes of another function."""
    preds, labels = np.array([[1, 1], [0, 0]]), np.ones((3, 2), int)
    with pytest.raises(ValueError, match=r"^preds and labels must hold as many images; got 2 and 3"):
        M.iou_binary(preds, labels)
    with pytest.raises(ValueError, match=r"^preds and labels must hold as many images; got 2 and 3"):
        M.iou(preds, labels, 2, per_image=True)
    for call in (lambda: M.iou(preds, preds, 2, per_image="False"), lambda: M.iou_binary(preds, preds, per_image=1)):
        with pytest.raises(TypeError, match=r"^per_image must be True or False"):
            call()
    for bad in (None, "x", True):
        with pytest.raises(TypeError, match=r"^EMPTY must be a real number"):
            M.iou_binary(preds, preds, EMPTY=bad)
    with pytest.raises(
        ValueError, match=r"^each image of preds and labels must have one shape; got \[2, 3\] and \[3\]"
    ):
        M.iou_binary(np.zeros((2, 2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^preds must be a class map .*nested lists of unequal lengths"):
        M.iou([np.array([0, 1]), [[0], [1, 0]]], [np.array([0, 1]), np.array([1, 0])], 2, per_image=True)
    with pytest.raises(ValueError, match=r"^pred must be a class map .*nested lists of unequal lengths"):
        M.dataset_miou([[0, 1], [0]], [[0, 1], [0, 1]], 2)


def test_traced_maps_are_refused_with_what_to_do():
    """Inside tf.function or jax.jit the metrics failed in NumPy's conversion, naming no argument."""
    tf, jax = require("tensorflow"), require("jax")
    maps = np.array([[0, 1, 1]])

    @tf.function
    def in_graph(p):
        return M.dataset_miou(p, maps, 2)

    with pytest.raises(TypeError, match=r"pred must hold values the host can read .* outside tf.function and jax.jit"):
        in_graph(tf.constant(maps))
    with pytest.raises(TypeError, match=r"^target must hold values the host can read"):
        jax.jit(lambda t: M.dataset_miou(maps, t, 2))(maps)
