"""Point clouds and other ragged sets in lovasz.tf: ``row_splits=`` and ragged ``[S, None, ...]`` inputs.

Each scene's loss must equal the oracle's on that scene alone, and the gradient that of the dense
loss of each scene; on every path (the C kernel eagerly and in tf.function, XLA's sort of packed
(scene, error, index) keys under jit_compile, two top_k sorts in float64 and without the kernel),
with empty and all-ignored scenes, dynamic shapes, and the errors.
"""

import functools
import itertools

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

tf = require("tensorflow")
LT = require("lovasz.tf")
C = require("lovasz._ckernel")
ROWS = require("lovasz._tf_rows")  # the engines lovasz.tf looks up when it runs: patched there
SCENES = require("lovasz._tf_scenes")

SIZES = [5, 0, 17, 1, 40, 9]  # an empty scene, a one-point scene
MODES = ["eager", "function", "xla"]
IGNORE = 255


def scene_data(num_classes, seed, sizes=SIZES, multilabel=False):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(size=(n, num_classes)) * 2
    if multilabel:
        y = rng.integers(0, 2, (n, num_classes))
    else:
        y = rng.integers(0, num_classes, n)
        y[sizes[0] : sizes[0] + 3] = IGNORE  # ignored points, the first of the third scene
    splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return x, y, splits


def runs(splits):
    return [slice(int(a), int(b)) for a, b in zip(splits[:-1], splits[1:])]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def compiled(fn, mode):
    return fn if mode == "eager" else tf.function(fn, jit_compile=mode == "xla")


def value_and_grad(fn, mode):
    """``(x, *rest) -> (fn(x, *rest), d sum(fn) / d x)`` in TF's ``mode``: eager, function or xla."""

    def run(x, *rest):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x, *rest)
            total = tf.reduce_sum(out)
        return out, tape.gradient(total, x, unconnected_gradients="zero")

    return compiled(run, mode)


def cpu_only() -> bool:
    return all(d.device_type == "CPU" for d in tf.config.list_logical_devices())


class Paths:
    """Counts the C kernel's runs and the traces of XLA's packed sort; ``kernel=False`` turns the kernel off."""

    def __init__(self, monkeypatch, kernel: bool):
        self.kernel, self.host_calls, self.packed_traces = kernel, 0, 0
        host, packed = SCENES._host_scene_rows, SCENES._scene_packed_rows

        def counted_host(*args, **kwargs):
            self.host_calls += 1
            return host(*args, **kwargs)

        def counted_packed(*args):
            self.packed_traces += 1
            return packed(*args)

        monkeypatch.setattr(SCENES, "_host_scene_rows", counted_host)
        monkeypatch.setattr(SCENES, "_scene_packed_rows", counted_packed)
        if not kernel:
            monkeypatch.setattr(ROWS, "use_kernel", lambda pred: False)

    def reset(self):
        self.host_calls = self.packed_traces = 0

    def skip_where_the_same(self, mode: str, dtype):
        """Without the kernel, only float32 outside XLA takes another path."""
        if not self.kernel and (mode == "xla" or dtype == tf.float64):
            pytest.skip("the kernel does not apply here: the same path as with it")

    def check(self, mode: str, dtype):
        """The path the choice should have taken: the kernel for float32 outside XLA, packed keys under it."""
        if not cpu_only():
            return
        kernel = self.kernel and C.scene_kernel() is not None and dtype == tf.float32 and mode != "xla"
        assert (self.host_calls > 0) == kernel
        assert (self.packed_traces > 0) == (dtype == tf.float32 and mode == "xla")


@pytest.fixture(params=["kernel", "sort"])
def paths(request, monkeypatch):
    """The C kernel where it applies (float32 on a CPU, outside XLA), or the kernel turned off."""
    return Paths(monkeypatch, request.param == "kernel")


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == tf.float32 else dict(rtol=1e-10, atol=1e-12)


