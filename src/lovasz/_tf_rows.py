"""The row engines of :mod:`lovasz.tf`: the loss of each (set, class) row, by a sort in TF or by the C kernel.

A *row* is one (set, class) pair: a class's pixels of one image (``per_image``) or of the
whole batch. :mod:`lovasz.tf` checks the arguments and builds the predictions, labels and
masks; this module sorts the rows and returns each row's loss and presence:

- :func:`kernel_or_sort`: float32 on a CPU, eagerly or in ``tf.function``: the C kernel of
  :mod:`lovasz.torch` (``_kernel.c``) through ``tf.numpy_function`` inside a
  ``tf.custom_gradient``, the gradient returned with the loss where a ``GradientTape``
  watches the input (:func:`use_kernel` says where it applies);
- :func:`sorted_losses`: a sort in TF, for any dtype and device and under XLA, laid out by
  :func:`sort_layout`: float32 under XLA on a CPU sorts one packed int64 key per pixel in
  ``[R, N]`` rows; float32 on a GPU puts every row in one 1-D sort of such keys (the
  GPU's one-segment radix sort); elsewhere ``tf.math.top_k`` of the rows.

The Jaccard steps are computed in closed form (:func:`jaccard_steps`). The points of scenes
(:mod:`lovasz._tf_scenes`) share these helpers.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from lovasz import _ckernel as C

try:  # TF internals, present in TF 2.16-2.21: without them, the C kernel runs eagerly only, and XLA uses top_k
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops  # XlaSort: XLA's sort of one operand
    from tensorflow.python.eager import forwardprop_util, record
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util
except ImportError:  # pragma: no cover
    gen_xla_ops = forwardprop_util = record = tf_ops = control_flow_util = None


# ----------------------------------------------------------------------------- the kernel


def jaccard_steps(fg_sorted: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
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
    steps = tf.where(tf.equal(fg_sorted, 1), 1 / union, background_step)
    first = 1 - intersection[..., :1] / union[..., :1]  # J(1); the formula divides by U(0)
    return tf.concat([first, steps[..., 1:]], axis=-1)


def counted(errors_sorted: tf.Tensor) -> tf.Tensor:
    """The sorted errors as they add to the loss: ``relu`` (negative hinge margins and ignored pixels add
    nothing), and a NaN error (a NaN prediction at a valid pixel) NaN with a NaN derivative, as on every
    path: relu's derivative there is 0, which the constant NaN factor on its way back makes NaN. (The NaN is
    the error's own, not a constant: tf.debugging.enable_check_numerics raises at any op that makes one.)"""
    nan_factor = tf.where(tf.math.is_nan(errors_sorted), errors_sorted, tf.ones((), errors_sorted.dtype))
    return tf.nn.relu(errors_sorted * tf.stop_gradient(nan_factor))


# How rows are sorted (sort_layout). TF's and XLA's sorts of [R, N] rows give each row its own segment of
# CUB's segmented sort on a GPU (one block per segment: slow for a few long rows), while a sort of ONE row
# reaches CUB's one-segment radix sort (tensorflow#55619, #56806): under XLA, an XlaSort of one 1-D int64
# operand; outside, top_k of one row. So on a GPU every row goes into one 1-D sort, the row in the key.
TOP_K = "top_k"  # [R, N] rows by tf.math.top_k, the gradient through a gather: any dtype, any device
PACKED_ROWS = "packed rows"  # float32 under XLA on a CPU: XLA's sort of [R, N] rows of packed int64 keys
PACKED_FLAT = "packed flat"  # float32 on a GPU: packed int64 keys with the row above, one 1-D sort for all rows

# A packed key is a non-negative int64 (63 bits): 31 for the error, 1 for the label, and this many for the
# row within its sort and the pixel's index. Rows beyond what the bits left by the index tell apart go into
# further 1-D sorts (groups of rows): one sort while rows x pixels stays under about 2^31.
ROW_AND_INDEX_BITS = 31
_MAX_KEY = 0x7FFFFFFFFFFFFFFF


