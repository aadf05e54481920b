"""The boundary between lovasz.jax and the C kernel on a CPU: ``_jax_rows._host_callback``.

Where JAX has ``jax.experimental.buffer_callback``, the kernel reads XLA's input buffers and
writes its output buffers in place (no copy of a LiDAR grid's predictions or gradient either way); on
older JAX, ``jax.pure_callback`` with new arrays. Both must give the same loss and gradient to the last
bit, on every kernel route (the grid's, its gathered points, the rows of errors, segments of points),
under ``jit``, ``vmap`` and eagerly; every output element is written (XLA's output buffers start with
whatever they held), and the inputs, which the in-place callback could write, are left as they were.
"""

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
    pytest.mark.usefixtures("jax_on_the_cpu"),  # the callback's route is the CPU's, whatever the default device
]


def lidar_grid(seed=0, occupied=0.1):
    """Probabilities ``[2, 5, 6, 5, 4]`` and labels, ``occupied`` of the voxels valid (ignore 0)."""
    rng = np.random.default_rng(seed)
    probas = np.asarray(jax.nn.softmax(rng.normal(size=(2, 5, 6, 5, 4)).astype(np.float32) * 2, axis=1))
    labels = rng.integers(1, 5, (2, 6, 5, 4))
    labels[rng.random(labels.shape) >= occupied] = 0
    return probas, labels


def points(seed=1):
    """Logits of 300 points of 5 classes, their labels (-1 ignored) and segment ids of 4 segments."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(300, 5)).astype(np.float32)
    labels = np.where(rng.random(300) < 0.1, -1, rng.integers(0, 5, 300))
    return logits, labels, np.sort(rng.integers(0, 4, 300))


def softmax_grid(x, labels, per_image):
    return LJ.lovasz_softmax(x, labels, per_image=per_image, ignore=0)


def softmax_dense(x, labels, per_image):  # nothing ignored: the errors' rows (_host_rows)
    return LJ.lovasz_softmax(x, np.maximum(labels, 1), per_image=per_image)


def hinge_grid(x, labels, per_image):
    return LJ.lovasz_hinge(x[:, 1] - x[:, 2], (labels == 1) * 1 + (labels == 0) * 255, per_image, ignore=255)


def segments(x, labels, per_image, ids=None):
    ids = IDS if ids is None else ids
    return LJ.lovasz_softmax(
        x, labels, per_image=per_image, ignore=-1, from_logits=True, segment_ids=ids, num_segments=4
    )


LOGITS, LABELS, IDS = points()
CASES = {
    "grid gathered": (softmax_grid, *lidar_grid(occupied=0.1)),
    "grid rows": (softmax_grid, *lidar_grid(occupied=0.9)),
    "rows of errors": (softmax_dense, *lidar_grid()),
    "hinge grid": (hinge_grid, *lidar_grid(seed=2)),
    "segments": (segments, LOGITS, LABELS),
}


def loss_and_grad(fn, x, labels, per_image, transform):
    run = jax.value_and_grad(lambda x: fn(x, labels, per_image))
    loss, grad = transform(run)(jnp.asarray(x))
    return np.asarray(loss), np.asarray(grad)


def by_pure_callback(run):
    """``run()`` with the callbacks of older JAX, asserting that they ran. JAX keeps the traces of the
    kernel's ``custom_vjp`` functions: they are cleared on the way in and out."""
    calls, pure_callback = [], jax.pure_callback
    with pytest.MonkeyPatch.context() as m:
        m.setattr(JR, "_buffer_callback", None)
        m.setattr(jax, "pure_callback", lambda *a, **k: calls.append(1) or pure_callback(*a, **k))
        jax.clear_caches()
        result = run()
    jax.clear_caches()
    assert calls, "the kernel was not called through jax.pure_callback"
    return result


def batched(run):  # vmap over two copies, the second scaled: each must be its own call's result
    return lambda x: jax.vmap(run)(jnp.stack([x, x * 0.5]))


