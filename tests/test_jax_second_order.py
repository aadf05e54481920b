"""Derivatives on the C kernel's routes of lovasz.jax (a CPU, float32): of the gradient (a gradient penalty,
``jax.hessian``, forward over reverse) they equal those of the sorts in JAX (the routes of
``lovasz.jax.exportable()``, on which JAX differentiates every step); a first derivative, reverse or forward
mode, never takes the sorts' route."""

import numpy as np
import pytest

from conftest import require

jax = require("jax")
jnp = jax.numpy
LJ = require("lovasz.jax")
JR = require("lovasz._jax_rows")
C = require("lovasz._ckernel")

pytestmark = [
    pytest.mark.skipif(C.grid_kernel() is None, reason="lovasz built without its C kernel"),
    pytest.mark.usefixtures("jax_on_the_cpu"),
]


def cases():
    """(name, logits, loss of the logits): each kernel route, from logits, so that the softmax gives
    second derivatives that are not zero."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    labels = rng.integers(1, 4, (2, 6, 5))
    grid_labels = np.where(rng.random(labels.shape) < 0.3, labels, 0)  # 70% ignored: the grid gathered
    points = rng.normal(size=(40, 4)).astype(np.float32)
    point_labels = np.where(rng.random(40) < 0.2, -1, rng.integers(0, 4, 40))
    ids = np.sort(rng.integers(0, 3, 40))
    hinge_labels = np.where(point_labels < 0, -1, point_labels % 2)
    return [
        ("rows", logits, lambda x: LJ.lovasz_softmax(x, labels, from_logits=True)),
        ("rows per image", logits, lambda x: LJ.lovasz_softmax(x, labels, per_image=True, from_logits=True)),
        ("grid", logits, lambda x: LJ.lovasz_softmax(x, grid_labels, ignore=0, from_logits=True)),
        (
            "grid hinge",
            logits[:, 0],
            lambda x: LJ.lovasz_hinge(x, (grid_labels == 1) * 1 + (grid_labels == 0) * 9, ignore=9, margin="elu"),
        ),
        (
            "segments",
            points,
            lambda x: LJ.lovasz_softmax(
                x, point_labels, per_image=True, ignore=-1, from_logits=True, segment_ids=ids, num_segments=3
            ),
        ),
        (
            "segments hinge",
            points[:, 0],
            lambda x: LJ.lovasz_hinge(
                x, hinge_labels, per_image=True, ignore=-1, margin="elu", segment_ids=ids, num_segments=3
            ),
        ),
    ]


def derivatives(loss, x):
    """A gradient penalty's gradient, a Hessian-vector product (forward over reverse) and the Hessian."""
    penalty = jax.jit(jax.grad(lambda x: loss(x) + jnp.sum(jax.grad(loss)(x) ** 2)))
    direction = jnp.linspace(-1, 1, x.size, dtype=x.dtype).reshape(x.shape)
    hvp = jax.jit(lambda x: jax.jvp(jax.grad(loss), (x,), (direction,))[1])
    return [penalty(x), hvp(x), jax.hessian(loss)(x)]


@pytest.mark.parametrize("name", [case[0] for case in cases()])
def test_second_derivatives_on_the_kernel_equal_the_sorts(name):
    _, x, loss = next(case for case in cases() if case[0] == name)
    got = derivatives(loss, x)
    with LJ.exportable():
        expected = derivatives(loss, x)
    assert np.abs(np.asarray(expected[2])).max() > 1e-4  # the softmax's curvature: not all zero
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-4, atol=1e-6)


def test_a_first_gradient_stays_on_the_kernel(monkeypatch):
    def refused(*args, **kwargs):
        raise AssertionError("a first gradient took the sorts' route")

    monkeypatch.setattr(JR, "_with_sorted_grad", refused)
    for _, x, loss in cases():
        value, grad = jax.jit(jax.value_and_grad(loss))(x)
        assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("name", [case[0] for case in cases()])
def test_forward_mode_of_the_loss_itself_stays_on_the_kernel(name, monkeypatch):
    """``jax.jvp``, ``jax.linearize`` and ``jax.jacfwd`` of the loss (forward mode, not over a gradient):
    the kernel's gradient dotted with the tangent (a custom_vjp took no forward mode: JAX refused it), equal
    to the sorts' and to reverse mode; the sorts' route is not taken."""
    _, x, loss = next(case for case in cases() if case[0] == name)
    direction = jnp.linspace(-1, 1, x.size, dtype=x.dtype).reshape(x.shape)
    with LJ.exportable():
        _, expected = jax.jvp(loss, (x,), (direction,))
    grad = jax.grad(loss)(x)

    def refused(*args, **kwargs):
        raise AssertionError("a first derivative took the sorts' route")

    monkeypatch.setattr(JR, "_with_sorted_grad", refused)
    value, tangent = jax.jit(lambda x, t: jax.jvp(loss, (x,), (t,)))(x, direction)
    np.testing.assert_allclose(float(value), float(loss(x)), rtol=1e-6)
    np.testing.assert_allclose(float(tangent), float(expected), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(tangent), float(jnp.vdot(grad, direction)), rtol=1e-4, atol=1e-6)
    _, linear = jax.linearize(loss, x)
    np.testing.assert_allclose(float(linear(direction)), float(tangent), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jax.jacfwd(loss)(x)), np.asarray(grad), rtol=1e-5, atol=1e-7)
