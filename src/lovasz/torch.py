"""Lovász-Softmax and Lovász hinge losses for PyTorch.

A drop-in for the original ``pytorch/lovasz_losses.py`` of Berman et al.
(same names, arguments, defaults and values), vectorised: every (set, class)
row goes through one sorting kernel, with no Python loop over images or
classes, no host synchronisation and no data-dependent shape, so the losses
run under ``torch.compile(fullgraph=True)``.

Argument order: these functions take ``(prediction, labels)``, as the original
does; Keras losses take ``(y_true, y_pred)``.

Reference: M. Berman, A. Rannen Triki, M. B. Blaschko, "The Lovász-Softmax loss:
a tractable surrogate for the optimization of the intersection-over-union
measure in neural networks", CVPR 2018, arXiv:1705.08790.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lovasz import _torch_scenes
from lovasz import _validation as V
from lovasz._torch_core import (
    FOREGROUND,
    IGNORED,
    _sorted_jaccard_grad,
    differentiable,
    functionalizing,
    lovasz_sets,
    no_host_values,
)
from lovasz._torch_legacy import StableBCELoss, binary_xloss, isnan, mean, xloss  # noqa: F401  (the original's)
from lovasz.metrics import iou, iou_binary  # noqa: F401  (re-exported: the original's metrics)
from lovasz.schedule import LovaszSchedule  # noqa: F401  (re-exported: the schedule of CE then Lovász)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from lovasz._torch_distributed import GlobalBatch

__all__ = [
    "lovasz_grad",
    "flatten_probas",
    "flatten_binary_scores",
    "lovasz_softmax_flat",
    "lovasz_hinge_flat",
    "lovasz_softmax",
    "lovasz_hinge",
    "lovasz_multilabel",
    "LovaszLoss",
    "CrossEntropyLovaszLoss",
    "LovaszSchedule",
    # the original's other helpers
    "iou",
    "iou_binary",
    "isnan",
    "mean",
    "xloss",
    "binary_xloss",
    "StableBCELoss",
]

Classes = Union[str, Sequence[int]]
Weights = Optional[Tensor | Sequence[float]]


# ----------------------------------------------------------------------------- checks


def _check_prediction(x: object, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    _check_dense(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")


def _check_dense(x: Tensor, name: str) -> None:
    """Sparse and nested tensors have no strides for the kernels: say what to pass instead."""
    if x.is_nested:
        raise TypeError(
            f"{name} must be a dense tensor here; got a nested tensor (scenes of points as nested tensors with "
            "layout=torch.jagged are taken by lovasz_softmax, lovasz_hinge, lovasz_multilabel and the modules, "
            "prediction and labels both nested)"
        )
    if x.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense (strided) tensor; got layout {x.layout}: pass {name}.to_dense(), or, for a "
            "sparse voxel grid, its stored voxels as points (values [N, ...] with batch=, each voxel's scene index)"
        )


# Integer dtypes without the comparison kernels the checks need: read as int64.
_WIDENED_LABELS = (torch.uint16, torch.uint32, torch.uint64)


def _check_labels(labels: object, prediction: Tensor, name: str) -> Tensor:
    """``labels`` if they are a real tensor on the prediction's device; uint16/32/64 become int64."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(labels).__name__}")
    _check_dense(labels, name)
    if labels.is_complex():
        raise TypeError(
            f"{name} must hold class indices (integers, or floats of whole numbers); got dtype {labels.dtype}"
        )
    if labels.device != prediction.device:
        raise ValueError(f"{name} must be on the device of the prediction ({prediction.device}); got {labels.device}")
    if labels.dtype not in _WIDENED_LABELS:
        return labels
    wide = labels.to(torch.int64)
    # uint64 from 2**63 on would wrap to negatives (2**64 - 1 to -1, then left out by ignore=-1): the largest
    # int64 instead: out of every class's range, so the range check names it (as that int64)
    return torch.where(wide < 0, torch.iinfo(torch.int64).max, wide) if labels.dtype == torch.uint64 else wide


def _drop_label_axis(labels: Tensor, accepted: Sequence[tuple[int, ...]]) -> Tensor:
    """Labels of an accepted shape with an extra size-1 axis, last (``[B, H, W, 1]``, as Keras pipelines
    give them) or second (``[B, 1, H, W]``), lose it; anything else is left to the shape check."""
    given = tuple(labels.shape)
    # Lengths first: torch.export would compare the sizes pairwise and guard on unequal dims.
    if any(len(shape) == len(given) and shape == given for shape in accepted):
        return labels
    for shape in accepted:
        if len(given) == len(shape) + 1 and given[-1] == 1 and given[:-1] == shape:
            return labels.squeeze(-1)
        if len(given) == len(shape) + 1 and len(given) >= 3 and given[1] == 1 and given[:1] + given[2:] == shape:
            return labels.squeeze(1)
    return labels


def _binary_pixels(input: Tensor) -> tuple[int, ...]:
    """The pixels ``[B, *spatial]`` of a binary input, ``[B, *spatial]`` or ``[B, 1, *spatial]``."""
    return tuple(input.shape[:1] + input.shape[2:] if input.ndim >= 2 and input.shape[1] == 1 else input.shape)


def _ignored(labels: Tensor, ignore: int | None) -> Tensor | None:
    """Where ``labels`` hold ``ignore`` (:func:`V.ignore_held`: a value their dtype cannot hold, none)."""
    integer = not labels.is_floating_point() and labels.dtype != torch.bool
    ignore = V.ignore_held(ignore, torch.iinfo(labels.dtype) if integer else None)
    return None if ignore is None else labels == ignore


def _check_whole(labels: Tensor, valid: Tensor | None, name: str) -> None:
    """Float labels must hold whole numbers (class indices): 1.5 is an error, never class 1."""
    if labels.is_floating_point():
        _check_values(labels, valid, "whole numbers (class indices)", labels == labels.round(), name)


def _check_values(labels: Tensor, valid: Tensor | None, allowed: str, ok: Tensor, name: str) -> None:
    """Raise if a non-ignored label is not allowed.

    Eager CPU tensors raise a ``ValueError`` at once. On an accelerator, and in a
    ``torch.compile`` graph, the check is queued with ``torch._assert_async`` (no host
    sync): a ``RuntimeError`` with the message when it runs.
    """
    message = f"{name} must be {allowed} at every non-ignored pixel"
    if torch.compiler.is_compiling():  # (a graph's tensors are no functorch wrappers to take off)
        torch._assert_async(torch.all(ok if valid is None else ok | ~valid), message)
        return
    bad = _unbatched(~ok if valid is None else valid & ~ok)
    if not _values_on_host(labels):
        torch._assert_async(~bad.any(), message)
        return
    if bad.any():
        raise ValueError(f"{message}; found {_unbatched(labels)[bad].flatten()[0].item()}")


def _values_on_host(x: Tensor) -> bool:
    """Whether ``x``'s values can be read now without a host sync: eagerly on the CPU, a real tensor (else a check
    is queued: on an accelerator, in a graph, under FakeTensorMode and make_fx)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and not no_host_values()


def _under_torch_func(x: Tensor) -> bool:
    """Whether ``x`` is wrapped by a torch.func transform (vmap, grad, jacrev, ...), eagerly; torch.compile
    cannot trace the check (a graph break), and traces the transforms' rules itself."""
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x)


