"""The loss of the global batch across devices: ``global_batch=True`` of lovasz.tf and lovasz.keras under
``tf.distribute.MirroredStrategy`` (logical CPUs), and lovasz.keras on JAX under
``keras.distribution.DataParallel`` (virtual CPU devices). Every distributed loss, gradient and
training step is checked against one call (one step) on the whole batch on one device.

TF's logical devices must be set before TF starts, and JAX's host devices before JAX does, so the
checks run in a fresh process per backend: this file, run as a script
(``python tests/test_tf_distributed.py tensorflow`` or ``jax``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from conftest import require

REPLICAS = 3  # logical CPUs of MirroredStrategy: shards of unequal size are possible
JAX_DEVICES = 4


def _run_checks(backend: str, env: dict[str, str]) -> None:
    """Run this file's checks of ``backend`` in a fresh process; fail with its output."""
    import pytest

    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), backend],
        env={**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"{backend} checks failed:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}")
    assert "all checks passed" in result.stdout, result.stdout[-4000:]


def test_tensorflow_replicas_give_the_loss_and_step_of_the_whole_batch():
    require("tensorflow")
    require("keras")
    _run_checks("tensorflow", {"KERAS_BACKEND": "tensorflow"})


def test_keras_on_jax_data_parallel_gives_the_loss_and_step_of_the_whole_batch():
    require("jax")
    require("keras")
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={JAX_DEVICES}".strip()
    _run_checks("jax", {"KERAS_BACKEND": "jax", "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})


# ----------------------------------------------------------------------------- inputs


def shard_shapes(kind: str) -> list[tuple[int, int, int]]:
    """(batch, height, width) of each replica's shard: unequal batches; unequal sizes too for ``'sizes'``."""
    if kind == "sizes":
        return [(2, 4, 5), (1, 6, 7), (3, 3, 4)][:REPLICAS]
    return [(3, 5, 6), (2, 5, 6), (1, 5, 6)][:REPLICAS]


def shard(loss: str, replica: int, shape: tuple[int, int, int], dtype: str = "float64"):
    """Replica ``replica``'s prediction (channels-last) and labels: class 3 (channel 1) on replica 1 only,
    ignored pixels (255) on replica 0 only."""
    rng = np.random.default_rng(10 + replica)
    b, h, w = shape
    if loss == "hinge":
        labels = rng.integers(0, 2, size=(b, h, w))
        labels[:, 0, :2] = 255 if replica == 0 else labels[:, 0, :2]
        return rng.normal(size=(b, h, w)).astype(dtype), labels
    if loss == "multilabel":
        targets = rng.integers(0, 2, size=(b, h, w, 3))
        targets[..., 1] = targets[..., 1] if replica == 1 else 0
        targets[:, 0, :2, 2] = 255 if replica == 0 else targets[:, 0, :2, 2]
        return rng.normal(size=(b, h, w, 3)).astype(dtype), targets
    labels = rng.integers(0, 3, size=(b, h, w))
    labels[:, -1, -2:] = 3 if replica == 1 else labels[:, -1, -2:]
    labels[:, 0, :3] = 255 if replica == 0 else labels[:, 0, :3]
    return rng.normal(size=(b, h, w, 4)).astype(dtype), labels


def pixel_union(loss: str, xs, ys):
    """One image holding every shard's pixels (channels-last), and its labels: the batch-mode reference
    where the shards' sizes differ."""
    if loss == "hinge":
        return np.concatenate([x.reshape(1, -1) for x in xs], 1), np.concatenate([y.reshape(1, -1) for y in ys], 1)
    channels = xs[0].shape[-1]
    x = np.concatenate([x.reshape(1, -1, channels) for x in xs], 1)
    if loss == "multilabel":
        return x, np.concatenate([y.reshape(1, -1, channels) for y in ys], 1)
    return x, np.concatenate([y.reshape(1, -1) for y in ys], 1)


# ----------------------------------------------------------------------------- TensorFlow checks


def tf_cases():
    """name -> (loss kind, shard sizes, function of (x, y, **global_batch))."""
    import tensorflow as tf

    import lovasz.tf as L

    def softmax(**options):
        return lambda x, y, **kw: L.lovasz_softmax(x, y, ignore=255, **options, **kw)

    def channels_first(x, y, **kw):
        return L.lovasz_softmax(tf.transpose(x, [0, 3, 1, 2]), y, ignore=255, order="BCHW", from_logits=True, **kw)

    def multilabel(**options):
        return lambda x, y, **kw: L.lovasz_multilabel(x, y, ignore=255, **options, **kw)

    return {
        "softmax, logits": ("softmax", "batches", softmax(from_logits=True)),
        "softmax, probabilities, all classes, weights": (
            "softmax",
            "batches",
            lambda x, y, **kw: softmax(classes="all", weights=[1.0, 2.0, 3.0, 4.0])(tf.nn.softmax(x), y, **kw),
        ),
        "softmax, a list of classes": ("softmax", "batches", softmax(classes=[0, 3, 3], from_logits=True)),
        "softmax, unequal image sizes": ("softmax", "sizes", softmax(from_logits=True)),
        "softmax, channels-first": ("softmax", "batches", channels_first),
        "softmax per image": ("softmax", "batches", softmax(per_image=True, from_logits=True)),
        "softmax per image, sum": ("softmax", "batches", softmax(per_image=True, from_logits=True, reduction="sum")),
        "hinge": ("hinge", "batches", lambda x, y, **kw: L.lovasz_hinge(x, y, per_image=False, ignore=255, **kw)),
        "hinge, elu, symmetric, unequal sizes": (
            "hinge",
            "sizes",
            lambda x, y, **kw: L.lovasz_hinge(x, y, False, 255, margin="elu", symmetric=True, **kw),
        ),
        "hinge per image": ("hinge", "batches", lambda x, y, **kw: L.lovasz_hinge(x, y, ignore=255, **kw)),
        "multilabel": ("multilabel", "batches", multilabel(per_image=False, weights=[1.0, 0.5, 2.0])),
        "multilabel, probabilities": (
            "multilabel",
            "sizes",
            lambda x, y, **kw: multilabel(per_image=False, from_logits=False)(tf.sigmoid(x), y, **kw),
        ),
        "multilabel per image": ("multilabel", "batches", multilabel()),
    }


def distributed(strategy, arrays):
    """One array per replica as a distributed value (shards may differ in shape)."""
    import tensorflow as tf

    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(arrays[context.replica_id_in_sync_group])
    )


def tf_value_and_grad(fn, x, y, **options):
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = fn(x, y, **options)
    return loss, tape.gradient(loss, x)


def check_tf_functions_equal_one_call_on_the_whole_batch(strategy):
    import tensorflow as tf

    # float64 eagerly (TF's sort), float32 in tf.function (the C kernel through numpy_function)
    for name, (kind, sizes, fn) in tf_cases().items():
        for dtype, tol, graph in (("float64", 1e-12, False), ("float32", 2e-6, True)):
            shards = [shard(kind, r, shape, dtype) for r, shape in enumerate(shard_shapes(sizes))]
            xs, ys = [x for x, _ in shards], [y for _, y in shards]
            if sizes == "sizes":
                whole_x, whole_y = pixel_union(kind, xs, ys)
            else:
                whole_x, whole_y = np.concatenate(xs), np.concatenate(ys)
            expected, expected_grad = tf_value_and_grad(fn, whole_x, whole_y)
            expected_grads = np.split(expected_grad.numpy().reshape(-1), np.cumsum([x.size for x in xs])[:-1])
            dx, dy = distributed(strategy, xs), distributed(strategy, ys)

            def step(x, y, fn=fn):
                return tf_value_and_grad(fn, x, y, global_batch=True)

            run = tf.function(step) if graph else step
            losses, grads = (strategy.experimental_local_results(v) for v in strategy.run(run, args=(dx, dy)))
            for r in range(REPLICAS):
                where = f"{name}, {dtype}, {'in tf.function' if graph else 'eagerly'}, replica {r}"
                np.testing.assert_allclose(losses[r].numpy(), expected.numpy(), rtol=tol, atol=tol, err_msg=where)
                np.testing.assert_allclose(
                    grads[r].numpy().reshape(-1), expected_grads[r], rtol=tol, atol=tol, err_msg=where
                )
    # Without global_batch, each replica's loss is its shard's, as before.
    kind, _, fn = tf_cases()["softmax, logits"]
    shards = [shard(kind, r, shape) for r, shape in enumerate(shard_shapes("batches"))]
    args = distributed(strategy, [x for x, _ in shards]), distributed(strategy, [y for _, y in shards])
    for r, loss in enumerate(strategy.experimental_local_results(strategy.run(fn, args=args))):
        np.testing.assert_allclose(loss.numpy(), fn(*shards[r]).numpy(), rtol=1e-12)


def check_tf_global_batch_under_run_functions_eagerly(strategy):
    """tf.config.run_functions_eagerly(True), to debug a step: TF has no eager all-gather ('all_gather is not
    supported in eager mode'), so the batch-mode set is gathered by a sum of each replica's block in place."""
    import tensorflow as tf

    kind, _, fn = tf_cases()["softmax, logits"]
    shards = [shard(kind, r, shape, "float32") for r, shape in enumerate(shard_shapes("batches"))]
    xs, ys = [x for x, _ in shards], [y for _, y in shards]
    expected, expected_grad = tf_value_and_grad(fn, np.concatenate(xs), np.concatenate(ys))
    expected_grads = np.split(expected_grad.numpy(), np.cumsum([len(x) for x in xs])[:-1])
    step = tf.function(lambda x, y: tf_value_and_grad(fn, x, y, global_batch=True))
    tf.config.run_functions_eagerly(True)
    try:
        results = strategy.run(step, args=(distributed(strategy, xs), distributed(strategy, ys)))
    finally:
        tf.config.run_functions_eagerly(False)
    losses, grads = (strategy.experimental_local_results(v) for v in results)
    for r in range(REPLICAS):
        np.testing.assert_allclose(losses[r].numpy(), expected.numpy(), rtol=2e-6)
        np.testing.assert_allclose(grads[r].numpy(), expected_grads[r], rtol=2e-6, atol=2e-7)


def check_tf_points_of_scenes(strategy):
    """Points-first inputs with row splits: all points one set (batch mode), or one set per scene."""
    import lovasz.tf as L

    rng = np.random.default_rng(3)
    scene_sizes = [[4, 3], [5], [2, 2, 6]][:REPLICAS]
    xs = [rng.normal(size=(sum(s), 4)) for s in scene_sizes]
    ys = [rng.integers(0, 4, size=sum(s)) for s in scene_sizes]
    splits = [np.concatenate([[0], np.cumsum(s)]) for s in scene_sizes]
    whole_x, whole_y = np.concatenate(xs), np.concatenate(ys)
    whole_splits = np.concatenate([[0], np.cumsum([n for s in scene_sizes for n in s])])
    for per_image in (False, True):
        expected, expected_grad = tf_value_and_grad(
            lambda x, y, **kw: L.lovasz_softmax(x, y, per_image=per_image, from_logits=True, row_splits=whole_splits),
            whole_x,
            whole_y,
        )
        expected_grads = np.split(expected_grad.numpy(), np.cumsum([len(x) for x in xs])[:-1])

        def step(x, y, s):
            return tf_value_and_grad(
                lambda x, y, **kw: L.lovasz_softmax(x, y, per_image=per_image, from_logits=True, row_splits=s, **kw),
                x,
                y,
                global_batch=True,
            )

        args = (distributed(strategy, xs), distributed(strategy, ys), distributed(strategy, splits))
        losses, grads = (strategy.experimental_local_results(v) for v in strategy.run(step, args=args))
        for r in range(REPLICAS):
            np.testing.assert_allclose(losses[r].numpy(), expected.numpy(), rtol=1e-12, err_msg=f"{per_image}, {r}")
            np.testing.assert_allclose(grads[r].numpy(), expected_grads[r], rtol=1e-12, atol=1e-12)


def check_tf_outside_replicas_global_batch_changes_nothing(strategy):
    import lovasz.tf as L

    x, y = shard("softmax", 0, (2, 5, 6))
    one = L.lovasz_softmax(x, y, ignore=255, from_logits=True)
    assert float(L.lovasz_softmax(x, y, ignore=255, from_logits=True, global_batch=True)) == float(one)
    with strategy.scope():  # the cross-replica context: a whole batch is at hand
        assert float(L.lovasz_softmax(x, y, ignore=255, from_logits=True, global_batch=True)) == float(one)
    try:
        L.lovasz_hinge(x[..., 0], y == 1, global_batch=1)
    except TypeError as error:
        assert "global_batch" in str(error), error
    else:
        raise AssertionError("global_batch=1 was taken")


# ----------------------------------------------------------------------------- Keras checks (both backends)

NUM_CLASSES = 3


def keras_data(kind: str, count: int):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(count, 6, 6, NUM_CLASSES)).astype("float32")
    if kind == "hinge":
        y = (x[..., 0] > 0).astype("float32")[..., None]
        return x, y, 1
    if kind == "multilabel":
        return x, (x > 0.3).astype("float32"), NUM_CLASSES
    y = x.argmax(-1)
    y[:, 0, :2] = 255
    y[0][y[0] == 2] = 1  # class 2 in some images only
    return x, y, NUM_CLASSES


