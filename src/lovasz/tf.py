"""Lovász-Softmax and Lovász hinge losses for TensorFlow 2.

A drop-in for the original ``tensorflow/lovasz_losses_tf.py`` of Berman et al.
(same names and arguments, ``order='BHWC'`` channels-last by default), with the
extensions of :mod:`lovasz.torch`: ``from_logits``, class ``weights``,
``reduction``, :func:`lovasz_multilabel` and any spatial rank.

All (set, class) rows go through one sort: no ``map_fn``, no Python loop over
images or classes, no data-dependent shape (ignored pixels are masked, not
removed), so the losses run eagerly, in ``tf.function`` and with
``jit_compile=True`` (XLA). The sort is chosen when the function is traced
(eagerly, at each call):

- float32 on a CPU, eagerly or in ``tf.function``: the C kernel of
  :mod:`lovasz.torch` (``_kernel.c``), through ``tf.numpy_function`` inside a
  ``tf.custom_gradient``; it returns the gradient with the loss (where a
  ``GradientTape`` watches the input), so backward is one multiply;
- float32 on a CPU under XLA (where a host callback cannot run): XLA's sort of
  one int64 key per pixel that packs the error, the pixel's index and its
  label, and no gather; backward scatters the Jaccard steps;
- elsewhere (float64, a GPU, lovasz installed without its kernel): one
  ``tf.math.top_k``, the gradient flowing into the gathered errors.

The Jaccard steps are computed in closed form. A ``tf.function`` first traced
outside XLA keeps that trace (with the C kernel) when a ``jit_compile=True``
function calls it, and XLA rejects it: call the loss itself there.

Point clouds and other ragged sets: ``row_splits=`` takes the points of ``S``
scenes, points-first (``[N, C]`` predictions, ``[N]`` labels), with the scenes
marked in TF's own convention, ``[S + 1]`` row splits (Pointcept's offsets are
``row_splits[1:]``; torch_geometric's per-point ``batch``, for points in scene
order, converts with ``tf.RaggedTensor.from_value_rowids``). Row splits fit TF
better than a scene index per point: their static shape gives the number of
scenes when traced, with no search of the data for it, and they are what a
``tf.RaggedTensor`` holds, so ``[S, None, C]`` ragged inputs (``tf.data``'s
``ragged_batch``) are taken too, as their values and row splits. Each class's
row of all points is sorted once, each scene staying in its own run: the C
kernel sorts each (scene, class) run (eagerly, ``tf.function``); under XLA, one
int64 key per point holds the scene above the packed key; float64 and elsewhere
sort by error, then stably by scene (two ``top_k``). No Python loop over scenes.

Argument order: these functions take ``(prediction, labels)``, as the original
does; Keras losses (:mod:`lovasz.keras`) take ``(y_true, y_pred)``.

Reference: M. Berman, A. Rannen Triki, M. B. Blaschko, "The Lovász-Softmax loss",
CVPR 2018, arXiv:1705.08790.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeAlias, Union

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from lovasz import _ckernel as C
from lovasz import _tf_distributed
from lovasz import _validation as V

try:  # TF internals, present in TF 2.16-2.21: without them, the C kernel runs eagerly only, and XLA uses top_k
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops  # XlaSort: XLA's sort of one operand
    from tensorflow.python.eager import record
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util
except ImportError:  # pragma: no cover
    gen_xla_ops = record = tf_ops = control_flow_util = None

__all__ = [
    "lovasz_grad",
    "flatten_probas",
    "flatten_binary_scores",
    "lovasz_softmax_flat",
    "lovasz_hinge_flat",
    "lovasz_softmax",
    "lovasz_hinge",
    "lovasz_multilabel",
]

ORDERS = ("BHWC", "BCHW")  # channels-last, channels-first; any number of spatial dims

Classes = Union[str, Sequence[int]]
# A tf.Tensor, NumPy array, nested list or number. TF ships no types, so to mypy this is Any, as tf.Tensor
# is: the annotations document. (TypeAlias: else mypy takes an attribute of an untyped module for a variable.)
TensorLike: TypeAlias = tf.types.experimental.TensorLike
# Points of scenes may also come as a tf.RaggedTensor [S, None, ...], which is no TensorLike.
TensorOrRagged: TypeAlias = Union[TensorLike, tf.RaggedTensor]
Weights = Optional[Union[TensorLike, Sequence[float]]]


# ----------------------------------------------------------------------------- checks


def _to_tensor(x: Any, name: str, what: str) -> tf.Tensor:
    try:
        return tf.convert_to_tensor(x)
    except (TypeError, ValueError):
        dtype = f" of dtype {x.dtype}" if hasattr(x, "dtype") else ""
        raise TypeError(f"{name} must be {what}; got {type(x).__name__}{dtype}") from None


def _check_prediction(x: Any, name: str) -> tf.Tensor:
    x = _to_tensor(x, name, "a floating-point tensor")
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype.name}")
    if x.shape.rank is None:
        raise ValueError(f"{name} must have a known rank; got shape {x.shape}")
    return x


def _check_labels(labels: Any, name: str) -> tf.Tensor:
    """Integer labels in a signed type that ``one_hot`` and the ``ignore`` comparison take; floats as they are.

    Float labels must hold whole numbers: the functions check that as they check the label range.
    """
    labels = _to_tensor(labels, name, "a tensor of class indices")
    dtype = labels.dtype
    if dtype.is_floating:
        return labels
    if not (dtype.is_integer or dtype == tf.bool):
        raise TypeError(
            f"{name} must be a tensor of integer class indices (not one-hot, not probabilities); got dtype {dtype.name}"
        )
    return tf.cast(labels, tf.int64 if dtype in (tf.int64, tf.uint32, tf.uint64) else tf.int32)


def _check_order(order: str) -> bool:
    """True for channels-last."""
    if order not in ORDERS:
        raise ValueError(f"order must be 'BHWC' (channels-last) or 'BCHW' (channels-first); got {order!r}")
    return order == "BHWC"


def _check_points_order(order: str, splits: tf.Tensor | None) -> bool:
    """:func:`_check_order`; points-first inputs of scenes are ``[N, C]``, channels-last."""
    channels_last = _check_order(order)
    if splits is not None and not channels_last:
        raise ValueError("order='BCHW' does not apply to points-first inputs of scenes ([N, C]): leave it 'BHWC'")
    return channels_last


def _check_values(labels: tf.Tensor, ok: tf.Tensor, valid: tf.Tensor | None, allowed: str, name: str) -> None:
    """Raise ``ValueError`` on a bad non-ignored label, eagerly only.

    Inside ``tf.function`` (and XLA) the values are not known while tracing, and
    an assertion op would cost a sync, so the check is skipped there.
    """
    if not tf.executing_eagerly():
        return
    bad = tf.logical_not(ok) if valid is None else tf.logical_and(valid, tf.logical_not(ok))
    if bool(tf.reduce_any(bad)):
        raise ValueError(
            f"{name} must be {allowed} at every non-ignored pixel; found {tf.boolean_mask(labels, bad)[0].numpy()}"
        )


def _size(x: tf.Tensor, start: int, stop: int | None = None) -> int | tf.Tensor:
    """The number of elements in dims ``start:stop`` of ``x``, for reshapes: TF infers no ``-1`` for an empty tensor."""
    n = x.shape[start:stop].num_elements()
    return n if n is not None else tf.reduce_prod(tf.shape(x)[start:stop])


def _compute_dtype(x: tf.Tensor) -> tf.DType:
    """float64 stays float64; half precision (and float32) is computed in float32."""
    return tf.float64 if x.dtype == tf.float64 else tf.float32


def _as_weights(weights: Weights, num_classes: int, dtype: tf.DType) -> tf.Tensor | None:
    if weights is None:
        return None
    try:
        w = None if isinstance(weights, (str, bytes)) else tf.convert_to_tensor(weights)
    except (TypeError, ValueError):  # ragged lists, dicts, ...
        w = None
    if w is None or not (w.dtype.is_floating or w.dtype.is_integer):
        raise TypeError(f"weights must be [{num_classes}] real numbers (one weight per class) or None; got {weights!r}")
    V.check_weights_shape(w.shape, num_classes)
    return tf.cast(w, dtype)


# ----------------------------------------------------------------------------- the kernel


def _jaccard_steps(fg_sorted: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``J(k) - J(k-1)`` along the last axis of 0/1 ``fg_sorted`` (int32), in closed form.

    A foreground pixel adds ``1 / U``, a background one ``I / (U (U - 1))``, with
    ``I`` and ``U`` the intersection and union after k pixels: no cancellation.
    """
    fg_cum = tf.cumsum(fg_sorted, axis=-1)
    gts = fg_cum[..., -1:]
    k = tf.range(1, tf.shape(fg_sorted)[-1] + 1, dtype=fg_cum.dtype)
    intersection = tf.cast(gts - fg_cum, dtype)
    union = tf.cast(gts + k - fg_cum, dtype)
    background_step = intersection / (union * tf.maximum(union - 1, 1))
    steps = tf.where(fg_sorted == 1, 1 / union, background_step)
    first = 1 - intersection[..., :1] / union[..., :1]  # J(1); the formula divides by U(0)
    return tf.concat([first, steps[..., 1:]], axis=-1)


