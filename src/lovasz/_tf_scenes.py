"""The engines of :mod:`lovasz.tf` for points of scenes (``row_splits=``, ragged inputs): the loss and
presence ``[S, K]`` of each (scene, class) of points-first rows.

:mod:`lovasz.tf` checks the row splits and the ragged inputs (the errors name its arguments) and
calls :func:`scene_losses` with int64 row splits ``[S + 1]``. A class's row holds every point,
scene ``s`` the run ``[splits[s], splits[s + 1])``, and one sort of each row serves all its
scenes: the C kernel sorts each (scene, class) run (float32 on a CPU, eagerly and in
``tf.function``); float32 elsewhere sorts one int64 key per point, the scene above the packed
key of :mod:`lovasz._tf_rows`, laid out as :func:`lovasz._tf_rows.sort_layout` says: under XLA
on a CPU, XLA's sort of the ``[K, N]`` rows; on a GPU (shapes known when traced), every class
row in ONE 1-D sort, the row above the scene (groups of rows where the bits run out); float64,
and float32 where the keys do not fit, sort by error, then stably by scene (two ``top_k``).
No Python loop over scenes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from lovasz import _ckernel as C
from lovasz import _tf_rows

# Points-first sets (point clouds): a class's row holds every point, scene s the run
# [splits[s], splits[s + 1]). Sorting each row by (scene, error) keeps every scene in its own
# run, so one sort serves all (scene, class) rows and the runs' bounds are known before it.


def shown_splits(values: np.ndarray) -> str:
    """Row splits for an error message: all of them, or the first and the last of many."""
    listed = values.tolist()
    if len(listed) <= 12:
        return str(listed)
    return f"[{', '.join(map(str, listed[:8]))}, ..., {listed[-1]}] ({len(listed)} values)"


def _scene_of_points(splits: tf.Tensor, num_points: int | tf.Tensor) -> tf.Tensor:
    """Each point's scene ``[N]`` (int32): the ``s`` with ``splits[s] <= n < splits[s + 1]``, as the
    count of inner splits at or before ``n`` (a scatter and a cumsum: no sort, XLA compiles it)."""
    inner = splits[1:-1]
    marks = tf.scatter_nd(inner[:, None], tf.ones_like(inner, tf.int32), tf.cast(num_points, tf.int64)[None] + 1)
    return tf.cumsum(marks)[:-1]


def _scene_jaccard_steps(
    fg_sorted: tf.Tensor, dtype: tf.DType, splits: tf.Tensor, scene: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_tf_rows.jaccard_steps` within each scene's run of ``fg_sorted [K, N]``; also each (class, scene)'s
    foreground count ``[K, S]``."""
    running = tf.pad(tf.cumsum(fg_sorted, axis=-1), [[0, 0], [1, 0]])  # [:, i]: foreground among the first i
    at_splits = tf.gather(running, splits, axis=1)  # [K, S + 1]
    gts_scene = at_splits[:, 1:] - at_splits[:, :-1]
    fg_cum = running[:, 1:] - tf.gather(at_splits, scene, axis=1)  # foreground among the scene's first k
    gts = tf.gather(tf.pad(gts_scene, [[0, 0], [0, 1]]), scene, axis=1)  # (padded: no scene, for XLA's bad splits)
    k = tf.range(1, tf.shape(fg_sorted)[-1] + 1) - tf.cast(tf.gather(splits, scene), tf.int32)  # from 1 in a scene
    intersection = tf.cast(gts - fg_cum, dtype)
    union = tf.cast(gts + k - fg_cum, dtype)
    background_step = intersection / (union * tf.maximum(union - 1, 1))
    steps = tf.where(tf.equal(fg_sorted, 1), 1 / union, background_step)
    return tf.where(tf.equal(k, 1), 1 - intersection / union, steps), gts_scene  # J(1); the formula divides by U(0)


