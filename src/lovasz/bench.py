"""Side-by-side benchmark of the Lovász losses: lovasz.torch, the original, kornia, a bare sort, TF and JAX.

Method: for each case, inputs are made from a fixed seed; each implementation runs
forward + backward once to warm up, then ``--repeats`` times, and the median is
reported. The floor is a bare ``torch.sort`` (descending, with indices) of a
float32 errors matrix of the same ``[rows, pixels]`` shape: the floor of an exact
method that sorts with ``torch.sort`` (lovasz.torch's CPU kernel sorts otherwise
and goes below it). Peak memory of the PyTorch losses is measured in a fresh process per
(case, implementation) as the rise of the resident set's high-water mark (Linux
``/proc``) during one forward + backward, with glibc's mmap threshold fixed so
that freed blocks go back to the system and the resident set follows what is live.
Ratios compare implementations timed in the same run.
lovasz.tf runs in ``tf.function`` (its C kernel), with XLA (``jit_compile``, its
sort of packed keys) and eagerly, on channels-last input, its default, against the original
TF file (``original tf``, in ``tf.function``, as its users call it); lovasz.jax
under ``jax.jit``. The Keras rows (``lovasz.keras jax``, ``lovasz.keras torch``) time the
lovasz.keras loss of the case under that backend, each backend in a process of its own (Keras fixes
its backend at import), their loss and gradient checked against lovasz.torch's; on the CPU they
run only when ``--impl`` names them. ``--impl`` picks the implementations to time.

With ``--device cuda`` the shapes are those of real training (Cityscapes, ADE20K,
a LiDAR range image, a CT volume, binary masks); steps are timed with CUDA
events, and peak memory is ``torch.cuda.max_memory_allocated`` during one step
over what was allocated before it. The row ``network`` is one training step of
a compact U-Net (``lovasz.demo.model``, cross-entropy) whose output has the
case's shape: what the rest of a step costs, next to the loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lovasz
import lovasz.torch as L
from lovasz.cli import integer, output_file, output_folder, torch_device
from lovasz.peers import load_original, load_original_tf


@dataclass
class Case:
    name: str
    shape: tuple
    # softmax | hinge | points (shape [S, C, N]: S point clouds of N points, points-first [S*N, C], offsets=)
    # | points-flat (the same points as one set, no offsets: Pointcept's and mmdet3d's call)
    kind: str
    per_image: bool
    classes: str = "present"
    kornia_same: bool = False  # kornia computes this exact quantity (per image, all classes, from logits)
    occupied: float = 1.0  # the fraction of pixels labelled; the others get the label `ignore`
    ignore: int | None = None
    probas: bool = False  # the caller passes probabilities (softmax taken before the loss), not logits

    @property
    def rows_pixels(self):
        batch, channels, spatial = self.shape[0], self.shape[1], self.shape[2:]
        pixels = 1
        for s in spatial:
            pixels *= s
        return (batch * channels, pixels) if self.per_image else (channels, batch * pixels)


# The shapes and calls of the codebases that use the loss most (LiDAR and 3-D): Cylinder3D and PolarSeg
# pass the softmax of a dense voxel grid, mostly empty and ignored (0, 255); SalsaNext the softmax of
# range images (ignore 0); Pointcept the logits of the points of a batch of scans as one set [N, C]
# (ignore -1); nnU-Net a 3-D patch. On the CPU the grids are scaled down.
LIDAR_CASES = [
    Case("Cylinder3D voxels 2%", (1, 20, 160, 120, 16), "softmax", False, occupied=0.02, ignore=0, probas=True),
    Case("PolarSeg voxels 7%", (1, 19, 160, 120, 16), "softmax", False, occupied=0.07, ignore=255, probas=True),
    Case("SalsaNext range image", (2, 20, 64, 2048), "softmax", False, occupied=0.85, ignore=0, probas=True),
    Case("Pointcept points [N, C]", (12, 19, 20_000), "points-flat", False, occupied=0.95, ignore=-1),
    Case("nnU-Net 3-D patch", (2, 3, 80, 80, 80), "softmax", per_image=False),
]
CASES = [
    Case("multiclass batch", (8, 19, 256, 256), "softmax", per_image=False),
    Case("multiclass per-image", (8, 19, 256, 256), "softmax", per_image=True, classes="all", kornia_same=True),
    Case("multiclass per-image", (4, 21, 128, 128), "softmax", per_image=True, classes="all", kornia_same=True),
    Case("binary hinge per-image", (16, 1, 256, 256), "hinge", per_image=True, kornia_same=True),
    Case("3-D volume batch", (2, 4, 64, 64, 64), "softmax", per_image=False),
    Case("LiDAR points per-scene", (4, 19, 120_000), "points", per_image=True),
    *LIDAR_CASES,
]
# On CUDA the codebases' own sizes, first: a device machine's time box may stop the run before the end.
CUDA_CASES = [
    Case("Cylinder3D voxels 2%", (2, 20, 480, 360, 32), "softmax", False, occupied=0.02, ignore=0, probas=True),
    Case("LiDAR points per-scene", (4, 19, 120_000), "points", per_image=True),
    Case("Pointcept points [N, C]", (12, 19, 100_000), "points-flat", False, occupied=0.95, ignore=-1),
    Case("SalsaNext range image", (24, 20, 64, 2048), "softmax", False, occupied=0.85, ignore=0, probas=True),
    Case("nnU-Net 3-D patch", (2, 3, 128, 128, 128), "softmax", per_image=False),
    Case("Cityscapes batch", (8, 19, 512, 1024), "softmax", per_image=False),
    Case("Cityscapes per-image", (8, 19, 512, 1024), "softmax", per_image=True),
    Case("ADE20K batch", (16, 150, 512, 512), "softmax", per_image=False),
    Case("LiDAR range image batch", (8, 20, 64, 2048), "softmax", per_image=False),
    Case("3-D volume batch", (2, 14, 128, 128, 128), "softmax", per_image=False),
    Case("binary hinge per-image", (32, 1, 512, 512), "hinge", per_image=True, kornia_same=True),
]
QUICK_CASES = [
    Case("multiclass batch", (2, 5, 32, 32), "softmax", per_image=False),
    Case("multiclass per-image", (2, 5, 32, 32), "softmax", per_image=True, classes="all", kornia_same=True),
    Case("binary hinge per-image", (2, 1, 32, 32), "hinge", per_image=True, kornia_same=True),
    Case("points per-scene", (3, 5, 500), "points", per_image=True),
    Case("voxels 5%", (2, 5, 16, 12, 8), "softmax", False, occupied=0.05, ignore=0, probas=True),
    Case("points [N, C]", (3, 5, 500), "points-flat", False, occupied=0.9, ignore=-1),
]
IMPLEMENTATIONS = (
    "lovasz",
    "lovasz dense",
    "original",
    "kornia",
    "sort floor",
    "lovasz.tf",
    "lovasz.tf xla",
    "lovasz.tf eager",
    "original tf",
    "lovasz.jax",
    "lovasz.keras jax",
    "lovasz.keras torch",
)
# The Keras losses under each backend. Keras fixes its backend at its import (KERAS_BACKEND), so each
# backend's rows are timed in a process of their own, all its cases in one (Keras' import takes seconds).
KERAS_BACKENDS = {"lovasz.keras jax": "jax", "lovasz.keras torch": "torch"}
# On the CPU the Keras rows come only with --impl: two more processes and the same kernels as lovasz.jax's
# and lovasz.torch's would add a minute to the default run for little news.
CPU_DEFAULT = tuple(impl for impl in IMPLEMENTATIONS if impl not in KERAS_BACKENDS)
CUDA_IMPLEMENTATIONS = (
    "lovasz",
    "lovasz dense",
    "original",
    "kornia",
    "sort floor",
    "lovasz.jax",
    "lovasz.keras jax",
    "lovasz.keras torch",
    "network",
)
# Peak memory is probed for the PyTorch losses: each probe is a fresh process, and TF's and
# JAX's would spend minutes compiling for a figure that no one compares.
MEMORY_PROBED = ("lovasz", "lovasz dense", "original", "kornia", "network", "lovasz.keras torch")


def cases(device: torch.device, quick: bool):
    return QUICK_CASES if quick else CUDA_CASES if device.type == "cuda" else CASES


def cases_by_name(device: torch.device) -> dict[str, Case]:
    """Every case that runs on ``device`` by its name (on the CPU the quick ones too), for the tools that take
    one by name."""
    return {case.name: case for case in (CUDA_CASES if device.type == "cuda" else CASES + QUICK_CASES)}


def implementations(device: torch.device):
    """What ``--impl`` may name on ``device``."""
    return CUDA_IMPLEMENTATIONS if device.type == "cuda" else IMPLEMENTATIONS


def default_implementations(device: torch.device):
    """What runs without ``--impl``."""
    return CUDA_IMPLEMENTATIONS if device.type == "cuda" else CPU_DEFAULT


def make_inputs(case: Case, device: torch.device = torch.device("cpu")):
    """Seeded logits and labels, drawn on the CPU (the same values on every device), then moved."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*case.shape, generator=g)
    high = 2 if case.kind == "hinge" else case.shape[1]
    labels = torch.randint(0, high, (case.shape[0], *case.shape[2:]), generator=g)
    if case.occupied < 1 and case.ignore is not None:
        labels[torch.rand(labels.shape, generator=g) >= case.occupied] = case.ignore
    if case.probas:
        logits = logits.softmax(1)
    return logits.to(device), labels.to(device)


