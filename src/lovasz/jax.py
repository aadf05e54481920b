"""Lovász-Softmax and Lovász hinge losses for JAX, as pure functions.

Channels-first ``[B, C, *spatial]`` by default, as in :mod:`lovasz.torch`; the
``axis`` argument names the channel axis (``axis=-1`` for channels-last).
Every (set, class) row goes through one sort. On a CPU, float32 rows go to the
C kernel of :mod:`lovasz.torch` through ``jax.pure_callback`` (a ``custom_vjp``
whose forward pass returns the gradient too, so backward is one multiply);
elsewhere, and in float64, through one ``jax.lax.sort`` that carries the
foreground flags along with the errors, the gradient flowing into the sorted
errors. ``jax.lax.platform_dependent`` picks one when the function is lowered.
There is no Python branch on array values and no data-dependent shape (ignored
pixels are masked), so the losses work under ``jax.jit``, ``jax.grad`` and
``jax.vmap``. The Jaccard steps are computed in closed form.

Argument order: ``(prediction, labels)``, as in the original PyTorch code;
Keras losses (:mod:`lovasz.keras`) take ``(y_true, y_pred)``.

Reference: M. Berman, A. Rannen Triki, M. B. Blaschko, "The Lovász-Softmax loss",
CVPR 2018, arXiv:1705.08790.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from lovasz import _ckernel as C
from lovasz import _jax_distributed as D
from lovasz import _validation as V

__all__ = ["lovasz_grad", "lovasz_softmax", "lovasz_hinge", "lovasz_multilabel"]

Classes = Union[str, Sequence[int]]
Weights = Optional[Union[ArrayLike, Sequence[float]]]


# ----------------------------------------------------------------------------- checks


def _to_array(x: Any, name: str, what: str) -> jax.Array:
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


def _check_values(labels: jax.Array, ok: jax.Array, valid: jax.Array | None, allowed: str, name: str) -> None:
    """Raise ``ValueError`` on a bad non-ignored label when the values are concrete (not traced)."""
    bad = ~ok if valid is None else valid & ~ok
    if isinstance(bad, jax.core.Tracer):
        return  # under jit / grad / vmap the values are unknown (also of concrete arrays a traced function closes over)
    if bool(bad.any()):
        raise ValueError(f"{name} must be {allowed} at every non-ignored pixel; found {labels[bad][0]}")


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
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Points-first inputs of segments (point clouds): the dense layout ``[1, C, N]`` / ``[1, N]`` with the
    points in segment order, and the segments' ends ``[S]`` where the loss is per segment."""
    if segment_ids is None:
        if num_segments is not None:
            raise TypeError("num_segments goes with segment_ids= (a segment index per point)")
        return prediction, labels, None
    V.points_layout(prediction.shape, labels.shape, multilabel, names, "with segment_ids=")
    num_points = prediction.shape[0]
    ids = _to_array(segment_ids, "segment_ids", "an integer array")
    if ids.shape != (num_points,) or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"segment_ids must be integers, one per point, shape ({num_points},); got {ids.shape} {ids.dtype}"
        )
    if num_segments is None:
        top = ids.max() if num_points else -1
        if isinstance(top, jax.core.Tracer):
            raise TypeError("under jax.jit, segment_ids= needs a static num_segments= (as jax.ops.segment_sum does)")
        num_segments = int(top) + 1
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)) or num_segments < 0:
        raise TypeError(f"num_segments must be a non-negative int (static); got {num_segments!r}")
    num_segments = int(num_segments)
    _check_values(ids, (ids >= 0) & (ids < num_segments), None, f"in [0, {num_segments - 1}]", "segment_ids")
    # Points in segment order: a stable sort of N where they are not in it already (the sort and its
    # gathers: ~85 ms of 4 x 120,000 x 19 forward and backward); under jit, ids out of range go last,
    # in no segment.
    key = jnp.where((ids >= 0) & (ids < num_segments), ids, num_segments)
    ends = jnp.cumsum(jnp.bincount(key, length=num_segments + 1)[:num_segments])

    def regroup(prediction: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        order = jnp.argsort(key, stable=True)
        return prediction[order], labels[order]

    in_order = jnp.all(key[1:] >= key[:-1])
    prediction, labels = jax.lax.cond(in_order, lambda *inputs: inputs, regroup, prediction, labels)
    prediction = prediction.T[None] if prediction.ndim == 2 else prediction[None]
    labels = labels.T[None] if multilabel else labels[None]
    return prediction, labels, ends if per_image else None


def _as_weights(weights: Weights, num_classes: int, dtype: DTypeLike) -> jax.Array | None:
    if weights is None:
        return None
    try:
        w = None if isinstance(weights, (str, bytes)) else jnp.asarray(weights)
    except (TypeError, ValueError):  # ragged lists, dicts, ...
        w = None
    if w is None or not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)):
        raise TypeError(f"weights must be [{num_classes}] real numbers (one weight per class) or None; got {weights!r}")
    V.check_weights_shape(w.shape, num_classes)
    return w.astype(dtype)


