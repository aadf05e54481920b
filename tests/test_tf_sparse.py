"""Grids where most pixels are ignored (LiDAR voxel grids) in lovasz.tf: on a CPU, in float32, eagerly and
in ``tf.function``, the valid pixels are gathered into points of scenes (``_tf_scenes.dense_or_gathered``)
and go through the scene path's C kernel; under XLA the shapes are static and the grid stays dense.

The gathered path must give what the dense path gives (the same sort, ties in the same pixel order): the
same loss and gradient to float32's last bits, and an exact zero at every ignored pixel.
"""

import itertools

import numpy as np
import pytest
from cases import weakly_labelled_points

from conftest import require

tf = require("tensorflow")
LT = require("lovasz.tf")
C = require("lovasz._ckernel")
SCENES = require("lovasz._tf_scenes")

pytestmark = pytest.mark.skipif(C.scene_kernel() is None, reason="lovasz built without its C kernel")


def grid(seed, shape=(3, 6, 5, 4), num_classes=5, occupied=0.1, ignore=255):
    """Probabilities ``[B, *spatial, C]`` and labels, ``occupied`` of them valid; the last image has none."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, num_classes)).astype(np.float32) * 2
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) >= occupied] = ignore
    labels[-1] = ignore
    return logits, labels


def value_and_grad(fn, x, mode, *args, **kwargs):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = fn(x, *args, **kwargs)
        return loss, tape.gradient(loss, x)

    run = run if mode == "eager" else tf.function(run, jit_compile=mode == "xla")
    loss, grad = run(tf.constant(x))
    return loss.numpy(), tf.convert_to_tensor(grad).numpy()


def scene_kernel_runs(monkeypatch):
    """A list that grows by one at each run of the scene path's C kernel (its host call: eager or in a graph)."""
    runs, host = [], SCENES._host_scene_rows
    monkeypatch.setattr(SCENES, "_host_scene_rows", lambda *a, **k: runs.append(1) or host(*a, **k))
    return runs


def gathered_and_dense(monkeypatch, fn, x, mode, *args, **kwargs):
    """``fn``'s loss and gradient gathered, then dense (never gathering); asserts the scene kernel ran."""
    runs = scene_kernel_runs(monkeypatch)
    gathered = value_and_grad(fn, x, mode, *args, **kwargs)
    assert runs, "the valid pixels were not gathered"
    monkeypatch.setattr(SCENES, "COMPACT_BELOW", -1.0)
    del runs[:]
    dense = value_and_grad(fn, x, mode, *args, **kwargs)
    assert not runs, "the dense path gathered"
    return gathered, dense


def assert_same(gathered, dense, ignored):
    (loss, grad), (dense_loss, dense_grad) = gathered, dense
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-6, atol=1e-9)
    assert np.all(grad[ignored] == 0), "an ignored pixel got a gradient"


OPTIONS = list(itertools.product(["eager", "function"], [False, True], ["present", "all", [1, 3, 3]], [False, True]))


@pytest.mark.parametrize("mode,per_image,classes,from_logits", OPTIONS)
def test_softmax_gathered_equals_dense(monkeypatch, mode, per_image, classes, from_logits):
    logits, labels = grid(0)
    x = logits if from_logits else tf.nn.softmax(logits).numpy()
    options = dict(classes=classes, per_image=per_image, ignore=255, from_logits=from_logits, reduction="none")
    gathered, dense = gathered_and_dense(monkeypatch, LT.lovasz_softmax, x, mode, labels, **options)
    assert_same(gathered, dense, labels == 255)
    assert gathered[0].shape == ((3,) if per_image else ())


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("per_image", [False, True])
def test_channels_first_gathered_equals_dense(monkeypatch, mode, per_image):
    logits, labels = grid(1, shape=(2, 5, 7, 3))
    x = np.moveaxis(tf.nn.softmax(logits).numpy(), -1, 1)  # [B, C, *spatial]
    options = dict(per_image=per_image, ignore=255, order="BCHW")
    gathered, dense = gathered_and_dense(monkeypatch, LT.lovasz_softmax, x, mode, labels, **options)
    assert_same(gathered, dense, np.broadcast_to((labels == 255)[:, None], x.shape))