def keras_losses():
    from lovasz.keras import CrossEntropyLovaszLoss, LovaszHingeLoss, LovaszMultilabelLoss, LovaszSoftmaxLoss

    return {
        "softmax": ("softmax", lambda **kw: LovaszSoftmaxLoss(from_logits=True, ignore_class=255, **kw)),
        "softmax per image": (
            "softmax",
            lambda **kw: LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255, **kw),
        ),
        "hinge": ("hinge", lambda **kw: LovaszHingeLoss(per_image=False, **kw)),
        "multilabel": ("multilabel", lambda **kw: LovaszMultilabelLoss(per_image=False, class_weights=[1, 2, 1], **kw)),
        "cross-entropy + Lovász": ("softmax", lambda **kw: CrossEntropyLovaszLoss(ignore_class=255, **kw)),
        "cross-entropy + Lovász per image": (
            "softmax",
            lambda **kw: CrossEntropyLovaszLoss(ignore_class=255, per_image=True, **kw),
        ),
    }


def keras_model(channels: int):
    import keras

    return keras.Sequential(
        [
            keras.Input((None, None, NUM_CLASSES)),
            keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(channels, 1),
        ]
    )


def one_step(make_loss, x, y, channels, initial, scope=None):
    """The weights after one SGD step of ``fit`` on the whole ``x`` as one batch, and the logged loss."""
    import contextlib

    import keras

    with scope or contextlib.nullcontext():
        model = keras_model(channels)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=make_loss())
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.get_weights()], history.history["loss"][0]


