"""Point clouds in lovasz.jax: ``segment_ids=`` / ``num_segments=`` on points-first inputs.

Each segment's loss equals the oracle's on that segment alone, its gradient that of the dense
loss of the segment; on both paths (the C kernel through a host callback, one ``lax.sort``
by (segment, error)), under ``jax.jit``, with the points in any order.
"""

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

jax = require("jax")
jnp = jax.numpy
LJ = require("lovasz.jax")
JR = require("lovasz._jax_rows")

SIZES = [5, 0, 17, 1, 40, 9]


@pytest.fixture(params=["kernel", "sort"])
def path(request, monkeypatch):
    if request.param == "sort":
        monkeypatch.setattr(JR.C, "applies", lambda dtype, size: False)
    return request.param


def data(num_classes, seed, multilabel=False, sizes=SIZES):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(size=(n, num_classes)).astype(np.float32) * 2
    if multilabel:
        y = rng.integers(0, 2, (n, num_classes))
    else:
        y = rng.integers(0, num_classes, n)
        y[sizes[0] : sizes[0] + 3] = 255
    segment = np.repeat(np.arange(len(sizes)), sizes)
    return x, y, segment, rng.permutation(n)


def runs(sizes=SIZES):
    ends = np.cumsum(sizes)
    return [slice(start, end) for start, end in zip(np.concatenate([[0], ends[:-1]]), ends)]


