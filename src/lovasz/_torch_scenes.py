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

import numpy as np
import torch
from torch import Tensor

from lovasz import _ckernel as C
from lovasz import _torch_core as T
from lovasz import _validation as V


class Scenes(NamedTuple):
    prediction: Tensor  # [1, C, N] ([1, N] for one channel), points ordered by scene if grouped
    labels: Tensor  # [1, N] ([1, C, N] for multi-label)
    ends: Tensor | None  # [S] int64: scene s is the run [ends[s - 1], ends[s]) of points; None if not grouped


def _index_tensor(value, name: str, device: torch.device) -> Tensor:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):  # (4.9: not 4)
            raise TypeError(f"{name} must be a 1-D integer tensor or a list of ints; got {list(value)!r:.200}")
        value = torch.tensor(value, dtype=torch.int64, device=device)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a 1-D integer tensor (or a list of ints); got {type(value).__name__}")
    if value.is_nested or value.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense 1-D integer tensor; got a {'nested' if value.is_nested else value.layout} one"
        )
    if value.ndim != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a 1-D integer tensor; got shape {tuple(value.shape)}, dtype {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} must be on the device of the prediction ({device}); got {value.device}")
    if not torch.compiler.is_compiling() and _mapped(value):  # (Dynamo traces no functorch query)
        raise TypeError(
            f"{name} must be the same for every sample of a torch.func.vmap: the scenes decide how the points are "
            "grouped; map over the predictions and labels only (pass the scenes as a tensor from outside), or loop"
        )
    return value.to(torch.int64)


def _mapped(x: Tensor) -> bool:
    """Whether ``x`` is batched by a ``torch.func.vmap`` at some level (each sample has its own values)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        if functorch.is_batchedtensor(x):
            return True
        x = functorch.get_unwrapped(x)
    return False


def _traced() -> bool:
    """Whether a graph is being made of this call (torch.compile, torch.export, torch.jit.trace, make_fx), or its
    tensors are fakes (FakeTensorMode): what the data decide must be decided in the graph, not here."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or T.no_host_values()


def _check(ok: Tensor, message: str, found) -> None:
    """Raise where the check can be made at once (eager CPU); else queue it (no host sync): on an
    accelerator, and in a graph, where it raises when the graph runs (unchecked, scene ids out
    of range failed inside the sort path or, negative, joined the first scene)."""
    if _traced() or ok.device.type != "cpu":
        torch._assert_async(ok, message)
    elif not ok:
        raise ValueError(f"{message}; got {found()}")


SceneArgs = tuple[Tensor | None, Tensor | None, int | None]  # (batch, offsets, num_scenes)


def from_nested(prediction, labels, scenes: SceneArgs, names: tuple[str, ...]) -> tuple[Tensor, Tensor, SceneArgs]:
    """Scenes given as jagged nested tensors (``torch.nested``, ``layout=torch.jagged``): a prediction
    ``[S, j, C]`` (or ``[S, j]``) and labels ``[S, j]`` (targets ``[S, j, C]``) of the same scenes become
    points ``[N, ...]`` with ``offsets=``, as lovasz.tf takes RaggedTensors; anything else as it is."""
    pname, lname = names[:2]
    if not (isinstance(prediction, Tensor) and prediction.is_nested):
        return prediction, labels, scenes
    _check_jagged(prediction, pname)
    if any(value is not None for value in scenes):
        raise TypeError(f"a nested {pname} gives its scenes already: pass no batch=, offsets= or num_scenes=")
    if not (isinstance(labels, Tensor) and labels.is_nested):
        got = f"shape {list(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(
            f"{lname} must be a nested tensor of the scenes of the nested {pname} (layout=torch.jagged); got {got}"
        )
    _check_jagged(labels, lname)
    offsets, label_offsets = prediction.offsets(), labels.offsets()  # type: ignore[attr-defined]
    if label_offsets is not offsets:
        if label_offsets.shape != offsets.shape or label_offsets.device != offsets.device:
            raise ValueError(
                f"{lname} must hold the {offsets.shape[0] - 1} scenes of {pname}, on its device; got "
                f"{label_offsets.shape[0] - 1} on {label_offsets.device}"
            )
        ok = torch.all(label_offsets == offsets)
        sizes = lambda: f"scenes of {label_offsets.diff().tolist()} points against {offsets.diff().tolist()}"  # noqa: E731
        _check(ok, f"{lname} must hold the scenes of {pname}, point for point", sizes)
    return prediction.values(), labels.values(), (None, offsets[1:], None)


