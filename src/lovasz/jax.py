"""Lovász-Softmax and Lovász hinge losses for JAX, as pure functions.

Channels-first ``[B, C, *spatial]`` by default, as in :mod:`lovasz.torch`; the
``axis`` argument names the channel axis (``axis=-1`` for channels-last).
Every (set, class) row goes through one sort, by the engines of :mod:`lovasz._jax_rows`: on a
CPU, float32 rows go to the C kernel of :mod:`lovasz.torch` through a host callback that reads and
writes XLA's buffers in place (``jax.pure_callback`` on JAX without ``buffer_callback``);
elsewhere, and in float64, through sorts in JAX, the gradient flowing into the sorted errors.
There is no Python branch on array values and no data-dependent shape (ignored
pixels are masked, or on a CPU dropped inside the kernel's callback), so the losses
work under ``jax.jit``, ``jax.grad`` and ``jax.vmap``. The Jaccard steps are computed
in closed form.

Argument order: ``(prediction, labels)``, as in the original PyTorch code;
Keras losses (:mod:`lovasz.keras`) take ``(y_true, y_pred)``.

Reference: M. Berman, A. Rannen Triki, M. B. Blaschko, "The Lovász-Softmax loss",
CVPR 2018, arXiv:1705.08790.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from lovasz import _jax_distributed as D
from lovasz import _jax_rows as R
from lovasz import _validation as V

__all__ = ["lovasz_grad", "lovasz_softmax", "lovasz_hinge", "lovasz_multilabel", "exportable"]

Classes = Union[str, Sequence[int]]
Weights = Optional[Union[ArrayLike, Sequence[float]]]


# ----------------------------------------------------------------------------- checks


def _to_array(x: Any, name: str, what: str) -> jax.Array:
    if type(x).__module__.startswith("jax.experimental.sparse"):  # BCOO, BCSR
        raise TypeError(
            f"{name} must be a dense array; got a sparse {type(x).__name__}: pass its .todense(), or, for a "
            "sparse voxel grid, its stored voxels as points (values [N, ...] with segment_ids=)"
        )
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError):
        dtype = f" of dtype {x.dtype}" if hasattr(x, "dtype") else ""
        raise TypeError(f"{name} must be {what}; got {type(x).__name__}{dtype}") from None


def _check_prediction(x: Any, name: str) -> jax.Array:
    x = _to_array(x, name, "a floating-point array")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return x


def _check_labels(labels: Any, name: str) -> jax.Array:
    """Integer, bool or float labels; floats must hold whole numbers, checked as the label range is."""
    _check_fits_32_bits(labels, name)
    labels = _to_array(labels, name, "an array of class indices")
    if not (
        jnp.issubdtype(labels.dtype, jnp.integer)
        or jnp.issubdtype(labels.dtype, jnp.floating)
        or labels.dtype == jnp.bool_
    ):
        raise TypeError(
            f"{name} must be an array of integer class indices (not one-hot, not probabilities); "
            f"got dtype {labels.dtype}"
        )
    return labels.astype(jnp.int32) if labels.dtype == jnp.bool_ else labels


def _check_fits_32_bits(labels: Any, name: str) -> None:
    """With ``jax_enable_x64`` off, ``jnp.asarray`` narrows 64-bit NumPy labels to 32 bits without a word: a
    label 2**32 + 1 became class 1 (past the range check), 1 + 1e-12 became a whole 1. Such values raise."""
    x64 = jax.dtypes.canonicalize_dtype(np.int64) == np.int64
    if x64 or not isinstance(labels, (np.ndarray, np.generic, list, tuple)):
        return
    try:
        values = np.asarray(labels)  # (a list of numbers: int64 or float64, as NumPy reads it)
    except (TypeError, ValueError):  # a ragged list: _to_array names it
        return
    if values.dtype.itemsize != 8:
        return
    if values.dtype.kind in "iu":
        info = np.iinfo(np.int32 if values.dtype.kind == "i" else np.uint32)
        if not values.size or info.min <= values.min() and values.max() <= info.max:  # (no mask: a third the time)
            return
        changed = (values < info.min) | (values > info.max)
    elif values.dtype.kind == "f":
        narrow = values.astype(np.float32)  # (changed into a whole number: 0.1 stays 0.1, refused as no class)
        changed = (narrow != values) & (narrow == np.round(narrow)) & ~np.isnan(values)
    else:
        return
    if np.any(changed):
        value = values[changed].flat[0]
        raise ValueError(
            f"{name} hold {value}, which 32 bits do not: JAX narrows 64-bit arrays with jax_enable_x64 off (enable "
            "it, or pass labels that int32 holds)"
        )


def _check_axis(axis: object, ndim: int) -> int:
    """The class axis of a prediction of rank ``ndim``: any but the batch axis."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int (the class axis: 1, or -1 for channels-last); got {axis!r}")
    if ndim >= 2 and not (-ndim <= axis < ndim and axis % ndim != 0):
        raise ValueError(
            f"axis must be a class axis of the rank-{ndim} prediction, in [1, {ndim - 1}] or "
            f"[{1 - ndim}, -1] (0 is the batch axis); got {axis}"
        )
    return int(axis)