@pytest.mark.parametrize("classes", ["present", "all", [2, 0, 0]])
@pytest.mark.parametrize("from_logits", [False, True])
def test_softmax_per_segment_equals_the_oracle_points_in_any_order(path, classes, from_logits):
    x, y, segment, order = data(4, seed=1)
    probas = np.asarray(jax.nn.softmax(x, -1), np.float64)
    expected = [
        R.lovasz_softmax(probas[r].T[None], y[r][None], classes, True, 255) if r.stop > r.start else 0.0 for r in runs()
    ]
    inputs = x if from_logits else probas.astype(np.float32)
    got = LJ.lovasz_softmax(
        inputs[order],
        y[order],
        classes,
        True,
        255,
        from_logits=from_logits,
        segment_ids=segment[order],
        num_segments=len(SIZES),
        reduction="none",
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shuffled", [False, True])
def test_gradient_equals_the_dense_gradient_of_each_segment_under_jit(path, shuffled):
    x, y, segment, order = data(5, seed=2)
    y = np.where(y == 255, 255, np.minimum(y, 4))
    order = order if shuffled else np.arange(len(y))  # grouped by segment, or not: sorted inside

    @jax.jit
    def loss(p, labels, ids):
        losses = LJ.lovasz_softmax(
            p, labels, "all", True, 255, from_logits=True, segment_ids=ids, num_segments=len(SIZES), reduction="none"
        )
        return (losses * jnp.arange(1.0, len(SIZES) + 1)).sum()  # a different weight per segment

    grad = np.empty_like(x)
    grad[order] = np.asarray(jax.grad(loss)(jnp.asarray(x[order]), y[order], segment[order]))
    for s, r in enumerate(runs()):
        if r.stop == r.start:
            continue

        def dense(p, r=r):
            return LJ.lovasz_softmax(p.T[None], y[r][None], "all", True, 255, from_logits=True)

        expected = np.asarray(jax.grad(dense)(jnp.asarray(x[r]))) * (s + 1)
        np.testing.assert_allclose(grad[r], expected, rtol=1e-5, atol=1e-6)
    assert not grad[SIZES[0] : SIZES[0] + 3].any()  # ignored points


@pytest.mark.parametrize("margin,symmetric", [("relu", False), ("elu", False), ("relu", True)])
def test_hinge_and_multilabel_per_segment_equal_the_oracle(path, margin, symmetric):
    x, y, segment, order = data(3, seed=3, multilabel=True)
    logits, labels = x[:, 0], y[:, 0]
    options = dict(margin=margin, symmetric=symmetric)
    expected = [
        R.lovasz_hinge(logits[r][None].astype(np.float64), labels[r][None], True, **options) if r.stop > r.start else 0
        for r in runs()
    ]
    got = LJ.lovasz_hinge(logits[order], labels[order], segment_ids=segment[order], reduction="none", **options)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    expected = [
        R.lovasz_multilabel(x[r].T[None].astype(np.float64), y[r].T[None], **options) if r.stop > r.start else 0
        for r in runs()
    ]
    segments = dict(segment_ids=segment[order], num_segments=len(SIZES), reduction="none")
    got = LJ.lovasz_multilabel(x[order], y[order], **segments, **options)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_without_per_image_all_points_are_one_set_and_empty_segments_get_zero(path):
    x, y, segment, _ = data(4, seed=4)
    y = np.where(y == 255, 255, np.minimum(y, 3))
    one = LJ.lovasz_softmax(x, y, ignore=255, from_logits=True, segment_ids=segment)
    expected = R.lovasz_softmax(np.asarray(jax.nn.softmax(x, -1), np.float64).T[None], y[None], ignore=255)
    np.testing.assert_allclose(float(one), expected, rtol=1e-5)
    losses = LJ.lovasz_softmax(x, y, ignore=255, per_image=True, segment_ids=segment, num_segments=8, reduction="none")
    assert np.asarray(losses)[[1, 6, 7]].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("loss", ["softmax", "probabilities", "hinge", "multilabel"])
def test_points_without_segments_are_one_set_as_one_image_of_the_points(path, loss):
    """Points ``[N, C]`` (``[N]`` for the hinge) with no ``segment_ids`` are one set (Pointcept's call): the
    loss and gradient of the same points as one image ``[1, C, N]``, and the oracle's loss, under jit."""
    x, y, _, _ = data(4, seed=9, multilabel=loss == "multilabel")
    if loss == "softmax":
        f = lambda x, y: LJ.lovasz_softmax(x, y, ignore=255, from_logits=True)  # noqa: E731
        image = lambda x, y: LJ.lovasz_softmax(x.T[None], y[None], ignore=255, from_logits=True)  # noqa: E731
        expected = R.lovasz_softmax(np.asarray(jax.nn.softmax(x, -1), np.float64).T[None], y[None], ignore=255)
    elif loss == "probabilities":
        x = np.asarray(jax.nn.softmax(x, -1))
        f = lambda x, y: LJ.lovasz_softmax(x, y, "all", ignore=255)  # noqa: E731
        image = lambda x, y: LJ.lovasz_softmax(x.T[None], y[None], "all", ignore=255)  # noqa: E731
        expected = R.lovasz_softmax(x.astype(np.float64).T[None], y[None], "all", ignore=255)
    elif loss == "hinge":
        x, y = x[:, 0], (y == 1).astype(np.int64)
        f = lambda x, y: LJ.lovasz_hinge(x, y, per_image=False)  # noqa: E731
        image = lambda x, y: LJ.lovasz_hinge(x[None], y[None], per_image=False)  # noqa: E731
        expected = R.lovasz_hinge(x.astype(np.float64)[None], y[None], per_image=False)
    else:
        f = lambda x, y: LJ.lovasz_multilabel(x, y, per_image=False)  # noqa: E731
        image = lambda x, y: LJ.lovasz_multilabel(x.T[None], y.T[None], per_image=False)  # noqa: E731
        expected = R.lovasz_multilabel(x.astype(np.float64).T[None], y.T[None], per_image=False)
    value, grad = jax.jit(jax.value_and_grad(f))(x, y)
    image_value, image_grad = jax.jit(jax.value_and_grad(image))(x, y)
    np.testing.assert_allclose(float(value), float(image_value), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(image_grad), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_bad_segments_raise_clear_errors():
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 3), np.float32), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"segment_ids must be in \[0, 1\] at every point \(ignored ones too\)"):
        LJ.lovasz_softmax(x, y, per_image=True, segment_ids=np.array([0, 1, 2, 1]), num_segments=2)
    with pytest.raises(ValueError, match=r"at every point \(ignored ones too\); found 5"):  # (said: non-ignored)
        LJ.lovasz_softmax(x, [0, 255, 2, 0], per_image=True, ignore=255, segment_ids=[0, 5, 1, 1], num_segments=2)
    with pytest.raises(ValueError, match=r"segment_ids must be integers, one per point, shape \(4,\)"):
        LJ.lovasz_softmax(x, y, segment_ids=np.array([0, 1, 1]))
    with pytest.raises(TypeError, match="num_segments goes with segment_ids="):
        LJ.lovasz_softmax(x, y, num_segments=2)
    with pytest.raises(TypeError, match="num_segments must be a non-negative int"):
        LJ.lovasz_softmax(x, y, segment_ids=np.array([0, 0, 1, 1]), num_segments=2.0)
    with pytest.raises(ValueError, match="num_segments must be a non-negative int; got -1"):
        LJ.lovasz_softmax(x, y, segment_ids=np.array([0, 0, 1, 1]), num_segments=-1)
    with pytest.raises(TypeError, match="num_segments must be a static int .*not an array"):
        jax.jit(lambda n: LJ.lovasz_softmax(x, y, segment_ids=np.array([0, 0, 1, 1]), num_segments=n))(2)
    np.testing.assert_allclose(  # NumPy's ints are static ints
        LJ.lovasz_softmax(x, y, per_image=True, segment_ids=np.array([0, 0, 1, 1]), num_segments=np.int64(2)),
        LJ.lovasz_softmax(x, y, per_image=True, segment_ids=np.array([0, 0, 1, 1]), num_segments=2),
    )
    with pytest.raises(ValueError, match=r"probas must be points-first, \[N, C\]"):
        LJ.lovasz_softmax(rng.random((4, 3, 2)), y, segment_ids=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels must have shape \[4\] for probas of shape \[4, 3\]"):
        LJ.lovasz_softmax(x, np.zeros((4, 3), int), segment_ids=np.array([0, 0, 1, 1]))
    with pytest.raises(TypeError, match=r"known only when traced \(jax.jit, jax.vmap.*need a static num_segments="):
        jax.jit(lambda ids: LJ.lovasz_softmax(x, y, segment_ids=ids))(np.array([0, 0, 1, 1]))
    with pytest.raises(TypeError, match="need a static num_segments="):  # vmap traces them too
        jax.vmap(lambda ids: LJ.lovasz_softmax(x, y, segment_ids=ids))(np.array([[0, 0, 1, 1]]))
    with pytest.raises(TypeError, match=r"not an array; got an array of shape \(\)$"):
        LJ.lovasz_softmax(x, y, segment_ids=np.array([0, 0, 1, 1]), num_segments=jax.numpy.int32(2))
    with pytest.raises(ValueError, match=r"logits must be points-first, \[N\] \(or \[N, 1\].*got \[4, 3\]"):
        LJ.lovasz_hinge(x, y % 2, segment_ids=np.array([0, 0, 1, 1]))  # three scores per point (the shape given)


@pytest.mark.parametrize("loss", ["softmax", "multilabel"])
def test_axis_of_points_with_segments_is_checked(loss):
    """With segment_ids= the class axis of points [N, C] is 1 (or -1): axis=0, 2 or 'x' were replaced by -1
    without a word."""
    x, y, segment, _ = data(3, seed=4, multilabel=loss == "multilabel")
    y = np.where(y == 255, 0, y)
    function = LJ.lovasz_softmax if loss == "softmax" else LJ.lovasz_multilabel
    expected = function(x, y, per_image=True, segment_ids=segment)
    for axis in [1, -1]:
        np.testing.assert_array_equal(function(x, y, per_image=True, segment_ids=segment, axis=axis), expected)
    for axis, error, message in [
        (0, ValueError, r"axis must be a class axis of the rank-2 prediction, in \[1, 1\] .* got 0"),
        (2, ValueError, r"axis must be a class axis of the rank-2 prediction.* got 2"),
        ("x", TypeError, r"axis must be an int .* got 'x'"),
    ]:
        with pytest.raises(error, match=message):
            function(x, y, per_image=True, segment_ids=segment, axis=axis)


@pytest.mark.parametrize("top", [0, 3, 2**20])  # 2**20 x 5,000 points: past int32, the argsort serves
def test_points_are_put_in_segment_order_stably(top):
    """One sort of ``key * N + position`` gives numpy's stable argsort, ties in point order."""
    rng = np.random.default_rng(top)
    for n in [0, 1, 7, 5000]:
        key = rng.integers(0, top + 1, n).astype(np.int32)
        got = jax.jit(lambda k: LJ._stable_order(k, top))(key)  # noqa: B023
        np.testing.assert_array_equal(np.asarray(got), np.argsort(key, kind="stable"))


def test_concrete_arrays_a_jitted_function_closes_over():
    """Inside a trace, operations on concrete arrays are traced too: their checks are skipped, not crashed on
    (segment ids and labels captured by a jitted function, as in a training step built once)."""
    x, y, segment, order = data(4, seed=9)
    y = np.where(y == 255, 0, y)
    ids, labels = jnp.asarray(segment[order]), jnp.asarray(y[order])
    eager = LJ.lovasz_softmax(x[order], labels, per_image=True, segment_ids=ids, num_segments=len(SIZES))
    step = jax.jit(lambda p: LJ.lovasz_softmax(p, labels, per_image=True, segment_ids=ids, num_segments=len(SIZES)))
    np.testing.assert_allclose(np.asarray(step(x[order])), np.asarray(eager), rtol=1e-6)
    with pytest.raises(TypeError, match="need a static num_segments="):
        jax.jit(lambda p: LJ.lovasz_softmax(p, labels, per_image=True, segment_ids=ids))(x[order])
    dense = jax.jit(lambda p: LJ.lovasz_softmax(p, labels[None] * 1, per_image=True))  # dense labels captured
    assert np.isfinite(np.asarray(dense(x[order].T[None])))


NO_SEGMENT_CASES = {  # each loss on the routes where a NaN at a point in no segment could reach the gradient
    "softmax": dict(ignore=255, from_logits=True),
    "softmax, class weights": dict(ignore=255, from_logits=True, weights=[1.0, 2.0, 0.5, 1.0]),
    "hinge, elu": dict(margin="elu"),
    "multilabel": dict(ignore=255, from_logits=True),
}


@pytest.mark.parametrize("case", NO_SEGMENT_CASES)
@pytest.mark.parametrize("per_image", [False, True])
def test_points_in_no_segment_take_no_part_under_jit_nan_or_not(path, case, per_image):
    """Points with an id out of range (jit checks none; a padded batch's padding) take no part: in batch mode
    they are not counted, per segment they are in none; NaN logits there reach neither the value nor the
    gradient (per segment they reached the gradient of the softmax and of the elu margin)."""
    loss = case.split(",")[0]
    x, y, segment, order = data(4, seed=12, multilabel=loss == "multilabel")
    if loss == "hinge":
        x, y = x[:, 0], np.where(y == 255, 0, y % 2)
    outside = segment[order].copy()
    outside[[3, 30, 60]] = [len(SIZES), -1, len(SIZES) + 7]
    kept = np.ones(len(y), bool)
    kept[[3, 30, 60]] = False
    function = {"softmax": LJ.lovasz_softmax, "hinge": LJ.lovasz_hinge, "multilabel": LJ.lovasz_multilabel}[loss]
    options = dict(NO_SEGMENT_CASES[case], per_image=per_image, num_segments=len(SIZES))
    x, y = x[order], y[order]
    x[~kept] = np.nan  # padding

    def weighted(p, labels, ids):
        losses = function(p, labels, segment_ids=ids, reduction="none", **options)
        return losses @ jnp.arange(1.0, len(SIZES) + 1, dtype=losses.dtype) if per_image else losses

    got, grad = jax.jit(jax.value_and_grad(weighted))(jnp.asarray(x), y, outside)
    expected, expected_grad = jax.value_and_grad(weighted)(jnp.asarray(x[kept]), y[kept], outside[kept])
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    assert not np.asarray(grad)[~kept].any()
    np.testing.assert_allclose(np.asarray(grad)[kept], np.asarray(expected_grad), rtol=1e-5, atol=1e-7)


def test_num_segments_zero_with_points_raises():
    """No segment for any point: a clear error, eagerly and under jit (which crashed in a gather)."""
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 2, 0])
    for per_image in [False, True]:
        call = lambda ids: LJ.lovasz_softmax(x, y, per_image=per_image, segment_ids=ids, num_segments=0)  # noqa: B023, E731
        for run in [call, jax.jit(call)]:
            with pytest.raises(ValueError, match="num_segments=0 leaves the 4 points in no segment"):
                run(np.zeros(4, np.int32))
    empty = LJ.lovasz_softmax(
        np.ones((0, 3)),
        np.zeros(0, int),
        per_image=True,
        segment_ids=np.zeros(0, int),
        num_segments=0,
        reduction="none",
    )
    assert empty.shape == (0,)