def assert_same_step(name, got, expected, tol=2e-6):
    (weights, loss), (expected_weights, expected_loss) = got, expected
    np.testing.assert_allclose(loss, expected_loss, rtol=tol, atol=tol, err_msg=f"{name}: the logged loss")
    for w, e in zip(weights, expected_weights):
        np.testing.assert_allclose(w, e, rtol=tol, atol=tol, err_msg=f"{name}: the weights after the step")


def keras_value_and_grad(loss, y_true, y_pred, sample_weight=None, mask=None):
    """A Keras loss and its gradient with respect to ``y_pred`` (given the Keras mask ``mask``)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        if mask is not None:
            y_pred = tf.identity(y_pred)
            y_pred._keras_mask = mask  # as a layer's compute_mask leaves it
        value = loss(y_true, y_pred, sample_weight=sample_weight)
    return value, tf.convert_to_tensor(tape.gradient(value, y_pred))  # a gather's gradient: IndexedSlices


def assert_shares(name, strategy, make_loss, y_true_shards, pred_shards, y_true, y_pred, weights=None, masks=None):
    """``make_loss(global_batch=True)`` on each replica's shard, summed over the replicas, is ``make_loss()``
    on the whole batch, and each replica's gradient is its slice of the whole batch's gradient. ``weights``:
    the ``sample_weight`` of the whole batch, split as the shards are (a 0-d one goes whole to every replica).
    ``masks``: each shard's Keras mask on its ``y_pred`` (``y_true``, the whole batch's, gives its pixels as
    ignored instead)."""
    import tensorflow as tf

    whole = (tf.constant(y_true), tf.constant(y_pred), None if weights is None else tf.constant(weights))
    expected, expected_grad = keras_value_and_grad(make_loss(), *whole)
    loss = make_loss(global_batch=True)
    parts = np.cumsum([len(p) for p in pred_shards])[:-1]
    if weights is None:
        weight_shards = [np.zeros(0, "float32")] * len(pred_shards)  # not passed on
    else:
        weight_shards = np.split(weights, parts) if np.ndim(weights) else [weights] * len(pred_shards)
    mask_shards = [np.zeros(0, bool)] * len(pred_shards) if masks is None else masks
    args = tuple(distributed(strategy, s) for s in (pred_shards, y_true_shards, weight_shards, mask_shards))
    values, grads = (
        strategy.experimental_local_results(v)
        for v in strategy.run(
            lambda p, t, w, m: keras_value_and_grad(
                loss, t, p, None if weights is None else w, None if masks is None else m
            ),
            args=args,
        )
    )
    total = float(np.sum([v.numpy() for v in values]))
    np.testing.assert_allclose(total, expected.numpy(), rtol=2e-6, err_msg=f"{name}: the replicas' losses summed")
    for r, (grad, expected_part) in enumerate(zip(grads, np.split(expected_grad.numpy(), parts))):
        np.testing.assert_allclose(grad.numpy(), expected_part, rtol=2e-6, atol=1e-8, err_msg=f"{name}, replica {r}")


def check_keras_losses_in_replicas_are_shares_of_the_whole_batch(strategy):
    """Each replica's Keras loss is its share: summed over the replicas (as fit sums them), the values
    are the single-device loss, and each replica's gradient is its slice of the single-device gradient,
    also for shards of unequal size (which fit itself does not take on TF: see the step check)."""

    sizes = [3, 2, 1][:REPLICAS]
    for name, (kind, make) in keras_losses().items():
        x, y, channels = keras_data(kind, sum(sizes))
        pred = x[..., :channels].astype("float32")
        parts = np.cumsum(sizes)[:-1]
        pred_shards, label_shards = np.split(pred, parts), np.split(y, parts)

        assert_shares(name, strategy, make, label_shards, pred_shards, y, pred)


def check_keras_per_image_means_are_shares_of_the_whole_batch(strategy):
    """Per image, Keras divides each replica's (weighted) sum by its images, or by the sum of its sample weights
    (``'mean_with_sample_weight'``), and by the replicas: for every mean reduction, with and without
    ``sample_weight``, the replicas' losses summed are the single-device loss, for shards of unequal size and
    weight (5 images on 3 replicas, a replica whose weights are all 0). A 0-d weight, every image's, is exact
    where Keras divides by the images; with ``'mean_with_sample_weight'`` it divides by that one weight, and the
    loss raises rather than give a wrong share."""
    import tensorflow as tf

    sizes = [2, 2, 1][:REPLICAS]
    image_weights = np.array([0.5, 2.0, 0.0, 0.0, 3.0], "float32")[: sum(sizes)]
    parts = np.cumsum(sizes)[:-1]
    for name in ("softmax per image", "cross-entropy + Lovász per image"):
        kind, make = keras_losses()[name]
        x, y, channels = keras_data(kind, sum(sizes))
        pred = x[..., :channels].astype("float32")
        shards = np.split(y, parts), np.split(pred, parts)
        for reduction in ("mean_with_sample_weight", "sum_over_batch_size", "mean"):
            for weights in (None, image_weights, np.float32(2.0)):

                def make_loss(make=make, reduction=reduction, **kw):
                    return make(reduction=reduction, **kw)

                label = f"{name}, {reduction}, sample_weight {weights}"
                if reduction == "mean_with_sample_weight" and weights is not None and np.ndim(weights) == 0:
                    loss, args = make_loss(global_batch=True), [distributed(strategy, a) for a in shards]
                    try:
                        strategy.run(lambda t, p: loss(t, p, sample_weight=tf.constant(weights)), args=args)
                    except ValueError as error:
                        assert "mean_with_sample_weight" in str(error) and "shape [B]" in str(error), error
                    else:
                        raise AssertionError(f"{label}: a 0-d weight made a share")
                    continue
                assert_shares(label, strategy, make_loss, *shards, y, pred, weights)


def check_keras_masks_in_replicas_are_shares_of_the_whole_batch(strategy):
    """A Keras mask on each replica's ``y_pred`` leaves its pixels out of the global batch's loss: the shares sum
    to the single-device loss of the same pixels labelled ``ignore_class``, per image for every mean
    reduction (Keras would divide by the mask's pixels, not the images, were the mask left to it)."""
    sizes = [2, 2, 1][:REPLICAS]
    parts = np.cumsum(sizes)[:-1]
    for name in ("softmax", "softmax per image", "cross-entropy + Lovász per image"):
        kind, make = keras_losses()[name]
        x, y, channels = keras_data(kind, sum(sizes))
        pred = x[..., :channels].astype("float32")
        mask = x[..., 1] > -0.5
        mask[-1] = False  # an image with every pixel masked
        ignored = np.where(mask, y, 255)
        for reduction in ("sum_over_batch_size", "mean_with_sample_weight"):

            def make_loss(make=make, reduction=reduction, **kw):
                return make(reduction=reduction, **kw)

            shards = np.split(y, parts), np.split(pred, parts)
            label = f"{name}, {reduction}, masked"
            assert_shares(label, strategy, make_loss, *shards, ignored, pred, masks=np.split(mask, parts))


def check_keras_scenes_in_replicas_are_shares_of_the_whole_batch(strategy):
    """Points of scenes (``scenes_in_labels``): every replica's scenes, one set or one per scene. The scene
    indices are the batch's, and a scene may be split across replicas (``fit`` cuts the rows of points evenly,
    whatever their scenes): it is one scene, taken whole (each piece counted as a scene gave another step)."""

    from lovasz.keras import CrossEntropyLovaszLoss, LovaszSoftmaxLoss

    rng = np.random.default_rng(5)
    scene_sizes = [[4, 3], [5], [2, 2, 6]][:REPLICAS]
    preds = [rng.normal(size=(sum(s), NUM_CLASSES)).astype("float32") for s in scene_sizes]
    labels = [rng.integers(0, NUM_CLASSES, size=sum(s)) for s in scene_sizes]
    scenes = [np.repeat(np.arange(len(s)), s) for s in scene_sizes]
    offsets = np.cumsum([0] + [len(s) for s in scene_sizes])  # each replica's scenes numbered after the last's
    scenes = [scene + o for scene, o in zip(scenes, offsets)]
    scenes[1] = scenes[1] - 1  # replica 1's points continue replica 0's last scene; scene 2 has no point
    y_true = [np.stack([y, scene], 1).astype("float32") for y, scene in zip(labels, scenes)]
    whole = np.concatenate(y_true)
    losses = {
        "one set": lambda **kw: LovaszSoftmaxLoss(from_logits=True, scenes_in_labels=True, **kw),
        "per scene": lambda **kw: LovaszSoftmaxLoss(from_logits=True, per_image=True, scenes_in_labels=True, **kw),
        "cross-entropy + per scene": lambda **kw: CrossEntropyLovaszLoss(per_image=True, scenes_in_labels=True, **kw),
    }
    for name, make in losses.items():
        assert_shares(name, strategy, make, y_true, preds, whole.astype("float32"), np.concatenate(preds))


def check_keras_fit_under_mirrored_strategy_takes_the_single_device_step(strategy):
    import keras

    count = 2 * REPLICAS  # TF's Keras fails on shards of unequal size (a Conv2D error, with any loss)
    for name, (kind, make) in keras_losses().items():
        x, y, channels = keras_data(kind, count)
        keras.utils.set_random_seed(0)
        initial = keras_model(channels).get_weights()
        expected = one_step(make, x, y, channels, initial)
        got = one_step(lambda make=make: make(global_batch=True), x, y, channels, initial, strategy.scope())
        assert_same_step(name, got, expected)
        # The steps differ without global_batch (each replica's loss is its shard's), except per image.
        if "per image" not in name:
            shards = one_step(make, x, y, channels, initial, strategy.scope())
            assert not np.allclose(shards[0][0], expected[0][0], rtol=1e-4, atol=1e-6), name


def check_keras_without_global_batch_takes_the_mean_of_the_shards_losses(strategy):
    """The default: each replica's loss is its shard's, and fit's step is that of their mean (not R times it)."""
    import keras
    import tensorflow as tf

    kind, make = keras_losses()["softmax"]
    x, y, channels = keras_data(kind, 6)
    keras.utils.set_random_seed(0)
    model = keras_model(channels)
    initial = model.get_weights()
    shards = np.array_split(np.arange(len(x)), REPLICAS)
    with tf.GradientTape() as tape:
        loss = tf.add_n([make()(y[i], model(x[i])) for i in shards]) / REPLICAS
    grads = tape.gradient(loss, model.trainable_weights)
    expected = [w - 0.5 * g.numpy() for w, g in zip(initial, grads)], float(loss)
    assert_same_step(
        "the mean of the shards' losses", one_step(make, x, y, channels, initial, strategy.scope()), expected
    )


def check_keras_global_batch_refuses_sample_weight_in_batch_mode(strategy):
    from lovasz.keras import LovaszSoftmaxLoss

    x, y, _ = keras_data("softmax", 2)
    try:
        LovaszSoftmaxLoss(from_logits=True, ignore_class=255, global_batch=True)(y, x, sample_weight=np.ones(2))
    except ValueError as error:
        assert "sample_weight" in str(error) and "global_batch" in str(error), error
    else:
        raise AssertionError("sample_weight was taken by a batch-mode loss of the global batch")
    per_image = LovaszSoftmaxLoss(from_logits=True, ignore_class=255, per_image=True, global_batch=True)
    plain = LovaszSoftmaxLoss(from_logits=True, ignore_class=255, per_image=True)
    weights = np.array([1.0, 3.0])
    assert float(per_image(y, x, sample_weight=weights)) == float(plain(y, x, sample_weight=weights))
    assert LovaszSoftmaxLoss.from_config(per_image.get_config()).global_batch is True


def check_keras_on_jax_data_parallel_is_the_whole_batch():
    """Under ``DataParallel`` the train step is jitted over the global, sharded arrays: the loss is the
    whole batch's, with or without global_batch, and one step equals the single-device step."""
    import jax
    import keras

    devices = jax.devices()
    assert len(devices) == JAX_DEVICES, devices
    for name, (kind, make) in keras_losses().items():
        x, y, channels = keras_data(kind, 8)
        keras.utils.set_random_seed(0)
        initial = keras_model(channels).get_weights()
        keras.distribution.set_distribution(None)
        expected = one_step(make, x, y, channels, initial)
        parallel = keras.distribution.DataParallel(devices=devices)
        assert parallel.get_data_layout(x.shape).axes[0] == "batch", "the batch is not split across the devices"
        keras.distribution.set_distribution(parallel)
        try:
            placed = keras_model(channels).weights[0].value.sharding.device_set
            assert len(placed) == JAX_DEVICES, f"the model is not on every device: {placed}"
            for options in ({}, {"global_batch": True}):
                got = one_step(lambda make=make, options=options: make(**options), x, y, channels, initial)
                assert_same_step(f"{name}, {options}", got, expected)
        finally:
            keras.distribution.set_distribution(None)
    # ... and the batch really was split: the mean of the shards' losses is another number.
    kind, make = keras_losses()["softmax"]
    x, y, channels = keras_data(kind, 8)
    model = keras_model(channels)
    whole = float(make()(y, model(x)))
    shards = np.mean([float(make()(y[i], model(x[i]))) for i in np.array_split(np.arange(8), JAX_DEVICES)])
    assert abs(whole - shards) > 1e-4, (whole, shards)


# ----------------------------------------------------------------------------- the child process


def _tensorflow_checks() -> list:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    assert strategy.num_replicas_in_sync == REPLICAS
    checks = [
        check_tf_functions_equal_one_call_on_the_whole_batch,
        check_tf_global_batch_under_run_functions_eagerly,
        check_tf_points_of_scenes,
        check_tf_outside_replicas_global_batch_changes_nothing,
        check_keras_losses_in_replicas_are_shares_of_the_whole_batch,
        check_keras_per_image_means_are_shares_of_the_whole_batch,
        check_keras_scenes_in_replicas_are_shares_of_the_whole_batch,
        check_keras_masks_in_replicas_are_shares_of_the_whole_batch,
        check_keras_fit_under_mirrored_strategy_takes_the_single_device_step,
        check_keras_without_global_batch_takes_the_mean_of_the_shards_losses,
        check_keras_global_batch_refuses_sample_weight_in_batch_mode,
    ]
    return [(check.__name__, lambda check=check: check(strategy)) for check in checks]


def main(backend: str) -> int:
    if backend == "tensorflow":
        checks = _tensorflow_checks()
    else:
        check = check_keras_on_jax_data_parallel_is_the_whole_batch
        checks = [(check.__name__, check)]
    failed = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            check()
            print(f"ok {name} ({time.perf_counter() - start:.0f} s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc()}", flush=True)
    if failed:
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