CASES = list(itertools.product(["present", "all", [2, 0, 0]], [None, IGNORE], [None, [1.0, 2.0, 0.5, 1.0]]))
SOFTMAX = [("eager", *case) for case in CASES] + [
    (mode, *case) for mode in ("function", "xla") for case in (CASES[1], CASES[6], CASES[11])
]


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("mode,classes,ignore,weights", SOFTMAX)
def test_softmax_per_scene_equals_the_oracle_on_each_scene(paths, mode, dtype, from_logits, classes, ignore, weights):
    paths.skip_where_the_same(mode, dtype)
    x, y, splits = scene_data(4, seed=len(str(classes)) + (ignore or 0))
    if ignore is None:
        y = np.minimum(y, 3)
    probas = softmax(x)
    expected = []
    for run in runs(splits):
        p, labels = probas[run], y[run]
        one = R.lovasz_softmax(p.T[None], labels[None], classes, True, ignore, weights=weights) if len(labels) else 0.0
        expected.append(one)
    inputs = tf.constant(x if from_logits else probas, dtype)
    options = dict(classes=classes, per_image=True, ignore=ignore, from_logits=from_logits, weights=weights)
    fn = compiled(
        lambda p, t, s: (
            LT.lovasz_softmax(p, t, row_splits=s, reduction="none", **options),
            LT.lovasz_softmax(p, t, row_splits=s, **options),
        ),
        mode,
    )
    got, mean = fn(inputs, tf.constant(y), tf.constant(splits))
    assert got.dtype == dtype and got.shape == [len(SIZES)]
    np.testing.assert_allclose(got.numpy(), expected, **tol(dtype))
    np.testing.assert_allclose(mean.numpy(), np.mean(expected), **tol(dtype))
    paths.check(mode, dtype)


def dense_scene_grads(fn, x, y, splits, factors):
    """The gradient of ``sum_s factors[s] * fn(scene s as a batch of one)``, scene by scene (empty scenes: 0)."""
    grad = np.zeros_like(x)
    for s, run in enumerate(runs(splits)):
        if run.stop == run.start:
            continue
        scene = tf.constant(x[run][None])
        with tf.GradientTape() as tape:
            tape.watch(scene)
            loss = fn(scene, tf.constant(y[run][None])) * factors[s]
        grad[run] = tape.gradient(loss, scene).numpy()[0]
    return grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_softmax_gradient_equals_the_dense_gradient_of_each_scene(paths, mode, dtype, from_logits):
    paths.skip_where_the_same(mode, dtype)
    x, y, splits = scene_data(5, seed=3)
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 4))
    x = (x if from_logits else softmax(x)).astype(dtype.as_numpy_dtype)
    factors = np.arange(1.0, len(SIZES) + 1)  # a different weight per scene
    options = dict(classes="all", per_image=True, ignore=IGNORE, from_logits=from_logits)

    def weighted(p, t, s):
        losses = LT.lovasz_softmax(p, t, row_splits=s, reduction="none", **options)
        return losses * tf.constant(factors, losses.dtype)

    _, grad = value_and_grad(weighted, mode)(tf.constant(x), tf.constant(y), tf.constant(splits))
    expected = dense_scene_grads(lambda p, t: LT.lovasz_softmax(p, t, **options), x, y, splits, factors)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(grad.numpy()[SIZES[0] : SIZES[0] + 3]) == 0  # ignored points
    paths.check(mode, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("margin,symmetric", [("relu", False), ("elu", False), ("relu", True)])
def test_hinge_per_scene_equals_the_oracle_and_the_dense_gradient(paths, mode, margin, symmetric):
    paths.skip_where_the_same(mode, tf.float32)
    x, y, splits = scene_data(1, seed=5)
    logits = x[:, 0].astype(np.float32)
    labels = np.where(y == IGNORE, IGNORE, y % 2)
    expected = []
    for run in runs(splits):
        s, t = logits[run].astype(np.float64), labels[run]
        one = R.lovasz_hinge(s[None], t[None], True, IGNORE, margin=margin, symmetric=symmetric) if len(t) else 0.0
        expected.append(one)
    options = dict(ignore=IGNORE, margin=margin, symmetric=symmetric)
    fn = value_and_grad(lambda p, t, s: LT.lovasz_hinge(p, t, row_splits=s, reduction="none", **options), mode)
    got, grad = fn(tf.constant(logits), tf.constant(labels), tf.constant(splits))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    dense = dense_scene_grads(lambda p, t: LT.lovasz_hinge(p, t, **options), logits, labels, splits, np.ones(6))
    np.testing.assert_allclose(grad.numpy(), dense, rtol=1e-5, atol=1e-6)
    # [N, 1] logits, as a model's head gives them
    column = compiled(lambda p, t, s: LT.lovasz_hinge(p, t, row_splits=s, reduction="none", **options), mode)
    np.testing.assert_allclose(column(logits[:, None], labels, splits).numpy(), expected, rtol=1e-5, atol=1e-6)
    paths.check(mode, tf.float32)


@pytest.mark.parametrize("mode", MODES)
def test_multilabel_per_scene_equals_the_oracle_and_the_dense_loss(paths, mode):
    paths.skip_where_the_same(mode, tf.float32)
    x, y, splits = scene_data(3, seed=7, multilabel=True)
    x = x.astype(np.float32)
    probabilities = 1 / (1 + np.exp(-x))
    expected, dense = [], []
    for run in runs(splits):
        p, t = x[run].astype(np.float64), y[run]
        expected.append(R.lovasz_multilabel(p.T[None], t.T[None], "present", True) if len(t) else 0.0)
        one = LT.lovasz_multilabel(probabilities[run][None], t[None], from_logits=False) if len(t) else 0.0
        dense.append(float(one))

    def both(p, t, s):
        hinge = LT.lovasz_multilabel(p, t, row_splits=s, reduction="none")
        return hinge, LT.lovasz_multilabel(tf.sigmoid(p), t, from_logits=False, row_splits=s, reduction="none")

    got, soft = compiled(both, mode)(tf.constant(x), tf.constant(y), tf.constant(splits))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(soft.numpy(), dense, rtol=1e-5, atol=1e-6)
    paths.check(mode, tf.float32)


@pytest.mark.parametrize("mode", MODES)
def test_without_per_image_all_points_are_one_set(mode):
    x, y, splits = scene_data(4, seed=9)
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 3))
    expected = R.lovasz_softmax(softmax(x).T[None], y[None], ignore=IGNORE)
    fn = compiled(
        lambda p, t, s: LT.lovasz_softmax(p, t, ignore=IGNORE, from_logits=True, per_image=False, row_splits=s), mode
    )
    got = fn(tf.constant(x, tf.float32), tf.constant(y), tf.constant(splits))
    assert got.shape == []
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    hinge = LT.lovasz_hinge(x[:, 0], y % 2, per_image=False, row_splits=splits)
    np.testing.assert_allclose(hinge.numpy(), LT.lovasz_hinge(x[None, :, 0], y[None] % 2, per_image=False))


