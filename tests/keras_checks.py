"""Keras 3 checks, run by test_keras.py once per backend in a fresh process with KERAS_BACKEND set.

Not collected by the main run (conftest.collect_ignore): Keras picks its backend at import.
"""

import json
import os
import re

import keras
import numpy as np
import pytest

from lovasz import reference as R
from lovasz.keras import (
    CrossEntropyLovaszLoss,
    LovaszHingeLoss,
    LovaszMultilabelLoss,
    LovaszSchedule,
    LovaszScheduleCallback,
    LovaszSoftmaxLoss,
)

NUM_CLASSES = 3


def test_backend_is_the_one_asked_for():
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]


def scenes(count=16, size=12, seed=0):
    """Images whose classes a small conv net can learn: the class is the brightest input channel."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, size, size, NUM_CLASSES)).astype("float32")
    y = x.argmax(-1)
    return x, y


def small_model(channels, dtype=None):
    return keras.Sequential(
        [
            keras.Input((None, None, NUM_CLASSES)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", dtype=dtype),
            keras.layers.Conv2D(channels, 1, dtype=dtype),
        ]
    )


def fit_losses(loss, y, channels, dtype=None, epochs=8):
    keras.utils.set_random_seed(0)
    x, _ = scenes()
    model = small_model(channels, dtype)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    history = model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, shuffle=False)
    return model, history.history["loss"]


def labels_and_channels(kind):
    x, y = scenes()
    if kind == "softmax":
        return y, NUM_CLASSES
    if kind == "hinge":
        return (y == 1).astype("float32")[..., None], 1
    return (x > 0.5).astype("float32"), NUM_CLASSES


LOSSES = {
    "softmax": lambda **kw: LovaszSoftmaxLoss(from_logits=True, **kw),
    "softmax-per-image": lambda **kw: LovaszSoftmaxLoss(
        from_logits=True, per_image=True, class_weights=[1, 2, 1], **kw
    ),
    "hinge": lambda **kw: LovaszHingeLoss(**kw),
    "multilabel": lambda **kw: LovaszMultilabelLoss(**kw),
    "ce+lovasz": lambda **kw: CrossEntropyLovaszLoss(ce_weight=0.5, ignore_class=255, **kw),
}


@pytest.mark.parametrize("name", LOSSES)
def test_fit_lowers_the_loss(name):
    y, channels = labels_and_channels(name.split("-")[0].replace("ce+lovasz", "softmax"))
    _, losses = fit_losses(LOSSES[name](), y, channels)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_fit_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16" if keras.backend.backend() != "torch" else "mixed_bfloat16")
    try:
        y, channels = labels_and_channels("softmax")
        model, losses = fit_losses(LovaszSoftmaxLoss(from_logits=True), y, channels, epochs=4)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[0].compute_dtype != "float32"
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_values_match_the_oracle_with_sample_weight():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 5, 4, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (3, 5, 4))
    labels[0, :2] = 255
    weight = np.array([0.5, 2.0, 1.0], "float32")
    first = np.moveaxis(logits, -1, 1)
    loss = LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255)
    per_image = R.lovasz_softmax(first, labels, per_image=True, ignore=255, from_logits=True, reduction="none")
    got = keras.ops.convert_to_numpy(loss(labels[..., None], logits, sample_weight=weight))
    np.testing.assert_allclose(got, np.sum(weight * per_image) / 3, rtol=1e-5)
    batch = LovaszSoftmaxLoss(from_logits=True, classes=[0, 2], ignore_class=255, data_format="channels_first")
    got = keras.ops.convert_to_numpy(batch(labels, first))
    expected = R.lovasz_softmax(first, labels, classes=[0, 2], ignore=255, from_logits=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    hinge = keras.ops.convert_to_numpy(LovaszHingeLoss(per_image=False)(labels[..., None] == 1, logits[..., :1]))
    np.testing.assert_allclose(hinge, R.lovasz_hinge(logits[..., 0], labels == 1, per_image=False), rtol=1e-5)
    targets = (logits > 0).astype("int32")
    multi = keras.ops.convert_to_numpy(LovaszMultilabelLoss(data_format="channels_last")(targets, -logits))
    np.testing.assert_allclose(multi, R.lovasz_multilabel(-first, np.moveaxis(targets, -1, 1)), rtol=1e-5)


def test_sample_weight_is_one_weight_per_image():
    """A weight per pixel (Keras' form for segmentation; fit's class_weight= makes one) would broadcast against
    the images' losses into a product of means, and a batch-mode loss would be scaled by the weights' mean:
    both raise. ``[B, 1]`` weighs the images as ``[B]`` does."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 4, 5, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (3, 4, 5, 1))
    weight = np.array([1.0, 0.0, 2.0], "float32")
    for loss in [LovaszSoftmaxLoss(from_logits=True, per_image=True), CrossEntropyLovaszLoss(per_image=True)]:
        expected = keras.ops.convert_to_numpy(loss(labels, logits, sample_weight=weight))
        got = keras.ops.convert_to_numpy(loss(labels, logits, sample_weight=weight[:, None]))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        for pixel_weight in [np.ones((3, 4, 5, 1), "float32"), np.ones((3, 4, 5), "float32")]:
            with pytest.raises(ValueError, match=r"sample_weight must hold one weight per image.*got shape \[3, 4, 5"):
                loss(labels, logits, sample_weight=pixel_weight)
    for loss in [LovaszSoftmaxLoss(from_logits=True), CrossEntropyLovaszLoss(), LovaszHingeLoss(per_image=False)]:
        y = labels if not isinstance(loss, LovaszHingeLoss) else labels == 1
        x = logits if not isinstance(loss, LovaszHingeLoss) else logits[..., :1]
        with pytest.raises(
            ValueError, match=r"sample_weight does not apply to a batch-mode loss \(without per_image\).*per_image=True"
        ):
            loss(y, x, sample_weight=weight)


def test_evaluate_with_weights_of_another_shape_after_a_first():
    """On TF a second evaluate with a sample_weight of another shape traces again with the weight's rank unknown,
    where Keras' own squeeze failed inside ('Cannot take the length of shape with unknown rank'), for [B, 1]
    too; the per-image check did not run either."""
    x, y = scenes(count=4, size=6)
    model = small_model(NUM_CLASSES)
    model.compile(loss=LovaszSoftmaxLoss(from_logits=True, per_image=True))
    weight = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    first = model.evaluate(x, y, batch_size=4, sample_weight=weight, verbose=0)
    assert model.evaluate(x, y, batch_size=4, sample_weight=weight[:, None], verbose=0) == pytest.approx(first)
    with pytest.raises(Exception, match=r"sample_weight must hold one weight per image"):  # (an assert on TF)
        model.evaluate(x, y, batch_size=4, sample_weight=np.ones((4, 6, 6), "float32"), verbose=0)


@pytest.mark.parametrize("name", LOSSES)
def test_config_round_trips(name):
    loss = LOSSES[name]()
    config = loss.get_config()
    assert type(loss).from_config(config).get_config() == config
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == config


@pytest.mark.parametrize("dtype", ["float64", "mixed_bfloat16", keras.DTypePolicy("float16")])
@pytest.mark.parametrize("name", LOSSES)
def test_config_keeps_the_dtype(name, dtype):
    # Keras's own losses leave dtype out of their config: a float64 loss came back float32
    loss = LOSSES[name](dtype=dtype)
    again = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
    assert again.dtype == loss.dtype != "float32"
    assert type(loss).from_config(loss.get_config()).dtype == loss.dtype
    assert LOSSES[name]().get_config()["dtype"] is None  # none given: floatx where it is loaded


def test_saved_model_keeps_its_loss(tmp_path):
    y, channels = labels_and_channels("softmax")
    loss = LovaszSoftmaxLoss(from_logits=True, classes=[0, 1], ignore_class=255, class_weights=[1, 3, 1])
    model, _ = fit_losses(loss, y, channels, epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is LovaszSoftmaxLoss
    assert loaded.loss.get_config() == loss.get_config()
    x, _ = scenes()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-5)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="data_format"):
        LovaszSoftmaxLoss(data_format="NHWC")
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes="some")
    with pytest.raises(TypeError, match="ignore_class"):
        LovaszHingeLoss(ignore_class="void")
    with pytest.raises(
        ValueError, match=r"y_true must have shape \[2, 5, 4\] to match y_pred \[2, 5, 4, 3\] \(channels-last"
    ):
        LovaszSoftmaxLoss()(np.zeros((2, 4, 4)), np.zeros((2, 5, 4, 3), "float32"))
    # in the user's layout on every backend (torch's named the channels-first [2, 3, 5, 4] it was handed)
    with pytest.raises(
        ValueError, match=r"^y_true must have the shape of y_pred \[2, 5, 4, 3\] .*; got \[2, 5, 4, 2\]$"
    ):
        LovaszMultilabelLoss()(np.zeros((2, 5, 4, 2)), np.zeros((2, 5, 4, 3), "float32"))
    # the hinge's too, with the shapes given (its function named labels and logits, and the squeezed shape)
    for y_true, y_pred in [((2, 16, 16), (2, 16, 16, 2)), ((2, 8, 16), (2, 16, 16, 1)), ((2, 8, 16, 1), (2, 16, 16))]:
        with pytest.raises(
            ValueError,
            match=rf"^y_true must have the shape of y_pred \[B, \*spatial\], or that shape less y_pred's size-1 "
            rf"channel axis \(last\); got y_true {re.escape(str(list(y_true)))} for y_pred "
            rf"{re.escape(str(list(y_pred)))}$",
        ):
            LovaszHingeLoss()(np.zeros(y_true), np.zeros(y_pred, "float32"))


def test_cross_entropy_lovasz_is_the_weighted_sum_ignoring_the_same_pixels():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 5))
    labels[0, 0] = 255
    valid = labels != 255
    z = logits - logits.max(-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid].mean()
    lovasz = R.lovasz_softmax(np.moveaxis(logits, -1, 1), labels, ignore=255, from_logits=True)
    loss = CrossEntropyLovaszLoss(ce_weight=0.5, lovasz_weight=2.0, ignore_class=255)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(labels, logits)), 0.5 * ce + 2 * lovasz, rtol=1e-5)
    scores = logits[..., 0]
    binary = (labels == 1).astype("int32")
    bce = np.mean(np.maximum(scores, 0) - scores * binary + np.log1p(np.exp(-np.abs(scores))), axis=(1, 2))
    hinge = R.lovasz_hinge(scores, binary, reduction="none")
    per_image = CrossEntropyLovaszLoss("binary", reduction=None)(binary[..., None], scores[..., None])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_image), bce + hinge, rtol=1e-5)


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_cross_entropy_lovasz_leaves_nan_and_inf_at_ignored_pixels_out(mode):
    """A NaN or an infinity at an ignored pixel made the masked cross-entropy NaN (NaN * 0): the loss and the
    gradient of clean logits now, and a zero gradient at the ignored pixel."""
    rng = np.random.default_rng(6)
    channels = 1 if mode == "binary" else NUM_CLASSES
    logits = rng.normal(size=(2, 4, 5, channels)).astype("float32")
    shape = (2, 4, 5) if mode == "multiclass" else logits.shape
    labels = rng.integers(0, NUM_CLASSES if mode == "multiclass" else 2, shape)
    labels[0, 1, 2] = 255
    at = np.broadcast_to((labels == 255)[..., None] if mode == "multiclass" else labels == 255, logits.shape)
    loss = CrossEntropyLovaszLoss(mode, ignore_class=255)
    expected, expected_grad = value_and_grad(loss, labels, logits)
    for junk in (np.nan, np.inf, -np.inf):
        value, grad = value_and_grad(loss, labels, np.where(at, np.float32(junk), logits))
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        np.testing.assert_allclose(grad, np.where(at, 0, expected_grad), rtol=1e-5, atol=1e-8)
        assert np.all(grad[at] == 0)