def _unbatched(x: Tensor) -> Tensor:
    """``x`` without torch.func's wrappers (vmap's batching): every sample's values, which a check may
    read (under vmap a tensor's values take no part in Python's control flow)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return x


def _as_weights(
    weights: Weights, num_classes: int, dtype: torch.dtype, device: torch.device, name: str
) -> Tensor | None:
    if weights is None:
        return None
    if isinstance(weights, (list, tuple)) and (torch.compiler.is_compiling() or functionalizing() or no_host_values()):
        # numbers of the graph: checked and made in Python (the host path reads a tensor back: a break, and an
        # error under fullgraph=True; under functionalize, FakeTensorMode and make_fx a tensor made here has no values)
        V.check_weights_shape((len(weights),), num_classes, name)
        scale = V.check_weight_values(list(weights), name)
        return torch.tensor([float(v) * scale for v in weights], dtype=dtype, device=device)
    on_device = isinstance(weights, Tensor) and weights.device == device
    try:
        # numbers on the host, whatever torch.set_default_device says: they become constants on the input's device
        w = weights if isinstance(weights, Tensor) else torch.as_tensor(weights, device="cpu")
        if not isinstance(weights, Tensor) and w.is_floating_point():  # numbers: made in the compute dtype below
            w = torch.as_tensor(weights, dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):  # a string such as 'balanced', a ragged list, a dict
        raise TypeError(f"{name} must be [C] real numbers (one weight per class) or None; got {weights!r}") from None
    V.check_weights_shape(w.shape, num_classes, name)
    if w.is_meta and device.type != "meta":
        raise ValueError(
            f"{name} must hold values; got a tensor on the meta device, for inputs on {device} (a loss built under "
            "torch.device('meta') needs to_empty(device=...) and its weights loaded before it is called)"
        )
    if w.is_complex() or w.dtype == torch.bool:  # (any int or float dtype holds weights)
        raise TypeError(f"{name} must hold real numbers; got dtype {w.dtype}")
    scale = 1.0
    if not on_device or _values_on_host(w):
        scale = V.check_weight_values(_unbatched(w.detach()).reshape(-1).tolist(), name)
    else:  # on an accelerator, or in a graph (a learned weight may turn negative at any step): when it runs
        values = w.detach() if torch.compiler.is_compiling() else _unbatched(w.detach())  # (Dynamo: no wrappers)
        ok = torch.all(torch.isfinite(values) & (values >= 0))
        torch._assert_async(ok, f"{name} must be finite numbers >= 0 (a weight of 0 takes a class out)")
    if on_device:  # (a learned weight keeps its gradient: the weighted mean is the same for scaled weights)
        return w.to(dtype) if scale == 1 else (w.double() * scale).to(dtype)
    return _constant(tuple(v * scale for v in w.double().tolist()), dtype, device)


_CONSTANTS: OrderedDict[tuple, Tensor] = OrderedDict()  # (values, dtype, device) -> tensor, most recent last
_MAX_CONSTANTS = 64


def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small tensor of Python numbers on ``device``, made without a copy from the host.

    On a GPU a copy from pageable memory waits for the device, and a CUDA graph would
    replay one from pinned memory out of a buffer freed since; filled on the device, the
    numbers travel as kernel arguments. Kept for later calls (outside graph capture, whose
    memory pool it would belong to), so a training loop makes each one once.
    """
    if device.type == "cpu" or torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    key = (values, dtype, device)
    if key in _CONSTANTS:
        _CONSTANTS.move_to_end(key)
        return _CONSTANTS[key]
    out = torch.empty(len(values), dtype=dtype, device=device)
    for i, value in enumerate(values):
        out[i].fill_(value)
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        _CONSTANTS[key] = out
        if len(_CONSTANTS) > _MAX_CONSTANTS:
            _CONSTANTS.popitem(last=False)
    return out