def test_sigmoid_points_are_the_two_classes():
    x, y, splits = scene_data(1, seed=11)
    y = np.where(y == IGNORE, IGNORE, y % 2)
    p = 1 / (1 + np.exp(-x[:, 0]))
    two = np.stack([1 - p, p], 1)
    options = dict(classes="all", per_image=True, ignore=IGNORE, reduction="none")
    a = LT.lovasz_softmax(p, y, row_splits=splits, **options)
    b = LT.lovasz_softmax(two, y, row_splits=splits, **options)
    c = LT.lovasz_softmax(p[:, None], y, row_splits=splits, **options)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    np.testing.assert_allclose(c.numpy(), b.numpy(), rtol=1e-12)
    logits = LT.lovasz_softmax(x[:, 0], y, row_splits=splits, from_logits=True, **options)
    np.testing.assert_allclose(logits.numpy(), a.numpy(), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
def test_ragged_inputs_equal_row_splits(paths, mode, dtype):
    """A tf.RaggedTensor [S, None, C] and its labels [S, None]: their row_splits are the scenes."""
    paths.skip_where_the_same(mode, dtype)
    x, y, splits = scene_data(4, seed=19)
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 3))
    x = x.astype(dtype.as_numpy_dtype)
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, reduction="none")

    def ragged(values, labels, s):
        scenes = tf.RaggedTensor.from_row_splits(values, s)
        return LT.lovasz_softmax(scenes, tf.RaggedTensor.from_row_splits(labels, s), **options)

    def hinge(values, labels, s):
        s = tf.cast(s, tf.int32)  # int32 row splits too
        scenes = tf.RaggedTensor.from_row_splits(values[:, 0], s)
        return LT.lovasz_hinge(scenes, tf.RaggedTensor.from_row_splits(labels % 2, s), ignore=IGNORE)

    args = (tf.constant(x), tf.constant(y), tf.constant(splits))
    expected, expected_grad = value_and_grad(lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options), "eager")(
        *args
    )
    expected_hinge = LT.lovasz_hinge(x[:, 0], y % 2, ignore=IGNORE, row_splits=splits)
    paths.reset()
    got, grad = value_and_grad(ragged, mode)(*args)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), **tol(dtype))
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), **tol(dtype))
    np.testing.assert_allclose(compiled(hinge, mode)(*args).numpy(), expected_hinge.numpy(), **tol(dtype))
    # a ragged tensor passed into the function: its values' length is not known when traced
    scenes = tf.RaggedTensor.from_row_splits(tf.constant(x), splits)
    labels = tf.RaggedTensor.from_row_splits(tf.constant(y), splits)
    traced = compiled(lambda p, t: LT.lovasz_softmax(p, t, **options), mode)(scenes, labels)
    np.testing.assert_allclose(traced.numpy(), expected.numpy(), **tol(dtype))
    paths.check(mode, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_shapes(mode):
    """Points and scenes unknown when traced: the kernel (or the packed sort) chosen when run."""
    x, y, splits = scene_data(4, seed=21)
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 3))
    signature = [
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([None], tf.int64),
    ]
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, reduction="none")

    def fn(p, t, s):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = LT.lovasz_softmax(p, t, row_splits=s, **options)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, p)

    dynamic = tf.function(fn, input_signature=signature, jit_compile=mode == "xla") if mode != "eager" else fn
    got, grad = dynamic(tf.constant(x, tf.float32), tf.constant(y), tf.constant(splits))
    expected, expected_grad = fn(tf.constant(x, tf.float32), tf.constant(y), tf.constant(splits))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
