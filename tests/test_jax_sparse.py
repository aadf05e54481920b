"""Grids where most pixels are ignored (LiDAR voxel grids) in lovasz.jax: on a CPU, in float32, one callback
hands the grid and its codes to the C kernel, which gathers the valid pixels where they are at most
``_jax_rows.COMPACT_BELOW`` of the grid, sorts them as points of scenes and writes the gradient back into
the grid (``_jax_rows.grid_rows``); else it sorts the grid's rows. The host chooses at each call, so one
``jax.jit`` serves any occupancy.

Both branches must give what the route that carries the grid through the errors gives (``lovasz_kernel``:
the same sort, ties in the same pixel order): the same loss and gradient to float32's last bits, and an
exact zero at every ignored pixel, whatever the prediction holds there.
"""

import itertools

import numpy as np
import pytest
from cases import weakly_labelled_points

from conftest import require
from lovasz import reference

jax = require("jax")
jnp = jax.numpy
LJ = require("lovasz.jax")
JR = require("lovasz._jax_rows")
C = require("lovasz._ckernel")

# The arrays are made on the CPU, whose route this is; test_sorts_off_the_cpu_agree compares with the default
# device's sorts (a GPU's where there is one).
pytestmark = [
    pytest.mark.skipif(C.grid_kernel() is None, reason="lovasz built without its C kernel"),
    pytest.mark.usefixtures("jax_on_the_cpu"),
]


def grid(seed, shape=(3, 5, 6, 4), num_classes=5, occupied=0.1, ignore=255):
    """Logits ``[B, C, *spatial]`` and labels, ``occupied`` of them valid; the last image has none."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(shape[0], num_classes, *shape[1:])).astype(np.float32) * 2
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) >= occupied] = ignore
    labels[-1] = ignore
    return logits, labels


def value_and_grad(fn, x, *args, jit=True, **kwargs):
    run = jax.value_and_grad(lambda x: fn(x, *args, **kwargs))
    loss, grad = (jax.jit(run) if jit else run)(jnp.asarray(x))
    return np.asarray(loss), np.asarray(grad)


def gathers(monkeypatch):
    """A list that grows by one each time the kernel gathers a grid's valid pixels."""
    runs, gather = [], C.gather_pixels
    monkeypatch.setattr(C, "gather_pixels", lambda *a, **k: runs.append(1) or gather(*a, **k))
    return runs


def former_route(fn, x, *args, **kwargs):
    """:func:`value_and_grad` by the route before the grid path: errors made in XLA, the grid sorted whole."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(JR, "grid_applies", lambda pred, valid: False)
        m.setattr(JR, "points_first_applies", lambda points: False)
        return value_and_grad(fn, x, *args, **kwargs)


def three_paths(monkeypatch, fn, x, *args, **kwargs):
    """``fn``'s loss and gradient gathered, by the grid's rows on the host, and through the errors in XLA
    (the route before the grid path); asserts that each ran as named."""
    runs = gathers(monkeypatch)
    gathered = value_and_grad(fn, x, *args, **kwargs)
    assert runs, "the valid pixels were not gathered"
    monkeypatch.setattr(JR, "COMPACT_BELOW", -1.0)
    del runs[:]
    dense = value_and_grad(fn, x, *args, **kwargs)
    assert not runs, "the dense branch gathered"
    errors = former_route(fn, x, *args, **kwargs)
    monkeypatch.undo()
    return gathered, dense, errors


def assert_same(results, ignored):
    (loss, grad), *others = results
    for other_loss, other_grad in others:
        np.testing.assert_allclose(loss, other_loss, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grad, other_grad, rtol=1e-6, atol=1e-9)
    for _, each_grad in results:
        assert np.all(each_grad[ignored] == 0), "an ignored pixel got a gradient"


def ignored_in_every_class(labels, ignore, num_classes):
    return np.broadcast_to((labels == ignore)[:, None], (labels.shape[0], num_classes, *labels.shape[1:]))


OPTIONS = list(itertools.product([False, True], ["present", "all", [1, 3, 3]], [False, True]))


@pytest.mark.parametrize("per_image,classes,from_logits", OPTIONS)
def test_softmax_gathered_equals_dense(monkeypatch, per_image, classes, from_logits):
    logits, labels = grid(1)
    x = logits if from_logits else np.asarray(jax.nn.softmax(logits, axis=1))
    options = dict(classes=classes, per_image=per_image, ignore=255, from_logits=from_logits)
    results = three_paths(monkeypatch, LJ.lovasz_softmax, x, labels, **options)
    assert_same(results, ignored_in_every_class(labels, 255, 5))
    probas = np.asarray(jax.nn.softmax(logits, axis=1), np.float64)
    expected = reference.lovasz_softmax(probas, labels, classes, per_image, 255)
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_channels_last_and_eager(monkeypatch, per_image):
    """Channels-last input (``axis=-1``), and a call outside ``jax.jit`` (the callback runs eagerly): the
    points-first route (tests/test_jax_points_first.py), which gathers the valid points as the grid's does."""
    logits, labels = grid(2)
    x = np.moveaxis(np.asarray(jax.nn.softmax(logits, axis=1)), 1, -1)
    runs, host = [], JR._points_into
    monkeypatch.setattr(JR, "_points_into", lambda *a, **k: runs.append(1) or host(*a, **k))
    eager = value_and_grad(LJ.lovasz_softmax, x, labels, per_image=per_image, ignore=255, axis=-1, jit=False)
    assert runs
    jitted = value_and_grad(LJ.lovasz_softmax, x, labels, per_image=per_image, ignore=255, axis=-1)
    errors = former_route(LJ.lovasz_softmax, x, labels, per_image=per_image, ignore=255, axis=-1)
    assert_same([eager, jitted, errors], np.broadcast_to((labels == 255)[..., None], x.shape))