def test_schedule_callback_moves_from_cross_entropy_to_lovasz():
    y, channels = labels_and_channels("softmax")
    loss = CrossEntropyLovaszLoss(ignore_class=255)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((loss.ce_weight, loss.lovasz_weight, logs["loss"]))

    keras.utils.set_random_seed(0)
    x, _ = scenes()
    model = small_model(channels)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    schedule = LovaszScheduleCallback(LovaszSchedule(warmup=2, ramp=2))
    model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[schedule, Record()])
    assert [s[:2] for s in seen] == [(1.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (0.0, 1.0)]
    # the last epochs report the Lovász loss itself, so the train step was rebuilt with the new weights
    lovasz = keras.ops.convert_to_numpy(LovaszSoftmaxLoss(from_logits=True)(y, model.predict(x, verbose=0)))
    assert abs(seen[-1][2] - lovasz) < 0.1, (seen, lovasz)


def test_schedule_callback_needs_the_combined_loss():
    y, channels = labels_and_channels("softmax")
    x, _ = scenes()
    model = small_model(channels)
    model.compile(loss=LovaszSoftmaxLoss(from_logits=True))
    with pytest.raises(TypeError, match="CrossEntropyLovaszLoss"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LovaszScheduleCallback(LovaszSchedule(warmup=1))])


def test_bad_schedules_weights_and_shapes_name_themselves():
    """Each came as an error from inside (an AttributeError in fit, 'could not convert string to float', a
    backend's broadcast error, torch's IndexError) or named a placeholder ([0, 1073741823] for classes)."""
    with pytest.raises(TypeError, match=r"^schedule must be a lovasz.schedule.LovaszSchedule .*; got str"):
        LovaszScheduleCallback("x")
    with pytest.raises(TypeError, match=r"^loss must be a lovasz.keras.CrossEntropyLovaszLoss or None; got"):
        LovaszScheduleCallback(LovaszSchedule(1), loss=LovaszSoftmaxLoss())
    for bad in ("abc", 2.0, [1, None]):
        with pytest.raises(TypeError, match=r"^class_weights must be \[C\] real numbers \(one weight per class\)"):
            LovaszSoftmaxLoss(class_weights=bad)
    with pytest.raises(ValueError, match=r"^classes must be class indices >= 0; got -1"):
        LovaszSoftmaxLoss(classes=[-1])
    y, logits = np.zeros((2, 4, 4), int), np.zeros((2, 4, 4, NUM_CLASSES), "float32")
    for weights in (np.ones(3), np.ones((3, 1))):
        with pytest.raises(ValueError, match=r"^sample_weight must hold one weight per image \(2 in y_pred\); got"):
            LovaszSoftmaxLoss(per_image=True)(y, logits, sample_weight=weights)
    for loss in (LovaszSoftmaxLoss(), LovaszMultilabelLoss()):
        with pytest.raises(ValueError, match=r"must have shape \[B, C, \*spatial\].*; got \[2\]"):
            loss([0, 1], np.array([0.1, 0.9], "float32"))
    # nested lists are arrays, as Keras' own losses take them
    got = keras.ops.convert_to_numpy(LovaszSoftmaxLoss()([[0, 1]], [[[0.9, 0.1], [0.2, 0.8]]]))
    assert float(got) == pytest.approx(R.lovasz_softmax([[[0.9, 0.2], [0.1, 0.8]]], [[0, 1]]))


def value_and_grad(loss, y_true, y_pred):
    """``loss(y_true, y_pred)`` and its gradient with respect to ``y_pred``, as NumPy, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(y_pred)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = loss(y_true, x)
            total = tf.reduce_sum(out)
        grad = tape.gradient(total, x, unconnected_gradients="zero")
        return out.numpy(), tf.convert_to_tensor(grad).numpy()  # a gather's gradient comes as IndexedSlices
    if backend == "jax":
        import jax

        (_, out), grad = jax.value_and_grad(lambda x: (lambda o: (o.sum(), o))(loss(y_true, x)), has_aux=True)(
            jax.numpy.asarray(y_pred)
        )
        return np.asarray(out), np.asarray(grad)
    import torch

    x = torch.tensor(y_pred, requires_grad=True)
    out = loss(y_true, x)
    out.sum().backward()
    return out.detach().numpy(), x.grad.numpy()


EMPTY_LOSSES = {
    **LOSSES,
    "softmax-per-image-none": lambda: LovaszSoftmaxLoss(per_image=True, ignore_class=255, reduction=None),
    "hinge-batch": lambda: LovaszHingeLoss(per_image=False),
    "ce+lovasz-binary": lambda: CrossEntropyLovaszLoss("binary"),
}


@pytest.mark.parametrize("name", EMPTY_LOSSES)
@pytest.mark.parametrize("shape", [(0, 4, 5), (2, 0, 5)], ids=["empty-batch", "empty-images"])
def test_empty_input_gives_zero_and_a_zero_gradient(name, shape):
    loss = EMPTY_LOSSES[name]()
    channels = 1 if "binary" in name or name.startswith("hinge") else NUM_CLASSES
    y_pred = np.zeros(shape + (channels,), "float32")
    y_true = np.zeros(shape + ((NUM_CLASSES,) if name == "multilabel" else (1,)), "float32")
    value, grad = value_and_grad(loss, y_true, y_pred)
    assert value.shape == ((shape[0],) if name.endswith("-none") else ())
    np.testing.assert_array_equal(value, 0)
    assert grad.shape == y_pred.shape and not grad.any()


def test_labels_as_masks_floats_and_small_integers():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(2, 4, 5)).astype("float32")
    masks = rng.integers(0, 2, (2, 4, 5))
    hinge = LovaszHingeLoss(ignore_class=255)
    expected = keras.ops.convert_to_numpy(hinge(masks, scores))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hinge(masks[..., None], scores)), expected, rtol=1e-6)
    logits = rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 5))
    labels[0, 0] = 255
    softmax = LovaszSoftmaxLoss(from_logits=True, ignore_class=255)
    expected = keras.ops.convert_to_numpy(softmax(labels, logits))
    for dtype in ("uint8", "int16", "float16", "float64"):
        got = keras.ops.convert_to_numpy(softmax(labels.astype(dtype)[..., None], logits))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    half = labels.astype("float32")
    half[1, 1, 1] = 1.5
    with pytest.raises(ValueError, match=r"labels must be whole numbers \(class indices\).*found 1.5"):
        softmax(half, logits)
    with pytest.raises(ValueError, match="labels must be 0 or 1 at every non-ignored pixel; found 0.5"):
        hinge(np.full((2, 4, 5), 0.5, "float32"), scores)
    with pytest.raises(ValueError, match="targets must be 0 or 1 at every non-ignored pixel; found 0.5"):
        LovaszMultilabelLoss()(np.full(logits.shape, 0.5, "float32"), logits)


ONE_HOT_LOSSES = {
    "softmax": lambda **kw: LovaszSoftmaxLoss(from_logits=True, **kw),
    "softmax-per-image": lambda **kw: LovaszSoftmaxLoss(from_logits=True, per_image=True, classes="all", **kw),
    "ce+lovasz": lambda **kw: CrossEntropyLovaszLoss(ce_weight=0.5, class_weights=[1.0, 2.0, 0.5], **kw),
}


def one_hot_oracle(name, logits, labels):
    """The loss of channels-last ``logits`` against class indices by the NumPy oracle (the mean over the images
    per image, as Keras reduces them)."""
    first = np.moveaxis(logits, -1, 1)
    if name == "softmax":
        return R.lovasz_softmax(first, labels, from_logits=True)
    if name == "softmax-per-image":
        return R.lovasz_softmax(first, labels, from_logits=True, per_image=True, classes="all")
    w = [1.0, 2.0, 0.5]
    return 0.5 * cross_entropy_numpy(logits, labels, weights=w) + R.lovasz_softmax(
        first, labels, from_logits=True, weights=w
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", ONE_HOT_LOSSES)
def test_one_hot_targets_give_the_loss_and_gradient_of_class_indices(name, data_format):
    """One-hot ``y_true`` shaped like ``y_pred`` (Keras' categorical convention, and lovasz.torch.LovaszLoss's
    MONAI form) is read along the class axis, not as one foreground probability per pixel of ``[B, H, W, C]``."""
    rng = np.random.default_rng(31)
    logits = rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 5))
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]  # [B, H, W, C]
    expected = one_hot_oracle(name, logits, labels)
    if data_format == "channels_first":
        logits, one_hot = np.moveaxis(logits, -1, 1), np.moveaxis(one_hot, -1, 1)
    loss = ONE_HOT_LOSSES[name](data_format=data_format)
    value, grad = value_and_grad(loss, one_hot, logits)
    index_value, index_grad = value_and_grad(loss, labels, logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(value, index_value, rtol=1e-6)
    np.testing.assert_allclose(grad, index_grad, rtol=1e-5, atol=1e-8)
    assert np.abs(grad).sum() > 0
    integer_one_hot = value_and_grad(loss, one_hot.astype("int32"), logits)[0]  # as fit's to_categorical ints
    np.testing.assert_allclose(integer_one_hot, expected, rtol=1e-5)


def test_one_hot_rows_must_hold_one_one():
    """An all-zero row (a void pixel) or a soft target is no class: ValueError, as lovasz.torch.LovaszLoss raises,
    not class 0; void pixels are given as class indices with ignore_class."""
    rng = np.random.default_rng(32)
    logits = rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float32")
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, (2, 4, 5))]
    void = one_hot.copy()
    void[0, 0, :2] = 0
    soft = 0.9 * one_hot + 0.1 / NUM_CLASSES  # label smoothing: no class indices
    for loss in [LovaszSoftmaxLoss(from_logits=True), CrossEntropyLovaszLoss(ignore_class=255)]:
        with pytest.raises(
            ValueError, match=r"must be one-hot along the class axis -1 .*ignore_class.*\[B, H, W, 1\]\); 2 pixels"
        ):
            loss(void, logits)
        with pytest.raises(ValueError, match=r"y_true shaped like y_pred \[2, 4, 5, 3\] must be one-hot.*; 40 pixels"):
            loss(soft, logits)


def test_one_hot_rows_are_checked_in_a_tensorflow_graph():
    """Keras' fit on TensorFlow runs the loss in tf.function: an assert names the rows there."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a tf.function graph: the TensorFlow backend only")
    import tensorflow as tf

    rng = np.random.default_rng(33)
    logits = tf.constant(rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float32"))
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 5))
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]
    loss = LovaszSoftmaxLoss(from_logits=True)
    in_graph = tf.function(lambda y_true, y_pred: loss(y_true, y_pred))
    np.testing.assert_allclose(in_graph(one_hot, logits), loss(labels, logits), rtol=1e-6)
    one_hot[1, 2, 3] = 0
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be one-hot.*pixels that are not:\] \[1\]"):
        in_graph(one_hot, logits)


