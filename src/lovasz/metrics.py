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

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeGuard, Union, overload

import numpy as np

from lovasz._validation import check_count, check_flag, check_ignore, ignore_held

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
    torch = sys.modules.get("torch")  # (not imported: no tensor either)
    return torch is not None and isinstance(x, torch.Tensor)  # subclasses too: MONAI's MetaTensor


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
        pred, target: ``[B, *spatial]`` integer class maps (NumPy or torch, same kind); a 1-D map ``[N]``
            is one image (the points of a scene: ``logits.argmax(1)`` of points ``[N, C]``).
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


# Pixels per block: every temporary is O(block) whatever the batch (on the CPU, int64 codes of 2 MiB that
# stay in cache); accelerators take larger blocks, for fewer kernel launches.
_HOST_BLOCK = 1 << 18
_DEVICE_BLOCK = 1 << 20
# Bins of per-image histograms per block of images (int64: 8 MiB): many small images of many classes took
# B*(C+4)^2 at once (1,000 images of 16 pixels and 150 classes: 190 MB).
_IMAGE_BINS = 1 << 20


def _counts(pred: Array, target: Array, num_classes: int, ignore_index: int | None) -> tuple[Array, Array]:
    inter, union, _, _ = _image_counts_of(pred, target, num_classes, ignore_index)
    return inter, union


# The histogram of (target code, predicted code) pairs, each code shifted by 2 to index K = C + 4 rows/columns:
#   -2  a prediction outside the classes equal to its target (only with ``mark_equal``: pixel accuracy counts it)
#   -1  a value below 0, or not a whole number (floats)
#   0..C-1  the classes
#   C   a value above C - 1
#   C+1 a target equal to ignore_index (the row left out of every count)
# A value outside the classes thus counts in the union of the class on the other side, as a mask of each class would.


def _check_dense(x: Any, name: str) -> None:
    """Sparse, nested and ragged tensors are no class maps to read as they are: say what to pass."""
    if _is_torch(x):
        import torch

        expected = f"{name} must be a dense class map [B, *spatial]"
        if x.is_nested:
            raise TypeError(f"{expected}; got a nested tensor: pass its points as one map, .values()[None]")
        if x.layout != torch.strided:
            raise TypeError(f"{expected}; got a tensor of layout {x.layout}: pass .to_dense()")
    elif type(x).__name__ in ("SparseTensor", "RaggedTensor", "BCOO", "BCSR"):
        raise TypeError(
            f"{name} must be a dense class map [B, *spatial] (NumPy or torch); got a {type(x).__name__}: densify it"
        )


def _checked_maps(pred: Any, target: Any, names: tuple[str, str]) -> tuple[Any, Any]:
    """``pred`` and ``target`` as two maps of one kind (the prediction's: torch, or NumPy) and one shape, of
    class indices; a 1-D map ``[N]`` is one image (the points of a scene)."""
    _check_dense(pred, names[0])
    _check_dense(target, names[1])
    if not _is_torch(pred):  # nested lists too
        pred = _as_numpy(pred, names[0])
    if not _is_torch(target) or not _is_torch(pred):  # (one kind for both: the prediction's)
        target = _as_numpy(target, names[1])
    for name, x in zip(names, (pred, target)):
        if not _is_index_dtype(x):
            raise ValueError(
                f"{name} must hold class indices (integers, bools or whole-number floats); got dtype {x.dtype}"
            )
    if tuple(pred.shape) != tuple(target.shape) or len(pred.shape) < 1:
        raise ValueError(
            f"{names[0]} and {names[1]} must both have shape [B, *spatial] (or [N], the points of one scene); "
            f"got {list(pred.shape)} and {list(target.shape)}"
        )
    if len(pred.shape) == 1:  # points [N]: one image (as N images of one pixel each, per-image scores mean nothing)
        pred, target = pred[None], target[None]
    return _wider_than_float8(pred), _wider_than_float8(target)


def _wider_than_float8(x: Any) -> Any:
    """A torch float8 map as float32 (torch has no floor for float8); anything else as it is."""
    return x.float() if _is_torch(x) and x.is_floating_point() and x.element_size() == 1 else x