def index_bits_for(num_pixels: int) -> int:
    """The bits that tell apart the indices ``0 .. num_pixels - 1``."""
    return max(num_pixels - 1, 0).bit_length()


def sort_layout(errors: tf.Tensor) -> str:
    """How the rows of ``errors [R, N]`` are sorted, chosen when traced: :data:`PACKED_ROWS` for float32
    under XLA on a CPU; :data:`PACKED_FLAT` for float32 on a GPU (eagerly, in ``tf.function`` and under
    XLA) where the shape is known when traced and an index fits the key; :data:`TOP_K` elsewhere, and where
    TF's forward mode or ``tf.vectorized_map`` would lose the packed sort's custom gradient (a JVP or a
    gradient of 0 under XLA, without a word)."""
    if errors.dtype != tf.float32 or in_forward_mode(errors) or in_pfor():
        return TOP_K
    if on_cpu(errors):
        xla = not tf.executing_eagerly() and in_xla()
        return PACKED_ROWS if xla and gen_xla_ops is not None else TOP_K
    fits = errors.shape.is_fully_defined() and index_bits_for(errors.shape[1]) <= ROW_AND_INDEX_BITS
    return PACKED_FLAT if fits else TOP_K


def sort_key(errors: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
    """``top_k``'s key of ``errors``: ignored pixels get the lowest finite value, and sort last, where they
    add nothing; an error of -inf (an infinite logit) ties with them, in pixel order. Finite, not ``-inf``:
    ``tf.debugging.enable_check_numerics`` raises at any op that makes an infinity."""
    if valid is None:
        return errors
    # (in a tf.function grappler may rewrite not(a < b) as a >= b, which sends a NaN to the lowest key too:
    # the sorted errors are gathered from the errors, not from the key)
    return tf.where(valid & ~(errors < errors.dtype.min), errors, errors.dtype.min)


def _lovasz_rows(errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
    """Lovász extension of each row of ``errors [R, N]`` against ``fg [R, N]`` (bool, False where ignored).

    Ignored pixels sort last (:func:`sort_key`).
    float32 rows under XLA on a CPU, or on a GPU, take :func:`_packed_rows` instead (:func:`sort_layout`).
    """
    layout = sort_layout(errors)
    if layout != TOP_K:
        return _packed_rows(errors, fg, valid, layout)
    key = sort_key(errors, valid)
    _, perm = tf.math.top_k(tf.stop_gradient(key), k=tf.shape(key)[-1], sorted=True)
    # the gradient goes through the gather, not top_k, whose gradient fails on rows of no pixel (an empty batch);
    # the errors, not the key: a NaN error keeps its NaN (see sort_key), an ignored pixel adds 0
    errors_sorted = tf.gather(errors if valid is None else tf.where(valid, errors, 0), perm, batch_dims=1)
    fg_sorted = tf.gather(tf.cast(fg, tf.int32), perm, batch_dims=1)
    steps = tf.stop_gradient(jaccard_steps(fg_sorted, errors.dtype))
    return tf.reduce_sum(counted(errors_sorted) * steps, axis=-1)


def _packed_rows(errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, layout: str = PACKED_ROWS) -> tf.Tensor:
    """:func:`_lovasz_rows` for float32 by a sort of one int64 key per pixel, no gather.

    The key is ``(row << 31 | 0x7fffffff - error bits) << (b + 1) | index << 1 | fg``, ``b`` bits
    for the index: a non-negative float's bits order like the number, so one ascending integer
    sort orders each row's errors decreasingly (ties by pixel index, as ``top_k``), and the
    sorted keys hold the errors, the flags and the permutation. :data:`PACKED_ROWS` sorts each
    row on its own (no row in the key, ``b = 31``); :data:`PACKED_FLAT` puts all rows in one 1-D
    sort, the row (within its sort) above the error, ``b`` the bits ``N`` needs. Negative errors
    (and ignored pixels) count as 0: they sort last, where they add nothing. Backward scatters
    each pixel's step to its place.
    """
    if valid is not None:
        errors = tf.where(valid, errors, tf.zeros((), errors.dtype))
    errors = tf.where(errors < 0, tf.zeros((), errors.dtype), errors)  # NaN stays NaN
    if layout == PACKED_ROWS:
        return _packed_sort(errors, tf.cast(fg, tf.int64), ROW_AND_INDEX_BITS, None)
    index_bits = index_bits_for(errors.shape[1])
    return _packed_sort(errors, tf.cast(fg, tf.int64), index_bits, 1 << (ROW_AND_INDEX_BITS - index_bits))


def sorted_error_grad(errors_sorted: tf.Tensor, grad: tf.Tensor) -> tf.Tensor:
    """``grad`` where the sorted error counts (> 0), 0 where it does not, NaN where it is NaN (a NaN
    prediction at a valid pixel: the loss is NaN, and so is its gradient, as on every path)."""
    grad = tf.where(errors_sorted > 0, grad, tf.zeros((), grad.dtype))
    return tf.where(tf.math.is_nan(errors_sorted), tf.cast(errors_sorted, grad.dtype), grad)  # (no NaN constant)


def sorted_keys(keys: tf.Tensor, rows_per_sort: int | None) -> tf.Tensor:
    """``keys [R, N]`` with each row sorted ascending: by XLA's sort of the rows (``rows_per_sort``
    None), or by one 1-D sort of each group of ``rows_per_sort`` rows (the row within its group in
    the keys' top bits, so that the group's sorted keys are its sorted rows one after another)."""
    if rows_per_sort is None:
        assert gen_xla_ops is not None  # sort_layout checks it
        return gen_xla_ops.xla_sort(keys)
    num_rows = keys.shape[0]  # known when traced (sort_layout)
    groups = [keys[start : start + rows_per_sort] for start in range(0, num_rows, rows_per_sort)] or [keys]
    return tf.concat([tf.reshape(_sort_flat(tf.reshape(group, [-1])), tf.shape(group)) for group in groups], 0)


def _sort_flat(keys: tf.Tensor) -> tf.Tensor:
    """1-D non-negative ``keys`` ascending, by a sort of one row: XLA's sort of one s64 operand under XLA
    (CUB's radix sort on a GPU), else ``top_k`` of one row (which takes the one-segment sort), descending,
    so of the keys' complement."""
    if gen_xla_ops is not None and not tf.executing_eagerly() and in_xla():
        return gen_xla_ops.xla_sort(keys)
    complement = tf.constant(_MAX_KEY, tf.int64) - keys
    return tf.constant(_MAX_KEY, tf.int64) - tf.math.top_k(complement, k=tf.size(keys), sorted=True).values


def packed_keys(
    errors: tf.Tensor,
    fg: tf.Tensor,
    index_bits: int,
    rows_per_sort: int | None,
    scene: tf.Tensor | None = None,
    scene_bits: int = 0,
) -> tf.Tensor:
    """The unsorted keys ``[R, N]`` of float32 ``errors [R, N]`` (>= 0 or NaN) and int64 0/1 ``fg``:
    ``((row << b | scene) << 31 | 0x7fffffff - error bits) << (i + 1) | index << 1 | fg``, ``i`` =
    ``index_bits``; the row within its sort only where ``rows_per_sort`` is given, the scene of each
    point ``[N]`` (``b`` = ``scene_bits``) only where given (:mod:`lovasz._tf_scenes`)."""
    bits = tf.bitwise.bitwise_and(tf.bitcast(errors, tf.int32), 0x7FFFFFFF)  # -0.0 and a negative NaN too
    high = tf.cast(0x7FFFFFFF - bits, tf.int64)
    if scene is not None:  # the scene above the error
        high = tf.bitwise.bitwise_or(high, tf.bitwise.left_shift(tf.cast(scene, tf.int64), 31)[None, :])
    if rows_per_sort is not None:  # the row within its sort, above the scene and the error
        row = tf.range(tf.cast(tf.shape(errors)[0], tf.int64), dtype=tf.int64) % rows_per_sort
        high = tf.bitwise.bitwise_or(high, tf.bitwise.left_shift(row, 31 + scene_bits)[:, None])
    low = tf.bitwise.bitwise_or(tf.bitwise.left_shift(tf.range(tf.shape(errors)[1], dtype=tf.int64), 1), fg)
    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(high, index_bits + 1), low)


def unpacked_errors(key: tf.Tensor, index_bits: int) -> tf.Tensor:
    """The float32 errors of sorted :func:`packed_keys`."""
    error_bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(key, index_bits + 1), 0x7FFFFFFF)
    return tf.bitcast(0x7FFFFFFF - tf.cast(error_bits, tf.int32), tf.float32)