@pytest.mark.parametrize("ignore_class", [None, NUM_CLASSES])
def test_bad_labels_where_no_assert_is_compiled(ignore_class):
    """XLA and jax.jit compile no assert: a label out of range or a void one-hot row made a class read as
    background (or class 0) without a word; there the loss is NaN now (with ignore_class=C too, which the void
    row must not become). torch.compile's graph keeps lovasz.torch's assert, which fails."""
    torch_backend = keras.backend.backend() == "torch"
    if torch_backend and ignore_class is not None:
        pytest.skip("torch.compile keeps lovasz.torch's assert: one case (compiling takes 20 s each)")
    x, y = scenes(count=4, size=6)
    out_of_range = y.copy()
    out_of_range[0, 0, 0] = 7
    void = np.eye(NUM_CLASSES, dtype="float32")[y]
    void[1, 2, 3] = 0
    losses = [LovaszSoftmaxLoss(from_logits=True, ignore_class=ignore_class), CrossEntropyLovaszLoss()]
    for loss in losses[:1] if torch_backend else losses:
        model = small_model(NUM_CLASSES)
        model.compile(loss=loss, jit_compile=True)
        assert np.isfinite(model.evaluate(x, y, batch_size=4, verbose=0))
        for bad in [out_of_range, void]:
            if torch_backend:
                with pytest.raises(RuntimeError, match=r"labels must be in \[0, 2\]"):
                    model.evaluate(x, bad, batch_size=4, verbose=0)
            else:
                assert np.isnan(model.evaluate(x, bad, batch_size=4, verbose=0))


def test_one_channel_sigmoid_output_keeps_its_mask_target():
    """``y_pred [B, H, W, 1]`` is one channel of sigmoid output: its 0/1 target of the same shape is a mask, not
    one-hot (one-hot needs two channels or more)."""
    rng = np.random.default_rng(34)
    probas = rng.uniform(size=(2, 4, 5, 1)).astype("float32")
    masks = rng.integers(0, 2, (2, 4, 5, 1))
    expected = R.lovasz_softmax(probas[..., 0], masks[..., 0])  # one foreground probability per pixel
    np.testing.assert_allclose(value(LovaszSoftmaxLoss(), masks, probas), expected, rtol=1e-5)
    first = LovaszSoftmaxLoss(data_format="channels_first")
    np.testing.assert_allclose(value(first, masks[:, None, ..., 0], probas[:, None, ..., 0]), expected, rtol=1e-5)


def test_classes_are_never_truncated():
    with pytest.raises(TypeError, match="classes must contain integer class indices; got an array of dtype float64"):
        LovaszSoftmaxLoss(classes=np.array([1.7]))
    with pytest.raises(ValueError, match=r"classes must be a 1-D list of class indices; got .*shape \[1, 2\]"):
        LovaszMultilabelLoss(classes=np.array([[0, 1]]))
    assert LovaszSoftmaxLoss(classes=np.array([0, 2])).classes == [0, 2]


def count_tf_kernel_calls(monkeypatch):
    """A list that grows by one at each call of lovasz.tf's C kernel (the TensorFlow backend only)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("lovasz.tf's paths: the TensorFlow backend only")
    import lovasz._ckernel as C
    import lovasz._tf_rows as rows  # the engine lovasz.tf looks up when it runs: patched there

    if C.kernel() is None:
        pytest.skip("lovasz was installed without its C kernel")
    calls, host = [], rows._host_rows
    monkeypatch.setattr(rows, "_host_rows", lambda *args, **kwargs: calls.append(1) or host(*args, **kwargs))
    return calls


def test_tensorflow_fit_takes_the_c_kernel_by_default(monkeypatch):
    import tensorflow as tf

    calls = count_tf_kernel_calls(monkeypatch)
    y, channels = labels_and_channels("softmax")
    model, losses = fit_losses(LovaszSoftmaxLoss(from_logits=True), y, channels)
    if all(d.device_type == "CPU" for d in tf.config.list_physical_devices()):
        assert model.jit_compile is False  # Keras 3: jit_compile="auto" compiles with XLA only where a GPU is
        assert len(calls) >= 8 * 4  # every step of every epoch
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", ["softmax-per-image", "hinge", "multilabel"])
def test_tensorflow_fit_with_jit_compile_sorts_in_xla(name, monkeypatch):
    calls = count_tf_kernel_calls(monkeypatch)
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    y, channels = labels_and_channels(name.split("-")[0])
    x, _ = scenes()
    model = small_model(channels)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=LOSSES[name](), jit_compile=True)
    losses = model.fit(x, y, batch_size=4, epochs=8, verbose=0, shuffle=False).history["loss"]
    assert model.jit_compile is True and calls == []
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    # the same model and data, without XLA: the C kernel (on a CPU) gives the same losses
    keras.utils.set_random_seed(0)
    again = small_model(channels)
    again.compile(optimizer=keras.optimizers.Adam(0.02), loss=LOSSES[name](), jit_compile=False)
    expected = again.fit(x, y, batch_size=4, epochs=8, verbose=0, shuffle=False).history["loss"]
    assert calls or not all(d.device_type == "CPU" for d in tf.config.list_logical_devices())
    np.testing.assert_allclose(losses, expected, rtol=1e-3)


def test_tensorflow_fit_gathers_a_mostly_ignored_grid(monkeypatch):
    """LiDAR-like labels, 90% ignored: Keras' train step (tf.function, no XLA on a CPU) gathers the valid
    pixels at every step and learns as the dense path does."""
    count_tf_kernel_calls(monkeypatch)  # skips on other backends and without the kernel
    import tensorflow as tf

    import lovasz._tf_scenes as S

    if not all(d.device_type == "CPU" for d in tf.config.list_logical_devices()):
        pytest.skip("the gathering takes the C kernel: a CPU only")

    gathered, host = [], S._host_scene_rows
    monkeypatch.setattr(S, "_host_scene_rows", lambda *a, **k: gathered.append(1) or host(*a, **k))
    x, y = scenes()
    y = np.where(np.random.default_rng(1).random(y.shape) < 0.9, 255, y)
    loss = lambda: LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255)  # noqa: E731
    _, losses = fit_losses(loss(), y, NUM_CLASSES)
    assert len(gathered) >= 8 * 4  # every step of every epoch
    monkeypatch.setattr(S, "COMPACT_BELOW", -1.0)  # never gathers: the dense path
    del gathered[:]
    _, dense = fit_losses(loss(), y, NUM_CLASSES)
    assert not gathered
    np.testing.assert_allclose(losses, dense, rtol=1e-4)
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------- the schedule's weights as variables


def softmax_numpy(z, axis=-1):
    z = z - z.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


def cross_entropy_numpy(logits, labels, ignore=255, weights=None):
    """Mean (weighted as PyTorch's ``weight``) softmax cross-entropy of channels-last logits over valid pixels."""
    valid = labels != ignore
    safe = np.where(valid, labels, 0)
    nll = -np.log(np.take_along_axis(softmax_numpy(logits.astype("float64")), safe[..., None], -1)[..., 0])
    w = valid * (1.0 if weights is None else np.asarray(weights, "float64")[safe])
    return (nll * w).sum() / w.sum()


class CountCalls:
    """Counts the runs of ``CrossEntropyLovaszLoss.call``'s Python body: once per trace on TensorFlow and
    JAX (the train step is compiled), once per step on torch (eager)."""

    def __init__(self, monkeypatch):
        self.count, call = 0, CrossEntropyLovaszLoss.call

        def counted(loss, y_true, y_pred):
            self.count += 1
            return call(loss, y_true, y_pred)

        monkeypatch.setattr(CrossEntropyLovaszLoss, "call", counted)


class BatchLosses(keras.callbacks.Callback):
    """Each step's loss, from the running mean that Keras logs (batches of equal size), and the weights."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.means, self.weights = loss, [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append((self.loss.ce_weight, self.loss.lovasz_weight))

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    def steps(self):
        means = np.array(self.means)
        k = np.arange(1, len(means) + 1)
        return means * k - np.concatenate([[0.0], means[:-1] * k[:-1]])


def frozen_model(loss, channels=NUM_CLASSES):
    """A model that a zero learning rate keeps as it is, so each step's loss is known from its predictions."""
    keras.utils.set_random_seed(0)
    model = small_model(channels)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    return model


def expected_steps(model, x, y, weights, batch_size):
    """``ce_w * CE + lovasz_w * Lovász`` of each batch, from the model's predictions, by NumPy and the oracle."""
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0)).astype("float64")
    out = []
    for step, (ce_w, lovasz_w) in enumerate(weights):
        part = slice(step * batch_size, (step + 1) * batch_size)
        ce = cross_entropy_numpy(logits[part], y[part])
        lovasz = R.lovasz_softmax(np.moveaxis(logits[part], -1, 1), y[part], ignore=255, from_logits=True)
        out.append(ce_w * ce + lovasz_w * lovasz)
    return np.array(out)


def test_schedule_by_batch_changes_the_weights_without_a_retrace(monkeypatch):
    x, y = scenes()
    y[:, 0] = 255
    loss = CrossEntropyLovaszLoss(ignore_class=255)
    model = frozen_model(loss)
    ramp = LovaszSchedule(warmup=0, ramp=4, final_ce_weight=0.5)  # both terms on at every step
    fit = dict(batch_size=2, epochs=1, verbose=0, shuffle=False)
    model.fit(x, y, callbacks=[LovaszScheduleCallback(ramp, by="batch")], **fit)  # traces once
    calls = CountCalls(monkeypatch)
    model.fit(x, y, **fit)
    plain = calls.count
    record = BatchLosses(loss)
    model.optimizer.iterations.assign(0)  # the schedule counts the optimizer's steps: from 0 again
    model.fit(x, y, callbacks=[LovaszScheduleCallback(ramp, by="batch"), record], **fit)
    # the ramp changed the weights at 4 of the 8 steps and traced nothing more than a plain fit
    assert calls.count - plain == plain == (8 if keras.backend.backend() == "torch" else 0)
    assert record.weights == [ramp.weights(t) for t in range(8)]
    assert len(set(record.weights)) == 4
    np.testing.assert_allclose(record.steps(), expected_steps(model, x, y, record.weights, 2), rtol=2e-4)