@pytest.mark.parametrize("ignore", [0, 19, 255, -1])
def test_lidar_ignore_values(monkeypatch, ignore):
    """The ignore values of Cylinder3D / SalsaNext (0), 2DPASS (19 of 20 classes), PolarSeg (255), Pointcept (-1)."""
    rng = np.random.default_rng(3)
    shape = (2, 6, 5, 4)
    labels = rng.integers(1, 19, shape)
    labels[rng.random(shape) >= 0.07] = ignore
    x = np.asarray(jax.nn.softmax(rng.normal(size=(2, 20, *shape[1:])).astype(np.float32), axis=1))
    results = three_paths(monkeypatch, LJ.lovasz_softmax, x, labels, ignore=ignore)
    assert_same(results, ignored_in_every_class(labels, ignore, 20))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("margin,symmetric", [("relu", False), ("elu", False), ("relu", True)])
def test_hinge_gathered_equals_dense(monkeypatch, per_image, margin, symmetric):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 7, 6)).astype(np.float32) * 2
    labels = rng.integers(0, 2, logits.shape)
    labels[rng.random(logits.shape) >= 0.1] = 255
    options = dict(per_image=per_image, ignore=255, margin=margin, symmetric=symmetric)
    assert_same(three_paths(monkeypatch, LJ.lovasz_hinge, logits, labels, **options), labels == 255)


@pytest.mark.parametrize("from_logits", [False, True])
def test_multilabel_partly_ignored(monkeypatch, from_logits):
    """A pixel ignored in some channels only is gathered, and stays ignored in those."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 4, 7, 6)).astype(np.float32)
    targets = rng.integers(0, 2, logits.shape)
    targets[rng.random(logits.shape) >= 0.08] = 255  # a pixel valid in some channel: ~28%
    x = logits if from_logits else np.asarray(jax.nn.sigmoid(logits))
    options = dict(per_image=False, ignore=255, from_logits=from_logits)
    assert_same(three_paths(monkeypatch, LJ.lovasz_multilabel, x, targets, **options), targets == 255)


@pytest.mark.parametrize("per_image", [False, True])
def test_all_ignored_gives_zero(monkeypatch, per_image):
    logits, labels = grid(6)
    labels[:] = 255
    gathered, dense, errors = three_paths(
        monkeypatch, LJ.lovasz_softmax, logits, labels, per_image=per_image, ignore=255
    )
    for loss, grad in (gathered, dense, errors):
        assert loss == 0 and np.all(grad == 0)


def test_mostly_valid_grid_stays_dense(monkeypatch):
    logits, labels = grid(7, occupied=0.9)
    labels[-1] = 0  # every image mostly valid
    runs = gathers(monkeypatch)
    value_and_grad(LJ.lovasz_softmax, logits, labels, ignore=255)
    assert not runs


def test_one_jit_takes_both_branches(monkeypatch):
    """The choice is the host's, at each call: one compiled function serves any occupancy."""
    runs = gathers(monkeypatch)
    step = jax.jit(jax.value_and_grad(lambda x, y: LJ.lovasz_softmax(x, y, ignore=255)))
    for seed, occupied in [(8, 0.1), (9, 0.9), (10, 0.05)]:
        logits, labels = grid(seed, occupied=occupied)
        labels[-1] = labels[0]  # (grid leaves the last image empty)
        del runs[:]
        loss, grad = step(jnp.asarray(logits), jnp.asarray(labels))
        assert bool(runs) == (occupied < 0.5)
        expected = former_route(LJ.lovasz_softmax, logits, labels, ignore=255)
        np.testing.assert_allclose(loss, expected[0], rtol=1e-6)
        np.testing.assert_allclose(grad, expected[1], rtol=1e-6, atol=1e-9)


