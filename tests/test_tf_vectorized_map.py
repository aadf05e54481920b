"""lovasz.tf under ``tf.vectorized_map`` and the jacobians that vectorize with it (TF's pfor), as per-example
gradients (differential privacy) call the loss: the values, the gradient through the map and the
per-example gradients equal those of the per-image loss. On the C kernel the gradient through the map was
0 without a word (the kernel's custom gradient does not survive pfor), and a batch with ignored pixels
failed inside pfor's conversion of a tf.cond; inside pfor the sorts serve, under XLA ``top_k`` (the packed
sort's custom gradient did not survive either)."""

import functools

import numpy as np
import pytest

from conftest import require

tf = require("tensorflow")
LT = require("lovasz.tf")

rng = np.random.default_rng(0)
X = rng.normal(size=(3, 6, 5, 4)).astype("float32")
Y = rng.integers(0, 4, (3, 6, 5)).astype("int32")
Y[0, :2] = 255
Y[2] = 255
Y[2, 1, 1] = 3  # a mostly ignored image: the kernel route would gather its valid pixels

# each loss on one image [1, ...] and per image on the batch
LOSSES = {
    "softmax from logits": lambda q, y, **kw: LT.lovasz_softmax(q, y, ignore=255, from_logits=True, **kw),
    "softmax of probabilities": lambda q, y, **kw: LT.lovasz_softmax(tf.nn.softmax(q), y, ignore=255, **kw),
    "hinge elu": lambda q, y, **kw: LT.lovasz_hinge(
        q[..., 0], tf.where(y == 255, 255, y % 2), ignore=255, margin="elu", **kw
    ),
    "multilabel": lambda q, y, **kw: LT.lovasz_multilabel(
        q, tf.where(y[..., None] == 255, 255, tf.cast(q > 0, y.dtype)), ignore=255, **kw
    ),
}


def per_image(name):
    return lambda q: LOSSES[name](q, tf.constant(Y), per_image=True, reduction="none")


def one_image(name):
    return lambda args: LOSSES[name](args[0][None], args[1][None], per_image=False)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("name", LOSSES)
def test_values_and_gradients_through_vectorized_map(name, mode):
    x, y = tf.constant(X), tf.constant(Y)

    def through_map(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            values = tf.vectorized_map(one_image(name), (q, y))
            total = tf.reduce_sum(values)
        return values, tape.gradient(total, q)

    def per_example_gradients(q):
        def gradient(args):
            with tf.GradientTape() as tape:
                tape.watch(args[0])
                value = one_image(name)(args)
            return tape.gradient(value, args[0])

        return tf.vectorized_map(gradient, (q, y))

    def jacobian(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            values = per_image(name)(q)
        return tape.jacobian(values, q)

    if mode != "eager":  # under XLA the packed sort's custom gradient was lost in pfor too (a gradient of 0)
        compiled = functools.partial(tf.function, jit_compile=mode == "xla")
        through_map, per_example_gradients, jacobian = map(compiled, (through_map, per_example_gradients, jacobian))
    with tf.GradientTape() as tape:
        tape.watch(x)
        expected = per_image(name)(x)
        total = tf.reduce_sum(expected)
    expected_grad = tape.gradient(total, x)
    assert float(tf.reduce_max(tf.abs(expected_grad))) > 0

    values, grad = through_map(x)
    np.testing.assert_allclose(values.numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(per_example_gradients(x).numpy(), expected_grad.numpy(), rtol=1e-5, atol=1e-7)
    rows = jacobian(x).numpy()  # [B, B, ...]: image b's loss depends on image b alone
    for b in range(len(X)):
        np.testing.assert_allclose(rows[b, b], expected_grad.numpy()[b], rtol=1e-5, atol=1e-7)
        assert not np.delete(rows[b], b, axis=0).any()


def test_every_vectorized_map_of_a_graph_is_seen():
    """pfor names the loop body of the second map in a graph ``loop_body_1``: its gradient is right too."""
    x, y = tf.constant(X), tf.constant(Y)
    name = "softmax from logits"

    @tf.function
    def three_maps(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            with tf.name_scope("outer"):
                first = tf.vectorized_map(one_image(name), (q, y))
            second = tf.vectorized_map(one_image(name), (q, y))
            third = tf.vectorized_map(one_image(name), (q, y))
            total = tf.reduce_sum(first + second + third)
        return tape.gradient(total, q)

    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(per_image(name)(x))
    expected = 3 * tape.gradient(total, x).numpy()
    np.testing.assert_allclose(three_maps(x).numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("persistent", [False, True])
def test_jacobian_of_a_persistent_tape_in_a_function(persistent):
    """A persistent tape keeps the forward's intermediates for pfor; with the kernel's tf.cond (does the grid
    fit) nested in the gathering's, pfor failed to stack one ("a variant-dtype tensor with no type set")."""
    x = tf.constant(X)

    @tf.function
    def jacobian(q):
        with tf.GradientTape(persistent=persistent) as tape:
            tape.watch(q)
            values = per_image("softmax from logits")(q)
        return tape.jacobian(values, q)

    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(per_image("softmax from logits")(x))
    expected = tape.gradient(total, x).numpy()
    rows = jacobian(x).numpy()
    for b in range(len(X)):
        np.testing.assert_allclose(rows[b, b], expected[b], rtol=1e-5, atol=1e-7)
        assert not np.delete(rows[b], b, axis=0).any()  # image b's loss depends on image b alone


def test_a_bad_label_inside_vectorized_map_is_nan_in_its_example():
    """pfor takes no assert: a label out of range (7 of 4 classes, 2 of a mask) makes that example's loss NaN,
    not a class read as background without a word; the other examples keep their values."""
    softmax = lambda args: LT.lovasz_softmax(args[0][None], args[1][None], ignore=255, from_logits=True)  # noqa: E731
    hinge = lambda args: LT.lovasz_hinge(args[0][None, ..., 0], args[1][None], ignore=255)  # noqa: E731
    for loss, labels in [(softmax, Y), (hinge, np.where(Y == 255, 255, Y % 2))]:
        bad = labels.copy()
        bad[1, 0, 0] = 7 if loss is softmax else 2
        values = tf.vectorized_map(loss, (tf.constant(X), tf.constant(bad))).numpy()
        expected = tf.vectorized_map(loss, (tf.constant(X), tf.constant(labels))).numpy()
        assert np.isnan(values[1]) and np.array_equal(values[[0, 2]], expected[[0, 2]])