def test_schedule_by_batch_counts_steps_with_steps_per_execution():
    """With ``steps_per_execution=k`` Keras calls back once every ``k`` steps, with the first step's index:
    the schedule counts the steps run (it counted calls: a ramp k times too slow), across epochs too, and an
    epoch's last call of fewer steps counts those."""
    if keras.backend.backend() == "torch":
        pytest.skip("Keras' torch backend runs one step per call (steps_per_execution must be 1)")
    x, y = scenes(count=20)
    loss = CrossEntropyLovaszLoss()
    model = small_model(NUM_CLASSES)
    model.compile(optimizer="sgd", loss=loss, steps_per_execution=4)
    schedule, seen = LovaszSchedule(warmup=4, ramp=8), []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append((batch, (loss.ce_weight, loss.lovasz_weight)))

    callbacks = [LovaszScheduleCallback(schedule, by="batch"), Record()]
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, shuffle=False, callbacks=callbacks)  # 10 steps an epoch
    steps = [0, 4, 8, 10, 14, 18]  # each call's first step, counted over both epochs
    assert [batch for batch, _ in seen] == [0, 4, 8] * 2
    assert [weights for _, weights in seen] == [schedule.weights(t) for t in steps]


def test_schedule_by_batch_counts_the_optimizers_steps(tmp_path):
    """``by='batch'`` counts ``optimizer.iterations``, as Keras' learning-rate schedules do: a model saved after 4
    steps and fit again with a new callback goes on at step 4 (it started over at 0); and data of unknown length
    with ``steps_per_execution=3``, whose last call runs fewer steps and is followed by an empty one, ran the
    count ahead (0.875, the weight of step 6, at step 4)."""
    x, y = scenes(count=8)
    schedule = LovaszSchedule(warmup=0, ramp=8)  # lovasz_weight (t + 1) / 8 at step t
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(self.model.loss.lovasz_weight)

    model = frozen_model(CrossEntropyLovaszLoss())
    model.fit(x, y, batch_size=2, verbose=0, callbacks=[LovaszScheduleCallback(schedule, by="batch")])
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    loaded.fit(x, y, batch_size=2, verbose=0, callbacks=[LovaszScheduleCallback(schedule, by="batch"), Record()])
    assert seen == [schedule.weights(t)[1] for t in range(4, 8)]

    class Restore(keras.callbacks.Callback):  # as BackupAndRestore, after the schedule in the list, restores it
        def on_train_begin(self, logs=None):
            self.model.optimizer.iterations.assign(4)

    seen.clear()  # (the first resumed epoch ran on the weights of step 0)
    model = frozen_model(CrossEntropyLovaszLoss())
    model.fit(
        x, y, batch_size=2, verbose=0, callbacks=[LovaszScheduleCallback(schedule, by="batch"), Restore(), Record()]
    )
    assert seen == [schedule.weights(t)[1] for t in range(4, 8)]
    if keras.backend.backend() == "torch":
        return  # (one step per call)
    import tensorflow as tf

    model = small_model(NUM_CLASSES)
    model.compile(optimizer="sgd", loss=CrossEntropyLovaszLoss(), steps_per_execution=3)
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda *_: True).batch(2)  # 4 batches
    seen.clear()
    model.fit(unknown, epochs=2, verbose=0, callbacks=[LovaszScheduleCallback(schedule, by="batch"), Record()])
    assert seen[3:5] == [schedule.weights(4)[1], schedule.weights(7)[1]]  # epoch 1's calls: steps 4 and 7


def test_schedule_turning_a_term_on_or_off_retraces_once_each(monkeypatch):
    x, y = scenes()
    loss = CrossEntropyLovaszLoss(ignore_class=255)
    model = frozen_model(loss)
    fit = dict(batch_size=2, epochs=1, verbose=0, shuffle=False)
    model.fit(x, y, **fit)
    calls, record = CountCalls(monkeypatch), BatchLosses(loss)
    schedule = LovaszSchedule(warmup=2, ramp=2)  # CE alone, both, Lovász alone: three term sets
    model.optimizer.iterations.assign(0)  # the schedule counts the optimizer's steps: from 0 again
    model.fit(x, y, callbacks=[LovaszScheduleCallback(schedule, by="batch"), record], **fit)
    assert record.weights == [schedule.weights(t) for t in range(8)]
    if keras.backend.backend() != "torch":
        assert calls.count == 3, calls.count  # (1, 0) at step 0, (0.5, 0.5) at step 2, (0, 1) at step 3
    np.testing.assert_allclose(record.steps(), expected_steps(model, x, y, record.weights, 2), rtol=2e-4)


def test_validation_follows_the_schedule_when_a_term_turns_on_or_off():
    """The schedule rebuilt the train step when a term turned on or off, not the test step: val_loss and evaluate
    kept the old terms (0.0 for CE alone on a frozen model, where the Lovász term alone was due)."""
    x, y = scenes(count=8)
    loss = CrossEntropyLovaszLoss()
    model = frozen_model(loss)
    schedule = LovaszScheduleCallback(LovaszSchedule(warmup=1, ramp=2))
    fit = dict(batch_size=4, epochs=3, verbose=0, shuffle=False, callbacks=[schedule])
    history = model.fit(x, y, validation_data=(x, y), validation_batch_size=8, **fit)  # (the Lovász of all 8)
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0)).astype("float64")
    ce = cross_entropy_numpy(logits, y)
    lovasz = R.lovasz_softmax(np.moveaxis(logits, -1, 1), y, from_logits=True)
    expected = [ce, 0.5 * ce + 0.5 * lovasz, lovasz]  # the weights of epochs 0, 1 and 2
    np.testing.assert_allclose(history.history["val_loss"], expected, rtol=2e-4)
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=8, verbose=0), lovasz, rtol=2e-4)


def test_a_weight_set_by_hand_turning_a_term_on_is_seen():
    """A term of weight 0 at the trace was left out of the compiled step for good: on TensorFlow a fit after
    ``ce_weight = 1`` kept the Lovász term alone. Without a schedule both terms are in the step (TensorFlow:
    seen; torch: eager); on JAX, whose compiled step holds the weights as traced, a warning says so."""
    x, y = scenes(count=4)
    loss = CrossEntropyLovaszLoss(ce_weight=0.0)
    model = frozen_model(loss)
    model.fit(x, y, batch_size=4, verbose=0)
    if keras.backend.backend() == "jax":
        with pytest.warns(UserWarning, match=r"ce_weight changed after a JAX step was compiled.*make_train_function"):
            loss.ce_weight = 1.0
        return
    loss.ce_weight = 1.0
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0)).astype("float64")
    expected = cross_entropy_numpy(logits, y) + R.lovasz_softmax(np.moveaxis(logits, -1, 1), y, from_logits=True)
    np.testing.assert_allclose(model.fit(x, y, batch_size=4, verbose=0).history["loss"], [expected], rtol=2e-4)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), expected, rtol=2e-4)


def test_a_model_trained_on_a_schedule_saves_and_loads(tmp_path):
    x, y = scenes()
    loss = CrossEntropyLovaszLoss(ignore_class=255, class_weights=[1.0, 2.0, 0.5])
    model = frozen_model(loss)
    model.fit(
        x, y, batch_size=4, epochs=1, verbose=0, callbacks=[LovaszScheduleCallback(LovaszSchedule(1, 2), by="batch")]
    )
    assert (loss.ce_weight, loss.lovasz_weight) == (0.0, 1.0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is CrossEntropyLovaszLoss and loaded.loss.get_config() == loss.get_config()
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]  # the weights are no model state
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-5)
    # The old loss given to a schedule for the reloaded model drove a loss the model no longer used, silently
    restart = LovaszSchedule(warmup=1)
    with pytest.raises(ValueError, match=r"is not the loss this model is compiled with.*loss=model.loss"):
        loaded.fit(x, y, epochs=1, verbose=0, callbacks=[LovaszScheduleCallback(restart, loss)])
    loaded.fit(x, y, epochs=1, verbose=0, callbacks=[LovaszScheduleCallback(restart, loaded.loss)])
    assert (loaded.loss.ce_weight, loaded.loss.lovasz_weight) == (1.0, 0.0)
    loss.ce_weight = 0.25  # the attribute and its variable move together
    assert float(keras.ops.convert_to_numpy(loss._variables[0])) == 0.25 and loss.get_config()["ce_weight"] == 0.25
    with pytest.raises(ValueError, match=r"^ce_weight must be a finite non-negative number; got 'high' of type str"):
        loss.ce_weight = "high"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 10**400, np.bool_(True), "1"])
@pytest.mark.parametrize("name", ["ce_weight", "lovasz_weight"])
def test_combined_loss_term_weights_are_finite_non_negative_numbers(name, bad):
    """NaN or inf term weights made every loss NaN without a word (the setter checked the type only, the
    constructor not even that); the checks and messages are lovasz.torch's and LovaszSchedule's."""
    pattern = rf"^{name} must be a finite non-negative number; got "
    with pytest.raises(ValueError, match=pattern):
        CrossEntropyLovaszLoss(**{name: bad})
    loss = CrossEntropyLovaszLoss(ce_weight=np.float32(0.5))
    with pytest.raises(ValueError, match=pattern):
        setattr(loss, name, bad)
    assert (loss.ce_weight, loss.lovasz_weight) == (0.5, 1.0)  # a refused value changes nothing


# ----------------------------------------------------------------------------- the options of the combined loss


def test_combined_loss_class_weights_and_include_background():
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 5))
    labels[0, 0] = 255
    first = np.moveaxis(logits, -1, 1)
    w = [1.0, 2.5, 0.5]
    loss = CrossEntropyLovaszLoss(ignore_class=255, class_weights=w, ce_weight=0.5)
    lovasz = R.lovasz_softmax(first, labels, ignore=255, from_logits=True, weights=w)
    expected = 0.5 * cross_entropy_numpy(logits, labels, weights=w) + lovasz
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(labels, logits)), expected, rtol=1e-5)
    # include_background=False: channel 0 leaves the Lovász average only (MONAI's DiceCELoss)
    loss = CrossEntropyLovaszLoss(ignore_class=255, include_background=False)
    lovasz = R.lovasz_softmax(first, labels, ignore=255, from_logits=True, weights=[0, 1, 1])
    expected = cross_entropy_numpy(logits, labels) + lovasz
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(labels, logits)), expected, rtol=1e-5)
    alone = LovaszSoftmaxLoss(from_logits=True, ignore_class=255, include_background=False, class_weights=w)
    expected = R.lovasz_softmax(first, labels, ignore=255, from_logits=True, weights=[0, 2.5, 0.5])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(alone(labels, logits)), expected, rtol=1e-5)


def bce_numpy(scores, targets, valid):
    values = np.maximum(scores, 0) - scores * targets + np.log1p(np.exp(-np.abs(scores)))
    return values * valid


