"""Lovász losses as Keras 3 losses, on every backend: TensorFlow, JAX and PyTorch.

The classes take ``(y_true, y_pred)``, as every Keras loss does (the functions of
:mod:`lovasz.tf`, :mod:`lovasz.jax` and :mod:`lovasz.torch` take
``(prediction, labels)``). Each call runs the native implementation of the
active backend, so it is as fast as that backend's functions and differentiable
in ``model.fit``. Channels-last by default (``data_format``), as Keras is.

With ``per_image=True`` a loss returns one value per image and Keras applies
``sample_weight`` (one weight per image, ``[B]``) and ``reduction`` to them;
otherwise the batch is one set and the loss is one number, which no
``sample_weight`` weighs (``ValueError``, as for a weight per pixel). A Keras mask on
``y_pred`` (a layer's ``compute_mask``) leaves the pixels it masks out, as ``ignore_class``
does.

Several devices: on the TensorFlow backend under a ``tf.distribute`` strategy
(``MirroredStrategy``), ``global_batch=True`` makes each replica's loss its share of the
loss of the global batch (the replicas' pixels gathered into one set), so that ``fit``
takes the single-device step; on the JAX backend ``keras.distribution.DataParallel``
computes the loss of the global (sharded) batch under ``jit`` already, with or without it.

Point clouds (``N`` points of several scenes): with ``scenes_in_labels=True``
``y_pred`` is points-first, ``[N, C]``, and ``y_true`` carries each point's scene
index as its last column, ``[N, 2]`` = (label, scene) (``[N, C + 1]`` for the
multi-label loss), since a Keras loss sees nothing but ``y_true`` and ``y_pred``.

Example:
    >>> import numpy as np
    >>> loss = LovaszSoftmaxLoss(from_logits=True, ignore_class=255)
    >>> y_true = np.array([[[0, 1], [1, 255]]])  # [B=1, H=2, W=2]
    >>> y_pred = np.zeros((1, 2, 2, 3), "float32")  # [B, H, W, C] logits
    >>> round(float(loss(y_true, y_pred)), 4)
    0.6667
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import keras
import numpy as np
from keras import ops

from lovasz import _validation as V

__all__ = [
    "LovaszSoftmaxLoss",
    "LovaszHingeLoss",
    "LovaszMultilabelLoss",
    "CrossEntropyLovaszLoss",
    "LovaszScheduleCallback",
    "LovaszSchedule",
]

DATA_FORMATS = ("channels_last", "channels_first")
_BACKENDS = {"tensorflow": "lovasz.tf", "jax": "lovasz.jax", "torch": "lovasz.torch"}

# A tensor of the active backend (tf.Tensor, jax.Array, torch.Tensor) or an array-like: Keras has no type of its own.
Tensor = Any
# A dtype name, a keras.DTypePolicy, or None for the global policy.
DType = Any


def _functions() -> tuple[str, ModuleType]:
    """The module of lovasz functions for the active Keras backend."""
    name = keras.backend.backend()
    if name not in _BACKENDS:
        raise NotImplementedError(f"lovasz.keras runs on the backends {sorted(_BACKENDS)}; Keras uses {name!r}")
    return name, importlib.import_module(_BACKENDS[name])


def _channel_kwargs(backend: str, channels_last: bool) -> dict[str, Any]:
    """How each backend's functions are told where the class axis is."""
    if backend == "tensorflow":
        return {"order": "BHWC" if channels_last else "BCHW"}
    if backend == "jax":
        return {"axis": -1 if channels_last else 1}
    return {}  # torch is channels-first: the prediction is moved instead


def _squeeze_channel(x: Tensor, axis: int, rank: int) -> Tensor:
    """Drop a size-1 channel axis from a rank-``rank`` tensor (Keras masks often come as [B, H, W, 1]); one
    unknown when traced (``tf.data``; TensorFlow only) is taken as 1, and TF's squeeze checks it when the graph
    runs (Keras' refuses an unknown dim)."""
    if len(x.shape) != rank:
        return x
    if x.shape[axis] == 1:
        return ops.squeeze(x, axis)
    if x.shape[axis] is None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.squeeze(x, axis)
    return x


def _is_one_hot_shaped(y_true: Tensor, y_pred: Tensor, axis: int) -> bool:
    """Whether ``y_true`` has the shape of a ``y_pred`` of 2 or more channels at ``axis``: one-hot targets
    (a dim unknown when traced matches any other; the class axis of both must be known)."""
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if len(pred_shape) < 2 or len(true_shape) != len(pred_shape):
        return False
    channels = pred_shape[axis]
    if channels is None or channels < 2 or true_shape[axis] != channels:
        return False
    return V.compatible(true_shape, pred_shape)


def _class_indices(y_true: Tensor, y_pred: Tensor, axis: int, ignore: int | None) -> Tensor:
    """A one-hot ``y_true`` shaped like ``y_pred`` (``C > 1`` channels at ``axis``) as class indices; any other
    ``y_true`` as it is. One-hot is the target of Keras' categorical losses, and lovasz.torch.LovaszLoss takes it
    (MONAI's form) the same way: each pixel must hold one 1 and zeros, so an all-zero row (a void pixel) raises,
    as it does there, instead of becoming class 0."""
    if _class_axis_unknown(y_true, y_pred, axis):
        return _indices_when_run(y_true, y_pred, axis, ignore)
    if not _is_one_hot_shaped(y_true, y_pred, axis):
        return y_true
    ok = _one_hot_rows(y_true, axis)
    message = (
        f"y_true shaped like y_pred {list(y_pred.shape)} must be one-hot along the class axis {axis} (one 1 and "
        "zeros per pixel; give void pixels as class indices with ignore_class; one channel's sigmoid output "
        "keeps its size-1 channel axis, [B, H, W, 1])"
    )
    known = _known(ok)
    if known is not None and not known.all():
        raise ValueError(f"{message}; {int((~known).sum())} pixels are not")
    indices = ops.argmax(y_true, axis=axis)
    return (
        indices
        if known is not None
        else _asserted(indices, ok, message, otherwise=_void_label(y_pred.shape[axis], ignore))
    )


def _one_hot_rows(y_true: Tensor, axis: int) -> Tensor:
    """Where a pixel of ``y_true`` holds one 1 and zeros along ``axis``."""
    zero_or_one = ops.logical_or(ops.equal(y_true, 0), ops.equal(y_true, 1))
    return ops.logical_and(ops.all(zero_or_one, axis=axis), ops.equal(ops.sum(y_true, axis=axis), 1))


def _class_axis_unknown(y_true: Tensor, y_pred: Tensor, axis: int) -> bool:
    """Whether ``y_true`` has the rank of a ``y_pred`` of 2 or more known channels, and an unknown dim (when
    traced: ``tf.data`` from a generator or decoded images) at the class axis: a label map ``[B, H, W, 1]`` or
    one-hot targets, which only the graph's run tells apart."""
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if len(pred_shape) < 2 or len(true_shape) != len(pred_shape) or true_shape[axis] is not None:
        return False
    channels = pred_shape[axis]
    return channels is not None and channels >= 2 and V.compatible(true_shape, pred_shape)


def _indices_when_run(y_true: Tensor, y_pred: Tensor, axis: int, ignore: int | None) -> Tensor:
    """Class indices ``[B, *spatial]`` of a ``y_true`` whose class axis is unknown until the graph runs: its
    only channel if it has one, else the class of each one-hot pixel; an assert fails on any other size."""
    channels = y_pred.shape[axis]
    size = ops.shape(y_true)[axis]
    is_map = ops.equal(size, 1)
    one_hot = ops.logical_and(ops.equal(size, channels), _one_hot_rows(y_true, axis))
    indices = ops.cast(ops.argmax(y_true, axis=axis), y_true.dtype)
    labels = ops.where(is_map, ops.take(y_true, 0, axis=axis), indices)
    message = (
        f"y_true of shape {list(y_true.shape)} for y_pred {list(y_pred.shape)} must hold class indices with a "
        f"size-1 class axis {axis}, or be one-hot along it ({channels} channels, one 1 and zeros per pixel)"
    )
    return _asserted(labels, ops.logical_or(is_map, one_hot), message, otherwise=_void_label(channels, ignore))


def _asserted(
    x: Tensor, ok: Tensor, message: str, values: Tensor | None = None, otherwise: float | None = None
) -> Tensor:
    """``x``, computed after an assert that ``ok`` holds everywhere, for values not known when the loss is built
    (known ones raise ``ValueError`` before): a ``tf.debugging`` assert in a TensorFlow graph, whose
    ``InvalidArgumentError`` gives ``message`` and the first bad one of ``values`` (without them, how many pixels fail),
    and an asynchronous one for torch on an accelerator, as lovasz.torch's. XLA (``jit_compile=True``), ``jax.jit``
    and ``torch.compile`` compile no such assert: there ``x`` holds ``otherwise`` where ``ok`` fails (an
    out-of-range label, which the functions' own checks find: a NaN loss under XLA and ``jax.jit``, an assert
    under ``torch.compile``), or is unchecked without it."""
    if _unasserted():
        return _where_not(x, ok, otherwise)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly():
            return x
        from lovasz import _tf_rows

        bad = tf.logical_not(ok)
        if values is None:
            shown = f"{message}; pixels that are not:", lambda: tf.reduce_sum(tf.cast(bad, tf.int32))
        else:
            shown = f"{message}; found:", lambda: tf.boolean_mask(values, bad)[:1]
        check = _tf_rows.assert_showing(tf.reduce_all(ok), *shown)
        with tf.control_dependencies([check]):
            return tf.identity(x)
    import torch

    torch._assert_async(ok.all(), message)
    return x


