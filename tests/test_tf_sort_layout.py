"""lovasz.tf's sort layout for a GPU, run on the CPU: float32 rows go into ONE 1-D sort of packed int64
keys (row | error | pixel index | label), which on a GPU reaches the one-segment radix sort (XLA's sort
of one s64 operand, or top_k of one row), where a sort of [R, N] rows takes CUB's segmented sort.

The fixture makes every tensor read as off the CPU (what ``sort_layout`` and ``use_kernel`` look at),
so the C kernel is left out and the GPU layout runs here, eagerly, in tf.function and under XLA. Loss
and gradient are checked against lovasz.reference (ties in pixel order), with ignored pixels, NaN,
empty rows and the fallback where the bits run out (groups of rows, one sort each, or top_k).
The points of scenes (``row_splits=``) likewise: every class row in one 1-D sort, the scene between
the row and the error, against the oracle on each scene alone.
"""

import re

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

tf = require("tensorflow")
LT = require("lovasz.tf")
ROWS = require("lovasz._tf_rows")

MODES = ["eager", "function", "xla"]
IGNORE = 255
TIED = np.array([0.0, 0.25, 0.5, 0.75, 1.0])  # saturated probabilities: errors of exactly 0 and 1, many ties


@pytest.fixture
def gpu(monkeypatch):
    """lovasz.tf as on a GPU; yields the (index bits, rows per sort) of each traced packed sort."""
    monkeypatch.setattr(ROWS, "on_cpu", lambda x: False)
    traced, sort = [], ROWS._packed_sort

    def counted(errors, fg, index_bits, rows_per_sort):
        traced.append((index_bits, rows_per_sort))
        return sort(errors, fg, index_bits, rows_per_sort)

    monkeypatch.setattr(ROWS, "_packed_sort", counted)
    return traced


def compiled(fn, mode):
    return fn if mode == "eager" else tf.function(fn, jit_compile=mode == "xla")


def value_and_grad(loss, mode):
    def run(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x, y)
        return value, tape.gradient(value, x, unconnected_gradients="zero")

    return compiled(run, mode)


def softmax_case(seed, batch=3, pixels=20, num_classes=4, ignore=True):
    """Probabilities ``[B, N, C]`` (channels-last), half of them saturated (ties), and labels."""
    rng = np.random.default_rng(seed)
    probas = rng.random((batch, pixels, num_classes))
    tied = rng.random(probas.shape) < 0.5
    probas[tied] = rng.choice(TIED, size=int(tied.sum()))
    labels = rng.integers(0, num_classes, (batch, pixels))
    if ignore and batch:
        labels[0, :3] = IGNORE
    return probas.astype(np.float32), labels