TRANSFORMS = {"jit": jax.jit, "eager": lambda run: run, "vmap": lambda run: jax.jit(batched(run))}


@pytest.mark.skipif(JR._buffer_callback is None, reason="this JAX has no buffer_callback")
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_in_place_equals_pure_callback_bit_for_bit(case, per_image, transform):
    fn, x, labels = CASES[case]
    in_place = loss_and_grad(fn, x, labels, per_image, TRANSFORMS[transform])
    copied = by_pure_callback(lambda: loss_and_grad(fn, x, labels, per_image, TRANSFORMS[transform]))
    assert np.array_equal(in_place[0], copied[0]) and np.array_equal(in_place[1], copied[1])
    assert np.isfinite(in_place[1]).all()


def test_points_in_no_segment_get_an_exact_zero_in_place():
    """The in-place gradient buffer is XLA's, holding anything: points in no segment (ids past
    ``num_segments``, unchecked under ``jit``) are written 0."""
    ids = IDS.copy()
    ids[-40:] = 9
    for scale in (1, 2, 3):  # freed buffers come back: each call must write every element
        run = jax.jit(jax.value_and_grad(lambda x: segments(x, LABELS, True, ids)))
        grad = np.asarray(run(jnp.asarray(LOGITS * scale))[1])
        assert not grad[ids >= 4].any() and grad[ids < 4].any()


@pytest.mark.parametrize("case", CASES)
def test_inputs_are_left_as_they_were(case):
    """The in-place callback gets XLA's input buffers, writable: the kernel must only read them."""
    fn, x, labels = CASES[case]
    x_jax = jnp.asarray(x)
    before = np.array(x_jax)
    for transform in TRANSFORMS.values():
        loss_and_grad(fn, x_jax, labels, True, transform)
    assert np.array_equal(np.asarray(x_jax), before)


def test_the_kernel_routes_go_in_place_where_jax_can(monkeypatch):
    if JR._buffer_callback is None:
        pytest.skip("this JAX has no buffer_callback")
    calls, original = [], JR._buffer_callback
    monkeypatch.setattr(JR, "_buffer_callback", lambda *a, **k: calls.append(1) or original(*a, **k))
    jax.clear_caches()  # (traces of the kernel's custom_vjp functions from other tests)
    for fn, x, labels in CASES.values():
        del calls[:]
        loss_and_grad(fn, x, labels, False, jax.jit)
        assert calls, f"{fn.__name__} did not reach the kernel in place"


# ----------------------------------------------------------------------------- jax.export


def test_export_refuses_the_callback_and_takes_the_losses_inside_exportable():
    """``jax.export`` cannot serialize a host callback (JAX's own error); inside ``exportable`` the rows are
    sorted in XLA: the exported loss and gradient, after a round trip through bytes, equal the kernel's."""
    for case, (fn, x, labels) in CASES.items():
        run = jax.jit(jax.value_and_grad(lambda x: fn(x, labels, True)))
        with pytest.raises(NotImplementedError):
            jax.export.export(run)(jnp.asarray(x))
        with LJ.exportable():
            exported = jax.export.export(run, platforms=("cpu", "cuda"))(jnp.asarray(x))
        restored = jax.export.deserialize(exported.serialize())
        loss, grad = (np.asarray(a) for a in restored.call(jnp.asarray(x)))
        expected_loss, expected_grad = loss_and_grad(fn, x, labels, True, jax.jit)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, err_msg=case)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7, err_msg=case)


def test_exportable_ends_with_its_block_even_on_an_error(monkeypatch):
    calls, original = [], C.lovasz_rows
    monkeypatch.setattr(C, "lovasz_rows", lambda *a, **k: calls.append(1) or original(*a, **k))
    fn, x, labels = CASES["rows of errors"]
    with pytest.raises(RuntimeError, match="inside"):
        with LJ.exportable():
            loss_and_grad(fn, x, labels, False, jax.jit)
            assert not calls, "the kernel ran inside exportable()"
            raise RuntimeError("inside")
    loss_and_grad(fn, x, labels, False, jax.jit)
    assert calls, "the kernel did not come back after exportable()"