def test_combined_loss_hinge_variants_and_channel_weights():
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(2, 4, 5, NUM_CLASSES)).astype("float64")
    targets = rng.integers(0, 2, logits.shape)
    targets[0, 0, 0] = 255
    valid = targets != 255
    w = np.array([0.5, 1.0, 2.0])
    loss = CrossEntropyLovaszLoss("multilabel", class_weights=w, margin="elu", symmetric=True, ignore_class=255)
    per_image_bce = (bce_numpy(logits, np.where(valid, targets, 0), valid) * w).sum((1, 2, 3)) / (valid * w).sum(
        (1, 2, 3)
    )
    lovasz = R.lovasz_multilabel(
        np.moveaxis(logits, -1, 1),
        np.moveaxis(targets, -1, 1),
        ignore=255,
        weights=w,
        margin="elu",
        symmetric=True,
        reduction="none",
    )
    got = keras.ops.convert_to_numpy(loss(targets, logits.astype("float32")))
    np.testing.assert_allclose(got, np.mean(per_image_bce + lovasz), rtol=1e-5)
    scores, masks = logits[..., 0], (targets[..., 0] == 1).astype("int32")
    binary = CrossEntropyLovaszLoss("binary", ce_weight=0, margin="elu", symmetric=True)
    expected = R.lovasz_hinge(scores, masks, margin="elu", symmetric=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(binary(masks, scores.astype("float32"))), expected, rtol=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_combined_loss_of_one_channel_takes_a_binary_cross_entropy(per_image):
    """In 'multiclass' mode one channel is the foreground's logit, as for the Lovász term (and as in
    lovasz.torch): a categorical cross-entropy over one class was 0 whatever the prediction."""
    rng = np.random.default_rng(4)
    y_pred = rng.normal(size=(2, 3, 4, 1)).astype("float32")
    y_true = rng.integers(0, 2, (2, 3, 4))
    y_true[0, 0] = 255
    options = dict(lovasz_weight=0.0, ignore_class=255, per_image=per_image)
    got = keras.ops.convert_to_numpy(CrossEntropyLovaszLoss(**options)(y_true, y_pred))
    expected = keras.ops.convert_to_numpy(CrossEntropyLovaszLoss("binary", **options)(y_true, y_pred))
    assert float(expected) > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # class_weights weigh its two classes, as the two-channel form [0, x] does (they were left out: 0.7835
    # where 0.8144), and must be two
    two = np.concatenate([np.zeros_like(y_pred), y_pred], -1)
    weighted = dict(options, class_weights=[1.0, 5.0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(CrossEntropyLovaszLoss(**weighted)(y_true, y_pred)),
        keras.ops.convert_to_numpy(CrossEntropyLovaszLoss(**weighted)(y_true, two)),
        rtol=1e-5,
    )
    with pytest.raises(
        ValueError, match=r"^class_weights must have one weight per class, 2 for y_pred \[2, 3, 4, 1\]; got 3"
    ):
        CrossEntropyLovaszLoss(**dict(options, class_weights=[1.0, 2.0, 3.0]))(y_true, y_pred)


@pytest.mark.parametrize("name", ["per_image", "from_logits", "include_background", "global_batch", "scenes_in_labels"])
def test_flags_must_be_true_or_false(name):
    """A string or a number counted by its truth (per_image='False' as True) before; NumPy's bools pass."""
    for bad in ["False", "no", 1, None]:
        with pytest.raises(TypeError, match=rf"^{name} must be True or False; got "):
            LovaszSoftmaxLoss(**{name: bad})
    assert getattr(LovaszSoftmaxLoss(**{name: np.bool_(False)}), name) is False


def test_combined_loss_rejects_options_its_mode_has_not():
    with pytest.raises(ValueError, match="class_weights and include_background .* mode='binary' has one"):
        CrossEntropyLovaszLoss("binary", class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="margin and symmetric are variants of the hinge"):
        CrossEntropyLovaszLoss("multiclass", margin="elu")
    with pytest.raises(TypeError, match="include_background must be True or False"):
        LovaszSoftmaxLoss(include_background="no")
    with pytest.raises(ValueError, match="include_background=False .* 2 or more channels"):
        LovaszSoftmaxLoss(include_background=False)(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 1), "float32"))
    with pytest.raises(ValueError, match="class_weights must have one weight per class, 3"):
        LovaszSoftmaxLoss(include_background=False, class_weights=[1, 2])(
            np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 3), "float32")
        )


def test_class_weights_of_the_wrong_length_name_class_weights():
    """With include_background left True the error came from the functions, naming their ``weights``."""
    y = np.zeros((1, 2, 2))
    for loss, channels, classes in (
        (LovaszSoftmaxLoss(class_weights=[1, 2]), 3, 3),
        (LovaszSoftmaxLoss(class_weights=[1, 2, 3]), 1, 2),  # one sigmoid channel: two classes
        (LovaszMultilabelLoss(class_weights=[1, 2]), 3, 3),
        (CrossEntropyLovaszLoss("multiclass", class_weights=[1, 2]), 3, 3),
    ):
        y_true = np.zeros((1, 2, 2, channels)) if isinstance(loss, LovaszMultilabelLoss) else y
        with pytest.raises(ValueError, match=rf"^class_weights must have one weight per class, {classes} for y_pred"):
            loss(y_true, np.zeros((1, 2, 2, channels), "float32"))
    # one sigmoid channel, two weights: accepted
    assert np.isfinite(float(LovaszSoftmaxLoss(class_weights=[1, 2])(y, np.full((1, 2, 2, 1), 0.3, "float32"))))


def test_sample_weights_known_must_be_finite_and_not_negative():
    """A NaN weight gave a NaN loss, a negative one a loss that training pushes up, without a word."""
    y, probs = np.zeros((2, 4, 4), int), np.full((2, 4, 4, NUM_CLASSES), 1 / NUM_CLASSES, "float32")
    loss = LovaszSoftmaxLoss(per_image=True)
    for bad in ([1.0, -1.0], [1.0, np.nan], np.array([np.inf, 1.0], "float32")):
        with pytest.raises(ValueError, match=r"^sample_weight must be finite numbers >= 0 \(one weight per image\)"):
            loss(y, probs, sample_weight=bad)
        with pytest.raises(ValueError, match=r"^sample_weight must be finite numbers >= 0"):
            loss(y, probs, sample_weight=keras.ops.convert_to_tensor(np.asarray(bad, "float32")))
    good = float(keras.ops.convert_to_numpy(loss(y, probs, sample_weight=[0.0, 2.0])))
    assert good == pytest.approx(float(keras.ops.convert_to_numpy(loss(y, probs))))


CONFIG_LOSSES = {
    "ce+lovasz-multilabel": lambda: CrossEntropyLovaszLoss(
        "multilabel", class_weights=[1, 2, 1], margin="elu", symmetric=True, include_background=False
    ),
    "ce+lovasz-binary-scenes": lambda: CrossEntropyLovaszLoss("binary", scenes_in_labels=True, num_scenes=4),
    "softmax-scenes": lambda: LovaszSoftmaxLoss(per_image=True, scenes_in_labels=True, include_background=False),
}


@pytest.mark.parametrize("name", CONFIG_LOSSES)
def test_config_of_the_new_options_round_trips(name):
    loss = CONFIG_LOSSES[name]()
    config = loss.get_config()
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == config


# ----------------------------------------------------------------------------- points of scenes


def points(sizes=(5, 3, 6), seed=21, channels=NUM_CLASSES, multilabel=False):
    """Logits ``[N, C]`` of scenes of ``sizes`` points, shuffled (the scenes need not be grouped), their
    labels (``[N]``, or ``[N, C]`` 0/1), each point's scene, some points ignored (255)."""
    rng = np.random.default_rng(seed)
    scene = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(scene))
    scene = scene[order]
    logits = rng.normal(size=(len(scene), channels)).astype("float32")
    labels = rng.integers(0, 2 if multilabel else channels, (len(scene), channels) if multilabel else len(scene))
    labels[:2] = 255
    return logits, labels, scene


def packed(labels, scene):
    """``y_true`` with the scene as its last column: ``[N, 2]``, or ``[N, C + 1]`` for multi-label targets."""
    return np.concatenate([labels.reshape(len(scene), -1), scene[:, None]], 1)


def oracle_per_scene(function, logits, labels, scene, num_scenes=None, **kwargs):
    """Each scene's loss by the NumPy oracle on its points alone, as one image ``[1, C, n]`` (0 for no point)."""
    out = []
    for s in range(num_scenes or scene.max() + 1):
        at = scene == s
        if not at.any():
            out.append(0.0)
            continue
        prediction = logits[at].T[None] if logits.ndim == 2 else logits[at][None]
        target = labels[at].T[None] if labels.ndim == 2 else labels[at][None]
        out.append(function(prediction, target, per_image=False, ignore=255, **kwargs))
    return np.array(out)


def functional_per_scene(function, logits, labels, scene, **kwargs):
    """Each scene's loss by the active backend's own function and its own form of scenes."""
    backend = keras.backend.backend()
    module = __import__(f"lovasz.{ {'tensorflow': 'tf'}.get(backend, backend) }", fromlist=["_"])
    kwargs.update(per_image=True, ignore=255, reduction="none")
    if backend == "tensorflow":
        order = np.argsort(scene, kind="stable")
        splits = np.concatenate([[0], np.cumsum(np.bincount(scene))])
        out = getattr(module, function)(logits[order], labels[order], row_splits=splits, **kwargs)
    elif backend == "jax":
        out = getattr(module, function)(logits, labels, segment_ids=scene, **kwargs)
    else:
        import torch

        out = getattr(module, function)(torch.tensor(logits), torch.tensor(labels), batch=torch.tensor(scene), **kwargs)
    return keras.ops.convert_to_numpy(out)


def value(loss, y_true, y_pred):
    return keras.ops.convert_to_numpy(loss(y_true, y_pred))


def test_softmax_of_scenes_matches_the_functions_and_the_oracle():
    logits, labels, scene = points()
    y_true = packed(labels, scene)
    expected = oracle_per_scene(R.lovasz_softmax, logits, labels, scene, from_logits=True)
    np.testing.assert_allclose(
        functional_per_scene("lovasz_softmax", logits, labels, scene, from_logits=True), expected, rtol=1e-5
    )
    options = dict(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True)
    np.testing.assert_allclose(value(LovaszSoftmaxLoss(**options, reduction=None), y_true, logits), expected, rtol=1e-5)
    np.testing.assert_allclose(value(LovaszSoftmaxLoss(**options), y_true, logits), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        value(LovaszSoftmaxLoss(**options, reduction="sum"), y_true, logits), expected.sum(), rtol=1e-5
    )
    # a static num_scenes above the batch's: the absent scenes are 0 and leave the mean alone
    padded = LovaszSoftmaxLoss(**options, num_scenes=5, reduction=None)
    np.testing.assert_allclose(value(padded, y_true, logits), np.concatenate([expected, [0, 0]]), rtol=1e-5)
    np.testing.assert_allclose(
        value(LovaszSoftmaxLoss(**options, num_scenes=5), y_true, logits), expected.mean(), rtol=1e-5
    )
    # without per_image all points are one set
    batch = LovaszSoftmaxLoss(from_logits=True, ignore_class=255, scenes_in_labels=True, classes="all")
    one_set = R.lovasz_softmax(logits.T[None], labels[None], ignore=255, from_logits=True, classes="all")
    np.testing.assert_allclose(value(batch, y_true, logits), one_set, rtol=1e-5)