def _original():
    """The original script's module (segmentation-models-pytorch 0.6.0's copy), or a clear error."""
    original = load_original()
    if original is None:
        raise ModuleNotFoundError("segmentation-models-pytorch==0.6.0 (pip install --no-deps)")
    return original


def _torch_step(start: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], tuple]:
    """Forward and backward of ``loss`` at a fresh leaf copy of ``start``, returning the loss and gradient
    (for the checks between rows; the timed steps drop them)."""

    def step():
        x = start.detach().requires_grad_()
        value = loss(x)
        value.backward()
        return value.detach(), x.grad

    return step


def step_function(case: Case, impl: str, device: torch.device = torch.device("cpu")) -> Callable[[], object] | None:
    """A forward + backward step of ``impl`` on ``case``, or None where ``impl`` does not apply."""
    if impl == "network":
        return _network_step(case, device) if not case.kind.startswith("points") else None
    if impl in KERAS_BACKENDS:
        return _keras_step(case, KERAS_BACKENDS[impl], device)
    logits, labels = make_inputs(case, device)
    if case.kind.startswith("points") and impl != "sort floor":
        return _points_step(case, impl, logits, labels)
    if impl in ("lovasz.jax", "original tf") or impl.startswith("lovasz.tf"):
        return _framework_step(case, impl, logits, labels)
    if impl == "sort floor":
        errors = torch.rand(*case.rows_pixels, generator=torch.Generator().manual_seed(1)).to(device)
        return lambda: torch.sort(errors, dim=1, descending=True)
    if impl == "lovasz dense" and not case.kind.startswith("points"):
        return None
    if impl == "lovasz":
        if case.kind == "hinge":
            loss = lambda x: L.lovasz_hinge(x[:, 0], labels, per_image=case.per_image)
        else:
            loss = lambda x: L.lovasz_softmax(
                x, labels, case.classes, case.per_image, case.ignore, from_logits=not case.probas
            )
    elif impl == "original":
        original = _original()
        if case.kind == "hinge":
            loss = lambda x: original._lovasz_hinge(x[:, 0], labels, per_image=case.per_image)
        else:
            probas = (lambda x: x) if case.probas else (lambda x: x.softmax(1))
            loss = lambda x: original._lovasz_softmax(probas(x), labels, case.classes, case.per_image, case.ignore)
    elif impl == "kornia":
        if not case.kornia_same:
            return None
        import kornia.losses as K

        if case.kind == "hinge":
            loss = lambda x: K.lovasz_hinge_loss(x, labels)
        else:
            loss = lambda x: K.lovasz_softmax_loss(x, labels)
    else:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {impl!r}")

    return _torch_step(logits, loss)