def _counted(errors_sorted: tf.Tensor) -> tf.Tensor:
    """The sorted errors as they add to the loss: ``relu`` (negative hinge margins and ignored pixels add
    nothing), and a NaN error (a NaN prediction at a valid pixel) NaN with a NaN derivative, as on every
    path: relu's derivative there is 0, which the constant NaN factor on its way back makes NaN."""
    nan = tf.constant(float("nan"), errors_sorted.dtype)
    nan_factor = tf.where(tf.math.is_nan(errors_sorted), nan, tf.ones((), errors_sorted.dtype))
    return tf.nn.relu(errors_sorted * tf.stop_gradient(nan_factor))


def _lovasz_rows(errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
    """Lovász extension of each row of ``errors [R, N]`` against ``fg [R, N]`` (bool, False where ignored).

    Ignored pixels get the key ``-inf``: they sort last, where ``relu`` makes them add nothing.
    Under XLA on a CPU, float32 rows take :func:`_packed_rows` instead.
    """
    if (
        errors.dtype == tf.float32
        and not tf.executing_eagerly()
        and gen_xla_ops is not None
        and _in_xla()
        and _on_cpu(errors)
    ):
        return _packed_rows(errors, fg, valid)
    key = errors if valid is None else tf.where(valid, errors, tf.constant(-np.inf, errors.dtype))
    _, perm = tf.math.top_k(tf.stop_gradient(key), k=tf.shape(key)[-1], sorted=True)
    # the gradient goes through the gather, not top_k, whose gradient fails on rows of no pixel (an empty batch)
    errors_sorted = tf.gather(key, perm, batch_dims=1)
    fg_sorted = tf.gather(tf.cast(fg, tf.int32), perm, batch_dims=1)
    steps = tf.stop_gradient(_jaccard_steps(fg_sorted, errors.dtype))
    return tf.reduce_sum(_counted(errors_sorted) * steps, axis=-1)


def _packed_rows(errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
    """:func:`_lovasz_rows` for float32 under XLA: one sort of one int64 key per pixel, no gather.

    The key is ``(0x7fffffff - error bits) << 32 | index << 1 | fg``: a non-negative float's
    bits order like the number, so one ascending integer sort orders the errors decreasingly
    (ties by pixel index, as ``top_k``), and the sorted keys hold the errors, the flags and
    the permutation. Negative errors (and ignored pixels) count as 0: they sort last, where
    they add nothing. Backward scatters each pixel's step to its place.
    """
    if valid is not None:
        errors = tf.where(valid, errors, tf.zeros((), errors.dtype))
    errors = tf.where(errors < 0, tf.zeros((), errors.dtype), errors)  # NaN stays NaN
    return _packed_sort(errors, tf.cast(fg, tf.int64))


def _sorted_error_grad(errors_sorted: tf.Tensor, grad: tf.Tensor) -> tf.Tensor:
    """``grad`` where the sorted error counts (> 0), 0 where it does not, NaN where it is NaN (a NaN
    prediction at a valid pixel: the loss is NaN, and so is its gradient, as on every path)."""
    grad = tf.where(errors_sorted > 0, grad, tf.zeros((), grad.dtype))
    return tf.where(tf.math.is_nan(errors_sorted), tf.constant(float("nan"), grad.dtype), grad)


@tf.custom_gradient
def _packed_sort(errors: tf.Tensor, fg: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple[tf.Tensor, None]]]:
    assert gen_xla_ops is not None  # _lovasz_rows checks it
    num_rows, num_pixels = tf.shape(errors)[0], tf.shape(errors)[1]
    bits = tf.bitwise.bitwise_and(tf.bitcast(errors, tf.int32), 0x7FFFFFFF)  # -0.0 and a negative NaN too
    high = tf.bitwise.left_shift(tf.cast(0x7FFFFFFF - bits, tf.int64), 32)
    low = tf.bitwise.bitwise_or(tf.bitwise.left_shift(tf.range(num_pixels, dtype=tf.int64), 1), fg)
    key = gen_xla_ops.xla_sort(tf.bitwise.bitwise_or(high, low))
    errors_sorted = tf.bitcast(0x7FFFFFFF - tf.cast(tf.bitwise.right_shift(key, 32), tf.int32), tf.float32)
    steps = _jaccard_steps(tf.cast(tf.bitwise.bitwise_and(key, 1), tf.int32), tf.float32)
    loss = tf.reduce_sum(errors_sorted * steps, axis=-1)

    def backward(loss_cotangent: tf.Tensor) -> tuple[tf.Tensor, None]:
        index = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(key, 1), 0x7FFFFFFF), tf.int64)
        index += tf.range(tf.cast(num_rows, tf.int64), dtype=tf.int64)[:, None] * tf.cast(num_pixels, tf.int64)
        grad = _sorted_error_grad(errors_sorted, steps * loss_cotangent[:, None])
        size = tf.cast(num_rows, tf.int64) * tf.cast(num_pixels, tf.int64)
        flat = tf.scatter_nd(tf.reshape(index, [-1, 1]), tf.reshape(grad, [-1]), size[None])
        return tf.reshape(flat, [num_rows, num_pixels]), None

    return loss, backward


def _rows(x: tf.Tensor, per_image: bool, channels_last: bool) -> tf.Tensor:
    """``[B, K, N]`` (``[B, N, K]`` channels-last) to rows ``[B*K, N]`` per image or ``[K, B*N]``."""
    if channels_last:
        if not per_image:
            return tf.transpose(tf.reshape(x, [-1, tf.shape(x)[2]]))
        x = tf.transpose(x, [0, 2, 1])
    elif not per_image:
        x = tf.transpose(x, [1, 0, 2])
        return tf.reshape(x, [tf.shape(x)[0], -1])
    shape = tf.shape(x)
    return tf.reshape(x, [shape[0] * shape[1], shape[2]])  # no -1: the rows may be empty