def _scene_sums(values: tf.Tensor, scene: tf.Tensor, num_scenes: int | tf.Tensor) -> tf.Tensor:
    """Sums ``[S, K]`` of each scene's points in ``values [K, N]``, accumulated in float64 (a scene's
    sum of many float32 terms stays as exact as the dense loss's)."""
    # one more segment, dropped: XLA fails to compile a sum into no segment (row_splits [0], under XLA's NaN)
    sums = tf.math.unsorted_segment_sum(tf.transpose(tf.cast(values, tf.float64)), scene, num_scenes + 1)
    return tf.cast(sums[:-1], values.dtype)


def _scene_sorted_rows(
    errors: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, splits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[S, K]`` of the scenes' runs of ``errors [K, N]`` by ``top_k``: any dtype and device.

    No integer key holds a float64 error and a scene: the rows are sorted by error, then stably
    by scene (``top_k`` keeps ties in order), as lovasz.torch does in float64. Ignored points sort last
    in their scene (:func:`_tf_rows.sort_key`), where they add nothing.
    """
    num_points, num_scenes = tf.shape(errors)[1], tf.shape(splits)[0] - 1
    scene = _scene_of_points(splits, num_points)
    key = _tf_rows.sort_key(errors, valid)
    _, by_error = tf.math.top_k(tf.stop_gradient(key), k=num_points, sorted=True)
    _, by_scene = tf.math.top_k(-tf.cast(tf.gather(scene, by_error), tf.float32), k=num_points, sorted=True)
    perm = tf.gather(by_error, by_scene, batch_dims=1)
    # the errors, not the key: a NaN error keeps its NaN (see _tf_rows.sort_key), an ignored point adds 0
    errors_sorted = tf.gather(errors if valid is None else tf.where(valid, errors, 0), perm, batch_dims=1)
    fg_sorted = tf.gather(tf.cast(fg, tf.int32), perm, batch_dims=1)
    steps, gts = _scene_jaccard_steps(fg_sorted, errors.dtype, splits, scene)
    loss = _scene_sums(_tf_rows.counted(errors_sorted) * tf.stop_gradient(steps), scene, num_scenes)
    return loss, tf.transpose(gts > 0)


def _scene_packed_rows(
    errors: tf.Tensor,
    fg: tf.Tensor,
    valid: tf.Tensor | None,
    splits: tf.Tensor,
    scene_bits: int,
    index_bits: int,
    rows_per_sort: int | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_scene_sorted_rows` for float32 by one sort of one int64 key per point, no gather.

    The keys of :func:`_tf_rows.packed_keys` with the scene above the error (``scene_bits`` for it,
    ``index_bits`` for the point's index), so one ascending sort of a class's row orders it by scene,
    then by decreasing error (ties by index). ``rows_per_sort`` None: XLA's sort of the ``[K, N]`` rows,
    no row in the key (XLA on a CPU); else every group of that many rows in one 1-D sort, the row
    within its group in the top bits (a GPU), as :func:`_tf_rows.sorted_keys` does.
    """
    if valid is not None:
        errors = tf.where(valid, errors, tf.zeros((), errors.dtype))
    errors = tf.where(errors < 0, tf.zeros((), errors.dtype), errors)  # NaN stays NaN
    return _scene_packed_sort(errors, tf.cast(fg, tf.int64), splits, scene_bits, index_bits, rows_per_sort)


def _scene_packed_sort(
    errors: tf.Tensor, fg: tf.Tensor, splits: tf.Tensor, scene_bits: int, index_bits: int, rows_per_sort: int | None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[S, K]`` of float32 ``errors [K, N]`` (>= 0 or NaN) against int64 0/1 ``fg``, by
    the keys of :func:`_scene_packed_rows`; backward scatters each point's step to its place."""

    @tf.custom_gradient
    def packed(
        errors: tf.Tensor, fg: tf.Tensor, splits: tf.Tensor
    ) -> tuple[tuple[tf.Tensor, tf.Tensor], Callable[..., tuple[tf.Tensor, None, None]]]:
        scene = _scene_of_points(splits, tf.shape(errors)[1])
        keys = _tf_rows.packed_keys(errors, fg, index_bits, rows_per_sort, scene, scene_bits)
        key = _tf_rows.sorted_keys(keys, rows_per_sort)
        errors_sorted = _tf_rows.unpacked_errors(key, index_bits)
        # scenes are runs of the points, so the k-th sorted point of a row is in the k-th point's scene
        steps, gts = _scene_jaccard_steps(tf.cast(tf.bitwise.bitwise_and(key, 1), tf.int32), tf.float32, splits, scene)
        num_scenes = tf.shape(splits)[0] - 1
        loss = _scene_sums(errors_sorted * steps, scene, num_scenes)

        def backward(loss_cotangent: tf.Tensor, present_cotangent: tf.Tensor) -> tuple[tf.Tensor, None, None]:
            cotangent = tf.transpose(tf.gather(loss_cotangent, scene))  # [K, N]: each point's scene's
            grad = _tf_rows.sorted_error_grad(errors_sorted, steps * cotangent)
            return _tf_rows.scattered_back(key, grad, index_bits), None, None

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
        raise ValueError(
            f"row_splits must rise from 0 to {num_points}, the number of points; got {shown_splits(splits)}"
        )
    num_scenes = splits.size - 1
    grad = _tf_rows.aligned_empty(pred.shape, np.float32) if need_grad else None
    if num_rows * num_points * num_scenes == 0:  # no point, or no scene: zeros
        outputs = (np.zeros((num_scenes, num_rows), np.float32), np.zeros((num_scenes, num_rows), np.bool_))
        if grad is not None:
            grad.fill(0)
    else:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or _tf_rows.CORES
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
    gradient in the same pass where a ``GradientTape`` watches ``pred``, as :func:`_tf_rows._kernel_rows`.
    ``codes`` are ``[K, N]``. The transpose of points-first input is taken inside, so that backward
    transposes the gradient once, as it multiplies it by each point's scene's cotangent."""
    need_grad = _tf_rows.record is None or _tf_rows.record.should_record_backprop([pred])

    @tf.custom_gradient
    def rows(
        pred: tf.Tensor, codes: tf.Tensor, splits: tf.Tensor
    ) -> tuple[tuple[tf.Tensor, ...], Callable[..., tuple[tf.Tensor, None, None]]]:
        class_rows = tf.transpose(pred) if points_first else pred
        # backward's own references, made here: inside nested tf.cond branches (a gathered grid's), tf.gradients
        # rejects a gradient that reads a tensor of an enclosing branch (cond_v2's _resolve_grad_inputs)
        codes, splits = tf.identity(codes), tf.identity(splits)
        outputs = _host_scene_call(class_rows, codes, splits, mode, need_grad)

        def backward(loss_cotangent: tf.Tensor, present_cotangent: tf.Tensor) -> tuple[tf.Tensor, None, None]:
            grad, scene = outputs[2:] if need_grad else _host_scene_call(class_rows, codes, splits, mode, True)[2:]
            cotangent = tf.gather(loss_cotangent, scene)  # [N, K]: a gather of rows (along axis 1: slower)
            if points_first:
                return tf.transpose(grad) * cotangent, None, None
            return grad * tf.transpose(cotangent), None, None

        return tuple(outputs[:2]), backward

    return rows(pred, codes, splits)


# A dense grid in which at most this fraction of the pixels count (LiDAR voxel grids: 2-7%) is
# gathered into points of scenes first, where the C kernel serves: lovasz.torch's bound
# (``_torch_scenes.COMPACT_BELOW``), not measured apart for TF. A range image (85% valid) stays dense.
COMPACT_BELOW = 0.5


def _host_scattered(
    values: np.ndarray, pixel: np.ndarray, image_ends: np.ndarray, shape: np.ndarray, channels_last: bool
) -> np.ndarray:
    """The grid ``[B, N]``, ``[B, N, K]`` or ``[B, K, N]`` (``shape``) holding the values ``[M]``, ``[M, K]``
    or ``[K, M]`` of the pixels ``pixel`` (image ``b``'s: the run ``[image_ends[b - 1], image_ends[b])``) and
    0 everywhere else, by the C kernel: written once, in whole lines."""
    grid = _tf_rows.aligned_empty(tuple(shape), np.float32)  # aligned: TF takes it without a copy
    if grid.size == 0:
        return grid
    threads = tf.config.threading.get_intra_op_parallelism_threads() or _tf_rows.CORES
    images = grid.shape[0]
    if values.ndim == 1:  # [B, N]: one row per image
        C.scatter_pixels(values[None], pixel, image_ends, grid.reshape(images, 1, -1), threads)
    elif channels_last:  # [B, N, K]: the values of pixel p are the K items from p * K on, in one row per image
        num_rows = grid.shape[2]
        items = (pixel[:, None] * num_rows + np.arange(num_rows)).reshape(-1)
        C.scatter_pixels(values.reshape(1, -1), items, image_ends * num_rows, grid.reshape(images, 1, -1), threads)
    else:
        C.scatter_pixels(values, pixel, image_ends, grid, threads)
    return grid


def _scattered(
    values: tf.Tensor, pixel: tf.Tensor, image_ends: tf.Tensor, shape: tf.Tensor, channels_last: bool
) -> tf.Tensor:
    """:func:`_host_scattered` into a grid of the shape ``shape`` (int64)."""
    return tf.numpy_function(
        functools.partial(_host_scattered, channels_last=channels_last),
        [values, pixel, image_ends, shape],
        tf.float32,
        stateful=False,
        name="lovasz_c_kernel_scatter",
    )


def _taken(x: tf.Tensor, image: tf.Tensor, pixel: tf.Tensor, channels_last: bool) -> tf.Tensor:
    """The pixels ``pixel`` of the images ``image`` of the grid ``x``: ``[1, M]`` of ``[B, N]``, ``[1, M, K]``
    of ``[B, N, K]`` (``channels_last``), ``[1, K, M]`` of ``[B, K, N]``."""
    pixels = tf.shape(x, tf.int64)[1 if x.shape.rank == 2 or channels_last else 2]
    if x.shape.rank == 2 or channels_last:  # [B, N] or [B, N, K]: items of [B * N, ...]
        return tf.gather(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)), image * pixels + pixel)[None]
    rows = tf.shape(x, tf.int64)[1]  # [B, K, N]: at [K, M] of the flat [B * K * N], class-major
    index = (image[None] * rows + tf.range(rows)[:, None]) * pixels + pixel[None]
    return tf.gather(tf.reshape(x, [-1]), index)[None]


def _taken_pred(
    x: tf.Tensor, image: tf.Tensor, pixel: tf.Tensor, image_ends: tf.Tensor, channels_last: bool
) -> tf.Tensor:
    """:func:`_taken`, whose gradient the C kernel scatters back into the grid (TF's gather gives
    IndexedSlices, made dense by an ``UnsortedSegmentSum``: 1.4-3 ms of a 2-7% occupied
    ``[1, 307200, 20]`` grid's 8-15). The scatter's own gradient is the gather, so that higher orders
    hold. Each backward reads its own copies of the indices (see :func:`_scene_kernel_rows`)."""

    @tf.custom_gradient
    def take(
        x: tf.Tensor, image: tf.Tensor, pixel: tf.Tensor, image_ends: tf.Tensor
    ) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple[tf.Tensor, None, None, None]]]:
        image, pixel, image_ends = tf.identity(image), tf.identity(pixel), tf.identity(image_ends)
        shape = tf.shape(x, tf.int64)

        def backward(points_grad: tf.Tensor) -> tuple[tf.Tensor, None, None, None]:
            grid = scatter(tf.convert_to_tensor(points_grad), image, pixel, image_ends, shape)
            return tf.ensure_shape(grid, x.shape), None, None, None

        return _taken(x, image, pixel, channels_last), backward

    @tf.custom_gradient
    def scatter(
        points_grad: tf.Tensor, image: tf.Tensor, pixel: tf.Tensor, image_ends: tf.Tensor, shape: tf.Tensor
    ) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple[tf.Tensor, None, None, None, None]]]:
        image, pixel = tf.identity(image), tf.identity(pixel)

        def backward(grid_grad: tf.Tensor) -> tuple[tf.Tensor, None, None, None, None]:
            return _taken(tf.convert_to_tensor(grid_grad), image, pixel, channels_last), None, None, None, None

        return _scattered(points_grad[0], pixel, image_ends, shape, channels_last), backward

    return take(x, image, pixel, image_ends)


def dense_or_gathered(
    loss_of: Callable[[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None], tf.Tensor],
    pred: tf.Tensor,
    labels: tf.Tensor,
    valid: tf.Tensor,
    per_image: bool,
    channels_last: bool,
    whole: Callable[[], tf.Tensor],
    splits: tf.Tensor | None = None,
) -> tf.Tensor:
    """``whole()``, the loss of the images ``pred`` (``[B, N]``, ``[B, N, K]``, or ``[B, K, N]`` where not
    ``channels_last``); or, where at most :data:`COMPACT_BELOW` of the pixels are valid (in some row),
    ``loss_of(points, labels, valid, scenes)`` of those pixels gathered in pixel order, as ``[1, M]``,
    ``[1, M, K]`` or ``[1, K, M]``, and the row splits of their scenes: one per image with ``per_image``,
    one for the batch otherwise; with the row ``splits`` of points of scenes (``B`` is 1), the valid points
    of each scene. ``labels`` and ``valid`` are ``[B, N]`` or laid out as ``pred``; among
    the points ``valid`` is None where it was the same in every row. Every other pixel's gradient is an
    exact zero. Chosen eagerly in Python, in a graph by ``tf.cond`` (the number of valid pixels is
    known when it runs), which also decides, for the branches, whether the grid fits the C kernel where
    that is not known when traced: one ``tf.switch_case``, no ``tf.cond`` nested in another
    (:func:`_tf_rows.decided_fit`). The points of a grid that fits fit too; in a graph a grid too large
    for the kernel (over ``C.MAX_ELEMENTS`` values) is not gathered, where its points' fit would need
    a ``tf.cond`` of its own."""
    axis = 2 if channels_last else 1  # the row axis of [B, N, K] or [B, K, N]
    if valid.shape.rank == 2:  # one per pixel
        pixel_valid, uniform = valid, True
    else:
        uniform = valid.shape[axis] == 1  # the same in every row
        pixel_valid = tf.squeeze(valid, axis) if uniform else tf.reduce_any(valid, axis)  # [B, N]
    counts = tf.reduce_sum(tf.cast(pixel_valid, tf.int64), 1)
    num_pixels = tf.cast(tf.size(pixel_valid, tf.int64), tf.float64)
    gathers = tf.cast(tf.reduce_sum(counts), tf.float64) <= COMPACT_BELOW * num_pixels

    def gathered() -> tf.Tensor:
        image, pixel = tf.unstack(tf.where(pixel_valid), axis=1)  # of each valid pixel, in pixel order
        take = functools.partial(_taken, image=image, pixel=pixel, channels_last=channels_last)
        if splits is not None:  # [1, N]: each scene's valid points, those before its end
            ends = tf.searchsorted(pixel, tf.cast(splits[1:], tf.int64), out_type=tf.int64)
        else:
            ends = tf.cumsum(counts) if per_image else tf.reduce_sum(counts, keepdims=True)
        points_valid = None if uniform else take(valid)
        points = _taken_pred(pred, image, pixel, tf.cumsum(counts), channels_last)
        return loss_of(points, take(labels), points_valid, tf.concat([tf.zeros([1], tf.int64), ends], 0))

    def decided(branch: Callable[[], tf.Tensor], fits: bool) -> Callable[[], tf.Tensor]:
        def run() -> tf.Tensor:
            with _tf_rows.decided_fit(fits):
                return branch()

        return run

    fits = _tf_rows.fits_kernel(pred)
    if tf.executing_eagerly():  # (the points gathered from a grid too large for the kernel may fit it)
        return gathered() if bool(gathers) else whole()
    if fits is not None:
        return tf.cond(gathers, decided(gathered, True), whole) if fits else whole()
    branch = tf.where(tf.size(pred, tf.int64) > C.MAX_ELEMENTS, 2, tf.where(gathers, 0, 1))
    return tf.switch_case(branch, [decided(gathered, True), decided(whole, True), decided(whole, False)])


def scene_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, channels_last: bool, splits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and presence ``[S, K]`` of each (scene, class) of points-first ``pred [1, N, K]`` (or ``[1, K, N]``)."""
    pred, fg = tf.squeeze(pred, 0), tf.squeeze(fg, 0)  # (x[0]'s gradient would copy)
    valid = None if valid is None else tf.squeeze(valid, 0)
    rows = tf.transpose if channels_last else tf.identity  # [K, N]: a class's row of every point
    if splits.shape[0] == 1:  # no scene (so no point, or bad splits: NaN under XLA, whose compile of a sort failed)
        num_rows = tf.shape(pred)[-1 if channels_last else 0]
        return tf.zeros([0, num_rows], pred.dtype) + tf.reduce_sum(pred) * 0, tf.zeros([0, num_rows], tf.bool)

    def sort() -> tuple[tf.Tensor, tf.Tensor]:
        return _scene_sorted_losses(rows(pred), rows(fg), None if valid is None else rows(valid), hinge, splits)

    if _tf_rows.use_kernel(pred) and C.scene_kernel() is not None:
        codes = tf.cast(fg, tf.uint8)
        if valid is not None:
            codes = tf.where(valid, codes, tf.constant(2, tf.uint8))  # 0 background, 1 foreground, 2 ignored
        mode = C.HINGE if hinge else C.SOFTMAX
        kernel = lambda: _scene_kernel_rows(pred, rows(codes), splits, mode, channels_last)  # noqa: E731
        fits = _tf_rows.fits_kernel(pred)
        if fits is None:  # chosen when run, as in _tf_rows.kernel_or_sort
            return tf.cond(tf.size(pred, tf.int64) <= C.MAX_ELEMENTS, kernel, sort)
        return kernel() if fits else sort()
    return sort()


def _scene_sorted_losses(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, hinge: bool, splits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`scene_losses` by a sort in TF: packed int64 keys for float32 (laid out by
    :func:`_tf_rows.sort_layout`) where they fit, else two ``top_k``."""
    if hinge:  # max(0, 1 - s x), the max taken after the sort
        errors = tf.where(fg, 1 - pred, 1 + pred)
    else:  # |[y = c] - p|; a NaN p at an ignored pixel would make abs's gradient NaN there
        pred = pred if valid is None else tf.where(valid, pred, tf.zeros((), pred.dtype))
        errors = tf.abs(tf.where(fg, 1 - pred, pred))
    top_k = lambda: _scene_sorted_rows(errors, fg, valid, splits)  # noqa: E731
    num_scenes = splits.shape[0] - 1 if splits.shape[0] is not None else None
    layout = _tf_rows.sort_layout(errors)
    if num_scenes is None or layout == _tf_rows.TOP_K:
        return top_k()
    scene_bits = max(num_scenes - 1, 0).bit_length()
    budget = _tf_rows.ROW_AND_INDEX_BITS - scene_bits  # the bits for the index and the row, beside the scene
    if layout == _tf_rows.PACKED_FLAT:  # N known when traced (sort_layout)
        spare = budget - _tf_rows.index_bits_for(errors.shape[1])
        if spare < 0:  # not even one row's keys fit
            return top_k()
        return _scene_packed_rows(errors, fg, valid, splits, scene_bits, budget - spare, 1 << spare)
    packed = lambda: _scene_packed_rows(errors, fg, valid, splits, scene_bits, max(budget, 0), None)  # noqa: E731
    fits = 1 << budget if budget >= 0 else -1  # the points an index of the bits left tells apart
    num_points = errors.shape[1]
    if num_points is not None:
        return packed() if num_points <= fits else top_k()
    return tf.cond(tf.shape(errors)[1] <= fits, packed, top_k)
