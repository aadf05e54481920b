"""Points-first inputs in lovasz.jax: channels-last grids (``axis=-1``, Flax's layout) and points ``[N, C]``.
On a CPU, in float32, the C kernel reads them where they lie, takes the softmax of logits itself and weighs
the rows by the class mean on the host (``_jax_rows.points_first_loss``), gathering the points that count
where they are few. Every case must give what the sorts in XLA give (``without_callbacks``, the route of
every other platform): the loss and gradient, its derivatives, under jit and vmap, and an exact zero at each
ignored point whatever the prediction holds there.
"""

import numpy as np
import pytest

from conftest import require

jax = require("jax")
jnp = jax.numpy
LJ = require("lovasz.jax")
JR = require("lovasz._jax_rows")
C = require("lovasz._ckernel")

pytestmark = pytest.mark.skipif(C.points_kernel() is None, reason="lovasz built without its C kernel")

SHAPES = {"image": (3, 5, 7, 4), "volume": (2, 4, 3, 3, 5), "points": (300, 6)}
# per_image, classes, reduction: each option's every value once in both modes
COMBINATIONS = [(False, "present", "mean"), (False, "all", "sum"), (True, "present", "mean"), (True, "all", "none")]


@pytest.fixture
def kernel_calls(monkeypatch):
    """A list that grows by one at each call of the points' host callback."""
    calls, host = [], JR._points_into
    monkeypatch.setattr(JR, "_points_into", lambda *args, **kwargs: calls.append(1) or host(*args, **kwargs))
    return calls