def hinge_case(seed, batch=3, pixels=20, ignore=True):
    """Logits ``[B, N]``, half of them from a few values (ties, margins of exactly 0), and 0/1 labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, pixels)) * 2
    tied = rng.random(logits.shape) < 0.5
    logits[tied] = rng.choice([-1.0, 0.0, 1.0, 2.0], size=int(tied.sum()))
    labels = rng.integers(0, 2, (batch, pixels))
    if ignore and batch:
        labels[0, :3] = IGNORE
    return logits.astype(np.float32), labels


def sets(batch, per_image):
    return [[b] for b in range(batch)] if per_image else [list(range(batch))]


def oracle_softmax(probas, labels, per_image, ignore):
    """Loss and d loss / d probas of ``lovasz_softmax(classes='all')``, in float64."""
    probas = probas.astype(np.float64)
    loss = R.lovasz_softmax(np.moveaxis(probas, -1, 1), labels, classes="all", per_image=per_image, ignore=ignore)
    batch, pixels, num_classes = probas.shape
    grad, groups = np.zeros(probas.shape), sets(batch, per_image)
    for images in groups:
        p, y = probas[images].reshape(-1, num_classes), labels[images].reshape(-1)
        valid = np.ones(y.shape, bool) if ignore is None else y != ignore
        g = np.zeros(p.shape)
        for c in range(num_classes):
            fg = (y[valid] == c).astype(np.float64)
            errors = np.abs(fg - p[valid, c])
            slope = np.where(errors > 0, 1 - 2 * fg, 0.0)
            g[valid, c] = R.lovasz_extension_grad(errors, fg) * slope / num_classes / len(groups)
        grad[images] = g.reshape(len(images), pixels, num_classes)
    return loss, grad


def oracle_hinge(logits, labels, per_image, ignore):
    """Loss and d loss / d logits of ``lovasz_hinge``, in float64."""
    logits = logits.astype(np.float64)
    loss = R.lovasz_hinge(logits, labels, per_image=per_image, ignore=ignore)
    grad, groups = np.zeros(logits.shape), sets(logits.shape[0], per_image)
    for images in groups:
        x, y = logits[images].reshape(-1), labels[images].reshape(-1)
        valid = np.ones(y.shape, bool) if ignore is None else y != ignore
        fg = y[valid].astype(np.float64)
        signs = 2 * fg - 1
        margins = 1 - signs * x[valid]
        g = np.zeros(x.shape)
        steps = R.lovasz_extension_grad(np.maximum(margins, 0), fg)
        g[valid] = np.where(margins > 0, steps, 0.0) * -signs / len(groups)
        grad[images] = g.reshape(len(images), -1)
    return loss, grad


def run_case(kind, x, y, per_image, ignore, mode):
    if kind == "softmax":
        loss = lambda x, y: LT.lovasz_softmax(x, y, classes="all", per_image=per_image, ignore=ignore)  # noqa: E731
        expected = oracle_softmax(x, y, per_image, ignore)
    else:
        loss = lambda x, y: LT.lovasz_hinge(x, y, per_image=per_image, ignore=ignore)  # noqa: E731
        expected = oracle_hinge(x, y, per_image, ignore)
    value, grad = value_and_grad(loss, mode)(tf.constant(x), tf.constant(y))
    return (float(value), grad.numpy()), expected


def assert_matches(got, expected):
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("kind", ["softmax", "hinge"])
@pytest.mark.parametrize("ignore", [None, IGNORE])
def test_gpu_layout_matches_the_oracle(gpu, kind, per_image, mode, ignore):
    x, y = softmax_case(1) if kind == "softmax" else hinge_case(2)
    if ignore is None:
        y = np.where(y == IGNORE, 0, y)
    got, expected = run_case(kind, x, y, per_image, ignore, mode)
    assert_matches(got, expected)
    assert gpu and all(rows_per_sort is not None for _, rows_per_sort in gpu)  # the 1-D sort, not the rows


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_present_classes_and_logits(gpu, mode):
    """The default options (present classes, from logits) against the oracle's loss, and the CPU path's gradient."""
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(2, 6, 5, 4)) * 3).astype(np.float32)
    labels = rng.integers(0, 3, (2, 6, 5))  # class 3 absent
    labels[1, 0] = IGNORE
    loss = lambda x, y: LT.lovasz_softmax(x, y, per_image=True, ignore=IGNORE, from_logits=True)  # noqa: E731
    value, grad = value_and_grad(loss, mode)(tf.constant(logits), tf.constant(labels))
    expected = R.lovasz_softmax(
        np.moveaxis(logits, -1, 1).astype(np.float64), labels, per_image=True, ignore=IGNORE, from_logits=True
    )
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    gpu.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ROWS, "on_cpu", lambda x: True)  # the CPU's paths (the C kernel, or XLA's sort of the rows)
        _, cpu_grad = value_and_grad(loss, mode)(tf.constant(logits), tf.constant(labels))
    np.testing.assert_allclose(grad.numpy(), cpu_grad.numpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_nan_at_a_valid_pixel(gpu, mode):
    """A NaN at a valid pixel: the loss NaN, that pixel's gradient NaN; an ignored pixel's NaN reaches neither."""
    probas, labels = softmax_case(4, batch=2, pixels=12, num_classes=3)
    probas[1, 5, 0] = np.nan  # valid
    probas[0, 1, :] = np.nan  # ignored (labels[0, :3])
    loss = lambda x, y: LT.lovasz_softmax(x, y, classes="all", ignore=IGNORE)  # noqa: E731
    value, grad = value_and_grad(loss, mode)(tf.constant(probas), tf.constant(labels))
    grad = grad.numpy()
    assert np.isnan(float(value))
    assert np.isnan(grad[1, 5, 0])
    np.testing.assert_array_equal(grad[0, :3], 0.0)
    others = np.ones(grad.shape, bool)
    others[1, 5, 0] = False
    assert np.all(np.isfinite(grad[others]))

    probas[1, 5, 0] = 0.5  # the ignored NaN alone: as if absent
    clean = np.where(np.isnan(probas), 0.0, probas)
    got = value_and_grad(loss, mode)(tf.constant(probas), tf.constant(labels))
    assert_matches((float(got[0]), got[1].numpy()), oracle_softmax(clean, labels, False, IGNORE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0, 20), (3, 0), (2, 1)], ids=["no image", "no pixel", "one pixel"])
def test_gpu_layout_empty_and_tiny_rows(gpu, mode, shape):
    probas, labels = softmax_case(5, batch=shape[0], pixels=shape[1], num_classes=3, ignore=False)
    loss = lambda x, y: LT.lovasz_softmax(x, y, classes="all", per_image=True)  # noqa: E731
    value, grad = value_and_grad(loss, mode)(tf.constant(probas), tf.constant(labels))
    assert grad.shape == probas.shape
    if probas.size == 0:
        assert float(value) == 0.0
    else:
        assert_matches((float(value), grad.numpy()), oracle_softmax(probas, labels, True, None))


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_all_ignored_image(gpu, mode):
    logits, labels = hinge_case(6, batch=3, pixels=16)
    labels[2] = IGNORE
    got, expected = run_case("hinge", logits, labels, True, IGNORE, mode)
    assert_matches(got, expected)
    np.testing.assert_array_equal(got[1][2], 0.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spare_bits", [0, 1, -1], ids=["one row per sort", "two rows per sort", "top_k"])
def test_gpu_layout_when_the_bits_run_out(gpu, monkeypatch, mode, spare_bits):
    """With fewer bits than rows x pixels need: groups of rows, one 1-D sort each (an odd row count leaves a
    short last group), or, where not even an index fits, top_k of the rows: the same loss and gradient."""
    probas, labels = softmax_case(7, batch=3, pixels=20, num_classes=3)  # per image: 9 rows of 20 pixels
    index_bits = ROWS.index_bits_for(20)
    monkeypatch.setattr(ROWS, "ROW_AND_INDEX_BITS", index_bits + spare_bits)
    got, expected = run_case("softmax", probas, labels, True, IGNORE, mode)
    assert_matches(got, expected)
    if spare_bits < 0:
        assert gpu == []
    else:
        assert gpu and all(traced == (index_bits, 1 << spare_bits) for traced in gpu)


def sorts_in_hlo(fn, *args):
    hlo = fn.experimental_get_compiler_ir(*args)(stage="hlo")
    return re.findall(r"= (\S+) sort\(([^)]*)\)", hlo)


@pytest.mark.parametrize("spare_bits", [None, 1])
def test_gpu_layout_compiles_to_one_1d_sort_of_one_s64_operand(gpu, monkeypatch, spare_bits):
    """The packed form under XLA: one sort, of one operand, 1-D s64 of every row's pixels (per group of
    rows where the bits run out); no sort of [R, N] rows, no top_k."""
    probas, labels = softmax_case(8, batch=3, pixels=20, num_classes=3)
    if spare_bits is not None:
        monkeypatch.setattr(ROWS, "ROW_AND_INDEX_BITS", ROWS.index_bits_for(20) + spare_bits)
    fn = tf.function(lambda x, y: LT.lovasz_softmax(x, y, per_image=True, ignore=IGNORE), jit_compile=True)
    sorts = sorts_in_hlo(fn, tf.constant(probas), tf.constant(labels))
    groups = [9] if spare_bits is None else [2, 2, 2, 2, 1]  # rows in each sort: 3 images x 3 classes
    assert [shape for shape, _ in sorts] == [f"s64[{rows * 20}]{{0}}" for rows in groups]
    assert all(operands.count("s64[") == 1 for _, operands in sorts)


def test_sort_layout_choices(gpu, monkeypatch):
    """float32 of a known shape on a GPU: the 1-D sort; float64, or a shape not known when traced: top_k.
    On a CPU: XLA's sort of the rows under XLA, top_k outside (where the C kernel does not run)."""
    assert ROWS.sort_layout(tf.zeros((3, 5), tf.float32)) == ROWS.PACKED_FLAT
    assert ROWS.sort_layout(tf.zeros((3, 5), tf.float64)) == ROWS.TOP_K
    seen = []  # the layouts chosen while traced
    record = lambda x: seen.append(ROWS.sort_layout(x)) or x  # noqa: E731
    tf.function(record, input_signature=[tf.TensorSpec([None, 5])])(tf.zeros((3, 5)))
    monkeypatch.setattr(ROWS, "on_cpu", lambda x: True)
    assert ROWS.sort_layout(tf.zeros((3, 5), tf.float32)) == ROWS.TOP_K
    tf.function(record, jit_compile=True)(tf.zeros((3, 5)))
    assert seen == [ROWS.TOP_K, ROWS.PACKED_ROWS]


