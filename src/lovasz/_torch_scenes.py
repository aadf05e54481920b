"""Points-first inputs of several scenes (point clouds) for lovasz.torch: ``batch=`` / ``offsets=``.

A batch of point clouds is ``N`` points of ``S`` scenes: predictions ``[N, C]`` (``[N]`` for
the hinge), labels ``[N]`` (``[N, C]`` for multi-label), and the scenes marked either by
``offsets`` (Pointcept: the cumulative point counts, ``[S]``, the last one ``N``) or by
``batch`` (torch_geometric: each point's scene index, ``[N]``). Both become the scenes'
``ends [S]`` over points ordered by scene, and the inputs the dense layout with one "image"
of ``N`` pixels, which the op splits into runs, one per scene.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lovasz import _validation as V


class Scenes(NamedTuple):
    prediction: Tensor  # [1, C, N] ([1, N] for one channel), points ordered by scene
    labels: Tensor  # [1, N] ([1, C, N] for multi-label)
    ends: Tensor  # [S] int64: scene s is the run [ends[s - 1], ends[s]) of points


def _index_tensor(value, name: str, device: torch.device) -> Tensor:
    if isinstance(value, (list, tuple)):
        value = torch.tensor(value, dtype=torch.int64, device=device)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a 1-D integer tensor (or a list of ints); got {type(value).__name__}")
    if value.ndim != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a 1-D integer tensor; got shape {tuple(value.shape)}, dtype {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} must be on the device of the prediction ({device}); got {value.device}")
    return value.to(torch.int64)


def _check(ok: Tensor, message: str, found) -> None:
    """Raise where the check can be made at once (eager CPU); queue it on an accelerator (no host
    sync); skip it under torch.compile, which could only raise with the data on the host."""
    if torch.compiler.is_compiling():
        return
    if ok.device.type != "cpu":
        torch._assert_async(ok, message)
    elif not ok:
        raise ValueError(f"{message}; got {found()}")


def scenes(
    prediction: Tensor,
    labels: Tensor,
    batch,
    offsets,
    num_scenes: int | None,
    multilabel: bool,
    names: tuple[str, str],
) -> Scenes:
    """Check points-first inputs and their scenes; the dense layout and the scenes' ends."""
    if (batch is None) == (offsets is None):
        raise TypeError("pass the scenes as batch= (a scene index per point) or offsets= (cumulative counts), not both")
    if not isinstance(prediction, Tensor) or not isinstance(labels, Tensor):
        return Scenes(prediction, labels, torch.zeros(0))  # the callers' own checks name what is wrong
    V.points_layout(prediction.shape, labels.shape, multilabel, names, "with batch=/offsets=")
    num_points = prediction.shape[0]
    if offsets is not None:
        if num_scenes is not None:
            raise TypeError("num_scenes goes with batch=; offsets= give the number of scenes already")
        ends = _index_tensor(offsets, "offsets", prediction.device)
        ok = torch.all(ends[1:] >= ends[:-1]) & torch.all(ends >= 0)
        ok &= (ends[-1] == num_points) if ends.numel() else torch.tensor(num_points == 0, device=ends.device)
        _check(ok, f"offsets must be cumulative point counts, rising to {num_points}", lambda: ends.tolist())
    else:
        scene = _index_tensor(batch, "batch", prediction.device)
        if scene.shape[0] != num_points:
            raise ValueError(f"batch must give one scene per point, shape [{num_points}]; got {list(scene.shape)}")
        if num_scenes is None:  # the one host sync of this path: pass num_scenes to avoid it
            if torch.compiler.is_compiling():
                raise TypeError("under torch.compile, batch= needs num_scenes= (the number of scenes, an int)")
            num_scenes = int(scene.max()) + 1 if num_points else 0
        if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < 0:
            raise TypeError(f"num_scenes must be a non-negative int; got {num_scenes!r}")
        ok = torch.all((scene >= 0) & (scene < num_scenes))
        _check(ok, f"batch must hold scene indices in [0, {num_scenes - 1}]", lambda: scene.unique().tolist())
        # Points in scene order stay where they are (checked on the CPU only: elsewhere a host sync).
        in_order = scene.device.type == "cpu" and not torch.compiler.is_compiling()
        if not (in_order and bool(torch.all(scene[1:] >= scene[:-1]))):
            order = torch.sort(scene, stable=True)  # points grouped by scene; the loss doesn't see the order
            scene, prediction, labels = order.values, prediction[order.indices], labels[order.indices]
        ends = torch.searchsorted(scene, torch.arange(num_scenes, device=scene.device), right=True)
    if multilabel or prediction.ndim == 2:
        # [1, C, N]: on the CPU a view of the points, which the C kernel reads where they lie; on an
        # accelerator a copy, whose class rows are contiguous for the sort
        prediction = prediction.T.unsqueeze(0)
        prediction = prediction if prediction.device.type == "cpu" else prediction.contiguous()
    else:
        prediction = prediction.unsqueeze(0)
    labels = labels.T.unsqueeze(0) if multilabel else labels.unsqueeze(0)
    return Scenes(prediction, labels, ends)