def _sorted_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, per_image: bool, channels_last: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[rows]`` of each row by a sort in TF: any dtype, any device, under XLA too."""
    if hinge:  # max(0, 1 - s x), the max taken after the sort
        errors = tf.where(fg, 1 - pred, 1 + pred)
    else:  # |[y = c] - p|
        errors = tf.abs(tf.where(fg, 1 - pred, pred))
    row = lambda x: _rows(x, per_image, channels_last)  # noqa: E731
    fg_rows = row(fg)
    loss = _lovasz_rows(row(errors), fg_rows, None if valid is None else row(valid))
    return loss, tf.reduce_any(fg_rows, axis=-1)


# ----------------------------------------------------------------------------- the C kernel on a CPU

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_ALIGN = 64  # TF takes a returned array without a copy where it is this aligned


def _aligned_empty(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a ``_ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + size].view(dtype).reshape(shape)


def _host_rows(pred: np.ndarray, codes: np.ndarray, mode: int, need_grad: bool) -> tuple[np.ndarray, ...]:
    """The C kernel on ``[S, R, N]`` rows: loss ``[R]``, presence ``[R]`` and (``need_grad``) d loss_r / d pred."""
    grad = _aligned_empty(pred.shape, np.float32) if need_grad else None  # not pred: TF's input may share its buffer
    threads = tf.config.threading.get_intra_op_parallelism_threads() or _CORES  # 0: TF's default, every core
    loss, present = C.lovasz_rows(pred, codes, mode, grad, threads)
    return (loss, present) if grad is None else (loss, present, grad)


def _host_call(pred: tf.Tensor, codes: tf.Tensor, mode: int, need_grad: bool) -> list[tf.Tensor]:
    outputs = tf.numpy_function(
        functools.partial(_host_rows, mode=mode, need_grad=need_grad),
        [pred, codes],
        [tf.float32, tf.bool] + [tf.float32] * need_grad,
        stateful=False,
        name="lovasz_c_kernel",
    )
    for output, shape in zip(outputs, [pred.shape[1:2], pred.shape[1:2], pred.shape]):
        output.set_shape(shape)
    return outputs


def _kernel_rows(pred: tf.Tensor, codes: tf.Tensor, mode: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss ``[R]`` and presence ``[R]`` of the rows ``[:, r, :]`` of float32 ``pred [S, R, N]``, by the C kernel.

    Where a ``GradientTape`` watches ``pred``, the kernel returns the gradient with the
    loss and backward is one multiply; elsewhere (evaluation) it computes no gradient,
    and a later ``tf.gradients`` runs it again for one.
    """
    need_grad = record is None or record.should_record_backprop([pred])

    @tf.custom_gradient
    def rows(pred: tf.Tensor, codes: tf.Tensor) -> tuple[tuple[tf.Tensor, ...], Callable[..., tuple[tf.Tensor, None]]]:
        outputs = _host_call(pred, codes, mode, need_grad)

        def backward(loss_cotangent: tf.Tensor, present_cotangent: tf.Tensor) -> tuple[tf.Tensor, None]:
            grad = outputs[2] if need_grad else _host_call(pred, codes, mode, True)[2]
            return grad * tf.reshape(loss_cotangent, [1, -1, 1]), None

        return tuple(outputs[:2]), backward

    return rows(pred, codes)


def _kernel_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, per_image: bool, channels_last: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_sorted_losses` by the C kernel, on rows read in place from ``[B, K, N]``."""
    codes = tf.cast(fg, tf.uint8)
    if valid is not None:
        codes = tf.where(valid, codes, tf.constant(2, tf.uint8))  # 0 background, 1 foreground, 2 ignored
    if channels_last:
        pred, codes = tf.transpose(pred, [0, 2, 1]), tf.transpose(codes, [0, 2, 1])
    shape = tf.shape(pred)
    layout = [1, shape[0] * shape[1], shape[2]] if per_image else shape  # [S, R, N]: row r is [:, r, :]
    return _kernel_rows(tf.reshape(pred, layout), tf.reshape(codes, layout), C.HINGE if hinge else C.SOFTMAX)


def _kernel_or_sort(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, per_image: bool, channels_last: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """The C kernel where the sizes fit its item format; chosen when run if they are not known when traced."""
    args = (pred, fg, valid, hinge, per_image, channels_last)
    size = pred.shape.num_elements()
    if size is not None:
        return (_kernel_losses if size <= C.MAX_ELEMENTS else _sorted_losses)(*args)
    return tf.cond(
        tf.size(pred, tf.int64) <= C.MAX_ELEMENTS, lambda: _kernel_losses(*args), lambda: _sorted_losses(*args)
    )


def _in_xla() -> bool:
    """Whether the graph being built is compiled by XLA (``jit_compile=True``, and functions called from one).

    TF marks such graphs with an XLA control-flow context (``OptionalXlaContext`` in
    ``tf.function``); a host callback cannot run in them.
    """
    if control_flow_util is None or tf_ops is None:  # imported together: both None or neither
        return True  # not known: as if it were
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def _on_cpu(x: tf.Tensor) -> bool:
    """Whether ``x`` is on a CPU: its device (eagerly, or a ``tf.device`` scope in a graph).

    Without one, TF places it on a GPU or TPU where there is one: a CPU only on a machine without.
    """
    device_type = tf.DeviceSpec.from_string(x.device).device_type if x.device else None
    if device_type:
        return device_type == "CPU"
    return all(d.device_type == "CPU" for d in tf.config.list_logical_devices())


def _use_kernel(pred: tf.Tensor) -> bool:
    """The C kernel takes float32 rows on a CPU, eagerly and in ``tf.function``, not under XLA (where
    a host callback cannot run), and only where lovasz was installed with it."""
    if pred.dtype != tf.float32:
        return False
    if C.kernel() is None:
        if _on_cpu(pred):
            C.warn_missing("lovasz.tf")
        return False
    if not tf.executing_eagerly() and _in_xla():
        return False
    return _on_cpu(pred)


# ----------------------------------------------------------------------------- points of scenes
# Points-first sets (point clouds): a class's row holds every point, scene s the run
# [splits[s], splits[s + 1]). Sorting each row by (scene, error) keeps every scene in its own
# run, so one sort serves all (scene, class) rows and the runs' bounds are known before it.


def _shown(values: np.ndarray) -> str:
    """Row splits for an error message: all of them, or the first and the last of many."""
    listed = values.tolist()
    if len(listed) <= 12:
        return str(listed)
    return f"[{', '.join(map(str, listed[:8]))}, ..., {listed[-1]}] ({len(listed)} values)"


def _check_known_classes(channels: int | None, name: str, shape: tf.TensorShape) -> None:
    """The class count is a static dimension: a ``tf.function`` traced with it unknown can't be served."""
    if channels is None:
        raise ValueError(
            f"the class axis of {name} must be known when the function is traced (give the input_signature "
            f"a class dimension); got shape {shape}"
        )


def _check_row_splits(row_splits: TensorLike, num_points: int | tf.Tensor, pname: str) -> tf.Tensor:
    """``row_splits`` as int64 ``[S + 1]``: 0, then each scene's end, rising to the number of points.

    Eagerly a bad value raises ``ValueError``; in a graph, ``tf.debugging`` asserts raise
    ``InvalidArgumentError`` when it runs (under XLA, which drops asserts, it is not checked).
    """
    what = "a 1-D integer tensor [S + 1] (0, then each scene's end: TF's row_splits)"
    splits = _to_tensor(row_splits, "row_splits", what)
    if not splits.dtype.is_integer:
        raise TypeError(f"row_splits must be {what}; got dtype {splits.dtype.name}")
    if splits.shape.rank != 1 or splits.shape[0] == 0:
        raise ValueError(f"row_splits must be {what}; got shape {splits.shape.as_list()}")
    splits = tf.cast(splits, tf.int64)
    if tf.executing_eagerly():
        values, n = splits.numpy(), int(num_points)
        if values[0] != 0:
            raise ValueError(f"row_splits must start at 0; got {_shown(values)}")
        if np.any(values[1:] < values[:-1]):
            raise ValueError(f"row_splits must never decrease (each scene's end); got {_shown(values)}")
        if values[-1] != n:
            raise ValueError(f"row_splits must end at {n}, the number of points of {pname}; got {_shown(values)}")
    elif not _in_xla():
        n = tf.cast(num_points, tf.int64)
        checks = [
            tf.debugging.assert_equal(splits[0], tf.constant(0, tf.int64), message="row_splits must start at 0"),
            tf.debugging.assert_greater_equal(splits[1:], splits[:-1], message="row_splits must never decrease"),
            tf.debugging.assert_equal(splits[-1], n, message=f"row_splits must end at the number of points of {pname}"),
        ]
        with tf.control_dependencies(checks):
            splits = tf.identity(splits)
    return splits


def _from_ragged(prediction: Any, labels: Any, names: tuple[str, str]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The values and row splits of ragged ``[S, None, ...]`` inputs (the labels' splits must be the prediction's)."""
    pname, lname = names
    for x, name, other in ((prediction, pname, lname), (labels, lname, pname)):
        if not isinstance(x, tf.RaggedTensor):
            raise TypeError(
                f"{name} must be a tf.RaggedTensor [S, None, ...] like {other} (the same scenes); "
                f"got {type(x).__name__}"
            )
        if x.ragged_rank != 1:
            raise ValueError(
                f"{name} must be ragged in its second axis only, [S, None, ...] (ragged_rank 1); "
                f"got shape {x.shape.as_list()}, ragged_rank {x.ragged_rank}"
            )
    splits, label_splits = tf.cast(prediction.row_splits, tf.int64), tf.cast(labels.row_splits, tf.int64)
    if tf.executing_eagerly():
        if splits.shape != label_splits.shape or not bool(tf.reduce_all(splits == label_splits)):
            raise ValueError(
                f"{lname} must have the scenes of {pname} (equal row_splits); got {_shown(label_splits.numpy())} "
                f"against {_shown(splits.numpy())}"
            )
    elif not _in_xla():
        check = tf.debugging.assert_equal(label_splits, splits, message=f"{lname} must have the scenes of {pname}")
        with tf.control_dependencies([check]):
            splits = tf.identity(splits)
    return prediction.values, labels.values, splits


def _points(
    prediction: TensorOrRagged, labels: TensorOrRagged, row_splits: TensorLike | None, kind: str, names: tuple[str, str]
) -> tuple[TensorOrRagged, TensorOrRagged, tf.Tensor | None]:
    """Points-first inputs of scenes (``row_splits=``, or ragged ``[S, None, ...]``) with a batch
    axis of one (``[1, N, C]`` / ``[1, N]``) and their row splits (int64 ``[S + 1]``); other
    inputs as they are, with None."""
    pname, lname = names
    ragged = isinstance(prediction, tf.RaggedTensor) or isinstance(labels, tf.RaggedTensor)
    if row_splits is None and not ragged:
        return prediction, labels, None
    multilabel = kind == "multilabel"
    if ragged:
        if row_splits is not None:
            raise TypeError(f"pass the scenes as row_splits= or as ragged {pname} and {lname}, not both")
        prediction, labels, row_splits = _from_ragged(prediction, labels, names)
        how = "as values of a ragged [S, None, ...]"
    else:
        how = "with row_splits="
    prediction = _check_prediction(prediction, pname)
    labels = _to_tensor(labels, lname, "a tensor of labels")
    ranks = {"softmax": (1, 2), "hinge": (1, 2), "multilabel": (2,)}[kind]
    shape = prediction.shape
    if shape.rank not in ranks or (kind == "hinge" and shape.rank == 2 and shape[1] != 1):
        shapes = {"softmax": "[N, C] (or [N] for one channel)", "hinge": "[N] (or [N, 1])", "multilabel": "[N, C]"}
        raise ValueError(f"{pname} must be points-first, {shapes[kind]}, {how}; got {prediction.shape.as_list()}")
    label_shape = prediction.shape if multilabel else prediction.shape[:1]
    if not labels.shape.is_compatible_with(label_shape):
        raise ValueError(
            f"{lname} must have shape {label_shape.as_list()} for {pname} of shape {prediction.shape.as_list()}; "
            f"got {labels.shape.as_list()}"
        )
    if not ragged:
        row_splits = _check_row_splits(row_splits, _size(prediction, 0, 1), pname)
    return tf.expand_dims(prediction, 0), tf.expand_dims(labels, 0), row_splits  # (x[None]'s gradient copies)


def _scene_of_points(splits: tf.Tensor, num_points: int | tf.Tensor) -> tf.Tensor:
    """Each point's scene ``[N]`` (int32): the ``s`` with ``splits[s] <= n < splits[s + 1]``, as the
    count of inner splits at or before ``n`` (a scatter and a cumsum: no sort, XLA compiles it)."""
    inner = splits[1:-1]
    marks = tf.scatter_nd(inner[:, None], tf.ones_like(inner, tf.int32), tf.cast(num_points, tf.int64)[None] + 1)
    return tf.cumsum(marks)[:-1]


def _scene_jaccard_steps(
    fg_sorted: tf.Tensor, dtype: tf.DType, splits: tf.Tensor, scene: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_jaccard_steps` within each scene's run of ``fg_sorted [K, N]``; also each (class, scene)'s
    foreground count ``[K, S]``."""
    running = tf.pad(tf.cumsum(fg_sorted, axis=-1), [[0, 0], [1, 0]])  # [:, i]: foreground among the first i
    at_splits = tf.gather(running, splits, axis=1)  # [K, S + 1]
    gts_scene = at_splits[:, 1:] - at_splits[:, :-1]
    fg_cum = running[:, 1:] - tf.gather(at_splits, scene, axis=1)  # foreground among the scene's first k
    gts = tf.gather(gts_scene, scene, axis=1)
    k = tf.range(1, tf.shape(fg_sorted)[-1] + 1) - tf.cast(tf.gather(splits, scene), tf.int32)  # from 1 in a scene
    intersection = tf.cast(gts - fg_cum, dtype)
    union = tf.cast(gts + k - fg_cum, dtype)
    background_step = intersection / (union * tf.maximum(union - 1, 1))
    steps = tf.where(fg_sorted == 1, 1 / union, background_step)
    return tf.where(k == 1, 1 - intersection / union, steps), gts_scene  # J(1); the formula divides by U(0)


def _scene_sums(values: tf.Tensor, scene: tf.Tensor, num_scenes: int | tf.Tensor) -> tf.Tensor:
    """Sums ``[S, K]`` of each scene's points in ``values [K, N]``, accumulated in float64 (a scene's
    sum of many float32 terms stays as exact as the dense loss's)."""
    sums = tf.math.unsorted_segment_sum(tf.transpose(tf.cast(values, tf.float64)), scene, num_scenes)
    return tf.cast(sums, values.dtype)