def _unasserted() -> bool:
    """Whether the graph being built compiles no assert: XLA (``jit_compile=True``), a JAX trace (known values
    raised before) and ``torch.compile``. Checks there change values instead (see :func:`_asserted`)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        from lovasz import _tf_rows

        return not tf.executing_eagerly() and _tf_rows.asserts_dropped()
    if backend == "torch":
        import torch

        return bool(torch.compiler.is_compiling())
    return True


def _where_not(x: Tensor, ok: Tensor, otherwise: float | None) -> Tensor:
    return x if otherwise is None else ops.where(ok, x, ops.cast(otherwise, x.dtype))


def _checked_targets(values: Tensor, valid: Tensor, ok: Tensor, allowed: str) -> Tensor | None:
    """Refuse a non-ignored ``y_true`` that is not ``allowed`` (where ``ok`` fails), as the Lovász term does, for
    the cross-entropy alone (which takes a label 7 of 3, or a mask value 2, without a word); see
    :func:`_refused_unless`."""
    good = ops.logical_or(ops.equal(valid, 0), ok)
    return _refused_unless(good, values, f"y_true must be {allowed} at every non-ignored pixel")


def _refused_unless(ok: Tensor, values: Tensor, message: str) -> Tensor | None:
    """Refuse ``values`` where ``ok`` fails: ``ValueError`` (naming the first bad value) where they are known; an
    assert in a TensorFlow graph and for torch on an accelerator; where no assert is compiled (XLA, ``jax.jit``,
    ``torch.compile``), whether all are good, for the caller to make the loss NaN (else None)."""
    known = _known(ok)
    if known is not None:
        if not known.all():
            found = np.asarray(_known(values))[~known].flat[0]
            raise ValueError(f"{message}; found {found}")
        return None
    if _unasserted():
        return ops.all(ok)
    _asserted(ok, ok, message, values=values)  # (its assert is a stateful op: TF's graph runs it unused)
    return None


def _void_label(channels: int, ignore: int | None) -> int:
    """A class index out of ``[0, channels)`` that is not ``ignore``: what a bad one-hot row becomes where no assert
    can be compiled, for the loss's label check to find."""
    return channels if ignore != channels else channels + 1


def _drop_binary_channel(y_true: Tensor, y_pred: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """Binary input with a size-1 channel axis: drop it from the prediction and, if there, the target."""
    rank = len(y_pred.shape)
    if rank >= 2 and y_pred.shape[axis] == 1:
        y_true, y_pred = _squeeze_channel(y_true, axis, rank), ops.squeeze(y_pred, axis)
    if len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)  # [B, *spatial, 1] masks for a [B, *spatial] prediction
    return y_true, y_pred


def _reduced(loss: Tensor, reduction: str | None) -> Tensor:
    """Keras passes an empty ``[0]`` loss (an empty batch) through unreduced: a reduced loss is 0-d, 0 there."""
    if reduction not in (None, "none") and tuple(loss.shape) == (0,):
        return ops.sum(loss)
    return loss


def _valid_mask(labels: Tensor, ignore: int | None) -> Tensor:
    """1.0 where a pixel takes part, 0.0 where it is labelled ``ignore``."""
    return ops.ones_like(labels, "float32") if ignore is None else ops.cast(ops.not_equal(labels, ignore), "float32")


# ----------------------------------------------------------------------------- Keras masks

try:
    from keras.src.backend import get_keras_mask as _keras_mask  # what keras.losses.Loss reads
except ImportError:  # Keras before 3.6 kept the mask as an attribute only

    def _keras_mask(x: Tensor) -> Tensor | None:
        return getattr(x, "_keras_mask", None)


# The label of pixels a Keras mask leaves out, where ignore_class is None: never a class, nor a label a user writes
# (a -1 still fails the range check), and exact in every dtype y_true takes (float16 and bfloat16 too).
_MASKED = -(1 << 15)


def _shallow_copy(loss: Any) -> Any:
    """A copy that shares ``loss``'s attributes (its term-weight variables too): ``copy.copy`` of a Keras
    object rebuilds it from its config, with new variables."""
    copied = object.__new__(type(loss))
    copied.__dict__.update(loss.__dict__)
    return copied


