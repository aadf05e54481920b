"""Every backend against the NumPy oracle and against lovasz.torch: values and gradients.

One parametrised module: TensorFlow eagerly, in ``tf.function`` and with XLA,
and JAX eagerly, under ``jit`` and with channels-last ``axis=-1``. Each runs the
shared sweep (and the edge cases) in float64 against the oracle, and compares
its gradients with lovasz.torch, whose own gradients the oracle's finite
differences check in test_torch_oracle.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cases import IGNORE, Case, sweep

from conftest import require
from lovasz import reference as R

torch = require("torch")
LT = require("lovasz.torch")

FUNCTIONS = {"softmax": "lovasz_softmax", "hinge": "lovasz_hinge", "multilabel": "lovasz_multilabel"}


def edge_cases():
    rng = np.random.default_rng(7)
    probas = rng.dirichlet(np.ones(4), size=(2, 3, 5)).transpose(0, 3, 1, 2)  # [2, 4, 3, 5]
    logits = rng.normal(size=(2, 3, 5))
    labels = rng.integers(0, 4, (2, 3, 5))
    labels[labels == 2] = 1  # class 2 absent
    ignored = np.full_like(labels, IGNORE)
    one_valid = ignored.copy()
    one_valid[0, 1, 2] = 3
    binary_one = ignored.copy()
    binary_one[1, 2, 4] = 1
    targets = rng.integers(0, 2, (2, 4, 3, 5))
    targets[:, 1] = 0  # an empty channel
    for per_image in (False, True):
        opts = dict(per_image=per_image, reduction="none" if per_image else "mean")
        yield Case("softmax", probas, ignored, dict(opts, ignore=IGNORE))
        yield Case("softmax", probas, one_valid, dict(opts, ignore=IGNORE))
        yield Case("softmax", probas, labels, dict(opts, classes="all"))
        yield Case("softmax", probas, labels, dict(opts, classes=[2, 1, 1]))
        yield Case("hinge", logits, ignored, dict(opts, ignore=IGNORE))
        yield Case("hinge", logits, binary_one, dict(opts, ignore=IGNORE))
        yield Case("hinge", logits, np.zeros_like(labels), opts)
        yield Case("multilabel", logits[:, None].repeat(4, 1), targets, dict(opts, classes="present"))
        yield Case("multilabel", logits[:, None].repeat(4, 1), np.full_like(targets, IGNORE), dict(opts, ignore=IGNORE))


SWEEP = list(sweep(240))
EDGES = list(edge_cases())


def torch_run(case: Case, dtype=torch.float64):
    pred = torch.tensor(case.pred, dtype=dtype, requires_grad=True)
    out = getattr(LT, FUNCTIONS[case.kind])(pred, torch.from_numpy(case.labels), **case.options)
    out.sum().backward()
    return out.detach().numpy(), pred.grad.numpy()


def moves_channels(case: Case) -> bool:
    """Channels-last applies to class-channel inputs: softmax with C channels, multi-label."""
    return case.kind == "multilabel" or (case.kind == "softmax" and case.pred.ndim > case.labels.ndim)


# ----------------------------------------------------------------------------- adapters


@dataclasses.dataclass
class Backend:
    name: str
    run: Callable  # (case, float64: bool) -> (value, grad), both NumPy, channels-first
    cases: list


def tf_value_and_grad(fn, options: dict, mode: str):
    """``(x, y) -> (fn(x, y, **options), its gradient)`` in TF's ``mode``: eager, function or xla."""
    tf = require("tensorflow")

    def value_and_grad(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x, y, **options)
            total = tf.reduce_sum(out)
        return out, tape.gradient(total, x, unconnected_gradients="zero")

    return value_and_grad if mode == "eager" else tf.function(value_and_grad, jit_compile=mode == "xla")


def tf_backend(mode: str, cases) -> Backend:
    def run(case: Case, float64: bool = True):
        tf = require("tensorflow")
        LTF = require("lovasz.tf")
        fn = getattr(LTF, FUNCTIONS[case.kind])
        last = moves_channels(case)
        pred = np.moveaxis(case.pred, 1, -1) if last else case.pred
        labels = np.moveaxis(case.labels, 1, -1) if case.kind == "multilabel" else case.labels
        options = dict(case.options, **({} if case.kind == "hinge" else {"order": "BHWC"}))

        value_and_grad = tf_value_and_grad(fn, options, mode)
        x = tf.constant(pred, dtype=tf.float64 if float64 else tf.float32)
        out, grad = value_and_grad(x, tf.constant(labels))
        grad = grad.numpy()
        return out.numpy(), np.moveaxis(grad, -1, 1) if last else grad

    return Backend(f"tf-{mode}", run, cases)


def jax_backend(mode: str, cases) -> Backend:
    def run(case: Case, float64: bool = True):
        jax = require("jax")
        jax.config.update("jax_enable_x64", True)
        LJ = require("lovasz.jax")
        fn = getattr(LJ, FUNCTIONS[case.kind])
        options = {k: tuple(v) if isinstance(v, (list, np.ndarray)) else v for k, v in case.options.items()}
        last = mode == "axis-1" and moves_channels(case)
        pred, labels = case.pred, case.labels
        if last:
            options["axis"] = -1
            pred = np.moveaxis(pred, 1, -1)
            labels = np.moveaxis(labels, 1, -1) if case.kind == "multilabel" else labels

        def loss(x, y):
            out = fn(x, y, **options)
            return out.sum(), out

        value_and_grad = jax.value_and_grad(loss, has_aux=True)
        if mode != "eager":
            value_and_grad = jax.jit(value_and_grad)
        x = jax.numpy.asarray(pred, dtype=jax.numpy.float64 if float64 else jax.numpy.float32)
        (_, out), grad = value_and_grad(x, jax.numpy.asarray(labels))
        grad = np.asarray(grad)
        return np.asarray(out), np.moveaxis(grad, -1, 1) if last else grad

    return Backend(f"jax-{mode}", run, cases)


BACKENDS = [
    tf_backend("eager", SWEEP + EDGES),
    tf_backend("function", SWEEP[::4] + EDGES),
    tf_backend("xla", SWEEP[1::4] + EDGES),
    jax_backend("jit", SWEEP[::2] + EDGES),
    jax_backend("eager", SWEEP[1::16] + EDGES[:4]),
    jax_backend("axis-1", SWEEP[3::6]),
]
PARAMS = [pytest.param(b, c, id=f"{b.name}-{c.name}") for b in BACKENDS for c in b.cases]


@pytest.mark.parametrize("backend,case", PARAMS)
def test_backend_matches_oracle_and_torch(backend: Backend, case: Case):
    value, grad = backend.run(case)
    np.testing.assert_allclose(value, case.oracle(), rtol=1e-10, atol=1e-12)
    assert value.shape == np.shape(case.oracle())
    torch_value, torch_grad = torch_run(case)
    np.testing.assert_allclose(value, torch_value, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS[::3], ids=lambda b: b.name)