# ----------------------------------------------------------------------------- the kernel


def _jaccard_steps(fg_sorted: jax.Array, dtype: DTypeLike) -> jax.Array:
    """``J(k) - J(k-1)`` along the last axis of 0/1 ``fg_sorted`` (int32), in closed form.

    A foreground pixel adds ``1 / U``, a background one ``I / (U (U - 1))``, with
    ``I`` and ``U`` the intersection and union after k pixels: no cancellation.
    """
    fg_cum = jnp.cumsum(fg_sorted, axis=-1)
    gts = fg_cum[..., -1:]
    k = jnp.arange(1, fg_sorted.shape[-1] + 1, dtype=fg_cum.dtype)
    intersection = (gts - fg_cum).astype(dtype)
    union = (gts + k - fg_cum).astype(dtype)
    background_step = intersection / (union * jnp.maximum(union - 1, 1))
    steps = jnp.where(fg_sorted == 1, 1 / union, background_step)
    return steps.at[..., :1].set(1 - intersection[..., :1] / union[..., :1])  # J(1); the formula divides by U(0)


def _counted(errors_sorted: jax.Array) -> jax.Array:
    """The sorted errors as they add to the loss: ``relu`` (negative hinge margins and ignored pixels add
    nothing), and a NaN error (a NaN prediction at a valid pixel) NaN with a NaN derivative, as on every
    path: relu's derivative there is 0, which the constant NaN factor on its way back makes NaN (a
    ``where`` of two branches would leak NaN into the others' derivatives)."""
    nan_factor = jax.lax.stop_gradient(jnp.where(jnp.isnan(errors_sorted), jnp.nan, 1).astype(errors_sorted.dtype))
    return jax.nn.relu(errors_sorted * nan_factor)


