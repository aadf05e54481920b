"""lovasz.jax under ``jax_debug_nans`` and ``jax_debug_infs``, which raise at any op (run op by op outside
``jit``) whose output holds a NaN or an infinity: a loss of finite inputs makes none, in float32 (the C
kernel) and float64 (JAX's sorts), with and without ``jit``, and gives the values and gradients it gives
without the checks. (The float64 sorts keyed ignored pixels by +inf: every loss with ignored pixels failed
there outside ``jit``.)"""

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