@pytest.mark.parametrize("dtype,num_segments", [("int8", 127), ("int8", 128), ("uint8", 256), ("int16", 32767)])
def test_narrow_segment_ids_up_to_what_their_dtype_holds(dtype, num_segments):
    """num_segments at the top of the ids' dtype wrapped in the ids' dtype: valid ids were refused eagerly (or an
    OverflowError) and fell out of their segments under jit (a loss of 0)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 3)).astype("float32"), rng.integers(0, 3, 10)
    ids = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    for per_image in [True, False]:

        def loss(ids):
            options = dict(per_image=per_image, from_logits=True, reduction="none")
            return LJ.lovasz_softmax(x, y, segment_ids=ids, num_segments=num_segments, **options)  # noqa: B023

        expected = loss(ids.astype("int32"))
        np.testing.assert_array_equal(loss(ids.astype(dtype)), expected)
        np.testing.assert_array_equal(jax.jit(loss)(jnp.asarray(ids, dtype)), expected)
    with pytest.raises(ValueError, match=r"segment_ids must be in \[0, num_segments\); got only negative ones"):
        LJ.lovasz_softmax(x, y, segment_ids=-1 - ids.astype(dtype.lstrip("u")))


def test_points_in_no_segment_take_no_part_under_jit(path):
    """Under jit the segment ids are not checked: points with an id out of range belong to no segment."""
    x, y, segment, _ = data(4, seed=11)
    y = np.where(y == 255, 0, y)
    outside = segment.copy()
    outside[[3, 30, 60]] = [len(SIZES), -1, len(SIZES) + 7]
    kept = np.ones(len(y), bool)
    kept[[3, 30, 60]] = False

    def losses(p, labels, ids):
        return LJ.lovasz_softmax(
            p, labels, per_image=True, from_logits=True, segment_ids=ids, num_segments=len(SIZES), reduction="none"
        )

    got, vjp = jax.vjp(jax.jit(losses), jnp.asarray(x), y, outside)
    expected, expected_vjp = jax.vjp(losses, jnp.asarray(x[kept]), y[kept], segment[kept])
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)
    weights = jnp.arange(1.0, len(SIZES) + 1, dtype=got.dtype)  # float32 also where another test enabled x64
    grad, expected_grad = np.asarray(vjp(weights)[0]), np.asarray(expected_vjp(weights)[0])
    assert not grad[~kept].any()
    np.testing.assert_allclose(grad[kept], expected_grad, rtol=1e-5, atol=1e-7)


def test_traced_classes_are_named_as_such():
    x, y = np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.int32)
    with pytest.raises(TypeError, match=r"classes must be known when the function is traced.*static argument"):
        jax.jit(lambda c: LJ.lovasz_softmax(x, y, classes=c))(np.array([1, 2]))


def test_a_traced_ignore_and_a_float_tensor_ignore_are_named():
    """A traced ``ignore`` got JAX's ConcretizationTypeError from ``int()``; a 0-d float tensor 2.5 was
    truncated to class 2 by ``int()`` without a word."""
    torch = pytest.importorskip("torch")
    from lovasz._validation import check_ignore

    x, y = np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.int32)
    with pytest.raises(TypeError, match=r"ignore must be an int known when the function is traced.*static argument"):
        jax.jit(lambda i: LJ.lovasz_softmax(x, y, ignore=i))(255)
    with pytest.raises(TypeError, match=r"ignore must be an int or None; got tensor\(2.5000\)"):
        check_ignore(torch.tensor(2.5))
    assert check_ignore(torch.tensor(255)) == 255 and check_ignore(np.uint8(7)) == 7
