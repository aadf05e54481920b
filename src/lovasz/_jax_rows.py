"""The row engines of :mod:`lovasz.jax`: the loss of each (set, class) row, and of each (segment, class)
row of point clouds.

Rows come in an ``[S, R, N]`` layout, row ``r`` being ``[:, r, :]`` (batch mode: ``S`` images, ``R``
classes; per image: ``S = 1``, ``R`` images x classes), so the batch needs no transpose. Every row goes
through one sort, by one of two paths, ``jax.lax.platform_dependent`` picking one when the function is
lowered:

- float32 on a CPU: the C kernel (:mod:`lovasz._ckernel`) through a host callback (:func:`_host_callback`),
  a ``custom_jvp`` whose rule has the kernel return the gradient too: a JVP is one dot product, and
  backward (JAX transposes the rule) one multiply (the gradient's own derivatives, where asked for, are
  those of the sorts below: :func:`_differentiable_again`);
- elsewhere, and in float64: sorts in JAX, the gradient flowing through the sorted errors. Float32
  rows sort one row at a time by an int32 key carrying int32 indices, the form XLA sends to CUB's
  radix sort on a GPU: dense rows by one such sort, the points of segments by two (by error, then by
  segment); float64 rows through one ``jax.lax.sort`` that carries the foreground flags along.

A grid with ignored pixels (LiDAR voxel grids) goes to the C kernel whole, in one callback whose work
follows the valid pixels (:func:`grid_rows`); elsewhere it is masked and sorted as above.

Tied errors go in pixel (point) order on every path, and a NaN error at a valid pixel gives a NaN loss
and gradient there. The Jaccard steps ``J(k) - J(k-1)`` are computed in closed form from the counts.
Nothing branches in Python on array values and no shape depends on them (ignored pixels are masked,
or dropped inside the callback), so the engines work under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from lovasz import _ckernel as C
from lovasz import _jax_distributed as D
from lovasz._codes import IGNORED

# ----------------------------------------------------------------------------- the kernel

try:  # newer JAX: a callback that writes XLA's own output buffers, and reads its inputs in place
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:
    _buffer_callback = None  # type: ignore[assignment]


def jaccard_steps(fg_sorted: jax.Array, dtype: DTypeLike) -> jax.Array:
    """``J(k) - J(k-1)`` along the last axis of 0/1 ``fg_sorted`` (int32), in closed form.

    A foreground pixel adds ``1 / U``, a background one ``I / (U (U - 1))``, with
    ``I`` and ``U`` the intersection and union after k pixels: no cancellation.
    """
    fg_cum = jnp.cumsum(fg_sorted, axis=-1)
    gts = fg_cum[..., -1:]
    k = jnp.arange(1, fg_sorted.shape[-1] + 1, dtype=fg_cum.dtype)  # (ranked as fg_cum: rank promotion may raise)
    k = k.reshape((1,) * (fg_cum.ndim - 1) + k.shape)
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
    nan_factor = jax.lax.stop_gradient(
        jnp.where(jnp.isnan(errors_sorted), errors_sorted, 1).astype(errors_sorted.dtype)
    )
    return jax.nn.relu(errors_sorted * nan_factor)


def _ascending_key(errors: jax.Array, valid: jax.Array | None) -> jax.Array:
    """``-errors``, the key of an ascending sort, with ignored pixels at the largest finite value: they sort
    last, where ``relu`` makes them add nothing; an error of -inf (an infinite logit) ties with them, in
    pixel order. Finite, not ``+inf``: ``jax_debug_infs`` raises at any op that makes an infinity."""
    if valid is None:
        return -errors
    largest = jnp.finfo(errors.dtype).max
    return jnp.where(valid & ~(errors < -largest), -errors, largest)  # (a NaN keeps its key: the loss is NaN)


def _lovasz_rows(errors: jax.Array, fg: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Lovász extension of each row of ``errors [R, N]`` against ``fg [R, N]`` (bool, False where ignored).

    One ascending sort of ``-errors`` carries the flags along; ignored pixels sort last
    (:func:`_ascending_key`).
    """
    key = _ascending_key(errors, valid)
    neg_sorted, fg_sorted = jax.lax.sort((key, fg.astype(jnp.int32)), dimension=-1, num_keys=1)
    steps = jax.lax.stop_gradient(jaccard_steps(fg_sorted, errors.dtype))
    return jnp.sum(_counted(-neg_sorted) * steps, axis=-1)


def row_layout(shape: tuple[int, ...], per_image: bool) -> tuple[int, int, int]:
    """The ``[S, R, N]`` layout of ``[B, K, N]`` (row ``r`` is ``[:, r, :]``): ``[1, B*K, N]`` per image."""
    images, num_rows, num_pixels = shape
    return (1, images * num_rows, num_pixels) if per_image else (images, num_rows, num_pixels)