# ----------------------------------------------------------------------------- points of scenes

SCENES = require("lovasz._tf_scenes")
SIZES = [5, 0, 17, 1, 40, 9]  # an empty scene, a one-point scene: 72 points, 6 scenes
HOST_SCENE_ROWS = SCENES._host_scene_rows  # the C kernel, before a fixture fails it


@pytest.fixture
def gpu_scenes(monkeypatch):
    """lovasz.tf's scenes as on a GPU; yields the (scene bits, index bits, rows per sort) of each traced
    packed sort, and fails any run of the C kernel (which only a CPU takes)."""
    monkeypatch.setattr(ROWS, "on_cpu", lambda x: False)
    traced, sort = [], SCENES._scene_packed_sort

    # not converted by autograph: its cache of converted functions mixed these up with lovasz's own later
    @tf.autograph.experimental.do_not_convert
    def counted(errors, fg, splits, scene_bits, index_bits, rows_per_sort):
        traced.append((scene_bits, index_bits, rows_per_sort))
        return sort(errors, fg, splits, scene_bits, index_bits, rows_per_sort)

    @tf.autograph.experimental.do_not_convert
    def no_kernel(*args, **kwargs):
        raise AssertionError("the C kernel ran with the tensors on a GPU")

    monkeypatch.setattr(SCENES, "_scene_packed_sort", counted)
    monkeypatch.setattr(SCENES, "_host_scene_rows", no_kernel)
    return traced