def _scene_sorted_rows(
    errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, splits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[S, K]`` of the scenes' runs of ``errors [K, N]`` by ``top_k``: any dtype and device.

    No integer key holds a float64 error and a scene: the rows are sorted by error, then stably
    by scene (``top_k`` keeps ties in order), as lovasz.torch does in float64. Ignored points get
    the key ``-inf``: they sort last in their scene, where ``relu`` makes them add nothing.
    """
    num_points, num_scenes = tf.shape(errors)[1], tf.shape(splits)[0] - 1
    scene = _scene_of_points(splits, num_points)
    key = errors if valid is None else tf.where(valid, errors, tf.constant(-np.inf, errors.dtype))
    _, by_error = tf.math.top_k(tf.stop_gradient(key), k=num_points, sorted=True)
    _, by_scene = tf.math.top_k(-tf.cast(tf.gather(scene, by_error), tf.float32), k=num_points, sorted=True)
    perm = tf.gather(by_error, by_scene, batch_dims=1)
    errors_sorted = tf.gather(key, perm, batch_dims=1)
    fg_sorted = tf.gather(tf.cast(fg, tf.int32), perm, batch_dims=1)
    steps, gts = _scene_jaccard_steps(fg_sorted, errors.dtype, splits, scene)
    loss = _scene_sums(_counted(errors_sorted) * tf.stop_gradient(steps), scene, num_scenes)
    return loss, tf.transpose(gts > 0)


def _scene_packed_rows(
    errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, splits: tf.Tensor, scene_bits: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_scene_sorted_rows` for float32 under XLA: one sort of one int64 key per point, no gather.

    The key of :func:`_packed_rows` with the scene above it: ``scene << (63 - b) | (0x7fffffff -
    error bits) << (32 - b) | index << 1 | fg``, ``b`` bits for the scene and ``31 - b`` for the
    point's index, so one ascending sort of each class's row orders it by scene, then by
    decreasing error (ties by index).
    """
    if valid is not None:
        errors = tf.where(valid, errors, tf.zeros((), errors.dtype))
    errors = tf.where(errors < 0, tf.zeros((), errors.dtype), errors)  # NaN stays NaN
    return _scene_packed_sort(errors, tf.cast(fg, tf.int64), splits, scene_bits)


def _scene_packed_sort(
    errors: tf.Tensor, fg: tf.Tensor, splits: tf.Tensor, scene_bits: int
) -> tuple[tf.Tensor, tf.Tensor]:
    assert gen_xla_ops is not None  # _scene_sorted_losses checks it

    @tf.custom_gradient
    def packed(
        errors: tf.Tensor, fg: tf.Tensor, splits: tf.Tensor
    ) -> tuple[tuple[tf.Tensor, tf.Tensor], Callable[..., tuple[tf.Tensor, None, None]]]:
        num_rows, num_points = tf.shape(errors)[0], tf.shape(errors)[1]
        scene = _scene_of_points(splits, num_points)
        bits = tf.bitwise.bitwise_and(tf.bitcast(errors, tf.int32), 0x7FFFFFFF)
        key = tf.bitwise.left_shift(tf.cast(0x7FFFFFFF - bits, tf.int64), 32 - scene_bits)
        low = tf.bitwise.left_shift(tf.range(num_points, dtype=tf.int64), 1)
        if scene_bits:
            low = tf.bitwise.bitwise_or(low, tf.bitwise.left_shift(tf.cast(scene, tf.int64), 63 - scene_bits))
        key = gen_xla_ops.xla_sort(tf.bitwise.bitwise_or(key, tf.bitwise.bitwise_or(low, fg)))
        high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(key, 32 - scene_bits), 0x7FFFFFFF)
        errors_sorted = tf.bitcast(0x7FFFFFFF - tf.cast(high, tf.int32), tf.float32)
        steps, gts = _scene_jaccard_steps(tf.cast(tf.bitwise.bitwise_and(key, 1), tf.int32), tf.float32, splits, scene)
        num_scenes = tf.shape(splits)[0] - 1
        loss = _scene_sums(errors_sorted * steps, scene, num_scenes)

        def backward(loss_cotangent: tf.Tensor, present_cotangent: tf.Tensor) -> tuple[tf.Tensor, None, None]:
            index = tf.bitwise.bitwise_and(tf.bitwise.right_shift(key, 1), (1 << (31 - scene_bits)) - 1)
            index += tf.range(tf.cast(num_rows, tf.int64), dtype=tf.int64)[:, None] * tf.cast(num_points, tf.int64)
            cotangent = tf.transpose(tf.gather(loss_cotangent, scene))  # [K, N]: each point's scene's
            grad = _sorted_error_grad(errors_sorted, steps * cotangent)
            size = tf.cast(num_rows, tf.int64) * tf.cast(num_points, tf.int64)
            flat = tf.scatter_nd(tf.reshape(index, [-1, 1]), tf.reshape(grad, [-1]), size[None])
            return tf.reshape(flat, [num_rows, num_points]), None, None

        return (loss, tf.transpose(gts > 0)), backward

    return packed(errors, fg, splits)