def as_rows(x: jax.Array, per_image: bool) -> jax.Array:
    """``[B, K, N]`` to rows: ``[B*K, N]`` per image, or ``[K, B*N]`` for the batch as one set."""
    b, k, n = x.shape
    return x.reshape(b * k, n) if per_image else x.transpose(1, 0, 2).reshape(k, b * n)


# Set by :func:`without_callbacks` while a function is traced for jax.export, which cannot serialize host callbacks.
_NO_CALLBACKS = contextvars.ContextVar("lovasz_jax_no_callbacks", default=False)


@contextlib.contextmanager
def without_callbacks() -> Iterator[None]:
    """Functions traced inside sort their rows in XLA on every platform, the C kernel's callback left out.
    JAX's caches are cleared on the way in and out: a trace made with the callback is not reused inside,
    nor one made inside after it."""
    jax.clear_caches()
    token = _NO_CALLBACKS.set(True)
    try:
        yield
    finally:
        _NO_CALLBACKS.reset(token)
        jax.clear_caches()


def _kernel_takes(x: jax.Array) -> bool:
    """Whether the C kernel can take float32 ``x`` whole (its size known: ``jax.export``'s symbolic sizes
    compare inconclusively with the kernel's limit, and are exported with the sorts in XLA anyway)."""
    return isinstance(x.size, int) and C.applies(x.dtype, x.size)


def _callbacks_run(x: jax.Array) -> bool:
    """Whether the C kernel's callback may take ``x`` (see :func:`without_callbacks`, ``D.callbacks_run_here``)."""
    return not _NO_CALLBACKS.get() and D.callbacks_run_here(x)


_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _host_callback(fill: Callable[..., None], shapes: tuple[jax.ShapeDtypeStruct, ...], *args: jax.Array) -> tuple:
    """Outputs of ``shapes`` made on the host by ``fill(outputs, *inputs)``, on NumPy arrays: it writes every
    element of each output (each with the leading axes that ``vmap`` adds to ``args[0]``). By
    ``buffer_callback``, in XLA's own buffers: JAX copies neither the inputs nor the outputs (a LiDAR grid's
    predictions and gradient are 25 MB each); on older JAX by ``jax.pure_callback``, into new arrays."""
    if _buffer_callback is not None:

        def in_place(_context: Any, outputs: tuple, *inputs: Any) -> None:
            fill(tuple(map(np.asarray, outputs)), *map(np.asarray, inputs))

        outputs = _buffer_callback(in_place, shapes, vmap_method="broadcast_all")(*args)
    else:

        def into_new(*inputs: Any) -> tuple:
            inputs = tuple(map(np.asarray, inputs))
            lead = inputs[0].shape[: inputs[0].ndim - args[0].ndim]
            outputs = tuple(np.empty(lead + shape.shape, shape.dtype) for shape in shapes)
            fill(outputs, *inputs)
            return outputs

        outputs = jax.pure_callback(into_new, shapes, *args, vmap_method="broadcast_all")
    return D.vary_like(tuple(outputs), *args)


def _differentiable_again(host: Callable[..., tuple], sort: Callable[..., tuple]) -> Callable[..., tuple]:
    """``host(x, *rest)``, the C kernel's outputs ending with each element's d loss / d x, differentiable
    again: the kernel has no derivatives of its own, so where JAX asks for them (a gradient of a gradient,
    ``jax.hessian``, forward over reverse) they are those of ``sort``, the same outputs by sorts in JAX
    (:func:`_with_sorted_grad`): exact, slower. A first gradient never takes this route."""

    @jax.custom_jvp
    def call(x: jax.Array, *rest: jax.Array) -> tuple:
        return host(x, *rest)

    @call.defjvp
    def call_jvp(primals: tuple, tangents: tuple) -> tuple[tuple, tuple]:
        x, *rest = primals
        return jax.jvp(lambda x: sort(x, *rest), (x,), (tangents[0],))

    return call


def _with_sorted_grad(sort: Callable[..., Any], x: jax.Array, *rest: jax.Array) -> tuple:
    """The outputs of ``sort(x, *rest)`` (a loss, or a loss and its rows' presence) and the gradient of the
    loss's sum in ``x``: each element's derivative of its own row's loss (an element lies in one row)."""
    outputs, pullback = jax.vjp(lambda x: sort(x, *rest), x)
    if not isinstance(outputs, tuple):
        return outputs, pullback(jnp.ones_like(outputs))[0]
    loss, present = outputs
    return loss, present, pullback((jnp.ones_like(loss), np.zeros(present.shape, jax.dtypes.float0)))[0]


def _rows_into(outputs: tuple[np.ndarray, ...], errors: np.ndarray, codes: np.ndarray) -> None:
    """The C kernel on ``[..., S, R, N]`` errors: the loss of each row (and its gradient, if asked)."""
    loss, *grad = outputs
    for index in np.ndindex(errors.shape[:-3]):
        row_grad = grad[0][index] if grad else None
        loss[index], _ = C.lovasz_rows(errors[index], codes[index], C.ERRORS, row_grad, _THREADS)


