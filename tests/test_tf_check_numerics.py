"""lovasz.tf under ``tf.debugging.enable_check_numerics()``, which raises at any op whose output holds an
infinity or a NaN: a loss of finite inputs makes none on any route (the C kernel, TF's sorts, the packed
int64 keys of the GPU), eagerly or in ``tf.function``, and gives the values and gradients it gives without
the checks. (The sorts keyed ignored pixels by -inf, and NaN constants stood ready for NaN errors: every
loss with ignored pixels failed there, as it would have on any GPU.) XLA does not compile the checks' ops
(TF's own limit), so ``jit_compile`` is left out."""

import numpy as np
import pytest

from conftest import require, tf_value_and_grad

tf = require("tensorflow")
LT = require("lovasz.tf")
ROWS = require("lovasz._tf_rows")

rng = np.random.default_rng(0)
X = rng.normal(size=(2, 8, 9, 4)).astype("float32")
Y = rng.integers(0, 4, (2, 8, 9))
Y[0, :3] = 255
GRID = rng.normal(size=(1, 10, 10, 4, 3)).astype("float32")
GRID_LABELS = np.full((1, 10, 10, 4), 255)
GRID_LABELS[0, :2, :2] = 1
BINARY = np.where(Y == 255, 255, Y % 2)

LOSSES = {
    "softmax": (X, lambda q: LT.lovasz_softmax(q, Y, ignore=255, from_logits=True)),
    "softmax per image, weights": (
        X,
        lambda q: LT.lovasz_softmax(q, Y, per_image=True, ignore=255, from_logits=True, weights=[1.0, 2, 3, 4]),
    ),
    "probabilities": (X, lambda q: LT.lovasz_softmax(tf.nn.softmax(q), Y, ignore=255)),
    "hinge": (X, lambda q: LT.lovasz_hinge(q[..., 0], BINARY, ignore=255)),
    "hinge elu": (X, lambda q: LT.lovasz_hinge(q[..., 0], BINARY, ignore=255, margin="elu")),
    "multilabel": (X, lambda q: LT.lovasz_multilabel(q, tf.cast(q > 0, tf.int32), per_image=True, ignore=255)),
    "points of scenes": (
        X,
        lambda q: LT.lovasz_softmax(
            tf.reshape(q, [-1, 4]), Y.reshape(-1), ignore=255, from_logits=True, row_splits=[0, 72, 144], per_image=True
        ),
    ),
    "mostly ignored grid": (GRID, lambda q: LT.lovasz_softmax(q, GRID_LABELS, ignore=255, from_logits=True)),
}


@pytest.fixture(params=["kernel", "sorts", "packed keys"])
def route(request, monkeypatch):
    """The C kernel, TF's sorts (``top_k``: float64, forward mode, exportable()), or the packed int64 keys of
    a GPU (forced here on the CPU)."""
    if request.param != "kernel":
        monkeypatch.setattr(ROWS, "use_kernel", lambda pred: False)
    if request.param == "packed keys":
        monkeypatch.setattr(ROWS, "sort_layout", lambda errors: ROWS.PACKED_FLAT)
    return request.param


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", LOSSES)
def test_no_infinity_or_nan_is_made_on_any_route(route, mode, name):
    x, loss = LOSSES[name]
    value, grad = tf_value_and_grad(loss, x, mode)
    tf.debugging.enable_check_numerics()
    try:
        checked_value, checked_grad = tf_value_and_grad(loss, x, mode)
    finally:
        tf.debugging.disable_check_numerics()
    np.testing.assert_allclose(checked_value, value, rtol=1e-6)
    np.testing.assert_allclose(checked_grad, grad, rtol=1e-6, atol=1e-8)
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_a_nan_prediction_is_still_reported():
    """The checks still do their job: a NaN logit at a valid pixel is caught."""
    x = X.copy()
    x[1, 2, 3, 0] = np.nan
    tf.debugging.enable_check_numerics()
    try:
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
            tf_value_and_grad(LOSSES["softmax"][1], x, "eager")
    finally:
        tf.debugging.disable_check_numerics()
