"""Keras 3 checks, run by test_keras.py once per backend in a fresh process with KERAS_BACKEND set.

Not collected by the main run (conftest.collect_ignore): Keras picks its backend at import.
"""

import os

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
    "softmax": lambda: LovaszSoftmaxLoss(from_logits=True),
    "softmax-per-image": lambda: LovaszSoftmaxLoss(from_logits=True, per_image=True, class_weights=[1, 2, 1]),
    "hinge": lambda: LovaszHingeLoss(),
    "multilabel": lambda: LovaszMultilabelLoss(),
    "ce+lovasz": lambda: CrossEntropyLovaszLoss(ce_weight=0.5, ignore_class=255),
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


@pytest.mark.parametrize("name", LOSSES)
def test_config_round_trips(name):
    loss = LOSSES[name]()
    config = loss.get_config()
    assert type(loss).from_config(config).get_config() == config
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == config


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
    with pytest.raises(ValueError, match="labels must have shape"):
        LovaszSoftmaxLoss()(np.zeros((2, 4, 4)), np.zeros((2, 5, 4, 3), "float32"))


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
        return out.numpy(), tape.gradient(total, x, unconnected_gradients="zero").numpy()
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
    import lovasz.tf as LTF

    if C.kernel() is None:
        pytest.skip("lovasz was installed without its C kernel")
    calls, host = [], LTF._host_rows
    monkeypatch.setattr(LTF, "_host_rows", lambda *args, **kwargs: calls.append(1) or host(*args, **kwargs))
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