def _check_values(
    labels: jax.Array, ok: jax.Array, valid: jax.Array | None, allowed: str, name: str, where: str = "non-ignored pixel"
) -> jax.Array | None:
    """Raise ``ValueError`` on a bad non-ignored label when the values are concrete; under a trace
    (jit, grad, vmap: also of concrete arrays a traced function closes over) nothing can raise, and
    this returns whether every label is good, for :func:`_nan_unless`."""
    bad = ~ok if valid is None else valid & ~ok
    if isinstance(bad, jax.core.Tracer):
        return ~jnp.any(bad)
    if bool(bad.any()):
        raise ValueError(f"{name} must be {allowed} at every {where}; found {labels[bad][0]}")
    return None


def _is_class(labels: jax.Array, num_classes: int, shape: tuple[int, ...]) -> jax.Array:
    """``labels == c`` for each class ``c``, the classes shaped ``shape``: in the labels' dtype, as strict dtype
    promotion wants (it compares no two dtypes), where that holds every class; else the labels widened."""
    if jnp.issubdtype(labels.dtype, jnp.integer) and jnp.iinfo(labels.dtype).max < num_classes - 1:
        labels = labels.astype(jnp.int32)  # (uint8 labels of 300 classes: none is above 255)
    elif jnp.issubdtype(labels.dtype, jnp.floating) and num_classes - 1 > 2 ** (jnp.finfo(labels.dtype).nmant + 1):
        labels = labels.astype(jnp.float32)  # (bfloat16 holds every whole number to 256 only: 257 is 256)
    return labels == jnp.arange(num_classes, dtype=labels.dtype).reshape(shape)


def _nan_unless(loss: jax.Array, *good: jax.Array | None, axis_name: D.AxisName = None) -> jax.Array:
    """``loss``, or NaN (its gradient too) where a traced check of :func:`_check_values` found a bad label:
    JAX's answer to an index out of range (``jnp.take_along_axis`` fills with NaN), where the loss would
    otherwise read a class 7 of 4 as background without a word. Where all are good, ``loss * 1``: the
    same bits. With ``axis_name`` a bad label on any device makes every device's loss NaN (the global
    batch's loss is one value, the same on every device, as ``shard_map``'s replication check wants)."""
    traced = [g for g in good if g is not None]
    if not traced:
        return loss
    ok = functools.reduce(jnp.logical_and, traced)
    if axis_name is not None:
        ok = jax.lax.pmin(ok.astype(jnp.int32), axis_name) > 0
    return loss * jnp.where(ok, 1, jnp.nan).astype(loss.dtype)