@pytest.mark.parametrize("case", SWEEP[5:240:24], ids=lambda c: c.name)
def test_float32_matches_torch_float32(backend: Backend, case: Case):
    value, grad = backend.run(case, float64=False)
    torch_value, torch_grad = torch_run(case, torch.float32)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, torch_value, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(grad, torch_grad, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("backend", [BACKENDS[0], BACKENDS[3]], ids=lambda b: b.name)
@pytest.mark.parametrize("case", SWEEP[2:240:40], ids=lambda c: c.name)
def test_gradient_matches_oracle_finite_differences(backend: Backend, case: Case):
    _, grad = backend.run(case)
    np.testing.assert_allclose(grad, case.oracle_grad(), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- TF's float32 paths


class TFPaths:
    """Counts, while active, the calls of lovasz.tf's C kernel (run; on image rows, or on the points gathered
    from a mostly ignored grid) and of its XLA sort (traced).

    With ``kernel=False`` the C kernel is turned off, as where lovasz is installed without it.
    """

    def __init__(self, kernel: bool = True):
        self.kernel, self.host_calls, self.packed_traces = kernel, 0, 0

    def __enter__(self):
        self.rows = require("lovasz._tf_rows")  # the engines lovasz.tf looks up when it runs
        self.scenes = require("lovasz._tf_scenes")
        self.saved = self.rows._host_rows, self.rows._packed_sort, self.rows.use_kernel
        self.saved_scenes = self.scenes._host_scene_rows
        host, packed, use = self.saved

        def counted(host):
            def call(*args, **kwargs):
                self.host_calls += 1
                return host(*args, **kwargs)

            return call

        def counted_packed(*args):
            self.packed_traces += 1
            return packed(*args)

        self.rows._host_rows, self.rows._packed_sort = counted(host), counted_packed
        self.scenes._host_scene_rows = counted(self.saved_scenes)
        self.rows.use_kernel = use if self.kernel else lambda pred: False
        return self

    def __exit__(self, *exc):
        self.rows._host_rows, self.rows._packed_sort, self.rows.use_kernel = self.saved
        self.scenes._host_scene_rows = self.saved_scenes


def tf_cpu_only() -> bool:
    """Whether TF sees no GPU or TPU: its graphs then run on the CPU, where the kernel and the packed sort apply."""
    tf = require("tensorflow")
    return all(d.device_type == "CPU" for d in tf.config.list_logical_devices())


TF_FLOAT32 = [
    ("eager", True, SWEEP + EDGES),
    ("function", True, SWEEP[::4] + EDGES),
    ("xla", True, SWEEP[1::4] + EDGES),
    ("eager", False, SWEEP[2::4] + EDGES),
    ("function", False, SWEEP[3::8]),
]  # False: the kernel off


@pytest.mark.parametrize(
    "mode,kernel,case",
    [
        pytest.param(mode, kernel, c, id=f"tf-{mode}-{'kernel' if kernel else 'sort'}-{c.name}")
        for mode, kernel, cases in TF_FLOAT32
        for c in cases
    ],
)
def test_tf_float32_paths_match_the_oracle(mode, kernel, case: Case):
    """Float32 takes the C kernel eagerly and in tf.function, XLA's sort of packed keys under XLA, and
    ``top_k`` without the kernel: each gives the oracle's values and gradients (lovasz.torch's in float64,
    which test_torch_oracle.py checks against the oracle's finite differences) on the float32 input."""
    rounded = dataclasses.replace(case, pred=case.pred.astype(np.float32).astype(np.float64))
    with TFPaths(kernel) as paths:
        value, grad = tf_backend(mode, []).run(rounded, float64=False)
    assert value.dtype == grad.dtype == np.float32
    if tf_cpu_only():
        assert (paths.host_calls > 0) == (kernel and mode != "xla")
        assert (paths.packed_traces > 0) == (mode == "xla")
    np.testing.assert_allclose(value, rounded.oracle(), rtol=1e-5, atol=1e-6)
    _, torch_grad = torch_run(rounded)
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("case", SWEEP[6:240:60], ids=lambda c: c.name)
def test_tf_float32_kernel_gradient_matches_oracle_finite_differences(case: Case):
    rounded = dataclasses.replace(case, pred=case.pred.astype(np.float32).astype(np.float64))
    with TFPaths() as paths:
        _, grad = tf_backend("function", []).run(rounded, float64=False)
    assert paths.host_calls > 0 or not tf_cpu_only()
    np.testing.assert_allclose(grad, rounded.oracle_grad(), rtol=1e-4, atol=2e-6)


def test_tf_takes_the_c_kernel_eagerly_and_in_tf_function_only():
    """The choice is automatic: the C kernel for float32 on a CPU, eagerly and in tf.function (a dynamic
    shape too); XLA's sort under jit_compile (also in a function it calls); top_k in float64 and where the
    kernel is not installed; the GPU's one 1-D sort of packed keys where the graph places the loss on a GPU."""
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    if require("lovasz._ckernel").kernel() is None:
        pytest.skip("lovasz was installed without its C kernel")
    rng = np.random.default_rng(30)
    probas = rng.dirichlet(np.ones(3), size=(2, 6, 5)).astype("float32")
    labels = rng.integers(0, 3, (2, 6, 5))
    labels[0, 0] = IGNORE
    options = dict(per_image=True, ignore=IGNORE)
    expected = R.lovasz_softmax(np.moveaxis(probas, -1, 1).astype(np.float64), labels, **options)
    eager = tf_value_and_grad(LTF.lovasz_softmax, options, "eager")
    inner = tf.function(eager)
    dynamic = tf.function(
        eager,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None, None, None], tf.int64)],
    )

    def on_another_device(x, y):
        with tf.device("/device:GPU:0"):  # placed on the CPU when run here (soft placement)
            return eager(x, y)

    runs = {
        "eager": (eager, "kernel"),
        "tf.function": (inner, "kernel"),
        "dynamic shape": (dynamic, "kernel"),
        "xla": (tf.function(eager, jit_compile=True), "packed"),
        # (a function first traced outside XLA keeps that trace, C kernel and all, when XLA calls it)
        "tf.function called under xla": (
            tf.function(lambda x, y: tf.function(eager)(x, y), jit_compile=True),
            "packed",
        ),
        # a GPU's layout: float32 of a known shape in one 1-D sort of packed keys (see test_tf_sort_layout.py)
        "another device": (tf.function(on_another_device), "packed"),
    }
    on_cpu = {"eager": "CPU" in tf.constant(probas).device}
    for name, (run, path) in runs.items():
        if not on_cpu.get(name, tf_cpu_only()):  # TF places the ops on a GPU: packed keys where the shape is known
            path = "top_k" if name == "dynamic shape" else "packed"
        with TFPaths() as paths:
            value, grad = run(tf.constant(probas), tf.constant(labels))
        assert (paths.host_calls, paths.packed_traces > 0) == (
            (1, False) if path == "kernel" else (0, path == "packed")
        ), name
        np.testing.assert_allclose(float(value), expected, rtol=1e-5, err_msg=name)
        assert grad.shape == probas.shape and np.isfinite(grad.numpy()).all()
    for x in (tf.constant(probas, tf.float64), tf.constant(probas, tf.float16)):
        with TFPaths() as paths:
            value, _ = eager(x, tf.constant(labels))
        # half precision is computed in float32
        assert paths.host_calls == (1 if x.dtype == tf.float16 and on_cpu["eager"] else 0)
        np.testing.assert_allclose(float(value), expected, rtol=1e-3 if x.dtype == tf.float16 else 1e-6)
    C = require("lovasz._ckernel")
    saved = C.kernel
    C.kernel = lambda: None  # as where lovasz is installed without it
    try:
        with TFPaths() as paths, pytest.warns(RuntimeWarning, match="C kernel is not loaded"):
            C._WARNED = False
            value, _ = tf.function(eager)(tf.constant(probas * 0.5), tf.constant(labels))
    finally:
        C.kernel = saved
    assert paths.host_calls == 0
    expected = R.lovasz_softmax(np.moveaxis(probas * 0.5, -1, 1).astype(np.float64), labels, **options)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_tf_kernel_computes_a_gradient_where_a_tape_watches_and_for_tf_gradients():
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    if require("lovasz._ckernel").kernel() is None:
        pytest.skip("lovasz was installed without its C kernel")
    rng = np.random.default_rng(32)
    logits = rng.normal(size=(2, 5, 4, 3)).astype("float32")
    labels = rng.integers(0, 3, (2, 5, 4))
    x, y = tf.constant(logits), tf.constant(labels)
    loss = functools.partial(LTF.lovasz_softmax, from_logits=True, per_image=True)
    expected = R.lovasz_softmax(np.moveaxis(logits, -1, 1).astype(np.float64), labels, from_logits=True, per_image=True)
    rows = require("lovasz._tf_rows")
    host, asked = rows._host_rows, []
    rows._host_rows = lambda *args, **kwargs: asked.append(kwargs["need_grad"]) or host(*args, **kwargs)
    try:
        value = loss(x, y)  # evaluation: no gradient made
        taped, taped_grad = tf_value_and_grad(loss, {}, "function")(x, y)

        @tf.function
        def symbolic(x, y):  # no tape: tf.gradients runs the kernel again, for the gradient
            value = loss(x, y)
            return value, tf.gradients(value, x)[0]

        symbolic_value, symbolic_grad = symbolic(x, y)
    finally:
        rows._host_rows = host
    assert asked[:2] == [False, True] and sorted(asked[2:]) == [False, True]
    for v in (value, taped, symbolic_value):
        np.testing.assert_allclose(float(v), expected, rtol=1e-5)
    np.testing.assert_array_equal(symbolic_grad.numpy(), taped_grad.numpy())


@pytest.mark.parametrize("per_image", [False, True])
def test_tf_float32_paths_agree_on_larger_input(per_image):
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    rng = np.random.default_rng(31)
    logits = rng.normal(size=(3, 40, 30, 6)).astype("float32")
    labels = rng.integers(0, 6, (3, 40, 30))
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    options = dict(per_image=per_image, ignore=IGNORE, from_logits=True, classes="all")
    got = {}
    for mode, kernel in [("eager", True), ("function", True), ("xla", True), ("eager", False)]:
        with TFPaths(kernel):
            got[mode, kernel] = [
                t.numpy()
                for t in tf_value_and_grad(LTF.lovasz_softmax, options, mode)(tf.constant(logits), tf.constant(labels))
            ]
    expected = R.lovasz_softmax(np.moveaxis(logits, -1, 1).astype(np.float64), labels, **options)
    for key, (value, grad) in got.items():
        np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(grad, got["eager", False][1], rtol=1e-4, atol=1e-7, err_msg=str(key))


