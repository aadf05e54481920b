"""The global batch of a ``tf.distribute`` replica context, for ``global_batch=True`` in lovasz.tf and lovasz.keras.

Under a ``tf.distribute`` strategy (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``...)
``strategy.run`` calls the loss once per replica, on that replica's shard of the batch. A
batch-mode Lovász loss is one set of pixels, and the loss of a shard is not a share of the
loss of the batch. So, in a replica context of several replicas:

- batch mode: every replica all-gathers every replica's pixels (the predictions, and one
  uint8 code per pixel and class: background, foreground or ignored) as points ``[P, K]``,
  padded with ignored points to the largest shard (ignored pixels change nothing), and
  computes the loss of the union: the exact loss of the global batch, on every replica.
  Only its own pixels carry gradient, so each replica's gradient is its slice of the
  single-device gradient, and the replicas' gradients summed (as ``apply_gradients`` sums
  them) are the single-device gradient.
- per image: each image's loss is its own already; the mean (or sum) over every replica's
  images takes two all-reduces of one number, the gradient again the replica's own slice.
- per scene (Keras' ``scenes_in_labels``): ``fit`` splits the rows of points over the replicas
  whatever their scenes, so every replica gathers every replica's points, labels and scene
  indices and takes each scene's loss whole; again only its own points carry gradient.

Outside a replica context (no strategy, one replica, the cross-replica context where a
whole batch is at hand) nothing is gathered. Every replica runs the same traced function,
so the collectives are the same on every replica.
"""

from __future__ import annotations

import tensorflow as tf

from lovasz._codes import FOREGROUND, IGNORED

_IGNORED_WORD = IGNORED * 0x01010101  # four ignored codes in one int32 word, whatever the byte order


def replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context of a batch split across several replicas; None where the batch is whole."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _packed(codes: tf.Tensor, classes: int) -> tf.Tensor:
    """uint8 codes ``[P, K]`` as int32 words ``[P, ceil(K / 4)]``, four codes a word: the collectives
    take no uint8, and int32 codes would move four times the bytes."""
    codes = tf.pad(codes, [[0, 0], [0, -classes % 4]], constant_values=IGNORED)
    return tf.bitcast(tf.reshape(codes, [tf.shape(codes)[0], -1, 4]), tf.int32)


def _unpacked(words: tf.Tensor, classes: int) -> tf.Tensor:
    """The codes ``[P, K]`` of :func:`_packed` words (bitcast back on the same kind of machine)."""
    return tf.reshape(tf.bitcast(words, tf.uint8), [tf.shape(words)[0], -1])[:, :classes]


def _points_first(x: tf.Tensor, channels_last: bool) -> tf.Tensor:
    """``[B, N, K]`` (channels-first: ``[B, K, N]``) as the points ``[B * N, K]``."""
    if not channels_last:
        x = tf.transpose(x, [0, 2, 1])
    classes = x.shape[2]  # static where known: the rows of the loss are counted from it
    return tf.reshape(x, [-1, classes if classes is not None else tf.shape(x)[2]])