def _points_step(case: Case, impl: str, logits, labels) -> Callable[[], object] | None:
    """Point clouds: ``S`` scenes of ``N`` points, points-first ``[S*N, C]`` with ``offsets``.

    ``lovasz dense`` is the per-image loss of the same numbers laid out ``[S, C, N]``: the dense
    case of the same size. ``original`` loops over the scenes in Python, as its users must.
    ``points-flat``: all points one set, no offsets; its ``lovasz dense`` is one scene, ``offsets=[S*N]``.
    """
    scenes, channels, points = case.shape
    flat = logits.transpose(1, 2).reshape(scenes * points, channels).contiguous()
    flat_labels = labels.reshape(-1)
    offsets = torch.arange(1, scenes + 1, device=logits.device) * points
    if impl in ("lovasz.jax", "original tf") or impl.startswith("lovasz.tf"):  # points-flat: [N, C], one set
        splits = np.arange(scenes + 1) * points if case.kind == "points" else None
        return _framework_step(case, impl, flat, flat_labels, splits)
    if case.kind == "points-flat":
        return _flat_points_step(case, impl, flat, flat_labels)
    if impl == "lovasz":
        loss = lambda x: L.lovasz_softmax(x, flat_labels, per_image=True, from_logits=True, offsets=offsets)
    elif impl == "lovasz dense":
        flat = logits
        loss = lambda x: L.lovasz_softmax(x, labels, per_image=True, from_logits=True)
    elif impl == "original":
        original = _original()
        runs = [slice(s * points, (s + 1) * points) for s in range(scenes)]
        loss = lambda x: sum(original._lovasz_softmax_flat(x[r].softmax(1), flat_labels[r]) for r in runs) / scenes
    else:
        return None

    return _torch_step(flat, loss)


def _flat_points_step(case: Case, impl: str, flat, labels) -> Callable[[], object] | None:
    """Points ``[N, C]`` of a batch of scans as one set (Pointcept, mmdet3d): ``lovasz`` as they call it,
    ``lovasz dense`` the same points as one scene (``offsets=[N]``), ``original`` on the valid points,
    as Pointcept's copy of it masks them."""
    from_logits = not case.probas
    if impl == "lovasz":
        loss = lambda x: L.lovasz_softmax(x, labels, ignore=case.ignore, from_logits=from_logits)
    elif impl == "lovasz dense":
        offsets = torch.full((1,), flat.shape[0], device=flat.device)
        loss = lambda x: L.lovasz_softmax(
            x, labels, per_image=True, ignore=case.ignore, from_logits=from_logits, offsets=offsets
        )
    elif impl == "original":
        original = _original()
        valid = labels != case.ignore
        probas = (lambda x: x) if case.probas else (lambda x: x.softmax(1))
        loss = lambda x: original._lovasz_softmax_flat(probas(x)[valid], labels[valid])
    else:
        return None

    return _torch_step(flat, loss)


def _network_step(case: Case, device: torch.device) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward) of a compact U-Net with the case's output shape."""
    from lovasz.demo.model import UNet

    spatial = case.shape[2:]
    net = UNet(in_channels=3, num_classes=case.shape[1], dims=len(spatial)).to(device)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(case.shape[0], 3, *spatial, generator=g).to(device)
    _, labels = make_inputs(case, device)
    ce = torch.nn.BCEWithLogitsLoss() if case.kind == "hinge" else torch.nn.CrossEntropyLoss()
    target = labels.unsqueeze(1).float() if case.kind == "hinge" else labels

    def step():
        net.zero_grad(set_to_none=True)
        ce(net(images), target).backward()

    return step