@pytest.mark.parametrize(
    "options",
    [dict(ignore=255), dict(per_image=True, ignore=255), dict(axis=-1, ignore=255), dict(segment_ids=True, ignore=255)],
    ids=["batch", "per image, ignored", "channels-last", "segments"],
)
def test_exportable_with_symbolic_sizes(options):
    """Shape polymorphism (``jax.export.symbolic_shape``): the kernel's size limit compared a symbolic size
    with a number (an inconclusive comparison raised); the exported loss serves every size."""
    (n,) = jax.export.symbolic_shape("n")
    options = dict(options, from_logits=True)
    points = options.pop("segment_ids", False)
    axis = options.get("axis", 1)
    if points:
        shapes = (n, 3), (n,)
        options.update(num_segments=2, per_image=True)

        def loss(x, y):  # points of two segments, taken in turn
            return LJ.lovasz_softmax(x, y, segment_ids=jnp.arange(x.shape[0]) % 2, **options)
    else:
        shapes = ((1, n, 3) if axis == -1 else (1, 3, n)), (1, n)

        def loss(x, y):
            return LJ.lovasz_softmax(x, y, **options)

    run = jax.jit(jax.value_and_grad(loss))
    with LJ.exportable():
        exported = jax.export.export(run)(
            *(jax.ShapeDtypeStruct(s, t) for s, t in zip(shapes, (jnp.float32, jnp.int32)))
        )
    rng = np.random.default_rng(0)
    for size in (5, 12):
        concrete = [tuple(size if d is n else d for d in s) for s in shapes]
        x = rng.normal(size=concrete[0]).astype(np.float32)
        y = rng.integers(0, 3, concrete[1]).astype(np.int32)
        y.reshape(-1)[::4] = 255
        got = exported.call(x, y)
        expected = run(x, y)
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(expected[0]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(expected[1]), rtol=1e-5, atol=1e-7)


SYMBOLIC_BATCH = {
    "softmax": (lambda x, y: LJ.lovasz_softmax(x, y, from_logits=True, ignore=255), ("b", 3, 4, 5), ("b", 4, 5)),
    "softmax per image": (
        lambda x, y: LJ.lovasz_softmax(x, y, per_image=True, ignore=255),
        ("b", 3, 4, 5),
        ("b", 4, 5),
    ),
    "points": (lambda x, y: LJ.lovasz_softmax(x, y, from_logits=True, ignore=255), ("b", 3), ("b",)),
    "hinge": (lambda x, y: LJ.lovasz_hinge(x, y % 2), ("b", 4, 5), ("b", 4, 5)),
    "multilabel": (lambda x, y: LJ.lovasz_multilabel(x, y % 2), ("b", 3, 4), ("b", 3, 4)),
}


@pytest.mark.parametrize("name", SYMBOLIC_BATCH)
def test_exportable_with_a_symbolic_batch(name):
    """A symbolic batch size (``jax.export``'s usual one): points ``[B, C]`` of one set are laid out as one image
    where ``B > 1``, a comparison a symbolic size leaves inconclusive (JAX raised); the layout as it is gives
    the same loss at every size."""
    loss, *shapes = SYMBOLIC_BATCH[name]
    (b,) = jax.export.symbolic_shape("b")
    run = jax.jit(jax.value_and_grad(loss))
    with LJ.exportable():
        exported = jax.export.export(run)(
            *(
                jax.ShapeDtypeStruct(tuple(b if d == "b" else d for d in s), t)
                for s, t in zip(shapes, (jnp.float32, jnp.int32))
            )
        )
    rng = np.random.default_rng(1)
    for size in (1, 2, 7):
        concrete = [tuple(size if d == "b" else d for d in s) for s in shapes]
        x = rng.normal(size=concrete[0]).astype(np.float32)
        y = rng.integers(0, 3, concrete[1]).astype(np.int32)
        got, expected = exported.call(x, y), run(x, y)
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(expected[0]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(expected[1]), rtol=1e-5, atol=1e-7)