def _host_call(errors: jax.Array, codes: jax.Array, need_grad: bool) -> tuple:
    shapes = (jax.ShapeDtypeStruct(errors.shape[:-3] + errors.shape[-2:-1], jnp.float32),)
    shapes += (jax.ShapeDtypeStruct(errors.shape, jnp.float32),) if need_grad else ()
    return _host_callback(_rows_into, shapes, errors, codes)


# The host routes below are custom_jvp functions (forward mode, jax.jvp and jax.jacfwd, works on them; a
# custom_vjp takes none): each rule has the kernel return the gradient with the loss, and gives a tangent
# linear in the input's, its dot product with that gradient over each row or set; jax.grad runs the
# kernel forward and transposes the dot product, one multiply.


def _presence_as_float(outputs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """A host route's outputs with the rows' presence (the second) as 0/1 floats inside its ``custom_jvp``:
    under ``shard_map`` a bool output's float0 tangent would need the shard_map type that no float0 takes.
    :func:`_presence_as_bool` turns it back."""
    loss, present, *grad = outputs
    return (loss, present.astype(loss.dtype), *grad)


def _presence_as_bool(outputs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    loss, present = outputs
    return loss, present != 0


def _sums_by_set(x: jax.Array, ends: jax.Array) -> jax.Array:
    """``[S, ...]``: the sums of ``x [N, ...]`` over each segment's run (points past the last end in none)."""
    return jax.ops.segment_sum(x, _segment_of_position(ends, x.shape[0]), num_segments=ends.shape[-1])


@jax.custom_jvp
def _host_rows(errors: jax.Array, codes: jax.Array) -> jax.Array:
    """Loss of each row ``[:, r, :]`` of float32 ``errors [S, R, N]`` (codes 0/1/2), by the C kernel."""
    return _host_call(errors, codes, need_grad=False)[0]


@_host_rows.defjvp
def _host_rows_jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple) -> tuple[jax.Array, jax.Array]:
    host = functools.partial(_host_call, need_grad=True)  # the gradient comes with the loss
    loss, grad = _differentiable_again(host, functools.partial(_with_sorted_grad, _sorted_rows))(*primals)
    return loss, (grad * tangents[0]).sum((-3, -1))


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
    return _stable_sort_carrying(key, index)


def _stable_sort_carrying(key: jax.Array, carried: jax.Array) -> jax.Array:
    """``carried [R, N]`` (int32) in the order of a stable sort of each row of the int32 ``key [R, N]``:
    one 1-D sort of two operands per row (``lax.map``), the form that reaches CUB on a GPU."""
    _, order = jax.lax.map(lambda pair: jax.lax.sort(pair, num_keys=1, is_stable=True), (key, carried))
    return order


def _row_sorted_rows(errors: jax.Array, fg: jax.Array, valid: jax.Array) -> jax.Array:
    """:func:`_lovasz_rows` of float32 ``errors [R, N]`` by :func:`_descending_order`; the gradient
    flows through the gather of the errors (a scatter of the steps back)."""
    order = _descending_order(errors, valid)
    errors_sorted = jnp.take_along_axis(jnp.where(valid, errors, 0), order, axis=-1)
    fg_sorted = jnp.take_along_axis((fg & valid).astype(jnp.int32), order, axis=-1)
    steps = jax.lax.stop_gradient(jaccard_steps(fg_sorted, errors.dtype))
    return jnp.sum(_counted(errors_sorted) * steps, axis=-1)


def pixel_codes(fg: jax.Array, valid: jax.Array | None) -> jax.Array:
    """The pixels' codes (uint8): 1 foreground, 0 background, 2 ignored."""
    codes = fg.astype(jnp.uint8)
    return codes if valid is None else jnp.where(valid, codes, jnp.uint8(2)).astype(jnp.uint8)


def _rows_loss(errors: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The function of ``[S, R, N]`` errors and codes to the losses ``[R]`` of rows ``[:, r, :]`` like
    ``errors``: on a CPU by the C kernel where it applies, else by one sort."""
    if errors.dtype == jnp.float32 and C.kernel() is None and jax.default_backend() == "cpu":
        C.warn_missing("lovasz.jax")
    if not _kernel_takes(errors) or not _callbacks_run(errors):
        return _sorted_rows
    return lambda errors, codes: jax.lax.platform_dependent(errors, codes, cpu=_host_rows, default=_sorted_rows)


def split_rows_loss(errors: jax.Array, codes: jax.Array) -> jax.Array:
    """:func:`_rows_loss` of ``[S, R, N]`` errors, the rows split over the devices of a mesh whose axes
    are left to the partitioner (plain ``jit`` of sharded inputs)."""
    return D.split_rows(_rows_loss(errors), (errors, codes), row_axis=1)


def lovasz_kernel(errors: jax.Array, fg: jax.Array, valid: jax.Array | None, per_image: bool) -> jax.Array:
    """Loss of each (set, class) row of ``errors [B, K, N]``: on a CPU by the C kernel where it applies."""
    codes = pixel_codes(fg, valid)
    layout = row_layout(errors.shape, per_image)
    return split_rows_loss(errors.reshape(layout), codes.reshape(layout))


def errors_of(pred: jax.Array, fg: jax.Array, hinge: bool) -> jax.Array:
    """Each pixel's error: the hinge margin ``1 -+ x`` (its max with 0 taken after the sort), or ``|[y = c] - p|``."""
    return jnp.where(fg, 1 - pred, 1 + pred) if hinge else jnp.abs(jnp.where(fg, 1 - pred, pred))


# ----------------------------------------------------------------------------- mostly ignored grids
# A grid whose pixels are mostly ignored (a LiDAR voxel grid: 2-7% occupied) costs on a CPU in
# proportion to its valid pixels: one callback takes the predictions and the pixels' codes and finds
# the valid pixels; where they are at most COMPACT_BELOW of the grid the C kernel gathers them
# (class-major), sorts their rows as scenes (an image each, or one) and writes the gradient back into
# the grid in one pass; else it sorts the grid's rows. The host chooses at each call, so no shape
# depends on the data under jax.jit. The kernel computes the errors itself (softmax or hinge mode):
# no grid of errors is made in XLA.
COMPACT_BELOW = 0.5  # as lovasz.torch's bound (_torch_scenes.COMPACT_BELOW), not measured apart for JAX


def grid_applies(pred: jax.Array, valid: jax.Array | None) -> bool:
    """Whether :func:`grid_rows` takes ``pred``: float32 with pixels ignored, the C kernel loaded, a
    callback possible here. Not for inputs that plain ``jit`` partitions over devices: there the rows of
    :func:`lovasz_kernel` go to their devices (and the gradient keeps the inputs' sharding)."""
    return (
        valid is not None
        and _kernel_takes(pred)
        and C.grid_kernel() is not None
        and C.scene_kernel() is not None
        and _callbacks_run(pred)
        and not D.split_by_partitioner(pred)
    )


class GridOptions(NamedTuple):
    """The static options of :func:`_host_grid`."""

    mode: int  # C.SOFTMAX or C.HINGE: how the kernel makes errors of predictions
    per_image: bool  # a set per image, or the batch as one
    shared_validity: bool  # a pixel is ignored in every row or in none (softmax, hinge; not multi-label)


def _grid_rows_on_host(
    pred: np.ndarray, codes: np.ndarray, options: GridOptions, grad: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and presence ``[S, K]`` of ``pred [B, K, N]`` against ``codes [B, K, N]``, writing d loss /
    d pred into ``grad`` if given. The valid pixels are those that some row does not ignore (code 2)."""
    images, num_rows, num_pixels = pred.shape
    valid = codes[:, 0] != IGNORED if options.shared_validity else codes.min(axis=1) < IGNORED  # [B, N]
    if np.count_nonzero(valid) > COMPACT_BELOW * valid.size:  # the grid's rows
        layout = row_layout(pred.shape, options.per_image)
        grid_grad = None if grad is None else grad.reshape(layout)
        loss, present = C.lovasz_rows(pred.reshape(layout), codes.reshape(layout), options.mode, grid_grad, _THREADS)
        return loss.reshape(-1, num_rows), present.reshape(-1, num_rows)
    image, pixel = np.nonzero(valid)  # image-major, in pixel order
    image_ends = np.cumsum(np.bincount(image, minlength=images))
    points = C.gather_pixels(pred, image * (num_rows * num_pixels) + pixel, _THREADS)  # [K, M]
    point_codes = np.ascontiguousarray(codes[image, :, pixel].T)
    ends = image_ends if options.per_image else np.array([image.size], np.int64)
    # the points' gradient goes where they are: the kernel writes each after reading it
    point_grad = None if grad is None else points
    loss, present = C.lovasz_scene_rows(points, point_codes, ends, options.mode, point_grad, _THREADS)
    if grad is not None:
        C.scatter_pixels(points, pixel, image_ends, grad, _THREADS)
    return loss, present


def _grid_into(outputs: tuple[np.ndarray, ...], pred: np.ndarray, codes: np.ndarray, options: GridOptions) -> None:
    """:func:`_grid_rows_on_host` over the leading axes that ``vmap`` adds: loss, presence (and gradient)."""
    loss, present, *grad = outputs
    for index in np.ndindex(pred.shape[:-3]):
        image_grad = grad[0][index] if grad else None
        loss[index], present[index] = _grid_rows_on_host(pred[index], codes[index], options, image_grad)


def _grid_call(pred: jax.Array, codes: jax.Array, options: GridOptions, need_grad: bool) -> tuple:
    lead, (images, num_rows, _) = pred.shape[:-3], pred.shape[-3:]
    rows = lead + (images if options.per_image else 1, num_rows)
    shapes: tuple = (jax.ShapeDtypeStruct(rows, jnp.float32), jax.ShapeDtypeStruct(rows, jnp.bool_))
    shapes += (jax.ShapeDtypeStruct(pred.shape, jnp.float32),) if need_grad else ()
    return _host_callback(functools.partial(_grid_into, options=options), shapes, pred, codes)


def _host_grid(pred: jax.Array, codes: jax.Array, options: GridOptions) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of the rows of float32 ``pred [B, K, N]``, by the C kernel."""
    return _presence_as_bool(_host_grid_rows(pred, codes, options))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _host_grid_rows(pred: jax.Array, codes: jax.Array, options: GridOptions) -> tuple[jax.Array, ...]:
    return _presence_as_float(_grid_call(pred, codes, options, need_grad=False))


@_host_grid_rows.defjvp
def _host_grid_jvp(options: GridOptions, primals: tuple[jax.Array, jax.Array], tangents: tuple) -> tuple:
    host = functools.partial(_grid_call, options=options, need_grad=True)
    sort = functools.partial(_with_sorted_grad, functools.partial(_grid_sorted_unmasked, options=options))
    loss, present, grad = _presence_as_float(_differentiable_again(host, sort)(*primals))
    tangent = (grad * tangents[0]).sum(-1)  # [B, K]
    if not options.per_image:  # one set of the images
        tangent = tangent.sum(-2, keepdims=True)
    return (loss, present), (tangent, 0 * present)


def _grid_sorted(pred: jax.Array, codes: jax.Array, hinge: bool, per_image: bool) -> tuple[jax.Array, jax.Array]:
    """:func:`_host_grid` by sorts in JAX (off the CPU)."""
    num_rows = pred.shape[1]
    fg = codes == 1
    layout = row_layout(pred.shape, per_image)
    loss = _sorted_rows(errors_of(pred, fg, hinge).reshape(layout), codes.reshape(layout))
    return loss.reshape(-1, num_rows), as_rows(fg, per_image).any(-1).reshape(-1, num_rows)


def _grid_sorted_unmasked(pred: jax.Array, codes: jax.Array, options: GridOptions) -> tuple[jax.Array, jax.Array]:
    """:func:`_grid_sorted` of a grid whose ignored pixels may hold NaN (the kernel reads none of them)."""
    pred = jnp.where(codes == IGNORED, jnp.zeros((), pred.dtype), pred)
    return _grid_sorted(pred, codes, options.mode == C.HINGE, options.per_image)


def grid_rows(
    pred: jax.Array, fg: jax.Array, valid: jax.Array, hinge: bool, per_image: bool
) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (set, class) row of ``pred [B, K, N]`` (``fg`` false where
    ``valid [B, 1 or K, N]`` is): on a CPU, work in proportion to the valid pixels (see above)."""
    options = GridOptions(C.HINGE if hinge else C.SOFTMAX, per_image, valid.shape[1] == 1)
    host = lambda pred, codes: _host_grid(pred, codes, options)  # noqa: E731
    sorted_rows = functools.partial(_grid_sorted, hinge=hinge, per_image=per_image)
    return jax.lax.platform_dependent(pred, pixel_codes(fg, valid), cpu=host, default=sorted_rows)


# ----------------------------------------------------------------------------- segments (point clouds)
# Points of S segments in segment order: segment s is the run [ends[s - 1], ends[s]) of each
# class's row. A sort by (segment, error) keeps every segment in its own run, so the runs'
# bounds are known before the sort and one sort serves all (segment, class) rows. In float32 it
# is two stable sorts of one integer key (radix-style: by error, then by segment), the form that
# reaches CUB on a GPU; in float64 one lax.sort with two keys.


def _segment_of_position(ends: jax.Array, num_points: int) -> jax.Array:
    """The segment of each position ``[N]``; S past the last run (points in no segment). Against a few ends
    each position is compared with all (240,000 points, 12 scans: 0.15 ms, a binary search's loop 1 ms)."""
    method = "compare_all" if ends.shape[-1] <= 32 else "scan"
    return jnp.searchsorted(ends, jnp.arange(num_points), side="right", method=method)


def _segment_steps(fg_sorted: jax.Array, dtype: DTypeLike, ends: jax.Array, segment: jax.Array) -> jax.Array:
    """:func:`jaccard_steps` within each segment's run."""
    running = jnp.pad(jnp.cumsum(fg_sorted, axis=-1), ((0, 0), (1, 0)))  # foreground among the first i
    starts = jnp.concatenate([jnp.zeros(1, ends.dtype), ends[:-1]])
    inside = jnp.minimum(segment, ends.shape[0] - 1)  # points in no segment: any run, their error is 0
    start, end = starts[inside], ends[inside]
    fg_cum = running[:, 1:] - running[:, start]
    gts = running[:, end] - running[:, start]
    k = (jnp.arange(1, fg_sorted.shape[-1] + 1) - start)[None]  # (rows [R, N]: rank promotion may raise)
    intersection = (gts - fg_cum).astype(dtype)
    union = (gts + k - fg_cum).astype(dtype)
    background_step = intersection / (union * jnp.maximum(union - 1, 1))
    steps = jnp.where(fg_sorted == 1, 1 / union, background_step)
    return jnp.where(k == 1, 1 - intersection / union, steps)


def _segment_sums(
    errors_sorted: jax.Array, fg_sorted: jax.Array, codes: jax.Array, ends: jax.Array, segment: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` from each row's errors and 0/1 flags ``[K, N]`` sorted by decreasing
    error within each segment's run; ``segment [N]`` is the run of each position."""
    steps = jax.lax.stop_gradient(_segment_steps(fg_sorted, errors_sorted.dtype, ends, segment))
    contributions = _counted(errors_sorted) * steps
    sums = jax.ops.segment_sum(contributions.T, segment, ends.shape[0] + 1, indices_are_sorted=True)
    counts = jax.ops.segment_sum((codes == 1).T.astype(jnp.int32), segment, ends.shape[0] + 1, indices_are_sorted=True)
    return sums[:-1], counts[:-1] > 0


def _segment_rows_one_sort(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`_segment_sums` by one ``lax.sort`` of (segment, -error, flags), two keys: a bitonic sort on
    a GPU, which float64 keys need (their bits would need 64-bit integers, off by default in JAX)."""
    segment = _segment_of_position(ends, errors.shape[-1])
    key = _ascending_key(errors, codes != 2)
    by_segment = jnp.broadcast_to(segment, errors.shape)
    _, neg_sorted, fg_sorted = jax.lax.sort((by_segment, key, (codes == 1).astype(jnp.int32)), dimension=-1, num_keys=2)
    return _segment_sums(-neg_sorted, fg_sorted, codes, ends, segment)


def _segment_rows_two_sorts(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`_segment_sums` of float32 ``errors`` by two stable sorts of one int32 key per row, as a radix
    sort composes its passes: by decreasing error (:func:`_descending_order`), then by the segment of each
    point, carrying that order. The points come in segment order, so each segment's run ends by
    decreasing error, ties in point order, the ignored points last, as after the one sort by (segment,
    error). The gradient flows through the gather of the errors."""
    segment = _segment_of_position(ends, errors.shape[-1]).astype(jnp.int32)
    valid = codes != 2
    by_error = _descending_order(errors, valid)
    order = _stable_sort_carrying(segment[by_error], by_error)
    errors_sorted = jnp.take_along_axis(jnp.where(valid, errors, 0), order, axis=-1)
    fg_sorted = jnp.take_along_axis((codes == 1).astype(jnp.int32), order, axis=-1)
    return _segment_sums(errors_sorted, fg_sorted, codes, ends, segment)


def _segment_rows_sorted(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (segment, class) row of ``errors [K, N]`` by sorts in JAX: in
    float32 those that reach CUB's radix sort on a GPU."""
    sort_rows = _segment_rows_two_sorts if errors.dtype == jnp.float32 else _segment_rows_one_sort
    return sort_rows(errors, codes, ends)


def _segments_into(outputs: tuple[np.ndarray, ...], errors: np.ndarray, codes: np.ndarray, ends: np.ndarray) -> None:
    """The C kernel's segment rows on ``[..., K, N]`` errors: loss, presence (and gradient)."""
    loss, present, *grad = outputs
    for index in np.ndindex(errors.shape[:-2]):
        point_grad = grad[0][index] if grad else None
        loss[index], present[index] = _segment_rows_on_host(errors[index], codes[index], ends[index], point_grad)


def _segment_rows_on_host(
    errors: np.ndarray, codes: np.ndarray, ends: np.ndarray, grad: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and presence ``[S, K]`` of the segments ``ends`` of ``errors [K, N]``, writing d loss / d errors
    into ``grad`` if given (0 at the points in no segment). Where at most :data:`COMPACT_BELOW` of the
    points count in some row (a weakly labelled point cloud), those are gathered first, in point order."""
    num_points = int(ends[-1]) if ends.size else 0  # the points past the last end are in no segment
    valid = codes[:, :num_points].min(axis=0, initial=IGNORED) < IGNORED
    if np.count_nonzero(valid) > COMPACT_BELOW * codes.shape[-1]:
        loss_and_presence = C.lovasz_scene_rows(errors, codes, ends, C.ERRORS, grad, _THREADS)
        if grad is not None:
            grad[:, num_points:] = 0
        return loss_and_presence
    at = np.flatnonzero(valid)
    points_grad = None if grad is None else np.empty((errors.shape[0], at.size), np.float32)
    loss_and_presence = C.lovasz_scene_rows(
        np.ascontiguousarray(errors[:, at]),
        np.ascontiguousarray(codes[:, at]),
        np.searchsorted(at, ends),
        C.ERRORS,
        points_grad,
        _THREADS,
    )
    if grad is not None:
        grad.fill(0)
        grad[:, at] = points_grad
    return loss_and_presence


def _segments_call(errors: jax.Array, codes: jax.Array, ends: jax.Array, need_grad: bool) -> tuple:
    rows = errors.shape[:-2] + (ends.shape[-1], errors.shape[-2])
    shapes: tuple = (jax.ShapeDtypeStruct(rows, jnp.float32), jax.ShapeDtypeStruct(rows, jnp.bool_))
    shapes += (jax.ShapeDtypeStruct(errors.shape, jnp.float32),) if need_grad else ()
    return _host_callback(_segments_into, shapes, errors, codes, ends)


def _host_segments(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (segment, class) row of float32 ``errors [K, N]``, by the C kernel."""
    return _presence_as_bool(_host_segment_rows(errors, codes, ends))


@jax.custom_jvp
def _host_segment_rows(errors: jax.Array, codes: jax.Array, ends: jax.Array) -> tuple[jax.Array, ...]:
    return _presence_as_float(_segments_call(errors, codes, ends, need_grad=False))


@_host_segment_rows.defjvp
def _host_segments_jvp(primals: tuple[jax.Array, jax.Array, jax.Array], tangents: tuple) -> tuple:
    host = functools.partial(_segments_call, need_grad=True)
    sort = functools.partial(_with_sorted_grad, _segment_rows_sorted)
    loss, present, grad = _presence_as_float(_differentiable_again(host, sort)(*primals))
    return (loss, present), (_sums_by_set((grad * tangents[0]).T, primals[2]), 0 * present)


def segment_kernel(
    errors: jax.Array, fg: jax.Array, valid: jax.Array | None, ends: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[S, K]`` of each (segment, class) row of ``errors [K, N]``: the C kernel where it
    applies. The class rows are split over the devices of sharded inputs under plain ``jit``."""
    codes = pixel_codes(fg, valid)
    if not _kernel_takes(errors) or C.scene_kernel() is None or not _callbacks_run(errors):
        rows_loss = _segment_rows_sorted
    else:
        rows_loss = functools.partial(jax.lax.platform_dependent, cpu=_host_segments, default=_segment_rows_sorted)
    return D.split_rows(rows_loss, (errors, codes), row_axis=0, shared=(ends,), out_row_axes=(1, 1))


# ----------------------------------------------------------------------------- points-first inputs
# Channels-last grids ([B, *spatial, C], Flax's layout) and points [N, C] (Pointcept's call, and with
# segment_ids= a batch of scenes) hold each point's classes together. On a CPU the C kernel reads them
# where they lie (a tile at a time, class-major in its scratch), takes the softmax of logits itself and
# writes each point's gradient of its own set's loss, its rows weighted as the class mean weighs them: no
# transpose and no softmax in XLA, there or back (lovasz.torch's points take the same kernel). The class
# mean is taken on the host, so this path has no class weights, whose gradient would be JAX's to give:
# with weights the dense path serves.


class PointsOptions(NamedTuple):
    """The static options of :func:`points_first_loss`."""

    logits: bool  # the points hold logits: the kernel takes their softmax over the classes
    present_only: bool  # the mean over the classes present in the set (classes='present'), else over all


def points_first_applies(points: jax.Array) -> bool:
    """Whether :func:`points_first_loss` takes the float32 ``points [N, K]`` on the C kernel: on a CPU
    backend, with the kernel loaded and a callback possible (not over devices plain ``jit`` partitions)."""
    return (
        jax.default_backend() == "cpu"
        and points.size > 0
        and _kernel_takes(points)
        and C.points_kernel() is not None
        and _callbacks_run(points)
        and not D.split_by_partitioner(points)
    )


def _class_means(loss: np.ndarray, present: np.ndarray, present_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each set's mean of its rows ``[S, K]`` (0 for a set with nothing to average) and each row's
    coefficient in it: :func:`class_mean` on the host."""
    weight = present.astype(np.float32) if present_only else np.ones_like(loss)
    total = weight.sum(-1, keepdims=True)
    coefficient = np.divide(weight, total, out=np.zeros_like(weight), where=total != 0)
    means = np.where(total[:, 0] != 0, (loss * weight).sum(-1) / np.where(total[:, 0] != 0, total[:, 0], 1), 0)
    return means.astype(np.float32), coefficient


def _points_into(
    outputs: tuple[np.ndarray, ...], points: np.ndarray, codes: np.ndarray, ends: np.ndarray, options: PointsOptions
) -> None:
    """The C kernel on points ``[..., N, K]``, codes ``[..., K, N]`` and the sets' ends ``[..., S]``: each
    set's loss (and the gradient)."""
    per_set, *grad = outputs
    for index in np.ndindex(points.shape[:-2]):
        means: list[np.ndarray] = []  # the kernel asks for the coefficients once it has the rows' losses
        coefficients = functools.partial(_coefficients, means, present_only=options.present_only)
        loss, present = _points_on_host(
            points[index], codes[index], ends[index], options, grad[0][index] if grad else None, coefficients
        )
        per_set[index] = means[0] if means else _class_means(loss, present, options.present_only)[0]


def _points_on_host(
    points: np.ndarray,
    codes: np.ndarray,
    ends: np.ndarray,
    options: PointsOptions,
    grad: np.ndarray | None,
    coefficients: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`C.lovasz_points` of the sets ``ends`` (at least one); where at most :data:`COMPACT_BELOW` of
    the points count (a mostly empty voxel grid), or some lie past the last end (in no set), of those that
    count gathered first, in point order, their gradient written back (0 elsewhere)."""
    valid = codes.min(axis=0) < IGNORED  # [N]: a point counts in every row or in none
    valid[ends[-1] :] = False
    if ends[-1] == valid.size and np.count_nonzero(valid) > COMPACT_BELOW * valid.size:
        return C.lovasz_points(points, codes, ends, C.SOFTMAX, grad, _THREADS, options.logits, coefficients)
    at = np.flatnonzero(valid)
    gathered_grad = None if grad is None else np.empty((at.size, points.shape[1]), np.float32)
    loss_and_presence = C.lovasz_points(
        points[at],
        np.ascontiguousarray(codes[:, at]),
        np.searchsorted(at, ends),
        C.SOFTMAX,
        gathered_grad,
        _THREADS,
        options.logits,
        coefficients,
    )
    if grad is not None:
        grad.fill(0)
        grad[at] = gathered_grad
    return loss_and_presence


def _coefficients(means: list[np.ndarray], loss: np.ndarray, present: np.ndarray, present_only: bool) -> np.ndarray:
    """The rows' coefficients in their sets' means, which go into ``means``."""
    mean, coefficient = _class_means(loss, present, present_only)
    means.append(mean)
    return coefficient


def _points_call(
    points: jax.Array, codes: jax.Array, ends: jax.Array, options: PointsOptions, need_grad: bool
) -> tuple:
    shapes: tuple = (jax.ShapeDtypeStruct(points.shape[:-2] + ends.shape[-1:], jnp.float32),)
    shapes += (jax.ShapeDtypeStruct(points.shape, jnp.float32),) if need_grad else ()
    return _host_callback(functools.partial(_points_into, options=options), shapes, points, codes, ends)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _host_points(points: jax.Array, codes: jax.Array, ends: jax.Array, options: PointsOptions) -> jax.Array:
    """Each set's loss ``[S]`` of float32 ``points [N, K]`` against ``codes [K, N]``, by the C kernel."""
    return _points_call(points, codes, ends, options, need_grad=False)[0]


@_host_points.defjvp
def _host_points_jvp(options: PointsOptions, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    host = functools.partial(_points_call, options=options, need_grad=True)
    sort = functools.partial(_with_sorted_grad, functools.partial(_points_sorted, options=options))
    per_set, grad = _differentiable_again(host, sort)(*primals)
    return per_set, _sums_by_set((grad * tangents[0]).sum(-1), primals[2])


def _points_sorted(points: jax.Array, codes: jax.Array, ends: jax.Array, options: PointsOptions) -> jax.Array:
    """:func:`_host_points` by sorts in JAX (off the CPU, and a gradient's own derivatives)."""
    valid = codes != IGNORED  # [K, N]
    pred = jnp.where(valid.T, points, 0)  # a NaN at an ignored point reaches neither loss nor gradient
    pred = jax.nn.softmax(pred, axis=-1) if options.logits else pred
    loss, present = _segment_rows_sorted(errors_of(pred.T, codes == 1, False), codes, ends)
    return class_mean(loss, (present if options.present_only else jnp.ones_like(present)).astype(loss.dtype))


def class_mean(loss: jax.Array, weight: jax.Array) -> jax.Array:
    """Each set's weighted mean of its rows' losses ``[S, K]``; 0 for a set whose weights are all 0 (no class
    present, every pixel ignored). :func:`_class_means` is the host's."""
    total = weight.sum(-1)
    return jnp.where(total != 0, (loss * weight).sum(-1) / jnp.where(total != 0, total, 1), 0)


def points_first_loss(points: jax.Array, codes: jax.Array, ends: jax.Array, options: PointsOptions) -> jax.Array:
    """Each set's class mean ``[S]`` of float32 ``points [N, K]`` (probabilities, or logits with
    ``options.logits``) against ``codes [K, N]`` (1 foreground, 0 background, 2 ignored); set ``s`` is points
    ``[ends[s - 1], ends[s])`` (at least one set; those past the last end take no part): the C kernel on a
    CPU (see above; call where :func:`points_first_applies`), else sorts in JAX."""
    host = lambda points, codes, ends: _host_points(points, codes, ends, options)  # noqa: E731
    sorted_sets = functools.partial(_points_sorted, options=options)
    return jax.lax.platform_dependent(points, codes, ends, cpu=host, default=sorted_sets)