def _check_jagged(x: Tensor, name: str) -> None:
    if x.layout != torch.jagged or getattr(x, "_ragged_idx", 1) != 1 or x.lengths() is not None:  # type: ignore[attr-defined]
        raise TypeError(
            f"{name} as a nested tensor must be scenes of points [S, j, ...] with layout=torch.jagged, "
            f"contiguous (e.g. torch.nested.nested_tensor(scenes, layout=torch.jagged)); got layout {x.layout}"
            + ("" if x.layout != torch.jagged else ", ragged in another dim or with holes (lengths)")
        )


def scenes(
    prediction: Tensor,
    labels: Tensor,
    batch,
    offsets,
    num_scenes: int | None,
    multilabel: bool,
    names: tuple[str, str],
    grouped: bool = True,
) -> Scenes:
    """Check points-first inputs and their scenes; the dense layout and, if ``grouped``, the points ordered
    by scene and the scenes' ends (else the points in their own order: one set of them all)."""
    if (batch is None) == (offsets is None):
        raise TypeError("pass the scenes as batch= (a scene index per point) or offsets= (cumulative counts), not both")
    if not isinstance(prediction, Tensor) or not isinstance(labels, Tensor):
        return Scenes(prediction, labels, torch.zeros(0))  # the callers' own checks name what is wrong
    if V.points_label_axis(prediction.shape, labels.shape, multilabel):
        labels = labels.squeeze(1)
    V.points_layout(prediction.shape, labels.shape, multilabel, names, "with batch=/offsets=")
    num_points = prediction.shape[0]
    if offsets is not None:
        if num_scenes is not None:
            raise TypeError("num_scenes goes with batch=; offsets= give the number of scenes already")
        ends = _index_tensor(offsets, "offsets", prediction.device)
        if ends.numel():  # rising from 0 (no scene of fewer than no points) to the number of points
            ok = (T.scene_sizes(ends).min() >= 0) & (ends[-1] == num_points)
        else:
            ok = torch.tensor(num_points == 0, device=ends.device)
        total = "the number of points" if torch.compiler.is_compiling() else num_points  # (symbolic when compiled)
        _check(ok, f"offsets must be cumulative point counts, rising to {total}", lambda: ends.tolist())
        ends = ends if grouped else None
    else:
        scene = _index_tensor(batch, "batch", prediction.device)
        if scene.shape[0] != num_points:
            raise ValueError(f"batch must give one scene per point, shape [{num_points}]; got {list(scene.shape)}")
        if num_scenes is None:  # the one host sync of this path: pass num_scenes to avoid it
            if _traced():
                raise TypeError(
                    "under torch.compile, torch.jit.trace, make_fx and FakeTensorMode, batch= needs num_scenes= (the "
                    "number of scenes, an int)"
                )
            num_scenes = int(scene.max()) + 1 if num_points else 0
        num_scenes = V.check_count(num_scenes, "num_scenes")
        ok = torch.all((scene >= 0) & (scene < num_scenes))
        valid = f"in [0, {num_scenes - 1}]" if num_scenes else "in a scene, and num_scenes=0 gives none"
        _check(ok, f"batch must hold scene indices {valid}", lambda: scene.unique().tolist())
        if grouped:  # points in scene order stay where they are (checked on the CPU only: elsewhere a host sync)
            in_order = scene.device.type == "cpu" and not _traced()
            if not (in_order and bool(torch.all(scene[1:] >= scene[:-1]))):
                order = torch.sort(scene, stable=True)  # points grouped by scene; the loss doesn't see the order
                scene, prediction, labels = order.values, prediction[order.indices], labels[order.indices]
            # (contiguous: a stride-0 batch, torch.tensor(0).expand(N), made searchsorted warn and copy)
            ends = torch.searchsorted(scene.contiguous(), torch.arange(num_scenes, device=scene.device), right=True)
        else:
            ends = None
    if multilabel or prediction.ndim == 2:
        # [1, C, N]: a view of the points, which the C kernel and the Triton kernels read where they lie (the
        # torch.sort path copies them class-major), and whose gradient is points-first too
        prediction = prediction.T.unsqueeze(0)
    else:
        prediction = prediction.unsqueeze(0)
    labels = labels.T.unsqueeze(0) if multilabel else labels.unsqueeze(0)
    return Scenes(prediction, labels, ends)


# ----------------------------------------------------------------------------- sparse dense inputs
# Where most pixels are ignored (a voxel grid of a LiDAR scan: ~2% occupied), the pixels that count
# are gathered into points of scenes (a scene per image, or one for the batch), in pixel order, so
# that ties fall as on the dense path and the work and memory follow them, not the grid: one gather
# here, and one scatter of the gradient back, in place of every full-size pass of the dense path.
# Counting them is a host sync on an accelerator: done only where one may happen (see _may_sync);
# elsewhere the dense path serves, exact all the same.
COMPACT_BELOW = 0.5  # the fraction of valid pixels under which gathering them pays (docs/lidar.md)
# and the size of grid from which it does: below, the dense path's few passes cost less than the gathering's
# fixed work (CPU, 20 classes, 2-5% valid: 0.84-0.88 ms dense against 0.95-1.13 gathered at 81,920 values,
# 1.08-1.13 against 0.98-1.08 at 138,240)
COMPACT_MIN_VALUES = 1 << 17