def _host_scene_rows(
    pred: np.ndarray, codes: np.ndarray, splits: np.ndarray, mode: int, need_grad: bool
) -> tuple[np.ndarray, ...]:
    """The C kernel on points-first rows ``pred [K, N]``: loss ``[S, K]``, presence ``[S, K]`` and
    (``need_grad``) d loss / d pred with each point's scene ``[N]`` (int32), for backward.
    Checks the splits again: a graph may run it before its asserts."""
    num_rows, num_points = pred.shape
    if splits[0] != 0 or np.any(splits[1:] < splits[:-1]) or splits[-1] != num_points:
        raise ValueError(f"row_splits must rise from 0 to {num_points}, the number of points; got {_shown(splits)}")
    num_scenes = splits.size - 1
    grad = _aligned_empty(pred.shape, np.float32) if need_grad else None
    if num_rows * num_points * num_scenes == 0:  # no point, or no scene: zeros
        outputs = (np.zeros((num_scenes, num_rows), np.float32), np.zeros((num_scenes, num_rows), np.bool_))
        if grad is not None:
            grad.fill(0)
    else:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or _CORES
        outputs = C.lovasz_scene_rows(pred, codes, splits[1:], mode, grad, threads)
    if grad is None:  # not need_grad
        return outputs
    return (*outputs, grad, np.repeat(np.arange(num_scenes, dtype=np.int32), np.diff(splits)))


def _host_scene_call(
    pred: tf.Tensor, codes: tf.Tensor, splits: tf.Tensor, mode: int, need_grad: bool
) -> list[tf.Tensor]:
    outputs = tf.numpy_function(
        functools.partial(_host_scene_rows, mode=mode, need_grad=need_grad),
        [pred, codes, splits],
        [tf.float32, tf.bool] + [tf.float32, tf.int32] * need_grad,
        stateful=False,
        name="lovasz_c_kernel_scenes",
    )
    rows = tf.TensorShape([None if splits.shape[0] is None else splits.shape[0] - 1, pred.shape[0]])
    for output, shape in zip(outputs, [rows, rows, pred.shape, pred.shape[1:]]):
        output.set_shape(shape)
    return outputs


