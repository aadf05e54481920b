"""lovasz.tf in a SavedModel: the C kernel's ``tf.numpy_function`` is not serialized, so functions traced
inside ``lovasz.tf.exportable()`` sort in TF; saved there, they load and run in another process with the
kernel's values and gradients."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import require

tf = require("tensorflow")
LT = require("lovasz.tf")
C = require("lovasz._ckernel")

pytestmark = pytest.mark.skipif(C.kernel() is None, reason="no compiled kernel: nothing to leave out")

SHAPE = [2, 12, 10, 5]  # a mostly ignored grid (below), so the gathered path is traced too


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    probas = rng.dirichlet(np.ones(SHAPE[-1]), SHAPE[:-1]).astype("float32")
    labels = rng.integers(1, SHAPE[-1], SHAPE[:-1]).astype("int32")
    labels[rng.random(SHAPE[:-1]) < 0.9] = 0  # ignored: 90% of the pixels
    scores = rng.normal(size=SHAPE[:-1]).astype("float32")
    return probas, labels, scores


class Losses(tf.Module):
    """Each loss with its gradient: the softmax of a mostly ignored grid (batch and per image), the hinge,
    points of scenes."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *SHAPE[1:]]),
            tf.TensorSpec([None, *SHAPE[1:-1]], tf.int32),
            tf.TensorSpec([None, *SHAPE[1:-1]]),
        ]
    )
    def values_and_grads(self, probas, labels, scores):
        points = tf.reshape(probas, [-1, SHAPE[-1]])
        splits = tf.constant([0, 100, 240], tf.int64)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([probas, scores, points])
            losses = [
                LT.lovasz_softmax(probas, labels, ignore=0),
                LT.lovasz_softmax(probas, labels, per_image=True, ignore=0),
                LT.lovasz_hinge(scores, tf.cast(labels > 2, tf.int32)),
                LT.lovasz_softmax(points, tf.reshape(labels, [-1]), per_image=True, ignore=0, row_splits=splits),
            ]
        grads = [tape.gradient(losses[i], x) for i, x in enumerate([probas, probas, scores, points])]
        return tf.stack(losses), grads


def ops_of(function) -> set[str]:
    """Every op type of a concrete function's graph, its cond branches' functions included."""
    graph = function.graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for library_function in graph.library.function:
        ops |= {node.op for node in library_function.node_def}
    return ops


def test_only_traces_inside_leave_the_kernel_out():
    probas, labels, scores = inputs()
    outside = Losses().values_and_grads.get_concrete_function()
    with LT.exportable():
        inside = Losses().values_and_grads.get_concrete_function()
    assert {"PyFunc", "PyFuncStateless"} & ops_of(outside)  # the kernel, where it serves
    assert not {"PyFunc", "PyFuncStateless", "EagerPyFunc"} & ops_of(inside)
    (losses, grads), (kernel_losses, kernel_grads) = inside(probas, labels, scores), outside(probas, labels, scores)
    np.testing.assert_allclose(losses.numpy(), kernel_losses.numpy(), rtol=1e-5)
    for got, expected in zip(grads, kernel_grads):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


LOAD = """
import json, sys
import numpy as np, tensorflow as tf
arrays = np.load(sys.argv[2])
loaded = tf.saved_model.load(sys.argv[1])
losses, grads = loaded.values_and_grads(arrays["probas"], arrays["labels"], arrays["scores"])
print(json.dumps({"losses": losses.numpy().tolist(), "grads": [g.numpy().tolist() for g in grads]}))
"""


def test_saved_inside_loads_and_runs_in_another_process(tmp_path):
    probas, labels, scores = inputs()
    with LT.exportable():
        tf.saved_model.save(Losses(), str(tmp_path / "model"))
    np.savez(tmp_path / "inputs.npz", probas=probas, labels=labels, scores=scores)
    run = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "model"), str(tmp_path / "inputs.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    restored = json.loads(run.stdout.strip().splitlines()[-1])
    expected_losses, expected_grads = Losses().values_and_grads(probas, labels, scores)  # the kernel, here
    np.testing.assert_allclose(restored["losses"], expected_losses.numpy(), rtol=1e-5)
    for got, expected in zip(restored["grads"], expected_grads):
        np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_traced_inside_a_bad_label_makes_the_loss_nan_in_tf_and_in_tflite():
    """TFLite drops asserts (a class 7 of 4 gave a finite loss in the converted model): traced inside
    ``exportable()``, the checks make the loss NaN instead, as under XLA, and the model converts without
    TF's own ops (no unsigned comparison, no callback)."""
    rng = np.random.default_rng(4)
    probas = rng.dirichlet(np.ones(4), size=(2, 5, 6)).astype("float32")
    labels = rng.integers(0, 4, (2, 5, 6)).astype("int32")
    spec = [tf.TensorSpec([2, 5, 6, 4]), tf.TensorSpec([2, 5, 6], tf.int32)]
    cases = [  # (loss, good labels, a bad label)
        (lambda p, y: LT.lovasz_softmax(p, y, ignore=255, per_image=True), labels, 7),
        (lambda p, y: LT.lovasz_hinge(p[..., 0], y), labels % 2, 2),
    ]
    for loss, good, bad_value in cases:
        function = tf.function(loss, input_signature=spec)
        with LT.exportable():
            concrete = function.get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
        interpreter = tf.lite.Interpreter(model_content=converter.convert())
        interpreter.allocate_tensors()

        def tflite(p, y):
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], p if detail["dtype"] == np.float32 else y)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

        expected = loss(tf.constant(probas), good).numpy()  # eagerly, with the kernel
        np.testing.assert_allclose(concrete(probas, good).numpy(), expected, rtol=1e-5)
        np.testing.assert_allclose(tflite(probas, good), expected, rtol=1e-5)
        bad = good.copy()
        bad[0, 2, 3] = bad_value
        assert np.isnan(concrete(probas, bad).numpy()) and np.isnan(tflite(probas, bad)), bad_value