def _result_dtype(x: Tensor) -> torch.dtype:
    """The input's dtype; float32 for half-precision input under autocast, which gives its losses in float32."""
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return torch.float32
    return x.dtype


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; half precision (and float32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- shared machinery


def _codes(is_fg: Tensor, ignored: Tensor | None) -> Tensor:
    codes = is_fg.to(torch.uint8)  # not a bool->uint8 view: torch.jit.trace and older inductors reject it
    return codes if ignored is None else codes.masked_fill_(ignored, IGNORED)


def _class_codes(lab: Tensor, num_classes: int, ignored: Tensor | None) -> Tensor:
    """The codes ``[B, C, N]`` of class labels ``lab [B, 1, N]``: one scatter, not ``C`` comparisons.

    1 at a pixel's class, 0 at the others; IGNORED at every class of an ignored pixel;
    all 0 where a label is out of range (raised about before, except under torch.compile).
    """
    batch, _, pixels = lab.shape
    valid = (lab >= 0) & (lab < num_classes)
    if ignored is None:
        codes = torch.zeros(batch, num_classes, pixels, dtype=torch.uint8, device=lab.device)
        mark = valid.to(torch.uint8)
    else:
        valid = valid & ~ignored  # (not &=: functionalize has no rule for __iand__)
        codes = ignored.to(torch.uint8).mul_(IGNORED).expand(batch, num_classes, pixels).contiguous()
        mark = valid.to(torch.uint8).masked_fill_(ignored, IGNORED)
    # Each pixel writes one place: its class, or class 0 (with the value already there) if it has none.
    # In place but under torch.func.vmap, which has a batching rule only for the out-of-place scatter.
    scatter = codes.scatter if _under_torch_func(mark) else codes.scatter_
    return scatter(1, torch.where(valid, lab, 0).long(), mark)


_NO_SCENES = (None, None, None)


def _points(
    prediction: Tensor,
    labels: Tensor,
    scenes: tuple[Tensor | None, Tensor | None, int | None],
    per_image: bool,
    multilabel: bool,
    names: tuple[str, str] | tuple[str, str, str],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Points-first inputs of scenes (``scenes = (batch, offsets, num_scenes)``) in the dense layout, with
    the scenes' ends where the loss is per scene (one channel, ``[N]``: one image of the points, without
    ends, where it is not); points ``[N, C]`` of one set, and other inputs, as they are (the scenes checked
    all the same). Jagged nested tensors are scenes."""
    prediction, labels, scenes = _torch_scenes.from_nested(prediction, labels, scenes, names)
    if all(value is None for value in scenes):
        return prediction, labels, None
    _check_prediction(prediction, names[0])
    points = _torch_scenes.scenes(prediction, labels, *scenes, multilabel, names[:2], grouped=per_image)
    if not per_image and prediction.ndim >= 2:  # one set of all the points [N, C]: the call without scenes
        return prediction, labels, None
    return points.prediction, points.labels, points.ends


def _sparse(
    pred: Tensor,
    labels: Tensor,
    ignored: Tensor | None,
    ends: Tensor | None,
    per_image: bool,
    process_group: ProcessGroup | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Dense ``pred [B, C, N]``, ``labels`` and ``ignored [B, L, N]`` (or points of the scenes ``ends``) as
    points of scenes where that pays (points ``[N, C]`` of one set; mostly ignored grids and points: see
    ``_torch_scenes.compact``), with their ends; else as they are. Not across ranks: the global batch
    gathers the dense layout."""
    if process_group is not None:
        return pred, labels, ignored, ends
    sparse = _torch_scenes.compact(pred, labels, ignored, ends, per_image)
    return (pred, labels, ignored, ends) if sparse is None else tuple(sparse)  # type: ignore[return-value]


def _across(
    process_group: ProcessGroup | None, loss: str, ignore: int | None, margin: str = "relu", symmetric: bool = False
) -> GlobalBatch | None:
    """The global batch of ``process_group``, with the options every rank must share; None without a group."""
    if process_group is None:
        return None
    group_type = getattr(torch.distributed, "ProcessGroup", None)  # (absent from builds without distributed)
    if group_type is not None and not isinstance(process_group, group_type):
        raise TypeError(
            f"process_group must be a torch.distributed.ProcessGroup (dist.group.WORLD, dist.new_group(...)) or "
            f"None; got {process_group!r}"
        )
    from lovasz._torch_distributed import GlobalBatch

    return GlobalBatch(process_group, loss, ignore, margin, symmetric)


def _class_selection(
    classes: str | tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Which class rows to compute, and how many times each counts (a list may repeat a class)."""
    if isinstance(classes, str):
        return None, None
    unique = tuple(sorted(set(classes)))
    return _constant(unique, torch.int64, device), _constant(tuple(classes.count(c) for c in unique), dtype, device)


def _lovasz_classes(
    pred: Tensor,
    codes: Tensor,
    hinge: bool,
    classes: str | tuple[int, ...],
    num_classes: int,
    per_image: bool,
    weights: Tensor | None,
    reduction: str,
    across: GlobalBatch | None = None,
    softmax: bool = False,
    ends: Tensor | None = None,
) -> Tensor:
    """Loss of ``pred [B, C, N]`` against ``codes [B, C, N]``: one row per (set, class), then the means.

    With ``softmax``, ``pred`` holds logits and the softmax over ``C`` is taken inside the kernel.
    With ``ends``, ``B`` is 1 and the sets are the scenes of its points (see ``_torch_scenes``).
    """
    if across is not None:  # every rank, per-image too: the ranks check their options together
        pred, codes = across.gather(pred, codes, per_image, classes, weights)
    ids, counts = _class_selection(classes, pred.dtype, pred.device)
    row_weights = torch.ones(num_classes, dtype=pred.dtype, device=pred.device)
    if weights is not None:
        row_weights = row_weights * weights.to(pred.dtype)
    if ids is not None and counts is not None:
        codes = codes.index_select(1, ids)
        row_weights = row_weights.index_select(0, ids) * counts
    need_grad = differentiable(pred)
    present_only = classes == "present"
    per_set = lovasz_sets(pred, codes, row_weights, hinge, softmax, per_image, present_only, ids, need_grad, ends)
    return _reduce(per_set, reduction, per_image)


def _hinge_classes(
    pred: Tensor,
    codes: Tensor,
    classes: str | tuple[int, ...],
    num_classes: int,
    per_image: bool,
    weights: Tensor | None,
    reduction: str,
    across: GlobalBatch | None,
    margin: str,
    symmetric: bool,
    ends: Tensor | None = None,
) -> Tensor:
    """The Lovász hinge of ``pred [B, K, N]`` against ``codes``, with its two variants of practice.

    ``margin='elu'``: the errors are ``elu(m) + 1`` of the margins ``m = 1 - s x``, which is the plain
    hinge ``max(0, 1 - s x')`` at ``x' = -s elu(1 - s x)`` (positive, so never clipped): the kernels
    need no mode of their own, and autograd takes the ELU's derivative. ``symmetric``: the mean with
    the hinge of the flipped problem, ``-x'`` against ``1 - y`` (ignored pixels stay ignored).
    """
    if margin == "elu":
        # a NaN score at an ignored pixel must not reach the gradient through elu's (0 * NaN in its backward)
        pred = torch.where(codes == IGNORED, 0, pred)
        signs = (codes == FOREGROUND).to(pred.dtype).mul_(2).sub_(1)
        pred = -signs * F.elu(1 - signs * pred)
    args = (classes, num_classes, per_image, weights, reduction, across)
    loss = _lovasz_classes(pred, codes, True, *args, ends=ends)
    if symmetric:
        flipped = torch.where(codes == IGNORED, codes, 1 - codes)
        loss = (loss + _lovasz_classes(-pred, flipped, True, *args, ends=ends)) / 2
    return loss


def _reduce(per_set: Tensor, reduction: str, per_image: bool) -> Tensor:
    if reduction == "none":
        return per_set if per_image else per_set[0]
    if reduction == "sum" or per_set.shape[0] == 0:  # the mean of no image is 0, like an all-ignored batch
        return per_set.sum()
    return per_set.mean()


# ----------------------------------------------------------------------------- public functions


def lovasz_softmax(
    probas: Tensor,
    labels: Tensor,
    classes: Classes = "present",
    per_image: bool = False,
    ignore: int | None = None,
    *,
    from_logits: bool = False,
    weights: Weights = None,
    reduction: str = "mean",
    process_group: ProcessGroup | None = None,
    batch: Tensor | None = None,
    offsets: Tensor | None = None,
    num_scenes: int | None = None,
) -> Tensor:
    r"""Multi-class Lovász-Softmax loss: a convex surrogate of ``1 - IoU`` averaged over classes.

    For each class ``c`` the errors ``m_i = |[y_i = c] - p_i(c)|`` are sorted in
    decreasing order and the loss is the Lovász extension
    ``sum_k m_(k) (J(k) - J(k-1))`` of the Jaccard loss ``J`` (Algorithm 1 of the
    paper); the class losses are then averaged.

    Args:
        probas: ``[B, C, *spatial]`` class probabilities (logits with ``from_logits``),
            or ``[B, *spatial]`` / ``[B, 1, *spatial]`` sigmoid output: the probability
            of class 1, read as the two classes ``[1 - p, p]``.
            Note the order: ``(probas, labels)``, unlike Keras' ``(y_true, y_pred)``.
        labels: ``[B, *spatial]`` integer class indices in ``[0, C - 1]``, or ``ignore``.
        classes: ``'present'`` averages over the classes present in the labels of each
            set, ``'all'`` over every class, or a list of class indices.
        per_image: compute the loss of each image and average (optimises per-image IoU);
            otherwise the batch is one set of pixels (closer to dataset IoU).
        ignore: label value of pixels that take no part (e.g. 255).
        from_logits: ``probas`` are logits; a softmax (sigmoid for one channel) is taken inside.
        weights: ``[C]`` per-class weights; the class average becomes a weighted average.
        reduction: ``'mean'`` or ``'sum'`` over the images with ``per_image``, or
            ``'none'`` for one loss per image, shape ``[B]``. Without ``per_image`` the
            batch is one set and every reduction gives the same 0-d loss.
        process_group: under ``torch.distributed``, a process group (e.g.
            ``torch.distributed.group.WORLD``) whose ranks' batches form one set: without
            ``per_image``, every rank gets the exact loss of the global batch, and the
            gradient of its own pixels. Batch sizes and spatial sizes may differ across
            ranks (the loss is that of the union of all their pixels); class counts,
            precisions and options (``per_image``, ``classes``, ``ignore``, ``weights``,
            ``from_logits``, the loss) must match, else every rank raises the same
            ``ValueError``. Per-image losses are exact on each rank already: there the group
            only checks the options (one small all-gather per call).
        batch: for point clouds and other ragged sets: ``[N]`` each point's scene index
            (torch_geometric's convention). Then ``probas`` is points-first, ``[N, C]`` (or
            ``[N]`` for one channel), ``labels`` is ``[N]``, and ``per_image=True`` means one
            set per scene (``reduction='none'``: ``[S]``); without it all points are one set.
            Exact: each scene's loss equals the dense loss of that scene alone. A scene with
            no valid point gets 0, like an all-ignored image.
        offsets: the scenes as Pointcept marks them instead: ``[S]`` cumulative point counts,
            the last one ``N`` (the points of scene ``s`` are ``offsets[s-1]:offsets[s]``); not
            torch_geometric's ``ptr``, whose leading 0 would be an empty scene (pass ``ptr[1:]``).
            Scenes may also come as jagged nested tensors (``torch.nested``,
            ``layout=torch.jagged``): ``probas [S, j, C]`` and ``labels [S, j]``, without
            ``batch`` or ``offsets``.
        num_scenes: with ``batch``, the number of scenes ``S``; without it, it is read
            from ``batch.max()``, one host sync (pass it under CUDA graphs and ``torch.compile``).

    Returns:
        A 0-d tensor (``[B]`` for ``per_image`` with ``reduction='none'``) in the dtype of
        ``probas``. Half precision is computed in float32 inside. A set with no pixel,
        or with no class to average, contributes 0 with zero gradient.

    Example:
        >>> probas = torch.tensor([[[0.9, 0.4], [0.1, 0.6]]])  # [B=1, C=2, N=2]
        >>> labels = torch.tensor([[0, 1]])
        >>> lovasz_softmax(probas, labels)
        tensor(0.3250)
        >>> lovasz_softmax(probas, torch.tensor([[0, 255]]), ignore=255)
        tensor(0.1000)
    """
    return _softmax(
        probas,
        labels,
        classes,
        per_image,
        ignore,
        from_logits,
        weights,
        reduction,
        process_group,
        ("probas", "labels", "weights"),
        (batch, offsets, num_scenes),
    )


def _softmax(
    probas: Tensor,
    labels: Tensor,
    classes: Classes,
    per_image: bool,
    ignore: int | None,
    from_logits: bool,
    weights: Weights,
    reduction: str,
    process_group: ProcessGroup | None,
    names: tuple[str, str, str],
    scenes: tuple = _NO_SCENES,
) -> Tensor:
    """:func:`lovasz_softmax`, its inputs called ``names`` in error messages; ``scenes`` are
    ``(batch, offsets, num_scenes)`` of points-first inputs."""
    pname, lname, wname = names
    per_image, from_logits = V.check_flag(per_image, "per_image"), V.check_flag(from_logits, "from_logits")
    probas, labels, ends = _points(probas, labels, scenes, per_image, False, names)
    _check_prediction(probas, pname)
    labels = _check_labels(labels, probas, lname)
    if probas.ndim >= 2:  # (points [N, C] too: labels [N, 1])
        labels = _drop_label_axis(labels, [tuple(probas.shape), tuple(probas.shape[:1] + probas.shape[2:])])
    if probas.ndim >= 2 and probas.shape[1] == 1 and probas.ndim == labels.ndim + 1:
        # one channel: the foreground probability, as in the original; points [N, 1]: N images of one pixel
        if probas.ndim == 2:
            labels = labels.unsqueeze(1)
        else:
            probas = probas.squeeze(1)
    sigmoid, num_classes = V.softmax_layout(probas.shape, labels.shape, names=names[:2])
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    dtype = _compute_dtype(probas)
    w = _as_weights(weights, num_classes, dtype, probas.device, wname)

    batch = labels.shape[0]
    pixels = math.prod(labels.shape[1:])  # not -1: an empty batch has no size to infer it from
    lab = labels.reshape(batch, 1, pixels)
    ignored = _ignored(lab, ignore)
    pred = probas.to(dtype)
    if sigmoid:
        if from_logits and ignored is not None:  # NaN/inf logits at ignored pixels: no NaN through the sigmoid
            pred = torch.where(ignored.view(pred.shape), 0, pred)
        pred = pred.sigmoid() if from_logits else pred
        pred = torch.stack([1 - pred, pred], dim=1)
    pred = pred.reshape(batch, num_classes, pixels)
    # checked after the gathering: on a mostly ignored grid, the few pixels that count
    pred, lab, ignored, ends = _sparse(pred, lab, ignored, ends, per_image, process_group)
    _check_whole(lab, None if ignored is None else ~ignored, lname)
    _check_values(
        lab,
        None if ignored is None else ~ignored,
        f"in [0, {num_classes - 1}]",
        (lab >= 0) & (lab < num_classes),
        lname,
    )
    codes = _class_codes(lab, num_classes, ignored)
    softmax_inside = from_logits and not sigmoid
    if softmax_inside and _under_torch_func(pred):
        # torch.func.grad differentiates the op's backward (create_graph), which the softmax taken inside
        # cannot give; taken here, autograd carries its curvature. NaN logits at ignored pixels stay out.
        pred = (pred if ignored is None else torch.where(ignored, 0, pred)).softmax(1)
        softmax_inside = False
    form = "softmax of logits" if from_logits else "softmax of probabilities"
    loss = _lovasz_classes(
        pred,
        codes,
        False,
        classes,
        num_classes,
        per_image,
        w,
        reduction,
        _across(process_group, form, ignore),
        softmax=softmax_inside,
        ends=ends,
    )
    return loss.to(_result_dtype(probas))


def lovasz_hinge(
    logits: Tensor,
    labels: Tensor,
    per_image: bool = True,
    ignore: int | None = None,
    *,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    process_group: ProcessGroup | None = None,
    batch: Tensor | None = None,
    offsets: Tensor | None = None,
    num_scenes: int | None = None,
) -> Tensor:
    r"""Binary Lovász hinge loss: a convex surrogate of ``1 - IoU`` of the foreground.

    The errors are the hinge margins ``m_i = max(0, 1 - s_i x_i)`` with signs
    ``s_i = 2 y_i - 1``, and the loss is their Lovász extension of the Jaccard loss.

    Args:
        logits: ``[B, *spatial]`` or ``[B, 1, *spatial]`` raw scores (before any sigmoid).
            Note the order: ``(logits, labels)``, unlike Keras' ``(y_true, y_pred)``.
        labels: ``[B, *spatial]`` binary masks, 0 or 1 (integer, bool or float), or ``ignore``.
        per_image: compute the loss of each image and average; otherwise the batch is one set.
        ignore: label value of pixels that take no part.
        reduction: ``'mean'`` / ``'sum'`` over images, or ``'none'`` for ``[B]`` (with
            ``per_image``; otherwise every reduction gives the same 0-d loss).
        margin: ``'relu'`` (the paper's ``max(0, m)``) or ``'elu'``: ``elu(m) + 1``, positive
            and smooth everywhere (Kaggle TGS Salt): pixels already right by the margin still
            get a gradient.
        symmetric: the mean of this loss and that of the flipped problem, ``-logits`` against
            ``1 - labels``, so the background is scored too (Kaggle Airbus ship detection).
        process_group: the global batch across ranks as one set; see :func:`lovasz_softmax`.
        batch, offsets, num_scenes: the scenes of points-first inputs, ``logits [N]`` and
            ``labels [N]``; see :func:`lovasz_softmax`.

    Returns:
        A 0-d tensor (``[B]`` with ``per_image`` and ``reduction='none'``) in the dtype of ``logits``.

    Example:
        >>> logits = torch.tensor([[2.0, -1.0, 0.5]])
        >>> lovasz_hinge(logits, torch.tensor([[1, 0, 1]]))
        tensor(0.2500)
    """
    per_image = V.check_flag(per_image, "per_image")
    if (batch, offsets) != (None, None) and isinstance(logits, Tensor):
        V.hinge_points(logits.shape, "with batch=/offsets=")
    logits, labels, ends = _points(logits, labels, (batch, offsets, num_scenes), per_image, False, ("logits", "labels"))
    _check_prediction(logits, "logits")
    labels = _check_labels(labels, logits, "labels")
    accepted = [tuple(logits.shape)]
    if logits.ndim >= 2 and logits.shape[1] == 1:
        accepted.append(tuple(logits.shape[:1] + logits.shape[2:]))
    labels = _drop_label_axis(labels, accepted)
    V.hinge_layout(logits.shape, labels.shape)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric)
    batch, pixels = labels.shape[0], math.prod(labels.shape[1:])
    pred = logits.to(_compute_dtype(logits)).reshape(batch, 1, pixels)
    lab = labels.reshape(batch, 1, pixels)
    ignored = _ignored(lab, ignore)
    pred, lab, ignored, ends = _sparse(pred, lab, ignored, ends, per_image, process_group)  # then checked
    _check_values(lab, None if ignored is None else ~ignored, "0 or 1", (lab == 0) | (lab == 1), "labels")
    codes = _codes(lab == 1, ignored)
    across = _across(process_group, "hinge", ignore, margin, symmetric)
    loss = _hinge_classes(pred, codes, "all", 1, per_image, None, reduction, across, margin, symmetric, ends)
    return loss.to(_result_dtype(logits))


def lovasz_multilabel(
    logits: Tensor,
    targets: Tensor,
    classes: Classes = "present",
    per_image: bool = True,
    ignore: int | None = None,
    *,
    from_logits: bool = True,
    weights: Weights = None,
    reduction: str = "mean",
    margin: str = "relu",
    symmetric: bool = False,
    process_group: ProcessGroup | None = None,
    batch: Tensor | None = None,
    offsets: Tensor | None = None,
    num_scenes: int | None = None,
) -> Tensor:
    r"""Multi-label Lovász loss: one binary Lovász loss per channel, averaged over channels.

    With ``from_logits`` (the default) each channel gets the Lovász hinge of its
    logits; otherwise ``logits`` are probabilities and each channel gets the
    Lovász-Softmax term of its foreground, with errors ``|t - p|``.

    Args:
        logits: ``[B, C, *spatial]`` scores (or probabilities without ``from_logits``).
        targets: ``[B, C, *spatial]`` 0/1 masks, one per channel, or ``ignore``.
        classes: ``'present'`` averages over the channels with a positive target in the
            set, ``'all'`` over every channel, or a list of channel indices.
        per_image: compute the loss of each image and average (the default, as for the hinge).
        ignore: target value of pixels that take no part, per channel.
        weights: ``[C]`` per-channel weights for the average.
        reduction, margin, symmetric, process_group: as in :func:`lovasz_hinge` (the two hinge
            variants need ``from_logits=True``).
        batch, offsets, num_scenes: the scenes of points-first inputs, ``logits [N, C]`` and
            ``targets [N, C]``; see :func:`lovasz_softmax`.

    Returns:
        A 0-d tensor (``[B]`` with ``per_image`` and ``reduction='none'``) in the dtype of ``logits``.

    Example:
        >>> logits = torch.tensor([[[2.0, -1.0], [-3.0, 1.0]]])  # [B=1, C=2, N=2]
        >>> lovasz_multilabel(logits, torch.tensor([[[1, 0], [0, 1]]]))
        tensor(0.)
    """
    return _multilabel(
        logits,
        targets,
        classes,
        per_image,
        ignore,
        from_logits,
        weights,
        reduction,
        process_group,
        ("logits", "targets", "weights"),
        margin,
        symmetric,
        (batch, offsets, num_scenes),
    )


def _multilabel(
    logits: Tensor,
    targets: Tensor,
    classes: Classes,
    per_image: bool,
    ignore: int | None,
    from_logits: bool,
    weights: Weights,
    reduction: str,
    process_group: ProcessGroup | None,
    names: tuple[str, str, str],
    margin: str = "relu",
    symmetric: bool = False,
    scenes: tuple = _NO_SCENES,
) -> Tensor:
    """:func:`lovasz_multilabel`, its inputs called ``names`` in error messages; ``scenes`` as in
    :func:`_softmax`."""
    pname, tname, wname = names
    per_image, from_logits = V.check_flag(per_image, "per_image"), V.check_flag(from_logits, "from_logits")
    logits, targets, ends = _points(logits, targets, scenes, per_image, True, names)
    _check_prediction(logits, pname)
    targets = _check_labels(targets, logits, tname)
    num_classes = V.multilabel_layout(logits.shape, targets.shape, names[:2])
    classes = V.check_classes(classes, num_classes)
    ignore = V.check_ignore(ignore)
    reduction = V.check_reduction(reduction)
    margin, symmetric = V.check_hinge_variant(margin, symmetric, from_logits)
    dtype = _compute_dtype(logits)
    w = _as_weights(weights, num_classes, dtype, logits.device, wname)
    batch = logits.shape[0]
    pixels = math.prod(logits.shape[2:])
    pred = logits.to(dtype).reshape(batch, num_classes, pixels)
    tgt = targets.reshape(batch, num_classes, pixels)
    ignored = _ignored(tgt, ignore)
    pred, tgt, ignored, ends = _sparse(pred, tgt, ignored, ends, per_image, process_group)  # then checked
    _check_values(tgt, None if ignored is None else ~ignored, "0 or 1", (tgt == 0) | (tgt == 1), tname)
    codes = _codes(tgt == 1, ignored)
    across = _across(process_group, "hinge" if from_logits else "per-channel probabilities", ignore, margin, symmetric)
    if from_logits:
        loss = _hinge_classes(
            pred, codes, classes, num_classes, per_image, w, reduction, across, margin, symmetric, ends
        )
    else:
        args = (classes, num_classes, per_image, w, reduction, across)
        loss = _lovasz_classes(pred, codes, False, *args, ends=ends)
    return loss.to(_result_dtype(logits))


# ----------------------------------------------------------------------------- the original's flat API


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension w.r.t. errors sorted in decreasing order (Algorithm 1).

    ``gt_sorted`` is ``[P]`` 0/1 ground truth in the order of the sorted errors; the
    result ``[P]`` holds ``J(k) - J(k-1)``: of bool input in closed form from the counts;
    of numbers by the original's formula, in float (floats differentiable), taking soft labels and integers
    other than 0 and 1 as it does.

    Example:
        >>> lovasz_grad(torch.tensor([1, 0, 1]))
        tensor([0.5000, 0.1667, 0.3333])
    """
    if not isinstance(gt_sorted, Tensor) or gt_sorted.ndim != 1:
        raise ValueError(f"gt_sorted must be a 1-D tensor; got {getattr(gt_sorted, 'shape', type(gt_sorted))}")
    dtype = torch.float64 if gt_sorted.dtype == torch.float64 else torch.float32
    if gt_sorted.numel() == 0:
        return gt_sorted.new_zeros(0, dtype=dtype)
    if gt_sorted.dtype != torch.bool:  # (rounded to 0/1 before: soft labels lost their values and gradient)
        # (float32 cumsums cancel in the differences: 4e-5 off for 0/1 of 200; Apple's MPS has no float64)
        gt = gt_sorted.to(torch.float32 if gt_sorted.device.type == "mps" else torch.float64)
        total = gt.sum()
        jaccard = 1 - (total - gt.cumsum(0)) / (total + (1 - gt).cumsum(0))
        return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]]).to(dtype)
    return _sorted_jaccard_grad(gt_sorted.to(torch.int32), dtype)


def flatten_probas(probas: Tensor, labels: Tensor, ignore: int | None = None) -> tuple[Tensor, Tensor]:
    """Flatten ``[B, C, *spatial]`` (or sigmoid ``[B, *spatial]``) to ``[P, C]`` and labels to ``[P]``.

    Pixels labelled ``ignore`` are removed, as in the original (a data-dependent shape:
    the losses themselves mask instead).

    Example:
        >>> probas = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]])  # [B=1, C=2, H=1, W=2]
        >>> flatten_probas(probas, torch.tensor([[[0, 255]]]), ignore=255)
        (tensor([[0.9000, 0.1000]]), tensor([0]))
    """
    _check_prediction(probas, "probas")
    labels = _check_labels(labels, probas, "labels")
    if probas.ndim >= 3:  # [B, 1, H, W] labels of [B, C, H, W] probas: not a sigmoid's [B, *spatial]
        labels = _drop_label_axis(labels, [tuple(probas.shape), tuple(probas.shape[:1] + probas.shape[2:])])
    given = (probas.shape, labels.shape)
    if probas.ndim == labels.ndim:
        probas = probas.unsqueeze(1)
    probas = torch.movedim(probas, 1, -1).reshape(-1, probas.shape[1])
    labels = labels.reshape(-1)
    _check_one_label_each(probas.shape[0], labels.shape[0], *given, "probas")
    ignored = _ignored(labels, V.check_ignore(ignore))
    if ignored is None:
        return probas, labels
    return probas[~ignored], labels[~ignored]


def flatten_binary_scores(scores: Tensor, labels: Tensor, ignore: int | None = None) -> tuple[Tensor, Tensor]:
    """Flatten scores and labels to ``[P]``, removing pixels labelled ``ignore``, as in the original.

    Example:
        >>> scores, labels = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1, 255, 1]])
        >>> flatten_binary_scores(scores, labels, ignore=255)
        (tensor([2.0000, 0.5000]), tensor([1, 1]))
    """
    _check_prediction(scores, "scores")
    labels = _check_labels(labels, scores, "labels")
    given = (scores.shape, labels.shape)
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    _check_one_label_each(scores.shape[0], labels.shape[0], *given, "scores")
    ignored = _ignored(labels, V.check_ignore(ignore))
    if ignored is None:
        return scores, labels
    return scores[~ignored], labels[~ignored]


def _check_one_label_each(pixels: int, labels: int, shape: Sequence[int], labels_shape: Sequence[int], of: str) -> None:
    """The flatten helpers' labels hold one label per pixel (the original crashed inside torch's indexing, or,
    without ``ignore``, returned more pixels than labels)."""
    if pixels != labels:
        raise ValueError(
            f"labels must hold one label per pixel of {of} {V.fmt(shape)} ({pixels}); got {labels} in shape "
            f"{V.fmt(labels_shape)}"
        )


def lovasz_softmax_flat(probas: Tensor, labels: Tensor, classes: Classes = "present") -> Tensor:
    """Lovász-Softmax of flat ``probas [P, C]`` (or sigmoid ``[P]``) against ``labels [P]``.

    See :func:`lovasz_softmax`.

    Example:
        >>> probas = torch.tensor([[0.9, 0.1], [0.4, 0.6]])  # [P=2, C=2]
        >>> lovasz_softmax_flat(probas, torch.tensor([0, 1]))
        tensor(0.3250)
    """
    _check_prediction(probas, "probas")
    labels = _check_labels(labels, probas, "labels")
    if probas.ndim == 2:
        probas = probas.transpose(0, 1)
    return lovasz_softmax(probas.unsqueeze(0), labels.unsqueeze(0), classes=classes, per_image=False)


def lovasz_hinge_flat(logits: Tensor, labels: Tensor) -> Tensor:
    """Lovász hinge of flat ``logits [P]`` against 0/1 ``labels [P]``. See :func:`lovasz_hinge`.

    Example:
        >>> lovasz_hinge_flat(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1, 0, 1]))
        tensor(0.2500)
    """
    _check_prediction(logits, "logits")
    labels = _check_labels(labels, logits, "labels")
    return lovasz_hinge(logits.unsqueeze(0), labels.unsqueeze(0), per_image=False)


# ----------------------------------------------------------------------------- module

MODES = ("binary", "multiclass", "multilabel")


def _class_weights_buffer(class_weights: Weights) -> Tensor | None:
    """``class_weights`` as a ``[C]`` tensor (the modules' buffer), or None; its length is checked against the
    input's classes at each call. A floating tensor is kept as it is, as PyTorch's losses keep ``weight``:
    a copy would leave learned weights behind after the optimiser's step (an ``nn.Parameter`` is registered as
    a parameter, which ``.double()`` and ``.to()`` convert in place); numbers become float32, as a module's
    buffers are (Apple's MPS has no float64); give a float64 tensor for a float64 loss's exact weights."""
    if class_weights is None:
        return None
    if isinstance(class_weights, Tensor) and class_weights.is_floating_point():
        weights = class_weights
    else:
        try:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):  # a string (a file name), a ragged list, a dict
            raise TypeError(
                f"class_weights must be [C] real numbers (one weight per class) or None; got {class_weights!r}"
            ) from None
    if weights.ndim != 1:
        raise ValueError(f"class_weights must be 1-D, one weight per class; got shape {V.fmt(weights.shape)}")
    if weights.is_meta or no_host_values():  # a large model's skeleton (torch.device("meta"), FakeTensorMode): numbers
        if isinstance(class_weights, Tensor):  # checked as they are, a tensor's values when the loss is called
            return weights
        V.check_weight_values(np.asarray(class_weights, dtype=np.float32).tolist(), "class_weights")
        return weights
    V.check_weight_values(weights.tolist(), "class_weights")
    return weights