def _valid(labels: jax.Array, ignore: int | None) -> jax.Array | None:
    """Where ``labels`` do not hold ``ignore`` (:func:`V.ignore_held`: a value their dtype cannot hold, none)."""
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    ignore = V.ignore_held(ignore, jnp.iinfo(labels.dtype) if integer else None)
    return None if ignore is None else labels != ignore


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    """float64 stays float64; half precision (and float32) is computed in float32."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _segments(
    prediction: jax.Array,
    labels: jax.Array,
    segment_ids: ArrayLike | None,
    num_segments: int | None,
    per_image: bool,
    multilabel: bool,
    names: tuple[str, str],
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Points-first inputs of segments (point clouds) as one image of points, classes last: ``[1, N, C]`` /
    ``[1, N]``; where the loss is per segment, the points in segment order and the segments' ends ``[S]``.
    Last, where the ids are not known when traced, which points take part: those with an id in range (per
    segment, in some segment's run; the others come last), else None."""
    if segment_ids is None:
        if num_segments is not None:
            raise TypeError("num_segments goes with segment_ids= (a segment index per point)")
        return prediction, labels, None, None
    if V.points_label_axis(prediction.shape, labels.shape, multilabel):
        labels = jnp.squeeze(labels, 1)
    V.points_layout(prediction.shape, labels.shape, multilabel, names, "with segment_ids=")
    num_points = prediction.shape[0]
    ids = _to_array(segment_ids, "segment_ids", "an integer array")
    if ids.shape != (num_points,) or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"segment_ids must be integers, one per point, shape ({num_points},); got {ids.shape} {ids.dtype}"
        )
    if ids.dtype.itemsize < 4:  # int8 ids against num_segments=128 wrapped: points fell out of their segments
        ids = ids.astype(jnp.int32)
    if num_segments is None:
        top = ids.max() if num_points else -1
        if isinstance(top, jax.core.Tracer):
            raise TypeError(
                "segment_ids= known only when traced (jax.jit, jax.vmap, jax.lax.scan) need a static num_segments= "
                "(as jax.ops.segment_sum does)"
            )
        if num_points and top < 0:
            raise ValueError(f"segment_ids must be in [0, num_segments); got only negative ones, the largest {top}")
        num_segments = int(top) + 1
    if isinstance(num_segments, jax.Array):  # a traced one has no value to size the segments by
        traced = isinstance(num_segments, jax.core.Tracer)
        what = "a traced array" if traced else f"an array of shape {num_segments.shape}"
        raise TypeError(f"num_segments must be a static int (a Python or NumPy int), not an array; got {what}")
    num_segments = V.check_count(num_segments, "num_segments")
    if num_segments == 0 and num_points:
        raise ValueError(f"num_segments=0 leaves the {num_points} points in no segment; there must be at least one")
    in_range = (ids >= 0) & (ids < num_segments)
    _check_values(ids, in_range, None, f"in [0, {num_segments - 1}]", "segment_ids", "point (ignored ones too)")

    if not per_image:  # all points one set, in the order given; under jit, those out of range take no part
        member = in_range if isinstance(in_range, jax.core.Tracer) else None
        return prediction[None], labels[None], None, member
    # Points in segment order: a stable sort of N where they are not in it already (the sort and the
    # gathers, forward and backward: 17 ms of 240,000 x 19 points of 12 scans); under jit, ids out of
    # range go last, in no segment.
    key = jnp.where(in_range, ids, num_segments)
    ends = jnp.cumsum(jnp.bincount(key, length=num_segments + 1)[:num_segments])

    def regroup(prediction: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        order = _stable_order(key, num_segments)
        return prediction[order], labels[order]

    in_order = jnp.all(key[1:] >= key[:-1])
    prediction, labels = jax.lax.cond(in_order, lambda *inputs: inputs, regroup, prediction, labels)
    # (the points in no segment, last, take no part, their values not even in a softmax's gradient)
    member = jnp.arange(num_points) < ends[-1] if isinstance(in_range, jax.core.Tracer) and num_points else None
    return prediction[None], labels[None], ends, member


def _stable_order(key: jax.Array, top: int) -> jax.Array:
    """The stable order of ``key [N]``, integers in ``[0, top]``: one sort of ``key * N + position`` where it
    fits int32 (of 240,000 points: 9 ms on a CPU, where XLA's stable argsort of the key takes 41)."""
    num_points = key.shape[0]
    if not isinstance(num_points, int) or (top + 1) * num_points >= 2**31:  # (jax.export's symbolic sizes)
        return jnp.argsort(key, stable=True)
    return jax.lax.sort(key.astype(jnp.int32) * num_points + jnp.arange(num_points, dtype=jnp.int32)) % num_points


def _in_some_segment(valid: jax.Array | None, member: jax.Array | None) -> jax.Array | None:
    """``valid [1, K or 1, N]`` less the points that :func:`_segments` found in no segment (``member [N]``)."""
    if member is None:
        return valid
    member = member.reshape(1, 1, -1)
    return member if valid is None else valid & member


def _as_weights(weights: Weights, num_classes: int, dtype: DTypeLike) -> tuple[jax.Array | None, jax.Array | None]:
    """``weights`` as ``[C]`` in ``dtype``, and, for a traced weight (a learned one, whose values are the trace's),
    whether its values are good, for :func:`_nan_unless` (else None: numbers are checked here)."""
    if weights is None:
        return None, None
    try:
        w = None if isinstance(weights, (str, bytes)) else jnp.asarray(weights)
    except (TypeError, ValueError, OverflowError):  # ragged lists, dicts, an int past int64's range
        w = None
    if w is None or not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)):
        raise TypeError(f"weights must be [{num_classes}] real numbers (one weight per class) or None; got {weights!r}")
    V.check_weights_shape(w.shape, num_classes)
    if isinstance(w, jax.core.Tracer):  # nothing can raise: a negative or NaN weight makes the loss NaN
        return w.astype(dtype), jnp.all(jnp.isfinite(w) & (w >= 0))
    # numbers: checked, scaled and made on the host (XLA's CPU kernels flush a float32 1e-39 to zero)
    values = np.asarray(w if isinstance(weights, jax.Array) else weights, dtype=np.float64).reshape(w.shape)
    scale = V.check_weight_values(values.reshape(-1))
    return (jnp.asarray(values * scale, dtype=dtype) if scale != 1 else w.astype(dtype)), None