def test_vmap_over_grids(monkeypatch):
    """``jax.vmap`` of the loss: the callback takes the mapped axis, each grid as alone."""
    logits, labels = grid(11, shape=(4, 5, 6, 4))
    x, y = logits.reshape(2, 2, *logits.shape[1:]), labels.reshape(2, 2, *labels.shape[1:])
    runs = gathers(monkeypatch)
    per_grid = jax.vmap(jax.value_and_grad(lambda x, y: LJ.lovasz_softmax(x, y, ignore=255, from_logits=True)))
    losses, grads = jax.jit(per_grid)(jnp.asarray(x), jnp.asarray(y))
    assert runs
    for i in range(2):
        loss, grad = former_route(LJ.lovasz_softmax, x[i], y[i], ignore=255, from_logits=True)
        np.testing.assert_allclose(losses[i], loss, rtol=1e-6)
        np.testing.assert_allclose(grads[i], grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("occupied", [0.1, 0.9])
def test_nan_at_ignored_pixels_stays_out(occupied):
    """NaN or inf predictions at ignored pixels reach neither the loss nor the gradient (both branches);
    a NaN at a valid pixel makes the loss NaN."""
    logits, labels = grid(12, occupied=occupied)
    labels[-1] = labels[0]
    x = np.asarray(jax.nn.softmax(logits, axis=1))
    ignored = ignored_in_every_class(labels, 255, 5)
    clean = value_and_grad(LJ.lovasz_softmax, x, labels, ignore=255)
    x_bad = np.where(ignored & (np.arange(x.size).reshape(x.shape) % 2 == 0), np.nan, x)
    x_bad = np.where(ignored & (np.arange(x.size).reshape(x.shape) % 3 == 0), np.inf, x_bad).astype(np.float32)
    loss, grad = value_and_grad(LJ.lovasz_softmax, x_bad, labels, ignore=255)
    np.testing.assert_array_equal(loss, clean[0])
    np.testing.assert_array_equal(grad, clean[1])
    valid_pixel = tuple(np.argwhere(~ignored)[0])
    x_bad[valid_pixel] = np.nan
    assert np.isnan(value_and_grad(LJ.lovasz_softmax, x_bad, labels, ignore=255)[0])


@pytest.mark.parametrize("occupied", [0.1, 0.9])
@pytest.mark.parametrize("margin,symmetric", [("relu", False), ("elu", False), ("elu", True)])
def test_nan_logits_at_ignored_pixels_stay_out_of_the_hinge(occupied, margin, symmetric):
    """The hinge and its variants (elu's derivative at NaN is NaN), and multi-label from logits: NaN or inf
    logits at ignored pixels change neither the loss nor the gradient, on both branches."""
    rng = np.random.default_rng(14)
    logits = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    targets = rng.integers(0, 2, logits.shape)
    ignored = rng.random(logits.shape) >= occupied
    targets[ignored] = 255
    bad = np.where(ignored & (rng.random(logits.shape) < 0.5), np.nan, logits)
    bad = np.where(ignored & np.isfinite(bad) & (rng.random(logits.shape) < 0.5), -np.inf, bad).astype(np.float32)
    options = dict(ignore=255, margin=margin, symmetric=symmetric)
    for loss in (LJ.lovasz_hinge, LJ.lovasz_multilabel):
        x, y, bad_x = (logits[:, 0], targets[:, 0], bad[:, 0]) if loss is LJ.lovasz_hinge else (logits, targets, bad)
        clean = value_and_grad(loss, x, y, **options)
        dirty = value_and_grad(loss, bad_x, y, **options)
        np.testing.assert_array_equal(dirty[0], clean[0])
        np.testing.assert_array_equal(dirty[1], clean[1])


@pytest.mark.parametrize("hinge", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
def test_sorts_off_the_cpu_agree(hinge, per_image):
    """``_grid_sorted``, the branch that ``platform_dependent`` lowers off the CPU, equals the kernel's."""
    logits, labels = grid(13)
    fg = jnp.asarray(labels)[:, None] == jnp.arange(5).reshape(1, -1, 1, 1, 1)
    valid = jnp.asarray(labels != 255)[:, None]
    pred = jnp.asarray(logits if hinge else np.asarray(jax.nn.softmax(logits, axis=1))).reshape(3, 5, -1)
    codes = JR.pixel_codes((fg & valid).reshape(3, 5, -1), jnp.broadcast_to(valid, fg.shape).reshape(3, 5, -1))
    mode = C.HINGE if hinge else C.SOFTMAX

    def total(rows):
        return lambda pred: rows(pred)[0].sum()

    default = jax.devices()[0]  # a GPU where there is one: the sorts run where platform_dependent sends them
    pred_there, codes_there = jax.device_put((pred, codes), default)
    kernel = total(lambda pred: JR._host_grid(pred, codes, JR.GridOptions(mode, per_image, True)))
    sorts = total(lambda pred: JR._grid_sorted(pred, codes_there, hinge, per_image))
    np.testing.assert_allclose(kernel(pred), sorts(pred_there), rtol=1e-6)
    # XLA on a GPU divides to within 2 ulp, not 0.5: its float32 gradient differs a little more.
    rtol = 1e-6 if default.platform == "cpu" else 3e-5
    np.testing.assert_allclose(jax.grad(kernel)(pred), jax.grad(sorts)(pred_there), rtol=rtol, atol=1e-9)
    np.testing.assert_array_equal(
        JR._host_grid(pred, codes, JR.GridOptions(mode, per_image, True))[1],
        JR._grid_sorted(pred_there, codes_there, hinge, per_image)[1],
    )


@pytest.mark.parametrize("kind", ["softmax", "hinge", "multilabel"])
def test_weakly_labelled_points_of_segments_are_gathered(monkeypatch, kind):
    """Points of segments (``segment_ids=``) of which few are labelled (weak supervision): the kernel sorts
    the labelled ones only, each segment's its own (one has none); the loss and gradient of sorting all of
    them, and of the sorts in JAX."""
    x, y, ignored, labelled = weakly_labelled_points(kind, 12)
    fn = {"softmax": LJ.lovasz_softmax, "hinge": LJ.lovasz_hinge, "multilabel": LJ.lovasz_multilabel}[kind]
    weighted = lambda x, *a, **k: fn(x, *a, **k) @ jnp.arange(1.0, 5.0)  # noqa: E731  each segment its own
    sorted_points = []  # the points each kernel call sorts: softmax's take the points route, [N, C]
    kernel, points_axis = ("lovasz_points", 0) if kind == "softmax" else ("lovasz_scene_rows", -1)
    sorts = getattr(C, kernel)
    monkeypatch.setattr(C, kernel, lambda e, *a: sorted_points.append(e.shape[points_axis]) or sorts(e, *a))
    options = dict(
        ignore=-1,
        per_image=True,
        segment_ids=np.repeat(np.arange(4), [100, 100, 250, 150]),
        num_segments=4,
        reduction="none",
    )
    gathered = value_and_grad(weighted, x, y, **options)
    assert sorted_points and set(sorted_points) == {labelled}
    monkeypatch.setattr(JR, "COMPACT_BELOW", -1.0)
    del sorted_points[:]
    dense = value_and_grad(weighted, x, y, **options)
    assert sorted_points and set(sorted_points) == {600}
    monkeypatch.setattr(JR.C, "applies", lambda dtype, size: False)
    assert_same([gathered, dense, value_and_grad(weighted, x, y, **options)], ignored)