def test_a_grid_too_large_for_the_kernel_is_gathered_eagerly(monkeypatch):
    """Eagerly the valid pixels of a grid over the kernel's size limit are gathered (they may fit it), with
    the dense loss and gradient; in a graph such a grid stays whole (its points' fit would need a tf.cond
    inside the gathering's)."""
    logits, labels = grid(5)
    monkeypatch.setattr(C, "MAX_ELEMENTS", logits.size - 1)  # the grid over the limit, its valid points under
    options = dict(ignore=255, from_logits=True, per_image=True, reduction="none")
    gathered, dense = gathered_and_dense(monkeypatch, LT.lovasz_softmax, logits, "eager", labels, **options)
    assert_same(gathered, dense, labels == 255)
    monkeypatch.setattr(SCENES, "COMPACT_BELOW", 0.5)
    runs = scene_kernel_runs(monkeypatch)
    in_graph = value_and_grad(LT.lovasz_softmax, logits, "function", labels, **options)
    assert not runs
    assert_same(in_graph, dense, labels == 255)


@pytest.mark.parametrize("ignore", [0, 19, -1])
def test_lidar_ignore_values(monkeypatch, ignore):
    """Cylinder3D ignores 0, SemanticKITTI's 19-class setups 19, Pointcept -1 (labels shifted to fit)."""
    logits, labels = grid(2, num_classes=20, ignore=ignore)
    if ignore == 0:  # class 0 is the ignored one: the valid labels are 1..19
        labels = np.where(labels == 0, 0, np.maximum(labels, 1))
    if ignore == 19:
        logits = logits[..., :19]
    x = tf.nn.softmax(logits).numpy()
    gathered, dense = gathered_and_dense(monkeypatch, LT.lovasz_softmax, x, "function", labels, ignore=ignore)
    assert_same(gathered, dense, labels == ignore)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("margin,symmetric", [("relu", False), ("elu", False), ("relu", True)])
def test_hinge_gathered_equals_dense(monkeypatch, mode, margin, symmetric):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3, 8, 9)).astype(np.float32)
    labels = rng.integers(0, 2, scores.shape)
    labels[rng.random(scores.shape) >= 0.2] = 255
    options = dict(per_image=True, ignore=255, margin=margin, symmetric=symmetric)
    gathered, dense = gathered_and_dense(monkeypatch, LT.lovasz_hinge, scores, mode, labels, **options)
    assert_same(gathered, dense, labels == 255)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_multilabel_partly_ignored(monkeypatch, mode, from_logits):
    """A pixel ignored in some channels only is gathered, and stays ignored in those."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 7, 6, 4)).astype(np.float32)
    targets = rng.integers(0, 2, logits.shape)
    targets[rng.random(logits.shape) >= 0.08] = 255  # a pixel valid in some channel: ~28%
    x = logits if from_logits else tf.sigmoid(logits).numpy()
    options = dict(per_image=False, ignore=255, from_logits=from_logits)
    gathered, dense = gathered_and_dense(monkeypatch, LT.lovasz_multilabel, x, mode, targets, **options)
    assert_same(gathered, dense, targets == 255)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_all_ignored_gives_zero(monkeypatch, mode):
    logits, labels = grid(5)
    labels[:] = 255
    for per_image in (False, True):
        options = dict(per_image=per_image, ignore=255)
        (loss, grad), _ = gathered_and_dense(monkeypatch, LT.lovasz_softmax, logits, mode, labels, **options)
        assert loss == 0 and np.all(grad == 0)
        monkeypatch.undo()


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_mostly_valid_grid_stays_dense(monkeypatch, mode):
    logits, labels = grid(6, occupied=0.9)
    labels[-1] = 0  # every image mostly valid
    runs = scene_kernel_runs(monkeypatch)
    value_and_grad(LT.lovasz_softmax, logits, mode, labels, ignore=255)
    assert not runs


def test_dynamic_shapes_in_a_function(monkeypatch):
    """A tf.function traced for any batch and grid size: the choice is made when it runs."""
    signature = [tf.TensorSpec([None, None, None, 5], tf.float32), tf.TensorSpec([None, None, None], tf.int64)]
    runs = scene_kernel_runs(monkeypatch)

    @tf.function(input_signature=signature)
    def loss_and_grad(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = LT.lovasz_softmax(x, y, ignore=255)
        return loss, tape.gradient(loss, x)

    for seed, occupied in [(7, 0.1), (8, 0.9), (9, 0.05)]:
        logits, labels = grid(seed, shape=(2 + seed % 2, 4, 5 + seed), occupied=occupied)
        if occupied > 0.5:
            labels[-1] = 0  # (grid leaves the last image empty)
        del runs[:]
        loss, grad = loss_and_grad(tf.constant(logits), tf.constant(labels))
        assert bool(runs) == (occupied < 0.5)
        eager = value_and_grad(LT.lovasz_softmax, logits, "eager", labels, ignore=255)
        np.testing.assert_allclose(loss.numpy(), eager[0], rtol=1e-6)
        np.testing.assert_allclose(grad.numpy(), eager[1], rtol=1e-6, atol=1e-9)


TAPE_OUTSIDE_LOSSES = {
    "softmax channels-last": lambda x, y: LT.lovasz_softmax(x, y, ignore=255, from_logits=True),
    "softmax channels-first": lambda x, y: LT.lovasz_softmax(
        tf.transpose(x, [0, 3, 1, 2]), y, ignore=255, order="BCHW", from_logits=True
    ),
    "hinge": lambda x, y: LT.lovasz_hinge(x[..., 0], tf.where(y == 255, y, y % 2), ignore=255),
    "multilabel": lambda x, y: LT.lovasz_multilabel(
        x, tf.where(y[..., None] == 255, tf.constant(255, y.dtype), tf.cast(x > 0, y.dtype)), ignore=255
    ),
    "points of scenes": lambda x, y: LT.lovasz_softmax(
        tf.reshape(x, [-1, 5]), tf.reshape(y, [-1]), ignore=255, per_image=True, row_splits=[0, 7, 40, 60]
    ),
}


@pytest.mark.parametrize("signature", ["static", "unknown"])
@pytest.mark.parametrize("name", TAPE_OUTSIDE_LOSSES)
def test_tape_outside_the_function(name, signature):
    """A ``GradientTape`` around a ``tf.function`` that calls the loss (an eager training loop): TF builds the
    gradient apart from the forward graph, and could not differentiate the kernel's ``tf.cond`` (whether a
    size fits) nested in the gathering's (a bare ``AssertionError`` in cond_v2). One ``tf.switch_case``."""
    logits, labels = grid(21, shape=(3, 4, 5), occupied=0.3)
    spec = [tf.TensorSpec([None, None, None, 5], tf.float32), tf.TensorSpec([None, None, None], tf.int64)]
    loss = TAPE_OUTSIDE_LOSSES[name]
    compiled = tf.function(loss, input_signature=spec if signature == "unknown" else None)
    x, y = tf.constant(logits), tf.constant(labels)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = compiled(x, y)
    grad = tape.gradient(value, x)
    expected, expected_grad = value_and_grad(loss, logits, "eager", y)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-6, atol=1e-9)