def splits_of(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def scene_runs(splits):
    return [slice(int(a), int(b)) for a, b in zip(splits[:-1], splits[1:])]


def scene_weights(num_scenes):
    return np.arange(1.0, num_scenes + 1)  # a different weight per scene: each scene's cotangent counts


def scene_value_and_grad(loss, mode, num_scenes):
    """``(x, y, splits) -> (losses [S], d sum_s w_s losses_s / d x)`` in ``mode``."""
    weights = tf.constant(scene_weights(num_scenes), tf.float32)

    def run(x, y, splits):
        with tf.GradientTape() as tape:
            tape.watch(x)
            losses = loss(x, y, splits)
            total = tf.reduce_sum(losses * weights)
        return losses, tape.gradient(total, x, unconnected_gradients="zero")

    return compiled(run, mode)


def scene_oracle(oracle, x, y, splits, ignore):
    """Each scene's loss and the gradient of their weighted sum, from the per-image oracle on each scene alone."""
    losses, grad = [], np.zeros(x.shape)
    for weight, run in zip(scene_weights(len(splits) - 1), scene_runs(splits)):
        if run.stop == run.start:
            losses.append(0.0)
            continue
        loss, g = oracle(x[None, run], y[None, run], True, ignore)
        losses.append(loss)
        grad[run] = weight * g[0]
    return np.array(losses), grad


def scene_case(kind, seed, sizes=SIZES, num_classes=4, ignore=True):
    """Points-first predictions and labels of scenes of ``sizes``, ties among them, the first three points
    of the third scene ignored."""
    if kind == "softmax":
        x, y = softmax_case(seed, batch=1, pixels=sum(sizes), num_classes=num_classes, ignore=False)
    else:
        x, y = hinge_case(seed, batch=1, pixels=sum(sizes), ignore=False)
    x, y = x[0], y[0]
    if ignore and sizes and sum(sizes) >= sizes[0] + 3:
        y[sizes[0] : sizes[0] + 3] = IGNORE
    return x, y, splits_of(sizes)


def run_scene_case(kind, x, y, splits, ignore, mode):
    if kind == "softmax":
        loss = lambda p, t, s: LT.lovasz_softmax(p, t, "all", True, ignore, row_splits=s, reduction="none")  # noqa: E731
        expected = scene_oracle(oracle_softmax, x, y, splits, ignore)
    else:
        loss = lambda p, t, s: LT.lovasz_hinge(p, t, True, ignore, row_splits=s, reduction="none")  # noqa: E731
        expected = scene_oracle(oracle_hinge, x, y, splits, ignore)
    losses, grad = scene_value_and_grad(loss, mode, len(splits) - 1)(tf.constant(x), tf.constant(y), splits)
    return (losses.numpy(), grad.numpy()), expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["softmax", "hinge"])