def _scene_kernel_rows(
    pred: tf.Tensor, codes: tf.Tensor, splits: tf.Tensor, mode: int, points_first: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[S, K]`` of float32 rows ``pred [K, N]`` (``points_first``: ``[N, K]``) by the
    C kernel (``lovasz_scene_rows_f32``: each (scene, class) run of a row sorted on its own), with the
    gradient in the same pass where a ``GradientTape`` watches ``pred``, as :func:`_kernel_rows`.
    ``codes`` are ``[K, N]``. The transpose of points-first input is taken inside, so that backward
    transposes the gradient once, as it multiplies it by each point's scene's cotangent."""
    need_grad = record is None or record.should_record_backprop([pred])

    @tf.custom_gradient
    def rows(
        pred: tf.Tensor, codes: tf.Tensor, splits: tf.Tensor
    ) -> tuple[tuple[tf.Tensor, ...], Callable[..., tuple[tf.Tensor, None, None]]]:
        class_rows = tf.transpose(pred) if points_first else pred
        outputs = _host_scene_call(class_rows, codes, splits, mode, need_grad)

        def backward(loss_cotangent: tf.Tensor, present_cotangent: tf.Tensor) -> tuple[tf.Tensor, None, None]:
            grad, scene = outputs[2:] if need_grad else _host_scene_call(class_rows, codes, splits, mode, True)[2:]
            cotangent = tf.gather(loss_cotangent, scene)  # [N, K]: a gather of rows (along axis 1: slower)
            if points_first:
                return tf.transpose(grad) * cotangent, None, None
            return grad * tf.transpose(cotangent), None, None

        return tuple(outputs[:2]), backward

    return rows(pred, codes, splits)


def _scene_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, channels_last: bool, splits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[S, K]`` of each (scene, class) of points-first ``pred [1, N, K]`` (or ``[1, K, N]``)."""
    pred, fg = tf.squeeze(pred, 0), tf.squeeze(fg, 0)  # (x[0]'s gradient would copy)
    valid = None if valid is None else tf.squeeze(valid, 0)
    rows = tf.transpose if channels_last else tf.identity  # [K, N]: a class's row of every point

    def sort() -> tuple[tf.Tensor, tf.Tensor]:
        return _scene_sorted_losses(rows(pred), rows(fg), None if valid is None else rows(valid), hinge, splits)

    if _use_kernel(pred) and C.scene_kernel() is not None:
        codes = tf.cast(fg, tf.uint8)
        if valid is not None:
            codes = tf.where(valid, codes, tf.constant(2, tf.uint8))  # 0 background, 1 foreground, 2 ignored
        mode = C.HINGE if hinge else C.SOFTMAX
        kernel = lambda: _scene_kernel_rows(pred, rows(codes), splits, mode, channels_last)  # noqa: E731
        size = pred.shape.num_elements()
        if size is None:  # chosen when run, as in _kernel_or_sort
            return tf.cond(tf.size(pred, tf.int64) <= C.MAX_ELEMENTS, kernel, sort)
        return kernel() if size <= C.MAX_ELEMENTS else sort()
    return sort()


def _scene_sorted_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, splits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_scene_losses` by a sort in TF: XLA's sort of packed keys (float32 under XLA on a CPU), else top_k."""
    if hinge:  # max(0, 1 - s x), the max taken after the sort
        errors = tf.where(fg, 1 - pred, 1 + pred)
    else:  # |[y = c] - p|
        errors = tf.abs(tf.where(fg, 1 - pred, pred))
    num_scenes = splits.shape[0] - 1 if splits.shape[0] is not None else None
    if (
        errors.dtype == tf.float32
        and num_scenes is not None
        and not tf.executing_eagerly()
        and gen_xla_ops is not None
        and _in_xla()
        and _on_cpu(errors)
    ):
        scene_bits = max(num_scenes - 1, 0).bit_length()
        packed = lambda: _scene_packed_rows(errors, fg, valid, splits, scene_bits)  # noqa: E731
        fits = 1 << (31 - scene_bits) if scene_bits <= 30 else -1  # the points an index of the bits left tells apart
        num_points = errors.shape[1]
        if num_points is not None:
            if num_points <= fits:
                return packed()
        else:
            return tf.cond(tf.shape(errors)[1] <= fits, packed, lambda: _scene_sorted_rows(errors, fg, valid, splits))
    return _scene_sorted_rows(errors, fg, valid, splits)


def _lovasz_classes(
    pred: tf.Tensor,
    fg: tf.Tensor,
    valid: tf.Tensor | None,
    hinge: bool,
    classes: str | tuple[int, ...],
    per_image: bool,
    channels_last: bool,
    weights: tf.Tensor | None,
    reduction: str,
    scenes: tf.Tensor | None = None,
    across: tf.distribute.ReplicaContext | None = None,
) -> tf.Tensor:
    """Loss of ``pred [B, K, N]`` (``[B, N, K]`` channels-last) against ``fg``; ``valid`` broadcasts to it.

    With ``scenes`` (row splits ``[S + 1]``), ``B`` is 1 and the sets are the scenes of the ``N`` points.
    With ``across``, a replica context: the loss of every replica's batch (see ``_tf_distributed``).
    """
    axis = 2 if channels_last else 1
    if valid is not None:
        valid = tf.broadcast_to(valid, tf.shape(pred))
        fg = tf.logical_and(fg, valid)
    if not isinstance(classes, str):  # a list may repeat a class: each repetition counts
        pred, fg = tf.gather(pred, classes, axis=axis), tf.gather(fg, classes, axis=axis)
        valid = None if valid is None else tf.gather(valid, classes, axis=axis)
        weights = None if weights is None else tf.gather(weights, classes)
    if across is not None and not per_image:
        pred, fg, valid = _tf_distributed.gather_set(pred, fg, valid, channels_last, across)
        channels_last, axis = True, 2
    if scenes is not None:
        loss, present = _scene_losses(pred, fg, valid, hinge, channels_last, scenes)
    elif _use_kernel(pred):
        loss, present = _kernel_or_sort(pred, fg, valid, hinge, per_image, channels_last)
    else:
        loss, present = _sorted_losses(pred, fg, valid, hinge, per_image, channels_last)

    num_rows = pred.shape[axis]
    loss, present = tf.reshape(loss, [-1, num_rows]), tf.reshape(present, [-1, num_rows])
    w = tf.ones_like(loss) if weights is None else tf.broadcast_to(weights, tf.shape(loss))
    if classes == "present":
        w = w * tf.cast(present, loss.dtype)
    weight_sum = tf.reduce_sum(w, axis=-1)
    per_set = tf.math.divide_no_nan(tf.reduce_sum(loss * w, axis=-1), weight_sum)
    if reduction == "none":
        return per_set if per_image else per_set[0]
    if across is not None and per_image:
        return _tf_distributed.reduce_sets(per_set, reduction, across)
    total = tf.reduce_sum(per_set)  # the mean of no image (an empty batch) is 0, as for an all-ignored one
    return total if reduction == "sum" else tf.math.divide_no_nan(total, tf.cast(tf.size(per_set), total.dtype))


def _replicas(global_batch: bool) -> tf.distribute.ReplicaContext | None:
    """The replica context whose replicas' batches form the loss, with ``global_batch``; None where the
    batch is whole (no strategy, one replica, the cross-replica context)."""
    if not isinstance(global_batch, bool):
        raise TypeError(f"global_batch must be True or False; got {global_batch!r}")
    return _tf_distributed.replica_context() if global_batch else None


# ----------------------------------------------------------------------------- public functions


def lovasz_softmax(
    probas: TensorOrRagged,
    labels: TensorOrRagged,
    classes: Classes = "present",
    per_image: bool = False,
    ignore: int | None = None,
    order: str = "BHWC",
    *,
    from_logits: bool = False,
    weights: Weights = None,
    reduction: str = "mean",
    row_splits: TensorLike | None = None,
    global_batch: bool = False,
) -> tf.Tensor:
    r"""Multi-class Lovász-Softmax loss: a convex surrogate of ``1 - IoU`` averaged over classes.

    For each class the errors ``|[y = c] - p(c)|`` are sorted in decreasing order and
    the loss is their Lovász extension of the Jaccard loss (Algorithm 1 of the paper).

    Args:
        probas: ``[B, *spatial, C]`` (``order='BHWC'``) or ``[B, C, *spatial]`` (``'BCHW'``)
            class probabilities (logits with ``from_logits``), or ``[B, *spatial]`` sigmoid
            output, read as the two classes ``[1 - p, p]``.
            Note the order: ``(probas, labels)``, unlike Keras' ``(y_true, y_pred)``.
        labels: ``[B, *spatial]`` (or ``[B, *spatial, 1]``) class indices in ``[0, C - 1]``, or
            ``ignore``: integers, or floats holding whole numbers. Out-of-range and non-whole
            labels raise ``ValueError`` eagerly; inside ``tf.function`` they are not checked.
        classes: ``'present'``, ``'all'`` or a list of class indices to average over.
        per_image: the loss of each image, averaged; otherwise the batch is one set.
        ignore: label value of pixels that take no part (e.g. 255).
        order: ``'BHWC'`` channels-last (the original's default) or ``'BCHW'`` channels-first.
        from_logits: ``probas`` are logits; a softmax (sigmoid for one channel) is taken inside.
        weights: ``[C]`` per-class weights for the class average.
        reduction: ``'mean'`` / ``'sum'`` over images, or ``'none'`` for ``[B]`` with ``per_image``
            (without it the batch is one set and the result is 0-d).
        row_splits: for point clouds and other ragged sets: ``[S + 1]`` integers, TF's row
            splits (0, then each scene's end, the last one ``N``: scene ``s`` is the points
            ``row_splits[s]:row_splits[s + 1]``). Then ``probas`` is points-first, ``[N, C]``
            (or ``[N]`` for one channel; ``order`` stays ``'BHWC'``), ``labels`` is ``[N]``, and
            ``per_image=True`` means one set per scene (``reduction='none'``: ``[S]``); without
            it all points are one set. Exact: each scene's loss and gradient equal the dense
            loss's on that scene alone; a scene with no valid point gets 0, like an all-ignored
            image. Instead, ``probas`` and ``labels`` may be ``tf.RaggedTensor`` ``[S, None, C]``
            and ``[S, None]`` with equal row splits. Bad row splits raise ``ValueError`` eagerly;
            in ``tf.function`` an assert fails the run; under XLA they are not checked.
        global_batch: in a ``tf.distribute`` replica context (``strategy.run``), the loss of the
            global batch, the same on every replica: in batch mode each replica all-gathers every
            replica's pixels and computes the loss of their union (shards may differ in batch and
            spatial size); per image, the mean (or sum) over every replica's images. Each
            replica's gradient is its slice of the single-device gradient, so the replicas'
            gradients summed (as ``apply_gradients`` sums them) are the single-device gradient.
            Elsewhere (no strategy, one replica, the cross-replica context) it changes nothing.

    Returns:
        A 0-d tensor (``[B]`` with ``per_image`` and ``reduction='none'``; ``[S]`` for scenes)
        in the dtype of ``probas``.

    Example:
        >>> probas = tf.constant([[[0.9, 0.1], [0.4, 0.6]]])  # [B=1, N=2, C=2]
        >>> round(float(lovasz_softmax(probas, tf.constant([[0, 1]]))), 6)
        0.325

        Points of two scenes, of 2 and 1 points:

        >>> points = tf.constant([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])  # [N=3, C=2]
        >>> labels = tf.constant([0, 1, 1])  # [N=3]
        >>> losses = lovasz_softmax(points, labels, per_image=True, row_splits=[0, 2, 3], reduction="none")
        >>> [round(float(loss), 6) for loss in losses]
        [0.325, 0.2]
        >>> scenes = tf.RaggedTensor.from_row_splits(points, [0, 2, 3])  # [S=2, None, C=2]
        >>> labels = tf.RaggedTensor.from_row_splits(labels, [0, 2, 3])  # [S=2, None]
        >>> round(float(lovasz_softmax(scenes, labels, per_image=True)), 6)
        0.2625
    """
    probas, labels, splits = _points(probas, labels, row_splits, "softmax", ("probas", "labels"))
    probas = _check_prediction(probas, "probas")
    labels = _check_labels(labels, "labels")
    channels_last = _check_points_order(order, splits)
    channel_axis = -1 if channels_last else 1
    extra = V.extra_label_axis(labels.shape, [probas.shape, V.without_axis(probas.shape, channel_axis)])
    if extra is not None:
        labels = tf.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives them, or [B, 1, *spatial]
    if probas.shape.rank == labels.shape.rank + 1 and probas.shape[channel_axis] == 1:
        probas = tf.squeeze(probas, channel_axis)  # one channel: the foreground probability
    if probas.shape.rank == labels.shape.rank + 1:
        _check_known_classes(probas.shape[channel_axis], "probas", probas.shape)
    sigmoid, num_classes = V.softmax_layout(probas.shape, labels.shape, channel_axis)
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    dtype = _compute_dtype(probas)
    w = _as_weights(weights, num_classes, dtype)

    batch, pixels = tf.shape(labels)[0], _size(labels, 1)
    lab = tf.reshape(labels, [batch, pixels])
    valid = None if ignore is None else lab != ignore
    if lab.dtype.is_floating:  # class indices as floats: whole numbers only (1.5 is no class)
        _check_values(lab, tf.equal(lab, tf.round(lab)), valid, "whole numbers (class indices)", "labels")
    _check_values(lab, (lab >= 0) & (lab < num_classes), valid, f"in [0, {num_classes - 1}]", "labels")
    lab = tf.cast(lab, tf.int32) if lab.dtype.is_floating else lab

    class_axis = 2 if channels_last else 1  # of pred [B, N, C] or [B, C, N]
    if sigmoid:
        pred = tf.reshape(tf.cast(probas, dtype), [batch, pixels])
    else:
        pred = tf.reshape(
            tf.cast(probas, dtype), [batch, pixels, num_classes] if channels_last else [batch, num_classes, pixels]
        )
        valid = None if valid is None else tf.expand_dims(valid, class_axis)
    if valid is not None:  # a NaN at an ignored pixel must reach neither the loss nor the gradient
        pred = tf.where(valid, pred, tf.zeros((), dtype))
    if sigmoid:
        pred = tf.sigmoid(pred) if from_logits else pred
        pred = tf.stack([1 - pred, pred], axis=class_axis)
        valid = None if valid is None else tf.expand_dims(valid, class_axis)
    elif from_logits:
        pred = tf.nn.softmax(pred, axis=class_axis)
    fg = tf.one_hot(lab, num_classes, on_value=True, off_value=False, axis=class_axis)
    scenes = splits if per_image else None
    across = _replicas(global_batch)
    loss = _lovasz_classes(pred, fg, valid, False, classes, per_image, channels_last, w, reduction, scenes, across)
    return tf.cast(loss, probas.dtype)


def _hinge_classes(
    pred: tf.Tensor,
    fg: tf.Tensor,
    valid: tf.Tensor | None,
    classes: str | tuple[int, ...],
    per_image: bool,
    channels_last: bool,
    weights: tf.Tensor | None,
    reduction: str,
    margin: str,
    symmetric: bool,
    scenes: tf.Tensor | None = None,
    across: tf.distribute.ReplicaContext | None = None,
) -> tf.Tensor:
    """The Lovász hinge with its variants: ``elu(m) + 1`` of the margins is the plain hinge at
    ``x' = -s elu(1 - s x)``; ``symmetric`` averages with the flipped problem, ``-x'`` against ``1 - y``."""
    if across is not None and not per_image:  # gathered once, for both problems of the symmetric hinge
        pred, fg, valid = _tf_distributed.gather_set(pred, fg, valid, channels_last, across)
        channels_last, across = True, None
    if margin == "elu":
        signs = tf.where(fg, tf.ones_like(pred), -tf.ones_like(pred))
        pred = -signs * tf.nn.elu(1 - signs * pred)
    args = (classes, per_image, channels_last, weights, reduction, scenes, across)
    loss = _lovasz_classes(pred, fg, valid, True, *args)
    if symmetric:  # not fg: the ignored pixels are left out again by valid
        flipped = _lovasz_classes(-pred, tf.logical_not(fg), valid, True, *args)
        loss = (loss + flipped) / 2
    return loss


def lovasz_hinge(
    logits: TensorOrRagged,
    labels: TensorOrRagged,
    per_image: bool = True,
    ignore: int | None = None,
    *,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    row_splits: TensorLike | None = None,
    global_batch: bool = False,
) -> tf.Tensor:
    r"""Binary Lovász hinge loss: a convex surrogate of ``1 - IoU`` of the foreground.

    The errors are the hinge margins ``max(0, 1 - s x)`` with signs ``s = 2 y - 1``.

    Args:
        logits: ``[B, *spatial]`` (or ``[B, *spatial, 1]`` / ``[B, 1, *spatial]``) raw scores.
            Note the order: ``(logits, labels)``, unlike Keras' ``(y_true, y_pred)``.
        labels: ``[B, *spatial]`` (or ``[B, *spatial, 1]``) binary masks, 0 or 1 (integer, bool
            or float), or ``ignore``.
        per_image: the loss of each image, averaged; otherwise the batch is one set.
        ignore: label value of pixels that take no part.
        reduction: ``'mean'`` / ``'sum'`` over images, or ``'none'`` for ``[B]`` with ``per_image``.
        margin: ``'relu'`` (``max(0, m)``) or ``'elu'`` (``elu(m) + 1``), of the margins ``m = 1 - s x``.
        symmetric: the mean with the loss of ``-logits`` against ``1 - labels``.
        row_splits: ``[S + 1]``, the scenes of points-first ``logits [N]`` (or ``[N, 1]``) and
            ``labels [N]``; or ragged ``[S, None]`` inputs instead. See :func:`lovasz_softmax`.
        global_batch: the loss of the global batch across ``tf.distribute`` replicas; see
            :func:`lovasz_softmax`.

    Returns:
        A 0-d tensor (``[B]`` with ``per_image`` and ``reduction='none'``; ``[S]`` for scenes)
        in the dtype of ``logits``.

    Example:
        >>> float(lovasz_hinge(tf.constant([[2.0, -1.0, 0.5]]), tf.constant([[1, 0, 1]])))
        0.25
    """
    logits, labels, splits = _points(logits, labels, row_splits, "hinge", ("logits", "labels"))
    logits = _check_prediction(logits, "logits")
    labels = _check_labels(labels, "labels")
    s = tuple(logits.shape)
    accepted = [s] + [V.without_axis(s, a) for a in (1, -1) if len(s) >= 2 and s[a] == 1]
    extra = V.extra_label_axis(labels.shape, accepted)
    if extra is not None:
        labels = tf.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives masks, or [B, 1, *spatial]
    if logits.shape.rank == labels.shape.rank + 1 and logits.shape[-1] == 1:
        logits = tf.squeeze(logits, -1)  # [B, *spatial, 1], as Keras models give it
    V.hinge_layout(logits.shape, labels.shape)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric)
    layout = [tf.shape(labels)[0], 1, _size(labels, 1)]
    pred = tf.reshape(tf.cast(logits, _compute_dtype(logits)), layout)
    lab = tf.reshape(labels, layout)
    valid = None if ignore is None else lab != tf.cast(ignore, lab.dtype)
    _check_values(lab, (lab == 0) | (lab == 1), valid, "0 or 1", "labels")
    scenes = splits if per_image else None
    options = ("all", per_image, False, None, reduction, margin, symmetric, scenes, _replicas(global_batch))
    loss = _hinge_classes(pred, lab == 1, valid, *options)
    return tf.cast(loss, logits.dtype)


def lovasz_multilabel(
    logits: TensorOrRagged,
    targets: TensorOrRagged,
    classes: Classes = "present",
    per_image: bool = True,
    ignore: int | None = None,
    order: str = "BHWC",
    *,
    from_logits: bool = True,
    weights: Weights = None,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    row_splits: TensorLike | None = None,
    global_batch: bool = False,
) -> tf.Tensor:
    r"""Multi-label Lovász loss: one binary Lovász loss per channel, averaged over channels.

    With ``from_logits`` (the default) each channel gets the Lovász hinge of its
    logits; otherwise ``logits`` are probabilities and each channel gets the
    Lovász-Softmax term of its foreground.

    Args:
        logits: ``[B, *spatial, C]`` (``order='BHWC'``) or ``[B, C, *spatial]`` (``'BCHW'``).
        targets: 0/1 masks of the shape of ``logits``, or ``ignore``.
        classes: ``'present'`` (channels with a positive target in the set), ``'all'`` or a list.
        per_image, ignore, weights, reduction: as in :func:`lovasz_softmax`.
        margin, symmetric: the hinge's variants, as in :func:`lovasz_hinge` (``from_logits`` only).
        row_splits: ``[S + 1]``, the scenes of points-first ``logits [N, C]`` and ``targets [N, C]``;
            or ragged ``[S, None, C]`` inputs instead. See :func:`lovasz_softmax`.
        global_batch: the loss of the global batch across ``tf.distribute`` replicas; see
            :func:`lovasz_softmax`.

    Returns:
        A 0-d tensor (``[B]`` with ``per_image`` and ``reduction='none'``; ``[S]`` for scenes)
        in the dtype of ``logits``.

    Example:
        >>> targets = tf.constant([[[1, 0], [0, 1]]])  # [B=1, N=2, C=2], channels-last
        >>> float(lovasz_multilabel(tf.zeros((1, 2, 2)), targets))
        1.0
        >>> float(lovasz_multilabel(tf.constant([[[2.0, -3.0], [-1.0, 1.0]]]), targets))
        0.0
    """
    logits, targets, splits = _points(logits, targets, row_splits, "multilabel", ("logits", "targets"))
    logits = _check_prediction(logits, "logits")
    targets = _check_labels(targets, "targets")
    channels_last = _check_points_order(order, splits)

    def channels_first(shape: tf.TensorShape) -> list[int | None]:
        shape = shape.as_list()
        return shape[:1] + shape[-1:] + shape[1:-1] if channels_last and len(shape) >= 2 else shape

    shapes = channels_first(logits.shape), channels_first(targets.shape)
    if len(shapes[0]) >= 2:
        _check_known_classes(shapes[0][1], "logits", logits.shape)
    num_classes = V.multilabel_layout(*shapes)  # type: ignore[arg-type]  # the class dim is known (checked)
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric, from_logits)
    dtype = _compute_dtype(logits)
    w = _as_weights(weights, num_classes, dtype)
    batch = tf.shape(logits)[0]
    pixels = _size(logits, 1, -1) if channels_last else _size(logits, 2)
    layout = [batch, pixels, num_classes] if channels_last else [batch, num_classes, pixels]
    pred = tf.reshape(tf.cast(logits, dtype), layout)
    tgt = tf.reshape(targets, layout)
    valid = None if ignore is None else tgt != tf.cast(ignore, tgt.dtype)
    _check_values(tgt, (tgt == 0) | (tgt == 1), valid, "0 or 1", "targets")
    scenes = splits if per_image else None
    across = _replicas(global_batch)
    if from_logits:
        options = (classes, per_image, channels_last, w, reduction, margin, symmetric, scenes, across)
        loss = _hinge_classes(pred, tgt == 1, valid, *options)
    else:
        options = (classes, per_image, channels_last, w, reduction, scenes, across)
        loss = _lovasz_classes(pred, tgt == 1, valid, False, *options)
    return tf.cast(loss, logits.dtype)


# ----------------------------------------------------------------------------- the original's flat API


def lovasz_grad(gt_sorted: TensorLike) -> tf.Tensor:
    """Gradient of the Lovász extension w.r.t. errors sorted in decreasing order (Algorithm 1).

    ``gt_sorted`` is ``[P]`` 0/1 ground truth in the order of the sorted errors; the
    result ``[P]`` holds ``J(k) - J(k-1)`` (float64 for float64 input, else float32).

    Example:
        >>> [round(float(g), 4) for g in lovasz_grad(tf.constant([1.0, 0.0, 1.0]))]
        [0.5, 0.1667, 0.3333]
    """
    gt_sorted = tf.convert_to_tensor(gt_sorted)
    if gt_sorted.shape.rank != 1:
        raise ValueError(f"gt_sorted must be a 1-D tensor; got shape {gt_sorted.shape}")
    dtype = tf.float64 if gt_sorted.dtype == tf.float64 else tf.float32
    return _jaccard_steps(tf.cast(tf.round(tf.cast(gt_sorted, dtype)), tf.int32), dtype)


def flatten_probas(
    probas: TensorLike, labels: TensorLike, ignore: int | None = None, order: str = "BHWC"
) -> tuple[tf.Tensor, tf.Tensor]:
    """Flatten probas to ``[P, C]`` and labels to ``[P]``, removing pixels labelled ``ignore``.

    As in the original (a data-dependent shape: the losses themselves mask instead).

    Example:
        >>> probas = tf.constant([[[[0.9, 0.1], [0.2, 0.8]]]])  # [B=1, H=1, W=2, C=2]
        >>> flat, labels = flatten_probas(probas, tf.constant([[[0, 255]]]), ignore=255)
        >>> flat.shape, labels.numpy().tolist()
        (TensorShape([1, 2]), [0])
    """
    probas, labels = tf.convert_to_tensor(probas), tf.convert_to_tensor(labels)
    if probas.shape.rank == labels.shape.rank:
        probas = probas[..., None]
    elif not _check_order(order):
        probas = tf.experimental.numpy.moveaxis(probas, 1, -1)
    probas = tf.reshape(probas, [-1, probas.shape[-1]])
    labels = tf.reshape(labels, [-1])
    if ignore is None:
        return probas, labels
    valid = labels != ignore
    return tf.boolean_mask(probas, valid), tf.boolean_mask(labels, valid)


def flatten_binary_scores(
    scores: TensorLike, labels: TensorLike, ignore: int | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Flatten scores and labels to ``[P]``, removing pixels labelled ``ignore``, as in the original.

    Example:
        >>> scores, labels = tf.constant([[2.0, -1.0, 0.5]]), tf.constant([[1, 255, 1]])
        >>> scores, labels = flatten_binary_scores(scores, labels, ignore=255)
        >>> scores.numpy().tolist(), labels.numpy().tolist()
        ([2.0, 0.5], [1, 1])
    """
    scores, labels = tf.reshape(scores, [-1]), tf.reshape(labels, [-1])
    if ignore is None:
        return scores, labels
    valid = labels != ignore
    return tf.boolean_mask(scores, valid), tf.boolean_mask(labels, valid)


def lovasz_softmax_flat(probas: TensorLike, labels: TensorLike, classes: Classes = "present") -> tf.Tensor:
    """Lovász-Softmax of flat ``probas [P, C]`` (or sigmoid ``[P]``) against ``labels [P]``.

    Example:
        >>> probas = tf.constant([[0.9, 0.1], [0.4, 0.6]])  # [P=2, C=2]
        >>> round(float(lovasz_softmax_flat(probas, tf.constant([0, 1]))), 6)
        0.325
    """
    probas, labels = tf.convert_to_tensor(probas), tf.convert_to_tensor(labels)
    return lovasz_softmax(probas[None], labels[None], classes=classes, per_image=False)


def lovasz_hinge_flat(logits: TensorLike, labels: TensorLike) -> tf.Tensor:
    """Lovász hinge of flat ``logits [P]`` against 0/1 ``labels [P]``.

    Example:
        >>> float(lovasz_hinge_flat(tf.constant([2.0, -1.0, 0.5]), tf.constant([1, 0, 1])))
        0.25
    """
    logits, labels = tf.convert_to_tensor(logits), tf.convert_to_tensor(labels)
    return lovasz_hinge(logits[None], labels[None], per_image=False)