def test_hinge_and_multilabel_of_scenes_match_the_oracle():
    logits, labels, scene = points(seed=22, channels=1, multilabel=True)
    scores, masks = logits[:, 0], labels[:, 0]
    expected = oracle_per_scene(R.lovasz_hinge, scores, masks, scene, margin="elu")
    np.testing.assert_allclose(
        functional_per_scene("lovasz_hinge", scores, masks, scene, margin="elu"), expected, rtol=1e-5
    )
    hinge = LovaszHingeLoss(ignore_class=255, margin="elu", scenes_in_labels=True, num_scenes=3, reduction=None)
    np.testing.assert_allclose(value(hinge, packed(masks, scene), logits), expected, rtol=1e-5)  # y_pred [N, 1]
    logits, targets, scene = points(seed=23, multilabel=True)
    w = [1.0, 0.5, 2.0]
    expected = oracle_per_scene(R.lovasz_multilabel, logits, targets, scene, weights=w, symmetric=True)
    multi = LovaszMultilabelLoss(ignore_class=255, class_weights=w, symmetric=True, scenes_in_labels=True)
    np.testing.assert_allclose(value(multi, packed(targets, scene), logits), expected.mean(), rtol=1e-5)


def test_combined_loss_of_scenes_is_the_points_cross_entropy_plus_the_scenes_lovasz():
    logits, labels, scene = points(seed=24)
    loss = CrossEntropyLovaszLoss(per_image=True, ignore_class=255, scenes_in_labels=True, ce_weight=0.5)
    lovasz = oracle_per_scene(R.lovasz_softmax, logits, labels, scene, from_logits=True).mean()
    expected = 0.5 * cross_entropy_numpy(logits, labels) + lovasz
    np.testing.assert_allclose(value(loss, packed(labels, scene), logits), expected, rtol=1e-5)


def test_scenes_of_equal_size_give_the_dense_per_image_loss_and_gradient():
    size, count = 6, 3
    logits, labels, scene = points(sizes=(size,) * count, seed=25)
    by_scene = np.argsort(scene, kind="stable")
    dense = LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255)
    scenes = LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True)
    image_logits = logits[by_scene].reshape(count, size, NUM_CLASSES)  # [B, N, C]: an image per scene
    expected, expected_grad = value_and_grad(dense, labels[by_scene].reshape(count, size), image_logits)
    got, grad = value_and_grad(scenes, packed(labels, scene), logits)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(grad[by_scene].reshape(image_logits.shape), expected_grad, rtol=1e-4, atol=1e-7)


class PointBatches(keras.utils.PyDataset):
    """Batches of point clouds of several scenes, ``(x [N, 3], y [N, 2])``, the class the brightest feature."""

    def __init__(self, count=4):
        super().__init__()
        self.batches = []
        rng = np.random.default_rng(26)
        for _ in range(count):
            sizes = rng.integers(20, 40, 3)
            x = rng.normal(size=(int(sizes.sum()), NUM_CLASSES)).astype("float32")
            scene = np.repeat(np.arange(3), sizes)
            self.batches.append((x, packed(x.argmax(-1), scene).astype("float32")))

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def test_fit_on_scenes_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((NUM_CLASSES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(NUM_CLASSES)]
    )
    loss = CrossEntropyLovaszLoss(per_image=True, scenes_in_labels=True, num_scenes=3)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    losses = model.fit(PointBatches(), epochs=6, verbose=0).history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses


def test_a_compiled_fit_on_scenes_equals_the_eager_one():
    """jit_compile=True: XLA on TF, jax.jit, torch.compile on the torch backend (whose scene path it had not run)."""
    x, y = PointBatches(1).batches[0]
    histories = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((NUM_CLASSES,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(NUM_CLASSES)]
        )
        loss = CrossEntropyLovaszLoss(per_image=True, scenes_in_labels=True, num_scenes=3)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=len(x), epochs=3, verbose=0, shuffle=False).history["loss"]
        histories.append([*history, model.evaluate(x, y, batch_size=len(x), verbose=0)])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-5)


def test_jax_fit_on_scenes_asks_for_num_scenes():
    if keras.backend.backend() != "jax":
        pytest.skip("the JAX backend's jit needs a static number of scenes; the others read it")
    model = keras.Sequential([keras.Input((NUM_CLASSES,)), keras.layers.Dense(NUM_CLASSES)])
    model.compile(loss=LovaszSoftmaxLoss(from_logits=True, per_image=True, scenes_in_labels=True))
    with pytest.raises(TypeError, match="pass num_scenes= to the loss"):
        model.fit(PointBatches(1), epochs=1, verbose=0)


def test_bad_scenes_name_themselves():
    logits, labels, scene = points()
    loss = LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True)
    with pytest.raises(ValueError, match=r"y_true \[N, 2\]: \(label, scene\); got y_true \[14\]"):
        loss(labels, logits)
    with pytest.raises(ValueError, match=r"scene indices, whole numbers >= 0; found \d\.5"):
        loss(packed(labels, scene + 0.5), logits)
    with pytest.raises(ValueError, match=r"below num_scenes=2; found 2"):
        LovaszSoftmaxLoss(scenes_in_labels=True, num_scenes=2)(packed(labels, scene), logits)
    with pytest.raises(ValueError, match="sample_weight does not apply with scenes_in_labels=True"):
        loss(packed(labels, scene), logits, sample_weight=np.ones(len(scene), "float32"))
    with pytest.raises(ValueError, match="num_scenes goes with scenes_in_labels=True"):
        LovaszSoftmaxLoss(num_scenes=3)
    with pytest.raises(ValueError, match="num_scenes must be a non-negative int; got -1"):
        LovaszHingeLoss(scenes_in_labels=True, num_scenes=-1)
    with pytest.raises(TypeError, match="num_scenes must be a non-negative int; got 2.0"):
        LovaszHingeLoss(scenes_in_labels=True, num_scenes=2.0)
    assert LovaszHingeLoss(scenes_in_labels=np.bool_(True), num_scenes=np.int64(2)).num_scenes == 2


def test_bad_scenes_name_themselves_in_a_tensorflow_graph():
    """In tf.function (fit on TensorFlow) a bad scene index fails an assert that names the scene column and
    num_scenes, not the row splits the loss builds from it; XLA compiles no assert, and the points of a scene
    from num_scenes on take no part there (as documented), nor do those of a negative or fractional index (a
    negative one sorted first and took scene 0's place)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function and XLA: the TensorFlow backend only")
    import tensorflow as tf

    logits, labels, scene = points()
    options = dict(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True, reduction=None)
    loss = LovaszSoftmaxLoss(**options, num_scenes=3)
    in_graph = tf.function(lambda y_true, y_pred: loss(y_true, y_pred))
    np.testing.assert_allclose(in_graph(packed(labels, scene), logits), value(loss, packed(labels, scene), logits))
    outside = np.where(scene == 2, 5, scene)
    for bad, shown in [(outside, "5"), (scene - 1, "-1"), (scene + 0.5, r"\d\.5")]:
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            in_graph(packed(labels, bad), logits)
        message = str(error.value)
        assert "row_splits" not in message, message
        pattern = r"last column of y_true \(scenes_in_labels=True\) must hold scene indices, whole numbers >= 0, "
        assert re.search(pattern + rf"below num_scenes=3; found:\] \[{shown}\]", message), message
    xla = tf.function(lambda y_true, y_pred: loss(y_true, y_pred), jit_compile=True)
    kept = scene != 2
    expected = value(loss, packed(labels[kept], scene[kept]), logits[kept])  # scene 2's points: no part
    for no_scene in (5, -1, 2.5):
        got = xla(packed(labels, np.where(scene == 2, no_scene, scene)), logits)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    empty = np.zeros((0, 2), "float32"), np.zeros((0, NUM_CLASSES), "float32")  # no point: nothing to assert
    np.testing.assert_array_equal(in_graph(*empty), np.zeros(3))


def no_assert_compiled(function):
    """``function`` compiled where no assert runs: XLA on TensorFlow, ``jax.jit`` on JAX (None on torch, whose
    ``torch.compile`` has lovasz.torch's own asserts)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    if backend == "jax":
        import jax

        return jax.jit(function)
    return None


SCENE_LOSSES = {
    "softmax per scene": lambda **kw: LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255, **kw),
    "softmax, one set": lambda **kw: LovaszSoftmaxLoss(from_logits=True, ignore_class=255, **kw),
    "softmax without ignore_class": lambda **kw: LovaszSoftmaxLoss(from_logits=True, per_image=True, **kw),
    "hinge, one set": lambda **kw: LovaszHingeLoss(per_image=False, ignore_class=255, **kw),
    "ce+lovasz per scene": lambda **kw: CrossEntropyLovaszLoss(per_image=True, ignore_class=255, **kw),
    "ce alone, one set": lambda **kw: CrossEntropyLovaszLoss(ignore_class=255, lovasz_weight=0.0, **kw),
}


@pytest.mark.parametrize("name", SCENE_LOSSES)
def test_points_of_no_scene_take_no_part_where_no_assert_runs(name):
    """Under XLA and jax.jit a point whose scene index is not a whole number in [0, num_scenes) takes no part, in
    either term and with or without per_image, as documented: the points of the other scenes give the loss and
    the gradient. Before, only TF's per-scene term left them out; per_image=False and the cross-entropy counted
    them, a -1 made JAX count an absent scene 0 in the mean, and a fraction joined the scene it truncates to."""
    logits, labels, scene = points(sizes=(4, 5, 6))
    if "hinge" in name:
        labels, logits = np.where(labels == 255, 255, labels % 2), logits[:, 0]
    if "without" in name:
        labels = np.where(labels == 255, 0, labels)
    loss = SCENE_LOSSES[name](scenes_in_labels=True, num_scenes=3)
    compiled = no_assert_compiled(lambda y_true, y_pred: loss(y_true, y_pred))
    if compiled is None:
        pytest.skip("torch.compile: lovasz.torch's own check raises (tests/test_torch_scenes.py)")
    kept = scene != 0  # scene 0's points get no scene: absent from the mean, as a scene with no point
    expected, expected_grad = value_and_grad(loss, packed(labels[kept], scene[kept]), logits[kept])
    for no_scene in (3, 7, -1, 1.5, 0.5):
        got, grad = value_and_grad(compiled, packed(labels, np.where(kept, scene, no_scene)).astype("float32"), logits)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        np.testing.assert_allclose(grad[kept], expected_grad, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(grad[~kept], 0.0)
    # with a Keras mask of y_pred ([N], or [N, 1] with a size-1 channel axis) too: both leave points out
    mask = np.arange(len(scene)) % 4 != 1
    expected = value(with_keras_mask(loss, mask[kept]), packed(labels[kept], scene[kept]), logits[kept])
    y_true = packed(labels, np.where(kept, scene, -1)).astype("float32")
    for shape in ([-1], [-1, 1]):
        masked = no_assert_compiled(with_keras_mask(loss, mask.reshape(shape)))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(masked(y_true, logits)), expected, rtol=1e-5)


def test_y_true_must_have_a_row_per_point():
    """TensorFlow's points of scenes gathered y_pred in the labels' order: 20 rows of labels for 30 points gave
    the loss of the first 20 without a word (31 rows: a GatherV2 error from inside)."""
    logits, labels, scene = points(sizes=(10, 10, 10))
    for make in [
        lambda: LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True),
        lambda: CrossEntropyLovaszLoss(per_image=True, ignore_class=255, scenes_in_labels=True),
    ]:
        for rows in (20, 31):
            y_true = packed(np.resize(labels, rows), np.resize(scene, rows))
            with pytest.raises(
                ValueError,
                match=rf"y_true must have a row per point of y_pred; got y_true of {rows} rows for y_pred \[30, 3\]",
            ):
                make()(y_true, logits)
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    loss = LovaszSoftmaxLoss(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True, num_scenes=3)
    spec = tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, NUM_CLASSES], tf.float32)
    in_graph = tf.function(lambda y_true, y_pred: loss(y_true, y_pred), input_signature=spec)
    short = packed(labels[:20], scene[:20]).astype("float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true must have a row per point of y_pred"):
        in_graph(short, logits)
    xla = tf.function(lambda y_true, y_pred: loss(y_true, y_pred), input_signature=spec, jit_compile=True)
    assert np.isnan(xla(short, logits).numpy())
    whole = packed(labels, scene).astype("float32")
    np.testing.assert_allclose(xla(whole, logits), value(loss, whole, logits), rtol=1e-5)