class Compacted(NamedTuple):
    prediction: Tensor  # [1, C, M]: a view of the M valid pixels' [M, C]
    labels: Tensor  # [1, L, M]
    ignored: Tensor | None  # [1, L, M], or None where no valid pixel is ignored in any row
    ends: Tensor | None  # [S] int64: a scene per image, or one; None: one image of the points (one row)


def _may_sync(x: Tensor) -> bool:
    """Whether the valid pixels may be counted: always on the CPU; on an accelerator eagerly, but not in
    a CUDA graph's capture, nor where the user asked torch to warn of or refuse host syncs
    (``torch.cuda.set_sync_debug_mode``). Never under torch.compile or a torch.func transform (vmap, grad,
    jvp), nor in ``torch.jit.trace``, which would keep the pixels of the input it traced: the gather's size and
    places depend on the data."""
    if _traced() or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    if x.device.type == "cuda":
        return not torch.cuda.is_current_stream_capturing() and torch.cuda.get_sync_debug_mode() == 0
    return True


def _found_by_numpy(valid: Tensor) -> bool:
    """Whether numpy counts and finds the valid pixels: on the CPU, where it takes ~60 us of a LiDAR grid
    (``[1, 20, 160, 120, 16]``) to torch's ~250. Tests patch this to run the accelerator's ops on the CPU."""
    return valid.device.type == "cpu"


def _counted(ignored: Tensor) -> Tensor:
    """``[B, N]``: the pixels of ``ignored [B, L, N]`` that some row does not ignore (multi-label: a pixel
    may be ignored in some rows only)."""
    return ~ignored.all(1) if ignored.shape[1] > 1 else ~ignored[:, 0]


def _valid_pixels(valid: Tensor) -> Tensor | None:
    """The flat indices ``[M]`` (rising) of the true entries of ``valid [B, N]``, where they are at most
    :data:`COMPACT_BELOW` of all; else None. Counting them is the host sync on an accelerator, the only
    one: ``nonzero_static`` then takes the count as known."""
    limit = COMPACT_BELOW * valid.numel()
    if _found_by_numpy(valid):
        flags = valid.numpy().reshape(-1)
        return None if np.count_nonzero(flags) > limit else torch.from_numpy(np.flatnonzero(flags))
    count = int(valid.sum())
    return None if count > limit else torch.nonzero_static(valid.reshape(-1), size=count).squeeze(1)


def compact(
    pred: Tensor, labels: Tensor, ignored: Tensor | None, ends: Tensor | None, per_image: bool
) -> Compacted | None:
    """``pred [B, C, N]`` and ``labels [B, L, N]`` (L = 1, or C for multi-label) as points of scenes:

    - points ``[B, C]`` (``N = 1``) of one set: a view (Pointcept's and mmdet3d's call,
      ``lovasz_softmax(probs [N, C], labels [N])``), their points gathered as below where few count; of one
      row (the hinge's ``[N]``), one image of them (no scene: the dense path's rows, of a lesser fixed cost);
    - points ``[1, C, N]`` of the scenes ``ends``: on the CPU, those not ignored in every row, where they are
      at most :data:`COMPACT_BELOW` of all (weakly labelled point clouds), gathered;
    - the pixels of a grid, likewise: gathered, class-major (``[1, C, M]``, contiguous).

    None where none applies: the dense path.
    """
    batch, _, num_pixels = pred.shape
    if num_pixels == 1 and not per_image and batch > 0 and ends is None:
        flat = lambda x: x.flatten(1).T.unsqueeze(0)  # noqa: E731  [B, L, 1] -> [1, L, B], views all the way back
        pred, labels, ignored = flat(pred), flat(labels), None if ignored is None else flat(ignored)
        ends = torch.full((1,), batch, dtype=torch.int64, device=pred.device)
        points = _gathered_points(pred, labels, ignored, ends) or Compacted(pred, labels, ignored, ends)
        return points if pred.shape[1] > 1 else points._replace(ends=None)
    if ends is not None:
        return _gathered_points(pred, labels, ignored, ends)
    if ignored is None or pred.numel() < COMPACT_MIN_VALUES or not _may_sync(pred):
        return None
    partly = ignored.shape[1] > 1  # multi-label: a valid pixel may be ignored in some rows
    at = _valid_pixels(_counted(ignored))
    if at is None:
        return None
    image, pixel = at // num_pixels, at % num_pixels  # of each valid pixel, in pixel order
    # image b's pixels are the run [image_ends[b - 1], image_ends[b])
    image_ends = torch.searchsorted(at, torch.arange(1, batch + 1, device=at.device) * num_pixels)
    if partly:
        gather = lambda x: x.permute(0, 2, 1)[image, pixel].T.unsqueeze(0)  # noqa: E731  [B, L, N] -> [1, L, M]
        gathered_labels, gathered_ignored = gather(labels), gather(ignored)
    else:
        gathered_labels, gathered_ignored = labels.reshape(-1).index_select(0, at).view(1, 1, -1), None
    points = _GatherPixels.apply(pred, Pixels(image, pixel, image_ends)).unsqueeze(0)
    ends = image_ends if per_image else image_ends[-1:]
    return Compacted(points, gathered_labels, gathered_ignored, ends)