def _lovasz_classes(
    pred: jax.Array,
    fg: jax.Array,
    valid: jax.Array | None,
    hinge: bool,
    classes: str | tuple[int, ...],
    per_image: bool,
    weights: jax.Array | None,
    reduction: str,
    ends: jax.Array | None = None,
    axis_name: D.AxisName = None,
) -> jax.Array:
    """Loss of ``pred [B, K, N]`` against ``fg [B, K, N]``; ``valid`` broadcasts to them. With ``ends``,
    ``B`` is 1 and the sets are the segments of the points (:mod:`lovasz._jax_rows`). With
    ``axis_name``, the batch is every device's along it (:mod:`lovasz._jax_distributed`)."""
    # (a symbolic batch, jax.export's, may be 1 or more: the layout as it is, the same loss)
    one_set = not per_image and ends is None and axis_name is None and isinstance(pred.shape[0], int)
    if one_set and pred.shape[0] > 1 and pred.shape[2] == 1:
        # points [B, K] of one set (Pointcept's call, [N, C]): the layout of one image of B pixels, [1, K, B],
        # where the kernel reads each row at once, not B runs of one pixel (240,000 x 19 points: 152 -> 92 ms)
        pred, fg = jnp.swapaxes(pred, 0, 2), jnp.swapaxes(fg, 0, 2)
        valid = None if valid is None else jnp.swapaxes(valid, 0, 2)
    if valid is not None:
        fg = fg & valid  # (valid [B, 1 or K, N], as grid_rows wants it)
    if not isinstance(classes, str):  # a list may repeat a class: each repetition counts
        ids = np.asarray(classes)
        pred, fg = pred[:, ids], fg[:, ids]
        if valid is not None and valid.shape[1] > 1:  # (a pixel's validity in every row stays as it is)
            valid = valid[:, ids]
        weights = None if weights is None else weights[ids]
    grid = valid is not None and ends is None and (axis_name is None or per_image) and R.grid_applies(pred, valid)
    if valid is not None and not grid:  # a NaN at an ignored pixel must reach neither the loss nor the gradient
        pred = jnp.where(valid, pred, 0)  # (the grid path uses no ignored pixel's value, gives each a zero gradient)
    num_rows = pred.shape[1]
    num_sets = -1
    if not num_rows:  # no class (a multi-label of no channel): no row to sort, no device's rows to gather
        num_sets = (ends.shape[0] if ends is not None else pred.shape[0]) if per_image else 1
        loss, present = jnp.zeros((num_sets, 0), pred.dtype), jnp.zeros((num_sets, 0), bool)
    elif ends is not None:
        errors = R.errors_of(pred, fg, hinge)
        loss, present = R.segment_kernel(errors[0], fg[0], None if valid is None else valid[0], ends)
    elif axis_name is not None and not per_image:  # one set of every device's pixels
        loss, present = D.union_rows(
            R.errors_of(pred, fg, hinge), R.pixel_codes(fg, valid), axis_name, R.split_rows_loss
        )
    elif grid and valid is not None:  # the kernel's work follows the valid pixels
        loss, present = R.grid_rows(pred, fg, valid, hinge, per_image)
    else:
        loss = R.lovasz_kernel(R.errors_of(pred, fg, hinge), fg, valid, per_image)
        present = R.as_rows(fg, per_image).any(-1)

    loss, present = loss.reshape(num_sets, num_rows), present.reshape(num_sets, num_rows)
    w = jnp.ones_like(loss) if weights is None else jnp.broadcast_to(weights, loss.shape)
    if classes == "present":
        w = w * present.astype(w.dtype)
    return _reduced(R.class_mean(loss, w), reduction, per_image, axis_name)


def _reduced(per_set: jax.Array, reduction: str, per_image: bool, axis_name: D.AxisName = None) -> jax.Array:
    """The loss of the sets ``[S]`` (the images, or the batch as one set) as ``reduction`` asks."""
    if reduction == "none":
        return per_set if per_image else per_set[0]
    if axis_name is not None and per_image:  # the images (segments) of every device
        return D.reduce_images(per_set, reduction, axis_name)
    # the mean of no image (an empty batch) is 0, as for an all-ignored one
    return per_set.sum() if reduction == "sum" else per_set.sum() / max(per_set.size, 1)


def _softmax_over_classes(x: jax.Array) -> jax.Array:
    """The softmax over axis 1 of ``[B, C, N]``, taken with the classes as the minor axis: XLA's CPU softmax
    over a major axis is slow (forward and backward of 4 x 19 x 120,000: 72 ms, against 41 this way; of
    points-first input seen as ``[1, C, N]``, whose transposes cancel here, 149 ms against 18). Points
    ``[B, C, 1]`` as the 2-D ``[B, C]``: XLA's CPU softmax of the 3-D layout with its axis of one is slow.
    """
    if x.shape[2] == 1:
        return jax.nn.softmax(x.reshape(x.shape[:2]), axis=-1).reshape(x.shape)
    return jnp.swapaxes(jax.nn.softmax(jnp.swapaxes(x, 1, -1), axis=-1), 1, -1)