def test_hinge_of_points_takes_one_score_a_point():
    """An [N, 2] y_pred to the hinge of points: named as given in batch mode too (it was '[1, 5, 2]')."""
    logits, labels, scene = points()
    for per_image in (True, False):
        loss = LovaszHingeLoss(per_image=per_image, ignore_class=255, scenes_in_labels=True)
        with pytest.raises(ValueError, match=r"y_pred must be points-first, \[N\] \(or \[N, 1\].*; got \[14, 2\]"):
            loss(packed(labels % 2, scene), logits[:, :2])


# ----------------------------------------------------------------------------- Keras masks on y_pred

MASKED_LOSSES = {
    "softmax": lambda **kw: LovaszSoftmaxLoss(from_logits=True, **kw),
    "softmax-per-image": lambda **kw: LovaszSoftmaxLoss(from_logits=True, per_image=True, **kw),
    "softmax-channels-first": lambda **kw: LovaszSoftmaxLoss(data_format="channels_first", **kw),
    "hinge": lambda **kw: LovaszHingeLoss(**kw),
    "hinge-batch": lambda **kw: LovaszHingeLoss(per_image=False, symmetric=True, **kw),
    "multilabel": lambda **kw: LovaszMultilabelLoss(per_image=True, **kw),
    "ce+lovasz": lambda **kw: CrossEntropyLovaszLoss(ce_weight=0.5, class_weights=[1.0, 2.0, 0.5], **kw),
    "ce+lovasz-binary": lambda **kw: CrossEntropyLovaszLoss("binary", **kw),
    "ce+lovasz-multilabel": lambda **kw: CrossEntropyLovaszLoss("multilabel", per_image=True, **kw),
}


def with_keras_mask(loss, mask):
    """``loss`` called on a ``y_pred`` that carries the Keras mask ``mask``, as a layer's ``compute_mask`` gives it."""
    from keras.src.backend import set_keras_mask

    def masked(y_true, y_pred):
        y_pred = keras.ops.convert_to_tensor(y_pred)
        set_keras_mask(y_pred, keras.ops.convert_to_tensor(mask))
        return loss(y_true, y_pred)

    return masked


class _MaskedBy(keras.layers.Layer):
    """The first input, carrying a Keras mask of the pixels where the second input's channel 0 is below 0.7."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return keras.ops.less(inputs[1][..., 0], 0.7)


@pytest.mark.parametrize("per_image", [True, False])
def test_a_keras_mask_in_every_step_of_a_model(per_image):
    """A model whose output carries a Keras mask: fit, evaluate and test_on_batch all give the oracle's loss
    of the unmasked pixels. On JAX the test step (jitted) found the mask again on y_pred and weighed the loss
    by it (20.62 where 0.7110 with reduction='sum'; a broadcast error inside Keras for other shapes)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 3, 5, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(2, 3, 5))
    inputs = keras.Input((3, 5, 3))
    conv = keras.layers.Conv2D(NUM_CLASSES, 1)
    model = keras.Model(inputs, _MaskedBy()([conv(inputs), inputs]))
    kernel = (np.random.default_rng(7).normal(size=(1, 1, 3, NUM_CLASSES)) * 0.8).astype("float32")
    conv.set_weights([kernel, np.zeros(NUM_CLASSES, "float32")])
    logits = np.moveaxis(x.astype(np.float64) @ kernel.reshape(3, NUM_CLASSES), -1, 1)
    kept = np.where(x[..., 0] < 0.7, y, 255)
    oracle = R.lovasz_softmax(logits, kept, ignore=255, per_image=per_image, from_logits=True, reduction="sum")
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=LovaszSoftmaxLoss(from_logits=True, per_image=per_image, reduction="sum"),
    )
    assert model.evaluate(x, y, batch_size=2, verbose=0) == pytest.approx(oracle, rel=1e-5)
    assert float(model.test_on_batch(x, y)) == pytest.approx(oracle, rel=1e-5)
    assert model.fit(x, y, batch_size=2, epochs=1, verbose=0).history["loss"][0] == pytest.approx(oracle, rel=1e-5)


def masked_case(name, seed=31):
    """``y_true``, ``y_pred`` ``[2, 4, 5, C]`` (``[2, C, 4, 5]`` channels-first) for the loss ``name``, a pixel
    mask ``[2, 4, 5]`` and ``y_true`` with the masked pixels labelled 255 (every channel's, multi-label)."""
    rng = np.random.default_rng(seed)
    binary = "hinge" in name or "binary" in name
    multilabel = "multilabel" in name
    logits = rng.normal(size=(2, 4, 5, 1 if binary else NUM_CLASSES)).astype("float32")
    if multilabel:
        y_true = rng.integers(0, 2, logits.shape).astype("float32")
    else:
        y_true = rng.integers(0, 2 if binary else NUM_CLASSES, (2, 4, 5)).astype("float32")
    mask = rng.random((2, 4, 5)) > 0.4
    ignored = np.where(mask[..., None] if multilabel else mask, y_true, 255).astype("float32")
    if name.endswith("channels-first"):
        logits = np.moveaxis(logits, -1, 1)
        logits = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # probabilities
    return y_true, logits, mask, ignored


@pytest.mark.parametrize("ignore_class", [None, 255])
@pytest.mark.parametrize("name", MASKED_LOSSES)
def test_a_keras_mask_leaves_its_pixels_out(name, ignore_class):
    """A Keras mask on ``y_pred`` (a layer's ``compute_mask``) leaves the pixels it masks out of the loss, as
    ``ignore_class`` does: the same value and gradient, an exact zero gradient at masked pixels, whatever the
    mask's form ([B, *spatial], with the size-1 channel axis, or [B] for whole images). Keras alone would weigh
    the loss's values by it: in batch mode it was ignored, per image it failed in a broadcast."""
    y_true, y_pred, mask, ignored = masked_case(name)
    expected, expected_grad = value_and_grad(MASKED_LOSSES[name](ignore_class=255), ignored, y_pred)
    loss = MASKED_LOSSES[name](ignore_class=ignore_class)
    channel_axis = 1 if name.endswith("channels-first") else -1
    for form in (mask, np.expand_dims(mask, channel_axis)):
        got, grad = value_and_grad(with_keras_mask(loss, form), y_true, y_pred)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
        assert not np.expand_dims(~mask, channel_axis).repeat(y_pred.shape[channel_axis], channel_axis)[grad != 0].any()
    images = np.array([True, False])
    second_ignored = np.where(images.reshape((2,) + (1,) * (y_true.ndim - 1)), y_true, 255).astype("float32")
    whole = value(MASKED_LOSSES[name](ignore_class=255), second_ignored, y_pred)
    np.testing.assert_allclose(value(with_keras_mask(loss, images), y_true, y_pred), whole, rtol=1e-5)


def test_a_keras_mask_of_points_and_bad_masks():
    logits, labels, scene = points()
    mask = np.arange(len(scene)) % 3 != 0
    options = dict(from_logits=True, per_image=True, ignore_class=255, scenes_in_labels=True, reduction=None)
    loss = LovaszSoftmaxLoss(**options)
    expected = value(loss, packed(np.where(mask, labels, 255), scene), logits)
    np.testing.assert_allclose(value(with_keras_mask(loss, mask), packed(labels, scene), logits), expected, rtol=1e-6)
    y_true, y_pred, mask, _ = masked_case("softmax")
    message = r"Keras mask of y_pred must mark pixels, shape \[2, 4, 5\] .*got shape \[4, 5\]"
    with pytest.raises(ValueError, match=message):
        with_keras_mask(LovaszSoftmaxLoss(), mask[0])(y_true, y_pred)
    wrong = y_true.copy()
    wrong[0, 0, 0] = -1  # a label that is no class, where the mask keeps the pixel: the range error, as unmasked
    mask[0, 0, 0] = True
    for loss in (LovaszSoftmaxLoss(), CrossEntropyLovaszLoss()):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*found -1"):
            loss(wrong, y_pred)
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*found -1"):
            with_keras_mask(loss, mask)(wrong, y_pred)
    y_pred = keras.ops.convert_to_tensor(y_pred)
    from keras.src.backend import get_keras_mask, set_keras_mask

    set_keras_mask(y_pred, keras.ops.convert_to_tensor(mask))
    LovaszSoftmaxLoss()(y_true, y_pred)
    assert get_keras_mask(y_pred) is not None  # the caller's tensor keeps its mask


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_a_keras_mask_of_points_in_both_terms(mode, per_image):
    """Points of scenes in every mode of the combined loss: both terms leave the masked points out."""
    multilabel = mode == "multilabel"
    logits, labels, scene = points(channels=1 if mode == "binary" else NUM_CLASSES, multilabel=multilabel)
    labels = labels % 2 if mode == "binary" else labels
    mask = np.arange(len(scene)) % 3 != 1
    ignored = np.where(mask[:, None] if multilabel else mask, labels, 255)
    loss = CrossEntropyLovaszLoss(mode, ignore_class=255, per_image=per_image, scenes_in_labels=True)
    expected = value(loss, packed(ignored, scene), logits)
    np.testing.assert_allclose(value(with_keras_mask(loss, mask), packed(labels, scene), logits), expected, rtol=1e-6)


class MaskedPixels(keras.layers.Layer):
    """``inputs[0]`` with a Keras mask of the pixels whose first input channel (``inputs[1]``) is above -0.3."""

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return keras.ops.greater(inputs[1][..., 0], -0.3)