def _framework_step(case: Case, impl: str, logits, labels, row_splits=None) -> Callable[[], tuple]:
    """The step of ``lovasz.jax``, ``lovasz.tf`` (in the mode the name gives) or the original TF file on host
    copies of the inputs; with ``row_splits``, the points ``[N, C]`` of the case's scenes."""
    logits, labels = logits.cpu().numpy(), labels.cpu().numpy()
    if impl == "lovasz.jax":
        return _jax_step(case, logits, labels, row_splits)
    if impl == "original tf":
        return _original_tf_step(case, logits, labels, row_splits)
    return _tf_step(case, logits, labels, impl.split()[1] if " " in impl else "function", row_splits)


def _tf_step(case: Case, logits, labels, mode: str, row_splits=None) -> Callable[[], tuple]:
    """lovasz.tf's forward + backward in ``mode``: ``function`` (tf.function), ``xla`` (jit_compile) or ``eager``.
    With ``row_splits``, ``logits`` are the points ``[N, C]`` of the case's scenes, a set each."""
    import tensorflow as tf

    import lovasz.tf as T

    if row_splits is not None:
        x, splits = tf.constant(logits), tf.constant(row_splits, tf.int64)
        loss = lambda x, y: T.lovasz_softmax(  # noqa: E731
            x,
            y,
            per_image=True,
            ignore=case.ignore,
            from_logits=not case.probas,
            row_splits=splits,
        )
    elif case.kind == "hinge":
        x, loss = tf.constant(logits[:, 0]), lambda x, y: T.lovasz_hinge(x, y, per_image=case.per_image)
    else:
        x = tf.constant(logits.transpose(0, *range(2, logits.ndim), 1))  # channels-last, lovasz.tf's default
        loss = lambda x, y: T.lovasz_softmax(  # noqa: E731
            x, y, case.classes, case.per_image, case.ignore, from_logits=not case.probas
        )
    return _tf_value_and_grad(loss, x, tf.constant(labels), mode)


def _original_tf_step(case: Case, logits, labels, row_splits=None) -> Callable[[], tuple]:
    """The original ``lovasz_losses_tf.py`` in ``tf.function``, called as its users must: its softmax over a
    channels-last ``[B, H, W, C]`` (a volume's depth folded into ``H``: the file knows 2-D images only), a
    Python loop over the scenes of points, the valid points of one set masked first."""
    import tensorflow as tf

    original = load_original_tf()

    def probas(x):
        return x if case.probas else tf.nn.softmax(x, axis=-1)

    if case.kind.startswith("points"):
        x = tf.constant(logits)
        if row_splits is not None:
            runs = list(zip(row_splits[:-1].tolist(), row_splits[1:].tolist()))

            def loss(x, y):  # the mean of the scenes' losses, one call each
                return tf.add_n([original.lovasz_softmax_flat(probas(x[a:b]), y[a:b]) for a, b in runs]) / len(runs)

        else:
            valid = labels != case.ignore
            loss = lambda x, y: original.lovasz_softmax_flat(probas(x[valid]), y[valid])  # noqa: E731
    elif case.kind == "hinge":
        x = tf.constant(logits[:, 0])
        loss = lambda x, y: original.lovasz_hinge(x, y, per_image=case.per_image)  # noqa: E731
    else:
        images, channels, *spatial = logits.shape
        x = tf.constant(logits.transpose(0, *range(2, logits.ndim), 1).reshape(images, -1, spatial[-1], channels))
        labels = labels.reshape(images, -1, spatial[-1])
        loss = lambda x, y: original.lovasz_softmax(  # noqa: E731
            probas(x), y, case.classes, case.per_image, case.ignore
        )
    return _tf_value_and_grad(loss, x, tf.constant(labels), "function")


def _tf_value_and_grad(loss: Callable, x, y, mode: str) -> Callable[[], tuple]:
    """The step of TF's ``loss(x, y)`` and its gradient in ``x``, eagerly or in ``tf.function`` (``mode``
    ``xla``: with ``jit_compile``), returning both."""
    import tensorflow as tf

    def value_and_grad(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x, y)
        return value, tape.gradient(value, x)

    if mode != "eager":
        value_and_grad = tf.function(value_and_grad, jit_compile=mode == "xla")

    def step() -> tuple:
        # the loss on the host (the call has ended), the gradient as TF holds it: .numpy() copies it, a copy
        # no training step makes (1.5-3 ms of a [1, 307200, 20] grid's gradient, 25 MB, in both TF rows)
        value, grad = value_and_grad(x, y)
        return value.numpy(), grad

    return step


def _jax_step(case: Case, logits, labels, row_splits=None) -> Callable[[], tuple]:
    """lovasz.jax's forward + backward under ``jax.jit``; with ``row_splits``, ``logits`` are the points
    ``[N, C]`` of the case's scenes, a set each, passed as ``segment_ids=``."""
    import jax

    import lovasz.jax as J

    args: tuple = (jax.numpy.asarray(logits[:, 0] if case.kind == "hinge" else logits), jax.numpy.asarray(labels))
    if row_splits is not None:
        args += (jax.numpy.asarray(np.repeat(np.arange(len(row_splits) - 1), np.diff(row_splits))),)
        loss = lambda x, y, ids: J.lovasz_softmax(  # noqa: E731
            x,
            y,
            per_image=True,
            ignore=case.ignore,
            from_logits=not case.probas,
            segment_ids=ids,
            num_segments=len(row_splits) - 1,
        )
    elif case.kind == "hinge":
        loss = lambda x, y: J.lovasz_hinge(x, y, per_image=case.per_image)  # noqa: E731
    else:
        loss = lambda x, y: J.lovasz_softmax(  # noqa: E731
            x, y, case.classes, case.per_image, case.ignore, from_logits=not case.probas
        )
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(value_and_grad(*args))  # the loss and gradient