def _channels_first(x: jax.Array, axis: int) -> jax.Array:
    return jnp.moveaxis(x, axis, 1) if axis % x.ndim != 1 else x


# ----------------------------------------------------------------------------- public functions


@D.auto_on_explicit_meshes
def lovasz_softmax(
    probas: ArrayLike,
    labels: ArrayLike,
    classes: Classes = "present",
    per_image: bool = False,
    ignore: int | None = None,
    *,
    from_logits: bool = False,
    weights: Weights = None,
    reduction: str = "mean",
    axis: int = 1,
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
    axis_name: D.AxisName = None,
) -> jax.Array:
    r"""Multi-class Lovász-Softmax loss: a convex surrogate of ``1 - IoU`` averaged over classes.

    For each class the errors ``|[y = c] - p(c)|`` are sorted in decreasing order and
    the loss is their Lovász extension of the Jaccard loss (Algorithm 1 of the paper).

    Args:
        probas: ``[B, C, *spatial]`` class probabilities (logits with ``from_logits``), the
            class axis at ``axis``; or ``[B, *spatial]`` sigmoid output, read as ``[1 - p, p]``.
            Note the order: ``(probas, labels)``, unlike Keras' ``(y_true, y_pred)``.
        labels: ``[B, *spatial]`` (or ``[B, *spatial, 1]``) class indices in ``[0, C - 1]``, or
            ``ignore``: integers, or floats holding whole numbers. Out-of-range and non-whole
            labels raise ``ValueError`` when the values are known; under ``jax.jit`` (no exception can
            be raised there) they make the loss NaN, as JAX fills an out-of-range gather.
        classes: ``'present'``, ``'all'`` or a list of class indices to average over.
        per_image: the loss of each image, averaged; otherwise the batch is one set.
        ignore: label value of pixels that take no part (e.g. 255).
        from_logits: ``probas`` are logits; a softmax (sigmoid for one channel) is taken inside.
        weights: ``[C]`` per-class weights for the class average.
        reduction: ``'mean'`` / ``'sum'`` over images, or ``'none'`` for ``[B]`` with ``per_image``
            (without it the batch is one set and the result is 0-d).
        axis: the class axis of ``probas`` (1, or -1 for channels-last).
        segment_ids: for point clouds and other ragged sets, ``[N]`` each point's segment (scene),
            as in ``jax.ops.segment_sum``. Then ``probas`` is points-first, ``[N, C]`` (or ``[N]``
            for one channel), ``labels`` is ``[N]``, and ``per_image=True`` means one set per
            segment (``reduction='none'``: ``[num_segments]``); without it all points are one set.
            Exact: each segment's loss equals the dense loss of its points alone; a segment
            with no valid point gets 0. Points need not be grouped by segment.
        num_segments: the number of segments, a static int (required under ``jax.jit``; else
            ``max(segment_ids) + 1``). Ids outside ``[0, num_segments)`` raise where the values
            are known; under ``jax.jit`` such points belong to no segment and take no part.
        axis_name: inside ``jax.shard_map`` or ``jax.pmap`` whose mapped axis (a name, or a
            tuple of names, as ``jax.lax`` collectives take it) splits the batch: the loss of
            the global batch. Without ``per_image`` every device's pixels form one set and
            ``classes='present'`` is decided over all of them; with it, the mean (sum) is over
            every image of every device (``reduction='none'``: this device's images). The
            value is the same on every device, and each device's gradient is its slice of the
            single-device gradient (taken inside the mapped function, or outside a
            ``shard_map`` with its default ``check_vma=True``). With ``segment_ids``, each
            device's segments are its own. Under plain ``jax.jit`` with sharded inputs no
            ``axis_name`` is needed. See the multi-device page of the docs.

    Returns:
        A 0-d array (``[B]`` with ``per_image`` and ``reduction='none'``) in the dtype of ``probas``.

    Example:
        >>> probas = jnp.array([[[0.9, 0.4], [0.1, 0.6]]])  # [B=1, C=2, N=2]
        >>> round(float(lovasz_softmax(probas, jnp.array([[0, 1]]))), 6)
        0.325
    """
    per_image, from_logits = V.check_flag(per_image, "per_image"), V.check_flag(from_logits, "from_logits")
    probas = _check_prediction(probas, "probas")
    labels = _check_labels(labels, "labels")
    axis = _check_axis(axis, probas.ndim)  # of the prediction given (points [N, C]: 1 or -1)
    probas, labels, ends, member = _segments(
        probas, labels, segment_ids, num_segments, per_image, False, ("probas", "labels")
    )
    axis_name = D.check_axis_name(axis_name)
    axis = -1 if segment_ids is not None else axis  # (points [1, N, C] from _segments)
    extra = V.extra_label_axis(labels.shape, [probas.shape, V.without_axis(probas.shape, axis)])
    if extra is not None:
        labels = jnp.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives them, or [B, 1, *spatial]
    if probas.ndim >= 2 and probas.ndim == labels.ndim + 1 and probas.shape[axis] == 1:
        # one channel: the foreground probability; points [N, 1]: N images of one pixel
        if probas.ndim == 2:
            labels = labels[:, None]
        else:
            probas = jnp.squeeze(probas, axis)
    sigmoid, num_classes = V.softmax_layout(probas.shape, labels.shape, axis)
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    dtype = _compute_dtype(probas)
    w, good_weights = _as_weights(weights, num_classes, dtype)

    batch, pixels = labels.shape[0], math.prod(labels.shape[1:])  # no -1: the batch may be empty
    lab = labels.reshape(batch, 1, pixels)
    valid = _in_some_segment(_valid(lab, ignore), member)
    good = [good_weights]
    if jnp.issubdtype(lab.dtype, jnp.floating):  # class indices as floats: whole numbers only (1.5 is no class)
        good.append(_check_values(lab, lab == jnp.round(lab), valid, "whole numbers (class indices)", "labels"))
    good.append(_check_values(lab, (lab >= 0) & (lab < num_classes), valid, f"in [0, {num_classes - 1}]", "labels"))
    points_first = not sigmoid and axis % probas.ndim == probas.ndim - 1  # channels-last grids, points [N, C]
    if points_first and w is None and isinstance(classes, str) and axis_name is None:
        points = probas.astype(dtype).reshape(-1, num_classes)  # (a view: no copy, no transpose)
        if R.points_first_applies(points) and (ends is None or ends.shape[0]):  # (some points: some set)
            step = pixels if per_image else batch * pixels  # the sets: the segments, the images or the batch
            set_ends = ends if ends is not None else np.arange(step, batch * pixels + 1, step, dtype=np.int32)
            fg = _is_class(lab.reshape(1, -1), num_classes, (-1, 1))  # [C, N], class-major codes
            codes = R.pixel_codes(fg, None if valid is None else valid.reshape(1, -1))
            options = R.PointsOptions(from_logits, classes == "present")
            per_set = R.points_first_loss(points, codes, jnp.asarray(set_ends), options)
            return _nan_unless(_reduced(per_set, reduction, per_image), *good).astype(probas.dtype)  # (no axis_name)
    pred = probas.astype(dtype) if sigmoid else _channels_first(probas.astype(dtype), axis)
    pred = pred.reshape(batch, 1 if sigmoid else num_classes, pixels)
    if valid is not None and from_logits:  # a NaN logit at an ignored pixel must not reach the gradient
        pred = jnp.where(valid, pred, 0)  # (through the softmax's); _lovasz_classes guards the rest
    if sigmoid:
        pred = jax.nn.sigmoid(pred) if from_logits else pred
        pred = jnp.concatenate([1 - pred, pred], axis=1)
    elif from_logits:
        pred = _softmax_over_classes(pred)
    fg = _is_class(lab, num_classes, (1, -1, 1))
    loss = _lovasz_classes(pred, fg, valid, False, classes, per_image, w, reduction, ends, axis_name)
    return _nan_unless(loss, *good, axis_name=axis_name).astype(probas.dtype)