def test_xla_keeps_the_grid():
    """Under jit_compile the shapes are static: the ignored pixels are masked, with the same result."""
    logits, labels = grid(10)
    for per_image in (False, True):
        xla = value_and_grad(LT.lovasz_softmax, logits, "xla", labels, per_image=per_image, ignore=255)
        eager = value_and_grad(LT.lovasz_softmax, logits, "eager", labels, per_image=per_image, ignore=255)
        np.testing.assert_allclose(xla[0], eager[0], rtol=1e-6)
        np.testing.assert_allclose(xla[1], eager[1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("kind", ["softmax", "hinge", "multilabel"])
def test_weakly_labelled_points_of_scenes_are_gathered(monkeypatch, mode, per_image, kind):
    """Points of scenes (``row_splits=``) of which few are labelled (weak supervision): the labelled ones
    are gathered, each scene's its own (one empty), or all as one set; the dense path's loss and gradient."""
    x, y, ignored, labelled = weakly_labelled_points(kind, 11)
    fn = {"softmax": LT.lovasz_softmax, "hinge": LT.lovasz_hinge, "multilabel": LT.lovasz_multilabel}[kind]
    points, host = [], SCENES._host_scene_rows
    monkeypatch.setattr(
        SCENES, "_host_scene_rows", lambda pred, *a, **k: points.append(pred.shape[1]) or host(pred, *a, **k)
    )
    options = dict(ignore=-1, per_image=per_image, row_splits=[0, 100, 200, 450, 600], reduction="none")
    gathered = value_and_grad(fn, x, mode, y, **options)
    assert points and set(points) == {labelled}
    monkeypatch.setattr(SCENES, "COMPACT_BELOW", -1.0)
    dense = value_and_grad(fn, x, mode, y, **options)
    assert_same(gathered, dense, ignored)
    assert gathered[0].shape == ((4,) if per_image else ())


@pytest.mark.parametrize("scenes", [False, True])
def test_tf_gradients_through_the_gathered_path(scenes):
    """``tf.gradients`` in a ``tf.function`` (no tape: the kernel runs again for the gradient) through the
    ``tf.cond`` of the gathering, which nests the scene path's own: the tape's gradient. It raised a bare
    ``AssertionError`` from TensorFlow's cond_v2 before the kernel's backward read its own copies."""
    if scenes:  # points of scenes, few labelled
        rng = np.random.default_rng(13)
        x = rng.normal(size=(300, 5)).astype(np.float32)
        labels = rng.integers(0, 5, 300)
        labels[rng.random(300) >= 0.1] = 255
        options = dict(per_image=True, row_splits=[0, 120, 300], reduction="none")
    else:
        x, labels = grid(14)
        options = dict(per_image=True, reduction="none")
    options.update(ignore=255, from_logits=True)
    weights = tf.range(1.0, 3.0 if scenes else 4.0)

    @tf.function
    def symbolic(p):
        losses = LT.lovasz_softmax(p, labels, **options)
        return losses, tf.gradients(tf.reduce_sum(losses * weights), p)[0]

    losses, grad = symbolic(tf.constant(x))
    expected_losses, expected_grad = value_and_grad(
        lambda p: tf.reduce_sum(LT.lovasz_softmax(p, labels, **options) * weights), x, "eager"
    )
    np.testing.assert_allclose(np.sum(losses.numpy() * weights.numpy()), expected_losses, rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("layout", ["BHWC", "BCHW", "hinge"])
def test_second_order_gradient_gathered_equals_dense(monkeypatch, mode, layout):
    """The gradient of a gradient norm (a gradient penalty) through the gathered grid: the gathered
    pixels' gradient is scattered back by the C kernel, whose own gradient is the gather again. Before,
    the scatter had no gradient and the penalty's came back None."""
    logits, labels = grid(15, shape=(2, 6, 5))
    kwargs = dict(per_image=True, ignore=255)
    if layout == "hinge":
        fn, x, labels = LT.lovasz_hinge, logits[..., 0], np.where(labels == 255, 255, labels % 2)
    else:
        fn, x = LT.lovasz_softmax, logits if layout == "BHWC" else np.moveaxis(logits, -1, 1)
        kwargs.update(from_logits=True, order=layout)

    def penalty(p, *args, **kwargs):  # ||d loss / d p||^2, of p through a softmax (or the hinge's elu)
        with tf.GradientTape() as inner:
            inner.watch(p)
            loss = fn(p, *args, **kwargs)
        return tf.reduce_sum(tf.square(inner.gradient(loss, p)))

    if layout == "hinge":
        kwargs.update(margin="elu")
    gathered, dense = gathered_and_dense(monkeypatch, penalty, x, mode, labels, **kwargs)
    assert np.any(gathered[1] != 0)
    assert_same(
        gathered, dense, np.broadcast_to(labels[:, None] == 255, x.shape) if layout == "BCHW" else labels == 255
    )


def test_scattered_grid_holds_the_values_at_their_pixels():
    """The C kernel's scatter of gathered pixels for each grid layout: [B, N], [B, N, K] and [B, K, N]."""
    rng = np.random.default_rng(16)
    images, pixels, rows = 3, 50, 4
    valid = rng.random((images, pixels)) < 0.3
    valid[1] = False  # an image without a valid pixel
    image, pixel = np.nonzero(valid)
    image_ends = np.cumsum(np.bincount(image, minlength=images))
    for shape, values in [
        ((images, pixels), rng.normal(size=pixel.size)),
        ((images, pixels, rows), rng.normal(size=(pixel.size, rows))),
        ((images, rows, pixels), rng.normal(size=(rows, pixel.size))),
    ]:
        values = values.astype(np.float32)
        channels_last = len(shape) == 3 and shape[1] == pixels
        grid = SCENES._host_scattered(values, pixel, image_ends, np.array(shape), channels_last)
        expected = np.zeros(shape, np.float32)
        if len(shape) == 3 and not channels_last:
            expected[image, :, pixel] = values.T
        else:
            expected[image, pixel] = values
        np.testing.assert_array_equal(grid, expected)
    empty = SCENES._host_scattered(
        np.zeros((0, rows), np.float32), pixel[:0], np.zeros(0, np.int64), np.array((0, pixels, rows)), True
    )
    assert empty.shape == (0, pixels, rows)