def scattered_back(key: tf.Tensor, grad_sorted: tf.Tensor, index_bits: int) -> tf.Tensor:
    """``grad_sorted [R, N]``, laid out as sorted :func:`packed_keys` ``key``, back in the unsorted layout."""
    num_rows, num_pixels = tf.shape(key)[0], tf.shape(key)[1]
    index = tf.bitwise.bitwise_and(tf.bitwise.right_shift(key, 1), (1 << index_bits) - 1)
    index += tf.range(tf.cast(num_rows, tf.int64), dtype=tf.int64)[:, None] * tf.cast(num_pixels, tf.int64)
    size = tf.cast(num_rows, tf.int64) * tf.cast(num_pixels, tf.int64)
    flat = tf.scatter_nd(tf.reshape(index, [-1, 1]), tf.reshape(grad_sorted, [-1]), size[None])
    return tf.reshape(flat, [num_rows, num_pixels])


def _packed_sort(errors: tf.Tensor, fg: tf.Tensor, index_bits: int, rows_per_sort: int | None) -> tf.Tensor:
    """Loss ``[R]`` of float32 ``errors [R, N]`` (>= 0 or NaN) against int64 0/1 ``fg``, by the packed
    keys of :func:`_packed_rows`, ``index_bits`` for the index, sorted as :func:`sorted_keys` does."""

    @tf.custom_gradient
    def packed(errors: tf.Tensor, fg: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple[tf.Tensor, None]]]:
        key = sorted_keys(packed_keys(errors, fg, index_bits, rows_per_sort), rows_per_sort)
        errors_sorted = unpacked_errors(key, index_bits)
        steps = jaccard_steps(tf.cast(tf.bitwise.bitwise_and(key, 1), tf.int32), tf.float32)
        loss = tf.reduce_sum(errors_sorted * steps, axis=-1)

        def backward(loss_cotangent: tf.Tensor) -> tuple[tf.Tensor, None]:
            grad = sorted_error_grad(errors_sorted, steps * loss_cotangent[:, None])
            return scattered_back(key, grad, index_bits), None

        return loss, backward

    return packed(errors, fg)


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


