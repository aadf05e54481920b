"""lovasz.tf in TF1-style graphs: placeholders, ``tf.gradients`` and ``tf.compat.v1.Session``, where the
original ``lovasz_losses_tf.py`` ran, with TF2 behaviour on and with ``tf.compat.v1.disable_v2_behavior()``.

There ``==`` between tensors compares the Python objects (a silent ``False``, no error), and a bare graph
runs only the ops a fetch needs, so an assert made beside the loss would never run: each call is traced in
a ``tf.function`` of its own (``lovasz.tf._traced_as_written``), and the loss must give the values and
gradients it gives eagerly, and its errors when the session runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import Case
from test_backends import EDGES, FUNCTIONS, SWEEP, moves_channels, torch_run

from conftest import require

tf = require("tensorflow")
LT = require("lovasz.tf")
C = require("lovasz._ckernel")


def session_run(fn, pred, labels, dtype=tf.float64, known=True, **options):
    """``fn(x, y, **options)`` and the gradient of its sum in ``x``, from placeholders fed ``pred`` and
    ``labels`` in a session of a graph of their own; ``known=False``: every dim unknown but the last."""
    graph = tf.Graph()
    with graph.as_default():
        x_shape = pred.shape if known else [None] * (pred.ndim - 1) + [pred.shape[-1]]
        y_shape = labels.shape if known else [None] * labels.ndim
        x = tf.compat.v1.placeholder(dtype, x_shape)
        y = tf.compat.v1.placeholder(tf.as_dtype(labels.dtype), y_shape)
        out = fn(x, y, **options)
        grad = tf.gradients(tf.reduce_sum(out), x)[0]
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run([out, grad], {x: pred, y: labels})


def case_run(case: Case, dtype=tf.float64, known=True):
    """:func:`session_run` of a sweep case, channels-last as lovasz.tf takes it; the gradient channels-first."""
    last = moves_channels(case)
    pred = np.moveaxis(case.pred, 1, -1) if last else case.pred
    labels = np.moveaxis(case.labels, 1, -1) if case.kind == "multilabel" else case.labels
    options = dict(case.options, **({} if case.kind == "hinge" else {"order": "BHWC"}))
    fn = getattr(LT, FUNCTIONS[case.kind])
    value, grad = session_run(fn, pred.astype(dtype.as_numpy_dtype), labels, dtype, known, **options)
    return value, np.moveaxis(grad, -1, 1) if last else grad


@pytest.mark.parametrize("case", SWEEP[::8] + EDGES, ids=lambda c: c.name)
def test_a_session_gives_the_oracles_value_and_torchs_gradient(case: Case):
    value, grad = case_run(case)
    np.testing.assert_allclose(value, case.oracle(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grad, torch_run(case)[1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", SWEEP[3::16], ids=lambda c: c.name)
def test_a_session_in_float32_with_unknown_dims_matches_eager(case: Case):
    """Float32: the C kernel on a CPU (through ``tf.numpy_function``, which a session runs too)."""
    value, grad = case_run(case, tf.float32, known=False)
    np.testing.assert_allclose(value, case.oracle(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, torch_run(case)[1], rtol=1e-4, atol=2e-6)


def test_a_mostly_ignored_grid_and_points_of_scenes_in_a_session_match_eager():
    rng = np.random.default_rng(0)
    probas = rng.dirichlet(np.ones(5), size=(2, 20, 10, 4)).astype(np.float32)  # [B, *spatial, C]
    labels = rng.integers(0, 5, probas.shape[:-1])
    labels[rng.random(labels.shape) >= 0.03] = 0  # 3% occupied, ignore 0 (Cylinder3D's)
    points, point_labels = probas.reshape(-1, 5), labels.reshape(-1)
    splits = np.array([0, 300, 300, points.shape[0]])
    runs = [
        (probas, labels, dict(ignore=0)),
        (probas, labels, dict(ignore=0, per_image=True)),
        (points, point_labels, dict(ignore=0, row_splits=splits)),
    ]
    for pred, lab, options in runs:
        x = tf.constant(pred)
        with tf.GradientTape() as tape:
            tape.watch(x)
            eager = LT.lovasz_softmax(x, lab, **options)
        value, grad = session_run(LT.lovasz_softmax, pred, lab, tf.float32, **options)
        np.testing.assert_allclose(value, eager.numpy(), rtol=1e-6, err_msg=str(options))
        np.testing.assert_allclose(grad, tape.gradient(eager, x).numpy(), rtol=1e-6, atol=1e-9, err_msg=str(options))
        assert np.all(grad[lab == 0] == 0)


def test_a_session_runs_the_checks():
    probas = np.full((1, 3, 3, 4), 0.25, np.float32)
    labels = np.zeros((1, 3, 3), np.int64)
    labels[0, 1, 1] = 7
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 3\]"):
        session_run(LT.lovasz_softmax, probas, labels)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be 0 or 1"):
        session_run(LT.lovasz_hinge, probas[..., 0], np.where(labels == 7, 2, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must have the shape of probas"):
        session_run(LT.lovasz_softmax, probas, labels.transpose(0, 2, 1)[:, :2], known=False)


def test_the_original_api_in_a_session_gives_the_originals_values():
    """The drop-in functions, called as the original's TF1 users call them."""
    original = require("lovasz.peers").load_original_tf()
    rng = np.random.default_rng(1)
    probas = rng.dirichlet(np.ones(4), size=(2, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 6, 5))
    logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
    binary = rng.integers(0, 2, (2, 6, 5))
    for fn, pred, lab, options in [
        ("lovasz_softmax", probas, labels, dict(ignore=3)),
        ("lovasz_softmax", probas, labels, dict(per_image=True, classes="all")),
        ("lovasz_hinge", logits, binary, dict(per_image=True)),
        ("lovasz_softmax_flat", probas.reshape(-1, 4), labels.reshape(-1), {}),
        ("lovasz_hinge_flat", logits.reshape(-1), binary.reshape(-1), {}),
    ]:
        value, _ = session_run(getattr(LT, fn), pred, lab, tf.float32, **options)
        expected = getattr(original, fn)(tf.constant(pred), tf.constant(lab), **options)
        np.testing.assert_allclose(value, expected.numpy(), rtol=1e-5, err_msg=fn)


