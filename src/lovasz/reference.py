"""NumPy float64 reference of the Lovász losses: the oracle every backend is tested against.

Written for clarity, not speed: plain loops that follow Algorithm 1 of
Berman, Rannen Triki and Blaschko, "The Lovász-Softmax loss", CVPR 2018
(arXiv:1705.08790). Inputs are channels-first: probas ``[B, C, *spatial]``
(or ``[B, *spatial]`` foreground probabilities, read as the two classes
``[1 - p, p]``), labels ``[B, *spatial]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

from lovasz._validation import (
    check_classes,
    check_flag,
    check_hinge_variant,
    check_ignore,
    check_reduction,
    check_weight_values,
    check_weights_shape,
    hinge_layout,
    multilabel_layout,
    softmax_layout,
)

__all__ = [
    "jaccard_loss",
    "lovasz_grad",
    "lovasz_extension",
    "lovasz_hinge_flat",
    "lovasz_softmax_flat",
    "lovasz_softmax",
    "lovasz_hinge",
    "lovasz_multilabel",
]

Classes = Union[str, Sequence[int]]
Weights = Optional[Union[Sequence[float], np.ndarray]]
# A loss: a float64 scalar, or a float64 array of one loss per image (reduction='none').
Loss = Union[np.float64, npt.NDArray[np.float64]]


def jaccard_loss(mistakes: npt.ArrayLike, gt: npt.ArrayLike) -> float:
    """Jaccard loss ``1 - |gt ∩ pred| / |gt ∪ pred|`` of the set of ``mistakes`` (0/1 per pixel).

    The prediction is the ground truth with the mistaken pixels flipped. An empty
    union (no ground truth, no mistake) has loss 0.

    Example:
        >>> float(jaccard_loss(mistakes=[0, 1, 0], gt=[1, 1, 0]))  # predicted {0}, true {0, 1}
        0.5
    """
    mistakes = np.asarray(mistakes, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    pred = gt ^ mistakes
    union = np.sum(gt | pred)
    return 0.0 if union == 0 else 1.0 - np.sum(gt & pred) / union


def lovasz_grad(gt_sorted: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Gradient of the Lovász extension w.r.t. the errors sorted in decreasing order.

    ``grad[k] = J(k+1) - J(k)`` where ``J(k)`` is the Jaccard loss of the first ``k``
    sorted pixels taken as mistakes, and ``J(0) = 0``. ``gt_sorted`` is ``[P]`` 0/1, the
    result ``[P]`` float64.

    Example:
        >>> lovasz_grad([1, 0, 1]).round(4).tolist()
        [0.5, 0.1667, 0.3333]
    """
    gt_sorted = np.asarray(gt_sorted, dtype=np.float64)
    gts = gt_sorted.sum()
    grad = np.zeros(len(gt_sorted))
    previous = 0.0
    cum_fg = cum_bg = 0.0
    for k, g in enumerate(gt_sorted):
        cum_fg += g
        cum_bg += 1.0 - g
        intersection = gts - cum_fg
        union = gts + cum_bg
        jaccard = 1.0 - intersection / union
        grad[k] = jaccard - previous
        previous = jaccard
    return grad