def _keras_inputs(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The case's ``(y_pred, y_true)`` as a Keras user passes them: channels-first images (the loss is told
    so, no transpose); point clouds points-first ``[S*N, C]`` with each point's (label, scene) in ``y_true``."""
    logits, labels = make_inputs(case)
    if not case.kind.startswith("points"):
        return logits.numpy(), labels.numpy()
    scenes, channels, points = case.shape
    flat = logits.transpose(1, 2).reshape(scenes * points, channels)
    scene = torch.arange(scenes).repeat_interleave(points)
    return flat.numpy(), torch.stack([labels.reshape(-1), scene], 1).numpy()


def _keras_loss(case: Case) -> Any:
    """The lovasz.keras loss of ``case``: the options lovasz.torch gets in the row ``lovasz``."""
    from lovasz.keras import LovaszHingeLoss, LovaszSoftmaxLoss

    if case.kind == "hinge":
        return LovaszHingeLoss(per_image=case.per_image, ignore_class=case.ignore, data_format="channels_first")
    options: dict[str, Any] = dict(
        from_logits=not case.probas, per_image=case.per_image, classes=case.classes, ignore_class=case.ignore
    )
    if case.kind == "points":
        return LovaszSoftmaxLoss(**options, scenes_in_labels=True, num_scenes=case.shape[0])
    if case.kind == "points-flat":  # all points one set: the scene column is there, per_image is off
        return LovaszSoftmaxLoss(**options, scenes_in_labels=True)
    return LovaszSoftmaxLoss(**options, data_format="channels_first")


def _keras_step(case: Case, backend: str, device: torch.device) -> Callable[[], object]:
    """The Keras loss's forward + backward on ``backend``: under ``jax.jit`` for JAX, ``.backward()`` for torch.

    Keras must have been imported with ``KERAS_BACKEND=backend``: the step runs in a process of its own."""
    import keras

    if keras.backend.backend() != backend:
        raise RuntimeError(
            f"the Keras rows of {backend} need KERAS_BACKEND={backend} before Keras is imported; "
            f"this process's Keras runs on {keras.backend.backend()!r}"
        )
    loss = _keras_loss(case)
    y_pred, y_true = _keras_inputs(case)
    if backend == "jax":
        import jax

        x, y = jax.device_put(y_pred), jax.device_put(y_true)
        value_and_grad = jax.jit(jax.value_and_grad(lambda x, y: loss(y, x)))
        return lambda: jax.block_until_ready(value_and_grad(x, y))
    start, y = torch.from_numpy(y_pred).to(device), torch.from_numpy(y_true).to(device)

    return _torch_step(start, lambda x: loss(y, x))


def _norm(grad: Any) -> float:
    """The L2 norm of a torch or JAX gradient, taken where it is (a GPU's gradient is not copied out)."""
    if isinstance(grad, torch.Tensor):
        return float(torch.linalg.vector_norm(grad))
    import jax.numpy as jnp

    return float(jnp.linalg.norm(grad))


def torch_reference(case: Case, device: torch.device) -> tuple[float, float]:
    """lovasz.torch's loss on ``case`` and its gradient's norm (the row ``lovasz``): what Keras must give."""
    step = step_function(case, "lovasz", device)
    assert step is not None  # the row lovasz applies to every case
    return _loss_and_norm(step)


def _loss_and_norm(step: Callable[[], Any]) -> tuple[float, float]:
    """The loss and gradient norm of one more step (the steps of lovasz and of Keras return both)."""
    value, grad = step()
    return float(value), _norm(grad)


def _disagreement(result: dict[str, Any], reference: tuple[float, float]) -> str | None:
    """How a Keras row's loss and gradient norm differ from lovasz.torch's, or None where they agree (float32:
    the backends sum in other orders, more so for the gradient's norm over millions of pixels)."""
    value, norm = reference
    if math.isclose(result["value"], value, rel_tol=1e-4, abs_tol=1e-6) and math.isclose(
        result["grad_norm"], norm, rel_tol=1e-3, abs_tol=1e-6
    ):
        return None
    return (
        f"loss {result['value']:.7g} and gradient norm {result['grad_norm']:.7g} against "
        f"lovasz's {value:.7g} and {norm:.7g}"
    )


def _failure(error: Exception) -> str:
    message = str(error).splitlines() or [""]
    return f"failed: {type(error).__name__}: {message[0][:100]}"


def _keras_case(case: Case, backend: str, repeats: int, memory: bool, device: torch.device) -> dict[str, Any]:
    """One case in the Keras process: its median time, peak memory (torch on CUDA, as the other torch rows;
    on the CPU the parent probes it), and the loss and gradient norm of one more step; or a note."""
    try:
        step = _keras_step(case, backend, device)
        result: dict[str, Any] = {"seconds": time_step(step, repeats, device)}
        if memory and backend == "torch" and device.type == "cuda":
            result["peak_bytes"] = peak_memory_cuda(step, device)
        result["value"], result["grad_norm"] = _loss_and_norm(step)
        return result
    except Exception as error:  # out of memory, say: reported in the row, the other cases still run
        return {"note": _failure(error)}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def keras_worker(
    backend: str, indices: Sequence[int], quick: bool, repeats: int, memory: bool, device: torch.device
) -> dict[str, Any]:
    """The body of a Keras process (``--keras-worker``): ``{"cases": {index: result}}``, or
    ``{"missing": why}`` where Keras or its backend is not installed."""
    try:
        import keras  # noqa: F401  (with the parent's KERAS_BACKEND; a missing backend fails here too)

        import lovasz.keras  # noqa: F401
    except ImportError as error:
        return {"missing": str(error)}
    every = cases(device, quick)
    return {"cases": {str(i): _keras_case(every[i], backend, repeats, memory, device) for i in indices}}