# ----------------------------------------------------------------------------- framework specifics


def test_jax_vmap_over_images_equals_per_image():
    jax = require("jax")
    LJ = require("lovasz.jax")
    rng = np.random.default_rng(11)
    probas = jax.numpy.asarray(rng.dirichlet(np.ones(3), size=(4, 6, 5)).transpose(0, 3, 1, 2), "float32")
    labels = jax.numpy.asarray(rng.integers(0, 3, (4, 6, 5)))
    per_image = LJ.lovasz_softmax(probas, labels, per_image=True, reduction="none")
    one = jax.vmap(lambda p, l: LJ.lovasz_softmax(p[None], l[None]))(probas, labels)
    np.testing.assert_allclose(np.asarray(one), np.asarray(per_image), rtol=1e-6)
    grads = jax.jit(jax.vmap(jax.grad(lambda p, l: LJ.lovasz_softmax(p[None], l[None]))))(probas, labels)
    whole = jax.grad(lambda p: LJ.lovasz_softmax(p, labels, per_image=True, reduction="sum"))(probas)
    np.testing.assert_allclose(np.asarray(grads), np.asarray(whole), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sets", [1, 3])
def test_jax_sort_path_matches_the_c_kernel(sets):
    """On a CPU, lovasz.jax runs float32 rows through the C kernel; elsewhere through lax.sort: both agree."""
    jax = require("jax")
    JR = require("lovasz._jax_rows")
    if require("lovasz._ckernel").kernel() is None:
        pytest.skip("lovasz was installed without its C kernel")
    rng = np.random.default_rng(4)
    errors = jax.numpy.asarray(rng.normal(size=(sets, 4, 50)), "float32")  # negative errors count as 0
    codes = jax.numpy.asarray(rng.choice([0, 1, 2], size=(sets, 4, 50), p=[0.6, 0.3, 0.1]), "uint8")
    # The kernel's callback takes arrays on the CPU (platform_dependent sends it no other); the sorts run on
    # JAX's default device, a GPU where there is one.
    errors_cpu, codes_cpu = jax.device_put((errors, codes), jax.devices("cpu")[0])
    for rows in (JR._host_rows, jax.jit(JR._host_rows)):
        np.testing.assert_allclose(rows(errors_cpu, codes_cpu), JR._sorted_rows(errors, codes), rtol=1e-6)
        weights = jax.numpy.arange(1.0, 5.0)
        host = jax.grad(lambda e: (rows(e, codes_cpu) * weights).sum())(errors_cpu)
        xla = jax.grad(lambda e: (JR._sorted_rows(e, codes) * weights).sum())(errors)
        # XLA on a GPU divides to within 2 ulp, not 0.5: its float32 gradient differs a little more.
        np.testing.assert_allclose(host, xla, rtol=1e-6 if jax.default_backend() == "cpu" else 3e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_in_half_out(dtype):
    tf = require("tensorflow")
    jax = require("jax")
    LTF, LJ = require("lovasz.tf"), require("lovasz.jax")
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 6, 4)).astype("float32")
    labels = rng.integers(0, 4, (2, 5, 6))
    expected = R.lovasz_softmax(np.moveaxis(logits, -1, 1), labels, from_logits=True)
    x = tf.cast(tf.constant(logits), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = LTF.lovasz_softmax(x, tf.constant(labels), from_logits=True)
    assert out.dtype == dtype and tape.gradient(out, x).dtype == dtype
    np.testing.assert_allclose(float(out), expected, rtol=2e-2)
    out = LJ.lovasz_softmax(jax.numpy.asarray(logits, dtype), labels, from_logits=True, axis=-1)
    assert out.dtype == dtype
    np.testing.assert_allclose(float(out), expected, rtol=2e-2)


def test_tf_flat_api_and_lovasz_grad_match_the_reference():
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    rng = np.random.default_rng(4)
    probas = rng.dirichlet(np.ones(3), size=(2, 4, 5))  # BHWC
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 0] = 255
    flat_p, flat_l = LTF.flatten_probas(tf.constant(probas), tf.constant(labels), ignore=255)
    assert flat_p.shape == (40 - 5, 3) and flat_l.shape == (35,)
    got = LTF.lovasz_softmax_flat(flat_p, flat_l)
    expected = R.lovasz_softmax(np.moveaxis(probas, -1, 1), labels, ignore=255)
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)
    scores, binary = rng.normal(size=(2, 4, 5)), rng.integers(0, 2, (2, 4, 5))
    got = LTF.lovasz_hinge_flat(*LTF.flatten_binary_scores(tf.constant(scores), tf.constant(binary)))
    np.testing.assert_allclose(float(got), R.lovasz_hinge(scores, binary, per_image=False), rtol=1e-10)
    gt = rng.integers(0, 2, 50).astype("float64")
    np.testing.assert_allclose(LTF.lovasz_grad(tf.constant(gt)).numpy(), R.lovasz_grad(gt), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(require("lovasz.jax").lovasz_grad(gt)), R.lovasz_grad(gt), atol=1e-6)
    for mask in (gt == 1, tf.constant(gt == 1)):  # a bool mask (JAX's round has none for bools)
        np.testing.assert_allclose(LTF.lovasz_grad(mask).numpy(), R.lovasz_grad(gt), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(require("lovasz.jax").lovasz_grad(gt == 1)), R.lovasz_grad(gt), rtol=1e-6)


def test_flatten_probas_takes_labels_with_a_size_1_axis():
    """[B, 1, H, W] labels of [B, C, H, W] probas ([B, H, W, 1] of BHWC in TF) were read as a sigmoid's: [P * C, 1]
    probas for [P] labels, which the flat loss refused (the original flattens any label layout)."""
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    rng = np.random.default_rng(6)
    probas = rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32")  # BHWC
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 0] = 255
    expected = R.lovasz_softmax(np.moveaxis(probas, -1, 1), labels, ignore=255)
    first = torch.from_numpy(np.moveaxis(probas, -1, 1).copy())
    for extra in (torch.from_numpy(labels)[:, None], torch.from_numpy(labels)):
        flat_p, flat_l = LT.flatten_probas(first, extra, ignore=255)
        assert flat_p.shape == (35, 3) and flat_l.shape == (35,)
        np.testing.assert_allclose(float(LT.lovasz_softmax_flat(flat_p, flat_l)), expected, rtol=1e-6)
    layouts = [(probas, labels[..., None], "BHWC"), (np.moveaxis(probas, -1, 1), labels[:, None], "BCHW")]
    for pred, lab, order in layouts:
        flat_p, flat_l = LTF.flatten_probas(tf.constant(pred), tf.constant(lab), ignore=255, order=order)
        assert flat_p.shape == (35, 3) and flat_l.shape == (35,)
        np.testing.assert_allclose(float(LTF.lovasz_softmax_flat(flat_p, flat_l)), expected, rtol=1e-6)
    sigmoid = LT.flatten_probas(first[:, 0], torch.from_numpy(labels % 2))  # [B, H, W]: one channel
    assert sigmoid[0].shape == (40, 1) and sigmoid[1].shape == (40,)


def test_lovasz_grad_of_soft_labels_is_the_originals_formula_and_differentiable():
    """Floats went through round() to 0/1: soft labels (label smoothing) got other values than the original's
    and, in torch, no gradient. Now they take the original's formula (float cumsums), as it computes them."""
    tf, jnp = require("tensorflow"), require("jax.numpy")
    soft = np.random.default_rng(5).uniform(size=40)
    total = soft.sum()  # Berman's lovasz_grad, in float64
    jaccard = 1 - (total - np.cumsum(soft)) / (total + np.cumsum(1 - soft))
    expected = np.concatenate([jaccard[:1], np.diff(jaccard)])
    x = torch.tensor(soft, dtype=torch.float32, requires_grad=True)
    got = LT.lovasz_grad(x)
    (grad,) = torch.autograd.grad(got @ torch.arange(40.0), x)
    assert grad.abs().sum() > 0
    for out in (got.detach().numpy(), require("lovasz.tf").lovasz_grad(tf.constant(soft, tf.float32)).numpy()):
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(require("lovasz.jax").lovasz_grad(jnp.asarray(soft))), expected, atol=1e-6)
    original = require("lovasz.peers").load_original_tf().lovasz_grad(tf.constant(soft, tf.float32)).numpy()
    got = require("lovasz.tf").lovasz_grad(tf.constant(soft, tf.float32))
    np.testing.assert_allclose(got, original, atol=1e-6)  # (the original's float32 cumsums: 1e-7 off)