def _gathered_points(pred: Tensor, labels: Tensor, ignored: Tensor | None, ends: Tensor) -> Compacted | None:
    """Points ``[1, C, N]`` of the scenes ``ends``, those not ignored in every row, where few count: gathered
    points-first (``[M, C]`` rows, which the C kernel's points path reads) by torch's ``index_select``, whose
    gradient scatters back. Else None; always on an accelerator, where counting them would be a host sync
    on every call, of points that mostly count (Pointcept's ignore -1: ~5%)."""
    if ignored is None or pred.device.type != "cpu" or not _may_sync(pred):
        return None
    at = _valid_pixels(_counted(ignored))
    if at is None:
        return None
    points = pred.squeeze(0).T.index_select(0, at).T.unsqueeze(0)
    gathered_ignored = ignored.index_select(2, at) if ignored.shape[1] > 1 else None
    return Compacted(points, labels.index_select(2, at), gathered_ignored, torch.searchsorted(at, ends))


class Pixels(NamedTuple):
    """The valid pixels of a grid ``[B, C, N]``, in pixel order."""

    image: Tensor  # [M]: the image of each
    pixel: Tensor  # [M]: its place in the image
    ends: Tensor  # [B]: image b's pixels are the run [ends[b - 1], ends[b])


def _on_kernel(grid: Tensor) -> bool:
    """Whether the C kernel gathers from (and writes back into) ``grid``: float32 on the CPU, contiguous."""
    return grid.is_contiguous() and T._use_c_kernel(grid) and C.grid_kernel() is not None


def _gather(grid: Tensor, at: Pixels) -> Tensor:
    """``grid [B, C, N]`` at the pixels: ``[C, M]``, contiguous. On the C kernel where it applies."""
    _, channels, num_pixels = grid.shape
    if _on_kernel(grid):
        offsets = (at.image * (channels * num_pixels) + at.pixel).numpy()
        return torch.from_numpy(C.gather_pixels(grid.detach().numpy(), offsets, torch.get_num_threads()))
    return grid.permute(0, 2, 1)[at.image, at.pixel].T.contiguous()


def _scatter(values: Tensor, at: Pixels, shape: torch.Size) -> Tensor:
    """The grid ``shape`` (contiguous) with ``values [C, M]`` at the pixels and 0 at every other one: the
    gradient of :func:`_gather`. On the C kernel where it applies: one pass over the grid, not a fill and a
    scatter."""
    grid = values.new_empty(shape)
    if _on_kernel(grid):
        values = values.detach().contiguous().numpy()
        C.scatter_pixels(values, at.pixel.numpy(), at.ends.numpy(), grid.numpy(), torch.get_num_threads())
        return grid
    grid.zero_().permute(0, 2, 1).index_put_((at.image, at.pixel), values.T)
    return grid


class _GatherPixels(T.PositionalFunction):
    """:func:`_gather`, whose gradient is :func:`_scatter` (laid out as ``x``, contiguous) and the other way
    round (both are linear): every order of autograd (``create_graph``) and forward mode go through them."""

    @staticmethod
    def forward(x: Tensor, at: Pixels) -> Tensor:
        return _gather(x, at)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.at = inputs
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ScatterPixels.apply(grad, ctx.at, ctx.shape), None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, _):
        return _gather(x_tangent, ctx.at)


class _ScatterPixels(T.PositionalFunction):
    """:func:`_scatter`, whose gradient is :func:`_gather`."""

    @staticmethod
    def forward(values: Tensor, at: Pixels, shape: torch.Size) -> Tensor:
        return _scatter(values, at, shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.at, ctx.shape = inputs

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _GatherPixels.apply(grad, ctx.at), None, None

    @staticmethod
    def jvp(ctx, values_tangent: Tensor, *_):
        return _scatter(values_tangent, ctx.at, ctx.shape)
