"""IoU metrics from confusion counts, for NumPy arrays and torch tensors (kept on their device).

Which loss optimises which metric (Wang et al., "Revisiting evaluation metrics
for semantic segmentation", NeurIPS 2023):

- ``dataset_miou``: counts summed over all images, IoU per class, mean over
  classes. Batch-mode Lovász-Softmax (``per_image=False``) is its surrogate on
  each batch.
- ``per_image_miou``: IoU of each class in each image, averaged over the classes
  that occur in the image (in its labels or its prediction), then over images.
  ``per_image=True`` optimises this one.
- ``per_class_image_miou``: IoU of each class in each image, averaged over the
  images where the class occurs, then over classes (Wang et al.'s class-level
  mIoU): small objects in many images weigh as much as large ones.
  ``per_image=True`` with ``classes='present'`` is the closest surrogate.

``iou`` and ``iou_binary`` reproduce the helpers of the original module
(percentages, ``EMPTY=1.``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeGuard, Union, overload

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup

__all__ = [
    "confusion_counts",
    "iou_per_class",
    "dataset_miou",
    "per_image_miou",
    "per_class_image_miou",
    "IoUMeter",
    "iou",
    "iou_binary",
]

# A NumPy array or a torch tensor: each function returns the kind it is given.
Array = Union[np.ndarray, "torch.Tensor"]


def _is_torch(x: object) -> TypeGuard[torch.Tensor]:
    return type(x).__module__.startswith("torch")


@overload
def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def confusion_counts(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]: ...
def confusion_counts(
    pred: Array, target: Array, num_classes: int, ignore_index: int | None = None
) -> tuple[Array, Array]:
    """Per-image intersection and union counts of each class.

    Args:
        pred, target: ``[B, *spatial]`` integer class maps (NumPy or torch, same kind).
        num_classes: number of classes ``C``.
        ignore_index: target value of pixels left out of every count.

    Returns:
        ``(intersection, union)``, each ``[B, C]`` integer counts.

    Example:
        >>> pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])  # [B=2, N=4]
        >>> target = np.array([[0, 1, 1, 0], [0, 0, 2, 255]])
        >>> inter, union = confusion_counts(pred, target, num_classes=3, ignore_index=255)
        >>> inter.tolist(), union.tolist()  # [B, C] each
        ([[1, 2, 0], [2, 0, 1]], [[2, 3, 0], [2, 0, 1]])
    """
    return _counts(pred, target, num_classes, ignore_index)


def _counts(pred: Array, target: Array, num_classes: int, ignore_index: int | None) -> tuple[Array, Array]:
    if tuple(pred.shape) != tuple(target.shape) or len(pred.shape) < 1:
        raise ValueError(
            f"pred and target must both have shape [B, *spatial]; got {list(pred.shape)} and {list(target.shape)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
    batch = pred.shape[0]
    if _is_torch(pred):
        import torch

        classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1)
        p, t = pred.reshape(batch, 1, -1), torch.as_tensor(target, device=pred.device).reshape(batch, 1, -1)
        valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
        pc, tc = (p == classes) & valid, (t == classes) & valid
        return (pc & tc).sum(-1), (pc | tc).sum(-1)
    classes = np.arange(num_classes).reshape(1, -1, 1)
    p, t = np.asarray(pred).reshape(batch, 1, -1), np.asarray(target).reshape(batch, 1, -1)
    valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    pc, tc = (p == classes) & valid, (t == classes) & valid
    return (pc & tc).sum(-1), (pc | tc).sum(-1)


def _ratio(intersection: Array, union: Array) -> Array:
    """IoU where the union is non-zero, NaN elsewhere (a class that is absent counts nowhere)."""
    if _is_torch(union) and _is_torch(intersection):
        import torch

        return torch.where(union > 0, intersection.double() / union.clamp_min(1), torch.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)


def _nanmean(x: Array, axis: int | None = None, empty: float = 0.0) -> Array:
    """The mean of the non-NaN entries; ``empty`` where there is none (NaN: left out of an outer mean)."""
    if _is_torch(x):
        import torch

        count = (~x.isnan()).sum() if axis is None else (~x.isnan()).sum(axis)
        out = x.nan_to_num(0.0).sum() if axis is None else x.nan_to_num(0.0).sum(axis)
        return torch.where(count > 0, out / count.clamp_min(1), empty)
    with np.errstate(invalid="ignore"):
        count = np.sum(~np.isnan(x), axis=axis)
        return np.where(count > 0, np.nansum(x, axis=axis) / np.maximum(count, 1), empty)


@overload
def iou_per_class(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor: ...
@overload
def iou_per_class(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray: ...
def iou_per_class(pred: Array, target: Array, num_classes: int, ignore_index: int | None = None) -> Array:
    """``[C]`` IoU of each class over the whole batch; NaN for a class absent from labels and predictions.

    The arguments are those of :func:`confusion_counts`: ``[B, *spatial]`` class maps.

    Example:
        >>> pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
        >>> target = np.array([[0, 1, 1, 0], [0, 0, 2, 255]])
        >>> iou_per_class(pred, target, 3, ignore_index=255).round(4).tolist()
        [0.75, 0.6667, 1.0]
    """
    inter, union = _counts(pred, target, num_classes, ignore_index)
    return _ratio(inter.sum(0), union.sum(0))


@overload
def dataset_miou(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor: ...
@overload
def dataset_miou(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray: ...
def dataset_miou(pred: Array, target: Array, num_classes: int, ignore_index: int | None = None) -> Array:
    """Counts summed over all images, IoU per class, mean over the classes that occur.

    The arguments are those of :func:`confusion_counts`. Returns a 0-d array (tensor for torch input).

    Example:
        >>> pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
        >>> target = np.array([[0, 1, 1, 0], [0, 0, 2, 255]])
        >>> round(float(dataset_miou(pred, target, 3, ignore_index=255)), 4)  # (3/4 + 2/3 + 1) / 3
        0.8056
    """
    inter, union = _counts(pred, target, num_classes, ignore_index)
    return _nanmean(_ratio(inter.sum(0), union.sum(0)))


@overload
def per_image_miou(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor: ...
@overload
def per_image_miou(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray: ...
def per_image_miou(pred: Array, target: Array, num_classes: int, ignore_index: int | None = None) -> Array:
    """IoU of each class in each image, mean over the classes occurring in that image, then over images.

    The arguments are those of :func:`confusion_counts`. Returns a 0-d array (tensor for torch input).

    Example:
        >>> pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
        >>> target = np.array([[0, 1, 1, 0], [0, 0, 2, 255]])
        >>> # image 0: (1/2 + 2/3) / 2, image 1: (1 + 1) / 2
        >>> round(float(per_image_miou(pred, target, 3, ignore_index=255)), 4)
        0.7917
    """
    inter, union = _counts(pred, target, num_classes, ignore_index)
    return _nanmean(_nanmean(_ratio(inter, union), axis=1, empty=np.nan))  # an all-ignored image counts nowhere


@overload
def per_class_image_miou(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor: ...
@overload
def per_class_image_miou(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray: ...
def per_class_image_miou(pred: Array, target: Array, num_classes: int, ignore_index: int | None = None) -> Array:
    """IoU of each class in each image, mean over the images where the class occurs, then over classes.

    The arguments are those of :func:`confusion_counts`. Returns a 0-d array (tensor for torch input).

    Example:
        >>> pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
        >>> target = np.array([[0, 1, 1, 0], [0, 0, 2, 255]])
        >>> # class 0: (1/2 + 1) / 2 over both images, class 1: 2/3, class 2: 1
        >>> round(float(per_class_image_miou(pred, target, 3, ignore_index=255)), 4)
        0.8056
    """
    inter, union = _counts(pred, target, num_classes, ignore_index)
    return _nanmean(_nanmean(_ratio(inter, union), axis=0, empty=np.nan))  # a class in no image counts nowhere


def _nansum0(x: Array) -> Array:
    if _is_torch(x):
        return x.nan_to_num(nan=0.0).sum(0)
    return np.nansum(x, axis=0)


def _float64_vector(parts: list[Any], like: Array) -> Array:
    """Vectors and scalars, one after the other in one float64 vector: a tensor on ``like``'s device, or NumPy."""
    if _is_torch(like):
        import torch

        return torch.cat([torch.as_tensor(x, dtype=torch.float64, device=like.device).reshape(-1) for x in parts])
    return np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in parts])