def inputs(shape, ignored, logits, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 2
    if not logits:
        x = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    y = rng.integers(0, shape[-1], shape[:-1])
    y[rng.random(y.shape) < ignored] = 255
    x[y == 255] = np.nan  # read nowhere
    return x, y


def value_and_grad(x, y, **options):
    fn = jax.jit(jax.value_and_grad(lambda x: LJ.lovasz_softmax(x, y, axis=-1, ignore=255, **options).sum()))
    return fn(jnp.asarray(x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ignored", [0.0, 0.3, 0.95, 1.0])  # 0.95: the points that count are gathered first
@pytest.mark.parametrize("logits", [False, True])
def test_points_first_equal_the_sorts_in_xla(shape, ignored, logits, kernel_calls):
    x, y = inputs(SHAPES[shape], ignored, logits, seed=int(ignored * 100) + logits)
    for per_image, classes, reduction in COMBINATIONS:
        options = dict(per_image=per_image, classes=classes, reduction=reduction, from_logits=logits)
        calls = len(kernel_calls)
        value, grad = value_and_grad(x, y, **options)
        assert len(kernel_calls) > calls  # this route, not the dense one
        with JR.without_callbacks():
            expected_value, expected_grad = value_and_grad(x, y, **options)
        np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
        assert not np.asarray(grad)[y == 255].any()


def test_vmap_and_second_derivatives(kernel_calls):
    x, y = inputs((4, 300, 6), 0.2, True, seed=5)

    def per_sample(x, y):
        return jax.vmap(jax.value_and_grad(lambda x, y: LJ.lovasz_softmax(x, y, ignore=255, from_logits=True)))(x, y)

    values, grads = jax.jit(per_sample)(x, y)
    assert kernel_calls
    with JR.without_callbacks():
        expected_values, expected_grads = jax.jit(per_sample)(x, y)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5)
    np.testing.assert_allclose(grads, expected_grads, rtol=1e-4, atol=1e-6)

    image, labels = inputs((2, 3, 4, 5), 0.0, True, seed=6)

    def loss(x):
        return LJ.lovasz_softmax(x, labels, per_image=True, from_logits=True, axis=-1)

    hessian = jax.hessian(loss)(jnp.asarray(image))
    with JR.without_callbacks():
        expected = jax.hessian(loss)(jnp.asarray(image))
    assert np.abs(expected).max() > 1e-4  # the softmax's curvature
    np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-6)


def test_class_weights_lists_and_float64_take_the_dense_route(kernel_calls):
    x, y = inputs((3, 5, 7, 4), 0.3, False, seed=7)
    for options in [dict(weights=[1.0, 2.0, 0.5, 1.0]), dict(classes=[0, 2, 2])]:
        LJ.lovasz_softmax(jnp.asarray(x), y, ignore=255, axis=-1, **options)
    with jax.enable_x64(True):
        LJ.lovasz_softmax(jnp.asarray(x, jnp.float64), y, ignore=255, axis=-1)
    # one channel, its last axis the pixels': a sigmoid's output [B, N], read as [1 - p, p]
    probas = jnp.array([[0.2, 0.7, 0.9]])
    expected = LJ.lovasz_softmax(jnp.stack([1 - probas, probas], 1), jnp.array([[0, 1, 1]]))
    np.testing.assert_allclose(LJ.lovasz_softmax(probas, jnp.array([[0, 1, 1]])), expected)
    assert not kernel_calls


def segment_ids_of(order, num_points):
    """Ids of 4 segments (the third empty): grouped, shuffled, or with ids out of range (no segment's)."""
    ids = np.repeat([0, 1, 3, 2], [num_points // 4, num_points // 4, num_points // 4, num_points - num_points // 4 * 3])
    ids[ids == 2] = 0 if order != "grouped" else 3  # segment 2 gets no point
    ids.sort()
    if order == "out of range":
        ids[::7] = 9
    return ids if order == "grouped" else np.random.default_rng(3).permutation(ids)


@pytest.mark.parametrize("order", ["grouped", "shuffled", "out of range"])
@pytest.mark.parametrize("ignored", [0.3, 0.95])
@pytest.mark.parametrize("logits", [False, True])
def test_points_of_segments_equal_the_sorts_in_xla(order, ignored, logits, kernel_calls):
    """Points ``[N, C]`` with ``segment_ids`` (Pointcept's batch of scenes): one set per segment, or all of
    them one set, through the kernel with the segments' ends; ids out of range (jit checks none) in none."""
    x, y = inputs((600, 6), ignored, logits, seed=11 + logits)
    ids = segment_ids_of(order, 600)
    for per_image, classes, reduction in COMBINATIONS:
        options = dict(per_image=per_image, classes=classes, reduction=reduction, from_logits=logits)

        @jax.jit
        def loss_and_grad(x, ids):
            def loss(x):
                per_set = LJ.lovasz_softmax(x, y, ignore=255, segment_ids=ids, num_segments=4, **options)
                return per_set @ jnp.arange(1.0, 5.0) if per_set.ndim else per_set  # each segment its own

            return jax.value_and_grad(loss)(x)

        calls = len(kernel_calls)
        value, grad = loss_and_grad(jnp.asarray(x), ids)
        assert len(kernel_calls) > calls
        with JR.without_callbacks():
            expected_value, expected_grad = loss_and_grad(jnp.asarray(x), ids)
        np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
        assert not np.asarray(grad)[(y == 255) | (ids >= 4)].any()


def test_points_of_segments_second_derivatives(monkeypatch):
    """The Hessian of the loss of segments: derivatives of the points route's sorts in XLA (the kernel has none)."""
    sorts, points_sorted = [], JR._points_sorted
    monkeypatch.setattr(JR, "_points_sorted", lambda *args, **kwargs: sorts.append(1) or points_sorted(*args, **kwargs))
    x, y = inputs((60, 4), 0.2, True, seed=13)
    ids = segment_ids_of("shuffled", 60)

    def loss(x):
        return LJ.lovasz_softmax(x, y, ignore=255, from_logits=True, per_image=True, segment_ids=ids, num_segments=4)

    x = jnp.asarray(np.nan_to_num(x))
    hessian = jax.hessian(loss)(x)
    assert sorts
    with JR.without_callbacks():
        expected = jax.hessian(loss)(x)
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-6)