@pytest.mark.parametrize("module", ["lovasz.tf", "lovasz.jax"])
def test_bad_input_names_the_argument(module):
    M = require(module)
    channels_last = module == "lovasz.tf"
    probas = np.full((2, 4, 4, 3) if channels_last else (2, 3, 4, 4), 1 / 3, "float32")
    with pytest.raises(ValueError, match=r"labels must have shape \[2, 4, 4\]"):
        M.lovasz_softmax(probas, np.zeros((2, 4, 5), "int32"))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] at every non-ignored pixel; found 7"):
        M.lovasz_softmax(probas, np.full((2, 4, 4), 7, "int32"))
    with pytest.raises(ValueError, match="labels must be whole numbers"):
        M.lovasz_softmax(probas, np.full((2, 4, 4), 0.5, "float32"))
    with pytest.raises(ValueError, match="classes must lie in"):
        M.lovasz_softmax(probas, np.zeros((2, 4, 4), "int32"), classes=[5])
    scores = np.zeros((2, 4, 4), "float32")
    with pytest.raises(ValueError, match="reduction"):
        M.lovasz_hinge(scores, np.zeros((2, 4, 4), "int32"), reduction="avg")
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        M.lovasz_hinge(scores, np.full((2, 4, 4), 2, "int32"))
    with pytest.raises(ValueError, match=r"weights must have shape \[3\]"):
        M.lovasz_softmax(probas, np.zeros((2, 4, 4), "int32"), weights=[1.0, 2.0])
    if channels_last:
        with pytest.raises(ValueError, match="order must be"):
            M.lovasz_softmax(probas, np.zeros((2, 4, 4), "int32"), order="NHWC")


def test_tf_has_no_map_fn_and_traces_once_per_shape():
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    for module in (LTF, require("lovasz._tf_rows"), require("lovasz._tf_scenes")):
        source = Path(module.__file__).read_text()
        assert "map_fn" not in source.replace("no ``map_fn``", ""), module.__name__
    fn = tf.function(lambda p, l: LTF.lovasz_softmax(p, l, per_image=True, ignore=255), jit_compile=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        fn(tf.constant(rng.random((2, 4, 4, 3)), tf.float32), tf.constant(rng.integers(0, 3, (2, 4, 4))))
    assert fn.experimental_get_tracing_count() == 1


def test_tf_unknown_class_axis_when_traced_is_a_clear_error():
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    unknown = tf.TensorSpec([None, None, None])
    softmax = tf.function(LTF.lovasz_softmax, input_signature=[unknown, tf.TensorSpec([None, None], tf.int32)])
    with pytest.raises(ValueError, match="the class axis of probas must be known when the function is traced"):
        softmax(tf.ones((1, 3, 4)), tf.zeros((1, 4), tf.int32))
    multilabel = tf.function(LTF.lovasz_multilabel, input_signature=[unknown, tf.TensorSpec([None, None, None])])
    with pytest.raises(ValueError, match="the class axis of logits must be known when the function is traced"):
        multilabel(tf.ones((1, 3, 4)), tf.zeros((1, 3, 4)))


@pytest.mark.parametrize(
    "module,others",
    [
        ("lovasz.torch", ("tensorflow", "jax", "keras")),
        ("lovasz.tf", ("torch",)),
        ("lovasz.jax", ("torch", "tensorflow")),
    ],
)
def test_each_module_imports_only_its_framework(module, others):
    # (TensorFlow 2.21 itself imports Keras, and Keras imports JAX when it is installed.)
    require({"lovasz.torch": "torch", "lovasz.tf": "tensorflow", "lovasz.jax": "jax"}[module])
    import subprocess
    import sys

    check = f"import sys, {module}; print([m for m in {others!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- reliability: shapes, dtypes, edges

MODES = [
    ("lovasz.tf", "eager"),
    ("lovasz.tf", "function"),
    ("lovasz.tf", "xla"),
    ("lovasz.jax", "eager"),
    ("lovasz.jax", "jit"),
]


def call(module: str, mode: str, kind: str, pred, labels, channels_last=None, **options):
    """``kind`` of ``module`` in ``mode``: (value, gradient) as NumPy; ``channels_last`` picks order / axis."""
    if channels_last is not None:
        options["order" if module == "lovasz.tf" else "axis"] = (
            ("BHWC" if channels_last else "BCHW") if module == "lovasz.tf" else (-1 if channels_last else 1)
        )
    fn = getattr(require(module), FUNCTIONS[kind])
    if module == "lovasz.tf":
        tf = require("tensorflow")
        value_and_grad = tf_value_and_grad(fn, options, mode)
        out, grad = value_and_grad(tf.convert_to_tensor(pred), tf.convert_to_tensor(labels))
        return out.numpy(), grad.numpy()
    jax = require("jax")
    value_and_grad = jax.value_and_grad(lambda x, y: (lambda out: (out.sum(), out))(fn(x, y, **options)), has_aux=True)
    if mode == "jit":
        value_and_grad = jax.jit(value_and_grad)
    (_, out), grad = value_and_grad(jax.numpy.asarray(pred), jax.numpy.asarray(labels))
    return np.asarray(out), np.asarray(grad)


def assert_same(got, expected, rtol=1e-5):
    for g, e in zip(got, expected):
        assert np.shape(g) == np.shape(e)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=1e-6)


def call_any(module: str, mode: str, kind: str, pred, labels, channels_last=None, **options):
    """:func:`call`, and lovasz.torch (channels-first, eager) as one more module."""
    if module != "lovasz.torch":
        return call(module, mode, kind, pred, labels, channels_last, **options)
    assert not channels_last, "lovasz.torch is channels-first"
    x = torch.tensor(pred, requires_grad=True)
    out = getattr(LT, FUNCTIONS[kind])(x, torch.from_numpy(labels), **options)
    out.sum().backward()
    return out.detach().numpy(), x.grad.numpy()


# Labels with an extra size-1 axis, last ([B, H, W, 1], as Keras gives them) or second ([B, 1, H, W]).
LABEL_AXES = {"last": lambda labels: labels[..., None], "second": lambda labels: labels[:, None]}


@pytest.mark.parametrize("module,mode", MODES + [("lovasz.torch", "eager")])
@pytest.mark.parametrize("where", LABEL_AXES)
def test_labels_with_an_extra_size_1_axis(module, mode, where):
    rng = np.random.default_rng(20)
    probas = rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32")  # [B, H, W, C]
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 0] = 255
    extra = LABEL_AXES[where]
    run = functools.partial(call_any, module, mode)
    first = np.moveaxis(probas, -1, 1)  # [B, C, H, W]
    # the plain labels against the oracle, so that "equal to the plain labels" means right too
    np.testing.assert_allclose(
        run("softmax", first, labels, False, ignore=255)[0], R.lovasz_softmax(first, labels, ignore=255), rtol=1e-5
    )
    orders = [(False, first)] + ([(True, probas)] if module != "lovasz.torch" else [])
    for last, pred in orders:
        for per_image in (False, True):
            options = dict(ignore=255, per_image=per_image)
            assert_same(
                run("softmax", pred, extra(labels), last, **options), run("softmax", pred, labels, last, **options)
            )
    binary = (labels == 1).astype("int32")
    sigmoid = probas[..., 1]  # [B, H, W] probabilities, and the same as one channel of [B, 1, H, W]
    for pred in (sigmoid, sigmoid[:, None]):
        assert_same(run("softmax", pred, extra(binary), False), run("softmax", pred, binary, False))
    logits = rng.normal(size=(2, 4, 5)).astype("float32")
    hinges = [logits, logits[:, None]] + ([logits[..., None]] if module == "lovasz.tf" else [])
    expected = run("hinge", logits, binary, ignore=255)
    np.testing.assert_allclose(expected[0], R.lovasz_hinge(logits, binary, ignore=255), rtol=1e-5)
    for pred in hinges:  # [B, H, W], [B, 1, H, W] (and [B, H, W, 1] for TF) logits
        value, grad = run("hinge", pred, extra(binary), ignore=255)
        assert_same((value, grad.reshape(logits.shape)), expected)
    # only the unambiguous cases: an extra axis that is not 1, or labels that match nothing, still raise
    bad_labels = [
        labels[..., None].repeat(2, -1),
        labels[:, None].repeat(2, 1),
        labels[:, :, :4, None],
        labels[:, None, :, :4],
    ]
    for last, pred in orders:
        for bad in bad_labels:
            with pytest.raises(ValueError, match="labels must have shape"):
                run("softmax", pred, bad, last)
    for bad in (binary[..., None].repeat(2, -1), binary[:, None].repeat(2, 1)):
        with pytest.raises(ValueError, match="labels must have shape"):
            run("hinge", logits, bad)