@pytest.mark.parametrize("ignore", [None, IGNORE])
def test_gpu_layout_of_scenes_matches_the_oracle(gpu_scenes, kind, mode, ignore):
    """Every class row of every scene in ONE 1-D sort: (row | scene | error | index | label) keys."""
    x, y, splits = scene_case(kind, 11, ignore=ignore is not None)
    got, expected = run_scene_case(kind, x, y, splits, ignore, mode)
    assert_matches(got, expected)
    if ignore is not None:
        np.testing.assert_array_equal(got[1][SIZES[0] : SIZES[0] + 3], 0.0)  # ignored points
    assert gpu_scenes and all(traced == (3, 7, 1 << 21) for traced in gpu_scenes)  # 6 scenes, 72 points: one sort


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_of_scenes_multilabel_and_present_classes(gpu_scenes, mode):
    """Multi-label (a hinge per class) against the oracle; softmax from logits with present classes and
    class weights against the CPU's paths (the C kernel, or XLA's sort of the rows)."""
    rng = np.random.default_rng(12)
    splits = splits_of(SIZES)
    logits = rng.choice([-2.0, -1.0, 0.0, 1.0, 3.0], size=(72, 3)).astype(np.float32)  # ties
    targets = rng.integers(0, 2, (72, 3))
    got = compiled(lambda p, t, s: LT.lovasz_multilabel(p, t, row_splits=s, reduction="none"), mode)(
        tf.constant(logits), tf.constant(targets), splits
    )
    expected = [
        R.lovasz_multilabel(logits[run].T[None].astype(np.float64), targets[run].T[None], "present", True)
        if run.stop > run.start
        else 0.0
        for run in scene_runs(splits)
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)

    x, y, _ = scene_case("softmax", 13)
    logits = np.log(np.maximum(x, 1e-3)).astype(np.float32)  # softmax of saturated probabilities: ties
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, weights=[1.0, 2.0, 0.5, 1.0], reduction="none")
    loss = lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options)  # noqa: E731
    losses, grad = scene_value_and_grad(loss, mode, 6)(tf.constant(logits), tf.constant(y), splits)
    assert gpu_scenes and all(rows_per_sort is not None for *_, rows_per_sort in gpu_scenes)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ROWS, "on_cpu", lambda x: True)
        mp.setattr(SCENES, "_host_scene_rows", HOST_SCENE_ROWS)
        cpu_losses, cpu_grad = scene_value_and_grad(loss, mode, 6)(tf.constant(logits), tf.constant(y), splits)
    np.testing.assert_allclose(losses.numpy(), cpu_losses.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad.numpy(), cpu_grad.numpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_of_scenes_as_one_set(gpu, gpu_scenes, mode):
    """``per_image=False``: all points one set, the rows' 1-D sort (no scene in the key)."""
    x, y, splits = scene_case("softmax", 14)
    loss = lambda p, t, s: LT.lovasz_softmax(p, t, "all", False, IGNORE, row_splits=s)  # noqa: E731
    value, grad = value_and_grad(lambda p, t: loss(p, t, splits), mode)(tf.constant(x), tf.constant(y))
    expected_loss, expected_grad = oracle_softmax(x[None], y[None], False, IGNORE)
    assert_matches((float(value), grad.numpy()), (expected_loss, expected_grad[0]))
    assert gpu and gpu_scenes == [] and all(rows_per_sort is not None for _, rows_per_sort in gpu)


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_of_scenes_nan_at_a_valid_point(gpu_scenes, mode):
    """A NaN at a valid point: its scene's loss NaN and its gradient NaN, the other scenes as the oracle's; a
    NaN at an ignored point reaches neither."""
    x, y, splits = scene_case("softmax", 15)
    x[30, 1] = np.nan  # valid, in the fifth scene [23, 63)
    x[6, :] = np.nan  # ignored: the third scene's second point
    loss = lambda p, t, s: LT.lovasz_softmax(p, t, "all", True, IGNORE, row_splits=s, reduction="none")  # noqa: E731
    losses, grad = scene_value_and_grad(loss, mode, 6)(tf.constant(x), tf.constant(y), splits)
    losses, grad = losses.numpy(), grad.numpy()
    assert np.isnan(losses[4]) and np.isnan(grad[30, 1])
    np.testing.assert_array_equal(grad[5:8], 0.0)
    others = np.ones(grad.shape, bool)
    others[30, 1] = False
    assert np.all(np.isfinite(grad[others]))
    clean = np.where(np.isnan(x), 0.0, x)
    expected_losses, expected_grad = scene_oracle(oracle_softmax, clean, y, splits, IGNORE)
    scenes = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(losses[scenes], expected_losses[scenes], rtol=1e-5, atol=1e-7)
    outside = np.r_[0:23, 63:72]  # the points of the other scenes
    np.testing.assert_allclose(grad[outside], expected_grad[outside], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "sizes",
    [[0, 0], [], [30], [0, 12, 0], [1, 1, 1]],
    ids=["empty scenes", "no scene", "one scene", "one of three", "one point each"],
)
def test_gpu_layout_of_empty_and_tiny_scenes(gpu_scenes, mode, sizes):
    x, y, splits = scene_case("softmax", 16, sizes=sizes, num_classes=3)
    got, expected = run_scene_case("softmax", x, y, splits, IGNORE, mode)
    assert got[0].shape == (len(sizes),) and got[1].shape == x.shape
    assert_matches(got, expected)
    if not sizes:  # no scene: nothing to sort (XLA failed to compile a sort of no scene with bad row splits)
        assert gpu_scenes == []
        return
    scene_bits = max(len(sizes) - 1, 0).bit_length()
    index_bits = ROWS.index_bits_for(sum(sizes))
    assert gpu_scenes and all(
        traced == (scene_bits, index_bits, 1 << (31 - scene_bits - index_bits)) for traced in gpu_scenes
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spare_bits", [0, 1, -1], ids=["one row per sort", "two rows per sort", "top_k"])
def test_gpu_layout_of_scenes_when_the_bits_run_out(gpu_scenes, monkeypatch, mode, spare_bits):
    """Fewer bits than rows x scenes x points need: groups of class rows, one 1-D sort each (3 classes: a
    short last group), or, where not even one row's keys fit, two top_k: the same losses and gradient."""
    x, y, splits = scene_case("softmax", 17, num_classes=3)
    monkeypatch.setattr(ROWS, "ROW_AND_INDEX_BITS", 3 + 7 + spare_bits)  # 6 scenes, 72 points
    got, expected = run_scene_case("softmax", x, y, splits, IGNORE, mode)
    assert_matches(got, expected)
    if spare_bits < 0:
        assert gpu_scenes == []
    else:
        assert gpu_scenes and all(traced == (3, 7, 1 << spare_bits) for traced in gpu_scenes)


@pytest.mark.parametrize("mode", MODES)
def test_gpu_layout_of_scenes_unknown_shapes_take_top_k(gpu_scenes, mode):
    """Points not known when traced: the two top_k (the groups of rows are laid out when traced)."""
    x, y, splits = scene_case("softmax", 18)
    signature = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int64), tf.TensorSpec([7], tf.int64)]
    loss = lambda p, t, s: LT.lovasz_softmax(p, t, "all", True, IGNORE, row_splits=s, reduction="none")  # noqa: E731
    fn = loss if mode == "eager" else tf.function(loss, input_signature=signature, jit_compile=mode == "xla")
    got = fn(tf.constant(x), tf.constant(y), tf.constant(splits))
    np.testing.assert_allclose(got.numpy(), scene_oracle(oracle_softmax, x, y, splits, IGNORE)[0], rtol=1e-5, atol=1e-7)
    assert (gpu_scenes != []) == (mode == "eager")  # eagerly every shape is known