class _LossModule(nn.Module):
    """An ``nn.Module`` whose loss TorchScript cannot compile: ``torch.jit.script`` gets a clear error
    (it asks every module of a model to prepare itself), not a type annotation it cannot read."""

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            f"torch.jit.script cannot compile {type(self).__name__}: the loss is a custom op called from Python; "
            "use torch.compile, torch.export or torch.jit.trace, or keep the loss outside the scripted model"
        )


class LovaszLoss(_LossModule):
    """Lovász loss as an ``nn.Module`` taking ``(input, target)``, as smp's losses do.

    - ``mode='binary'``: input ``[B, 1, *spatial]`` or ``[B, *spatial]``, target 0/1 of the
      same shape or ``[B, *spatial]``; :func:`lovasz_hinge` on logits, or, with
      ``from_logits=False``, the Lovász-Softmax term of the foreground on probabilities.
    - ``mode='multiclass'``: input ``[B, C, *spatial]``, target ``[B, *spatial]`` class
      indices; :func:`lovasz_softmax` (softmax taken inside with ``from_logits``).
    - ``mode='multilabel'``: input and target ``[B, C, *spatial]``; :func:`lovasz_multilabel`.

    The first four arguments are segmentation-models-pytorch's, in its order and with its
    defaults (``per_image=False`` in every mode), so ``LovaszLoss(mode, per_image,
    ignore_index, from_logits)`` is a drop-in for smp's class. Two differences, on purpose:
    multi-label computes one hinge per channel (smp flattens every channel into one
    hinge), and ``from_logits=False`` is honoured (smp ignores it). ``classes``,
    ``class_weights`` and ``reduction`` are the functions' ``classes``, ``weights`` and
    ``reduction``; ``margin`` and ``symmetric`` are the hinge's variants (binary and
    multi-label modes, see :func:`lovasz_hinge`); ``process_group`` makes a batch-mode loss
    the exact loss of the global batch across ranks (see :func:`lovasz_softmax`).

    MONAI's conventions too: ``include_background=False`` leaves channel 0 out of the class
    average (multiclass and multilabel modes), and in multiclass mode the target may be one-hot,
    ``[B, C, *spatial]`` like the input (each pixel's one 1 marks its class), or a label map
    ``[B, 1, *spatial]``.

    Example:
        >>> loss_fn = LovaszLoss("multiclass")
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> loss = loss_fn(logits, torch.randint(0, 3, (2, 8, 8)))
        >>> loss.backward()
    """

    class_weights: Tensor | None  # a buffer: moves with the module's .to()

    def __init__(
        self,
        mode: str = "multiclass",
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
        *,
        classes: Classes = "present",
        class_weights: Weights = None,
        reduction: str = "mean",
        margin: str = "relu",
        symmetric: bool = False,
        process_group: ProcessGroup | None = None,
        include_background: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        include_background = V.check_flag(include_background, "include_background")
        if mode == "binary" and not include_background:
            raise ValueError("include_background=False leaves out channel 0 of several; mode='binary' has one")
        if mode == "binary" and (class_weights is not None or not isinstance(classes, str)):
            raise ValueError(
                "classes and class_weights choose and weigh classes among several; mode='binary' has one channel, "
                f"always counted; got classes={classes!r}, class_weights={class_weights!r}"
            )
        self.include_background = include_background
        if not isinstance(classes, str):
            classes = list(classes)
        V.check_classes(classes, None)  # the form only; the range is checked against the input
        self.mode = mode
        self.from_logits = V.check_flag(from_logits, "from_logits")
        self.per_image = V.check_flag(per_image, "per_image")
        self.classes = classes
        self.ignore_index = V.check_ignore(ignore_index, "ignore_index")
        self.reduction = V.check_reduction(reduction)
        # (on probabilities, from_logits=False, the variants of the hinge are refused here, not at the first call)
        self.margin, self.symmetric = V.check_hinge_variant(margin, symmetric, self.from_logits or mode == "multiclass")
        if mode == "multiclass" and (self.margin != "relu" or self.symmetric):
            raise ValueError(
                "margin and symmetric are variants of the hinge (modes 'binary' and 'multilabel'); "
                f"got margin={margin!r}, symmetric={symmetric} with mode='multiclass'"
            )
        self.process_group = process_group
        weights = _class_weights_buffer(class_weights)
        if isinstance(weights, nn.Parameter):  # learned: .double() / .to() convert it in place, as a layer's
            self.register_parameter("class_weights", weights)
        else:
            self.register_buffer("class_weights", weights)

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        batch: Tensor | None = None,
        offsets: Tensor | None = None,
        num_scenes: int | None = None,
    ) -> Tensor:
        """The loss of ``input`` against ``target``; ``batch`` / ``offsets`` / ``num_scenes`` mark
        the scenes of points-first inputs (point clouds), as in :func:`lovasz_softmax`; jagged nested
        tensors (``torch.nested``, ``layout=torch.jagged``) of scenes ``[S, j, ...]`` are points of scenes."""
        input, target, scenes = _inputs(input, target, (batch, offsets, num_scenes))
        if self.mode == "multiclass":
            target = class_indices(input, target)
        options = (
            self.per_image,
            self.ignore_index,
            self.from_logits,
            self._class_weights(input),
            self.reduction,
            self.process_group,
            ("input", "target", "class_weights"),
        )
        if self.mode == "multiclass":
            return _softmax(input, target, self.classes, *options, scenes)
        if self.mode == "multilabel":
            return _multilabel(input, target, self.classes, *options, self.margin, self.symmetric, scenes)
        return self._binary(input, target, scenes)

    def _class_weights(self, input: Tensor) -> Tensor | None:
        """``class_weights``, with channel 0's made 0 where ``include_background`` is False: a weight of 0
        takes a class out of the average, present or not."""
        if self.include_background or not isinstance(input, Tensor) or input.ndim < 2:
            return self.class_weights
        if input.shape[1] == 1:  # (the weights would be one channel's, against the two classes it is read as)
            raise ValueError(
                f"include_background=False leaves out channel 0 of several; input {V.fmt(input.shape)} has one "
                "channel (a foreground score, read as two classes)"
            )
        weights = self.class_weights if self.class_weights is not None else input.new_ones(input.shape[1])
        return weights.index_fill(0, weights.new_zeros(1, dtype=torch.int64), 0)

    def _binary(self, input: Tensor, target: Tensor, scenes: tuple) -> Tensor:
        _check_prediction(input, "input")
        if not all(value is None for value in scenes):  # points [N] or [N, 1]: one channel of [N, C]
            how = "in binary mode with batch=/offsets= (mode='multilabel' takes [N, C])"
            V.hinge_points(input.shape, how, "input")
            if isinstance(target, Tensor) and input.ndim in (1, 2) and not _one_score_each(target, input.shape[0]):
                raise ValueError(
                    f"target must be [N] (or [N, 1]) for input of shape {V.fmt(input.shape)} {how}; "
                    f"got {V.fmt(target.shape)}"
                )
            input = input.unsqueeze(1) if input.ndim == 1 else input
            target = target.unsqueeze(1) if isinstance(target, Tensor) and target.ndim == 1 else target
            options = (self.per_image, self.ignore_index, self.from_logits, None, self.reduction, self.process_group)
            names = ("input", "target", "class_weights")
            return _multilabel(input, target, "all", *options, names, self.margin, self.symmetric, scenes)
        if input.ndim < 1:
            raise ValueError("input must be [B, *spatial] or [B, 1, *spatial] in binary mode; got a 0-d tensor")
        target = _check_labels(target, input, "target")
        given = target.shape
        # [B, *spatial] pixels, also for a [B, 1, *spatial] input; a size-1 axis of the target's own (as
        # lovasz_hinge takes it, [B, *spatial, 1] or [B, 1, *spatial]) is dropped
        pixels = _binary_pixels(input)
        target = _drop_label_axis(target, [tuple(input.shape), pixels])
        if tuple(target.shape) == pixels:
            target = target.reshape(input.shape)
        if input.shape != target.shape:
            raise ValueError(
                f"target must have the shape of input {V.fmt(input.shape)} in binary mode (or that shape "
                f"without the channel dim for a [B, 1, *spatial] input); got {V.fmt(given)}"
            )
        batch, pixels = input.shape[0], math.prod(input.shape[1:])
        # One channel, always counted: the Lovász hinge on logits, the foreground term on probabilities.
        return _multilabel(
            input.reshape(batch, 1, pixels),
            target.reshape(batch, 1, pixels),
            "all",
            self.per_image,
            self.ignore_index,
            self.from_logits,
            None,
            self.reduction,
            self.process_group,
            ("input", "target", "class_weights"),
            self.margin,
            self.symmetric,
        )

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, from_logits={self.from_logits}, per_image={self.per_image}, "
            f"classes={self.classes!r}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
            + (f", margin={self.margin!r}" if self.margin != "relu" else "")
            + (", symmetric=True" if self.symmetric else "")
            + (", include_background=False" if not self.include_background else "")
        )