def scene_options(module: str, scene: np.ndarray) -> dict:
    """The options that give ``module`` the scenes of points whose scene ids (rising) are ``scene``."""
    num_scenes = int(scene.max()) + 1
    return {
        "lovasz.torch": dict(batch=torch.from_numpy(scene)),
        "lovasz.tf": dict(row_splits=np.searchsorted(scene, np.arange(num_scenes + 1))),
        "lovasz.jax": dict(segment_ids=scene, num_segments=num_scenes),
    }[module]


@pytest.mark.parametrize("module,mode", MODES + [("lovasz.torch", "eager")])
def test_points_labels_with_an_extra_size_1_axis(module, mode):
    """Points-first labels ``[N, 1]`` are the ``[N]`` of points ``[N, C]`` (or hinge scores ``[N]``, ``[N, 1]``),
    with scenes and without, in every backend (torch refused them without scenes, all did with)."""
    rng = np.random.default_rng(22)
    points = rng.normal(size=(9, 3)).astype("float32")
    labels = rng.integers(0, 3, 9)
    labels[4] = 19
    scene = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    scenes = scene_options(module, scene)
    run = functools.partial(call_any, module, mode)
    binary = labels % 2
    for per_scene in ({}, dict(scenes, per_image=True)):
        options = dict(per_scene, ignore=19, from_logits=True)
        expected = run("softmax", points, labels, **options)
        np.testing.assert_allclose(
            expected[0], R.lovasz_softmax(points, labels, **options) if not per_scene else expected[0], rtol=1e-5
        )
        assert_same(run("softmax", points, labels[:, None], **options), expected)
        hinge = dict(per_scene, ignore=19)
        expected = run("hinge", points[:, 0], binary, **hinge)
        for scores in (points[:, 0], points[:, :1]):
            value, grad = run("hinge", scores, binary[:, None], **hinge)
            assert_same((value, grad.reshape(-1)), expected)
    with pytest.raises(ValueError, match="labels must have shape"):
        run("softmax", points, labels[:, None].repeat(2, 1), **scenes, per_image=True)


@pytest.mark.parametrize("module,mode", MODES + [("lovasz.torch", "eager")])
def test_points_of_one_channel_are_foreground_probabilities(module, mode):
    """Points ``[N, 1]`` with labels ``[N]`` (a sigmoid's output): the foreground probability read as two
    classes, as ``[B, 1, H, W]`` is, N images of one pixel; with scenes and without, in every backend. All
    refused them without scenes (naming a shape ``[N]`` nobody passed), torch with scenes in batch mode too,
    while ``[N, 1]`` labels were taken."""
    rng = np.random.default_rng(23)
    probs = rng.random((9, 1)).astype("float32")
    labels = rng.integers(0, 2, 9)
    labels[4] = 19
    scene = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    scenes = scene_options(module, scene)
    run = functools.partial(call_any, module, mode)
    two = np.concatenate([1 - probs, probs], 1)  # the same as two classes: d/dp = g[:, 1] - g[:, 0]
    for per_image in (False, True):
        for per_scene in ({}, scenes):
            options = dict(per_scene, ignore=19, per_image=per_image)
            value, grad = run("softmax", probs, labels, **options)
            two_value, two_grad = run("softmax", two, labels, **options)
            np.testing.assert_allclose(value, two_value, rtol=1e-5)
            np.testing.assert_allclose(grad[:, 0], two_grad[:, 1] - two_grad[:, 0], rtol=1e-5, atol=1e-6)
            assert_same((value, grad), run("softmax", probs, labels[:, None], **options))
        pixels = R.lovasz_softmax(probs[:, :, None], labels[:, None], ignore=19, per_image=per_image)
        np.testing.assert_allclose(run("softmax", probs, labels, ignore=19, per_image=per_image)[0], pixels, rtol=1e-5)
    by_scene = [R.lovasz_softmax(probs[scene == s].T[None], labels[scene == s][None], ignore=19) for s in range(3)]
    np.testing.assert_allclose(run("softmax", probs, labels, ignore=19, per_image=True, **scenes)[0], np.mean(by_scene))


@pytest.mark.parametrize("module,mode", MODES)
def test_float_labels_holding_class_indices(module, mode):
    rng = np.random.default_rng(21)
    probas = rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32")
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[1, 2] = 255
    expected = call(module, mode, "softmax", probas, labels, True, ignore=255, per_image=True)
    for dtype in ("float16", "float32", "float64"):
        got = call(module, mode, "softmax", probas, labels.astype(dtype), True, ignore=255, per_image=True)
        assert_same(got, expected)
    half = labels.astype("float32")
    half[0, 1, 1] = 1.5
    if mode == "function":  # an assert in the graph, naming the value when it runs
        tf = require("tensorflow")
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be whole numbers.*found:.*1.5"):
            call(module, mode, "softmax", probas, half, True, ignore=255)
        half[0, 1, 1] = 7
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 2\].*found:.*7"):
            call(module, mode, "softmax", probas, half, True)
        return
    if mode != "eager":  # XLA and jax.jit compile no assert: a bad label makes the loss and gradient NaN
        assert_nan_where_bad(module, mode, probas, half)
        return
    with pytest.raises(
        ValueError,
        match=r"labels must be whole numbers \(class indices\) at every non-ignored "
        r"pixel; found 1.5",
    ):
        call(module, mode, "softmax", probas, half, True, ignore=255)
    half[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="labels must be whole numbers.*found nan"):
        call(module, mode, "softmax", probas, half, True)
    half[0, 1, 1] = 7
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] at every non-ignored pixel; found 7"):
        call(module, mode, "softmax", probas, half, True)
    with pytest.raises(ValueError, match="labels must be 0 or 1 at every non-ignored pixel; found 0.5"):
        call(module, mode, "hinge", probas[..., 0], np.full((2, 4, 5), 0.5, "float32"))
    with pytest.raises(ValueError, match="targets must be 0 or 1 at every non-ignored pixel; found 0.5"):
        call(module, mode, "multilabel", probas, np.full(probas.shape, 0.5, "float32"), True)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32", "uint64"])
def test_tf_labels_below_0_or_past_the_classes_are_refused(mode, dtype):
    """lovasz.tf reads integer labels' bits unsigned, so that a negative label is above every class: one
    comparison for the range. Every label out of it raises (NaN under XLA), none in it does."""
    tf = require("tensorflow")
    probas = np.full((1, 2, 3, 4), 0.25, "float32")
    labels = np.zeros((1, 2, 3), dtype)
    info = np.iinfo(dtype)
    bad_values = [4, 5, int(info.max)] + ([-1, int(info.min)] if info.min < 0 else [])
    for bad in bad_values:
        labels[0, 1, 2] = bad
        if mode == "xla":
            value, grad = call("lovasz.tf", mode, "softmax", probas, labels, True)
            assert np.isnan(value) and np.isnan(grad).any(), bad
            continue
        error = ValueError if mode == "eager" else tf.errors.InvalidArgumentError
        shown = min(bad, 2**63 - 1)  # (uint64 from 2**63 on is shown as the largest int64, which it becomes)
        with pytest.raises(error, match=rf"labels must be in \[0, 3\].*found:?\W*{shown}\b"):
            call("lovasz.tf", mode, "softmax", probas, labels, True)
    labels[0, 1, 2] = 3
    value, _ = call("lovasz.tf", mode, "softmax", probas, labels, True)
    np.testing.assert_allclose(value, R.lovasz_softmax(np.moveaxis(probas, -1, 1), labels), rtol=1e-6)


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf"])
def test_uint64_labels_past_int64_are_out_of_range_not_ignored(module):
    """uint64 labels are read as int64: from 2**63 on they wrapped to negatives, and ``ignore=-1`` then left
    out a label 2**64 - 1 without a word (no uint64 label is -1). They are out of range now, whatever
    ``ignore`` says, as the oracle has them."""
    probas = np.full((1, 3, 2, 2), 1 / 3, "float32")
    labels = np.array([[[0, 1], [2, 2**64 - 1]]], "uint64")
    for ignore in (-1, None, 255):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
            R.lovasz_softmax(probas, labels, ignore=ignore)
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] at every non-ignored pixel; found \d+$"):
            call_any(module, "eager", "softmax", probas, labels, False, ignore=ignore)
    labels[0, 1, 1] = 2
    np.testing.assert_allclose(
        call_any(module, "eager", "softmax", probas, labels, False, ignore=-1)[0],
        R.lovasz_softmax(probas, labels, ignore=-1),
        rtol=1e-6,
    )