def _histograms(
    pred: Array, target: Array, num_classes: int, ignore_index: int | None, per_image: bool, mark_equal: bool
) -> Iterator[Array]:
    """Code-pair counts of maps of :func:`_checked_maps`, one bincount per block of pixels: per block of whole
    images ``[images, K, K]`` (per image: at most :data:`_IMAGE_BINS` bins, or one image's ``K*K``, whatever the
    batch), or ``[K, K]`` for the batch."""
    num_classes = check_count(num_classes, "num_classes", 1)
    ignore_index = check_ignore(ignore_index, "ignore_index")
    c, k = num_classes, num_classes + 4
    bins = k * k
    batch = pred.shape[0]
    pixels = int(np.prod(pred.shape[1:]))
    p: Any  # the two kinds share the code below (mypy reads their operators apart)
    t: Any
    torch_input = _is_torch(pred)
    if torch_input:
        import torch

        p = pred.reshape(batch, pixels)
        t = target if _is_torch(target) else torch.as_tensor(np.ascontiguousarray(target))  # (a flipped view)
        t = t.to(pred.device).reshape(batch, pixels)
        block = _HOST_BLOCK if p.device.type == "cpu" else _DEVICE_BLOCK
    else:
        p, t = pred.reshape(batch, pixels), target.reshape(batch, pixels)
        block = _HOST_BLOCK
    ignored = None if ignore_index is None else _ignore_value(t, ignore_index)
    rows = max(1, block // max(pixels, 1))  # whole images per block when they fit, else pieces of one image
    if per_image:
        rows = max(1, min(rows, _IMAGE_BINS // bins))  # (each image's K*K bins)
    cols = max(1, min(pixels, block))  # 1: no block at all when the images are empty
    if per_image and batch == 0:
        yield _zeros(0, p).reshape(0, k, k)
    total: Any = None if per_image else _zeros(bins, p)  # (per image: made for each block below)
    for b0 in range(0, batch, rows):
        b1 = min(b0 + rows, batch)
        shift: Any = 2 * k + 2  # both codes from -2.. to 0..
        if per_image:  # and each image's pairs into its own K*K bins (made on the device: a copy there would sync)
            images = torch.arange(b1 - b0, device=p.device) if torch_input else np.arange(b1 - b0)
            shift = (images * bins + shift).reshape(-1, 1)
            total = _zeros((b1 - b0) * bins, p)
        for n0 in range(0, pixels, cols):
            tb, pb = t[b0:b1, n0 : n0 + cols], p[b0:b1, n0 : n0 + cols]
            index = _codes(tb, c)
            if ignored is not None:
                _fill(index, tb == ignored, c + 1)
            predicted = _codes(pb, c)
            if mark_equal:
                _fill(predicted, _equal(pb, tb) & ((predicted == -1) | (predicted == c)), -2)
            index *= k
            index += predicted
            index += shift
            total += _bincount(index.reshape(-1), (b1 - b0 if per_image else 1) * bins)
        if per_image:
            yield total.reshape(-1, k, k)
    if not per_image:
        yield total.reshape(k, k)


def _zeros(length: int, like: Array) -> Array:
    """int64 zeros: a tensor on ``like``'s device, or NumPy."""
    if _is_torch(like):
        import torch

        return torch.zeros(length, dtype=torch.int64, device=like.device)
    return np.zeros(length, dtype=np.int64)


def _batch_histogram(
    pred: Array, target: Array, num_classes: int, ignore_index: int | None, names: tuple[str, str] = ("pred", "target")
) -> Array:
    """The code-pair counts of the whole batch, ``[K, K]``."""
    pred, target = _checked_maps(pred, target, names)
    return next(_histograms(pred, target, num_classes, ignore_index, per_image=False, mark_equal=False))


def _image_counts_of(
    pred: Array, target: Array, num_classes: int, ignore_index: int | None, mark_equal: bool = False
) -> tuple[Array, Array, Array, Array]:
    """Per image: intersection and union ``[B, C]``, pixels predicted right and pixels counted ``[B]``; each block
    of images' counts reduced as it comes."""
    pred, target = _checked_maps(pred, target, ("pred", "target"))
    histograms = _histograms(pred, target, num_classes, ignore_index, True, mark_equal)
    blocks = [_from_histogram(h, num_classes) for h in histograms]
    if len(blocks) == 1:
        return blocks[0]
    cat: Any = sys.modules["torch"].cat if _is_torch(pred) else np.concatenate
    inter, union, correct, counted = (cat([block[i] for block in blocks]) for i in range(4))
    return inter, union, correct, counted


def _equal(pb: Any, tb: Any) -> Any:
    """``pb == tb`` by value: torch compares a float16 target with int64 predictions in float16 (2049 == 2048)."""
    if _is_torch(pb) and pb.dtype != tb.dtype and (pb.is_floating_point() or tb.is_floating_point()):
        import torch

        return pb.to(torch.float64) == tb.to(torch.float64)
    return pb == tb


def _ignore_value(target: Any, ignore_index: int) -> Any:
    """The scalar to compare ``target`` with for ``ignore_index``, or None when no value of its dtype equals it.

    Compared as they are, an ignore value that the dtype cannot hold would wrap in torch (``-1`` as 255 in uint8)
    and round in either (``2049`` as 2048 in float16): the comparison is then made only where the value fits."""
    if _is_torch(target):
        import torch

        if target.dtype == torch.bool:
            return ignore_index if ignore_index in (0, 1) else None
        if target.is_floating_point():
            try:
                held = torch.tensor(float(ignore_index), dtype=torch.float64).to(target.dtype).item()
            except OverflowError:
                return None
            return held if held == ignore_index else None
        info: Any = torch.iinfo(target.dtype)
    else:
        if target.dtype.kind == "b":
            return ignore_index if ignore_index in (0, 1) else None
        if target.dtype.kind == "f":
            try:
                with np.errstate(over="ignore"):  # (too large for the dtype: inf, which equals no ignore_index)
                    held = np.array(float(ignore_index)).astype(target.dtype)
            except OverflowError:  # (too large for a Python float)
                return None
            return held if float(held) == ignore_index else None
        info = np.iinfo(target.dtype)
    return ignore_held(ignore_index, info)


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array; bfloat16 (TF's and JAX's, an ml_dtypes type: kind 'V' to NumPy; torch's) as float32."""
    if _is_torch(x):  # (beside NumPy: copied to the host)
        x = x.detach().cpu()
        x = x.float() if x.dtype == sys.modules["torch"].bfloat16 else x
        return x.numpy()
    try:
        x = np.asarray(x)
    except ValueError as error:  # ("inhomogeneous shape")
        raise ValueError(f"{name} must be a class map [B, *spatial]; got nested lists of unequal lengths") from error
    except (TypeError, NotImplementedError) as error:  # a tf.function's symbolic tensor, a JAX tracer
        raise TypeError(
            f"{name} must hold values the host can read (a NumPy array, a torch tensor, an eager TF or JAX array): "
            f"the metrics count on the host; got a {type(x).__name__} (traced: call them outside tf.function and "
            "jax.jit, on the values the step returns)"
        ) from error
    return x.astype(np.float32) if x.dtype.kind == "V" and "float" in x.dtype.name else x


def _is_index_dtype(x: Any) -> bool:
    if _is_torch(x):
        return not x.is_complex()
    return x.dtype.kind in "biuf"


def _codes(x: Any, c: int) -> Any:
    """An int64 copy of a block of class values: each value in 0..c-1 itself, every other -1 or c."""
    if _is_torch(x):
        import torch

        if x.is_floating_point():  # clamped in float64: C itself may round to C - 1 in half precision
            return torch.where(x.floor() == x, x.double().clamp(-1, c), -1).long()  # NaN and 2.5 are in no class
        return x.to(torch.int64, copy=True).clamp_(-1, c)
    if x.dtype.kind == "f":
        return np.where(np.floor(x) == x, np.clip(x.astype(np.float64), -1, c), -1).astype(np.int64)
    codes = x.astype(np.int64)  # uint64 above 2**63 wraps to a negative value: in no class either way
    return np.clip(codes, -1, c, out=codes)


def _fill(codes: Any, where: Any, value: int) -> None:
    if _is_torch(codes):
        codes.masked_fill_(where, value)
    else:
        np.putmask(codes, where, value)  # twice as fast as copyto(where=) here


def _bincount(index: Array, length: int) -> Array:
    """Counts of each value of ``index`` in ``0..length-1``, as int64."""
    if not _is_torch(index):
        return np.bincount(index, minlength=length)
    import torch

    if index.device.type == "cpu":
        return torch.bincount(index, minlength=length)
    # torch.bincount reads the maximum back to the host to size its result: a sync on every block;
    # a scatter of ones into a known length needs none.
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(length, dtype=torch.int64, device=index.device).index_add_(0, index, ones)


def _from_histogram(histogram: Array, c: int) -> tuple[Array, Array, Array, Array]:
    """``(intersection, union)`` of each class, then the pixels predicted right and the pixels counted (not ignored)."""
    kept = histogram[..., : c + 3, :]  # the ignored targets' row left out
    classes = slice(2, c + 2)
    if _is_torch(kept):
        inter = kept[..., classes, classes].diagonal(dim1=-2, dim2=-1).clone()
    else:
        inter = np.diagonal(kept[..., classes, classes], axis1=-2, axis2=-1).copy()
    counted = kept.sum((-2, -1))
    union = kept[..., classes, :].sum(-1) + kept[..., classes].sum(-2) - inter
    correct = inter.sum(-1) + kept[..., 0].sum(-1)
    return inter, union, correct, counted


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
    return _iou_per_class(pred, target, num_classes, ignore_index)


def _iou_per_class(pred: Array, target: Array, num_classes: int, ignore_index: int | None) -> Array:
    inter, union, _, _ = _from_histogram(_batch_histogram(pred, target, num_classes, ignore_index), num_classes)
    return _ratio(inter, union)


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
    return _nanmean(_iou_per_class(pred, target, num_classes, ignore_index))


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


def _like(batch: Array, state: Array) -> Array:
    """``batch`` (a float64 count vector) where ``state`` is: a NumPy array, or a tensor on ``state``'s device."""
    if _is_torch(state):
        import torch

        return torch.as_tensor(batch, dtype=torch.float64, device=state.device)
    return batch.cpu().numpy() if _is_torch(batch) else batch


class IoUMeter:
    """Streaming IoU: ``update(pred, target)`` per batch, then ``compute()``; ``reset()`` starts over.

    The counts stay on the device of the inputs (no host sync in ``update``): the first ``update``
    after construction or ``reset()`` decides where (NumPy, or a tensor on the batch's device), and
    later batches of the other kind, or on another device, have their counts copied there (a
    tensor's to the host for NumPy counts, which waits for its device). Under
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
        self.num_classes = check_count(num_classes, "num_classes", 1)
        self.ignore_index = check_ignore(ignore_index, "ignore_index")
        self.process_group, self.sync = process_group, check_flag(sync, "sync")
        self.reset()

    def reset(self) -> None:
        """Forget every count: the next ``compute()`` needs an ``update()`` first."""
        # One float64 vector (exact for counts below 2**53), so a rank sync is one all_reduce:
        # intersection [C], union [C], per-class image IoU sums [C], per-class image counts [C],
        # then the sum of per-image mIoU, the count of images with a valid pixel, correct pixels and valid pixels.
        self.state: Array | None = None

    def update(self, pred: Array, target: Array) -> None:
        """Add a batch: ``pred`` and ``target`` are ``[B, *spatial]`` class maps (NumPy or torch), or ``[N]``
        points of one scene."""
        inter, union, correct, counted = _image_counts_of(pred, target, self.num_classes, self.ignore_index, True)
        image_class = _ratio(inter, union)  # [B, C], NaN where the class occurs in neither
        occurs = (~image_class.isnan()).sum(0) if _is_torch(image_class) else (~np.isnan(image_class)).sum(0)
        counts = [inter.sum(0), union.sum(0), _nansum0(image_class), occurs]
        image_miou = _nanmean(image_class, axis=1, empty=np.nan)  # NaN: an image with no valid pixel, left out
        scored = ~image_miou.isnan() if _is_torch(image_miou) else ~np.isnan(image_miou)
        scalars = [_nansum0(image_miou), scored.sum(), correct.sum(), counted.sum()]
        batch = _float64_vector(counts + scalars, like=image_class)
        self.state = batch if self.state is None else self.state + _like(batch, self.state)

    def _syncs(self) -> bool:
        """Whether ``compute()`` sums the counts of the ranks of a ``torch.distributed`` process group."""
        if not self.sync or "torch" not in sys.modules:  # torch not imported: no process group either
            return False
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized()

    def _synced(self, state: Array | None) -> Array:
        """The counts of every rank, whatever kind the batches came as: they go through a tensor on the group's
        device (a GPU for NCCL, CPU counts too) and come back in their own kind and device; a rank with no
        update adds zeros. The ranks' class counts are compared first: vectors of different lengths would
        fail inside the collective (gloo aborts the process) or hang."""
        import torch
        import torch.distributed as dist

        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend(self.process_group) == "nccl" else "cpu"
        updated, state = state is not None, np.zeros(4 * self.num_classes + 4) if state is None else state
        length = torch.tensor([state.shape[0], -state.shape[0], updated], dtype=torch.int64, device=device)
        dist.all_reduce(length, op=dist.ReduceOp.MAX, group=self.process_group)
        if not length[2]:  # (the same answers on every rank: each raises)
            raise RuntimeError("IoUMeter.compute() called before any update() on any rank of the process group")
        if length[0] != -length[1]:
            classes = sorted({(int(length[0]) - 4) // 4, (-int(length[1]) - 4) // 4})
            raise ValueError(
                f"IoUMeter: the ranks of the process group count different numbers of classes (num_classes "
                f"from {classes[0]} to {classes[1]}); every rank's meter must have the same num_classes"
            )
        total = torch.as_tensor(state, dtype=torch.float64).to(device, copy=True)
        dist.all_reduce(total, group=self.process_group)
        return total.to(state.device) if _is_torch(state) else total.cpu().numpy()

    def compute(self) -> dict[str, Any]:
        """``dataset_miou``, ``per_image_miou``, ``per_class_image_miou``, ``pixel_accuracy`` and ``per_class`` IoU.

        Under ``torch.distributed`` a rank that had no batch adds no count (and takes part in the sum)."""
        if self._syncs():
            state = self._synced(self.state)
        elif self.state is None:
            raise RuntimeError("IoUMeter.compute() called before any update()")
        else:
            state = self.state
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


def _image_counts(pred: Any, label: Any, num_classes: int, ignore: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(intersection, union)`` ``[C]`` of one image (any shape) as NumPy counts."""
    _check_dense(pred, "preds")
    _check_dense(label, "labels")
    pred, label = (x if _is_torch(x) else _as_numpy(x, n) for x, n in ((pred, "preds"), (label, "labels")))
    if tuple(pred.shape) != tuple(label.shape):
        raise ValueError(
            f"each image of preds and labels must have one shape; got {list(pred.shape)} and {list(label.shape)}"
        )
    one_image = (pred.reshape(1, -1), label.reshape(1, -1))  # (a tensor stays on its device)
    histogram = _batch_histogram(*one_image, num_classes, ignore, ("preds", "labels"))
    intersection, union, _, _ = _from_histogram(histogram, num_classes)
    return _as_numpy(intersection, "intersection"), _as_numpy(union, "union")


def _images(preds: Any, labels: Any, per_image: bool) -> list[tuple[Any, Any]]:
    """The pairs of images of ``preds`` and ``labels`` (the batch as one image without ``per_image``); as many
    of each: the original's ``zip`` left the longer one's last images out without a word."""
    if not check_flag(per_image, "per_image"):
        return [(preds, labels)]
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(f"preds and labels must hold as many images; got {len(preds)} and {len(labels)}")
    return list(zip(preds, labels))


def _check_empty(EMPTY: object) -> float:
    """The score of an image with an empty union: a real number."""
    if isinstance(EMPTY, (bool, np.bool_)) or not isinstance(EMPTY, (int, float, np.integer, np.floating)):
        raise TypeError(f"EMPTY must be a real number (the IoU of an empty union); got {EMPTY!r}")
    return float(EMPTY)


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
    ignore = check_ignore(ignore, "ignore")
    EMPTY = _check_empty(EMPTY)
    ious = []
    for pred, label in _images(preds, labels, per_image):
        # The original counts label 1 in the union whatever ``ignore`` is: ``ignore=1`` ignores nothing.
        intersection, union = _image_counts(pred, label, 2, None if ignore == 1 else ignore)
        ious.append(EMPTY if not union[1] else float(intersection[1]) / float(union[1]))
    return 100 * float(np.mean(ious)) if ious else 0.0  # no image: 0, as the original's mean(empty=0)


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
    C = check_count(C, "C", 1)
    ignore = check_ignore(ignore, "ignore")
    EMPTY = _check_empty(EMPTY)
    ious = []
    for pred, label in _images(preds, labels, per_image):
        intersection, union = _image_counts(pred, label, C, ignore)
        ious.append(
            [EMPTY if not union[i] else float(intersection[i]) / float(union[i]) for i in range(C) if i != ignore]
        )
    return 100 * np.array([np.mean(per_class) for per_class in zip(*ious)])