def lovasz_extension(errors: npt.ArrayLike, gt: npt.ArrayLike) -> float:
    """Lovász extension of the Jaccard loss of ``gt`` at the error vector ``errors`` (both ``[P]``).

    Example:
        >>> round(lovasz_extension(errors=[0.1, 0.4, 0.6], gt=[1, 1, 0]), 4)
        0.3667
    """
    errors = np.asarray(errors, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if errors.size == 0:
        return 0.0
    order = np.argsort(-errors, kind="stable")
    return float(np.dot(errors[order], lovasz_grad(gt[order])))


def lovasz_extension_grad(errors: npt.ArrayLike, gt: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The (sub)gradient of :func:`lovasz_extension` w.r.t. ``errors`` that every backend returns.

    Where errors tie, the extension has no single gradient; every backend, like this oracle, sorts
    ties in pixel order (a stable sort), and each pixel gets the Jaccard step of its place in it.

    Example:
        >>> lovasz_extension_grad(errors=[0.5, 0.5, 0.0], gt=[0, 1, 1]).round(4).tolist()
        [0.3333, 0.3333, 0.3333]
    """
    errors = np.asarray(errors, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    order = np.argsort(-errors, kind="stable")
    grad = np.zeros(errors.shape)
    grad[order] = lovasz_grad(gt[order])
    return grad


def lovasz_hinge_flat(logits: npt.ArrayLike, labels: npt.ArrayLike, margin: str = "relu") -> float:
    """Binary Lovász hinge of flat ``logits [P]`` against 0/1 ``labels [P]``.

    The errors are ``max(0, m)`` of the margins ``m = 1 - s x`` (``s = 2y - 1``), or with
    ``margin='elu'`` ``elu(m) + 1`` (positive everywhere, smooth at 0).

    Example:
        >>> lovasz_hinge_flat([2.0, -1.0, 0.5], [1, 0, 1])
        0.25
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    signs = 2.0 * labels - 1.0
    m = 1.0 - logits * signs
    errors = np.maximum(m, 0.0) if margin == "relu" else np.where(m > 0, m, np.expm1(np.minimum(m, 0.0))) + 1.0
    return lovasz_extension(errors, labels)


def _symmetric(
    loss: Callable[..., Loss], logits: np.ndarray, labels: np.ndarray, ignore: int | None, **options: Any
) -> Loss:
    """The mean of ``loss(x, y)`` and ``loss(-x, 1 - y)`` (ignored labels stay ignored: as 2 in the flipped
    labels, which with ``ignore=0`` or ``1`` would otherwise take valid pixels flipped onto it out too)."""
    if ignore is None:
        flipped, flipped_ignore = 1 - labels, None
    else:
        flipped, flipped_ignore = np.where(labels == ignore, 2, 1 - np.asarray(labels, np.int64)), 2
    return (
        np.asarray(loss(logits, labels, ignore=ignore, **options))
        + np.asarray(loss(-logits, flipped, ignore=flipped_ignore, **options))
    ) / 2


def lovasz_softmax_flat(
    probas: npt.ArrayLike, labels: npt.ArrayLike, classes: Classes = "present", weights: Weights = None
) -> float:
    """Lovász-Softmax of flat ``probas [P, C]`` against ``labels [P]``: weighted mean over the classes.

    Example:
        >>> probas = np.array([[0.9, 0.1], [0.4, 0.6]])  # [P=2, C=2]
        >>> round(lovasz_softmax_flat(probas, np.array([0, 1])), 6)
        0.325
    """
    probas = np.asarray(probas, dtype=np.float64)
    labels = np.asarray(labels)
    num_classes = probas.shape[1]
    classes = check_classes(classes, num_classes)
    class_list = range(num_classes) if isinstance(classes, str) else classes
    total = weight_sum = 0.0
    for c in class_list:
        fg = (labels == c).astype(np.float64)
        if classes == "present" and fg.sum() == 0:
            continue
        w = 1.0 if weights is None else float(weights[c])
        total += w * lovasz_extension(np.abs(fg - probas[:, c]), fg)
        weight_sum += w
    return total / weight_sum if weight_sum > 0 else 0.0


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reduce(per_set: npt.ArrayLike, reduction: str, per_image: bool) -> Loss:
    """``reduction='none'``: the loss of each image with ``per_image``, else the batch's one loss. The mean of
    no image is 0, as in every backend."""
    per_set = np.asarray(per_set, dtype=np.float64)
    if reduction == "none":
        return per_set if per_image else per_set[0]
    return per_set.sum() if reduction == "sum" or not per_set.size else per_set.mean()


def _checked_weights(weights: Weights, num_classes: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    check_weights_shape(w.shape, num_classes)
    check_weight_values(w.tolist())
    return w


def _check_labels(labels: np.ndarray, allowed: np.ndarray, ignore: int | None, what: str, name: str) -> None:
    """As the backends: a non-ignored label must be ``what`` (a void 255 without ``ignore`` raises)."""
    bad = ~allowed if ignore is None else ~allowed & (labels != ignore)
    if bad.any():
        raise ValueError(f"{name} must be {what} at every non-ignored pixel; found {labels[bad].flat[0]}")


def _sets(*arrays: np.ndarray, per_image: bool) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield the sets the loss is computed on: each image, or the whole batch as one."""
    if per_image:
        yield from zip(*arrays)
    else:
        yield arrays


def lovasz_softmax(
    probas: npt.ArrayLike,
    labels: npt.ArrayLike,
    classes: Classes = "present",
    per_image: bool = False,
    ignore: int | None = None,
    *,
    from_logits: bool = False,
    weights: Weights = None,
    reduction: str = "mean",
) -> Loss:
    """Multi-class Lovász-Softmax; see :func:`lovasz.torch.lovasz_softmax` for the arguments. One
    foreground probability per pixel, ``[B, *spatial]`` or ``[B, 1, *spatial]``, is read as two classes.

    ``reduction='none'`` gives one loss per image with ``per_image``, else a 0-d array.

    Example:
        >>> probas = np.array([[[0.9, 0.4], [0.1, 0.6]]])  # [B=1, C=2, N=2]
        >>> round(float(lovasz_softmax(probas, np.array([[0, 1]]))), 6)
        0.325
    """
    probas = np.asarray(probas, dtype=np.float64)
    labels = np.asarray(labels)
    if probas.ndim >= 2 and probas.shape[1] == 1 and probas.ndim == labels.ndim + 1:
        # one channel: the foreground probability, as the backends read it; [N, 1]: N images of one pixel
        if probas.ndim == 2:
            labels = labels[:, None]
        else:
            probas = probas[:, 0]
    sigmoid, num_classes = softmax_layout(probas.shape, labels.shape)
    classes = check_classes(classes, num_classes)
    ignore = check_ignore(ignore)
    reduction = check_reduction(reduction)
    per_image, from_logits = check_flag(per_image, "per_image"), check_flag(from_logits, "from_logits")
    weights = _checked_weights(weights, num_classes)
    _check_labels(
        labels,
        (labels >= 0) & (labels < num_classes) & (labels == np.round(labels.astype(np.float64))),
        ignore,
        f"in [0, {num_classes - 1}]",
        "labels",
    )
    if sigmoid:
        if from_logits:
            probas = 1.0 / (1.0 + np.exp(-probas))
        probas = np.stack([1.0 - probas, probas], axis=1)
    elif from_logits:
        probas = _softmax(probas, axis=1)
    losses = []
    for prob, lab in _sets(probas, labels, per_image=per_image):
        prob = np.moveaxis(prob, 1 if not per_image else 0, -1).reshape(-1, num_classes)
        lab = lab.reshape(-1)
        keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
        losses.append(lovasz_softmax_flat(prob[keep], lab[keep], classes, weights))
    return _reduce(losses, reduction, per_image)


def lovasz_hinge(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    per_image: bool = True,
    ignore: int | None = None,
    *,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
) -> Loss:
    """Binary Lovász hinge; see :func:`lovasz.torch.lovasz_hinge` for the arguments.

    Example:
        >>> float(lovasz_hinge(np.array([[2.0, -1.0, 0.5]]), np.array([[1, 0, 1]])))
        0.25
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    hinge_layout(logits.shape, labels.shape)
    ignore = check_ignore(ignore)
    reduction = check_reduction(reduction)
    per_image = check_flag(per_image, "per_image")
    margin, symmetric = check_hinge_variant(margin, symmetric)
    _check_labels(labels, (labels == 0) | (labels == 1), ignore, "0 or 1", "labels")
    if symmetric:
        return _symmetric(lovasz_hinge, logits, labels, ignore, per_image=per_image, reduction=reduction, margin=margin)
    logits = logits.reshape(labels.shape)
    losses = []
    for log, lab in _sets(logits, labels, per_image=per_image):
        log, lab = log.reshape(-1), lab.reshape(-1)
        keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
        losses.append(lovasz_hinge_flat(log[keep], lab[keep], margin) if keep.any() else 0.0)
    return _reduce(losses, reduction, per_image)


def lovasz_multilabel(
    logits: npt.ArrayLike,
    targets: npt.ArrayLike,
    classes: Classes = "present",
    per_image: bool = True,
    ignore: int | None = None,
    *,
    weights: Weights = None,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    from_logits: bool = True,
) -> Loss:
    """One Lovász hinge per channel of ``logits [B, C, *spatial]``, averaged over the channels; without
    ``from_logits``, ``logits`` are probabilities and each channel's term is the Lovász extension of the
    errors ``|t - p|`` of its foreground.

    ``classes='present'`` averages over the channels with a positive target in the set.
    See :func:`lovasz.torch.lovasz_multilabel` for the arguments.

    Example:
        >>> targets = np.array([[[1, 0], [0, 1]]])  # [B=1, C=2, N=2]
        >>> float(lovasz_multilabel(np.zeros((1, 2, 2)), targets))
        1.0
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    num_classes = multilabel_layout(logits.shape, targets.shape)
    classes = check_classes(classes, num_classes)
    ignore = check_ignore(ignore)
    reduction = check_reduction(reduction)
    per_image = check_flag(per_image, "per_image")
    from_logits = check_flag(from_logits, "from_logits")
    margin, symmetric = check_hinge_variant(margin, symmetric, from_logits)
    weights = _checked_weights(weights, num_classes)
    _check_labels(targets, (targets == 0) | (targets == 1), ignore, "0 or 1", "targets")
    if symmetric:
        return _symmetric(
            lovasz_multilabel,
            logits,
            targets,
            ignore,
            classes=classes,
            per_image=per_image,
            weights=weights,
            reduction=reduction,
            margin=margin,
        )
    class_list = range(num_classes) if isinstance(classes, str) else classes
    losses = []
    for log, tgt in _sets(logits, targets, per_image=per_image):
        channel_axis = 0 if per_image else 1
        total = weight_sum = 0.0
        for c in class_list:
            lc = np.take(log, c, axis=channel_axis).reshape(-1)
            tc = np.take(tgt, c, axis=channel_axis).reshape(-1)
            keep = np.ones(tc.shape, bool) if ignore is None else tc != ignore
            lc, tc = lc[keep], tc[keep]
            if classes == "present" and not np.any(tc == 1):
                continue
            w = 1.0 if weights is None else float(weights[c])
            if not tc.size:
                loss = 0.0
            elif from_logits:
                loss = lovasz_hinge_flat(lc, tc, margin)
            else:
                loss = lovasz_extension(np.abs(tc - lc), tc)
            total += w * loss
            weight_sum += w
        losses.append(total / weight_sum if weight_sum > 0 else 0.0)
    return _reduce(losses, reduction, per_image)
