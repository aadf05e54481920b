"""lovasz.tf under TF's forward mode (``tf.autodiff.ForwardAccumulator``): the JVP equals the gradient's
dot product with the tangent. TF's forward mode sees no derivative through the C kernel's
``tf.numpy_function`` in a graph (it gave a JVP of 0 in ``tf.function``, without a word), nor through the
packed sort's custom gradient under XLA (float32), so a prediction that carries a tangent goes through
TF's sorts, ``top_k`` under XLA."""

import numpy as np
import pytest

from conftest import require

tf = require("tensorflow")
LT = require("lovasz.tf")


def logits_and_labels(dtype="float32"):
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 6, 5, 4)).astype(dtype), rng.integers(0, 4, (2, 6, 5))


def jvp_and_dot(loss, x, tangent, mode):
    def jvp(x):
        with tf.autodiff.ForwardAccumulator(x, tangent) as accumulator:
            value = loss(x)
        return accumulator.jvp(value)

    def dot(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x)
        return tf.reduce_sum(tape.gradient(value, x) * tangent)

    if mode != "eager":  # under XLA the packed sort's custom gradient gave a JVP of 0 in float32
        jvp, dot = tf.function(jvp, jit_compile=mode == "xla"), tf.function(dot, jit_compile=mode == "xla")
    return float(jvp(x)), float(dot(x))


LOSSES = {
    "softmax": lambda y: lambda x: LT.lovasz_softmax(x, y, from_logits=True),
    "softmax per image": lambda y: lambda x: LT.lovasz_softmax(x, y, per_image=True, from_logits=True),
    "hinge elu": lambda y: lambda x: LT.lovasz_hinge(x[..., 0], y % 2, margin="elu"),
    "points of scenes": lambda y: (
        lambda x: LT.lovasz_softmax(
            tf.reshape(x, [-1, 4]), tf.reshape(y, [-1]), per_image=True, from_logits=True, row_splits=[0, 25, 60]
        )
    ),
}


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_forward_mode_gives_the_gradients_dot_product(name, mode):
    logits, labels = logits_and_labels()
    x = tf.constant(logits)
    tangent = tf.constant(np.linspace(-1, 1, logits.size).reshape(logits.shape).astype("float32"))
    got, expected = jvp_and_dot(LOSSES[name](tf.constant(labels)), x, tangent, mode)
    assert expected != 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_mode_with_ignored_pixels(dtype, mode):
    """Ignored pixels (the sorts' key -inf) add nothing to the JVP: it was NaN (-inf times a zero tangent)."""
    logits, labels = logits_and_labels(dtype)
    labels[:, :2] = 0
    x = tf.constant(logits)
    tangent = tf.constant(np.linspace(-1, 1, logits.size).reshape(logits.shape).astype(dtype))
    points = lambda x: LT.lovasz_softmax(  # noqa: E731
        tf.reshape(x, [-1, 4]), labels.reshape(-1), per_image=True, ignore=0, from_logits=True, row_splits=[0, 25, 60]
    )
    for per_image in (False, True, "scenes"):
        loss = (
            points
            if per_image == "scenes"
            else lambda x: LT.lovasz_softmax(  # noqa: E731
                x, labels, per_image=per_image, ignore=0, from_logits=True
            )
        )
        got, expected = jvp_and_dot(loss, x, tangent, mode)
        assert expected != 0
        np.testing.assert_allclose(got, expected, rtol=1e-4 if dtype == "float32" else 1e-9, atol=1e-12)