def test_fit_with_a_masking_layer_takes_the_step_of_ignored_labels():
    """``fit`` on a model whose output carries a Keras mask takes the same steps as on the same model without
    it, given the masked pixels as ignore_class: the mask reaches the loss, its gradient and the reduction."""
    x, y = scenes()
    ignored = np.where(x[..., 0] > -0.3, y, 255)

    def trained(masked):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None, None, NUM_CLASSES))
        outputs = keras.layers.Conv2D(NUM_CLASSES, 3, padding="same")(inputs)
        if masked:
            outputs = MaskedPixels()([outputs, inputs])
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=CrossEntropyLovaszLoss(ignore_class=255))
        model.fit(x, y if masked else ignored, batch_size=4, epochs=2, verbose=0, shuffle=False)
        return [keras.ops.convert_to_numpy(w) for w in model.weights]

    for a, b in zip(trained(True), trained(False)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_labels_whose_class_axis_is_unknown_when_traced():
    """TensorFlow only (the one backend with dims unknown when traced: tf.data from a generator, decoded
    images): ``y_true`` of ``y_pred``'s rank with an unknown class axis is told apart when the graph runs, a
    label map ``[B, H, W, 1]`` or one-hot, as eagerly (it was read as one channel's masks, a wrong value)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("only TensorFlow traces a dim as unknown")
    import tensorflow as tf

    rng = np.random.default_rng(8)
    logits = tf.constant(rng.normal(size=(2, 5, 6, NUM_CLASSES)).astype("float32"))
    labels = rng.integers(0, NUM_CLASSES, (2, 5, 6))
    one_hot = tf.one_hot(labels, NUM_CLASSES)
    label_map = tf.constant(labels[..., None].astype("float32"))
    unknown = tf.TensorSpec([None, None, None, None], tf.float32)
    predictions = tf.TensorSpec([None, None, None, NUM_CLASSES], tf.float32)  # the classes must be known
    for loss in (
        LovaszSoftmaxLoss(from_logits=True),
        LovaszSoftmaxLoss(from_logits=True, per_image=True),
        CrossEntropyLovaszLoss(),
    ):
        graph = tf.function(lambda y, p, loss=loss: loss(y, p), input_signature=[unknown, predictions])
        expected = float(loss(label_map, logits))
        assert float(loss(one_hot, logits)) == pytest.approx(expected, rel=1e-6)
        assert float(graph(one_hot, logits)) == pytest.approx(expected, rel=1e-6)
        assert float(graph(label_map, logits)) == pytest.approx(expected, rel=1e-6)
        with pytest.raises(tf.errors.InvalidArgumentError, match="size-1 class axis"):
            graph(one_hot[..., :2], logits)
        with pytest.raises(tf.errors.InvalidArgumentError, match="one-hot"):
            graph(one_hot * 2, logits)
    masks, scores = tf.constant((labels == 1)[..., None].astype("float32")), logits[..., :1]
    for loss in (LovaszHingeLoss(), CrossEntropyLovaszLoss("binary")):
        scores_spec = tf.TensorSpec([None, None, None, 1], tf.float32)
        graph = tf.function(lambda y, p, loss=loss: loss(y, p), input_signature=[unknown, scores_spec])
        assert float(graph(masks, scores)) == pytest.approx(float(loss(masks, scores)), rel=1e-6)


def test_a_void_label_without_ignore_class_fails_fit_on_tensorflow():
    """255 without ``ignore_class``: an eager call raises, and so does ``fit``'s tf.function (an assert), where
    the loss was computed on it without a word; under ``jax.jit`` and XLA no assert is compiled."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's graphs take asserts; jax.jit does not, and torch runs eagerly")
    import tensorflow as tf

    x, y = scenes(count=4)
    y = y.copy()
    y[0, 0, 0] = 255
    model = small_model(NUM_CLASSES)
    for loss in (LovaszSoftmaxLoss(from_logits=True), CrossEntropyLovaszLoss()):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*found 255"):
            loss(y, model(x))
        model.compile(optimizer="sgd", loss=loss)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 2\]"):
            model.fit(x, y, batch_size=4, epochs=1, verbose=0)


def test_a_bfloat16_loss_takes_scenes_and_both_terms():
    """On the torch backend the label checks read a bfloat16 prediction with NumPy, which has no bfloat16:
    a TypeError from inside the loss."""
    rng = np.random.default_rng(10)
    scenes = np.stack([rng.integers(0, 3, 12), np.repeat([0, 1, 2], 4)], 1)
    points = rng.uniform(size=(12, 3)).astype("float32")
    for make, y_true, y_pred in [
        (lambda **kw: LovaszSoftmaxLoss(per_image=True, scenes_in_labels=True, **kw), scenes, points),
        (lambda **kw: LovaszHingeLoss(per_image=False, scenes_in_labels=True, **kw), scenes % [2, 3], points[:, 0]),
        (lambda **kw: CrossEntropyLovaszLoss(scenes_in_labels=True, **kw), scenes, points),
    ]:
        half = keras.ops.convert_to_numpy(keras.ops.cast(make(dtype="bfloat16")(y_true, y_pred), "float32"))
        assert half == pytest.approx(float(make()(y_true, y_pred)), abs=2e-2)


def test_a_half_precision_loss_refuses_labels_its_dtype_cannot_hold():
    """Keras casts ``y_true`` to the loss's dtype: in bfloat16 class 257 became 256 without a word."""
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(1, 4, 4, 300)).astype("float32")
    labels = rng.integers(0, 300, (1, 4, 4))
    with pytest.raises(ValueError, match=r"dtype='bfloat16' cannot hold the class indices \(up to 299\).*256"):
        LovaszSoftmaxLoss(from_logits=True, dtype="bfloat16")(labels, logits)
    with pytest.raises(ValueError, match=r"dtype='bfloat16' cannot hold the class indices"):
        CrossEntropyLovaszLoss(dtype="bfloat16")(labels, logits)
    with pytest.raises(ValueError, match=r"dtype='float16' cannot hold ignore_class \(up to 4000\).*2048"):
        LovaszHingeLoss(ignore_class=4000, dtype="float16")(labels % 2, logits[..., 0])
    scenes = np.stack([np.arange(6) % 3, [0, 0, 0, 257, 257, 258]], 1)  # 257 and 256 are one bfloat16
    with pytest.raises(ValueError, match=r"dtype='bfloat16' cannot hold the scene indices \(up to 258\)"):
        LovaszSoftmaxLoss(per_image=True, scenes_in_labels=True, dtype="bfloat16")(scenes, logits[0, 0, :6, :3])
    expected = float(LovaszSoftmaxLoss(from_logits=True)(labels, logits))  # float16 holds 299
    got = float(keras.ops.convert_to_numpy(LovaszSoftmaxLoss(from_logits=True, dtype="float16")(labels, logits)))
    assert got == pytest.approx(expected, rel=1e-2)


def test_cross_entropy_alone_checks_the_labels_and_weights():
    """With the Lovász term off (lovasz_weight=0, or a LovaszScheduleCallback's warm-up) the cross-entropy took
    a label 7 of 3 or a mask value 2 without a word (or failed inside TF's ops), and wrong-length class_weights."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 4, 4, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 4))
    bad_labels = labels.copy()
    bad_labels[0, 0, 0] = 7
    masks = (logits > 0).astype("int64")
    bad_masks = masks.copy()
    bad_masks[1, 2, 3, 0] = 2
    for mode, y_true, y_pred, allowed in (
        ("multiclass", bad_labels, logits, r"(whole numbers )?in \[0, 2\]"),
        ("multilabel", bad_masks, logits, "0 or 1"),
        ("binary", bad_masks[..., :1], logits[..., :1], "0 or 1"),
    ):
        loss = CrossEntropyLovaszLoss(mode, lovasz_weight=0.0)  # (TF and JAX compute both terms: it names labels)
        with pytest.raises(ValueError, match=rf"^(y_true|labels|targets) must be {allowed} at every non-ignored"):
            loss(y_true, y_pred)
    ignored = bad_labels.copy()
    ignored[0, 0, 0] = 255  # an ignored pixel may hold anything
    assert np.isfinite(float(CrossEntropyLovaszLoss(lovasz_weight=0.0, ignore_class=255)(ignored, logits)))
    for mode, y_true in (("multiclass", labels), ("multilabel", masks)):
        with pytest.raises(ValueError, match=r"^class_weights must have one weight per class, 3 for y_pred"):
            CrossEntropyLovaszLoss(mode, lovasz_weight=0.0, class_weights=[1.0, 2.0])(y_true, logits)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_combined_loss_of_float64_takes_binary_targets(mode):
    """A dtype other than float32 failed inside TF's multiplication (a float32 target times float64 logits)."""
    rng = np.random.default_rng(8)
    channels = 1 if mode == "binary" else NUM_CLASSES
    logits = rng.normal(size=(2, 4, 4, channels))
    masks = (rng.random((2, 4, 4, channels)) > 0.5).astype("int64")
    got = CrossEntropyLovaszLoss(mode, dtype="float64")(masks, logits)
    expected = CrossEntropyLovaszLoss(mode)(masks, logits.astype("float32"))
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(
        float(keras.ops.convert_to_numpy(expected)), rel=1e-5
    )


def test_a_schedules_warm_up_checks_the_labels():
    """During a LovaszScheduleCallback's warm-up only the cross-entropy runs: binary targets 2 and -1 trained
    with finite losses (the same fit without the callback raised on TF and torch, and was NaN on JAX)."""
    x, _ = scenes()
    y = (x[..., :1] > 0).astype("int64")
    y[0, 0, 0, 0], y[1, 1, 1, 0] = 2, -1
    model = small_model(1)
    model.compile(optimizer="adam", loss=CrossEntropyLovaszLoss("binary"))
    callback = LovaszScheduleCallback(LovaszSchedule(warmup=5))
    backend = keras.backend.backend()
    if backend == "jax":  # nothing can raise in a jitted step: the loss is NaN, as the Lovász term's is
        history = model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        assert np.isnan(history.history["loss"][0])
        return
    with pytest.raises(Exception, match="must be 0 or 1 at every non-ignored pixel") as error:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert backend == "tensorflow" or error.type is ValueError


def test_cross_entropy_alone_refuses_fractional_labels_and_sums_half_precision_in_float32():
    """A label 1.5 was read as class 1 by the cross-entropy alone; a float16 loss summed its pixels' weights in
    float16, which overflows past 65504 pixels (a NaN loss)."""
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(2, 4, 4, NUM_CLASSES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 4, 4)).astype("float32")
    labels[0, 1, 2] = 1.5
    with pytest.raises(ValueError, match=r"^(y_true|labels) must be whole numbers"):
        CrossEntropyLovaszLoss(lovasz_weight=0.0)(labels, logits)
    big = rng.normal(size=(1, 300, 300, 1)).astype("float32")
    masks = (rng.random(big.shape) > 0.5).astype("int64")
    for mode in ("binary", "multilabel"):
        half = keras.ops.convert_to_numpy(CrossEntropyLovaszLoss(mode, dtype="float16", lovasz_weight=0.0)(masks, big))
        full = keras.ops.convert_to_numpy(CrossEntropyLovaszLoss(mode, lovasz_weight=0.0)(masks, big))
        assert np.isfinite(float(half)) and float(half) == pytest.approx(float(full), rel=2e-3)


def test_negative_sample_weights_in_fit_are_refused_or_make_the_loss_nan():
    """In fit's compiled step the values of sample_weight are known only when it runs: a negative one trained
    with a negative loss (-0.95 on TF). An assert in TF's graph, a ValueError on torch (eager), NaN under jax.jit."""
    x, y = scenes(count=8)
    model = small_model(NUM_CLASSES)
    model.compile(optimizer="adam", loss=LovaszSoftmaxLoss(from_logits=True, per_image=True))
    weights = np.ones(len(x), "float32")
    weights[3] = -1.0
    if keras.backend.backend() == "jax":
        history = model.fit(x, y, sample_weight=weights, epochs=1, verbose=0)
        assert np.isnan(history.history["loss"][0])
        return
    with pytest.raises(Exception, match="sample_weight must be finite numbers >= 0"):
        model.fit(x, y, sample_weight=weights, epochs=1, verbose=0)
