"""Lovász-Softmax and Lovász hinge losses for TensorFlow 2.

A drop-in for the original ``tensorflow/lovasz_losses_tf.py`` of Berman et al.
(same names and arguments, ``order='BHWC'`` channels-last by default), with the
extensions of :mod:`lovasz.torch`: ``from_logits``, class ``weights``,
``reduction``, :func:`lovasz_multilabel` and any spatial rank.

All (set, class) rows go through one sort: no ``map_fn``, no Python loop over
images or classes, so the losses run eagerly, in ``tf.function`` and with
``jit_compile=True`` (XLA). Ignored pixels are masked, not removed, except where
the C kernel serves (below) and at most half of the pixels count (LiDAR voxel
grids): there the valid pixels are gathered into points of scenes first, their
number known when the graph runs (``tf.cond`` picks the path); under XLA every
shape is static and the grid stays whole. This module checks the arguments and
builds the predictions, labels and masks; the engines that sort the rows are in
:mod:`lovasz._tf_rows` (images) and :mod:`lovasz._tf_scenes` (points of scenes).
The sort is chosen when the function is traced (eagerly, at each call):

- float32 on a CPU, eagerly or in ``tf.function``: the C kernel of
  :mod:`lovasz.torch` (``_kernel.c``), through ``tf.numpy_function`` inside a
  ``tf.custom_gradient``; it returns the gradient with the loss (where a
  ``GradientTape`` watches the input), so backward is one multiply;
- float32 on a CPU under XLA (where a host callback cannot run): XLA's sort of
  one int64 key per pixel that packs the error, the pixel's index and its
  label, and no gather; backward scatters the Jaccard steps;
- float32 on a GPU (a shape known when traced): the same keys with the row
  above the error, all rows in ONE 1-D sort (XLA's sort of one int64 operand
  under XLA, ``top_k`` of one row outside), which reaches the GPU's
  one-segment radix sort where a sort of ``[R, N]`` rows takes its segmented
  sort; rows in groups, one sort each, where the key's bits run out;
- elsewhere (float64, lovasz installed without its kernel): one
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

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, TypeAlias, Union

import numpy as np
import tensorflow as tf

from lovasz import _tf_distributed, _tf_rows, _tf_scenes
from lovasz import _validation as V
from lovasz._tf_scenes import shown_splits

__all__ = [
    "lovasz_grad",
    "flatten_probas",
    "flatten_binary_scores",
    "lovasz_softmax_flat",
    "lovasz_hinge_flat",
    "lovasz_softmax",
    "lovasz_hinge",
    "lovasz_multilabel",
    "exportable",
]


def _traced_as_written(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A public function of this module, as it is traced and run in each mode of TF.

    In a user's tf.function, AutoGraph would rewrite these functions and all they call: they are written to be
    traced as they are (tf.cond and asserts where the data decide), and a rewritten call of ours once failed in a
    long test run for no reason of its own (an argument missing from a converted call).

    In a TF1-style graph (``tf.compat.v1.Session``, the original ``lovasz_losses_tf.py``'s home), outside any
    tf.function, the call is traced in a ``tf.function`` of its own: a bare graph runs only the ops a fetch needs,
    so it would drop the asserts that check the labels, the weights and the row splits. (This module compares
    tensors with ``tf.equal``: there ``==`` compares the Python objects.)
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if tf.compat.v1.executing_eagerly_outside_functions() or tf.compat.v1.get_default_graph().building_function:
            return fn(*args, **kwargs)
        return tf.function(fn, autograph=False)(*args, **kwargs)

    return tf.autograph.experimental.do_not_convert(call)


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
    if isinstance(x, tf.SparseTensor):
        raise TypeError(
            f"{name} must be a dense tensor (or a tf.RaggedTensor of scenes); got a tf.SparseTensor: pass "
            "tf.sparse.to_dense(...), or, for a sparse voxel grid, its stored voxels as points (values [N, ...] "
            "with row_splits=)"
        )
    try:
        return tf.convert_to_tensor(x)
    except (TypeError, ValueError):
        dtype = f" of dtype {x.dtype}" if hasattr(x, "dtype") else ""
        raise TypeError(f"{name} must be {what}; got {type(x).__name__}{dtype}") from None


def _check_prediction(x: Any, name: str) -> tf.Tensor:
    x = _to_tensor(x, name, "a floating-point tensor")
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype.name}")
    V.check_known_rank(x, name)
    return x


def _check_labels(labels: Any, name: str) -> tf.Tensor:
    """Integer labels in a signed type that ``one_hot`` and the ``ignore`` comparison take; floats as they are.

    Float labels must hold whole numbers: the functions check that as they check the label range.
    """
    labels = _to_tensor(labels, name, "a tensor of class indices")
    V.check_known_rank(labels, name)
    dtype = labels.dtype
    if dtype.is_floating:
        return labels
    if not (dtype.is_integer or dtype == tf.bool):
        raise TypeError(
            f"{name} must be a tensor of integer class indices (not one-hot, not probabilities); got dtype {dtype.name}"
        )
    wide = tf.cast(labels, tf.int64 if dtype in (tf.int64, tf.uint32, tf.uint64) else tf.int32)
    # uint64 from 2**63 on would wrap to negatives (2**64 - 1 to -1, then left out by ignore=-1): the largest
    # int64 instead: out of every class's range, so the range check names it (as that int64)
    return tf.where(wide < 0, tf.constant(tf.int64.max, tf.int64), wide) if dtype == tf.uint64 else wide


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


def _check_values(
    labels: tf.Tensor,
    ok: tf.Tensor,
    valid: tf.Tensor | None,
    allowed: str,
    name: str,
    where: str | None = "non-ignored pixel",
) -> tf.Tensor | None:
    """Raise on a bad non-ignored label: ``ValueError`` eagerly; in a ``tf.function`` graph an assert op (a
    stateful op, which the function runs), whose ``InvalidArgumentError`` names the first bad value. XLA
    (``jit_compile=True``) compiles no assert, ``tf.vectorized_map`` takes none, and TFLite drops those of
    traces made inside :func:`exportable`: there this returns whether every label is good, for
    :func:`_nan_unless`."""
    bad = tf.logical_not(ok) if valid is None else tf.logical_and(valid, tf.logical_not(ok))
    message = f"{name} must be {allowed}" + (f" at every {where}" if where else "")
    if not tf.executing_eagerly():
        if _tf_rows.asserts_dropped() or _tf_rows.in_pfor():
            return tf.logical_not(tf.reduce_any(bad))
        _tf_rows.assert_showing(
            tf.logical_not(tf.reduce_any(bad)), f"{message}; found:", lambda: tf.boolean_mask(labels, bad)[:1]
        )
        return None
    if bool(tf.reduce_any(bad)):
        raise ValueError(f"{message}; found {tf.boolean_mask(labels, bad)[0].numpy()}")
    return None


def _nan_unless(loss: tf.Tensor, *good: tf.Tensor | None) -> tf.Tensor:
    """``loss``, or NaN (its gradient too) where a check of :func:`_check_values` that could not assert (XLA,
    ``tf.vectorized_map``) found a bad label, which the loss would otherwise read as background without a
    word (a class 7 of 4). Where all are good, ``loss * 1``: the same bits."""
    unasserted = [g for g in good if g is not None]
    if not unasserted:
        return loss
    ok = tf.reduce_all(tf.stack(unasserted))
    return loss * tf.where(ok, tf.ones((), loss.dtype), tf.constant(float("nan"), loss.dtype))


def _check_layout_when_run(
    labels: tf.Tensor, prediction: tf.Tensor, axis: int | None, names: tuple[str, str]
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Where unknown dims (a ``tf.function``'s input_signature, a ``tf.data`` pipeline) left the shapes to the
    run, the labels' shape then must be the prediction's, less its class axis ``axis``: the reshapes would
    take labels of the right size laid out otherwise (height and width swapped, multi-label targets
    ``[C, N]``) without a word. The labels and the prediction come back after the assertion, so that it runs
    before their reshapes (which would fail first on another size, naming none of them), with None; under
    XLA, which compiles no assertion, with whether the shapes agree, for :func:`_nan_unless`."""
    if tf.executing_eagerly() or (labels.shape.is_fully_defined() and prediction.shape.is_fully_defined()):
        return labels, prediction, None
    expected = tf.shape(prediction, tf.int64)
    if axis is not None:
        axis %= prediction.shape.rank
        expected = tf.concat([expected[:axis], expected[axis + 1 :]], 0)
    if _tf_rows.asserts_dropped():  # (the ranks agree: checked when traced)
        return labels, prediction, tf.reduce_all(tf.equal(tf.shape(labels, tf.int64), expected))
    lname, pname = names
    message = f"{lname} must have the shape of {pname}" + ("" if axis is None else f" less its axis {axis}")
    if lname == "labels" and axis is None and labels.shape.rank and labels.shape[-1] is None:  # [B, *spatial, 1]?
        message += (
            f" (read as one channel's layout: its rank and a last dim unknown when traced; class indices with "
            f"a size-1 last axis need it known: tf.ensure_shape({lname}, {[None] * (labels.shape.rank - 1) + [1]}))"
        )
    check = tf.debugging.assert_equal(tf.shape(labels, tf.int64), expected, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(labels), tf.identity(prediction), None


def _valid(labels: tf.Tensor, ignore: int | None) -> tf.Tensor | None:
    """Where ``labels`` do not hold ``ignore`` (:func:`V.ignore_held`: a value their dtype cannot hold, none)."""
    ignore = V.ignore_held(ignore, labels.dtype if labels.dtype.is_integer else None)
    return None if ignore is None else tf.not_equal(labels, tf.cast(ignore, labels.dtype))


def _below(labels: tf.Tensor, n: int) -> tf.Tensor:
    """``0 <= labels < n``; integer labels (int32 or int64, as :func:`_check_labels` gives them) in one comparison
    of their bits read unsigned, where a negative label's are above every class (two comparisons of a LiDAR
    grid's 307,200 int64 labels took 0.4 ms of a 6 ms step). Not for export: TFLite compares no unsigned ints."""
    unsigned = {tf.int32: tf.uint32, tf.int64: tf.uint64}.get(labels.dtype)
    if unsigned is None or n > labels.dtype.max or _tf_rows.exporting():
        return tf.logical_and(labels >= 0, labels < n)
    return tf.bitcast(labels, unsigned) < tf.constant(n, unsigned)


def _zero_or_one(labels: tf.Tensor) -> tf.Tensor:
    return tf.logical_or(tf.equal(labels, 0), tf.equal(labels, 1))


def _size(x: tf.Tensor, start: int, stop: int | None = None) -> int | tf.Tensor:
    """The number of elements in dims ``start:stop`` of ``x``, for reshapes: TF infers no ``-1`` for an empty tensor."""
    n = x.shape[start:stop].num_elements()
    return n if n is not None else tf.reduce_prod(tf.shape(x)[start:stop])


def _compute_dtype(x: tf.Tensor) -> tf.DType:
    """float64 stays float64; half precision (and float32) is computed in float32."""
    return tf.float64 if x.dtype == tf.float64 else tf.float32


def _as_weights(weights: Weights, num_classes: int, dtype: tf.DType) -> tuple[tf.Tensor | None, tf.Tensor | None]:
    """``weights`` as ``[C]`` in ``dtype``, and, for weights a graph holds (a variable in a ``tf.function``), under
    XLA or ``tf.vectorized_map``, whether their values are good, for :func:`_nan_unless` (in other graphs an
    assert checks them when it runs; numbers are checked here)."""
    if weights is None:
        return None, None
    try:
        if isinstance(weights, (str, bytes)):
            w = None
        elif _numbers(weights):  # in NumPy's types, a float64 for a float (TF makes float32: 1e300 was refused)
            numbers = np.asarray(weights)
            w = tf.constant(numbers) if numbers.dtype.kind in "iuf" else None
        else:  # a tensor, a variable, a list of tensors (a learned weight keeps its gradient)
            w = tf.convert_to_tensor(weights)
    except (TypeError, ValueError):  # ragged lists, dicts, ...
        w = None
    if w is None or not (w.dtype.is_floating or w.dtype.is_integer):
        raise TypeError(f"weights must be [{num_classes}] real numbers (one weight per class) or None; got {weights!r}")
    V.check_weights_shape(w.shape, num_classes)
    known = w.numpy() if tf.executing_eagerly() else tf.get_static_value(w)  # (None: a graph's values)
    if known is None:  # a learned weight may turn negative at any step: checked when the graph runs
        wide = tf.cast(w, tf.float64)
        good = _check_values(wide, tf.math.is_finite(wide) & (wide >= 0), None, "finite numbers >= 0", "weights", None)
        return tf.cast(w, dtype), good
    scale = V.check_weight_values(np.reshape(known, -1))
    if scale == 1:
        return tf.cast(w, dtype), None
    if hasattr(weights, "assign"):  # a variable: scaled in the graph, keeping its gradient
        return tf.cast(tf.cast(w, tf.float64) * scale, dtype), None
    return tf.constant(np.asarray(known, np.float64) * scale, dtype), None  # (on the host: TF flushes 1e-320)


def _numbers(weights: Any) -> bool:
    """Whether ``weights`` are numbers (a NumPy array, or a sequence of Python or NumPy numbers)."""
    if isinstance(weights, (np.ndarray, np.generic, int, float)):
        return True
    return isinstance(weights, (list, tuple)) and all(isinstance(v, (int, float, np.generic)) for v in weights)


# ----------------------------------------------------------------------------- checks of points of scenes


def _check_known_classes(channels: int | None, name: str, shape: tf.TensorShape) -> None:
    """The class count is a static dimension: a ``tf.function`` traced with it unknown can't be served."""
    if channels is None:
        raise ValueError(
            f"the class axis of {name} must be known when the function is traced (give the input_signature "
            f"a class dimension); got shape {shape}"
        )


def _check_row_splits(
    row_splits: TensorLike, num_points: int | tf.Tensor, pname: str
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """``row_splits`` as int64 ``[S + 1]``: 0, then each scene's end, rising to the number of points; and under
    XLA whether they are good, for :func:`_nan_unless` (else None).

    Eagerly a bad value raises ``ValueError``; in a graph, ``tf.debugging`` asserts raise
    ``InvalidArgumentError`` when it runs; XLA drops asserts: there bad splits make the loss NaN.
    """
    what = "a 1-D integer tensor [S + 1] (0, then each scene's end: TF's row_splits)"
    splits = _to_tensor(row_splits, "row_splits", what)
    if not splits.dtype.is_integer:
        raise TypeError(f"row_splits must be {what}; got dtype {splits.dtype.name}")
    if splits.shape.rank != 1 or splits.shape[0] == 0:
        raise ValueError(f"row_splits must be {what}; got shape {splits.shape.as_list()}")
    splits = tf.cast(splits, tf.int64)
    if splits.shape[0] == 1 and isinstance(num_points, int) and num_points > 0:  # (known when traced: XLA failed)
        raise ValueError(f"row_splits must end at {num_points}, the number of points of {pname}; got [0] (no scene)")
    if tf.executing_eagerly():
        values, n = splits.numpy(), int(num_points)
        if values[0] != 0:
            raise ValueError(f"row_splits must start at 0; got {shown_splits(values)}")
        if np.any(values[1:] < values[:-1]):
            raise ValueError(f"row_splits must never decrease (each scene's end); got {shown_splits(values)}")
        if values[-1] != n:
            raise ValueError(f"row_splits must end at {n}, the number of points of {pname}; got {shown_splits(values)}")
    elif _tf_rows.asserts_dropped():
        n = tf.cast(num_points, tf.int64)
        rising = tf.reduce_all(splits[1:] >= splits[:-1])
        return splits, tf.logical_and(tf.logical_and(tf.equal(splits[0], 0), tf.equal(splits[-1], n)), rising)
    else:
        n = tf.cast(num_points, tf.int64)
        checks = [
            tf.debugging.assert_equal(splits[0], tf.constant(0, tf.int64), message="row_splits must start at 0"),
            tf.debugging.assert_greater_equal(splits[1:], splits[:-1], message="row_splits must never decrease"),
            tf.debugging.assert_equal(splits[-1], n, message=f"row_splits must end at the number of points of {pname}"),
        ]
        with tf.control_dependencies(checks):
            splits = tf.identity(splits)
    return splits, None


def _from_ragged(
    prediction: Any, labels: Any, names: tuple[str, str]
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """The values and row splits of ragged ``[S, None, ...]`` inputs (the labels' splits must be the prediction's:
    ``ValueError`` eagerly or where the scene counts are known, an assert in a graph; under XLA whether they
    are, for :func:`_nan_unless`, else None)."""
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
    message = f"{lname} must have the scenes of {pname} (equal row_splits)"
    if tf.executing_eagerly():
        if splits.shape != label_splits.shape or not bool(tf.reduce_all(tf.equal(splits, label_splits))):
            raise ValueError(
                f"{message}; got {shown_splits(label_splits.numpy())} against {shown_splits(splits.numpy())}"
            )
        return prediction.values, labels.values, splits, None
    scenes, label_scenes = splits.shape[0], label_splits.shape[0]
    if scenes is not None and label_scenes is not None and scenes != label_scenes:
        raise ValueError(f"{message}; got {label_scenes - 1} against {scenes - 1} scenes")
    common = tf.minimum(tf.size(splits), tf.size(label_splits))  # (splits of two lengths compare as unequal)
    same_sizes = tf.equal(tf.size(splits), tf.size(label_splits))
    same = tf.logical_and(same_sizes, tf.reduce_all(tf.equal(splits[:common], label_splits[:common])))
    if _tf_rows.asserts_dropped():  # the loss is NaN where they differ
        return prediction.values, labels.values, splits, same
    with tf.control_dependencies([tf.debugging.Assert(same, [message])]):
        return prediction.values, labels.values, tf.identity(splits), None


def _points(
    prediction: TensorOrRagged, labels: TensorOrRagged, row_splits: TensorLike | None, kind: str, names: tuple[str, str]
) -> tuple[TensorOrRagged, TensorOrRagged, tf.Tensor | None, tf.Tensor | None]:
    """Points-first inputs of scenes (``row_splits=``, or ragged ``[S, None, ...]``) with a batch
    axis of one (``[1, N, C]`` / ``[1, N]``), their row splits (int64 ``[S + 1]``) and, under XLA,
    whether ``row_splits=`` are good (see :func:`_check_row_splits`); other inputs as they are, with None."""
    pname, lname = names
    ragged = isinstance(prediction, tf.RaggedTensor) or isinstance(labels, tf.RaggedTensor)
    if row_splits is None and not ragged:
        return prediction, labels, None, None
    multilabel = kind == "multilabel"
    if ragged:
        if row_splits is not None:
            raise TypeError(f"pass the scenes as row_splits= or as ragged {pname} and {lname}, not both")
        prediction, labels, row_splits, good = _from_ragged(prediction, labels, names)
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
    if labels.shape.rank is not None and V.points_label_axis(shape.as_list(), labels.shape.as_list(), multilabel):
        labels = tf.squeeze(labels, 1)
    label_shape = prediction.shape if multilabel else prediction.shape[:1]
    if not labels.shape.is_compatible_with(label_shape):
        raise ValueError(
            f"{lname} must have shape {label_shape.as_list()} for {pname} of shape {prediction.shape.as_list()}; "
            f"got {labels.shape.as_list()}"
        )
    if not ragged:
        row_splits, good = _check_row_splits(row_splits, _size(prediction, 0, 1), pname)
    return tf.expand_dims(prediction, 0), tf.expand_dims(labels, 0), row_splits, good  # (x[None]'s gradient copies)


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
    if not per_image and scenes is None and across is None and pred.shape[3 - axis] == 1:
        # points [B, K] of one set (Pointcept's call, [N, C]): the layout of one image of B pixels, where
        # the kernel reads each row at once, not B runs of one pixel (240,000 x 19 points: 109 -> 78 ms)
        num_rows = pred.shape[axis]
        one_image = lambda x: tf.reshape(x, [1, -1, num_rows]) if channels_last else tf.transpose(x, [2, 1, 0])  # noqa: E731
        pred, fg = one_image(pred), one_image(fg)
        valid = None if valid is None else one_image(valid)
    if not isinstance(classes, str):  # a list may repeat a class: each repetition counts
        pred, fg = tf.gather(pred, classes, axis=axis), tf.gather(fg, classes, axis=axis)
        valid = None if valid is None else tf.gather(valid, classes, axis=axis)
        weights = None if weights is None else tf.gather(weights, classes)
    if across is not None and not per_image:
        pred, fg, valid = _tf_distributed.gather_set(pred, fg, valid, channels_last, across)
        channels_last, axis = True, 2
    if scenes is not None:
        loss, present = _tf_scenes.scene_losses(pred, fg, valid, hinge, channels_last, scenes)
    elif _tf_rows.use_kernel(pred):
        loss, present = _tf_rows.kernel_or_sort(pred, fg, valid, hinge, per_image, channels_last)
    else:
        loss, present = _tf_rows.sorted_losses(pred, fg, valid, hinge, per_image, channels_last)

    num_rows = pred.shape[axis]
    num_sets = -1
    if not num_rows:  # no class: the number of sets from elsewhere (a -1 would read one)
        num_sets = (tf.size(scenes) - 1 if scenes is not None else tf.shape(pred)[0]) if per_image else 1
    loss, present = tf.reshape(loss, [num_sets, num_rows]), tf.reshape(present, [num_sets, num_rows])
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


def _on_valid_pixels(
    loss_of: Callable[[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None], tf.Tensor],
    pred: tf.Tensor,
    labels: tf.Tensor,
    valid: tf.Tensor | None,
    per_image: bool,
    channels_last: bool,
    splits: tf.Tensor | None,
    across: tf.distribute.ReplicaContext | None,
) -> tf.Tensor:
    """``loss_of(pred, labels, valid, scenes)`` of the images (or the points of the scenes ``splits``), or of
    their valid pixels gathered into points of scenes where that pays: the C kernel serves (a CPU, float32,
    not under XLA) and at most :data:`lovasz._tf_scenes.COMPACT_BELOW` of the pixels are valid
    (``_tf_scenes.dense_or_gathered``). The batch of every replica (``across``) is taken as it is."""
    scenes = splits if per_image else None  # else the points are one image
    whole = functools.partial(loss_of, pred, labels, valid, scenes)
    if valid is None or across is not None or not _tf_rows.use_kernel(pred):
        return whole()
    return _tf_scenes.dense_or_gathered(loss_of, pred, labels, valid, per_image, channels_last, whole, scenes)


def _replicas(global_batch: bool) -> tf.distribute.ReplicaContext | None:
    """The replica context whose replicas' batches form the loss, with ``global_batch``; None where the
    batch is whole (no strategy, one replica, the cross-replica context)."""
    global_batch = V.check_flag(global_batch, "global_batch")
    return _tf_distributed.replica_context() if global_batch else None


# ----------------------------------------------------------------------------- public functions


@_traced_as_written
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
            labels raise ``ValueError`` eagerly and fail an assert inside ``tf.function``; under XLA
            and ``tf.vectorized_map``, which take no assert, they make the loss NaN.
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
            in ``tf.function`` an assert fails the run; under XLA they make the loss NaN.
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
    per_image, from_logits = V.check_flag(per_image, "per_image"), V.check_flag(from_logits, "from_logits")
    probas, labels, splits, good_splits = _points(probas, labels, row_splits, "softmax", ("probas", "labels"))
    probas = _check_prediction(probas, "probas")
    labels = _check_labels(labels, "labels")
    channels_last = _check_points_order(order, splits)
    channel_axis = -1 if channels_last else 1
    extra = V.extra_label_axis(labels.shape, [probas.shape, V.without_axis(probas.shape, channel_axis)])
    if extra is not None:
        labels = tf.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives them, or [B, 1, *spatial]
    if probas.shape.rank == labels.shape.rank + 1 and probas.shape[channel_axis] == 1:
        # one channel: the foreground probability; points [N, 1]: N images of one pixel
        if probas.shape.rank == 2:
            labels = tf.expand_dims(labels, 1)
        else:
            probas = tf.squeeze(probas, channel_axis)
    if probas.shape.rank == labels.shape.rank + 1:
        _check_known_classes(probas.shape[channel_axis], "probas", probas.shape)
    sigmoid, num_classes = V.softmax_layout(probas.shape, labels.shape, channel_axis)
    labels, probas, good_layout = _check_layout_when_run(
        labels, probas, None if sigmoid else channel_axis, ("labels", "probas")
    )
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    dtype = _compute_dtype(probas)
    w, good_weights = _as_weights(weights, num_classes, dtype)

    batch, pixels = tf.shape(labels)[0], _size(labels, 1)
    lab = tf.reshape(labels, [batch, pixels])
    valid = _valid(lab, ignore)
    good = [good_splits, good_layout, good_weights]
    if lab.dtype.is_floating:  # class indices as floats: whole numbers only (1.5 is no class)
        good.append(_check_values(lab, tf.equal(lab, tf.round(lab)), valid, "whole numbers (class indices)", "labels"))
    good.append(_check_values(lab, _below(lab, num_classes), valid, f"in [0, {num_classes - 1}]", "labels"))
    lab = tf.cast(lab, tf.int32) if lab.dtype.is_floating else lab

    class_axis = 2 if channels_last else 1  # of pred [B, N, C] or [B, C, N]
    if sigmoid:
        pred = tf.reshape(tf.cast(probas, dtype), [batch, pixels])
    else:
        pred = tf.reshape(
            tf.cast(probas, dtype), [batch, pixels, num_classes] if channels_last else [batch, num_classes, pixels]
        )
    across = _replicas(global_batch)

    def loss_of(pred: tf.Tensor, lab: tf.Tensor, valid: tf.Tensor | None, scenes: tf.Tensor | None) -> tf.Tensor:
        if valid is not None and not sigmoid:
            valid = tf.expand_dims(valid, class_axis)
        if valid is not None and from_logits:  # a NaN logit at an ignored pixel: not through the softmax's gradient
            pred = tf.where(valid, pred, tf.zeros((), dtype))  # (probabilities: the sorts mask them, the kernel skips)
        if sigmoid:
            pred = tf.sigmoid(pred) if from_logits else pred
            pred = tf.stack([1 - pred, pred], axis=class_axis)
            valid = None if valid is None else tf.expand_dims(valid, class_axis)
        elif from_logits:
            pred = tf.nn.softmax(pred, axis=class_axis)
        fg = tf.one_hot(lab, num_classes, on_value=True, off_value=False, axis=class_axis)
        return _lovasz_classes(pred, fg, valid, False, classes, per_image, channels_last, w, reduction, scenes, across)

    loss = _on_valid_pixels(loss_of, pred, lab, valid, per_image, channels_last, splits, across)
    return tf.cast(_nan_unless(loss, *good), probas.dtype)


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
        if valid is not None:  # a NaN logit at an ignored pixel: not through elu's gradient (under XLA: all pixels)
            pred = tf.where(valid, pred, tf.zeros((), pred.dtype))
        signs = tf.where(fg, tf.ones_like(pred), -tf.ones_like(pred))
        pred = -signs * tf.nn.elu(1 - signs * pred)
    args = (classes, per_image, channels_last, weights, reduction, scenes, across)
    loss = _lovasz_classes(pred, fg, valid, True, *args)
    if symmetric:  # not fg: the ignored pixels are left out again by valid
        flipped = _lovasz_classes(-pred, tf.logical_not(fg), valid, True, *args)
        loss = (loss + flipped) / 2
    return loss


@_traced_as_written
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
    per_image = V.check_flag(per_image, "per_image")
    logits, labels, splits, good_splits = _points(logits, labels, row_splits, "hinge", ("logits", "labels"))
    logits = _check_prediction(logits, "logits")
    labels = _check_labels(labels, "labels")
    s = tuple(logits.shape)
    accepted = [s] + [V.without_axis(s, a) for a in (1, -1) if len(s) >= 2 and s[a] == 1]
    extra = V.extra_label_axis(labels.shape, accepted)
    if extra is not None:
        labels = tf.squeeze(labels, extra)  # [B, *spatial, 1] as Keras gives masks, or [B, 1, *spatial]
    s = tuple(logits.shape)
    if len(s) == labels.shape.rank + 1 and s[-1] == 1 and V.compatible(V.without_axis(s, -1), labels.shape):
        logits = tf.squeeze(logits, -1)  # [B, *spatial, 1], as Keras models give it (not [B, 1, H, W=1])
    V.hinge_layout(logits.shape, labels.shape)
    s, rank = tuple(logits.shape), labels.shape.rank
    # a channel axis of one left in logits (its size unknown when traced): where only one axis can be it
    axes = [
        a
        for a in (1, -1)
        if len(s) == rank + 1 and V.same_dim(s[a], 1) and V.compatible(V.without_axis(s, a), labels.shape)
    ]
    good_layout = None
    if len(s) == rank or len(axes) == 1:
        labels, logits, good_layout = _check_layout_when_run(
            labels, logits, axes[0] if axes else None, ("labels", "logits")
        )
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric)
    layout = [tf.shape(labels)[0], 1, _size(labels, 1)]
    pred = tf.reshape(tf.cast(logits, _compute_dtype(logits)), layout)
    lab = tf.reshape(labels, layout)
    valid = _valid(lab, ignore)
    good = _check_values(lab, _zero_or_one(lab), valid, "0 or 1", "labels")
    across = _replicas(global_batch)

    def loss_of(pred: tf.Tensor, lab: tf.Tensor, valid: tf.Tensor | None, scenes: tf.Tensor | None) -> tf.Tensor:
        options = ("all", per_image, False, None, reduction, margin, symmetric, scenes, across)
        return _hinge_classes(pred, tf.equal(lab, 1), valid, *options)

    loss = _on_valid_pixels(loss_of, pred, lab, valid, per_image, False, splits, across)
    return tf.cast(_nan_unless(loss, good, good_splits, good_layout), logits.dtype)


@_traced_as_written
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
    per_image, from_logits = V.check_flag(per_image, "per_image"), V.check_flag(from_logits, "from_logits")
    logits, targets, splits, good_splits = _points(logits, targets, row_splits, "multilabel", ("logits", "targets"))
    logits = _check_prediction(logits, "logits")
    targets = _check_labels(targets, "targets")
    channels_last = _check_points_order(order, splits)

    def channels_first(shape: tf.TensorShape) -> list[int | None]:
        shape = shape.as_list()
        return shape[:1] + shape[-1:] + shape[1:-1] if channels_last and len(shape) >= 2 else shape

    shapes = channels_first(logits.shape), channels_first(targets.shape)
    if len(shapes[0]) >= 2:
        _check_known_classes(shapes[0][1], "logits", logits.shape)
    num_classes = V.multilabel_layout(*shapes)  # the class dim is known (checked)
    targets, logits, good_layout = _check_layout_when_run(targets, logits, None, ("targets", "logits"))
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric, from_logits)
    dtype = _compute_dtype(logits)
    w, good_weights = _as_weights(weights, num_classes, dtype)
    batch = tf.shape(logits)[0]
    pixels = _size(logits, 1, -1) if channels_last else _size(logits, 2)
    layout = [batch, pixels, num_classes] if channels_last else [batch, num_classes, pixels]
    pred = tf.reshape(tf.cast(logits, dtype), layout)
    tgt = tf.reshape(targets, layout)
    valid = _valid(tgt, ignore)
    good = _check_values(tgt, _zero_or_one(tgt), valid, "0 or 1", "targets")
    across = _replicas(global_batch)

    def loss_of(pred: tf.Tensor, tgt: tf.Tensor, valid: tf.Tensor | None, scenes: tf.Tensor | None) -> tf.Tensor:
        if from_logits:
            options = (classes, per_image, channels_last, w, reduction, margin, symmetric, scenes, across)
            return _hinge_classes(pred, tf.equal(tgt, 1), valid, *options)
        options = (classes, per_image, channels_last, w, reduction, scenes, across)
        return _lovasz_classes(pred, tf.equal(tgt, 1), valid, False, *options)

    loss = _on_valid_pixels(loss_of, pred, tgt, valid, per_image, channels_last, splits, across)
    return tf.cast(_nan_unless(loss, good, good_splits, good_layout, good_weights), logits.dtype)


# ----------------------------------------------------------------------------- the original's flat API


@_traced_as_written
def lovasz_grad(gt_sorted: TensorLike) -> tf.Tensor:
    """Gradient of the Lovász extension w.r.t. errors sorted in decreasing order (Algorithm 1).

    ``gt_sorted`` is ``[P]`` 0/1 ground truth in the order of the sorted errors; the
    result ``[P]`` holds ``J(k) - J(k-1)`` (float64 for float64 input, else float32): of bool
    input in closed form from the counts; of numbers by the original's formula, in float (floats
    differentiable), taking soft labels and integers other than 0 and 1 as it does.

    Example:
        >>> [round(float(g), 4) for g in lovasz_grad(tf.constant([1.0, 0.0, 1.0]))]
        [0.5, 0.1667, 0.3333]
    """
    gt_sorted = tf.convert_to_tensor(gt_sorted)
    if gt_sorted.shape.rank != 1:
        raise ValueError(f"gt_sorted must be a 1-D tensor; got shape {gt_sorted.shape}")
    dtype = tf.float64 if gt_sorted.dtype == tf.float64 else tf.float32
    if gt_sorted.dtype != tf.bool:  # (rounded to 0/1 before: soft labels lost their values and gradient)
        gt = tf.cast(gt_sorted, tf.float64)  # (float32 cumsums cancel in the differences)
        total = tf.reduce_sum(gt)
        jaccard = 1 - (total - tf.cumsum(gt)) / (total + tf.cumsum(1 - gt))
        return tf.cast(tf.concat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0), dtype)
    return _tf_rows.jaccard_steps(tf.cast(gt_sorted, tf.int32), dtype)