@pytest.mark.parametrize("spare_bits", [None, 1])
def test_gpu_layout_of_scenes_compiles_to_1d_sorts_of_one_s64_operand(gpu_scenes, monkeypatch, spare_bits):
    """The scenes' packed form under XLA: 1-D s64 sorts of one operand, every class row in one (in groups of
    rows where the bits run out), forward and backward; no [K, N] sort, no top_k."""
    x, y, splits = scene_case("softmax", 19, num_classes=3)
    if spare_bits is not None:
        monkeypatch.setattr(ROWS, "ROW_AND_INDEX_BITS", 3 + 7 + spare_bits)
    loss = lambda p, t, s: LT.lovasz_softmax(p, t, per_image=True, row_splits=s, reduction="none")  # noqa: E731
    fn = scene_value_and_grad(loss, "xla", 6)
    sorts = sorts_in_hlo(fn, tf.constant(x), tf.constant(y), tf.constant(splits))
    groups = [3] if spare_bits is None else [2, 1]  # class rows in each sort
    assert [shape for shape, _ in sorts] == [f"s64[{rows * 72}]{{0}}" for rows in groups]
    assert all(operands.count("s64[") == 1 for _, operands in sorts)
    assert gpu_scenes  # the scenes' sort, not the rows' (per_image=False)