def assert_nan_where_bad(module, mode, probas, half):
    """Where no assert is compiled, each kind's loss of a bad label (1.5 and 7 of 3 classes, 2 of a mask) is NaN,
    its gradient too, not the loss of a label read as background; ignored, the loss is finite."""
    good = np.round(half).clip(0, 2)
    bad_cases = [("softmax", probas, half, True), ("softmax", probas, np.where(half == 1.5, 7, good), True)]
    targets = (probas > 0.3) * 1.0
    targets[0, 0, 0, 0] = 2
    bad_cases += [("hinge", probas[..., 0], good % 2 * 2, None), ("multilabel", probas, targets, True)]
    for kind, pred, labels, last in bad_cases:
        value, grad = call(module, mode, kind, pred, labels, last)
        assert np.isnan(value).all() and np.isnan(grad).any(), (kind, value)  # (absent channels' gradient: 0)
        ignored = np.where(labels != good if kind == "softmax" else labels == 2, 255, labels)
        value, grad = call(module, mode, kind, pred, ignored, last, ignore=255)
        assert np.isfinite(value).all() and np.isfinite(grad).all(), (kind, value)


@pytest.mark.parametrize("module,mode", MODES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "bool"])
def test_every_integer_label_dtype(module, mode, dtype):
    rng = np.random.default_rng(22)
    high = 2 if dtype == "bool" else 3
    probas = rng.dirichlet(np.ones(high), size=(2, 4, 5)).astype("float32")
    labels = rng.integers(0, high, (2, 4, 5))
    ignore = 255 if dtype != "bool" and np.iinfo(dtype).max >= 255 else None
    if ignore is not None:
        labels[0, 0] = ignore
    targets = (probas > 0.3).astype("int64")
    run = functools.partial(call, module, mode)
    for kind, pred, lab, last in [
        ("softmax", probas, labels, True),
        ("hinge", probas[..., 0], labels % 2, None),
        ("multilabel", probas, targets, True),
    ]:
        if kind != "softmax" and ignore is not None:
            lab = (
                np.where(labels[..., None] == ignore, ignore, lab)
                if kind == "multilabel"
                else np.where(labels == ignore, ignore, lab)
            )
        assert_same(run(kind, pred, lab.astype(dtype), last, ignore=ignore), run(kind, pred, lab, last, ignore=ignore))


@pytest.mark.parametrize("module,mode", MODES)
@pytest.mark.parametrize("shape", [(0, 4, 5), (2, 0, 5)], ids=["empty-batch", "empty-images"])
def test_empty_input_is_an_all_ignored_one(module, mode, shape):
    rng = np.random.default_rng(23)
    probas = rng.dirichlet(np.ones(3), size=shape).astype("float32")
    ignored = np.full(shape, IGNORE)
    cases = [
        ("softmax", probas, True),
        ("softmax", probas[..., 0], None),
        ("hinge", probas[..., 0], None),
        ("multilabel", probas, True),
    ]
    for kind, pred, last in cases:
        for per_image, reduction in [(False, "mean"), (False, "none"), (True, "mean"), (True, "sum"), (True, "none")]:
            opts = dict(per_image=per_image, reduction=reduction, ignore=IGNORE)
            labels = np.broadcast_to(ignored[..., None], pred.shape) if kind == "multilabel" else ignored
            value, grad = call(module, mode, kind, pred, labels, last, **opts)
            shape_of = (shape[0],) if per_image and reduction == "none" else ()
            assert value.shape == shape_of and value.dtype == np.float32
            np.testing.assert_array_equal(value, 0)
            assert grad.shape == pred.shape and not grad.any()
    if module == "lovasz.tf" and mode != "eager":  # sizes known only when run: an empty set takes another branch
        tf = require("tensorflow")
        LTF = require("lovasz.tf")

        @tf.function(
            jit_compile=mode == "xla",
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32),
                tf.TensorSpec([None, None, None], tf.int64),
            ],
        )
        def dynamic(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = LTF.lovasz_softmax(x, y, ignore=IGNORE)
            return out, tape.gradient(out, x)

        value, grad = dynamic(probas, ignored)
        assert float(value) == 0 and grad.shape == probas.shape and not grad.numpy().any()
        full = rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32")
        labels = rng.integers(0, 3, (2, 4, 5))
        assert_same([x.numpy() for x in dynamic(full, labels)], call(module, "eager", "softmax", full, labels, True))


@pytest.mark.parametrize("module,mode", MODES)
def test_nan_counts_where_it_takes_part_and_not_where_ignored(module, mode):
    rng = np.random.default_rng(24)
    logits = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 0, 0] = IGNORE
    binary = np.where(labels == IGNORE, IGNORE, labels % 2)
    targets = np.where(labels[..., None] == IGNORE, IGNORE, logits > 0)
    cases = [
        ("softmax", logits, labels, dict(from_logits=True)),
        ("softmax", 1 / (1 + np.exp(-logits)), labels, {}),
        ("softmax", logits[..., 0], binary, dict(from_logits=True)),
        ("hinge", logits[..., 0], binary, {}),
        ("multilabel", logits, targets, {}),
    ]
    for kind, pred, lab, options in cases:
        last = None if kind == "hinge" or pred.ndim == 3 else True
        for per_image in (False, True):
            run = functools.partial(
                call, module, mode, kind, channels_last=last, ignore=IGNORE, per_image=per_image, **options
            )
            value, grad = run(pred, lab)
            for bad in (np.nan, np.inf, -np.inf):
                at_ignored = pred.copy()
                at_ignored[0, 0, 0] = bad
                got_value, got_grad = run(at_ignored, lab)
                np.testing.assert_allclose(got_value, value, rtol=1e-6)
                assert not got_grad[0, 0, 0].any()
                np.testing.assert_allclose(got_grad, grad, rtol=1e-6, atol=1e-8)
            at_valid = pred.copy()
            at_valid[1, 2, 3] = np.nan
            assert np.isnan(run(at_valid, lab)[0]).all()