@_traced_as_written
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
    channels_last = _check_order(order)
    given_probas = probas.shape  # (as given, for the message below)
    if probas.shape.rank is not None and probas.shape.rank >= 2 and labels.shape.rank is not None:
        without_classes = V.without_axis(probas.shape.as_list(), -1 if channels_last else 1)
        extra = V.extra_label_axis(labels.shape.as_list(), [probas.shape.as_list(), without_classes])
        if extra is not None:  # [B, H, W, 1] labels of [B, H, W, C] probas (as Keras gives them): not a sigmoid's
            labels = tf.squeeze(labels, extra)
    if probas.shape.rank == labels.shape.rank:
        probas = probas[..., None]
    elif not channels_last:
        probas = tf.experimental.numpy.moveaxis(probas, 1, -1)
    given_labels = labels.shape
    probas = tf.reshape(probas, [-1, probas.shape[-1]])
    labels = tf.reshape(labels, [-1])
    labels = _one_label_each(probas, labels, given_probas, given_labels, "probas")
    valid = _valid(labels, V.check_ignore(ignore))
    if valid is None:
        return probas, labels
    return tf.boolean_mask(probas, valid), tf.boolean_mask(labels, valid)


@_traced_as_written
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
    scores, labels = tf.convert_to_tensor(scores), tf.convert_to_tensor(labels)
    given = (scores.shape, labels.shape)
    scores, labels = tf.reshape(scores, [-1]), tf.reshape(labels, [-1])
    labels = _one_label_each(scores, labels, *given, "scores")
    valid = _valid(labels, V.check_ignore(ignore))
    if valid is None:
        return scores, labels
    return tf.boolean_mask(scores, valid), tf.boolean_mask(labels, valid)