class IoUMeter:
    """Streaming IoU: ``update(pred, target)`` per batch, then ``compute()``; ``reset()`` starts over.

    The counts stay on the device of the inputs (no host sync in ``update``). Under
    ``torch.distributed``, ``compute()`` sums the counts of every rank of
    ``process_group`` (the default group if None) first, so each rank gets the
    metric of the whole dataset; ``sync=False`` keeps each rank's own.

    Example:
        >>> meter = IoUMeter(num_classes=2)
        >>> meter.update(np.array([[0, 1, 1]]), np.array([[0, 1, 0]]))
        >>> {k: round(float(v), 3) for k, v in meter.compute().items() if k != "per_class"}
        {'dataset_miou': 0.5, 'per_image_miou': 0.5, 'per_class_image_miou': 0.5, 'pixel_accuracy': 0.667}
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        *,
        process_group: ProcessGroup | None = None,
        sync: bool = True,
    ):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.process_group, self.sync = process_group, sync
        self.reset()

    def reset(self) -> None:
        """Forget every count: the next ``compute()`` needs an ``update()`` first."""
        # One float64 vector (exact for counts below 2**53), so a rank sync is one all_reduce:
        # intersection [C], union [C], per-class image IoU sums [C], per-class image counts [C],
        # then the sum of per-image mIoU, the count of images with a valid pixel, correct pixels and valid pixels.
        self.state: Array | None = None

    def update(self, pred: Array, target: Array) -> None:
        """Add a batch: ``pred`` and ``target`` are ``[B, *spatial]`` class maps (NumPy or torch)."""
        inter, union = _counts(pred, target, self.num_classes, self.ignore_index)
        image_class = _ratio(inter, union)  # [B, C], NaN where the class occurs in neither
        # Any: a bool array or tensor (mypy reads == of the two kinds as bool)
        valid: Any = target != self.ignore_index if self.ignore_index is not None else target == target
        occurs = (~image_class.isnan()).sum(0) if _is_torch(image_class) else (~np.isnan(image_class)).sum(0)
        counts = [inter.sum(0), union.sum(0), _nansum0(image_class), occurs]
        image_miou = _nanmean(image_class, axis=1, empty=np.nan)  # NaN: an image with no valid pixel, left out
        scored = ~image_miou.isnan() if _is_torch(image_miou) else ~np.isnan(image_miou)
        scalars = [_nansum0(image_miou), scored.sum(), ((pred == target) & valid).sum(), valid.sum()]
        batch = _float64_vector(counts + scalars, like=image_class)
        self.state = batch if self.state is None else self.state + batch

    def _synced(self, state: Array) -> Array:
        if self.sync and _is_torch(state):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                state = state.clone()
                dist.all_reduce(state, group=self.process_group)
        return state

    def compute(self) -> dict[str, Any]:
        """``dataset_miou``, ``per_image_miou``, ``per_class_image_miou``, ``pixel_accuracy`` and ``per_class`` IoU."""
        if self.state is None:
            raise RuntimeError("IoUMeter.compute() called before any update()")
        state = self._synced(self.state)
        c = self.num_classes
        inter, union, class_sum, class_images = (state[i * c : (i + 1) * c] for i in range(4))
        image_sum, images, correct, pixels = (float(v) for v in state[4 * c :])
        per_class = _ratio(inter, union)
        return {
            "dataset_miou": float(_nanmean(per_class)),
            "per_image_miou": image_sum / max(images, 1),
            "per_class_image_miou": float(_nanmean(_ratio(class_sum, class_images))),
            "pixel_accuracy": correct / max(pixels, 1),
            "per_class": per_class,
        }


# ----------------------------------------------------------------------------- the original's helpers


def iou_binary(
    preds: Iterable[Any], labels: Iterable[Any], EMPTY: float = 1.0, ignore: int | None = None, per_image: bool = True
) -> float:
    """IoU of the foreground (class 1) in percent, as the original's ``iou_binary``.

    An image with an empty union scores ``EMPTY``; with ``per_image`` the mean over images.
    ``preds`` and ``labels`` are ``[B, *spatial]`` 0/1 maps (or any iterable of images).

    Example:
        >>> iou_binary(np.array([[0, 1, 1]]), np.array([[0, 1, 0]]))  # one image: 1 / 2
        50.0
    """
    if not per_image:
        preds, labels = (preds,), (labels,)
    ious = []
    for pred, label in zip(preds, labels):
        pred, label = np.asarray(pred), np.asarray(label)
        intersection = np.sum((label == 1) & (pred == 1))
        union = np.sum((label == 1) | ((pred == 1) & (label != ignore)))
        ious.append(EMPTY if not union else float(intersection) / float(union))
    return 100 * float(np.mean(ious))


def iou(
    preds: Iterable[Any],
    labels: Iterable[Any],
    C: int,
    EMPTY: float = 1.0,
    ignore: int | None = None,
    per_image: bool = False,
) -> np.ndarray:
    """Per-class IoU in percent, as the original's ``iou``: ``[C]`` (the ``ignore`` class left out).

    ``preds`` and ``labels`` are ``[B, *spatial]`` class maps; without ``per_image`` the batch is one set.

    Example:
        >>> pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
        >>> target = np.array([[0, 1, 1, 0], [0, 0, 2, 255]])
        >>> iou(pred, target, C=3, ignore=255).round(2).tolist()
        [75.0, 66.67, 100.0]
    """
    if not per_image:
        preds, labels = (preds,), (labels,)
    ious = []
    for pred, label in zip(preds, labels):
        pred, label = np.asarray(pred), np.asarray(label)
        image = []
        for i in range(C):
            if i != ignore:
                intersection = np.sum((label == i) & (pred == i))
                union = np.sum((label == i) | ((pred == i) & (label != ignore)))
                image.append(EMPTY if not union else float(intersection) / float(union))
        ious.append(image)
    return 100 * np.array([np.mean(per_class) for per_class in zip(*ious)])