def _one_score_each(target: Tensor, points: int) -> bool:
    """``target`` is ``[points]`` or ``[points, 1]``: a binary label per point."""
    return target.ndim in (1, 2) and target.shape[0] == points and target.shape[1:] in ((), (1,))


def _inputs(input: Tensor, target: Tensor, scenes: tuple) -> tuple[Tensor, Tensor, tuple]:
    """A module's ``input`` and ``target`` checked, jagged nested tensors of scenes as points with offsets."""
    input, target, scenes = _torch_scenes.from_nested(input, target, scenes, ("input", "target"))
    _check_prediction(input, "input")
    if isinstance(target, Tensor):
        _check_dense(target, "target")
    return input, target, scenes


def class_indices(input: Tensor, target: Tensor) -> Tensor:
    """A multiclass ``target`` in MONAI's forms as class indices ``[B, ...]``: one-hot, shaped like ``input
    [B, C, ...]`` (C > 1; each pixel must hold one 1 and zeros), or a label map ``[B, 1, ...]``; any other
    target as it is."""
    if not (isinstance(input, Tensor) and isinstance(target, Tensor)):
        return target
    if input.ndim < 2 or input.shape[1] < 2:
        return target
    if target.ndim == input.ndim and target.shape[1] == 1 and target.shape[2:] == input.shape[2:]:
        return target.squeeze(1)
    if target.ndim != input.ndim or target.shape != input.shape:  # ranks first: torch.export would guard C == H
        return target
    if target.dtype == torch.bool or not target.is_floating_point():
        ones = target.to(torch.int64)
    else:
        ones = target
    ok = ((ones == 0) | (ones == 1)).all(1) & (ones.sum(1) == 1)
    # (under torch.compile with dynamic shapes a size is symbolic: str() of it breaks the graph)
    shape = "" if torch.compiler.is_compiling() else f" {V.fmt(input.shape)}"
    message = f"a target shaped like the input{shape} must be one-hot (one 1 and zeros over dim 1)"
    if not _values_on_host(ok):  # (no host sync: raises when it runs)
        torch._assert_async(ok.all(), message)
    elif not bool(_unbatched(ok).all()):
        raise ValueError(f"{message}; {int((~_unbatched(ok)).sum())} pixels are not")
    return ones.argmax(1)