def _hinge_classes(
    pred: jax.Array,
    fg: jax.Array,
    valid: jax.Array | None,
    classes: str | tuple[int, ...],
    per_image: bool,
    weights: jax.Array | None,
    reduction: str,
    margin: str,
    symmetric: bool,
    ends: jax.Array | None = None,
    axis_name: D.AxisName = None,
) -> jax.Array:
    """The Lovász hinge with its variants: ``elu(m) + 1`` of the margins is the plain hinge at
    ``x' = -s elu(1 - s x)``; ``symmetric`` averages with the flipped problem, ``-x'`` against ``1 - y``."""
    if margin == "elu":
        if valid is not None:  # a NaN logit at an ignored pixel must not reach the gradient (through elu's)
            pred = jnp.where(valid, pred, 0)
        signs = jnp.where(fg, 1.0, -1.0).astype(pred.dtype)
        pred = -signs * jax.nn.elu(1 - signs * pred)
    loss = _lovasz_classes(pred, fg, valid, True, classes, per_image, weights, reduction, ends, axis_name)
    if symmetric:  # ~fg: the ignored pixels are left out again by valid
        flipped = _lovasz_classes(-pred, ~fg, valid, True, classes, per_image, weights, reduction, ends, axis_name)
        loss = (loss + flipped) / 2
    return loss