def _keras_env(backend: str, device: torch.device) -> dict[str, str]:
    """The environment of a process running Keras on ``backend``, with its tensors on ``device``."""
    env = {"KERAS_BACKEND": backend, "PYTHONWARNINGS": "ignore"}
    if backend == "torch":
        env["KERAS_TORCH_DEVICE"] = str(device)  # Keras moves torch tensors to its device: keep them on ours
    elif device.type == "cpu":
        env["JAX_PLATFORMS"] = "cpu"  # JAX would take a GPU where there is one
    return env


def keras_results(
    impl: str, indices: Sequence[int], quick: bool, repeats: int, memory: bool, device: torch.device
) -> dict[str, Any]:
    """Time ``impl``'s cases ``indices`` in a process of its Keras backend; its answer (see keras_worker),
    or ``{"failed": why}`` where that process died."""
    backend = KERAS_BACKENDS[impl]
    cmd = [sys.executable, "-m", "lovasz.bench", "--keras-worker", backend, ",".join(map(str, indices))]
    cmd += ["--device", str(device), "--repeats", str(repeats)] + ["--quick"] * quick + ["--no-memory"] * (not memory)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **_keras_env(backend, device)})
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"failed": f"failed: the {impl} process exited with {out.returncode}: {last[:100]}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:  # something else printed after the answer: the row says so, the run goes on
        return {"failed": f"failed: the {impl} process ended its output with {lines[-1][:100]!r}"}


def time_step(step: Callable[[], object], repeats: int, device: torch.device = torch.device("cpu")) -> float:
    """Median seconds of ``repeats`` steps after a warm-up; on CUDA timed with events around each step."""
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_cuda(step: Callable[[], object], device: torch.device) -> int:
    """Rise of ``torch.cuda.max_memory_allocated`` (bytes) during one step, after a first one."""
    step()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def peak_memory_here(case: Case, impl: str) -> int | None:
    """Rise of peak RSS (bytes) during one step, measured in this process (call in a fresh one)."""
    step = step_function(case, impl)
    if step is None:
        return None
    step()  # first call allocates lazily-initialised state; measure the second
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024


# glibc keeps freed blocks under its (self-raising) mmap threshold for reuse, so a second
# step could reuse the first one's memory unseen: with a fixed low threshold every large
# block is mapped on allocation and unmapped on free, and the resident set follows what is live.
_PROBE_ENV = {
    "PYTHONWARNINGS": "ignore",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 16),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 16),
}


def peak_memory(case_index: int, impl: str, quick: bool) -> int | None:
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, "-m", "lovasz.bench", "--memory-probe", str(case_index), impl] + (
        ["--quick"] if quick else []
    )
    keras = _keras_env(KERAS_BACKENDS[impl], torch.device("cpu")) if impl in KERAS_BACKENDS else {}
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **_PROBE_ENV, **keras})
    if out.returncode != 0:
        return None
    value = out.stdout.strip().splitlines()[-1]
    return None if value == "None" else int(value)


def machine(device: torch.device = torch.device("cpu")) -> dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lovasz": lovasz.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


@dataclass
class Row:
    case: str
    shape: tuple
    impl: str
    seconds: float | None = None
    peak_bytes: int | None = None
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)


def run(
    repeats: int,
    quick: bool,
    memory: bool,
    progress: Callable[[str], None] = print,
    device: torch.device = torch.device("cpu"),
    impls: Sequence[str] | None = None,
    case_names: Sequence[str] | None = None,
    case_done: Callable[[list[Row]], None] = lambda rows: None,
):
    """Time the selected cases; ``case_done`` gets the rows so far after each case, so that a run stopped
    by a time box (the device machine's) keeps what it measured."""
    rows = []
    selected = [
        (index, case)
        for index, case in enumerate(cases(device, quick))
        if not case_names or any(name in case.name for name in case_names)
    ]
    keras: dict[str, dict[str, Any]] = {}  # each Keras row's answer for every selected case, from one process
    for index, case in selected:
        measured = {}
        for impl in impls or default_implementations(device):
            if impl == "lovasz dense" and not case.kind.startswith("points"):
                continue  # the dense twin of a point-cloud case only
            row = Row(case.name, case.shape, impl)
            if impl in KERAS_BACKENDS:
                if impl not in keras:
                    progress(f"  {impl}: {len(selected)} cases in a process of Keras' {KERAS_BACKENDS[impl]} backend")
                    indices = [i for i, _ in selected]
                    keras[impl] = keras_results(impl, indices, quick, repeats, memory, device)
                if _fill_keras_row(row, keras[impl], index, case, device, memory, quick):
                    measured[impl] = row
                rows.append(row)
                continue
            progress(f"  {case.name} {list(case.shape)}: {impl}")
            try:
                step = step_function(case, impl, device)
            except ModuleNotFoundError as error:
                row.note = f"missing: {error}"
                rows.append(row)
                continue
            if step is None:
                row.note = "computes another quantity"
                rows.append(row)
                continue
            try:
                row.seconds = time_step(step, repeats, device)
                if memory and impl in MEMORY_PROBED:
                    row.peak_bytes = (
                        peak_memory_cuda(step, device) if device.type == "cuda" else peak_memory(index, impl, quick)
                    )
            except Exception as error:  # a peer that fails (out of memory, say) is reported, not fatal
                if impl == "lovasz":
                    raise
                row.seconds, row.note = None, _failure(error)
                rows.append(row)
                continue
            finally:
                del step  # frees the case's inputs before the next implementation's
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            measured[impl] = row
            rows.append(row)
        ours = measured.get("lovasz")
        if ours is not None and ours.seconds is not None:
            for impl, row in measured.items():
                if impl != "lovasz" and row.seconds is not None:  # measured rows have their seconds
                    ours.ratios[impl] = row.seconds / ours.seconds
        ours_tf, original_tf = measured.get("lovasz.tf"), measured.get("original tf")
        if ours_tf is not None and ours_tf.seconds and original_tf is not None and original_tf.seconds is not None:
            ours_tf.ratios["original tf"] = original_tf.seconds / ours_tf.seconds
        original = measured.get("original")
        for impl in KERAS_BACKENDS:
            row = measured.get(impl)
            if row is not None and row.seconds and original is not None and original.seconds is not None:
                row.ratios["original"] = original.seconds / row.seconds
        case_done(rows)
    return rows


