"""Partly unknown static shapes (None dims): TF while tracing a tf.function with an input_signature, or Keras
on a tf.data pipeline whose labels have unknown spatial sizes.

An unknown dim matches any size (as TF's ``TensorShape.is_compatible_with``): compatible shapes are taken
with the layout their known dims imply, incompatible known dims get the errors of known shapes, and the
messages print unknown dims as None. In TF the loss and gradient of a function traced with unknown dims equal
the eager ones.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import require
from lovasz import _validation as V

# ----------------------------------------------------------------------------- the checks, pure Python


def test_dims_and_shapes_match_where_unknown():
    assert V.same_dim(None, 4) and V.same_dim(4, None) and V.same_dim(None, None) and V.same_dim(4, 4)
    assert not V.same_dim(3, 4)
    assert V.compatible((None, 4, 4), (2, None, 4))
    assert not V.compatible((None, 4, 4), (None, 4))  # the rank must match
    assert not V.compatible((None, 4, 4), (None, 5, None))


def test_fmt_prints_unknown_dims():
    assert V.fmt([2, 4, 4]) == "[2, 4, 4]"
    assert V.fmt(()) == "[]"
    assert V.fmt([None, 4, None]) == "[None, 4, None]"
    assert V.fmt(np.array([2, 3])) == "[2, 3]"


@pytest.mark.parametrize(
    "probas, labels, axis, expected",
    [
        ((None, 4, 4, 3), (None, None, None), -1, (False, 3)),
        ((None, None, None, 3), (None, 4, 4), -1, (False, 3)),
        ((2, 4, 4, 3), (None, 4, 4), -1, (False, 3)),
        ((None, 3, None, None), (2, 4, 4), 1, (False, 3)),
        ((None, 4, 4), (2, None, 4), 1, (True, 2)),  # one foreground probability per pixel
        ((None, None, None), (None, None, None), 1, (True, 2)),
        ((2, 4, 4, 3), (2, 4, 4), -1, (False, 3)),  # known shapes, as before
    ],
)
def test_softmax_layout_of_compatible_shapes(probas, labels, axis, expected):
    assert V.softmax_layout(probas, labels, axis) == expected


def test_softmax_layout_errors():
    known = (
        "labels must have shape [2, 4, 4] to match probas [2, 4, 4, 3] (channels-last [B, *spatial, C]; "
        "or the shape of probas for sigmoid output); got [2, 5, 4]"
    )
    with pytest.raises(ValueError) as error:
        V.softmax_layout((2, 4, 4, 3), (2, 5, 4), -1)
    assert str(error.value) == known  # the message of known shapes is unchanged
    with pytest.raises(ValueError) as error:
        V.softmax_layout((None, 4, 4, 3), (None, 5, None), -1)
    assert str(error.value) == (
        "labels must have shape [None, 4, 4] to match probas [None, 4, 4, 3] (channels-last [B, *spatial, C]; "
        "or the shape of probas for sigmoid output); got [None, 5, None]"
    )
    with pytest.raises(ValueError, match=r"labels must have shape \[None, 4, 4\] to match probas \[None, 3, 4, 4\]"):
        V.softmax_layout((None, 3, 4, 4), (None, None, None, None, None), 1)
    with pytest.raises(ValueError, match=r"^the class axis of probas must be known; got shape \[None, 4, 4, None\]$"):
        V.softmax_layout((None, 4, 4, None), (None, 4, 4), -1)
    with pytest.raises(
        ValueError, match=r"^probas must have shape \[B, C, \*spatial\] or \[B, \*spatial\]; got \[None\]"
    ):
        V.softmax_layout((None,), (None,))


@pytest.mark.parametrize(
    "logits, labels",
    [
        ((None, 4, 4), (None, None, None)),
        ((None, None, None), (2, 4, 4)),
        ((None, 1, 4, 4), (None, None, None)),
        ((None, None, 4, 4), (2, 4, 4)),  # the unknown dim 1 may be the channel axis
        ((None, 4, 4, None), (None, 4, 4)),  # so may an unknown last dim: TF's reshape checks it
        ((2, 1, 4, 4), (2, 4, 4)),
    ],
)
def test_hinge_layout_of_compatible_shapes(logits, labels):
    V.hinge_layout(logits, labels)


def test_hinge_layout_errors():
    message = r"labels must have shape \[B, \*spatial\] to match logits \[B, \*spatial\] or \[B, 1, \*spatial\]; got "
    with pytest.raises(ValueError, match=message + r"logits \[2, 4, 4\] and labels \[2, 5, 4\]$"):
        V.hinge_layout((2, 4, 4), (2, 5, 4))
    with pytest.raises(ValueError, match=message + r"logits \[None, 4, 4\] and labels \[None, 5, None\]$"):
        V.hinge_layout((None, 4, 4), (None, 5, None))
    with pytest.raises(ValueError, match=message + r"logits \[None, 4, 4, 3\] and labels \[None, 4, 4\]$"):
        V.hinge_layout((None, 4, 4, 3), (None, 4, 4))  # a known 3 is no channel axis of one
    with pytest.raises(ValueError, match=message + r"logits \[None, 4, 4, None\] and labels \[None, 5, 4\]$"):
        V.hinge_layout((None, 4, 4, None), (None, 5, 4))


def test_multilabel_layout():
    assert V.multilabel_layout((None, 3, 4, 4), (None, None, None, None)) == 3
    assert V.multilabel_layout((2, 3, None, 4), (None, 3, 4, None)) == 3
    known = "targets must have the shape of logits [2, 3, 4, 4] ([B, C, *spatial] of 0/1); got [2, 2, 4, 4]"
    with pytest.raises(ValueError) as error:
        V.multilabel_layout((2, 3, 4, 4), (2, 2, 4, 4))
    assert str(error.value) == known
    with pytest.raises(ValueError, match=r"the shape of logits \[None, 3, 4, 4\] .*; got \[None, 2, None, None\]$"):
        V.multilabel_layout((None, 3, 4, 4), (None, 2, None, None))
    with pytest.raises(ValueError, match=r"^the class axis of logits must be known; got shape \[None, None, 4\]$"):
        V.multilabel_layout((None, None, 4), (None, None, 4))


@pytest.mark.parametrize(
    "labels, accepted, extra",
    [
        ((None, None, None), [(None, 4, 4, 3), (None, 4, 4)], None),
        ((None, None, None, 1), [(None, 4, 4, 3), (None, 4, 4)], -1),  # a known 1 is no class count of 3
        ((None, 1, None, None), [(None, 4, 4, 3), (None, 4, 4)], 1),
        ((2, 4, 4, 1), [(None, 4, 4, 3), (None, 4, 4)], -1),
        # Where only unknown dims tell layouts apart, the order of known shapes: as they are, then the last axis.
        ((None, None, None, None), [(None, 4, 4, 3), (None, 4, 4)], None),
        ((None, None, None, None), [(None, 4, 4)], -1),
        ((None, 4, 4, 2), [(None, 4, 4, 3), (None, 4, 4)], None),  # fits neither: the shape check names it
        ((2, 4, 4), [(2, 4, 4)], None),
        ((2, 4, 4, 1), [(2, 4, 4)], -1),
        ((2, 1, 4, 4), [(2, 4, 4)], 1),
    ],
)
def test_extra_label_axis(labels, accepted, extra):
    assert V.extra_label_axis(labels, accepted) == extra


def test_points_layout_and_weights():
    how = "with row_splits="
    V.points_layout((None, 3), (None,), False, ("probas", "labels"), how)
    V.points_layout((None, 3), (5,), False, ("probas", "labels"), how)
    V.points_layout((None, 3), (7, None), True, ("logits", "targets"), how)
    with pytest.raises(
        ValueError, match=r"^labels must have shape \[None\] for probas of shape \[None, 3\]; got \[5, 3\]$"
    ):
        V.points_layout((None, 3), (5, 3), False, ("probas", "labels"), how)
    with pytest.raises(ValueError, match=r"^probas must be points-first, \[N, C\] .*; got \[None, None, None\]$"):
        V.points_layout((None, None, None), (None,), False, ("probas", "labels"), how)
    V.check_weights_shape((None,), 3)
    with pytest.raises(ValueError, match=r"^weights must have shape \[3\] \(one weight per class\); got \[None, 3\]$"):
        V.check_weights_shape((None, 3), 3)


# ----------------------------------------------------------------------------- lovasz.tf, traced with unknown dims


def _value_and_grad(fn, x, y, signature=None):
    import tensorflow as tf

    def run(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x, y)
        return value, tape.gradient(value, x)

    if signature is not None:
        run = tf.function(run, input_signature=signature)
    return [t.numpy() for t in run(tf.convert_to_tensor(x), tf.convert_to_tensor(y))]


RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
Y = RNG.integers(0, 3, (2, 4, 4))
MASKS = RNG.integers(0, 2, (2, 4, 4))
TARGETS = RNG.integers(0, 2, (2, 4, 4, 3))

CASES = {  # name: (function, x, y, x's static shape, y's)
    "softmax labels unknown": ("softmax", X, Y, [None, 4, 4, 3], [None, None, None]),
    "softmax probas unknown": ("softmax", X, Y, [None, None, None, 3], [None, 4, 4]),
    "softmax batch known": ("softmax", X, Y, [2, 4, 4, 3], [None, 4, 4]),
    "softmax labels [B, H, W, 1]": ("softmax", X, Y[..., None], [None, 4, 4, 3], [None, None, None, 1]),
    "softmax labels [B, 1, H, W]": ("softmax", X, Y[:, None], [None, 4, 4, 3], [None, 1, None, None]),
    "softmax channels-first": ("softmax BCHW", X.transpose(0, 3, 1, 2), Y, [None, 3, None, None], [None, None, None]),
    "softmax sigmoid": ("softmax", X[..., 0], MASKS, [None, None, 4], [None, 4, None]),
    "hinge labels unknown": ("hinge", X[..., 0], MASKS, [None, 4, 4], [None, None, None]),
    "hinge logits [B, H, W, 1]": ("hinge", X[..., :1], MASKS, [None, 4, 4, 1], [None, None, None]),
    "hinge logits unknown": ("hinge", X[..., :1], MASKS, [None, None, None, None], [None, None, None]),
    "hinge labels [B, H, W, 1]": ("hinge", X[..., 0], MASKS[..., None], [None, 4, 4], [None, None, None, None]),
    "multilabel targets unknown": ("multilabel", X, TARGETS, [None, 4, 4, 3], [None, None, None, 3]),
    "multilabel spatial unknown": ("multilabel", X, TARGETS, [None, None, None, 3], [None, 4, 4, None]),
}


def _function(kind):
    LT = require("lovasz.tf")
    return {
        "softmax": lambda x, y: LT.lovasz_softmax(x, y, from_logits=True),
        "softmax BCHW": lambda x, y: LT.lovasz_softmax(x, y, order="BCHW", from_logits=True),
        "hinge": lambda x, y: LT.lovasz_hinge(x, y),
        "multilabel": lambda x, y: LT.lovasz_multilabel(x, y),
    }[kind]


@pytest.mark.parametrize("name", list(CASES))
def test_tf_function_with_unknown_dims_equals_eager(name):
    tf = require("tensorflow")
    kind, x, y, x_shape, y_shape = CASES[name]
    fn = _function(kind)
    signature = [tf.TensorSpec(x_shape, tf.float32), tf.TensorSpec(y_shape, tf.int64)]
    value, grad = _value_and_grad(fn, x, y, signature)
    expected_value, expected_grad = _value_and_grad(fn, x, y)
    assert np.isfinite(value) and value > 0
    np.testing.assert_allclose(value, expected_value, rtol=1e-6, atol=1e-6)
    assert grad.shape == x.shape
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_tf_function_with_unknown_dims_errors():
    tf = require("tensorflow")
    LT = require("lovasz.tf")
    probas = tf.constant(X)
    traced = tf.function(
        LT.lovasz_softmax, input_signature=[tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([None, 5, None], tf.int64)]
    )
    with pytest.raises(ValueError, match=r"labels must have shape \[None, 4, 4\] to match probas \[None, 4, 4, 3\]"):
        traced(probas, tf.zeros([2, 5, 5], tf.int64))  # known dims that differ: while tracing
    traced = tf.function(
        LT.lovasz_softmax, input_signature=[tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([None, None, None], tf.int64)]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must have the shape of probas"):
        traced(probas, tf.zeros([2, 5, 5], tf.int64))  # unknown dims that differ: when it runs
    traced = tf.function(
        LT.lovasz_hinge, input_signature=[tf.TensorSpec([None, 4, 4]), tf.TensorSpec([None, None, None], tf.int64)]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must have the shape of logits"):
        traced(probas[..., 0], tf.zeros([2, 4, 5], tf.int64))


@pytest.mark.parametrize("kind", ["softmax", "hinge", "multilabel"])
@pytest.mark.parametrize("unknown", ["prediction", "labels"])
def test_tf_function_with_unknown_rank_raises(kind, unknown):
    """An unknown rank (a tf.py_function's output in tf.data) cannot tell the layouts apart: a clear error
    naming the argument and how to set the shape (unknown labels failed in TensorShape's iteration)."""
    tf = require("tensorflow")
    x, y = {"softmax": (X, Y), "hinge": (X[..., 0], MASKS), "multilabel": (X, TARGETS)}[kind]
    name = {
        "prediction": {"softmax": "probas"}.get(kind, "logits"),
        "labels": {"multilabel": "targets"}.get(kind, "labels"),
    }
    shapes = [None if unknown == "prediction" else x.shape, None if unknown == "labels" else y.shape]
    signature = [tf.TensorSpec(shapes[0], tf.float32), tf.TensorSpec(shapes[1], tf.int64)]
    with pytest.raises(ValueError, match=rf"{name[unknown]} must have a known rank; got shape <unknown> \(set it with"):
        _value_and_grad(_function(kind), x, y, signature)


@pytest.mark.parametrize(
    "kind, x, y, x_shape, y_shape, message",
    [
        ("softmax", X, Y, [None, None, None, 3], [None, None, None], "labels must have the shape of probas less"),
        ("softmax", X[..., 0], MASKS, [None, None, None], [None, None, None], "labels must have the shape of probas"),
        ("hinge", X[..., 0], MASKS, [None, None, None], [None, None, None], "labels must have the shape of logits"),
        ("hinge", X[..., :1], MASKS, [None, 4, None, None], [None, None, None], "labels must have the shape of logits"),
        ("multilabel", X, TARGETS, [None, None, None, 3], [None, None, None, 3], "targets must have the shape of"),
    ],
)
def test_labels_of_another_layout_raise_when_run(kind, x, y, x_shape, y_shape, message):
    """Labels of the prediction's size laid out otherwise (height and width swapped: a pipeline's slip) would
    pass every reshape: where unknown dims left the check to the run, it raises then."""
    tf = require("tensorflow")
    signature = [tf.TensorSpec(x_shape, tf.float32), tf.TensorSpec(y_shape, tf.int64)]
    traced = tf.function(_function(kind), input_signature=signature)
    x, y = np.concatenate([x] * 2, axis=2), np.concatenate([y] * 2, axis=2)  # [2, 4, 8, ...]
    swapped = y.reshape(y.shape[0], 8, 4, *y.shape[3:])  # [2, 8, 4, ...]: as many pixels
    assert np.isfinite(traced(tf.constant(x), tf.constant(y)).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        traced(tf.constant(x), tf.constant(swapped))


# ----------------------------------------------------------------------------- Keras fit on a tf.data pipeline

KERAS_FIT = textwrap.dedent(
    """
    import math
    import numpy as np
    import tensorflow as tf
    import keras
    from lovasz.keras import CrossEntropyLovaszLoss, LovaszHingeLoss, LovaszSoftmaxLoss

    assert keras.backend.backend() == "tensorflow"
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, (4, 8, 8))

    def data(labels, label_shape=(None, None)):  # masks of unknown size
        def gen():
            for i in range(4):
                yield x[i], labels[i]

        spec = (tf.TensorSpec([8, 8, 3]), tf.TensorSpec(label_shape, tf.int64))
        return tf.data.Dataset.from_generator(gen, output_signature=spec).batch(2)

    for loss, channels, labels in [
        (LovaszSoftmaxLoss(from_logits=True), 3, y),
        (LovaszSoftmaxLoss(from_logits=True, per_image=True), 3, y),
        (LovaszHingeLoss(), 1, (y > 0).astype("int64")),
    ]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(channels, 1)])
        model.compile("sgd", loss)
        history = model.fit(data(labels), epochs=2, verbose=0).history["loss"]
        assert len(history) == 2 and all(math.isfinite(v) for v in history), history
        print(type(loss).__name__, history)

    # labels of unknown rank (a tf.py_function's output): a clear error, not TensorShape's
    for loss in [LovaszSoftmaxLoss(from_logits=True), CrossEntropyLovaszLoss()]:
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
        model.compile("sgd", loss)
        try:
            model.fit(data(y, None), epochs=1, verbose=0)
        except ValueError as error:
            assert "y_true must have a known rank; got shape <unknown>" in str(error), error
            print("unknown rank refused")
    """
)


def test_keras_fit_on_tf_data_with_unknown_label_shape(tmp_path):
    require("tensorflow")
    require("keras")
    script = tmp_path / "fit.py"
    script.write_text(KERAS_FIT)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("Loss [") == 3, result.stdout
    assert result.stdout.count("unknown rank refused") == 2, result.stdout