@pytest.mark.parametrize("module", ["lovasz.tf", "lovasz.jax"])
def test_bad_arguments_raise_our_errors(module):
    M = require(module)
    tensor = require("tensorflow").constant if module == "lovasz.tf" else require("jax").numpy.asarray
    channels_last = module == "lovasz.tf"
    probas = np.full((2, 4, 4, 3) if channels_last else (2, 3, 4, 4), 1 / 3, "float32")
    labels = np.zeros((2, 4, 4), "int32")
    softmax = functools.partial(M.lovasz_softmax, probas, labels)
    multilabel = functools.partial(M.lovasz_multilabel, probas, np.zeros(probas.shape, "int32"))
    for fn in (softmax, multilabel):
        for classes, error, message in [
            (tensor([1.7]), TypeError, "classes must contain integer class indices; got an array of dtype float"),
            (np.array([1.0]), TypeError, "classes must contain integer class indices; got an array of dtype float"),
            ([tensor(1.7)], TypeError, "classes must contain integer class indices; got .*1.7"),
            ([1.7], TypeError, "classes must contain integer class indices; got 1.7 of type float"),
            (np.array([[0, 1]]), ValueError, r"classes must be a 1-D list of class indices; got .*shape \[1, 2\]"),
            (tensor([[0, 1]]), ValueError, r"classes must be a 1-D list of class indices; got .*shape \[1, 2\]"),
            ([5], ValueError, r"classes must lie in \[0, 2\] for 3 classes; got 5"),
            ("some", ValueError, "classes must be 'present', 'all' or a list"),
            (2, TypeError, "classes must be 'present', 'all' or a list"),
        ]:
            with pytest.raises(error, match="^" + message):
                fn(classes=classes)
        assert np.isfinite(float(fn(classes=tensor([0, 2]))))
        for weights, error, message in [
            (
                "balanced",
                TypeError,
                r"weights must be \[3\] real numbers \(one weight per class\) or None; "
                r"got 'balanced'",
            ),
            ([[1.0], [2.0, 3.0]], TypeError, r"weights must be \[3\] real numbers .*got \[\[1.0\], \[2.0, 3.0\]\]"),
            ({0: 1.0}, TypeError, r"weights must be \[3\] real numbers"),
            ([1j, 1j, 1j], TypeError, r"weights must be \[3\] real numbers"),
            ([[1.0, 2.0, 3.0]], ValueError, r"weights must have shape \[3\] \(one weight per class\); got \[1, 3"),
            (2.0, ValueError, r"weights must have shape \[3\] .*; got \[\]"),
        ]:
            with pytest.raises(error, match="^" + message):
                fn(weights=weights)
        with pytest.raises(ValueError, match=r"^reduction must be one of \('mean', 'sum', 'none'\); got 'avg'"):
            fn(reduction="avg")
        with pytest.raises(TypeError, match="^ignore must be an int or None; got 255.0"):
            fn(ignore=255.0)
    with pytest.raises(TypeError, match="^labels must be .*class indices.*got .*(str|<U1)"):
        M.lovasz_softmax(probas, np.full((2, 4, 4), "a"))
    with pytest.raises(TypeError, match="^probas must be a floating-point (tensor|array); got NoneType"):
        M.lovasz_softmax(None, labels)
    with pytest.raises(TypeError, match="^logits must be a floating-point (tensor|array); got .*str"):
        M.lovasz_hinge("abc", labels)
    with pytest.raises(ValueError, match=r"^logits must have shape \[B, C, \*spatial\]; got \[3\]"):
        M.lovasz_multilabel(np.zeros(3, "float32"), np.zeros(3, "int32"))
    if not channels_last:
        for axis in (5, 4, 0, -5):
            with pytest.raises(
                ValueError,
                match=rf"^axis must be a class axis of the rank-4 prediction, in \[1, 3\] "
                rf"or \[-3, -1\] \(0 is the batch axis\); got {axis}",
            ):
                M.lovasz_softmax(probas, labels, axis=axis)
            with pytest.raises(ValueError, match="^axis must be a class axis"):
                M.lovasz_multilabel(probas, np.zeros(probas.shape, "int32"), axis=axis)
        for axis in (1.0, "1", None):
            with pytest.raises(TypeError, match=r"^axis must be an int \(the class axis"):
                M.lovasz_softmax(probas, labels, axis=axis)


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf", "lovasz.jax"])
def test_flags_are_true_or_false(module):
    """``from_logits="no"`` counted as True (by its truth) on one route and failed inside a host callback
    on another: a flag that is not a bool raises, naming it; NumPy's bools are bools."""
    M = require(module)
    to = require("torch").as_tensor if module == "lovasz.torch" else np.asarray
    channels_last = module == "lovasz.tf"
    probas = to(np.full((2, 4, 4, 3) if channels_last else (2, 3, 4, 4), 1 / 3, "float32"))
    labels, targets = (
        to(np.zeros((2, 4, 4), "int64")),
        to(np.zeros((2, 4, 4, 3) if channels_last else (2, 3, 4, 4), "int64")),
    )
    calls = {
        "softmax": (functools.partial(M.lovasz_softmax, probas, labels), ["per_image", "from_logits"]),
        "hinge": (
            functools.partial(M.lovasz_hinge, probas[..., 0] if channels_last else probas[:, 0], labels),
            ["per_image"],
        ),
        "multilabel": (functools.partial(M.lovasz_multilabel, probas, targets), ["per_image", "from_logits"]),
    }
    if module == "lovasz.tf":
        for _, flags in calls.values():
            flags.append("global_batch")
    for fn, flags in calls.values():
        for flag in flags:
            for value in ["no", 1, None]:
                with pytest.raises(TypeError, match=f"^{flag} must be True or False; got {value!r}"):
                    fn(**{flag: value})
            assert np.isfinite(float(fn(**{flag: np.True_})))


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf", "lovasz.jax"])
def test_class_weights_are_finite_and_not_negative(module):
    """Weights of a negative sum turned the weighted mean's sign (the oracle gave 0), a NaN weight made the
    loss NaN: where their values are known, they raise."""
    M = require(module)
    to = require("torch").as_tensor if module == "lovasz.torch" else np.asarray
    probas = to(np.full((1, 4, 3) if module == "lovasz.tf" else (1, 3, 4), 1 / 3, "float32"))
    labels = to(np.array([[0, 1, 2, 1]]))
    for weights in [[-2.0, 1.0, 0.5], [1.0, float("nan"), 1.0], np.array([1.0, np.inf, 0.0])]:
        with pytest.raises(
            ValueError, match=r"^weights must be finite numbers >= 0 \(a weight of 0 takes a class out\)"
        ):
            M.lovasz_softmax(probas, labels, weights=weights)
    assert np.isfinite(float(M.lovasz_softmax(probas, labels, weights=[0.0, 1, 2])))
    message = r"weights must be finite numbers >= 0"
    if module == "lovasz.tf":  # constant weights inside a graph are known when traced
        tf = require("tensorflow")
        traced = tf.function(lambda p: M.lovasz_softmax(p, labels, weights=tf.constant([1.0, -3.0, 1.0])))
        with pytest.raises(ValueError, match=message):
            traced(probas)
    if module == "lovasz.torch":  # the modules' class_weights
        for weights in [[1.0, float("nan"), 1.0], [-1.0, 1.0, 1.0]]:
            with pytest.raises(ValueError, match="class_weights must be finite numbers >= 0"):
                M.LovaszLoss(class_weights=weights)


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf", "lovasz.jax"])
def test_class_weights_of_any_magnitude_give_the_weighted_mean(module):
    """Only the weights' ratios count: a sum past float32's largest made the loss 0 (torch) or NaN (TF, JAX),
    weights below its smallest normal number were flushed to zero by XLA's and TF's CPU kernels (1e-39 for
    every class gave 0 and a zero gradient), and TF read float weights as float32 for a float64 loss (1e300
    refused). Known weights far from 1 are scaled by a power of two on the host."""
    M = require(module)
    to = require("torch").as_tensor if module == "lovasz.torch" else np.asarray
    probas = np.full((1, 4, 3) if module == "lovasz.tf" else (1, 3, 4), 1 / 3)
    probas[..., 0] = 0.5  # (not all classes' losses equal: the weights matter)
    labels = np.array([[0, 1, 2, 1]])
    oracle = np.moveaxis(probas, -1, 1) if module == "lovasz.tf" else probas
    for weights, dtype in [
        ([2e38, 3e38, 1e38], "float32"),
        ([2e-39, 3e-39, 1e-39], "float32"),
        ([2e-40, 0.0, 1e-40], "float32"),
        ([2e300, 3e300, 1e300], "float64"),
        ([2e-310, 3e-310, 1e-310], "float64"),
    ]:
        expected = R.lovasz_softmax(oracle, labels, weights=weights)
        if module == "lovasz.jax" and dtype == "float64":
            jax = require("jax")
            with jax.enable_x64(True):
                got = M.lovasz_softmax(to(probas), to(labels), weights=weights)
        else:
            got = M.lovasz_softmax(to(probas.astype(dtype)), to(labels), weights=weights)
        np.testing.assert_allclose(float(got), expected, rtol=1e-6 if dtype == "float32" else 1e-12)


def test_keras_class_weights_are_finite_and_not_negative():
    require("keras")
    K = require("lovasz.keras")
    for loss in [K.LovaszSoftmaxLoss, K.LovaszMultilabelLoss, K.CrossEntropyLovaszLoss]:
        for weights in [[-1.0, 1.0, 1.0], [1.0, float("inf"), 1.0]]:
            with pytest.raises(ValueError, match="class_weights must be finite numbers >= 0"):
                loss(class_weights=weights)


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf", "lovasz.jax"])
def test_an_ignore_value_the_labels_cannot_hold_ignores_nothing(module):
    """uint8 labels with ``ignore=-1`` (Pointcept's value): compared as they were, -1 wrapped to 255 and left
    those pixels out without a word; NumPy compares without wrapping, as the oracle and the metrics do."""
    M = require(module)
    to = require("torch").as_tensor if module == "lovasz.torch" else np.asarray
    probas = np.full((1, 4, 3) if module == "lovasz.tf" else (1, 3, 4), 1 / 3, "float32")
    for labels, ignore, found in [([[0, 1, 2, 255]], -1, "255"), ([[0, 1, 2, -1]], 255, "-1")]:
        dtype = "uint8" if ignore == -1 else "int8"
        with pytest.raises(ValueError, match=f"labels must be in \\[0, 2\\] at every non-ignored pixel; found {found}"):
            M.lovasz_softmax(to(probas), to(np.array(labels, dtype)), ignore=ignore)
        held = np.array(labels, "int64")  # where the dtype holds it, the value is ignored as before
        expected = R.lovasz_softmax(np.full((1, 3, 3), 1 / 3), held[:, :3])
        got = M.lovasz_softmax(to(probas), to(np.array(labels, dtype)), ignore=int(np.array(labels, dtype)[0, 3]))
        np.testing.assert_allclose(float(got), expected, rtol=1e-6)