def _unmasked(x: Tensor) -> Tensor:
    """``x`` as a new tensor without its Keras mask (an alias where the backend has one): the mask is folded
    into the labels, and Keras would weigh the loss's values by it again, a mask of pixels against one value
    per image."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.identity(x)
    if backend == "torch":
        return x.view_as(x)
    import jax.numpy as jnp

    return jnp.array(x, copy=True)  # Keras keys a JAX mask by the array's id (jit: jnp.positive(x) is x)


# ----------------------------------------------------------------------------- several replicas (tf.distribute)

_MEANS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")  # Keras divides these by the replicas


def _replica_context() -> Any:
    """The ``tf.distribute`` replica context of a batch split across several replicas (TensorFlow backend);
    None elsewhere: no strategy, one replica, and JAX, whose ``DataParallel`` computes on the global array."""
    if keras.backend.backend() != "tensorflow":
        return None
    from lovasz import _tf_distributed

    return _tf_distributed.replica_context()


def _global_mean(total: Tensor, count: Tensor, context: Any) -> Tensor:
    """``total / count`` over the global batch where ``context`` is a replica context (the sums over the
    replicas, with the gradient of this replica's own ``total``); ``count`` takes no gradient."""
    if context is not None:
        from lovasz import _tf_distributed

        total, count = _tf_distributed.summed(total, context), _tf_distributed.counted(count, context)
    return ops.divide_no_nan(total, count)


def _replica_share(loss: Tensor, global_batch: bool, reduction: str | None) -> Tensor:
    """A 0-d loss as Keras should sum it over ``tf.distribute`` replicas (it sums their losses and their
    gradients, and divides only a loss of several values by the replicas).

    ``global_batch``: ``loss`` is the loss of the global batch, the same on every replica: its share
    is the value over the replicas, with the gradient of ``loss`` (this replica's slice of the single-
    device gradient). Otherwise ``loss`` is this replica's shard's: divided by the replicas, so that a
    mean reduction is the mean of the shards' losses, as for a loss of several values."""
    context = _replica_context()
    if context is None or reduction in (None, "none"):
        return loss
    from lovasz import _tf_distributed

    if global_batch:
        return _tf_distributed.share(loss, context)
    if reduction in _MEANS:
        return loss / context.num_replicas_in_sync
    return loss


def _share_of_images(loss: Tensor, y_pred: Tensor, sample_weight: Any, reduction: str | None, context: Any) -> Tensor:
    """A replica's per-image loss, reduced by Keras, as its share of the mean over the global batch's images.

    Keras divides the sum of the replica's (weighted) image losses by its divisor ``D_r``, its images ``B_r``
    (``'mean_with_sample_weight'`` with a ``sample_weight``: the sum of its weights), and by the replicas
    ``R``; ``fit`` sums the replicas' losses. Times ``R D_r / D``, ``D`` the single-device divisor (the sum of the
    ``D_r``), that sum is the single-device mean, also for shards of unequal size or weight."""
    if context is None or reduction not in _MEANS:
        return loss
    from lovasz import _tf_distributed

    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = ops.cast(ops.sum(ops.convert_to_tensor(sample_weight)), loss.dtype)
    else:
        divisor = ops.cast(ops.shape(y_pred)[0], loss.dtype)
    everywhere = _tf_distributed.counted(divisor, context)
    return loss * ops.divide_no_nan(divisor * context.num_replicas_in_sync, everywhere)


def _weights_of_images(sample_weight: Any, y_pred: Tensor, reduction: str | None, context: Any) -> Any:
    """A 0-d ``sample_weight`` of a replica's per-image loss as one weight per image, ``[B_r]``; any other as it is.

    Keras weighs every image by a 0-d weight, but squeezes the losses of a one-image shard to 0-d and then
    reduces them not at all (no division by the replicas); as ``[B_r]`` the shard is reduced as any other, to the
    same mean. ``'mean_with_sample_weight'`` divides by that one weight, not by the images' weights: no replica's
    share of it is exact, and it raises."""
    if context is None or reduction not in _MEANS or sample_weight is None:
        return sample_weight
    weights = ops.convert_to_tensor(sample_weight)  # a tf.Tensor: replica contexts are TensorFlow's
    if weights.shape.rank != 0:
        return sample_weight
    if reduction == "mean_with_sample_weight":
        raise ValueError(
            "reduction='mean_with_sample_weight' divides by the sum of sample_weight, and a 0-d sample_weight "
            "(one for every image) makes no exact share of the global batch's loss on a tf.distribute replica "
            "(global_batch=True); pass one weight per image, shape [B], or reduction='sum_over_batch_size'"
        )
    return ops.broadcast_to(weights, ops.shape(y_pred)[:1])


_NO_PIXEL_WEIGHTS = "weigh classes with class_weights, or leave pixels out with ignore_class (fit's class_weight= "
_NO_PIXEL_WEIGHTS += "makes a sample_weight per pixel)"


def _check_weights_per_image(one_value: bool, global_batch: bool, sample_weight: Any, images: int | None) -> None:
    """A ``sample_weight`` weighs the images of a loss per image: one weight per image, ``[B]`` or ``[B, 1]``. Keras
    would broadcast any other against the images' losses (a weight per pixel gives ``[B, H, W, B]``), or scale
    a batch's one loss by the weights' mean."""
    if sample_weight is None:
        return
    if one_value:
        mode = "a loss of the global batch as one set (global_batch=True " if global_batch else "a batch-mode loss ("
        raise ValueError(
            f"sample_weight does not apply to {mode}without per_image): the batch has one loss; pass "
            f"per_image=True for a weight per image, {_NO_PIXEL_WEIGHTS}"
        )
    shape = getattr(sample_weight, "shape", None)
    shape = np.shape(sample_weight) if shape is None else shape
    dims = None if getattr(shape, "rank", 0) is None else tuple(shape)  # (a TensorShape of unknown rank)
    if dims is not None and not (len(dims) <= 1 or (len(dims) == 2 and dims[1] == 1)):
        raise ValueError(
            f"sample_weight must hold one weight per image, shape [B] (or [B, 1]): the loss has one value per "
            f"image; got shape {list(dims)}. Weights per pixel do not apply: {_NO_PIXEL_WEIGHTS}"
        )
    if dims and None not in (dims[0], images) and dims[0] != images:  # (Keras' broadcast error named none of them)
        raise ValueError(f"sample_weight must hold one weight per image ({images} in y_pred); got shape {list(dims)}")


def _checked_weight_values(sample_weight: Any) -> Any:
    """``sample_weight``, finite and >= 0 as class weights are (a NaN gave a NaN loss, a negative weight a loss
    that training pushes up, without a word): ``ValueError`` where its values are known (arrays, eager tensors,
    torch on the CPU); in a graph (``fit``'s compiled step) an assert when it runs, or, where none is compiled
    (XLA, ``jax.jit``, ``torch.compile``), NaN weights where one is bad, so the loss is NaN."""
    if sample_weight is None:
        return None
    known = _known(sample_weight) if keras.ops.is_tensor(sample_weight) else np.asarray(sample_weight)
    message = "sample_weight must be finite numbers >= 0 (one weight per image)"
    if known is None:
        weights = ops.cast(sample_weight, "float32") if "int" in str(sample_weight.dtype) else sample_weight
        if keras.backend.standardize_dtype(weights.dtype) == "bool":
            return sample_weight
        flat = ops.reshape(weights, [-1])  # (a rank unknown when traced: TF's boolean_mask needs one)
        good = _refused_unless(ops.logical_and(ops.isfinite(flat), ops.greater_equal(flat, 0)), flat, message)
        return weights if good is None else ops.where(good, weights, ops.cast(float("nan"), weights.dtype))
    if known.dtype.kind not in "biuf":
        return sample_weight
    values = known.astype(np.float64).reshape(-1)
    good = np.isfinite(values) & (values >= 0)
    if not good.all():
        raise ValueError(f"{message}; got {values[~good][:4].tolist()}")
    return sample_weight


def _weights_of_known_rank(sample_weight: Any, y_pred: Tensor) -> Any:
    """A TF ``sample_weight`` of unknown rank (a ``tf.function`` traced again for a weight of another shape loosens
    it), where Keras' own squeeze fails inside ("Cannot take the length of shape with unknown rank"): one weight
    per image ``[B]``, checked when the graph runs; any other as it is."""
    if getattr(getattr(sample_weight, "shape", None), "rank", 0) is not None:
        return sample_weight
    import tensorflow as tf

    images, size = tf.shape(y_pred)[0], tf.size(sample_weight)
    one_per_image = tf.logical_or(tf.equal(size, images), tf.equal(size, 1))
    message = f"sample_weight must hold one weight per image, shape [B] (or [B, 1]); {_NO_PIXEL_WEIGHTS}"
    with tf.control_dependencies([tf.debugging.Assert(one_per_image, [message])]):
        return tf.broadcast_to(tf.reshape(sample_weight, [-1]), [images])


# ----------------------------------------------------------------------------- points of scenes


def _known(x: Tensor) -> np.ndarray | None:
    """The values of ``x`` where they are known without a trace or a device sync (eager TensorFlow,
    concrete JAX arrays, torch on the CPU); None elsewhere."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return x.numpy() if tf.executing_eagerly() else None
    if backend == "jax":
        import jax

        return None if isinstance(x, jax.core.Tracer) else np.asarray(x)
    import torch

    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return (x.float() if x.dtype == torch.bfloat16 else x).detach().numpy()  # (NumPy has no bfloat16)


def _checked_scenes(scene: Tensor, num_scenes: int | None) -> tuple[Tensor, Tensor | None]:
    """The scene column of ``y_true``, checked to hold whole numbers in ``[0, num_scenes)``: where the values are
    known at once (``ValueError``), else by an assert (see :func:`_asserted`), so that a bad index is named as
    such, not by the row splits that TensorFlow's points of scenes are made of. Where no assert is compiled
    (XLA, ``jax.jit``, ``torch.compile``) a point of no scene takes no part: its index becomes -1 (no scene's;
    ``torch.compile``'s own check of lovasz.torch names it) and the points in a scene come back as a mask
    (None elsewhere)."""
    top = "" if num_scenes is None else f", below num_scenes={num_scenes}"
    message = f"the last column of y_true (scenes_in_labels=True) must hold scene indices, whole numbers >= 0{top}"
    values = _known(scene)
    if values is not None:
        limit = np.inf if num_scenes is None else num_scenes
        bad = values[(values != np.round(values)) | (values < 0) | (values >= limit)]
        if bad.size:
            raise ValueError(f"{message}; found {bad[0]:g}")
        return scene, None
    ok = ops.logical_and(ops.equal(scene, ops.round(scene)), ops.greater_equal(scene, 0))
    if num_scenes is not None:
        ok = ops.logical_and(ok, ops.less(scene, num_scenes))
    if _unasserted():  # (a fraction would join the scene it truncates to, a -1 scene 0's count in JAX's bincount)
        return _where_not(scene, ok, -1), ok
    return _asserted(scene, ok, message, values=scene), None


def _same_points(labels: Tensor, y_pred: Tensor, function: str, ignore: int | None) -> Tensor:
    """The labels of ``y_true``, checked to have a row per point of ``y_pred``: TensorFlow's points of scenes gather
    ``y_pred`` in the labels' order, which read the first points of a longer ``y_pred`` only, without a word. Sizes
    known when traced raise ``ValueError``; others an assert, or (XLA) labels out of range: a NaN loss."""
    points, rows = y_pred.shape[0], labels.shape[0]
    message = (
        "with scenes_in_labels=True, y_true must have a row per point of y_pred; "
        f"got y_true of {rows} rows for y_pred {list(y_pred.shape)}"
    )
    if points is not None and rows is not None:
        if points != rows:
            raise ValueError(message)
        return labels
    ok = ops.equal(ops.shape(labels)[0], ops.shape(y_pred)[0])
    softmax = function == "lovasz_softmax" and len(y_pred.shape) == 2 and y_pred.shape[-1] not in (None, 1)
    classes = y_pred.shape[-1] if softmax else 2  # (one channel's, the hinge's and multi-label's are 0 or 1)
    return _asserted(labels, ok, message, otherwise=_void_label(classes, ignore))


def _scene_losses(
    function: str, y_pred: Tensor, labels: Tensor, scene: Tensor, num_scenes: int | None, **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """Each scene's loss ``[S]`` by the backend's function, and each scene's point count ``[S]``.

    The scenes reach each backend in its own form: ``batch=`` (torch), ``segment_ids=`` (JAX), row
    splits (TensorFlow, whose runs need the points grouped by scene: a stable sort groups them)."""
    backend, module = _functions()
    loss = getattr(module, function)
    kwargs.update(per_image=True, reduction="none")
    if backend == "tensorflow":
        import tensorflow as tf

        ids = tf.cast(scene, tf.int32)
        count = tf.reduce_max(tf.concat([ids, [-1]], 0)) + 1 if num_scenes is None else num_scenes
        # Where no assert runs (XLA), a point of no scene (an index from num_scenes on, negative or not whole)
        # takes no part: it goes to one more scene, last, whose loss is dropped. (A negative one sorted first
        # and took scene 0's place; the splits did not reach N.)
        inside = (ids >= 0) & (ids < count) & tf.equal(tf.cast(ids, scene.dtype), scene)
        key = tf.where(inside, ids, count)
        counts = tf.math.bincount(key, minlength=count + 1, maxlength=count + 1, dtype=tf.int64)
        order = tf.argsort(key, stable=True)
        splits = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], 0)
        losses = loss(tf.gather(y_pred, order), tf.gather(labels, order), row_splits=splits, **kwargs)
        return losses[:count], counts[:count]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        scene = scene.astype(jnp.int32)
        if num_scenes is None:
            if isinstance(scene, jax.core.Tracer):
                raise TypeError(
                    "under jax.jit (model.fit on the JAX backend) the number of scenes must be static: pass "
                    "num_scenes= to the loss (the most scenes a batch holds)"
                )
            num_scenes = int(scene.max()) + 1 if scene.size else 0
        losses = loss(y_pred, labels, segment_ids=scene, num_segments=num_scenes, **kwargs)
        # (bincount counts a -1, a point of no scene under jit, as scene 0's: it is counted past the end)
        return losses, jnp.bincount(jnp.where(scene < 0, num_scenes, scene), length=num_scenes)
    import torch

    scene = scene.to(torch.int64)
    if num_scenes is None:  # one host sync, as lovasz.torch's own: pass num_scenes to avoid it
        num_scenes = int(scene.max()) + 1 if scene.numel() else 0
    losses = loss(y_pred, labels, batch=scene, num_scenes=num_scenes, **kwargs)  # checks the indices first
    return losses, torch.bincount(scene, minlength=num_scenes)


def _check_layout(function: str, y_pred: Tensor, labels: Tensor, axis: int) -> None:
    """``labels`` against ``y_pred`` (its class axis at ``axis``) in Keras' names and layout: lovasz.torch, which
    the torch backend hands channels-first tensors, named the moved shapes in its messages."""
    pred_shape, label_shape = tuple(y_pred.shape), tuple(labels.shape)
    if function == "lovasz_softmax":
        V.softmax_layout(pred_shape, label_shape, axis, ("y_pred", "y_true"))
    elif not V.compatible(label_shape, pred_shape):
        raise ValueError(
            f"y_true must have the shape of y_pred {list(pred_shape)} (0/1 per channel); got {list(label_shape)}"
        )


def _reduce_scenes(losses: Tensor, counts: Tensor, reduction: str | None) -> Tensor:
    """Keras' ``reduction`` over the scenes: ``[S]`` unreduced, their sum, or the mean over the scenes
    that have points (a static ``num_scenes`` may exceed a batch's scenes: the absent ones don't count)."""
    if reduction in (None, "none"):
        return losses
    if reduction == "sum":
        return ops.sum(losses)
    present = ops.cast(ops.greater(counts, 0), losses.dtype)
    return ops.divide_no_nan(ops.sum(losses * present), ops.sum(present))


# ----------------------------------------------------------------------------- the Lovász losses


def _dtype_config(dtype: DType, policy: Any) -> Any:
    """``dtype`` as a config keeps it (Keras's own losses leave it out: a float64 loss came back float32):
    None where none was given, so the loss follows ``floatx`` where it is loaded."""
    return dtype if dtype is None or isinstance(dtype, str) else keras.dtype_policies.serialize(policy)


class _LovaszLoss(keras.losses.Loss):
    """What the three losses share: options, the data format, scenes, the backend dispatch and the config.

    A subclass names its ``_function`` and gives its keyword options in ``_options``; ``_dense`` takes
    batches of images, ``_points`` points of scenes."""

    _function = ""
    _mask: Tensor | None = None  # a Keras mask of y_pred, for one call (see _with_mask)

    def __init__(
        self,
        *,
        per_image: bool,
        ignore_class: int | None,
        data_format: str | None,
        scenes_in_labels: bool,
        num_scenes: int | None,
        name: str,
        reduction: str,
        dtype: DType,
        global_batch: bool = False,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._dtype_config = _dtype_config(dtype, self._dtype_policy)
        data_format = data_format or keras.config.image_data_format()
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}; got {data_format!r}")
        scenes_in_labels = V.check_flag(scenes_in_labels, "scenes_in_labels")
        if num_scenes is not None:
            num_scenes = V.check_count(num_scenes, "num_scenes")
            if not scenes_in_labels:
                raise ValueError("num_scenes goes with scenes_in_labels=True (the scene of each point in y_true)")
        self.per_image = V.check_flag(per_image, "per_image")
        self.ignore_class = V.check_ignore(ignore_class, "ignore_class")
        self.data_format = data_format
        self.scenes_in_labels = scenes_in_labels
        self.num_scenes = num_scenes
        self.global_batch = V.check_flag(global_batch, "global_batch")

    @property
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _one_value(self) -> bool:
        """Whether ``call`` gives one value, which Keras takes as it is (no mean, no division by replicas)."""
        return not self.per_image or (self.scenes_in_labels and self.reduction not in (None, "none"))

    def _replicas(self) -> Any:
        """The replica context whose replicas' batches form the loss (``global_batch``); else None."""
        return _replica_context() if self.global_batch else None

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return _loss_call(self, y_true, y_pred, sample_weight)

    def _with_mask(self, mask: Tensor) -> _LovaszLoss:
        """This loss for one call on a ``y_pred`` with the Keras mask ``mask``: a copy that leaves the
        pixels (points) the mask leaves out, labelled ``ignore_class`` (without one, ``_MASKED``)."""
        masked = _shallow_copy(self)
        masked._mask = mask
        masked.ignore_class = _MASKED if self.ignore_class is None else self.ignore_class
        return masked

    def _masked(self, labels: Tensor, pixel_rank: int, axis: int, channels: bool = False) -> Tensor:
        """``labels`` with the pixels that the Keras mask of ``y_pred`` leaves out labelled ``ignore_class``.
        ``labels`` have ``pixel_rank`` dims of pixels (points) ``[B, *spatial]`` (``[N]``), and a channel axis
        at ``axis`` if ``channels``; the mask holds ``[B, *spatial]`` or its leading dims (``[B]``: whole
        images), with or without ``y_pred``'s size-1 channel axis at ``axis``."""
        mask = self._mask
        if mask is None:
            return labels
        mask = ops.convert_to_tensor(mask)
        shape = list(labels.shape)
        pixels = [n for i, n in enumerate(shape) if not channels or i != axis % len(shape)]
        if len(mask.shape) == pixel_rank + 1 and mask.shape[axis] == 1:
            mask = ops.squeeze(mask, axis)
        rank = len(mask.shape)
        if not 1 <= rank <= pixel_rank or not V.compatible(tuple(mask.shape), tuple(pixels[:rank])):
            raise ValueError(
                f"the Keras mask of y_pred must mark pixels, shape {pixels} (or its leading dims, or with "
                f"y_pred's size-1 channel axis); got shape {list(mask.shape)}"
            )
        mask = ops.reshape(ops.cast(mask, "bool"), list(ops.shape(mask)) + [1] * (pixel_rank - rank))
        if channels:
            mask = ops.expand_dims(mask, axis)
        return ops.where(mask, labels, ops.cast(self.ignore_class, labels.dtype))

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        if not self.scenes_in_labels:
            return self._dense(y_true, y_pred)
        labels, scene, in_scene = self._split_scenes(y_true, y_pred)
        return self._without(in_scene)._points(labels, y_pred, scene)

    def _options(self, y_pred: Tensor, axis: int) -> dict[str, Any]:
        """The function's keyword options for ``y_pred`` with its class axis at ``axis``."""
        raise NotImplementedError

    def _dense(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        raise NotImplementedError

    def _split_scenes(self, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``y_true [N, 2]`` (``[N, C + 1]`` multi-label) as the labels and the scene of each point, and where no
        assert is compiled, the points that are in a scene (see :func:`_checked_scenes`; else None)."""
        multilabel = self._function == "lovasz_multilabel"
        shape, pred_shape = list(y_true.shape), list(y_pred.shape)
        width = (None if pred_shape[-1] is None else pred_shape[-1] + 1) if multilabel else 2
        if len(shape) != 2 or len(pred_shape) not in (1, 2) or None not in (shape[-1], width) and shape[-1] != width:
            what = "[N, C + 1]: each point's C targets, then its scene" if multilabel else "[N, 2]: (label, scene)"
            raise ValueError(
                f"with scenes_in_labels=True, y_pred must be points-first ([N, C]) and y_true {what}; "
                f"got y_true {shape} for y_pred {pred_shape}"
            )
        labels = _same_points(y_true[:, :-1] if multilabel else y_true[:, 0], y_pred, self._function, self.ignore_class)
        scene, in_scene = _checked_scenes(y_true[:, -1], self.num_scenes)
        return labels, scene, in_scene

    def _without(self, points: Tensor | None) -> _LovaszLoss:
        """This loss, or a copy that leaves out the points where ``points`` (a mask) is False, as a Keras mask
        does (and with it)."""
        return self if points is None else self._with_mask(self._mask_and(points))

    def _mask_and(self, points: Tensor) -> Tensor:
        """The points ``[N]`` that both ``points`` and this loss's Keras mask (if any) keep."""
        if self._mask is None:
            return points
        mask = ops.cast(self._mask, "bool")  # [N], or [N, 1] for y_pred's size-1 channel axis
        return ops.logical_and(ops.reshape(mask, [-1]) if len(mask.shape) == 2 else mask, points)

    def _points(self, labels: Tensor, y_pred: Tensor, scene: Tensor) -> Tensor:
        """The loss of points ``y_pred [N, C]`` (``[N]`` / ``[N, 1]`` for the hinge) of the scenes ``scene [N]``."""
        channels = self._function != "lovasz_hinge"
        if not channels:
            V.hinge_points(y_pred.shape, "with scenes_in_labels=True", "y_pred")
        if not channels and len(y_pred.shape) == 2 and y_pred.shape[-1] == 1:
            y_pred = ops.squeeze(y_pred, -1)
        labels = self._masked(labels, 1, -1, channels=self._function == "lovasz_multilabel")
        options = self._options(y_pred, -1)
        if not self.per_image:  # all points one set: one image of N pixels, channels-last
            batch = ops.expand_dims(y_pred, 0), ops.expand_dims(labels, 0)
            return self._run(self._function, *batch, channels=channels, channels_last=True, **options)
        context = self._replicas()
        if context is not None:  # fit cuts the rows over the replicas, scenes too: each scene whole, from all
            from lovasz import _tf_distributed

            y_pred, (labels, scene) = _tf_distributed.gather_points(y_pred, [labels, scene], [0, -1], context)
        losses, counts = _scene_losses(
            self._function, y_pred, labels, scene, self.num_scenes, ignore=self.ignore_class, **options
        )
        return _reduce_scenes(losses, counts, self.reduction)

    def _run(
        self,
        function: str,
        y_pred: Tensor,
        labels: Tensor,
        channels: bool = True,
        channels_last: bool | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Call ``function`` of the backend's module; ``channels=False`` for inputs without a class axis."""
        backend, module = _functions()
        if channels_last is None:
            channels_last = self.data_format == "channels_last"
        if channels:  # the shapes as the user gave them, before a backend moves the class axis
            _check_layout(function, y_pred, labels, -1 if channels_last else 1)
        if not channels:
            pass
        elif backend == "torch" and channels_last and y_pred.ndim >= 2:  # (rank 1: lovasz.torch names the shape)
            y_pred = y_pred.movedim(-1, 1)
            labels = labels.movedim(-1, 1) if function == "lovasz_multilabel" else labels
        else:
            kwargs.update(_channel_kwargs(backend, channels_last))
        if backend == "tensorflow" and self.global_batch:
            kwargs["global_batch"] = True  # JAX computes on the global array; torch's Keras runs one process
        return getattr(module, function)(
            y_pred,
            labels,
            per_image=self.per_image,
            ignore=self.ignore_class,
            reduction="none" if self.per_image else "mean",
            **kwargs,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dtype": self._dtype_config,
            "per_image": self.per_image,
            "ignore_class": self.ignore_class,
            "data_format": self.data_format,
            "scenes_in_labels": self.scenes_in_labels,
            "num_scenes": self.num_scenes,
            "global_batch": self.global_batch,
        }


def _check_no_point_weights(scenes_in_labels: bool, sample_weight: Tensor | None) -> None:
    if scenes_in_labels and sample_weight is not None:
        raise ValueError(
            "sample_weight does not apply with scenes_in_labels=True: the samples are points, the loss is one "
            "per scene (or one for all points); weigh classes with class_weights, or leave points out with "
            "ignore_class (fit's class_weight= becomes a sample_weight too)"
        )


def _loss_call(
    loss: _LovaszLoss | CrossEntropyLovaszLoss, y_true: Tensor, y_pred: Tensor, sample_weight: Any
) -> Tensor:
    """``loss(y_true, y_pred, sample_weight)`` as Keras reduces it, ``sample_weight`` checked first; a Keras mask
    of ``y_pred`` folded into the labels; under ``tf.distribute`` replicas, each replica's share of the loss."""
    # nested lists are arrays here (Keras' cast maps over them as a structure: a list of scalars)
    y_true = np.asarray(y_true) if isinstance(y_true, (list, tuple)) else y_true
    y_pred = np.asarray(y_pred) if isinstance(y_pred, (list, tuple)) else y_pred
    V.check_known_rank(y_true, "y_true")
    V.check_known_rank(y_pred, "y_pred")
    mask = _keras_mask(y_pred)
    if mask is not None:
        loss, y_pred = loss._with_mask(mask), _unmasked(y_pred)
    lovasz = loss if isinstance(loss, _LovaszLoss) else loss.lovasz  # whose options shape the reduction
    _check_labels_exact(loss.dtype, lovasz, y_true, y_pred)
    reduction = loss.reduction

    def keras_call(weights: Any) -> Tensor:
        return keras.losses.Loss.__call__(loss, y_true, y_pred, weights)

    _check_no_point_weights(lovasz.scenes_in_labels, sample_weight)
    _check_weights_per_image(lovasz._one_value(), lovasz.global_batch, sample_weight, y_pred.shape[0])
    sample_weight = _checked_weight_values(sample_weight)
    if lovasz._one_value():
        return _replica_share(_reduced(keras_call(sample_weight), reduction), lovasz.global_batch, reduction)
    context = lovasz._replicas()
    sample_weight = _weights_of_images(_weights_of_known_rank(sample_weight, y_pred), y_pred, reduction, context)
    return _share_of_images(_reduced(keras_call(sample_weight), reduction), y_pred, sample_weight, reduction, context)


# Keras casts y_true to the loss's dtype before call(): whole numbers above these round to others there
_EXACT_UP_TO = {"float16": 2048, "bfloat16": 256}


def _check_labels_exact(dtype: str, lovasz: _LovaszLoss, y_true: Any, y_pred: Tensor) -> None:
    """Refuse a half-precision loss whose labels (classes, ``ignore_class``, scene indices) its dtype cannot
    hold: ``dtype='bfloat16'`` read class 257 as 256, without a word. Scene indices without ``num_scenes``
    are checked where their values are known before Keras' cast."""
    limit = _EXACT_UP_TO.get(dtype)
    if limit is None:
        return
    largest = {"ignore_class": abs(lovasz.ignore_class or 0), "the scene indices": (lovasz.num_scenes or 1) - 1}
    if lovasz.scenes_in_labels and lovasz.num_scenes is None:
        known = y_true if isinstance(y_true, np.ndarray) else _known(y_true)  # (lists: arrays by now)
        if known is not None and known.ndim == 2 and known.size:
            largest["the scene indices"] = int(np.abs(known[:, -1]).max())
    if isinstance(lovasz, LovaszSoftmaxLoss):
        channels = y_pred.shape[-1 if lovasz.scenes_in_labels else lovasz._channel_axis]
        largest["the class indices"] = (channels or 1) - 1
    for what, value in largest.items():
        if value > limit:
            raise ValueError(
                f"a loss of dtype={dtype!r} cannot hold {what} (up to {value}): Keras casts y_true to the loss's "
                f"dtype, whose whole numbers are exact up to {limit} only; use dtype='float32'"
            )


def _classes_config(classes: str | Sequence[int]) -> str | list[int]:
    classes = V.check_classes(classes, None)  # the form only; the range is checked against the input
    return classes if isinstance(classes, str) else list(classes)


def _weights_config(class_weights: Sequence[float] | None) -> list[float] | None:
    if class_weights is None:
        return None
    V.check_weight_values(class_weights, "class_weights")
    return [float(w) for w in class_weights]


class _ClassAveragedLoss(_LovaszLoss):
    """A Lovász loss averaged over class channels: adds ``from_logits``, ``classes``, ``class_weights``
    and ``include_background``."""

    _one_channel_classes = 1  # the classes of a y_pred of one channel

    def __init__(
        self,
        *,
        from_logits: bool,
        classes: str | Sequence[int],
        class_weights: Sequence[float] | None,
        include_background: bool,
        **options: Any,
    ):
        super().__init__(**options)
        self.from_logits = V.check_flag(from_logits, "from_logits")
        self.classes = _classes_config(classes)
        self.class_weights = _weights_config(class_weights)
        self.include_background = V.check_flag(include_background, "include_background")

    def _check_class_weights(self, y_pred: Tensor, axis: int) -> int | None:
        """``class_weights`` hold one weight per class of ``y_pred`` (checked here to name class_weights; the
        functions name their ``weights``); returns the channels, where known."""
        shape = list(y_pred.shape)
        channels = shape[axis] if len(shape) >= 2 else None
        if self.class_weights is not None and channels is not None:
            classes = self._one_channel_classes if channels == 1 else channels
            if len(self.class_weights) != classes:
                raise ValueError(
                    f"class_weights must have one weight per class, {classes} for y_pred {shape}; "
                    f"got {len(self.class_weights)}"
                )
        return channels

    def _class_weights(self, y_pred: Tensor, axis: int) -> list[float] | None:
        """``class_weights``, with channel 0's made 0 where ``include_background`` is False (MONAI's
        convention): a weight of 0 takes a class out of the average, present or not."""
        channels = self._check_class_weights(y_pred, axis)
        if self.include_background:
            return self.class_weights
        if channels is None or channels < 2:
            raise ValueError(
                "include_background=False leaves channel 0 out of the class average: y_pred needs a class axis "
                f"of 2 or more channels (known when traced); got shape {list(y_pred.shape)}"
            )
        return [0.0] + (self.class_weights[1:] if self.class_weights is not None else [1.0] * (channels - 1))

    def _options(self, y_pred: Tensor, axis: int) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "from_logits": self.from_logits,
            "weights": self._class_weights(y_pred, axis),
        }

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "classes": self.classes,
            "class_weights": self.class_weights,
            "include_background": self.include_background,
        }


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszSoftmaxLoss(_ClassAveragedLoss):
    """Lovász-Softmax loss for multi-class segmentation; see :func:`lovasz.torch.lovasz_softmax`.

    Args:
        from_logits: ``y_pred`` are logits (a softmax is taken inside); otherwise probabilities.
        per_image: the loss of each image (one value per image, weighed by ``sample_weight [B]``);
            otherwise the batch is one set of pixels, which no ``sample_weight`` weighs. With scenes:
            the loss of each scene.
        classes: ``'present'``, ``'all'`` or a list of class indices to average over.
        ignore_class: label value of pixels that take no part (Keras' name for ``ignore``).
        class_weights: one weight per class for the class average.
        data_format: ``'channels_last'`` (``y_pred [B, *spatial, C]``, the default of
            ``keras.config.image_data_format()``) or ``'channels_first'``.
        include_background: False leaves channel 0 out of the class average (MONAI's convention).
        scenes_in_labels: point clouds: ``y_pred`` is points-first ``[N, C]`` and ``y_true`` is
            ``[N, 2]``, each point's label and its scene index (whole numbers from 0, in any
            order). With ``per_image`` the loss is each scene's, averaged over the scenes that
            have points (``reduction=None``: ``[num_scenes]``); without, all points are one set.
            ``sample_weight`` does not apply. A bad scene index raises ``ValueError`` eagerly and
            fails an assert naming it in ``tf.function``; XLA and ``jax.jit`` compile no assert
            (a point of no scene then takes no part, in either term).
        num_scenes: with ``scenes_in_labels``, the number of scene indices (the most scenes a
            batch holds); required on the JAX backend under ``jit``, else read from the labels.
        global_batch: on the TensorFlow backend under a ``tf.distribute`` strategy, the loss of
            the global batch: in batch mode every replica gathers the replicas' pixels into one
            set, and the replicas' losses and gradients summed (as ``fit`` sums them) are the
            single-device loss and gradient; per image, the mean over every replica's images,
            also for shards of unequal size (``'mean_with_sample_weight'``: divided by the sum of
            every replica's weights). In batch mode ``sample_weight`` does not apply.
            On the JAX backend (``keras.distribution.DataParallel``: the loss of the global
            array already) and the torch backend (one process) it changes nothing.

    ``y_true`` is ``[B, *spatial]`` integer class indices (or with a size-1 channel axis), or
    one-hot, shaped like ``y_pred`` (``C > 1``; the target of Keras' categorical losses, taken
    as :class:`lovasz.torch.LovaszLoss` takes MONAI's): each pixel's one 1 marks its class, and
    a row that is not one 1 and zeros (an all-zero void row) raises ``ValueError`` eagerly and
    fails an assert in ``tf.function`` (a NaN loss under XLA and ``jax.jit``): give void pixels
    as class indices with ``ignore_class``. ``y_pred`` holds ``C`` channels, or one channel of
    sigmoid output (read as ``[1 - p, p]``; its target is never one-hot). The loss is 0-d, or
    one value per image with ``per_image`` before Keras' ``reduction``.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([[[0, 1], [1, 1]], [[2, 2], [0, 2]]])  # [B=2, H=2, W=2]
        >>> y_pred = np.zeros((2, 2, 2, 3), "float32")  # [B, H, W, C=3] logits
        >>> loss = LovaszSoftmaxLoss(from_logits=True, per_image=True, reduction=None)
        >>> [round(float(v), 4) for v in loss(y_true, y_pred)]  # one loss per image
        [0.6667, 0.6667]

        Points of two scenes, ``y_true`` = (label, scene):

        >>> y_true = np.array([[0, 0], [1, 0], [1, 1]])  # [N=3, 2]
        >>> y_pred = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], "float32")  # [N, C=2]
        >>> loss = LovaszSoftmaxLoss(per_image=True, scenes_in_labels=True, reduction=None)
        >>> [round(float(v), 4) for v in loss(y_true, y_pred)]  # one loss per scene
        [0.325, 0.2]
    """

    _function = "lovasz_softmax"

    _one_channel_classes = 2  # one sigmoid channel: background and foreground

    def __init__(
        self,
        from_logits: bool = False,
        per_image: bool = False,
        classes: str | Sequence[int] = "present",
        ignore_class: int | None = None,
        class_weights: Sequence[float] | None = None,
        data_format: str | None = None,
        name: str = "lovasz_softmax",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
        include_background: bool = True,
        scenes_in_labels: bool = False,
        num_scenes: int | None = None,
        global_batch: bool = False,
    ):
        super().__init__(
            from_logits=from_logits,
            classes=classes,
            class_weights=class_weights,
            include_background=include_background,
            per_image=per_image,
            ignore_class=ignore_class,
            data_format=data_format,
            scenes_in_labels=scenes_in_labels,
            num_scenes=num_scenes,
            name=name,
            reduction=reduction,
            dtype=dtype,
            global_batch=global_batch,
        )

    def _labels(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """``y_true`` of images as class indices ``[B, *spatial]``: one-hot or with a size-1 channel axis too."""
        axis = self._channel_axis
        return _squeeze_channel(_class_indices(y_true, y_pred, axis, self.ignore_class), axis, len(y_pred.shape))

    def _dense(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        labels = self._labels(y_true, y_pred)  # float labels are checked to be whole there
        labels = self._masked(labels, len(y_pred.shape) - 1, self._channel_axis)
        return self._run("lovasz_softmax", y_pred, labels, **self._options(y_pred, self._channel_axis))


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszHingeLoss(_LovaszLoss):
    """Lovász hinge loss for binary segmentation; see :func:`lovasz.torch.lovasz_hinge`.

    ``y_pred`` are raw scores (logits: no sigmoid), ``[B, *spatial]`` or with a size-1
    channel axis; ``y_true`` 0/1 masks of the same shape (or without the channel axis).

    Args:
        per_image: the loss of each image (the default, as in the original); otherwise the
            batch is one set of pixels.
        ignore_class: label value of pixels that take no part.
        data_format: where a size-1 channel axis of ``y_pred`` is, ``'channels_last'`` or
            ``'channels_first'`` (default: ``keras.config.image_data_format()``).
        margin: ``'relu'`` (the paper's ``max(0, m)`` of the margins ``m = 1 - s x``) or
            ``'elu'``: ``elu(m) + 1``, smooth and positive everywhere.
        symmetric: the mean with the loss of ``-y_pred`` against ``1 - y_true``, which scores
            the background too.
        scenes_in_labels, num_scenes: point clouds, as in :class:`LovaszSoftmaxLoss`:
            ``y_pred [N]`` (or ``[N, 1]``) scores and ``y_true [N, 2]``, each point's mask value
            and scene.
        global_batch: the loss of the global batch across ``tf.distribute`` replicas, as in
            :class:`LovaszSoftmaxLoss`.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([[[1, 0], [0, 1]]])  # [B=1, H=2, W=2] masks
        >>> y_pred = np.array([[[2.0, -1.0], [0.5, 1.0]]], "float32")  # [B, H, W] logits
        >>> round(float(LovaszHingeLoss()(y_true, y_pred)), 4)
        0.5
        >>> y_true, y_pred = y_true[..., None], y_pred[..., None]  # [B, H, W, 1]
        >>> round(float(LovaszHingeLoss()(y_true, y_pred)), 4)
        0.5
    """

    _function = "lovasz_hinge"

    def __init__(
        self,
        per_image: bool = True,
        ignore_class: int | None = None,
        data_format: str | None = None,
        name: str = "lovasz_hinge",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
        margin: str = "relu",
        symmetric: bool = False,
        scenes_in_labels: bool = False,
        num_scenes: int | None = None,
        global_batch: bool = False,
    ):
        super().__init__(
            per_image=per_image,
            ignore_class=ignore_class,
            data_format=data_format,
            scenes_in_labels=scenes_in_labels,
            num_scenes=num_scenes,
            name=name,
            reduction=reduction,
            dtype=dtype,
            global_batch=global_batch,
        )
        self.margin, self.symmetric = V.check_hinge_variant(margin, symmetric)

    def _options(self, y_pred: Tensor, axis: int) -> dict[str, Any]:
        return {"margin": self.margin, "symmetric": self.symmetric}

    def _dense(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        given = list(y_true.shape), list(y_pred.shape)
        y_true, y_pred = _drop_binary_channel(y_true, y_pred, self._channel_axis)
        try:
            V.hinge_layout(tuple(y_pred.shape), tuple(y_true.shape))
        except ValueError:  # lovasz.*.lovasz_hinge's message names its arguments and the shapes it was handed
            channel = "last" if self.data_format == "channels_last" else "1"
            raise ValueError(
                f"y_true must have the shape of y_pred [B, *spatial], or that shape less y_pred's size-1 channel "
                f"axis ({channel}); got y_true {given[0]} for y_pred {given[1]}"
            ) from None
        y_true = self._masked(y_true, len(y_pred.shape), self._channel_axis)
        return self._run("lovasz_hinge", y_pred, y_true, channels=False, **self._options(y_pred, -1))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "symmetric": self.symmetric}


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszMultilabelLoss(_ClassAveragedLoss):
    """Multi-label Lovász loss, one binary loss per channel; see :func:`lovasz.torch.lovasz_multilabel`.

    ``y_pred`` and ``y_true`` are ``[B, *spatial, C]`` (channels-last; ``[B, C, *spatial]``
    with ``data_format='channels_first'``), ``y_true`` holding 0/1 per channel. With
    ``from_logits`` (the default here, as for the hinge) each channel gets the Lovász hinge
    of its scores; otherwise the Lovász-Softmax term of its foreground probability.
    ``margin`` and ``symmetric`` are the hinge's variants, as in :class:`LovaszHingeLoss`
    (``from_logits`` only). The other arguments are those of :class:`LovaszSoftmaxLoss`,
    ``classes='present'`` averaging over the channels with a positive target in the set;
    with ``scenes_in_labels``, ``y_pred`` is ``[N, C]`` and ``y_true`` ``[N, C + 1]``: each
    point's C targets, then its scene.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([[[[1, 0], [0, 1]], [[0, 1], [0, 1]]]])  # [B, H, W, C=2]
        >>> y_pred = np.zeros(y_true.shape, "float32")  # logits
        >>> round(float(LovaszMultilabelLoss()(y_true, y_pred)), 4)
        1.0
        >>> y_pred = np.where(y_true == 1, 3.0, -3.0).astype("float32")  # right by 3
        >>> round(float(LovaszMultilabelLoss()(y_true, y_pred)), 4)
        0.0
    """

    _function = "lovasz_multilabel"

    def __init__(
        self,
        from_logits: bool = True,
        per_image: bool = True,
        classes: str | Sequence[int] = "present",
        ignore_class: int | None = None,
        class_weights: Sequence[float] | None = None,
        data_format: str | None = None,
        name: str = "lovasz_multilabel",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
        margin: str = "relu",
        symmetric: bool = False,
        include_background: bool = True,
        scenes_in_labels: bool = False,
        num_scenes: int | None = None,
        global_batch: bool = False,
    ):
        super().__init__(
            from_logits=from_logits,
            classes=classes,
            class_weights=class_weights,
            include_background=include_background,
            per_image=per_image,
            ignore_class=ignore_class,
            data_format=data_format,
            scenes_in_labels=scenes_in_labels,
            num_scenes=num_scenes,
            name=name,
            reduction=reduction,
            dtype=dtype,
            global_batch=global_batch,
        )
        self.margin, self.symmetric = V.check_hinge_variant(margin, symmetric, self.from_logits)

    def _options(self, y_pred: Tensor, axis: int) -> dict[str, Any]:
        return {**super()._options(y_pred, axis), "margin": self.margin, "symmetric": self.symmetric}

    def _dense(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        y_true = self._masked(y_true, len(y_pred.shape) - 1, self._channel_axis, channels=True)
        return self._run("lovasz_multilabel", y_pred, y_true, **self._options(y_pred, self._channel_axis))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "symmetric": self.symmetric}


# ----------------------------------------------------------------------------- cross-entropy + Lovász

_LOVASZ_OF_MODE = {"multiclass": LovaszSoftmaxLoss, "binary": LovaszHingeLoss, "multilabel": LovaszMultilabelLoss}


class _TermWeights(keras.metrics.Metric):
    """The two weight variables of a :class:`CrossEntropyLovaszLoss`, as a metric of a model.

    JAX's train step is a pure function of the variables the model passes in (its trainable,
    non-trainable, optimizer and metric variables): any other variable it reads is a constant
    of the trace. As a metric of the model, the weights are passed in at every step; the
    model's weights (``model.save``) and its logs (the result is empty) stay as they were."""

    def __init__(self, ce: keras.Variable, lovasz: keras.Variable, name: str):
        super().__init__(name=name)
        self.ce, self.lovasz = ce, lovasz  # tracked: the metric's variables

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset_state(self) -> None:
        pass  # weights, not statistics: model.reset_metrics() at each epoch must keep them

    def result(self) -> dict[str, Any]:
        return {}


def _track(model: keras.Model, metric: keras.metrics.Metric) -> None:
    """Make ``metric`` a metric of ``model``, once. Keras has no public way to add state to a built
    model (a built subclassed model locks its tracker); its own ``Layer.quantize`` unlocks it so."""
    if any(m is metric for m in model.metrics):
        return
    tracker = model._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        tracker.add_to_store("metrics", metric)
    finally:
        if locked:
            tracker.lock()


@keras.saving.register_keras_serializable(package="lovasz")
class CrossEntropyLovaszLoss(keras.losses.Loss):
    """``ce_weight * cross-entropy + lovasz_weight * Lovász`` on logits; ``ignore_class`` for both terms.

    ``mode`` is ``'multiclass'`` (sparse softmax cross-entropy and :class:`LovaszSoftmaxLoss`),
    ``'binary'`` (binary cross-entropy and :class:`LovaszHingeLoss`) or ``'multilabel'``
    (binary cross-entropy per channel and :class:`LovaszMultilabelLoss`). ``y_pred`` are
    logits. The other arguments are those of the Lovász class; ``per_image`` defaults to
    that class's default. The cross-entropy is the mean over the non-ignored pixels of
    each image (``per_image``: one value per image, which ``sample_weight`` weighs; lovasz.torch's is one
    mean over the batch's pixels, as ``F.cross_entropy``) or of the batch (of all points with
    ``scenes_in_labels``), weighted by ``class_weights`` as PyTorch's ``weight`` (multiclass: each pixel by its
    class; multilabel: each channel). In ``'multiclass'`` mode ``y_true`` may be one-hot, as
    for :class:`LovaszSoftmaxLoss`: both terms read its class indices (the cross-entropy is
    Keras' categorical one then). :class:`LovaszScheduleCallback` changes the two weights
    during ``fit``.

    The weights are held in two non-trainable ``keras.Variable`` and read inside the
    compiled train step, so a new value needs no retrace; a term whose weight is 0 is not
    computed, so turning a term on or off does (the callback rebuilds the step then).

    Args:
        mode: ``'multiclass'``, ``'binary'`` or ``'multilabel'``; the shapes are those of the
            Lovász class of the mode.
        ce_weight: the weight of the cross-entropy term (0: not computed).
        lovasz_weight: the weight of the Lovász term (0: not computed).
        per_image: None for the Lovász class's default (False for ``'multiclass'``, True
            otherwise).
        classes: ``'present'``, ``'all'`` or a list, for the Lovász term (not ``'binary'``).
        ignore_class: label value of pixels left out of both terms.
        data_format: ``'channels_last'`` or ``'channels_first'``.
        class_weights: one weight per class (channel), for both terms (not ``'binary'``).
        margin, symmetric: the hinge's variants (``'binary'`` and ``'multilabel'``).
        include_background: False leaves channel 0 out of the Lovász term's class average
            (not ``'binary'``; the cross-entropy keeps it, as MONAI's DiceCELoss does).
        scenes_in_labels, num_scenes: point clouds, as in :class:`LovaszSoftmaxLoss`; the
            cross-entropy is then the mean over all points.
        global_batch: both terms of the global batch across ``tf.distribute`` replicas (the
            cross-entropy the mean over the global batch's pixels), as in :class:`LovaszSoftmaxLoss`.

    Example:
        >>> import numpy as np
        >>> loss = CrossEntropyLovaszLoss("multiclass", ignore_class=255)
        >>> y_true = np.array([[[0, 1], [1, 255]]])  # [B=1, H=2, W=2]
        >>> y_pred = np.zeros((1, 2, 2, 3), "float32")  # [B, H, W, C=3] logits
        >>> round(float(loss(y_true, y_pred)), 4)  # ln 3 + 2/3
        1.7653
    """

    def __init__(
        self,
        mode: str = "multiclass",
        ce_weight: float = 1.0,
        lovasz_weight: float = 1.0,
        per_image: bool | None = None,
        classes: str | Sequence[int] = "present",
        ignore_class: int | None = None,
        data_format: str | None = None,
        name: str = "cross_entropy_lovasz",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
        class_weights: Sequence[float] | None = None,
        margin: str = "relu",
        symmetric: bool = False,
        include_background: bool = True,
        scenes_in_labels: bool = False,
        num_scenes: int | None = None,
        global_batch: bool = False,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._dtype_config = _dtype_config(dtype, self._dtype_policy)
        if mode not in _LOVASZ_OF_MODE:
            raise ValueError(f"mode must be one of {tuple(_LOVASZ_OF_MODE)}; got {mode!r}")
        options: dict[str, Any] = dict(
            ignore_class=ignore_class,
            data_format=data_format,
            dtype=dtype,
            reduction=reduction,
            scenes_in_labels=scenes_in_labels,
            num_scenes=num_scenes,
            global_batch=global_batch,
        )
        if per_image is not None:
            options["per_image"] = per_image
        if mode != "binary":
            options.update(
                classes=classes, from_logits=True, class_weights=class_weights, include_background=include_background
            )
        elif class_weights is not None or include_background is not True:
            raise ValueError(
                "class_weights and include_background weigh the classes of 'multiclass' and 'multilabel'; "
                f"mode='binary' has one; got class_weights={class_weights!r}, include_background={include_background!r}"
            )
        if mode != "multiclass":
            options.update(margin=margin, symmetric=symmetric)
        elif margin != "relu" or symmetric is not False:
            raise ValueError(
                "margin and symmetric are variants of the hinge (modes 'binary' and 'multilabel'); "
                f"got margin={margin!r}, symmetric={symmetric!r} with mode='multiclass'"
            )
        self.mode = mode
        self.lovasz = _LOVASZ_OF_MODE[mode](**options)
        # the Python side of the weights: which terms are traced
        self._weights = (
            V.check_term_weight(ce_weight, "ce_weight"),
            V.check_term_weight(lovasz_weight, "lovasz_weight"),
        )
        self._variables = (
            keras.Variable(self._weights[0], trainable=False, dtype="float32", name="ce_weight"),
            keras.Variable(self._weights[1], trainable=False, dtype="float32", name="lovasz_weight"),
        )
        self._metric: _TermWeights | None = None
        self._scheduled = False  # a LovaszScheduleCallback rebuilds the compiled steps when a term turns on or off
        self._jax_traced = False  # called in a JAX trace: a compiled step holds the weights as they were

    @property
    def ce_weight(self) -> float:
        """The weight of the cross-entropy term; setting it assigns its variable."""
        return self._weights[0]

    @ce_weight.setter
    def ce_weight(self, value: float) -> None:
        self._set_weight(0, value, "ce_weight")

    @property
    def lovasz_weight(self) -> float:
        """The weight of the Lovász term; setting it assigns its variable."""
        return self._weights[1]

    @lovasz_weight.setter
    def lovasz_weight(self, value: float) -> None:
        self._set_weight(1, value, "lovasz_weight")

    def _set_weight(self, index: int, value: float, name: str) -> None:
        weights = list(self._weights)
        weights[index] = V.check_term_weight(value, name)
        if weights[index] != self._weights[index]:
            self._variables[index].assign(weights[index])
            if self._jax_traced and self._metric is None:
                warnings.warn(
                    f"{name} changed after a JAX step was compiled with this loss: on the JAX backend a compiled "
                    "step reads the weight it was traced with. Change it with a LovaszScheduleCallback (which "
                    "passes the weights into the step), or rebuild the steps: model.make_train_function(force=True) "
                    "and model.make_test_function(force=True)",
                    stacklevel=3,
                )
        self._weights = (weights[0], weights[1])

    def _terms(self) -> tuple[bool, bool]:
        """Which terms the call computes: those of a non-zero weight (the Lovász term if both are 0) where the
        step that runs it is built again when one turns on or off: in torch's (eager) steps, and while a
        LovaszScheduleCallback drives the weights. Else both, each times its weight's variable: a TensorFlow or
        JAX step compiled with a term left out kept leaving it out when its weight was set by hand, and the
        test step (``val_loss``, ``evaluate``) when the callback rebuilt only the train step."""
        if not self._scheduled and keras.backend.backend() != "torch":
            return True, True
        ce = self._weights[0] != 0
        return ce, self._weights[1] != 0 or not ce

    def _term_weights(self) -> _TermWeights:
        """The weights as a metric (made once), for a model to pass into JAX's train step."""
        if self._metric is None:
            self._metric = _TermWeights(*self._variables, name=f"{self.name}_weights")
        return self._metric

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        loss, scene = self, None
        self._jax_traced = self._jax_traced or keras.backend.backend() == "jax" and _known(y_pred) is None
        if self.lovasz.scenes_in_labels:
            y_true, scene, in_scene = self.lovasz._split_scenes(y_true, y_pred)
            if in_scene is not None:  # both terms leave out the points of no scene
                loss = self._with_mask(self.lovasz._mask_and(in_scene))
        elif self.mode == "multiclass":
            y_true = self.lovasz._labels(y_true, y_pred)  # one-hot as class indices, for both terms
        return loss._sum_of_terms(y_true, y_pred, scene)

    def _sum_of_terms(self, y_true: Tensor, y_pred: Tensor, scene: Tensor | None) -> Tensor:
        lovasz = self.lovasz
        ce_on, lovasz_on = self._terms()
        total = None
        if lovasz_on:  # first: it checks the labels and names what is wrong (TF's cross-entropy op would not)
            value = lovasz._dense(y_true, y_pred) if scene is None else lovasz._points(y_true, y_pred, scene)
            total = ops.cast(self._variables[1], value.dtype) * value
        if ce_on:
            ce = self._cross_entropy(y_true, y_pred, points=scene is not None)
            term = ops.cast(self._variables[0], ce.dtype) * ce
            total = term if total is None else total + term
        return total

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return _loss_call(self, y_true, y_pred, sample_weight)

    def _with_mask(self, mask: Tensor) -> CrossEntropyLovaszLoss:
        """This loss for one call on a ``y_pred`` with a Keras mask: both terms leave its pixels out."""
        masked = _shallow_copy(self)
        masked.lovasz = self.lovasz._with_mask(mask)
        return masked

    def _cross_entropy(self, y_true: Tensor, y_pred: Tensor, points: bool) -> Tensor:
        """The mean cross-entropy of the non-ignored pixels, weighted by ``class_weights``: of each
        image with ``per_image``, else of the batch (of all points of scenes)."""
        axis = -1 if points else self.lovasz._channel_axis
        rank = len(y_pred.shape)
        ignore = self.lovasz.ignore_class
        class_weights = getattr(self.lovasz, "class_weights", None)
        if class_weights is not None:  # (the Lovász term, which checks them too, may be off)
            self.lovasz._check_class_weights(y_pred, axis)
        dtype = keras.backend.standardize_dtype(y_pred.dtype)
        # in float32 (float64 stays): a float16 sum of the weights overflows past 65504 pixels
        y_pred = ops.cast(y_pred, "float64" if dtype == "float64" else "float32")
        if self.mode == "multiclass" and y_pred.shape[axis] != 1:
            labels = self.lovasz._masked(_squeeze_channel(y_true, axis, rank), rank - 1, axis)
            valid = _valid_mask(labels, ignore)
            channels = y_pred.shape[axis]
            ok = ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, channels))
            if keras.backend.is_float_dtype(keras.backend.standardize_dtype(labels.dtype)):  # (Keras casts y_true)
                ok = ops.logical_and(ok, ops.equal(labels, ops.round(labels)))  # 1.5 is no class, nor is it 1
            good = _checked_targets(labels, valid, ok, f"whole numbers in [0, {channels - 1}]")
            # any class for ignored pixels (they weigh 0), and for bad ones where no check could raise
            labels = ops.where(ops.logical_and(ops.cast(valid, "bool"), ok), ops.cast(labels, "int32"), 0)
            logits = y_pred if axis in (-1, rank - 1) else ops.moveaxis(y_pred, axis, -1)  # TF's takes axis=-1 only
            # 0 at ignored pixels: a NaN or an infinity there made the weighted sum NaN (NaN * 0), and its gradient
            logits = ops.where(ops.expand_dims(ops.cast(valid, "bool"), -1), logits, 0)
            pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            weight = ops.cast(valid, pixel.dtype)
            if class_weights is not None:
                weight = weight * ops.take(ops.convert_to_tensor(class_weights, pixel.dtype), labels)
        else:  # binary, multi-label, or one channel: the foreground's logit, as the Lovász term reads it
            if self.mode != "multilabel":
                y_true, y_pred = _drop_binary_channel(y_true, y_pred, axis)
                y_true = self.lovasz._masked(y_true, len(y_pred.shape), axis)
            else:
                y_true = self.lovasz._masked(y_true, rank - 1, axis, channels=True)
            valid = _valid_mask(y_true, ignore)
            binary = ops.logical_or(ops.equal(y_true, 0), ops.equal(y_true, 1))
            good = _checked_targets(y_true, valid, binary, "0 or 1")
            target = ops.cast(y_true, y_pred.dtype) * ops.cast(valid, y_pred.dtype)
            logits = ops.where(ops.cast(valid, "bool"), y_pred, 0)  # (as above)
            pixel = ops.binary_crossentropy(target, logits, from_logits=True)
            weight = ops.cast(valid, pixel.dtype)
            if class_weights is not None and self.mode == "multilabel":  # a weight per channel
                shape = [1] * rank
                shape[axis] = len(class_weights)
                weight = weight * ops.reshape(ops.convert_to_tensor(class_weights, pixel.dtype), shape)
            elif class_weights is not None and self.mode == "multiclass":  # one channel: the two classes' weights
                classes = ops.cast(target, "int32")
                weight = weight * ops.take(ops.convert_to_tensor(class_weights, pixel.dtype), classes)
        if self.lovasz.per_image and not points:
            axes = tuple(range(1, len(weight.shape)))
            ce = ops.divide_no_nan(ops.sum(pixel * weight, axis=axes), ops.sum(weight, axis=axes))
        else:
            ce = _global_mean(ops.sum(pixel * weight), ops.sum(weight), self.lovasz._replicas())
        ce = ce if good is None else ce * ops.where(good, ops.ones((), ce.dtype), ops.cast(float("nan"), ce.dtype))
        return ops.cast(ce, dtype)  # (the mean of a float16 loss fits float16; its sums did not)

    def get_config(self) -> dict[str, Any]:
        lovasz = self.lovasz.get_config()
        config = {
            **super().get_config(),
            "dtype": self._dtype_config,
            "mode": self.mode,
            "ce_weight": self.ce_weight,
            "lovasz_weight": self.lovasz_weight,
        }
        for key in (
            "per_image",
            "classes",
            "ignore_class",
            "data_format",
            "class_weights",
            "margin",
            "symmetric",
            "include_background",
            "scenes_in_labels",
            "num_scenes",
            "global_batch",
        ):
            if key in lovasz:
                config[key] = lovasz[key]
        return config


class LovaszScheduleCallback(keras.callbacks.Callback):
    """Applies a :class:`lovasz.schedule.LovaszSchedule` to a :class:`CrossEntropyLovaszLoss` during ``fit``.

    Args:
        schedule: the weights of the two terms per epoch (or batch).
        loss: the loss to change; by default the model's compiled loss.
        by: ``'epoch'`` (the schedule counts epochs) or ``'batch'`` (the optimizer's steps,
            ``optimizer.iterations``, as Keras' learning-rate schedules count them: a ``fit``
            resumed from a saved model goes on where it stopped; with ``steps_per_execution=k``
            the weights change every ``k`` steps, between calls of the compiled step, to the
            schedule's value at the step that comes).

    The loss holds its weights in non-trainable variables that the compiled train step
    reads, so a ramp counted in batches costs no retrace on any backend. Only turning a
    term on or off (a weight leaving or reaching 0) rebuilds the train and test steps (on
    the TensorFlow and JAX backends): at most twice for a schedule, at the warm-up's end
    and, with ``final_ce_weight=0``, at the ramp's end. On the JAX backend, whose train
    step is a pure function of the model's variables, the callback makes the weights a
    metric of the model (with an empty result: the logs don't change) and syncs the
    model's state when it changes them.

    Example:
        >>> loss = CrossEntropyLovaszLoss("multiclass")
        >>> callback = LovaszScheduleCallback(LovaszSchedule(warmup=5), loss)
        >>> # model.compile(loss=loss); model.fit(x, y, epochs=10, callbacks=[callback])
    """

    def __init__(self, schedule: LovaszSchedule, loss: CrossEntropyLovaszLoss | None = None, by: str = "epoch"):
        super().__init__()
        if by not in ("epoch", "batch"):
            raise ValueError(f"by must be 'epoch' or 'batch'; got {by!r}")
        if not all(callable(getattr(schedule, m, None)) for m in ("weights", "apply")):  # (an AttributeError in fit)
            raise TypeError(
                "schedule must be a lovasz.schedule.LovaszSchedule (or have its weights(t) and apply(loss, t)); "
                f"got {type(schedule).__name__}"
            )
        if loss is not None and not isinstance(loss, CrossEntropyLovaszLoss):
            raise TypeError(f"loss must be a lovasz.keras.CrossEntropyLovaszLoss or None; got {type(loss).__name__}")
        self.schedule, self.loss, self.by = schedule, loss, by
        self._step = 0  # training steps taken
        self._first = 0  # the first step of the call under way

    def _target(self) -> CrossEntropyLovaszLoss:
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if not isinstance(loss, CrossEntropyLovaszLoss):
            kind = "dict" if isinstance(loss, dict) or type(loss).__name__ == "_DictWrapper" else type(loss).__name__
            raise TypeError(
                f"LovaszScheduleCallback needs a lovasz.keras.CrossEntropyLovaszLoss (pass loss=, or "
                f"compile the model with one); got {kind}"
            )
        return loss

    def _check_loss_is_compiled(self) -> None:
        """A ``loss=`` that the model is not compiled with, where it is compiled with another of ours, is a copy
        (``load_model`` makes one, with the weights saved): scheduling it would change nothing the model trains on."""
        compiled = getattr(self.model, "loss", None)
        leaves = [] if compiled is None or isinstance(compiled, str) else keras.tree.flatten(compiled)
        ours = [leaf for leaf in leaves if isinstance(leaf, CrossEntropyLovaszLoss)]
        if self.loss is not None and ours and not any(leaf is self.loss for leaf in ours):
            raise ValueError(
                "LovaszScheduleCallback(loss=...) is not the loss this model is compiled with, but the model's "
                "is another CrossEntropyLovaszLoss (a model reloaded with load_model has its own copy): the "
                "schedule would change a loss the model does not use. Pass loss=model.loss, or leave loss out"
            )

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._check_loss_is_compiled()
        loss = self._target()
        if keras.backend.backend() == "jax":
            _track(self.model, loss._term_weights())
        if self.by == "batch":
            self._step = self._optimizer_steps(self._step)
        terms = loss._terms()
        loss._scheduled = True  # terms of weight 0 are left out from now on
        if loss._terms() != terms:
            self._rebuild_steps()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """After ``fit`` the weights may be set by hand, which rebuilds nothing: the steps are traced again
        with both terms (only if one was left out)."""
        loss = self._target()
        terms = loss._terms()
        loss._scheduled = False
        if terms != loss._terms():
            self._rebuild_steps()

    def _rebuild_steps(self) -> None:
        """Trace the train and test steps again at their next call (on TensorFlow and JAX: torch's run eagerly)."""
        if keras.backend.backend() != "torch":
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)

    def _apply(self, t: int) -> None:
        loss = self._target()
        weights = self.schedule.weights(t)
        if weights == (loss.ce_weight, loss.lovasz_weight):
            return
        terms = loss._terms()
        backend = keras.backend.backend()
        if backend == "jax":
            # Mid-epoch the model's variables live in the train loop's state: write it back, so that
            # the loop takes the state up again, with the new weights, before the next step.
            self.model.jax_state_sync()
        self.schedule.apply(loss, t)
        if loss._terms() != terms:
            self._rebuild_steps()  # a term on or off: a different graph, for training and validation

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.by == "epoch":
            self._apply(epoch)
        else:  # (read again: a callback after this one, BackupAndRestore, may restore the optimizer's state)
            self._step = self._optimizer_steps(self._step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """The steps counted in the epoch's calls are the optimizer's, except where the data's length is unknown
        and ``steps_per_execution > 1``: the last call may run fewer, and Keras makes one more, empty, call."""
        if self.by == "batch":
            self._step = self._optimizer_steps(self._step)

    def _optimizer_steps(self, otherwise: int) -> int:
        """The model's optimizer's step count (on JAX synced at the epoch's end, not in it), or ``otherwise``."""
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        return otherwise if iterations is None else int(iterations)  # (a variable of one integer)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.by == "batch":
            self._apply(self._step)
            self._first = batch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Counts the steps of the call that ends: with ``steps_per_execution=k``, Keras calls back once every
        ``k`` steps (``batch`` is the last one's index), and the weights change between calls only."""
        if self.by == "batch":
            steps = (self.params or {}).get("steps")  # an epoch's, where known: its last call may run fewer
            last = batch if not steps else min(batch, steps - 1)
            self._step += max(last - self._first + 1, 1)


from lovasz.schedule import LovaszSchedule  # noqa: E402  re-exported for Keras users