# The cases of the process with v2 behaviour disabled: (function, prediction, labels, options), arrays by name.
V1_CASES = {
    "softmax": ("lovasz_softmax", "probas", "labels", dict(ignore=255)),
    "softmax-per-image": ("lovasz_softmax", "probas", "labels", dict(ignore=255, per_image=True, classes="all")),
    "hinge": ("lovasz_hinge", "logits", "binary", dict(per_image=True)),
    "multilabel": ("lovasz_multilabel", "multi", "targets", dict(ignore=255)),
}

_V1_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    tf.compat.v1.disable_v2_behavior()
    sys.path.insert(0, sys.argv[1])
    from test_tf_v1_graph import V1_CASES, session_run
    import lovasz.tf as LT
    inputs = np.load(sys.argv[2])
    results = {}
    for dtype in (tf.float32, tf.float64):
        for name, (fn, pred, labels, options) in V1_CASES.items():
            pred = inputs[pred].astype(dtype.as_numpy_dtype)
            value, grad = session_run(getattr(LT, fn), pred, inputs[labels], dtype, **options)
            results[f"{name}-{dtype.name}"] = [np.asarray(value).tolist(), grad.tolist()]
    try:
        session_run(LT.lovasz_softmax, inputs["probas"], np.full(inputs["labels"].shape, 9))
        results["check"] = "no error"
    except tf.errors.InvalidArgumentError as error:
        results["check"] = error.message
    print(json.dumps(results))
    """
)


def test_with_v2_behavior_disabled_a_session_matches_eager(tmp_path):
    """``tf.compat.v1.disable_v2_behavior()`` (TF1 code's first line under TF2) holds for the whole process: a
    process of its own."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (2, 6, 5))
    labels[rng.random(labels.shape) < 0.3] = 255
    targets = rng.integers(0, 2, (2, 6, 5, 3))
    targets[:, :2, :, 1] = 255
    inputs = dict(
        probas=rng.dirichlet(np.ones(4), size=(2, 6, 5)),
        labels=labels,
        logits=rng.normal(size=(2, 6, 5)),
        binary=rng.integers(0, 2, (2, 6, 5)),
        multi=rng.normal(size=(2, 6, 5, 3)),
        targets=targets,
    )
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    tests = os.path.dirname(__file__)
    run = subprocess.run(
        [sys.executable, "-c", _V1_SCRIPT, tests, str(tmp_path / "inputs.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert "labels must be in [0, 3]" in results.pop("check")
    for key, (value, grad) in results.items():
        name, dtype = key.rsplit("-", 1)
        fn, pred, labels, options = V1_CASES[name]
        x = tf.constant(inputs[pred].astype(dtype))
        with tf.GradientTape() as tape:
            tape.watch(x)
            eager = tf.reduce_sum(getattr(LT, fn)(x, inputs[labels], **options))
        rtol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(value, eager.numpy(), rtol=rtol, err_msg=key)
        np.testing.assert_allclose(grad, tape.gradient(eager, x).numpy(), rtol=rtol, atol=1e-9, err_msg=key)
