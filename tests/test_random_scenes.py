"""Points of scenes with random options, in every backend, against the oracle scene by scene.

Each seed draws a loss (softmax, hinge, multi-label), a number of channels (one included: a sigmoid's
foreground probability), scenes of random sizes (empty ones too), ignored points, ``per_image``,
``classes``, class weights, ``from_logits`` and the reduction. The oracle is run on each scene's points
as one image; lovasz.torch's float64 gradient is checked against the oracle's central differences, and
lovasz.jax's and lovasz.tf's against lovasz.torch's. (A sweep like this found points ``[N, 1]`` refused.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

FUNCTIONS = {"softmax": "lovasz_softmax", "hinge": "lovasz_hinge", "multilabel": "lovasz_multilabel"}
ORACLES = {"softmax": R.lovasz_softmax, "hinge": R.lovasz_hinge, "multilabel": R.lovasz_multilabel}


def draw(seed: int) -> tuple[str, np.ndarray, np.ndarray, list[int], dict]:
    """(loss, points ``[N, C]`` or hinge scores ``[N]``, labels, scene sizes, options) of ``seed``."""
    rng, g = random.Random(seed), np.random.default_rng(seed)
    loss = ("softmax", "softmax", "hinge", "multilabel")[seed % 4]
    channels = rng.choice([1, 2, 3, 5])
    sizes = [rng.choice([0, 1, 4, 13]) for _ in range(rng.randint(1, 4))]
    num_points = sum(sizes)
    options: dict = dict(per_image=rng.random() < 0.6, ignore=rng.choice([None, 255, -1]))
    options["reduction"] = rng.choice(["mean", "sum"] + (["none"] if options["per_image"] else []))
    if loss == "hinge":
        pred = g.normal(size=num_points) * 2
        labels = g.integers(0, 2, num_points)
    else:
        classes = 2 if channels == 1 and loss == "softmax" else channels
        options["classes"] = rng.choice(["present", "all", [rng.randrange(classes)]])
        if rng.random() < 0.4:
            options["weights"] = [rng.choice([0.0, 0.5, 2.0]) for _ in range(classes)]
        options["from_logits"] = rng.random() < 0.5 or loss == "multilabel"
        pred = g.normal(size=(num_points, channels)) * 2
        if loss == "softmax" and not options["from_logits"]:
            pred = 1 / (1 + np.exp(-pred)) if channels == 1 else np.exp(pred) / np.exp(pred).sum(1, keepdims=True)
        labels = g.integers(0, classes if loss == "softmax" else 2, pred.shape if loss == "multilabel" else num_points)
    if options["ignore"] is not None:
        labels = np.where(g.random(labels.shape) < rng.choice([0.2, 0.9]), options["ignore"], labels)
    return loss, pred, labels, sizes, options


def oracle(loss: str, pred: np.ndarray, labels: np.ndarray, sizes: list[int], options: dict) -> float | np.ndarray:
    """The loss of the points of the scenes ``sizes``: a scene each with ``per_image`` (0 for an empty one),
    else all as one image."""
    fn = ORACLES[loss]
    as_image = (lambda x: x[None]) if loss == "hinge" else (lambda x: x.T[None])
    as_labels = (lambda y: y.T[None]) if loss == "multilabel" else (lambda y: y[None])
    one_set = dict(options, per_image=False, reduction="mean")
    if not options["per_image"]:  # (no scenes: one set too)
        return fn(as_image(pred), as_labels(labels), **one_set) if len(labels) else 0.0
    ends = np.cumsum(sizes)
    per_scene = np.array(
        [
            fn(as_image(pred[a:b]), as_labels(labels[a:b]), **one_set) if b > a else 0.0
            for a, b in zip(ends - sizes, ends)
        ]
    )
    return {"none": per_scene, "sum": per_scene.sum(), "mean": per_scene.mean()}[options["reduction"]]


def run_torch(loss, pred, labels, sizes, options, dtype):
    torch = require("torch")
    x = torch.tensor(pred, dtype=dtype, requires_grad=True)
    scenes = dict(offsets=torch.tensor(np.cumsum(sizes))) if sizes else {}
    out = getattr(require("lovasz.torch"), FUNCTIONS[loss])(x, torch.tensor(labels), **scenes, **options)
    out.sum().backward()
    return out.detach().double().numpy(), x.grad.double().numpy()


def run_jax(loss, pred, labels, sizes, options, dtype):
    jax = require("jax")
    jax.config.update("jax_enable_x64", True)  # (put back after the test by conftest)
    fn = getattr(require("lovasz.jax"), FUNCTIONS[loss])
    scene = np.repeat(np.arange(len(sizes)), sizes)
    extra = dict(segment_ids=scene, num_segments=len(sizes)) if sizes else {}
    extra.update({} if loss == "hinge" else {"axis": -1})
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}

    def total(x):
        out = fn(x, labels, **options, **extra)
        return out.sum(), out

    (_, out), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jax.numpy.asarray(pred, dtype))
    return np.asarray(out, np.float64), np.asarray(grad, np.float64)


def run_tf(loss, pred, labels, sizes, options, dtype):
    tf = require("tensorflow")
    fn = getattr(require("lovasz.tf"), FUNCTIONS[loss])
    x = tf.constant(pred, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        scenes = dict(row_splits=np.concatenate([[0], np.cumsum(sizes)])) if sizes else {}
        out = fn(x, tf.constant(labels), **scenes, **options)
        total = tf.reduce_sum(out)
    grad = tape.gradient(total, x, unconnected_gradients="zero")
    return out.numpy().astype(np.float64), grad.numpy().astype(np.float64)


BACKENDS = {"lovasz.jax": (run_jax, "float32", "float64"), "lovasz.tf": (run_tf, "float32", "float64")}


@pytest.mark.parametrize("seed", range(40))
def test_random_scenes_match_the_oracle_in_every_backend(seed):
    """With ``per_image=False`` the points are one set whatever their scenes: then once more without them
    (the call of Pointcept and mmdet3d)."""
    torch = require("torch")
    loss, pred, labels, sizes, options = draw(seed)
    if not options["per_image"] and (seed // 4) % 2:
        sizes = []  # (the oracle's one set)
    expected = oracle(loss, pred, labels, sizes, options)
    value, grad = run_torch(loss, pred, labels, sizes, options, torch.float64)
    np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-12)
    eps = 1e-6
    numeric = np.zeros_like(pred)
    for index in np.ndindex(pred.shape):
        up, down = pred.copy(), pred.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (
            np.sum(oracle(loss, up, labels, sizes, options)) - np.sum(oracle(loss, down, labels, sizes, options))
        ) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-5)
    value32, grad32 = run_torch(loss, pred, labels, sizes, options, torch.float32)
    np.testing.assert_allclose(value32, expected, rtol=2e-5, atol=2e-6)
    for module, (run, *dtypes) in BACKENDS.items():
        require(module)
        for dtype in dtypes:
            got, got_grad = run(loss, pred, labels, sizes, options, dtype)
            tight = dtype == "float64"
            np.testing.assert_allclose(got, expected, rtol=1e-9 if tight else 2e-5, atol=1e-12 if tight else 2e-6)
            # float32 against lovasz.torch's float32 where both see the same errors (the softmax inside each
            # framework may round probabilities that tie in one and not in the other)
            reference = grad if tight else grad32
            loose = not tight and loss == "softmax" and options["from_logits"]
            np.testing.assert_allclose(
                got_grad, reference, rtol=1e-8 if tight else 1e-4, atol=1e-10 if tight else (1e-3 if loose else 1e-5)
            )