def _one_label_each(
    flat: tf.Tensor, labels: tf.Tensor, shape: tf.TensorShape, labels_shape: tf.TensorShape, of: str
) -> tf.Tensor:
    """``labels [P]``, one per pixel of ``flat [P, ...]`` (TF's own shape error named neither): checked now where
    the sizes are known, else when the graph runs."""
    pixels, count = flat.shape[0], labels.shape[0]
    message = f"labels must hold one label per pixel of {of} {shape.as_list() if shape.rank is not None else shape}"
    if pixels is not None and count is not None:
        if pixels != count:
            raise ValueError(f"{message} ({pixels}); got {count} in shape {labels_shape.as_list()}")
        return labels
    check = tf.debugging.assert_equal(tf.shape(labels)[0], tf.shape(flat)[0], message=message)
    with tf.control_dependencies([check]):
        return tf.identity(labels)


@contextlib.contextmanager
def exportable() -> Iterator[None]:
    """Trace the losses so that a SavedModel holds them: trace (and save) the functions inside.

    On a CPU the losses hand float32 rows to the C kernel through ``tf.numpy_function``, whose body
    stays in the process that traced it: a SavedModel with such a function saves, but calling it after
    ``tf.saved_model.load`` in another process fails ("Could not find callback with key=pyfunc_..."). Inside
    this context the losses sort their rows in TF on every device instead (the sorts used under XLA
    and on a GPU): the same values to float32 rounding, ties in the same order, slower on a CPU. Only
    traces made inside are affected: a ``tf.function`` traced before (called, or its concrete function
    taken, with the same input signature) keeps its trace, so trace the functions to be saved here
    first, not around a training loop. Saved outside with unknown dims, even the process that saved it
    cannot take a gradient of the loaded function (TF's ``AssertionError`` in ``cond_v2``: the kernel or
    sort chosen by a ``tf.cond`` when the size is known only at run time). TFLite converts functions traced
    here with its builtin ops; as converters drop asserts, a bad label, weight or row split makes the loss of
    a trace made here NaN (as under XLA) instead of raising.

    Example:
        >>> class Scorer(tf.Module):
        ...     @tf.function(input_signature=[tf.TensorSpec([1, 2, 2]), tf.TensorSpec([1, 2], tf.int32)])
        ...     def loss(self, probas, labels):
        ...         return lovasz_softmax(probas, labels, order="BCHW")
        >>> import tempfile
        >>> with exportable(), tempfile.TemporaryDirectory() as path:
        ...     tf.saved_model.save(Scorer(), path)
    """
    with _tf_rows.without_callbacks():
        yield


@_traced_as_written
def lovasz_softmax_flat(probas: TensorLike, labels: TensorLike, classes: Classes = "present") -> tf.Tensor:
    """Lovász-Softmax of flat ``probas [P, C]`` (or sigmoid ``[P]``) against ``labels [P]``.

    Example:
        >>> probas = tf.constant([[0.9, 0.1], [0.4, 0.6]])  # [P=2, C=2]
        >>> round(float(lovasz_softmax_flat(probas, tf.constant([0, 1]))), 6)
        0.325
    """
    probas, labels = tf.convert_to_tensor(probas), tf.convert_to_tensor(labels)
    return lovasz_softmax(probas[None], labels[None], classes=classes, per_image=False)


@_traced_as_written
def lovasz_hinge_flat(logits: TensorLike, labels: TensorLike) -> tf.Tensor:
    """Lovász hinge of flat ``logits [P]`` against 0/1 ``labels [P]``.

    Example:
        >>> float(lovasz_hinge_flat(tf.constant([2.0, -1.0, 0.5]), tf.constant([1, 0, 1])))
        0.25
    """
    logits, labels = tf.convert_to_tensor(logits), tf.convert_to_tensor(labels)
    return lovasz_hinge(logits[None], labels[None], per_image=False)