@D.auto_on_explicit_meshes
def lovasz_hinge(
    logits: ArrayLike,
    labels: ArrayLike,
    per_image: bool = True,
    ignore: int | None = None,
    *,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
    axis_name: D.AxisName = None,
) -> jax.Array:
    r"""Binary Lovász hinge loss: a convex surrogate of ``1 - IoU`` of the foreground.

    The errors are the hinge margins ``max(0, 1 - s x)`` with signs ``s = 2 y - 1``.

    Args:
        logits: ``[B, *spatial]`` or ``[B, 1, *spatial]`` raw scores (before any sigmoid).
            Note the order: ``(logits, labels)``, unlike Keras' ``(y_true, y_pred)``.
        labels: ``[B, *spatial]`` (or ``[B, *spatial, 1]``) binary masks, 0 or 1 (integer, bool
            or float), or ``ignore``.
        per_image: the loss of each image, averaged; otherwise the batch is one set.
        ignore: label value of pixels that take no part.
        reduction: ``'mean'`` / ``'sum'`` over images, or ``'none'`` for ``[B]`` with ``per_image``.
        margin: ``'relu'`` (``max(0, m)``) or ``'elu'`` (``elu(m) + 1``), of the margins ``m = 1 - s x``.
        symmetric: the mean with the loss of ``-logits`` against ``1 - labels``.
        segment_ids, num_segments: the segments of points-first ``logits [N]`` and ``labels [N]``;
            see :func:`lovasz_softmax`.
        axis_name: the mapped axis of ``jax.shard_map`` or ``jax.pmap`` that splits the batch:
            the loss of the global batch; see :func:`lovasz_softmax`.

    Returns:
        A 0-d array (``[B]`` with ``per_image`` and ``reduction='none'``) in the dtype of ``logits``.

    Example:
        >>> float(lovasz_hinge(jnp.array([[2.0, -1.0, 0.5]]), jnp.array([[1, 0, 1]])))
        0.25
    """
    per_image = V.check_flag(per_image, "per_image")
    logits = _check_prediction(logits, "logits")
    labels = _check_labels(labels, "labels")
    if segment_ids is not None:
        V.hinge_points(logits.shape, "with segment_ids=")
    logits, labels, ends, member = _segments(
        logits, labels, segment_ids, num_segments, per_image, False, ("logits", "labels")
    )
    if segment_ids is not None and logits.ndim == 3 and logits.shape[-1] == 1:
        logits = logits[..., 0]  # points [1, N, 1]: one score per point
    axis_name = D.check_axis_name(axis_name)
    s = logits.shape
    extra = V.extra_label_axis(labels.shape, [s, V.without_axis(s, 1)] if len(s) >= 2 and s[1] == 1 else [s])
    if extra is not None:
        labels = jnp.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives masks, or [B, 1, *spatial]
    V.hinge_layout(logits.shape, labels.shape)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric)
    layout = (labels.shape[0], 1, math.prod(labels.shape[1:]))  # no -1: the batch may be empty
    pred = logits.astype(_compute_dtype(logits)).reshape(layout)
    lab = labels.reshape(layout)
    valid = _in_some_segment(_valid(lab, ignore), member)
    good = _check_values(lab, (lab == 0) | (lab == 1), valid, "0 or 1", "labels")
    loss = _hinge_classes(pred, lab == 1, valid, "all", per_image, None, reduction, margin, symmetric, ends, axis_name)
    return _nan_unless(loss, good, axis_name=axis_name).astype(logits.dtype)