def _lovasz_rows(errors: jax.Array, fg: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Lovász extension of each row of ``errors [R, N]`` against ``fg [R, N]`` (bool, False where ignored).

    One ascending sort of ``-errors`` carries the flags along; ignored pixels get
    the key ``+inf`` and sort last, where ``relu`` makes them add nothing.
    """
    key = -errors if valid is None else jnp.where(valid, -errors, jnp.inf)
    neg_sorted, fg_sorted = jax.lax.sort((key, fg.astype(jnp.int32)), dimension=-1, num_keys=1)
    steps = jax.lax.stop_gradient(_jaccard_steps(fg_sorted, errors.dtype))
    return jnp.sum(_counted(-neg_sorted) * steps, axis=-1)


def _rows(x: jax.Array, per_image: bool) -> jax.Array:
    """``[B, K, N]`` to rows: ``[B*K, N]`` per image, or ``[K, B*N]`` for the batch as one set."""
    b, k, n = x.shape
    return x.reshape(b * k, n) if per_image else x.transpose(1, 0, 2).reshape(k, b * n)


_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _kernel_on_host(
    errors: np.ndarray, codes: np.ndarray, need_grad: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The C kernel on ``[..., S, R, N]`` errors; the leading axes come from ``vmap``."""
    errors, codes = np.asarray(errors), np.asarray(codes)
    lead, num_rows = errors.shape[:-3], errors.shape[-2]
    loss = np.empty(lead + (num_rows,), np.float32)
    grad = np.empty(errors.shape, np.float32) if need_grad else None
    for index in np.ndindex(lead):
        loss[index], _ = C.lovasz_rows(
            errors[index], codes[index], C.ERRORS, None if grad is None else grad[index], _THREADS
        )
    return loss if grad is None else (loss, grad)


def _host_call(errors: jax.Array, codes: jax.Array, need_grad: bool) -> Any:
    loss = jax.ShapeDtypeStruct(errors.shape[:-3] + errors.shape[-2:-1], jnp.float32)
    shapes = (loss, jax.ShapeDtypeStruct(errors.shape, jnp.float32)) if need_grad else loss
    outputs = jax.pure_callback(
        functools.partial(_kernel_on_host, need_grad=need_grad), shapes, errors, codes, vmap_method="broadcast_all"
    )
    return D.vary_like(outputs, errors, codes)


@jax.custom_vjp
def _host_rows(errors: jax.Array, codes: jax.Array) -> jax.Array:
    """Loss of each row ``[:, r, :]`` of float32 ``errors [S, R, N]`` (codes 0/1/2), by the C kernel."""
    return _host_call(errors, codes, need_grad=False)


def _host_rows_fwd(errors: jax.Array, codes: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    loss, grad = _host_call(errors, codes, need_grad=True)  # the gradient comes with the loss
    return loss, (grad, codes)


def _host_rows_bwd(residuals: tuple[jax.Array, jax.Array], loss_cotangent: jax.Array) -> tuple[jax.Array, np.ndarray]:
    grad, codes = residuals
    return loss_cotangent[..., None, :, None] * grad, np.zeros(codes.shape, jax.dtypes.float0)


_host_rows.defvjp(_host_rows_fwd, _host_rows_bwd)


def _sorted_rows(errors: jax.Array, codes: jax.Array) -> jax.Array:
    """:func:`_lovasz_rows` on the ``[S, R, N]`` layout of :func:`_host_rows`; float32 rows through
    :func:`_row_sorted_rows`, the layout that reaches CUB's radix sort on a GPU."""
    sets, num_rows, num_pixels = errors.shape
    rows = lambda x: x.transpose(1, 0, 2).reshape(num_rows, sets * num_pixels)  # noqa: E731
    sort_rows = _row_sorted_rows if errors.dtype == jnp.float32 else _lovasz_rows
    return sort_rows(rows(errors), rows(codes) == 1, rows(codes) != 2)


def _descending_order(errors: jax.Array, valid: jax.Array) -> jax.Array:
    """Each row's pixel indices ``[R, N]`` (int32) by decreasing float32 error, ties in pixel order, the
    invalid pixels last; negative errors count as 0, NaN first (as the C kernel orders them).

    One 1-D sort per row (``lax.map``) of int32 keys, the complemented error bits (non-negative floats
    order like their bits), carrying int32 indices: the form XLA sends to CUB's radix sort on a GPU (two
    operands, one integer key and its plain comparator, one row). A sort of ``[R, N]`` with a float key
    (whose comparator JAX makes a total order), or three operands, goes to a bitonic sort there, about 55
    passes over memory for rows of 4 M (openxla ``sort_rewriter.cc``, ``IsCubCompatibleSort``).
    """
    bits = jax.lax.bitcast_convert_type(errors, jnp.int32)
    bits = jnp.where(bits < 0, 0, bits)  # negative errors and -0.0: 0
    key = jnp.where(valid, jnp.int32(0x7FFFFFFE) - bits, jnp.int32(0x7FFFFFFF))  # a NaN's bits make it negative
    index = jnp.broadcast_to(jnp.arange(errors.shape[-1], dtype=jnp.int32), errors.shape)
    _, order = jax.lax.map(lambda pair: jax.lax.sort(pair, num_keys=1, is_stable=True), (key, index))
    return order


def _row_sorted_rows(errors: jax.Array, fg: jax.Array, valid: jax.Array) -> jax.Array:
    """:func:`_lovasz_rows` of float32 ``errors [R, N]`` by :func:`_descending_order`; the gradient
    flows through the gather of the errors (a scatter of the steps back)."""
    order = _descending_order(errors, valid)
    errors_sorted = jnp.take_along_axis(jnp.where(valid, errors, 0), order, axis=-1)
    fg_sorted = jnp.take_along_axis((fg & valid).astype(jnp.int32), order, axis=-1)
    steps = jax.lax.stop_gradient(_jaccard_steps(fg_sorted, errors.dtype))
    return jnp.sum(_counted(errors_sorted) * steps, axis=-1)


def _codes(fg: jax.Array, valid: jax.Array | None) -> jax.Array:
    """The pixels' codes (uint8): 1 foreground, 0 background, 2 ignored."""
    codes = fg.astype(jnp.uint8)
    return codes if valid is None else jnp.where(valid, codes, jnp.uint8(2)).astype(jnp.uint8)


def _rows_loss(errors: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The function of ``[S, R, N]`` errors and codes to the losses ``[R]`` of rows ``[:, r, :]`` like
    ``errors``: on a CPU by the C kernel where it applies, else by one sort."""
    if errors.dtype == jnp.float32 and C.kernel() is None and jax.default_backend() == "cpu":
        C.warn_missing("lovasz.jax")
    if not C.applies(errors.dtype, errors.size) or not D.callbacks_run_here(errors):
        return _sorted_rows
    return lambda errors, codes: jax.lax.platform_dependent(errors, codes, cpu=_host_rows, default=_sorted_rows)


def _split_rows_loss(errors: jax.Array, codes: jax.Array) -> jax.Array:
    """:func:`_rows_loss` of ``[S, R, N]`` errors, the rows split over the devices of a mesh whose axes
    are left to the partitioner (plain ``jit`` of sharded inputs)."""
    return D.split_rows(_rows_loss(errors), (errors, codes), row_axis=1)


def _lovasz_kernel(errors: jax.Array, fg: jax.Array, valid: jax.Array | None, per_image: bool) -> jax.Array:
    """Loss of each (set, class) row of ``errors [B, K, N]``: on a CPU by the C kernel where it applies."""
    codes = _codes(fg, valid)
    b, k, n = errors.shape
    layout = (1, b * k, n) if per_image else (b, k, n)  # [S, R, N]: row r is [:, r, :]
    return _split_rows_loss(errors.reshape(layout), codes.reshape(layout))


# ----------------------------------------------------------------------------- segments (point clouds)
# Points of S segments in segment order: segment s is the run [ends[s - 1], ends[s]) of each
# class's row. A sort by (segment, error) keeps every segment in its own run, so the runs'
# bounds are known before the sort and one sort serves all (segment, class) rows.


def _segment_of_position(ends: jax.Array, num_points: int) -> jax.Array:
    """The segment of each position ``[N]``; S past the last run (points in no segment)."""
    return jnp.searchsorted(ends, jnp.arange(num_points), side="right")


def _segment_steps(fg_sorted: jax.Array, dtype: DTypeLike, ends: jax.Array, segment: jax.Array) -> jax.Array:
    """:func:`_jaccard_steps` within each segment's run."""
    running = jnp.pad(jnp.cumsum(fg_sorted, axis=-1), ((0, 0), (1, 0)))  # foreground among the first i
    starts = jnp.concatenate([jnp.zeros(1, ends.dtype), ends[:-1]])
    inside = jnp.minimum(segment, ends.shape[0] - 1)  # points in no segment: any run, their error is 0
    start, end = starts[inside], ends[inside]
    fg_cum = running[:, 1:] - running[:, start]
    gts = running[:, end] - running[:, start]
    k = jnp.arange(1, fg_sorted.shape[-1] + 1) - start
    intersection = (gts - fg_cum).astype(dtype)
    union = (gts + k - fg_cum).astype(dtype)
    background_step = intersection / (union * jnp.maximum(union - 1, 1))
    steps = jnp.where(fg_sorted == 1, 1 / union, background_step)
    return jnp.where(k == 1, 1 - intersection / union, steps)


def _segment_rows_sorted(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (segment, class) row of ``errors [K, N]``: one ``lax.sort``."""
    num_rows, num_points = errors.shape
    segment = _segment_of_position(ends, num_points)
    key = jnp.where(codes != 2, -errors, jnp.inf)
    by_segment = jnp.broadcast_to(segment, errors.shape)
    _, neg_sorted, fg_sorted = jax.lax.sort((by_segment, key, (codes == 1).astype(jnp.int32)), dimension=-1, num_keys=2)
    steps = jax.lax.stop_gradient(_segment_steps(fg_sorted, errors.dtype, ends, segment))
    contributions = _counted(-neg_sorted) * steps
    sums = jax.ops.segment_sum(contributions.T, segment, ends.shape[0] + 1, indices_are_sorted=True)
    counts = jax.ops.segment_sum((codes == 1).T.astype(jnp.int32), segment, ends.shape[0] + 1, indices_are_sorted=True)
    return sums[:-1], counts[:-1] > 0


def _segments_on_host(errors: np.ndarray, codes: np.ndarray, ends: np.ndarray, need_grad: bool) -> tuple:
    """The C kernel's segment rows on ``[..., K, N]`` errors: loss, presence (and gradient); the leading
    axes come from ``vmap``."""
    errors, codes, ends = np.asarray(errors), np.asarray(codes), np.asarray(ends)
    lead, (num_rows, _) = errors.shape[:-2], errors.shape[-2:]
    loss = np.empty(lead + (ends.shape[-1], num_rows), np.float32)
    present = np.empty(loss.shape, np.bool_)
    grad = np.zeros(errors.shape, np.float32) if need_grad else None  # points in no segment: 0
    for index in np.ndindex(lead):
        loss[index], present[index] = C.lovasz_scene_rows(
            errors[index], codes[index], ends[index], C.ERRORS, None if grad is None else grad[index], _THREADS
        )
    return (loss, present) if grad is None else (loss, present, grad)


def _segments_call(errors: jax.Array, codes: jax.Array, ends: jax.Array, need_grad: bool) -> Any:
    rows = errors.shape[:-2] + (ends.shape[-1], errors.shape[-2])
    shapes: tuple = (jax.ShapeDtypeStruct(rows, jnp.float32), jax.ShapeDtypeStruct(rows, jnp.bool_))
    shapes += (jax.ShapeDtypeStruct(errors.shape, jnp.float32),) if need_grad else ()
    outputs = jax.pure_callback(
        functools.partial(_segments_on_host, need_grad=need_grad),
        shapes,
        errors,
        codes,
        ends,
        vmap_method="broadcast_all",
    )
    return D.vary_like(outputs, errors, codes, ends)


@jax.custom_vjp
def _host_segments(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (segment, class) row of float32 ``errors [K, N]``, by the C kernel."""
    return _segments_call(errors, codes, ends, need_grad=False)


def _host_segments_fwd(
    errors: jax.Array, codes: jax.Array, ends: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    loss, present, grad = _segments_call(errors, codes, ends, need_grad=True)
    return (loss, present), (grad, codes, ends)


def _host_segments_bwd(
    residuals: tuple[jax.Array, jax.Array, jax.Array], cotangents: tuple[jax.Array, Any]
) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    grad, codes, ends = residuals
    loss_cotangent = cotangents[0]
    # each point takes its own segment's cotangent, by runs (0 past the last: points in no segment)
    num_points = grad.shape[-1]
    counts = jnp.diff(ends, prepend=0, append=num_points)
    padded = jnp.concatenate([loss_cotangent, jnp.zeros_like(loss_cotangent[:1])])  # [S + 1, K]
    spread = jnp.repeat(padded, counts, axis=0, total_repeat_length=num_points)  # [N, K]
    zeros = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # noqa: E731
    return spread.T * grad, zeros(codes), zeros(ends)


_host_segments.defvjp(_host_segments_fwd, _host_segments_bwd)


def _segment_kernel(
    errors: jax.Array, fg: jax.Array, valid: jax.Array | None, ends: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (segment, class) row of ``errors [K, N]``: the C kernel where it
    applies. The class rows are split over the devices of sharded inputs under plain ``jit``."""
    codes = _codes(fg, valid)
    if not C.applies(errors.dtype, errors.size) or C.scene_kernel() is None or not D.callbacks_run_here(errors):
        rows_loss = _segment_rows_sorted
    else:
        rows_loss = functools.partial(jax.lax.platform_dependent, cpu=_host_segments, default=_segment_rows_sorted)
    return D.split_rows(rows_loss, (errors, codes), row_axis=0, shared=(ends,), out_row_axes=(1, 1))


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
    ``B`` is 1 and the sets are the segments of the points (see above). With ``axis_name``, the batch
    is every device's along it (:mod:`lovasz._jax_distributed`)."""
    if valid is not None:
        valid = jnp.broadcast_to(valid, pred.shape)
        fg = fg & valid
    if not isinstance(classes, str):  # a list may repeat a class: each repetition counts
        ids = np.asarray(classes)
        pred, fg = pred[:, ids], fg[:, ids]
        valid = None if valid is None else valid[:, ids]
        weights = None if weights is None else weights[ids]
    if hinge:  # max(0, 1 - s x), the max taken after the sort
        errors = jnp.where(fg, 1 - pred, 1 + pred)
    else:  # |[y = c] - p|
        errors = jnp.abs(jnp.where(fg, 1 - pred, pred))
    if ends is not None:
        loss, present = _segment_kernel(errors[0], fg[0], None if valid is None else valid[0], ends)
    elif axis_name is not None and not per_image:  # one set of every device's pixels
        loss, present = D.union_rows(errors, _codes(fg, valid), axis_name, _split_rows_loss)
    else:
        loss = _lovasz_kernel(errors, fg, valid, per_image)
        present = _rows(fg, per_image).any(-1)

    num_rows = pred.shape[1]
    loss, present = loss.reshape(-1, num_rows), present.reshape(-1, num_rows)
    w = jnp.ones_like(loss) if weights is None else jnp.broadcast_to(weights, loss.shape)
    if classes == "present":
        w = w * present
    weight_sum = w.sum(-1)
    per_set = jnp.where(weight_sum != 0, (loss * w).sum(-1) / jnp.where(weight_sum != 0, weight_sum, 1), 0)
    if reduction == "none":
        return per_set if per_image else per_set[0]
    if axis_name is not None and per_image:  # the images (segments) of every device
        return D.reduce_images(per_set, reduction, axis_name)
    # the mean of no image (an empty batch) is 0, as for an all-ignored one
    return per_set.sum() if reduction == "sum" else per_set.sum() / max(per_set.size, 1)


def _softmax_over_classes(x: jax.Array) -> jax.Array:
    """The softmax over axis 1 of ``[B, C, N]``, taken with the classes as the minor axis: XLA's CPU softmax
    over a major axis is slow (forward and backward of 4 x 19 x 120,000: 72 ms, against 41 this way; of
    points-first input seen as ``[1, C, N]``, whose transposes cancel here, 149 ms against 18)."""
    return jnp.swapaxes(jax.nn.softmax(jnp.swapaxes(x, 1, -1), axis=-1), 1, -1)


def _channels_first(x: jax.Array, axis: int) -> jax.Array:
    return jnp.moveaxis(x, axis, 1) if axis % x.ndim != 1 else x


# ----------------------------------------------------------------------------- public functions


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
            labels raise ``ValueError`` when the values are known; under ``jax.jit`` they are not checked.
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
            are known; under ``jax.jit`` such points belong to no segment.
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
    probas = _check_prediction(probas, "probas")
    labels = _check_labels(labels, "labels")
    probas, labels, ends = _segments(probas, labels, segment_ids, num_segments, per_image, False, ("probas", "labels"))
    axis_name = D.check_axis_name(axis_name)
    axis = 1 if segment_ids is not None else axis
    axis = _check_axis(axis, probas.ndim)
    extra = V.extra_label_axis(labels.shape, [probas.shape, V.without_axis(probas.shape, axis)])
    if extra is not None:
        labels = jnp.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives them, or [B, 1, *spatial]
    if probas.ndim >= 2 and probas.ndim == labels.ndim + 1 and probas.shape[axis] == 1:
        probas = jnp.squeeze(probas, axis)  # one channel: the foreground probability
    sigmoid, num_classes = V.softmax_layout(probas.shape, labels.shape, axis)
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    dtype = _compute_dtype(probas)
    w = _as_weights(weights, num_classes, dtype)

    batch, pixels = labels.shape[0], math.prod(labels.shape[1:])  # no -1: the batch may be empty
    lab = labels.reshape(batch, 1, pixels)
    valid = None if ignore is None else lab != ignore
    if jnp.issubdtype(lab.dtype, jnp.floating):  # class indices as floats: whole numbers only (1.5 is no class)
        _check_values(lab, lab == jnp.round(lab), valid, "whole numbers (class indices)", "labels")
    _check_values(lab, (lab >= 0) & (lab < num_classes), valid, f"in [0, {num_classes - 1}]", "labels")
    pred = probas.astype(dtype) if sigmoid else _channels_first(probas.astype(dtype), axis)
    pred = pred.reshape(batch, 1 if sigmoid else num_classes, pixels)
    if valid is not None:  # a NaN at an ignored pixel must reach neither the loss nor the gradient
        pred = jnp.where(valid, pred, 0)
    if sigmoid:
        pred = jax.nn.sigmoid(pred) if from_logits else pred
        pred = jnp.concatenate([1 - pred, pred], axis=1)
    elif from_logits:
        pred = _softmax_over_classes(pred)
    fg = lab == jnp.arange(num_classes).reshape(1, -1, 1)
    loss = _lovasz_classes(pred, fg, valid, False, classes, per_image, w, reduction, ends, axis_name)
    return loss.astype(probas.dtype)


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
        signs = jnp.where(fg, 1.0, -1.0).astype(pred.dtype)
        pred = -signs * jax.nn.elu(1 - signs * pred)
    loss = _lovasz_classes(pred, fg, valid, True, classes, per_image, weights, reduction, ends, axis_name)
    if symmetric:  # ~fg: the ignored pixels are left out again by valid
        flipped = _lovasz_classes(-pred, ~fg, valid, True, classes, per_image, weights, reduction, ends, axis_name)
        loss = (loss + flipped) / 2
    return loss


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
    logits = _check_prediction(logits, "logits")
    labels = _check_labels(labels, "labels")
    logits, labels, ends = _segments(logits, labels, segment_ids, num_segments, per_image, False, ("logits", "labels"))
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
    valid = None if ignore is None else lab != ignore
    _check_values(lab, (lab == 0) | (lab == 1), valid, "0 or 1", "labels")
    loss = _hinge_classes(pred, lab == 1, valid, "all", per_image, None, reduction, margin, symmetric, ends, axis_name)
    return loss.astype(logits.dtype)


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
    logits = _check_prediction(logits, "logits")
    targets = _check_labels(targets, "targets")
    names = ("logits", "targets")
    logits, targets, ends = _segments(logits, targets, segment_ids, num_segments, per_image, True, names)
    axis_name = D.check_axis_name(axis_name)
    axis = 1 if segment_ids is not None else axis
    axis = _check_axis(axis, logits.ndim)
    if logits.ndim >= 2 and logits.shape == targets.shape:
        logits, targets = _channels_first(logits, axis), _channels_first(targets, axis)
    num_classes = V.multilabel_layout(logits.shape, targets.shape)
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric, from_logits)
    dtype = _compute_dtype(logits)
    w = _as_weights(weights, num_classes, dtype)
    layout = (logits.shape[0], num_classes, math.prod(logits.shape[2:]))  # no -1: the batch may be empty
    pred = logits.astype(dtype).reshape(layout)
    tgt = targets.reshape(layout)
    valid = None if ignore is None else tgt != ignore
    _check_values(tgt, (tgt == 0) | (tgt == 1), valid, "0 or 1", "targets")
    if from_logits:
        fg = tgt == 1
        loss = _hinge_classes(pred, fg, valid, classes, per_image, w, reduction, margin, symmetric, ends, axis_name)
    else:
        loss = _lovasz_classes(pred, tgt == 1, valid, False, classes, per_image, w, reduction, ends, axis_name)
    return loss.astype(logits.dtype)


def lovasz_grad(gt_sorted: ArrayLike) -> jax.Array:
    """Gradient of the Lovász extension w.r.t. errors sorted in decreasing order (Algorithm 1).

    ``gt_sorted`` is ``[P]`` 0/1 ground truth in the order of the sorted errors; the
    result ``[P]`` holds ``J(k) - J(k-1)`` (float64 for float64 input, else float32).

    Example:
        >>> [round(float(g), 4) for g in lovasz_grad(jnp.array([1, 0, 1]))]
        [0.5, 0.1667, 0.3333]
    """
    gt_sorted = jnp.asarray(gt_sorted)
    if gt_sorted.ndim != 1:
        raise ValueError(f"gt_sorted must be a 1-D array; got shape {list(gt_sorted.shape)}")
    dtype = jnp.float64 if gt_sorted.dtype == jnp.float64 else jnp.float32
    return _jaccard_steps(jnp.round(gt_sorted).astype(jnp.int32), dtype)