# ----------------------------------------------------------------------------- cross-entropy + Lovász


def _zero_where_ignored(x: Tensor, valid: Tensor | None, class_axis: int | None = None) -> Tensor:
    """Logits ``x`` with 0 at the ignored pixels (``valid`` False; broadcast over ``class_axis``): a NaN or an
    infinity there (a ``masked_fill`` with -inf) made the masked cross-entropy NaN (``NaN * 0``), and its
    gradient, as ``F.cross_entropy(ignore_index=)`` does not."""
    if valid is None:
        return x
    return torch.where(valid if class_axis is None else valid.unsqueeze(class_axis), x, 0)


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean that is 0 (not NaN) when every weight is 0, e.g. every pixel ignored."""
    total = weights.sum()
    return (values * weights).sum() / torch.where(total > 0, total, torch.ones_like(total))


class CrossEntropyLovaszLoss(_LossModule):
    """``ce_weight * cross-entropy + lovasz_weight * Lovász`` on logits, one ``ignore_index`` for both.

    - ``mode='multiclass'``: softmax cross-entropy and :func:`lovasz_softmax` (input
      ``[B, C, *spatial]``, target ``[B, *spatial]`` class indices).
    - ``mode='binary'``: binary cross-entropy with logits and :func:`lovasz_hinge`.
    - ``mode='multilabel'``: binary cross-entropy per channel and :func:`lovasz_multilabel`.

    ``per_image``, ``classes``, ``ignore_index``, ``class_weights``, ``margin``, ``symmetric``, ``process_group`` and
    ``include_background`` are those of :class:`LovaszLoss` (a one-hot target too); ``class_weights`` also
    weigh the cross-entropy (``include_background``, as in MONAI's DiceCELoss, only the Lovász term): a
    weighted mean, over pixels by their target's weight in multiclass mode (as PyTorch's ``weight``), over
    pixels and channels by the channel's weight in multilabel mode (``BCEWithLogitsLoss(weight=)`` divides
    by their count instead, not by the weights' sum). Ignored pixels take no part in either
    term; a batch with every pixel ignored gives 0, not NaN. Both weights are plain
    attributes, so :class:`lovasz.schedule.LovaszSchedule` can change them between steps;
    a term whose weight is 0 is not computed.

    Example:
        >>> loss_fn = CrossEntropyLovaszLoss("multiclass", ignore_index=255)
        >>> logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
        >>> loss = loss_fn(logits, torch.tensor([[[0, 1], [2, 255]]]))
        >>> round(loss.item(), 4)  # ln 3 + 2/3
        1.7653
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ce_weight: float = 1.0,
        lovasz_weight: float = 1.0,
        per_image: bool = False,
        classes: Classes = "present",
        ignore_index: int | None = None,
        class_weights: Weights = None,
        margin: str = "relu",
        symmetric: bool = False,
        process_group: ProcessGroup | None = None,
        include_background: bool = True,
    ):
        super().__init__()
        self.lovasz = LovaszLoss(
            mode,
            from_logits=True,
            per_image=per_image,
            classes=classes,
            ignore_index=ignore_index,
            class_weights=class_weights,
            margin=margin,
            symmetric=symmetric,
            process_group=process_group,
            include_background=include_background,
        )
        self.mode = mode
        self.ce_weight, self.lovasz_weight = ce_weight, lovasz_weight

    def __setstate__(self, state: dict) -> None:
        # (a module pickled before the weights were checked properties holds them as plain attributes)
        for name in ("ce_weight", "lovasz_weight"):
            if name in state:
                state["_" + name] = state.pop(name)
        super().__setstate__(state)

    @property
    def ce_weight(self) -> float:
        """The cross-entropy term's weight (set it between steps, as a schedule does: it is checked)."""
        return self._ce_weight

    @ce_weight.setter
    def ce_weight(self, value: float) -> None:
        self._ce_weight = V.check_term_weight(value, "ce_weight")

    @property
    def lovasz_weight(self) -> float:
        """The Lovász term's weight (set it between steps, as a schedule does: it is checked)."""
        return self._lovasz_weight

    @lovasz_weight.setter
    def lovasz_weight(self, value: float) -> None:
        self._lovasz_weight = V.check_term_weight(value, "lovasz_weight")

    @property
    def ignore_index(self) -> int | None:
        """The one ``ignore_index`` of both terms (the Lovász term's: set here, it changes both)."""
        return self.lovasz.ignore_index

    @ignore_index.setter
    def ignore_index(self, value: int | None) -> None:
        self.lovasz.ignore_index = V.check_ignore(value, "ignore_index")

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        batch: Tensor | None = None,
        offsets: Tensor | None = None,
        num_scenes: int | None = None,
    ) -> Tensor:
        """The weighted sum; ``batch`` / ``offsets`` / ``num_scenes`` mark the scenes of
        points-first inputs (point clouds, ``[N, C]``), which the Lovász term takes per scene
        with ``per_image=True`` (the cross-entropy is a mean over all points either way), also given as
        jagged nested tensors of scenes ``[S, j, ...]``."""
        input, target, (batch, offsets, num_scenes) = _inputs(input, target, (batch, offsets, num_scenes))
        if self.mode == "multiclass":
            target = class_indices(input, target)
        total = input.new_zeros((), dtype=_compute_dtype(input))
        if self.lovasz_weight:  # first: it checks the target's values and shape, and names what is wrong
            scenes = {"batch": batch, "offsets": offsets, "num_scenes": num_scenes}
            total = total + self.lovasz_weight * self.lovasz(input, target, **scenes).to(total.dtype)
        if self.ce_weight:
            total = total + self.ce_weight * self.cross_entropy(input, target)
        if not (self.ce_weight or self.lovasz_weight):
            total = total + 0 * input.sum()  # keeps the graph, so backward() still works
        return total.to(_result_dtype(input))  # (half precision: rounded once, as each term alone)

    def cross_entropy(self, input: Tensor, target: Tensor) -> Tensor:
        """The cross-entropy term alone: a mean over the non-ignored pixels (float64 in float64, else float32).
        In multiclass mode one channel is the foreground's logit, as for the Lovász term: a binary
        cross-entropy. With ``process_group`` in batch mode, the mean over every rank's pixels (each rank's
        gradient its slice of the single-process one, as the Lovász term's)."""
        x = input.to(_compute_dtype(input))
        # (refused as the Lovász term refuses them: it may be off, a weight of 0 or a schedule's warm-up)
        if self.mode == "binary" and x.ndim < 1:
            raise ValueError("input must be [B, *spatial] or [B, 1, *spatial] in binary mode; got a 0-d tensor")
        if self.mode != "binary" and (x.ndim < 2 or x.shape[1] == 0):
            raise ValueError(
                f"input must be [B, C, *spatial] (or points [N, C]) with C >= 1 in {self.mode} mode; "
                f"got {V.fmt(input.shape)}"
            )
        classes = 2 if self.mode == "binary" or (self.mode == "multiclass" and x.shape[1] == 1) else x.shape[1]
        weights = _as_weights(self.lovasz.class_weights, classes, x.dtype, x.device, "class_weights")
        target = _check_labels(target, input, "target")
        if self.mode == "multiclass" and x.ndim >= 2:
            target = _drop_label_axis(target, [tuple(x.shape[:1] + x.shape[2:])])  # [B, H, W, 1], as LovaszLoss
        elif self.mode == "binary":  # a size-1 axis of the target's own, as LovaszLoss('binary') drops it
            target = _drop_label_axis(target, [tuple(x.shape), _binary_pixels(x)])
        ignored = _ignored(target, self.ignore_index)
        valid = None if ignored is None else ~ignored
        if self.mode == "multiclass" and x.ndim >= 2 and x.shape[1] > 1:
            if x.shape[:1] + x.shape[2:] != target.shape:
                raise ValueError(
                    f"target must have shape {V.fmt(x.shape[:1] + x.shape[2:])} to match input "
                    f"{V.fmt(x.shape)} (class indices); got {V.fmt(target.shape)}"
                )
            _check_whole(target, valid, "target")
            in_range = (target >= 0) & (target < x.shape[1])
            _check_values(target, valid, f"in [0, {x.shape[1] - 1}]", in_range, "target")
            safe = target.long() if valid is None else torch.where(valid, target.long(), 0)
            pixel_weight = torch.ones_like(x[:, 0]) if weights is None else weights[safe]
            values = F.cross_entropy(_zero_where_ignored(x, valid, 1), safe, reduction="none")
        else:
            if self.mode != "multilabel" and x.ndim == target.ndim + 1 and x.shape[1] == 1:
                x = x.squeeze(1)
            if x.shape != target.shape:
                raise ValueError(f"target must have the shape of input {V.fmt(x.shape)}; got {V.fmt(target.shape)}")
            _check_values(target, valid, "0 or 1", (target == 0) | (target == 1), "target")
            safe = target.to(x.dtype) if valid is None else torch.where(valid, target.to(x.dtype), 0.0)
            pixel_weight = torch.ones_like(x)
            if weights is not None and self.mode == "multilabel":
                pixel_weight = pixel_weight * weights.view(1, -1, *([1] * (x.ndim - 2)))
            elif weights is not None and self.mode == "multiclass":  # one channel: the target's class, 0 or 1
                pixel_weight = weights[safe.long()]
            values = F.binary_cross_entropy_with_logits(_zero_where_ignored(x, valid), safe, reduction="none")
        if valid is not None:
            pixel_weight = pixel_weight * valid
        group = self.lovasz.process_group
        if group is not None and not self.lovasz.per_image:  # the global batch's mean, as the Lovász term's
            from lovasz._torch_distributed import global_mean

            return global_mean(values, pixel_weight, group)
        return _masked_mean(values, pixel_weight)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ce_weight={self.ce_weight}, lovasz_weight={self.lovasz_weight}"