def _fill_keras_row(
    row: Row, answer: dict[str, Any], index: int, case: Case, device: torch.device, memory: bool, quick: bool
) -> bool:
    """``row`` from its Keras process's ``answer`` for case ``index``, its loss and gradient checked against
    lovasz.torch's (a row that differs keeps its time in the note, out of the tables); whether it was measured."""
    if "missing" in answer:
        row.note = f"missing: {answer['missing']}"
        return False
    result = answer["cases"][str(index)] if "cases" in answer else {"note": answer["failed"]}
    if "note" in result:
        row.note = result["note"]
        return False
    difference = _disagreement(result, torch_reference(case, device))
    if difference is not None:
        row.note = f"failed: {difference} (in {result['seconds'] * 1e3:.1f} ms)"
        return False
    row.seconds, row.peak_bytes = result["seconds"], result.get("peak_bytes")
    if memory and device.type == "cpu" and row.impl in MEMORY_PROBED:
        row.peak_bytes = peak_memory(index, row.impl, quick)
    return True


def _ratio_text(peer: str, ratio: float) -> str:
    """``ratio`` is the peer's time over ours."""
    if peer == "sort floor":
        return f"{1 / ratio:.2f}x the sort floor"
    if peer == "network":
        return f"{100 / (1 + ratio):.0f}% of a U-Net step + loss"
    return f"{ratio:.2f}x faster than {peer}" if ratio >= 1 else f"{1 / ratio:.2f}x slower than {peer}"


def _ms(seconds: float) -> str:
    """Milliseconds to 3 significant figures below 10 ms (one decimal above): the ratios shown beside them must
    be checkable from them (0.6 and a floor of 0.0 ms gave 17x)."""
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}"


def render(rows) -> str:
    header = f"{'case':<24} {'shape':<20} {'impl':<18} {'median ms':>10} {'peak MiB':>9}  notes"
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = f"{_ms(r.seconds):>10}" if r.seconds is not None else f"{'-':>10}"
        mib = f"{r.peak_bytes / 2**20:9.0f}" if r.peak_bytes is not None else f"{'-':>9}"
        note = r.note
        if r.ratios:
            note = ", ".join(_ratio_text(k, v) for k, v in r.ratios.items())
        lines.append(f"{r.case:<24} {str(list(r.shape)):<20} {r.impl:<18} {ms} {mib}  {note}")
    return "\n".join(lines)


_MARKDOWN_COLUMNS = (
    "lovasz",
    "original",
    "lovasz dense",
    "kornia",
    "sort floor",
    "lovasz.jax",
    "lovasz.keras jax",
    "lovasz.keras torch",
    "lovasz.tf",
    "original tf",
    "network",
)