def sorted_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, per_image: bool, channels_last: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[rows]`` of each row by a sort in TF: any dtype, any device, under XLA too."""
    if hinge:  # max(0, 1 - s x), the max taken after the sort
        errors = tf.where(fg, 1 - pred, 1 + pred)
    else:  # |[y = c] - p|; a NaN p at an ignored pixel would make abs's gradient NaN there
        pred = pred if valid is None else tf.where(valid, pred, tf.zeros((), pred.dtype))
        errors = tf.abs(tf.where(fg, 1 - pred, pred))
    row = lambda x: _rows(x, per_image, channels_last)  # noqa: E731
    fg_rows = row(fg)
    loss = _lovasz_rows(row(errors), fg_rows, None if valid is None else row(valid))
    return loss, tf.reduce_any(fg_rows, axis=-1)


# ----------------------------------------------------------------------------- the C kernel on a CPU

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_ALIGN = 64  # TF takes a returned array without a copy where it is this aligned


def aligned_empty(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a ``_ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + size].view(dtype).reshape(shape)


def _host_rows(pred: np.ndarray, codes: np.ndarray, mode: int, need_grad: bool) -> tuple[np.ndarray, ...]:
    """The C kernel on ``[S, R, N]`` rows: loss ``[R]``, presence ``[R]`` and (``need_grad``) d loss_r / d pred."""
    grad = aligned_empty(pred.shape, np.float32) if need_grad else None  # not pred: TF's input may share its buffer
    threads = tf.config.threading.get_intra_op_parallelism_threads() or CORES  # 0: TF's default, every core
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
    """:func:`sorted_losses` by the C kernel, on rows read in place from ``[B, K, N]``."""
    codes = tf.cast(fg, tf.uint8)
    if valid is not None:
        codes = tf.where(valid, codes, tf.constant(2, tf.uint8))  # 0 background, 1 foreground, 2 ignored
    if channels_last:
        pred, codes = tf.transpose(pred, [0, 2, 1]), tf.transpose(codes, [0, 2, 1])
    shape = tf.shape(pred)
    layout = [1, shape[0] * shape[1], shape[2]] if per_image else shape  # [S, R, N]: row r is [:, r, :]
    return _kernel_rows(tf.reshape(pred, layout), tf.reshape(codes, layout), C.HINGE if hinge else C.SOFTMAX)


# Set by a caller whose tf.cond has decided whether its input fits the kernel (see fits_kernel).
_FITS_KERNEL: contextvars.ContextVar[bool | None] = contextvars.ContextVar("lovasz_tf_fits_kernel", default=None)


@contextlib.contextmanager
def decided_fit(fits: bool) -> Iterator[None]:
    """Inside, :func:`fits_kernel` of a size not known when traced is ``fits``: the branch of a ``tf.cond``
    that decided it for a larger input (a grid, of which it takes some pixels) traces no ``tf.cond`` of its
    own. TF cannot differentiate a ``tf.cond`` nested in another from a tape outside the ``tf.function``
    that holds them (an ``AssertionError`` in cond_v2's gradient)."""
    token = _FITS_KERNEL.set(fits)
    try:
        yield
    finally:
        _FITS_KERNEL.reset(token)


def fits_kernel(pred: tf.Tensor) -> bool | None:
    """Whether ``pred``'s size fits the C kernel's item format: known when traced, or decided by a caller
    (:func:`decided_fit`); None where only the graph can tell."""
    size = pred.shape.num_elements()
    return size <= C.MAX_ELEMENTS if size is not None else _FITS_KERNEL.get()


def kernel_or_sort(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, per_image: bool, channels_last: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """The C kernel where the sizes fit its item format; chosen when run if they are not known when traced."""
    args = (pred, fg, valid, hinge, per_image, channels_last)
    fits = fits_kernel(pred)
    if fits is not None:
        return (_kernel_losses if fits else sorted_losses)(*args)
    return tf.cond(
        tf.size(pred, tf.int64) <= C.MAX_ELEMENTS, lambda: _kernel_losses(*args), lambda: sorted_losses(*args)
    )


def assert_showing(ok: tf.Tensor, message: str, shown: Callable[[], tf.Tensor]) -> tf.Operation:
    """A graph's assert that ``ok`` (a scalar), whose error shows ``message`` and ``shown()``, a tensor made
    only in the branch that fails: ``tf.debugging.Assert`` computes its data at every run (a mask of the
    whole grid, for the one label it may show: 0.2 ms of a 6 ms step of a LiDAR voxel grid)."""

    def fail() -> tf.Operation:
        return tf.raw_ops.Assert(condition=ok, data=[tf.constant(message), shown()], summarize=3)

    return tf.cond(ok, tf.no_op, fail)


def in_xla() -> bool:
    """Whether the graph being built is compiled by XLA (``jit_compile=True``, and functions called from one).

    TF marks such graphs with an XLA control-flow context (``OptionalXlaContext`` in
    ``tf.function``); a host callback cannot run in them.
    """
    if control_flow_util is None or tf_ops is None:  # imported together: both None or neither
        return True  # not known: as if it were
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def in_pfor() -> bool:
    """Whether the graph being built is the loop body that ``tf.vectorized_map`` (TF's pfor) vectorizes: pfor
    builds it under the name scope ``loop_body`` (``loop_body_1``, ... for later ones in the same graph).
    The kernel's custom gradient does not survive pfor's conversion (the gradient through
    ``vectorized_map`` was 0, without a word), and pfor's conversion of a ``tf.cond`` fails where no
    iteration takes a branch that makes a tensor of data-dependent shape (the gathered valid pixels): the
    sorts serve."""
    scopes = tf.get_current_name_scope().split("/")
    return not tf.executing_eagerly() and any(_PFOR_SCOPE.fullmatch(scope) for scope in scopes)


_PFOR_SCOPE = re.compile(r"loop_body(_\d+)?")


def on_cpu(x: tf.Tensor) -> bool:
    """Whether ``x`` is on a CPU: its device (eagerly, or a ``tf.device`` scope in a graph).

    Without one, TF places it on a GPU or TPU where there is one: a CPU only on a machine without.
    """
    device_type = tf.DeviceSpec.from_string(x.device).device_type if x.device else None
    if device_type:
        return device_type == "CPU"
    return all(d.device_type == "CPU" for d in tf.config.list_logical_devices())


# Set by :func:`without_callbacks` while functions are traced for a SavedModel, which cannot hold the
# kernel's tf.numpy_function (its body stays in the Python process that traced it).
_NO_CALLBACKS = contextvars.ContextVar("lovasz_tf_no_callbacks", default=False)


@contextlib.contextmanager
def without_callbacks() -> Iterator[None]:
    """Losses traced inside sort in TF on every device, the C kernel's ``tf.numpy_function`` left out."""
    token = _NO_CALLBACKS.set(True)
    try:
        yield
    finally:
        _NO_CALLBACKS.reset(token)


def asserts_dropped() -> bool:
    """Whether the graph being built may run without its asserts, so that the checks make the loss NaN instead:
    XLA compiles none, and a trace made inside :func:`without_callbacks` (``lovasz.tf.exportable()``) may be
    converted by TFLite, which drops them (a class 7 of 4 gave a finite loss in the converted model)."""
    return in_xla() or exporting()


def exporting() -> bool:
    """Whether functions are traced inside :func:`without_callbacks`, for a SavedModel (and TFLite)."""
    return _NO_CALLBACKS.get()


def in_forward_mode(pred: tf.Tensor) -> bool:
    """Whether a ``tf.autodiff.ForwardAccumulator`` carries a tangent of ``pred``. TF's forward mode sees no
    derivative through a ``tf.numpy_function`` in a graph (a JVP of 0, without a word): the sorts serve."""
    return forwardprop_util is not None and bool(forwardprop_util.pack_tangents([pred]).tangents)


def use_kernel(pred: tf.Tensor) -> bool:
    """The C kernel takes float32 rows on a CPU, eagerly and in ``tf.function``, not under XLA (where
    a host callback cannot run) nor inside :func:`without_callbacks`, and only where lovasz was
    installed with it; not where TF's forward mode or ``tf.vectorized_map`` would lose its derivative."""
    if pred.dtype != tf.float32 or exporting() or in_forward_mode(pred) or in_pfor():
        return False
    if C.kernel() is None:
        if on_cpu(pred):
            C.warn_missing("lovasz.tf")
        return False
    if not tf.executing_eagerly() and in_xla():
        return False
    return on_cpu(pred)