# The ignore values of the LiDAR codebases: 0 (Cylinder3D, SalsaNext, 2DPASS), 19 (mmdetection3d),
# 255 (PolarSeg), -1 (Pointcept); mostly ignored, as a voxel grid is, so lovasz.torch gathers them too.
LIDAR_IGNORES = [0, 19, 255, -1]


@pytest.mark.parametrize("module,mode", MODES + [("lovasz.torch", "eager")])
@pytest.mark.parametrize("ignore", LIDAR_IGNORES)
def test_lidar_ignore_values(monkeypatch, module, mode, ignore):
    monkeypatch.setattr(require("lovasz._torch_scenes"), "COMPACT_MIN_VALUES", 0)  # gathered at this size too
    rng = np.random.default_rng(ignore + 7)
    classes, shape = 20, (2, 6, 5)
    probas = rng.dirichlet(np.ones(classes), size=shape).transpose(0, 3, 1, 2)  # [B, C, H, W]
    logits = rng.normal(size=shape)
    ignored = rng.random(shape) < 0.7
    labels = np.where(ignored, ignore, rng.integers(1, 19, shape))  # 1..18: never an ignore value
    binary = np.where(ignored, ignore, rng.integers(0, 2, shape) if ignore not in (0, 1) else 1)
    targets = np.where(ignored[:, None], ignore, rng.integers(0, 2, (2, 4) + shape[1:]))
    if ignore == 0:  # 0 is the ignore value: every valid target is a 1
        targets = np.broadcast_to(np.where(ignored[:, None], 0, 1), targets.shape)
    runs = [
        ("softmax", probas, labels, False, R.lovasz_softmax),
        ("hinge", logits, binary, None, R.lovasz_hinge),
        ("multilabel", logits[:, None].repeat(4, 1), targets, False, R.lovasz_multilabel),
    ]
    for kind, pred, labs, channels_last, oracle in runs:
        for per_image in (False, True):
            options = dict(ignore=ignore, per_image=per_image)
            value, grad = call_any(module, mode, kind, pred, labs.astype("int64"), channels_last, **options)
            np.testing.assert_allclose(value, oracle(pred, labs, **options), rtol=1e-5, atol=1e-7)
            dropped = ignored if kind == "hinge" else (labs == ignore) if kind == "multilabel" else ignored[:, None]
            assert np.all(np.broadcast_to(dropped, grad.shape) <= (grad == 0)), f"{kind}: an ignored pixel's gradient"
            if module != "lovasz.torch":  # the gradient against lovasz.torch's (checked against the oracle elsewhere)
                expected = call_any("lovasz.torch", "eager", kind, pred, labs.astype("int64"), **options)[1]
                np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("module", ["lovasz.tf", "lovasz.jax"])
def test_sparse_inputs_raise_our_errors(module):
    """A sparse prediction or labels (tf.SparseTensor, jax.experimental.sparse) is not read as dense: a
    TypeError says what to pass."""
    M = require(module)
    if module == "lovasz.tf":
        sparse, message = require("tensorflow").sparse.from_dense, "got a tf.SparseTensor: pass tf.sparse.to_dense"
    else:
        sparse, message = require("jax.experimental.sparse").BCOO.fromdense, r"got a sparse BCOO: pass its .todense\(\)"
    probas = np.full((2, 4, 4, 3), 1 / 3, "float32")
    labels = np.zeros((2, 4, 4), "int32")
    for call, name in [
        (lambda: M.lovasz_softmax(sparse(probas), labels), "probas"),
        (lambda: M.lovasz_softmax(probas, sparse(labels)), "labels"),
        (lambda: M.lovasz_hinge(sparse(probas[..., 0]), labels), "logits"),
        (lambda: M.lovasz_multilabel(sparse(probas), np.zeros(probas.shape, "int32")), "logits"),
    ]:
        with pytest.raises(TypeError, match=f"^{name} must be a dense .*{message}"):
            call()


@pytest.mark.parametrize("module,mode", MODES)
def test_hinge_channels_first_logits_of_a_last_spatial_dim_of_1(module, mode):
    """[B, 1, H, W=1] logits with [B, H, 1] labels: TF squeezed the last axis (the one of size 1 that is W),
    then refused the labels as [1, 1, 3] logits."""
    logits = np.array([[[[0.5], [-1.0], [2.0]]]], "float32")  # [B=1, 1, H=3, W=1]
    labels = np.array([[[1], [0], [1]]])  # [B=1, H=3, W=1]
    value, grad = call(module, mode, "hinge", logits, labels)
    expected, expected_grad = call_any("lovasz.torch", "eager", "hinge", logits, labels)
    np.testing.assert_allclose(value, 0.25, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf", "lovasz.jax"])
def test_multilabel_of_no_channel_is_zero_per_image(module):
    """``[B, 0, N]``: one zero per image, as the oracle gives (TF gave one value for two images, its reshape's
    -1 reading one set; JAX raised ZeroDivisionError from its reshape, with ``ignore`` too: the grid's path)."""
    M = require(module)
    to = require("torch").as_tensor if module == "lovasz.torch" else np.asarray
    logits, targets = np.zeros((2, 0, 4), "float32"), np.zeros((2, 0, 4), "int64")
    layouts = [{"order": "BCHW"}, {}] if module == "lovasz.tf" else [{}]
    for options in layouts:
        shape = (2, 4, 0) if options == {} and module == "lovasz.tf" else (2, 0, 4)
        x, t = to(logits.reshape(shape)), to(targets.reshape(shape))
        for per_image, ignore in itertools.product((True, False), (None, 255)):
            got = M.lovasz_multilabel(x, t, per_image=per_image, reduction="none", ignore=ignore, **options)
            expected = R.lovasz_multilabel(logits, targets, per_image=per_image, reduction="none", ignore=ignore)
            np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("module", ["lovasz.torch", "lovasz.tf", "lovasz.jax"])
def test_multilabel_probabilities_match_the_oracle(module):
    """Multi-label without ``from_logits`` (each channel's foreground term of its probabilities), which the
    oracle lacked: values, and torch's gradient; every ``classes``, batch and per image, ignore, weights."""
    M = require(module)
    rng = np.random.default_rng(22)
    probas, targets = rng.random((2, 3, 4, 5)), rng.integers(0, 2, (2, 3, 4, 5))
    targets[0, 0, 0] = 255
    targets[1, 2] = 0  # a channel absent from an image
    for per_image in (True, False):
        for classes in ("present", "all", [2, 0, 0]):
            options = dict(classes=classes, per_image=per_image, ignore=255, weights=[1.0, 2.0, 3.0])
            expected = R.lovasz_multilabel(probas, targets, from_logits=False, **options)
            if module == "lovasz.torch":  # its gradient against the oracle's finite differences
                x = torch.tensor(probas, requires_grad=True)
                LT.lovasz_multilabel(x, torch.tensor(targets), from_logits=False, **options).backward()
                eps, grads = 1e-6, np.zeros_like(probas)
                for i in range(0, probas.size, 7):  # finite differences of the oracle, every seventh pixel
                    step = np.zeros(probas.size)
                    step[i] = eps
                    up, down = probas + step.reshape(probas.shape), probas - step.reshape(probas.shape)
                    grads.flat[i] = (
                        R.lovasz_multilabel(up, targets, from_logits=False, **options)
                        - R.lovasz_multilabel(down, targets, from_logits=False, **options)
                    ) / (2 * eps)
                np.testing.assert_allclose(x.grad.numpy().flat[::7], grads.flat[::7], atol=1e-6)
            if module == "lovasz.tf":
                got = M.lovasz_multilabel(probas, targets, from_logits=False, order="BCHW", **options)
            elif module == "lovasz.jax":
                got = M.lovasz_multilabel(probas.astype("float32"), targets, from_logits=False, **options)
            else:
                got = M.lovasz_multilabel(torch.tensor(probas), torch.tensor(targets), from_logits=False, **options)
            np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_jax_half_precision_labels_of_many_classes():
    """bfloat16 holds every whole number to 256 only (257 rounds to 256): its labels of 300 classes were
    compared with classes made in bfloat16, and label 256 matched two of them (0.0235 for 0.0202)."""
    LJ = require("lovasz.jax")
    rng = np.random.default_rng(23)
    probas = rng.dirichlet(np.ones(300), size=(1, 40)).transpose(0, 2, 1).astype("float32")  # [1, 300, 40]
    labels = 2 * rng.integers(125, 150, (1, 40))  # (even: bfloat16 holds no odd number past 256)
    expected = float(LJ.lovasz_softmax(probas, labels))
    for dtype in ("bfloat16", "float16"):
        got = LJ.lovasz_softmax(probas, require("jax.numpy").asarray(labels, dtype))
        assert float(got) == pytest.approx(expected, rel=1e-6)