def test_empty_and_all_ignored_scenes_get_zero_with_zero_gradient(paths, mode, dtype):
    paths.skip_where_the_same(mode, dtype)
    x = np.random.default_rng(23).normal(size=(6, 3)).astype(dtype.as_numpy_dtype)
    y = np.array([255, 255, 0, 1, 2, 255])
    options = dict(ignore=IGNORE, per_image=True, from_logits=True, reduction="none")
    fn = value_and_grad(lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options), mode)
    losses, grad = fn(tf.constant(x), tf.constant(y), tf.constant([0, 2, 2, 5, 6]))
    assert losses.numpy()[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0] and losses.numpy()[2] > 0
    assert np.count_nonzero(grad.numpy()[[0, 1, 5]]) == 0 and np.count_nonzero(grad.numpy()[2:5]) > 0
    # no point in any scene; no scene at all
    nothing, grad = fn(tf.zeros((0, 3), dtype), tf.zeros(0, tf.int64), tf.constant([0, 0, 0]))
    assert nothing.numpy().tolist() == [0.0, 0.0] and grad.shape == [0, 3]
    none = compiled(lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, per_image=True), mode)
    zero = none(tf.zeros((0, 3), dtype), tf.zeros(0, tf.int64), tf.constant([0]))
    assert zero.shape == [] and float(zero) == 0.0
    hinge = compiled(lambda p, t, s: LT.lovasz_hinge(p, t, row_splits=s, ignore=IGNORE, reduction="none"), mode)
    got = hinge(tf.constant(x[:, 0]), tf.constant(np.where(y == IGNORE, IGNORE, y % 2)), tf.constant([0, 2, 2, 5, 6]))
    assert got.numpy()[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0]
    paths.check(mode, dtype)


