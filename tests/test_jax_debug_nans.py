"""lovasz.jax under the checks a careful user turns on. ``jax_debug_nans`` and ``jax_debug_infs`` raise at any
op (run op by op outside ``jit``) whose output holds a NaN or an infinity: a loss of finite inputs makes none,
in float32 (the C kernel) and float64 (JAX's sorts), with and without ``jit``, and gives the values and
gradients it gives without the checks. (The float64 sorts keyed ignored pixels by +inf: every loss with
ignored pixels failed there outside ``jit``.) ``jax_numpy_dtype_promotion='strict'`` and
``jax_numpy_rank_promotion='raise'`` refuse implicit promotions: the losses make none (``w * present`` of a
bool, uint8 labels against int32 classes, ``[R, 1] + [N]`` failed)."""

import numpy as np
import pytest

from conftest import require

jax = require("jax")
jnp = require("jax.numpy")
LJ = require("lovasz.jax")

rng = np.random.default_rng(0)
X = rng.normal(size=(2, 4, 8, 9))
Y = rng.integers(0, 4, (2, 8, 9))
Y[0, :3] = 255
BINARY = np.where(Y == 255, 255, Y % 2)
SEGMENTS = np.arange(144) // 72

LOSSES = {
    "softmax": lambda q: LJ.lovasz_softmax(q, Y, ignore=255, from_logits=True),
    "softmax per image, weights": lambda q: LJ.lovasz_softmax(
        q, Y, per_image=True, ignore=255, from_logits=True, weights=[1.0, 2, 3, 4]
    ),
    "probabilities": lambda q: LJ.lovasz_softmax(jax.nn.softmax(q, 1), Y, ignore=255),
    "hinge elu": lambda q: LJ.lovasz_hinge(q[:, 0], BINARY, ignore=255, margin="elu"),
    "multilabel": lambda q: LJ.lovasz_multilabel(q, q > 0, per_image=True),
    "points of segments": lambda q: LJ.lovasz_softmax(
        jnp.moveaxis(q, 1, -1).reshape(-1, 4),
        Y.reshape(-1),
        ignore=255,
        from_logits=True,
        segment_ids=SEGMENTS,
        num_segments=3,
        per_image=True,
    ),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", LOSSES)
def test_no_nan_or_infinity_is_made(name, dtype, jit):
    step = jax.value_and_grad(LOSSES[name])
    step = jax.jit(step) if jit else step
    with jax.enable_x64(True):
        x = jnp.asarray(X, dtype)
        value, grad = step(x)
        with jax.debug_nans(True), jax.debug_infs(True):
            checked_value, checked_grad = step(x)
    np.testing.assert_allclose(checked_value, value, rtol=1e-6)
    np.testing.assert_allclose(checked_grad, grad, rtol=1e-6, atol=1e-8)
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_a_nan_prediction_is_still_reported():
    x = X.copy()
    x[1, 2, 3, 4] = np.nan
    with jax.enable_x64(True), jax.debug_nans(True), pytest.raises(FloatingPointError):
        jax.value_and_grad(LOSSES["softmax"])(jnp.asarray(x))


STRICT_LOSSES = {
    **LOSSES,
    "uint8 labels, classes": lambda q: LJ.lovasz_softmax(
        q, Y.astype("uint8"), classes=[1, 3], ignore=255, from_logits=True
    ),
    "float labels, channels-last": lambda q: LJ.lovasz_softmax(
        jnp.moveaxis(q, 1, -1), Y.astype("float32"), per_image=True, ignore=255, from_logits=True, axis=-1
    ),
    "sigmoid": lambda q: LJ.lovasz_softmax(jax.nn.sigmoid(q[:, 0]), BINARY.astype("int16"), ignore=255),
    "hinge symmetric, batch": lambda q: LJ.lovasz_hinge(q[:, 0], BINARY, per_image=False, ignore=255, symmetric=True),
    "multilabel ignore, weights": lambda q: LJ.lovasz_multilabel(
        q, jnp.where(Y[:, None] == 255, 255, (q > 0).astype("int32")), ignore=255, weights=[1.0, 0, 2, 1]
    ),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", STRICT_LOSSES)
def test_no_implicit_promotion(name, jit):
    step = jax.value_and_grad(STRICT_LOSSES[name])
    step = jax.jit(step) if jit else step
    x = jnp.asarray(X, "float32")
    value, grad = step(x)
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        checked_value, checked_grad = step(x)
    np.testing.assert_allclose(checked_value, value, rtol=1e-6)
    np.testing.assert_allclose(checked_grad, grad, rtol=1e-6, atol=1e-8)


def test_labels_that_32_bits_cannot_hold_raise_with_x64_off():
    """``jnp.asarray`` narrows 64-bit NumPy labels to 32 bits with x64 off: a label 2**32 + 1 became class 1
    (past the range check), 2**32 + 255 an ignored pixel, 1 + 1e-12 a whole 1, without a word."""
    probas = np.full((1, 3, 4), 1 / 3, "float32")
    with jax.enable_x64(False):
        for bad in (2**32 + 1, 2**31, -(2**31) - 1):
            labels = np.array([[0, 1, 2, bad]], "int64")
            with pytest.raises(ValueError, match=f"labels hold {bad}, which 32 bits do not"):
                LJ.lovasz_softmax(probas, labels, ignore=255)
        with pytest.raises(ValueError, match="labels hold 1.000000000001"):
            LJ.lovasz_softmax(probas, np.array([[0, 1, 2, 1 + 1e-12]]))
        with pytest.raises(ValueError, match="labels hold 4294967297"):  # a Python list too
            LJ.lovasz_softmax(probas, [[0, 1, 2, 2**32 + 1]])
        with pytest.raises(ValueError, match="labels hold 4294967296"):
            LJ.lovasz_hinge(probas[:, 0], np.array([[0, 1, 2**32, 1]], "uint64"))
        labels = np.array([[0, 1, 2, 255]], "int64")  # what 32 bits hold passes
        expected = LJ.lovasz_softmax(probas, labels.astype("int32"), ignore=255)
        assert float(LJ.lovasz_softmax(probas, labels, ignore=255)) == float(expected)