@D.auto_on_explicit_meshes
def lovasz_multilabel(
    logits: ArrayLike,
    targets: ArrayLike,
    classes: Classes = "present",
    per_image: bool = True,
    ignore: int | None = None,
    *,
    from_logits: bool = True,
    weights: Weights = None,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    axis: int = 1,
    segment_ids: ArrayLike | None = None,
    num_segments: int | None = None,
    axis_name: D.AxisName = None,
) -> jax.Array:
    r"""Multi-label Lovász loss: one binary Lovász loss per channel, averaged over channels.

    With ``from_logits`` (the default) each channel gets the Lovász hinge of its
    logits; otherwise ``logits`` are probabilities and each channel gets the
    Lovász-Softmax term of its foreground.

    Args:
        logits: ``[B, C, *spatial]``, the channel axis at ``axis``.
        targets: 0/1 masks of the shape of ``logits``, or ``ignore``.
        classes: ``'present'`` (channels with a positive target in the set), ``'all'`` or a list.
        per_image, ignore, weights, reduction, axis: as in :func:`lovasz_softmax`.
        margin, symmetric: the hinge's variants, as in :func:`lovasz_hinge` (``from_logits`` only).
        segment_ids, num_segments: the segments of points-first ``logits [N, C]`` and
            ``targets [N, C]``; see :func:`lovasz_softmax`.
        axis_name: the mapped axis of ``jax.shard_map`` or ``jax.pmap`` that splits the batch:
            the loss of the global batch, ``'present'`` channels decided over all of it; see
            :func:`lovasz_softmax`.

    Returns:
        A 0-d array (``[B]`` with ``per_image`` and ``reduction='none'``) in the dtype of ``logits``.

    Example:
        >>> targets = jnp.array([[[1, 0], [0, 1]]])  # [B=1, C=2, N=2]
        >>> float(lovasz_multilabel(jnp.zeros((1, 2, 2)), targets))
        1.0
        >>> float(lovasz_multilabel(jnp.array([[[2.0, -1.0], [-3.0, 1.0]]]), targets))
        0.0
    """
    per_image, from_logits = V.check_flag(per_image, "per_image"), V.check_flag(from_logits, "from_logits")
    logits = _check_prediction(logits, "logits")
    targets = _check_labels(targets, "targets")
    names = ("logits", "targets")
    axis = _check_axis(axis, logits.ndim)  # of the logits given (points [N, C]: 1 or -1)
    logits, targets, ends, member = _segments(logits, targets, segment_ids, num_segments, per_image, True, names)
    axis_name = D.check_axis_name(axis_name)
    axis = -1 if segment_ids is not None else axis  # (points [1, N, C] from _segments)
    if logits.ndim >= 2 and logits.shape == targets.shape:
        logits, targets = _channels_first(logits, axis), _channels_first(targets, axis)
    num_classes = V.multilabel_layout(logits.shape, targets.shape)
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric, from_logits)
    dtype = _compute_dtype(logits)
    w, good_weights = _as_weights(weights, num_classes, dtype)
    layout = (logits.shape[0], num_classes, math.prod(logits.shape[2:]))  # no -1: the batch may be empty
    pred = logits.astype(dtype).reshape(layout)
    tgt = targets.reshape(layout)
    valid = _in_some_segment(_valid(tgt, ignore), member)
    good = _check_values(tgt, (tgt == 0) | (tgt == 1), valid, "0 or 1", "targets")
    if from_logits:
        fg = tgt == 1
        loss = _hinge_classes(pred, fg, valid, classes, per_image, w, reduction, margin, symmetric, ends, axis_name)
    else:
        loss = _lovasz_classes(pred, tgt == 1, valid, False, classes, per_image, w, reduction, ends, axis_name)
    return _nan_unless(loss, good, good_weights, axis_name=axis_name).astype(logits.dtype)


@contextlib.contextmanager
def exportable() -> Iterator[None]:
    """Trace the losses so that ``jax.export`` can serialize them: call ``jax.export.export`` inside.

    On a CPU the losses hand float32 rows to the C kernel through a host callback, which ``jax.export``
    refuses ("serialization of host_callbacks is not yet implemented"). Inside this context they sort
    their rows in XLA on every platform instead (the sorts used on a GPU): the same values to float32
    rounding, ties in the same order, slower on a CPU. Clears JAX's caches on the way in and out, so
    that no trace made outside is reused inside, or the other way round: use it around the export, not
    around a training loop.

    Example:
        >>> probas = jnp.array([[[0.9, 0.4], [0.1, 0.6]]])  # [B=1, C=2, N=2]
        >>> loss_fn = jax.jit(lambda p: lovasz_softmax(p, jnp.array([[0, 1]])))
        >>> with exportable():
        ...     exported = jax.export.export(loss_fn, platforms=("cpu", "cuda"))(probas)
        >>> exported.platforms
        ('cpu', 'cuda')
    """
    with R.without_callbacks():
        yield


def lovasz_grad(gt_sorted: ArrayLike) -> jax.Array:
    """Gradient of the Lovász extension w.r.t. errors sorted in decreasing order (Algorithm 1).

    ``gt_sorted`` is ``[P]`` 0/1 ground truth in the order of the sorted errors; the
    result ``[P]`` holds ``J(k) - J(k-1)`` (float64 for float64 input, else float32): of bool
    input in closed form from the counts; of numbers by the original's formula, in float (floats
    differentiable), taking soft labels and integers other than 0 and 1 as it does.

    Example:
        >>> [round(float(g), 4) for g in lovasz_grad(jnp.array([1, 0, 1]))]
        [0.5, 0.1667, 0.3333]
    """
    gt_sorted = jnp.asarray(gt_sorted)
    if gt_sorted.ndim != 1:
        raise ValueError(f"gt_sorted must be a 1-D array; got shape {list(gt_sorted.shape)}")
    dtype = jnp.float64 if gt_sorted.dtype == jnp.float64 else jnp.float32
    if gt_sorted.dtype != jnp.bool_:  # (rounded to 0/1 before: soft labels lost their values)
        gt = gt_sorted.astype(dtype)  # (float32 unless JAX has float64 enabled: the original's rounding)
        total = gt.sum()
        jaccard = 1 - (total - jnp.cumsum(gt)) / (total + jnp.cumsum(1 - gt))
        return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return R.jaccard_steps(gt_sorted.astype(jnp.int32), dtype)