def test_large_scenes_agree_on_every_path(monkeypatch):
    """A LiDAR-like batch, smaller: the C kernel, XLA's packed sort and top_k give the same values and gradients."""
    x, y, splits = scene_data(19, seed=17, sizes=[3000, 4500, 2000, 5000])
    y = np.where(y == IGNORE, IGNORE, y % 19)
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, reduction="none")
    fn = lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options)  # noqa: E731
    args = (tf.constant(x, tf.float32), tf.constant(y), tf.constant(splits))
    kernel, kernel_grad = value_and_grad(fn, "function")(*args)
    packed, packed_grad = value_and_grad(fn, "xla")(*args)
    oracle = [
        R.lovasz_softmax(softmax(x[run].astype(np.float32)).T[None], y[run][None], ignore=IGNORE)
        for run in runs(splits)
    ]
    np.testing.assert_allclose(kernel.numpy(), oracle, rtol=1e-5)
    monkeypatch.setattr(ROWS, "use_kernel", lambda pred: False)
    sort, sort_grad = value_and_grad(fn, "eager")(*args)
    for value, grad in ((packed, packed_grad), (sort, sort_grad)):
        np.testing.assert_allclose(value.numpy(), kernel.numpy(), rtol=1e-5)
        np.testing.assert_allclose(grad.numpy(), kernel_grad.numpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", ["softmax", "channels-first", "hinge", "multilabel"])
def test_points_without_splits_are_one_set_as_one_image_of_the_points(mode, loss):
    """Points ``[N, C]`` (``[N]`` for the hinge) with no ``row_splits`` are one set (Pointcept's call): the
    loss and gradient of the same points as one image, and the oracle's loss."""
    x, y, _ = scene_data(4, seed=12, multilabel=loss == "multilabel")
    x = x.astype(np.float32)
    if loss == "softmax":
        f = lambda x: LT.lovasz_softmax(x, y, ignore=IGNORE, from_logits=True)  # noqa: E731
        image = lambda x: LT.lovasz_softmax(x[None], y[None], ignore=IGNORE, from_logits=True)  # noqa: E731
        expected = R.lovasz_softmax(softmax(x.astype(np.float64)).T[None], y[None], ignore=IGNORE)
    elif loss == "channels-first":
        x = softmax(x).T.copy()  # [C, N]: probabilities of N points, classes first
        f = lambda x: LT.lovasz_softmax(tf.transpose(x), y, "all", ignore=IGNORE, order="BCHW")  # noqa: E731
        image = lambda x: LT.lovasz_softmax(x[None], y[None], "all", ignore=IGNORE, order="BCHW")  # noqa: E731
        expected = R.lovasz_softmax(x.astype(np.float64)[None], y[None], "all", ignore=IGNORE)
    elif loss == "hinge":
        x, y = x[:, 0], (y == 1).astype(np.int64)
        f = lambda x: LT.lovasz_hinge(x, y, per_image=False)  # noqa: E731
        image = lambda x: LT.lovasz_hinge(x[None], y[None], per_image=False)  # noqa: E731
        expected = R.lovasz_hinge(x.astype(np.float64)[None], y[None], per_image=False)
    else:
        f = lambda x: LT.lovasz_multilabel(x, y, per_image=False)  # noqa: E731
        image = lambda x: LT.lovasz_multilabel(x[None], y[None], per_image=False)  # noqa: E731
        expected = R.lovasz_multilabel(x.astype(np.float64).T[None], y.T[None], per_image=False)
    x = tf.constant(x)
    value, grad = value_and_grad(f, mode)(x)
    image_value, image_grad = value_and_grad(image, mode)(x)
    np.testing.assert_allclose(float(value), float(image_value), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), image_grad.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_many_scenes(monkeypatch, mode):
    """70 scenes, some empty: 7 bits of the packed key hold the scene under XLA."""
    sizes = np.random.default_rng(27).integers(0, 12, 70)
    x, y, splits = scene_data(3, seed=29, sizes=sizes.tolist())
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 2))
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, reduction="none")
    fn = lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options)  # noqa: E731
    args = (tf.constant(x, tf.float32), tf.constant(y), tf.constant(splits))
    paths = Paths(monkeypatch, kernel=True)
    got, grad = value_and_grad(fn, mode)(*args)
    paths.check(mode, tf.float32)
    expected = [
        R.lovasz_softmax(softmax(x[run].astype(np.float32)).T[None], y[run][None], ignore=IGNORE)
        if run.stop > run.start
        else 0
        for run in runs(splits)
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    dense = dense_scene_grads(
        lambda p, t: LT.lovasz_softmax(p, t, **options), x.astype(np.float32), y, splits, np.ones(len(sizes))
    )
    np.testing.assert_allclose(grad.numpy(), dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_in_half_out(dtype):
    x, y, splits = scene_data(4, seed=31)
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 3))
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, reduction="none", row_splits=splits)
    half = tf.cast(tf.constant(x, tf.float32), dtype)
    got = LT.lovasz_softmax(half, y, **options)
    assert got.dtype == dtype
    expected = LT.lovasz_softmax(tf.cast(half, tf.float32), y, **options)
    np.testing.assert_array_equal(got.numpy(), tf.cast(expected, dtype).numpy())