def markdown(rows, info: dict[str, object], commit: str, cases_left: int = 0) -> str:
    """A table of the run: a line per case, a column per implementation measured (ms, median), the ratios
    against the original and the sort floor, and the peak memory of ours and the original's; with
    ``cases_left``, a run that stopped before them says so."""
    cases: dict[tuple[str, tuple], dict[str, Row]] = {}  # by name and shape: two cases may share a name
    for r in rows:
        cases.setdefault((r.case, tuple(r.shape)), {})[r.impl] = r
    impls = [i for i in _MARKDOWN_COLUMNS if any(i in by_impl for by_impl in cases.values())]
    header = ["case", "shape", *(f"{i} ms" for i in impls), "vs original", "/ floor", "peak MiB (ours / original)"]
    lines = [
        f"Measured on {info.get('gpu') or info.get('cpu')} ({info.get('device')}, torch {info.get('torch')}), "
        f"commit {commit}, every figure from this one run."
        + (f" **Partial: the run stopped with {cases_left} case(s) left.**" if cases_left else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 2 + "---:|" * (len(header) - 2),
    ]
    for (case, shape), by_impl in cases.items():
        cells = [case, "×".join(str(d) for d in shape)]
        for impl in impls:
            row = by_impl.get(impl)
            cells.append(_ms(row.seconds) if row is not None and row.seconds is not None else "n/a")
        ours = by_impl.get("lovasz")
        ratios = ours.ratios if ours is not None else {}
        cells.append(f"{ratios['original']:.2f}x" if "original" in ratios else "n/a")
        cells.append(f"{1 / ratios['sort floor']:.2f}" if ratios.get("sort floor") else "n/a")
        peaks = [by_impl.get(i) for i in ("lovasz", "original")]
        shown = (f"{p.peak_bytes / 2**20:.0f}" if p and p.peak_bytes is not None else "-" for p in peaks)  # 0 too
        cells.append(" / ".join(shown))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _case_indices(
    parser: argparse.ArgumentParser, option: str, text: str, names: Sequence[str], several: bool = True
) -> list[int]:
    """The case indices ``text`` names, comma-separated where ``several`` (the worker options the parent
    passes), or argparse's error naming ``option``."""
    parts = text.split(",") if several else [text]
    if not all(p.isdigit() and int(p) < len(names) for p in parts):
        what = "case indices, comma-separated," if several else "a case index"
        parser.error(f"{option} must be {what} below {len(names)}; got {text!r}")
    return [int(p) for p in parts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lovasz bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats",
        type=integer(1),
        default=None,
        help="timed runs per implementation, median reported (default: 5 on CPU, 20 on CUDA)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cpu",
        help="torch device to run on, e.g. cpu or cuda (default: cpu); cuda uses training-size shapes",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test (default: off)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (default: measured)")
    parser.add_argument(
        "--out",
        type=output_folder,
        default=Path("bench-output"),
        help="folder for results.json (default: bench-output)",
    )
    parser.add_argument(
        "--impl",
        action="append",
        metavar="NAME",
        help="time only this implementation; repeat for several; ratios need lovasz "
        f"(default: on CPU {', '.join(CPU_DEFAULT)}, and with --impl {', '.join(KERAS_BACKENDS)}; "
        f"on CUDA {', '.join(CUDA_IMPLEMENTATIONS)})",
    )
    parser.add_argument(
        "--case",
        action="append",
        metavar="NAME",
        help="time only the cases whose name contains NAME (e.g. 'points'); repeat for several (default: all)",
    )
    parser.add_argument(
        "--markdown",
        type=output_file,
        default=None,
        help="also write a markdown table of the run (a line per case, a column per implementation; "
        "the README's tables are cut from it) to this file (default: none)",
    )
    parser.add_argument(
        "--commit",
        default="unknown",
        help="the commit measured, named in the JSON and the markdown table (default: unknown)",
    )
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--keras-worker", nargs=2, metavar=("BACKEND", "CASES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = args.device
    args.impl = None if args.impl is None else list(dict.fromkeys(args.impl))  # once each, as given
    for impl in args.impl or ():
        if impl not in implementations(device):
            parser.error(f"--impl must be one of {', '.join(implementations(device))} on {device.type}; got {impl!r}")
    names = [case.name for case in cases(device, args.quick)]
    for wanted in args.case or ():
        if not any(wanted in name for name in names):
            parser.error(f"--case must match one of the cases on {device.type}: {', '.join(names)}; got {wanted!r}")
    repeats = args.repeats if args.repeats is not None else 20 if device.type == "cuda" else 5
    if args.memory_probe:
        index, impl = args.memory_probe
        if impl not in implementations(device):
            parser.error(f"--memory-probe IMPL must be one of {', '.join(implementations(device))}; got {impl!r}")
        (case_index,) = _case_indices(parser, "--memory-probe CASE", index, names, several=False)
        print(peak_memory_here(cases(device, args.quick)[case_index], impl))
        return 0
    if args.keras_worker:
        backend, indices = args.keras_worker
        if backend not in KERAS_BACKENDS.values():
            parser.error(f"--keras-worker BACKEND must be one of {', '.join(KERAS_BACKENDS.values())}; got {backend!r}")
        indices = _case_indices(parser, "--keras-worker CASES", indices, names)
        print(json.dumps(keras_worker(backend, indices, args.quick, repeats, not args.no_memory, device)))
        return 0
    # JAX takes most of a GPU's memory at its first use unless told otherwise, leaving torch too little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    print(f"lovasz bench: forward + backward, float32, {device}, median of {repeats} after a warm-up")
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine(device)

    selected = [n for n in names if not args.case or any(wanted in n for wanted in args.case)]

    def write(rows: list[Row], complete: bool = False) -> None:
        """After each case (what a stopped run measured stays), marked complete at the end only."""
        cases_left = 0 if complete else len(selected) - len({(r.case, tuple(r.shape)) for r in rows})
        result = {
            "machine": info,
            "commit": args.commit,
            "repeats": repeats,
            "complete": complete,
            "rows": [{**r.__dict__, "shape": list(r.shape)} for r in rows],
        }
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        if args.markdown is not None:
            args.markdown.write_text(markdown(rows, info, args.commit, cases_left))

    rows = run(
        repeats, args.quick, not args.no_memory, device=device, impls=args.impl, case_names=args.case, case_done=write
    )
    write(rows, complete=True)
    print(render(rows))
    print(f"wrote {args.out / 'results.json'}" + (f" and {args.markdown}" if args.markdown is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
