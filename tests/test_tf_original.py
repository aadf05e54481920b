"""lovasz.tf against the original ``tensorflow/lovasz_losses_tf.py`` itself (``lovasz/_peers``, byte for byte as
Berman et al. published it, run on TensorFlow 2): every public function with the same arguments gives the same
value and gradient, eagerly and in ``tf.function``; the drop-in promise, checked on the file it replaces."""

import inspect
import itertools

import numpy as np
import pytest

from conftest import require, tf_value_and_grad

tf = require("tensorflow")
LT = require("lovasz.tf")
peers = require("lovasz.peers")
ORIGINAL = peers.load_original_tf()

MODES = ["eager", "function"]
NAMES = [
    "lovasz_grad",
    "lovasz_hinge",
    "lovasz_hinge_flat",
    "flatten_binary_scores",
    "lovasz_softmax",
    "lovasz_softmax_flat",
    "flatten_probas",
]


def assert_same(ours, original, x, mode):
    value, grad = tf_value_and_grad(ours, x, mode)
    expected_value, expected_grad = tf_value_and_grad(original, x, mode)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def images(seed, shape=(3, 9, 7), classes=4, ignored=0.2):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((*shape, classes)).astype(np.float32)
    labels = rng.integers(0, classes, shape)
    labels[rng.random(shape) < ignored] = 255
    labels[0, :, :4] = 255  # part of an image ignored; the last image all of one class in some runs
    return tf.constant(logits), tf.constant(labels)


def test_the_original_names_and_defaults():
    for name in NAMES:
        ours, original = inspect.signature(getattr(LT, name)), inspect.signature(getattr(ORIGINAL, name))
        for parameter in original.parameters.values():
            assert parameter.name in ours.parameters, (name, parameter.name)
            assert ours.parameters[parameter.name].default == parameter.default, (name, parameter.name)
        assert list(ours.parameters)[: len(original.parameters)] == list(original.parameters), name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "per_image, classes, ignore", list(itertools.product([False, True], ["present", "all", [1, 3]], [None, 255]))
)
def test_lovasz_softmax(mode, per_image, classes, ignore):
    logits, labels = images(seed=1)
    if ignore is None:
        labels = tf.where(labels == 255, 0, labels)
    call = lambda module: lambda x: module.lovasz_softmax(tf.nn.softmax(x), labels, classes, per_image, ignore)  # noqa: E731
    assert_same(call(LT), call(ORIGINAL), logits, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_softmax_channels_first_and_sigmoid(mode, per_image):
    logits, labels = images(seed=2)
    bchw = lambda module: (
        lambda x: module.lovasz_softmax(  # noqa: E731
            tf.transpose(tf.nn.softmax(x), (0, 3, 1, 2)), labels, per_image=per_image, ignore=255, order="BCHW"
        )
    )
    assert_same(bchw(LT), bchw(ORIGINAL), logits, mode)
    binary = tf.where(labels == 255, 255, labels % 2)
    # Sigmoid probabilities [B, H, W]: the original takes them with a list of classes only ("present", its
    # default, raises there: len("present") > 1); class [1] is the foreground's term.
    sigmoid = lambda module: (
        lambda x: module.lovasz_softmax(  # noqa: E731
            tf.sigmoid(x[..., 0]), binary, [1], per_image=per_image, ignore=255
        )
    )
    assert_same(sigmoid(LT), sigmoid(ORIGINAL), logits, mode)
    with pytest.raises(ValueError, match="Sigmoid output possible only with 1 class"):
        ORIGINAL.lovasz_softmax(tf.sigmoid(logits[..., 0]), binary, per_image=per_image, ignore=255)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image, ignore", list(itertools.product([False, True], [None, 255])))
def test_lovasz_hinge(mode, per_image, ignore):
    logits, labels = images(seed=3)
    binary = tf.where(labels == 255, 255 if ignore else 0, labels % 2)
    call = lambda module: lambda x: module.lovasz_hinge(x[..., 0], binary, per_image, ignore)  # noqa: E731
    assert_same(call(LT), call(ORIGINAL), logits, mode)


@pytest.mark.parametrize("mode", MODES)
def test_the_flat_functions(mode):
    logits, labels = images(seed=4)
    flat = lambda module: (
        lambda x: module.lovasz_softmax_flat(  # noqa: E731
            *module.flatten_probas(tf.nn.softmax(x), labels, 255), classes="all"
        )
    )
    assert_same(flat(LT), flat(ORIGINAL), logits, mode)
    binary = tf.where(labels == 255, 255, labels % 2)
    hinge = lambda module: (
        lambda x: module.lovasz_hinge_flat(  # noqa: E731
            *module.flatten_binary_scores(x[..., 0], binary, 255)
        )
    )
    assert_same(hinge(LT), hinge(ORIGINAL), logits, mode)
    gt_sorted = tf.constant([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(LT.lovasz_grad(gt_sorted), ORIGINAL.lovasz_grad(gt_sorted), rtol=1e-6)


def test_bad_labels_fail_an_assert_in_tf_function():
    """The original counted a void label without ``ignore`` as background of every class; here it raises
    eagerly, and in a tf.function (Keras' fit) fails an assert that names the value (XLA compiles none)."""
    logits, labels = images(7, ignored=0.0)
    labels = tf.where(labels == 255, tf.constant(0, labels.dtype), labels)
    bad = tf.tensor_scatter_nd_update(labels, [[0, 1, 2]], tf.constant([255], labels.dtype))
    calls = {
        "lovasz_softmax": (lambda x, y: LT.lovasz_softmax(tf.nn.softmax(x), y), r"labels must be in \[0, 3\]"),
        "lovasz_hinge": (
            lambda x, y: LT.lovasz_hinge(x[..., 0], tf.where(y == 255, y, y % 2)),
            r"labels must be 0 or 1",
        ),
        "lovasz_multilabel": (
            lambda x, y: LT.lovasz_multilabel(x, tf.one_hot(y, 4, dtype=tf.int64) + (y[..., None] // 255) * 255),
            r"targets must be 0 or 1",
        ),
    }
    for call, message in calls.values():
        with pytest.raises(ValueError, match=message):
            call(logits, bad)
        graph = tf.function(call)
        np.testing.assert_allclose(graph(logits, labels), call(logits, labels), rtol=1e-6)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message + r".*found:.*255"):
            graph(logits, bad)


def test_flatten_reads_ignore_as_the_losses_do():
    """An ignore value the labels' dtype cannot hold leaves out no pixel (-1 compared with uint8 labels would
    wrap to 255), and ``ignore`` is checked."""
    probas = tf.random.uniform((1, 1, 4, 3))
    labels = tf.constant([[[0, 1, 255, 2]]], tf.uint8)
    flat_probas, flat_labels = LT.flatten_probas(probas, labels, ignore=-1)
    assert flat_probas.shape == (4, 3) and flat_labels.numpy().tolist() == [0, 1, 255, 2]
    assert LT.flatten_binary_scores(probas[..., 0], labels, ignore=-1)[1].numpy().tolist() == [0, 1, 255, 2]
    assert LT.flatten_probas(probas, labels, ignore=255)[1].numpy().tolist() == [0, 1, 2]
    for bad in (True, "255", 255.5):
        with pytest.raises(TypeError, match="ignore must be an int or None"):
            LT.flatten_probas(probas, labels, ignore=bad)
        with pytest.raises(TypeError, match="ignore must be an int or None"):
            LT.flatten_binary_scores(probas[..., 0], labels, ignore=bad)