def test_the_kernel_gives_a_gradient_to_tf_gradients_too():
    """Without a tape the kernel computes no gradient; tf.gradients then runs it again for one."""
    x, y, splits = scene_data(4, seed=25)
    y = np.where(y == IGNORE, IGNORE, np.minimum(y, 3))
    options = dict(per_image=True, ignore=IGNORE, from_logits=True, reduction="none")

    @tf.function
    def symbolic(p, t, s):
        losses = LT.lovasz_softmax(p, t, row_splits=s, **options)
        return losses, tf.gradients(tf.reduce_sum(losses * tf.range(1.0, 7.0)), p)[0]

    args = (tf.constant(x, tf.float32), tf.constant(y), tf.constant(splits))
    losses, grad = symbolic(*args)
    expected, expected_grad = value_and_grad(
        lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options) * tf.range(1.0, 7.0), "eager"
    )(*args)
    np.testing.assert_allclose(losses.numpy(), expected.numpy() / np.arange(1.0, 7.0), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-6, atol=1e-8)


def test_the_graph_does_not_grow_with_the_number_of_scenes():
    """No Python loop over scenes: 3 scenes and 300 trace to graphs of the same ops."""
    options = dict(per_image=True, from_logits=True, reduction="none")
    counts = []
    for scenes in (3, 300):
        splits = tf.TensorSpec([scenes + 1], tf.int64)
        for jit in (False, True):
            fn = tf.function(lambda p, t, s: LT.lovasz_softmax(p, t, row_splits=s, **options), jit_compile=jit)
            graph = fn.get_concrete_function(tf.TensorSpec([600, 4]), tf.TensorSpec([600], tf.int64), splits).graph
            # (TF writes a small zeros tensor as a constant, a large one as Fill)
            counts.append(sum(op.type not in ("Const", "Fill") for op in graph.get_operations()))
    assert counts[:2] == counts[2:]


@pytest.mark.parametrize(
    "splits,error,match",
    [
        ([1, 3, 4], ValueError, r"row_splits must start at 0; got \[1, 3, 4\]"),
        ([0, 3, 2, 4], ValueError, r"row_splits must never decrease .*; got \[0, 3, 2, 4\]"),
        ([0, 1, 3], ValueError, r"row_splits must end at 4, the number of points of probas; got \[0, 1, 3\]"),
        ([0, 2, 5], ValueError, r"row_splits must end at 4"),
        ([0.0, 4.0], TypeError, r"row_splits must be a 1-D integer tensor \[S \+ 1\].*; got dtype float32"),
        ([[0, 2, 4]], ValueError, r"row_splits must be a 1-D integer tensor \[S \+ 1\].*; got shape \[1, 3\]"),
        (np.zeros(0, np.int64), ValueError, r"row_splits must be a 1-D integer tensor \[S \+ 1\].*; got shape \[0\]"),
        ("0,4", TypeError, r"row_splits must be a 1-D integer tensor"),
    ],
)
def test_bad_row_splits_raise_clear_errors_eagerly(splits, error, match):
    with pytest.raises(error, match=match):
        LT.lovasz_softmax(tf.random.uniform((4, 3)), tf.constant([0, 1, 2, 0]), per_image=True, row_splits=splits)


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize(
    "splits,match", [([1, 3, 4], "start at 0"), ([0, 3, 2, 4], "never decrease"), ([0, 1, 3], "end at")]
)
def test_bad_row_splits_fail_when_a_graph_runs(monkeypatch, kernel, splits, match):
    """In tf.function the values are not known when traced: asserts fail the run (under XLA, which drops
    asserts, the loss is NaN: see below)."""
    if not kernel:
        monkeypatch.setattr(ROWS, "use_kernel", lambda pred: False)
    fn = tf.function(lambda p, t, s: LT.lovasz_softmax(p, t, per_image=True, row_splits=s))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"row_splits must {match}"):
        fn(tf.random.uniform((4, 3)), tf.constant([0, 1, 2, 0]), tf.constant(splits, tf.int64))


@pytest.mark.parametrize("splits", [[1, 3, 4], [0, 3, 2, 4], [0, 1, 3], [0, 1, 7]])
def test_bad_row_splits_under_xla_make_the_loss_nan(splits):
    """XLA drops asserts: bad row splits give a NaN loss there (and its gradient), not the loss of scenes cut
    otherwise without a word; good ones give the loss of the graph without XLA."""
    x, labels = tf.random.uniform((4, 3)), tf.constant([0, 1, 2, 0])
    for kind in ("softmax", "hinge"):
        pred, lab = (x, labels) if kind == "softmax" else (x[:, 0], labels % 2)
        loss = getattr(LT, f"lovasz_{kind}")
        xla = tf.function(lambda p, t, s: loss(p, t, per_image=True, row_splits=s), jit_compile=True)
        with tf.GradientTape() as tape:
            tape.watch(pred)
            value = xla(pred, lab, tf.constant(splits, tf.int64))
        assert np.isnan(value.numpy()) and np.isnan(tape.gradient(value, pred).numpy()).any()
        good = tf.constant([0, 1, 4], tf.int64)
        np.testing.assert_allclose(xla(pred, lab, good), loss(pred, lab, per_image=True, row_splits=good), rtol=1e-6)