def gather_set(
    pred: tf.Tensor, fg: tf.Tensor, valid: tf.Tensor | None, channels_last: bool, context: tf.distribute.ReplicaContext
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every replica's pixels as one set: ``pred [1, P, K]``, ``fg`` and ``valid`` (bool), channels-last.

    ``pred [B_r, N_r, K]`` (channels-first ``[B_r, K, N_r]``) and ``fg``, ``valid`` of its shape
    (``valid`` None: every pixel counts) may differ in ``B_r`` and ``N_r`` across replicas, not in
    ``K``. Only this replica's own points carry gradient.
    """
    points = _points_first(pred, channels_last)
    classes = points.shape[1]
    if classes is None:  # the losses check that the class axis is known when traced
        raise AssertionError(f"the class axis must be known; got shape {pred.shape}")
    codes = tf.cast(fg, tf.uint8)
    if valid is not None:
        codes = tf.where(valid, codes, tf.constant(IGNORED, tf.uint8))
    words = _packed(_points_first(codes, channels_last), classes)
    all_points, (all_words,) = gather_points(points, [words], [_IGNORED_WORD], context)  # padding: ignored
    all_codes = _unpacked(all_words, classes)
    return all_points[None], tf.equal(all_codes, FOREGROUND)[None], tf.not_equal(all_codes, IGNORED)[None]


def gather_points(
    pred: tf.Tensor, others: list[tf.Tensor], fills: list[float], context: tf.distribute.ReplicaContext
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Every replica's points ``[P, ...]`` as one set, in replica order: ``pred``, of which only this replica's own
    points carry gradient, and ``others`` (labels, scene indices), each shard padded to the largest with its
    ``fills`` value (a scene index of -1: no scene). A scene split across replicas is one scene again."""
    size = tf.shape(pred)[0]
    # Every replica's point count first, so that the shards can be padded to one shape: an all-gather
    # of equal shapes is what every strategy takes (TPUStrategy takes no other).
    most = tf.reduce_max(_all_gather(size[None], context))

    def padded(x: tf.Tensor, fill: float) -> tf.Tensor:
        return tf.pad(x, [[0, most - size]] + [[0, 0]] * (x.shape.rank - 1), constant_values=fill)

    sent = [padded(tf.stop_gradient(pred), 0)] + [padded(x, fill) for x, fill in zip(others, fills)]
    gathered = [_all_gather(x, context) for x in sent]
    # Own points: the differentiable ones, in their place (the padding after them stays gathered).
    start = tf.cast(context.replica_id_in_sync_group, tf.int32) * most
    own = tf.concat([gathered[0][:start], pred, gathered[0][start + size :]], axis=0)
    return own, gathered[1:]


def _all_gather(x: tf.Tensor, context: tf.distribute.ReplicaContext) -> tf.Tensor:
    """Every replica's ``x [m, ...]`` (of one shape), in replica order along axis 0. Eagerly
    (``tf.config.run_functions_eagerly``, to debug a step) TF has no all-gather: each replica's block in
    its place of zeros, summed over the replicas."""
    if not tf.executing_eagerly():
        return context.all_gather(x, axis=0)
    replicas, rows = context.num_replicas_in_sync, tf.shape(x)[0]
    start = tf.cast(context.replica_id_in_sync_group, tf.int32) * rows
    blocks = [[start, (replicas - 1) * rows - start]] + [[0, 0]] * (x.shape.rank - 1)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.pad(x, blocks))


def summed(value: tf.Tensor, context: tf.distribute.ReplicaContext) -> tf.Tensor:
    """The sum of ``value`` over the replicas, with the gradient of this replica's own ``value``."""
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))
    return value + tf.stop_gradient(total - value)


def counted(value: tf.Tensor, context: tf.distribute.ReplicaContext) -> tf.Tensor:
    """The sum of a constant (a count) over the replicas."""
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))


def reduce_sets(per_set: tf.Tensor, reduction: str, context: tf.distribute.ReplicaContext) -> tf.Tensor:
    """The mean (``'mean'``) or sum (``'sum'``) of every replica's per-image (per-scene) losses."""
    total = summed(tf.reduce_sum(per_set), context)
    if reduction == "sum":
        return total
    count = counted(tf.cast(tf.size(per_set), total.dtype), context)
    return tf.math.divide_no_nan(total, count)  # no image anywhere: 0, as for one empty batch


def share(value: tf.Tensor, context: tf.distribute.ReplicaContext) -> tf.Tensor:
    """A replica's share of a loss every replica computes whole: the value over the replicas, the gradient
    of ``value``. Summed over the replicas (as Keras sums the losses and gradients of its replicas), the
    values give the loss and the gradients (each replica's own slice) the single-device gradient."""
    replicas = tf.cast(context.num_replicas_in_sync, value.dtype)
    return value - tf.stop_gradient(value) * (1 - 1 / replicas)