@pytest.mark.parametrize("kind", ["softmax", "hinge", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
def test_row_splits_of_no_scene_for_points(kind, per_image):
    """row_splits [0] for points: a ValueError where the number of points is known when traced; under XLA with
    shapes left to the run the loss is NaN, where XLA failed to compile (a sum into no segment, a gather of no
    scene) or aborted the process (no scene known when traced)."""
    x, labels = tf.random.uniform((4, 3)), tf.constant([0, 1, 2, 0])
    pred, lab = {"softmax": (x, labels), "hinge": (x[:, 0], labels % 2), "multilabel": (x, tf.one_hot(labels, 3))}[kind]
    loss = functools.partial(getattr(LT, f"lovasz_{kind}"), per_image=per_image)
    for jit in (False, True):
        with pytest.raises(ValueError, match=r"row_splits must end at 4, the number of points of \w+; got \[0\]"):
            tf.function(lambda p, t: loss(p, t, row_splits=tf.constant([0], tf.int64)), jit_compile=jit)(pred, lab)
    for splits_shape in ([None], [1]):
        spec = [tf.TensorSpec([None, *pred.shape[1:]]), tf.TensorSpec([None, *lab.shape[1:]], lab.dtype)]
        xla = tf.function(
            lambda p, t, s: loss(p, t, row_splits=s), [*spec, tf.TensorSpec(splits_shape, tf.int64)], jit_compile=True
        )
        assert np.isnan(xla(pred, lab, tf.constant([0], tf.int64)).numpy())
        no_point = xla(pred[:0], lab[:0], tf.constant([0], tf.int64)).numpy()  # no scene of no point: 0
        assert no_point == 0


def test_bad_shapes_and_arguments_raise_clear_errors():
    probas, labels, splits = tf.random.uniform((4, 3)), tf.constant([0, 1, 2, 0]), [0, 2, 4]
    with pytest.raises(ValueError, match=r"probas must be points-first, \[N, C\] \(or \[N\] for one channel\)"):
        LT.lovasz_softmax(tf.random.uniform((4, 3, 2)), labels, row_splits=splits)
    with pytest.raises(ValueError, match=r"labels must have shape \[4\] for probas of shape \[4, 3\]; got \[4, 3\]"):
        LT.lovasz_softmax(probas, tf.zeros((4, 3), tf.int32), row_splits=splits)
    with pytest.raises(ValueError, match=r"labels must have shape \[4\] for probas of shape \[4, 3\]; got \[5\]"):
        LT.lovasz_softmax(probas, tf.zeros(5, tf.int32), row_splits=splits)
    with pytest.raises(ValueError, match=r"targets must have shape \[4, 3\] for logits of shape \[4, 3\]; got \[4\]"):
        LT.lovasz_multilabel(probas, labels, row_splits=splits)
    with pytest.raises(ValueError, match=r"logits must be points-first, \[N, C\]"):
        LT.lovasz_multilabel(tf.random.uniform((4,)), labels, row_splits=splits)
    with pytest.raises(ValueError, match=r"logits must be points-first, \[N\] \(or \[N, 1\]\)"):
        LT.lovasz_hinge(probas, labels, row_splits=splits)
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        LT.lovasz_hinge(tf.constant([1, 0, 1, 0]), labels, row_splits=splits)
    with pytest.raises(ValueError, match="order='BCHW' does not apply to points-first inputs"):
        LT.lovasz_softmax(probas, labels, order="BCHW", row_splits=splits)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] at every non-ignored pixel; found 7"):
        LT.lovasz_softmax(probas, tf.constant([0, 7, 2, 0]), row_splits=splits)


def test_bad_ragged_inputs_raise_clear_errors():
    probas = tf.RaggedTensor.from_row_splits(tf.random.uniform((4, 3)), [0, 1, 4])
    labels = tf.RaggedTensor.from_row_splits(tf.constant([0, 1, 2, 0]), [0, 1, 4])
    with pytest.raises(TypeError, match="pass the scenes as row_splits= or as ragged probas and labels, not both"):
        LT.lovasz_softmax(probas, labels, row_splits=[0, 1, 4])
    with pytest.raises(TypeError, match=r"labels must be a tf.RaggedTensor \[S, None, ...\] like probas"):
        LT.lovasz_softmax(probas, tf.constant([0, 1, 2, 0]))
    with pytest.raises(TypeError, match=r"probas must be a tf.RaggedTensor \[S, None, ...\] like labels"):
        LT.lovasz_softmax(tf.random.uniform((4, 3)), labels)
    other = tf.RaggedTensor.from_row_splits(tf.constant([0, 1, 2, 0]), [0, 2, 4])
    with pytest.raises(
        ValueError, match=r"labels must have the scenes of probas \(equal row_splits\); got \[0, 2, 4\]"
    ):
        LT.lovasz_softmax(probas, other)
    nested = tf.RaggedTensor.from_nested_row_splits(tf.random.uniform((4, 3)), [[0, 1, 2], [0, 1, 4]])
    with pytest.raises(ValueError, match="probas must be ragged in its second axis only"):
        LT.lovasz_softmax(
            nested, tf.RaggedTensor.from_nested_row_splits(tf.constant([0, 1, 2, 0]), [[0, 1, 2], [0, 1, 4]])
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must have the scenes of probas"):
        tf.function(LT.lovasz_softmax)(probas, other)
    # another number of scenes is known when traced: named so (it was an internal 'Dimensions must be equal')
    three = tf.RaggedTensor.from_row_splits(tf.constant([0, 1, 2, 0]), [0, 1, 2, 4])
    for jit_compile in (False, True):
        with pytest.raises(ValueError, match=r"labels must have the scenes of probas .*; got 3 against 2 scenes"):
            tf.function(LT.lovasz_softmax, jit_compile=jit_compile)(probas, three)


def test_ragged_inputs_of_other_scenes_under_xla_make_the_loss_nan():
    """XLA drops asserts: labels ragged with other row splits than the prediction gave the loss of the
    prediction's scenes, the labels' own scenes unread, without a word (and any number of scenes where it is
    unknown when traced). The loss is NaN there now; the same scenes give the loss."""
    x, labels = tf.random.uniform((7, 3)), tf.constant([0, 2, 1, 1, 0, 2, 1])
    spec = tf.RaggedTensorSpec([None, None, 3], tf.float32, 1, tf.int64)
    label_spec = tf.RaggedTensorSpec([None, None], tf.int32, 1, tf.int64)
    xla = tf.function(lambda p, t: LT.lovasz_softmax(p, t, per_image=True), [spec, label_spec], jit_compile=True)
    probas = tf.RaggedTensor.from_row_splits(x, tf.constant([0, 3, 7], tf.int64))
    for splits in ([0, 4, 7], [0, 1, 2, 7], [0, 7]):
        other = tf.RaggedTensor.from_row_splits(labels, tf.constant(splits, tf.int64))
        assert np.isnan(xla(probas, other).numpy()), splits
    same = tf.RaggedTensor.from_row_splits(labels, tf.constant([0, 3, 7], tf.int64))
    np.testing.assert_allclose(xla(probas, same), LT.lovasz_softmax(probas, same, per_image=True), rtol=1e-6)


def test_multilabel_targets_laid_out_otherwise_under_xla_make_the_loss_nan():
    """Targets [C, N] for logits [N, C], both unknown when traced: the same number of values, read in the
    logits' layout without a word under XLA (an assert fails in a graph, eagerly a ValueError)."""
    logits, targets = tf.random.normal((6, 2)), tf.constant(np.random.default_rng(0).integers(0, 2, (6, 2)), tf.int32)
    spec = [tf.TensorSpec([None, 2]), tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int64)]
    splits = tf.constant([0, 2, 6], tf.int64)
    for jit_compile in (False, True):
        fn = tf.function(lambda x, t, s: LT.lovasz_multilabel(x, t, row_splits=s), spec, jit_compile=jit_compile)
        np.testing.assert_allclose(
            fn(logits, targets, splits), LT.lovasz_multilabel(logits, targets, row_splits=splits), rtol=1e-6
        )
        if jit_compile:
            assert np.isnan(fn(logits, tf.transpose(targets), splits).numpy())
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"targets must have the shape of logits\]"):
                fn(logits, tf.transpose(targets), splits)
