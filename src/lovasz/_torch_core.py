"""The one op behind every PyTorch loss: ``lovasz::lovasz_loss``, a ``torch.library`` custom op.

A *row* is one (set, class) pair: the pixels of one image (``per_image``) or of
the whole batch, for one class. Rows are read in a ``[S, R, N]`` layout, row
``r`` being ``[:, r, :]`` (batch mode: ``S`` = images, ``R`` = classes; per image:
``S = 1``, ``R`` = images x classes), which is the prediction's own ``[B, C, N]``
memory: no transpose.

The op computes the loss of each set and, in the same pass, its exact gradient,
so that backward is one multiply and that gradient is all it keeps:

- the softmax (for logits) is taken inside, and the gradient through it is
  computed chunk by chunk from the logits, so neither the probabilities nor
  their gradient outlive the forward pass;
- the class weights and averages are folded into the gradient in forward;
- the gradient overwrites the op's own temporaries (the probabilities).

The rows themselves go one of three ways:

- float32 on CPU: the C kernel ``_kernel.c`` (through ``_ckernel``) (two-level radix sort, zero errors
  left out of the sort), blocks of rows on ``torch.get_num_threads()`` threads;
- float32 on a CUDA GPU with Triton installed: ``_triton_rows``, Triton kernels around
  one ``torch.sort`` (each pass of the path below fused into three), for images and for
  points of scenes alike; the softmax's backward (``from_logits=True``) in one more,
  ``_triton_softmax``;
- elsewhere (float64, or neither of the above): ``torch.sort`` of integer keys.
  Non-negative float bits sort like the floats, and the sort is stable; ignored
  pixels get the largest key and sort last, where their error is zero, so every
  shape is static; rows go through in chunks to cap the memory.

Every path orders tied errors by pixel index (as the oracle's stable argsort does), so that
each gives the same (sub)gradient at ties, which a saturated softmax makes common; and every
path gives a NaN gradient where an error is NaN (a NaN prediction at a valid pixel), as
torch's own losses do, ignored pixels keeping their exact zero.

The gradient ``J(k) - J(k-1)`` is computed in closed form from the counts,
exact to a few ulps where the usual difference of two Jaccard values loses
digits to cancellation on large rows.
"""

from __future__ import annotations

import functools
import importlib
import os

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (the op's first call would import it: a Ctrl-C there left it half-imported)
import torch.nn.functional as F
from torch import Tensor
from torch._functorch.utils import unwrap_dead_wrappers

from lovasz import _ckernel as C
from lovasz._codes import FOREGROUND, IGNORED

C.kernel()  # loaded with the module, not inside a first call that a Ctrl-C could interrupt


# Elements per chunk, for the rows of the torch.sort path and for the softmax's gradient.
# On CPU, small chunks keep temporaries in cache and the peak low. On a GPU, big chunks keep
# the device busy, but each element of a chunk holds 30 to 60 bytes of temporaries (the keys,
# sorted keys, the int64 permutation and the sort's scratch): a sixteenth of the input,
# between 4M and 32M elements, keeps them under a few bytes per input element. Under 12M
# elements a third of the input (from 2M) keeps them under the 20 bytes or so per input
# element that the original holds for autograd.
_CHUNK_ELEMENTS = {"cpu": 1 << 21}


def _chunk_elements(device: torch.device, total: int = 0) -> int:
    if device.type in _CHUNK_ELEMENTS:
        return _CHUNK_ELEMENTS[device.type]
    return min(max(1 << 22, min(total // 16, 1 << 25)), max(total // 3, 1 << 21))


def even_chunks(num_rows: int, most: int) -> int:
    """Rows per chunk: as few chunks of at most ``most`` rows as hold ``num_rows``, as even as they go
    (19 rows at most 8 a chunk: 7, 7, 5, not 8, 8, 3), so the largest, which sets the peak, is small."""
    chunks = max(-(-num_rows // max(most, 1)), 1)
    return max(-(-num_rows // chunks), 1)


_KEY_DTYPE = {torch.float32: torch.int32, torch.float64: torch.int64}


def _use_c_kernel(pred: Tensor) -> bool:
    if pred.device.type != "cpu" or pred.dtype != torch.float32:
        return False
    if C.kernel() is None:
        C.warn_missing("lovasz.torch")
        return False
    return C.applies(np.float32, pred.numel())


@functools.cache
def _triton(module: str):
    """A Triton module of lovasz (``_triton_rows``, ``_triton_softmax``), or None where Triton is not
    installed or ``LOVASZ_TRITON=0``."""
    if os.environ.get("LOVASZ_TRITON", "1") == "0":
        return None
    try:
        return importlib.import_module(f"lovasz.{module}")
    except ImportError:
        return None


def _use_triton(pred: Tensor) -> bool:
    return pred.device.type == "cuda" and pred.dtype == torch.float32 and _triton("_triton_rows") is not None


def _rows_c(pred: Tensor, codes: Tensor, hinge: bool, grad: Tensor | None) -> tuple[Tensor, Tensor]:
    """The C path: loss and presence of each row of ``[S, R, N]`` inputs, gradient into ``grad``."""
    loss, present = C.lovasz_rows(
        pred.detach().numpy(),
        codes.numpy(),
        C.HINGE if hinge else C.SOFTMAX,
        None if grad is None else grad.detach().numpy(),
        torch.get_num_threads(),
    )
    return torch.from_numpy(loss), torch.from_numpy(present)


def _scans_flat(fg_sorted: Tensor) -> bool:
    """Whether the rows' running counts are one flat scan: a GPU scans a few long rows one block per row
    (19 rows of 4M pixels: 57 ms on an H100), but a flat tensor at full width. Tests patch this to run
    the GPU's arithmetic on the CPU."""
    return fg_sorted.ndim > 1 and fg_sorted.device.type != "cpu"


def _sorted_jaccard_grad(fg_sorted: Tensor, dtype: torch.dtype) -> Tensor:
    """``J(k) - J(k-1)`` along the last dim for 0/1 ``fg_sorted`` (int), with ``J(0) = 0``.

    With ``F`` the foreground count and ``U`` the union of the first k pixels:
    a foreground pixel adds ``1 / U``; a background pixel adds ``I / (U (U - 1))``
    where ``I`` is the intersection. Both are exact ratios of integers.
    """
    num_pixels = fg_sorted.shape[-1]
    count_dtype = torch.int64 if fg_sorted.numel() >= 1 << 31 else torch.int32
    if not _scans_flat(fg_sorted):
        fg_cum = fg_sorted.cumsum(-1, dtype=count_dtype)
    else:
        # Scan it flat, then subtract each row's start (the rows' first counts, as integers: a bool
        # tensor takes no subtraction).
        flat = fg_sorted.reshape(-1, num_pixels)
        fg_cum = flat.reshape(-1).cumsum(0, dtype=count_dtype).view_as(flat)
        fg_cum = fg_cum.sub_(fg_cum[:, :1] - flat[:, :1].to(count_dtype)).view(fg_sorted.shape)
    gts = fg_cum[..., -1:]
    intersection = (gts - fg_cum).to(dtype)
    k = torch.arange(1, num_pixels + 1, device=fg_sorted.device, dtype=fg_cum.dtype)
    union = (gts + k - fg_cum).to(dtype)
    background_step = intersection / (union * (union - 1).clamp_min_(1))
    grad = torch.where(fg_sorted.bool(), union.reciprocal(), background_step)
    # The first step is J(1) itself; the formula above divides by U(0), which is 0 without foreground.
    grad[..., 0] = 1 - intersection[..., 0] / union[..., 0]
    return grad


def _rows_per_chunk(num_rows: int, num_pixels: int, device: torch.device) -> int:
    rows = max(_chunk_elements(device, num_rows * num_pixels) // max(num_pixels, 1), 1)
    if device.type == "cpu":
        rows = max(rows, torch.get_num_threads())  # torch.sort parallelises over rows
    return even_chunks(num_rows, rows)


def _keys(pred: Tensor, codes: Tensor, hinge: bool, want_slope: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """Each pixel's sort key (ascending = errors descending, ignored pixels last; a stable sort leaves
    ties in pixel order, as every path does), d error / d pred if ``want_slope``, and the foreground mask."""
    fg, ignored = codes == FOREGROUND, codes == IGNORED
    margin = torch.where(fg, 1 - pred, 1 + pred if hinge else pred)  # signed: its sign gives the slope
    errors = margin.clamp_min(0) if hinge else margin.abs()
    # d error / d pred: -1 for foreground, +1 for background, times d error / d margin (0 where the error
    # is 0); NaN where the error is NaN (a NaN prediction at a valid pixel), as torch's own losses give.
    slope = None
    if want_slope:
        slope = (margin > 0) if hinge else margin.sign()
        slope = slope.to(pred.dtype).mul_(1 - 2 * fg.to(pred.dtype)).masked_fill_(margin.isnan(), float("nan"))
        slope.masked_fill_(ignored, 0)
    del margin
    key_dtype = _KEY_DTYPE[errors.dtype]
    int_max = torch.iinfo(key_dtype).max
    # Non-negative float bits sort like the floats; clearing the sign bit turns -0.0 into 0.0.
    key = errors.view(key_dtype).bitwise_and_(int_max)
    return key.bitwise_not_().masked_fill_(ignored, int_max), slope, fg


def _decode(key_sorted: Tensor, dtype: torch.dtype) -> Tensor:
    """The errors of sorted keys (ignored pixels: -0.0 errors, which add nothing)."""
    return key_sorted.bitwise_not_().view(dtype)


def _chunk(pred: Tensor, codes: Tensor, hinge: bool, grad_out: Tensor | None) -> tuple[Tensor, Tensor]:
    """The torch.sort path for ``[r, N]`` rows: loss and presence; writes d loss / d pred into ``grad_out``."""
    key, slope, fg = _keys(pred, codes, hinge, grad_out is not None)
    key_sorted, perm = torch.sort(key, dim=-1, stable=True)
    del key
    errors_sorted = _decode(key_sorted, pred.dtype)
    grad = _sorted_jaccard_grad(fg.gather(-1, perm), pred.dtype)
    loss = (errors_sorted * grad).sum(-1)
    if grad_out is not None and slope is not None:  # the slope comes with grad_out
        grad_out.scatter_(-1, perm, grad).mul_(slope)
    return loss, fg.any(-1)


def _rows_torch(pred: Tensor, codes: Tensor, hinge: bool, grad: Tensor | None) -> tuple[Tensor, Tensor]:
    """The torch.sort path: loss and presence of each row of ``[S, R, N]`` inputs, gradient into ``grad``."""
    sets, num_rows, num_pixels = pred.shape
    step = _rows_per_chunk(num_rows, sets * num_pixels, pred.device)
    losses, present = [], []
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        # [r, S*N]: a view per image (S = 1), a copy of this chunk's rows in batch mode.
        pred_rows = pred[:, start:stop].transpose(0, 1).reshape(stop - start, -1)
        code_rows = codes[:, start:stop].transpose(0, 1).reshape(stop - start, -1)
        grad_rows = None
        if grad is not None:  # scatter fills every entry
            grad_rows = grad[0, start:stop] if sets == 1 else pred.new_empty(stop - start, sets * num_pixels)
        loss, has_fg = _chunk(pred_rows, code_rows, hinge, grad_rows)
        if grad is not None and grad_rows is not None and sets > 1:
            grad[:, start:stop].copy_(grad_rows.view(stop - start, sets, num_pixels).transpose(0, 1))
        losses.append(loss)
        present.append(has_fg)
    return torch.cat(losses), torch.cat(present)


def _lovasz_rows(pred: Tensor, codes: Tensor, hinge: bool, grad: Tensor | None) -> tuple[Tensor, Tensor]:
    """Loss and presence of each row ``[:, r, :]`` of ``[S, R, N]`` inputs; d loss_r / d pred into ``grad``."""
    sets, num_rows, num_pixels = pred.shape
    if pred.numel() == 0:  # no pixel, or no row (no class asked for): nothing to sort
        if grad is not None:
            grad.zero_()
        return pred.new_zeros(num_rows), codes.new_zeros(num_rows, dtype=torch.bool)
    if _use_c_kernel(pred):
        return _rows_c(pred, codes, hinge, grad)
    if _use_triton(pred):
        return _triton("_triton_rows").rows(
            pred, codes, hinge, grad, _rows_per_chunk(num_rows, sets * num_pixels, pred.device)
        )
    return _rows_torch(pred, codes, hinge, grad)


# ----------------------------------------------------------------------------- points of scenes
# Points-first sets (point clouds): a class's row holds every point, scene s the run
# [ends[s - 1], ends[s]). Sorting each row by (scene, key) keeps every scene in its own run,
# so one sort serves all (scene, class) rows and the runs' bounds are known before it.


def scene_of_points(ends: Tensor, num_points: int) -> Tensor:
    """Each point's scene ``[N]``: the ``s`` with ``ends[s - 1] <= n < ends[s]``."""
    return torch.searchsorted(ends, torch.arange(num_points, device=ends.device), right=True)


def scene_sizes(ends: Tensor) -> Tensor:
    """Each scene's number of points ``[S]``, from the scenes' ``ends`` (negative where they fall)."""
    return torch.diff(ends, prepend=ends.new_zeros(1))


def per_point(values: Tensor, ends: Tensor, num_points: int, dim: int = 0) -> Tensor:
    """Each point's own scene's entry of ``values`` (one per scene along ``dim``), repeated over the scene's
    run of points: ``num_points`` along ``dim`` (no host sync: the size is given). One scene's entry is
    returned as it is, to broadcast."""
    if values.shape[dim] == 1:
        return values
    return values.repeat_interleave(scene_sizes(ends), dim=dim, output_size=num_points)


def scene_sums(values: Tensor, ends: Tensor) -> Tensor:
    """Sums ``[..., S]`` of each scene's run of ``values [..., N]``: differences of a float64
    running sum (no atomics, so the same on every run)."""
    running = F.pad(values.to(torch.float64).cumsum(-1), (1, 0))
    starts = F.pad(ends[:-1], (1, 0))
    return (running.index_select(-1, ends) - running.index_select(-1, starts)).to(values.dtype)


def _sort_within_scenes(key: Tensor, scene: Tensor) -> tuple[Tensor, Tensor]:
    """``key [r, N]`` sorted ascending within each scene's run, and the permutation."""
    if key.dtype == torch.int32:  # one sort: the scene above the key's bits, shifted to unsigned order
        both = (scene.to(torch.int64) << 32) | (key.to(torch.int64) + (1 << 31))
        both, perm = torch.sort(both, dim=-1, stable=True)  # stable: ties in point order
        return (both & 0xFFFFFFFF).sub_(1 << 31).to(torch.int32), perm
    _, perm = torch.sort(key, dim=-1, stable=True)  # 64-bit keys leave no room: by key, then stably by scene
    _, by_scene = torch.sort(scene.expand_as(key).gather(-1, perm), dim=-1, stable=True)
    perm = perm.gather(-1, by_scene)
    return key.gather(-1, perm), perm


def _scene_jaccard_grad(fg_sorted: Tensor, dtype: torch.dtype, ends: Tensor, scene: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_sorted_jaccard_grad` within each scene's run; also each (row, scene)'s foreground count."""
    num_points = fg_sorted.shape[-1]
    running = F.pad(fg_sorted.cumsum(-1), (1, 0))  # running[:, i]: foreground among the first i
    starts = F.pad(ends[:-1], (1, 0))
    gts_scene = running.index_select(-1, ends) - running.index_select(-1, starts)
    start = starts.index_select(0, scene)
    fg_cum = running[:, 1:] - running.index_select(-1, start)
    gts = gts_scene.index_select(-1, scene)
    k = torch.arange(1, num_points + 1, device=fg_sorted.device) - start  # position within the scene, from 1
    intersection = (gts - fg_cum).to(dtype)
    union = (gts + k - fg_cum).to(dtype)
    background_step = intersection / (union * (union - 1).clamp_min_(1))
    grad = torch.where(fg_sorted.bool(), union.reciprocal(), background_step)
    return torch.where(k == 1, 1 - intersection / union, grad), gts_scene


def _scene_rows_torch(pred: Tensor, codes: Tensor, ends: Tensor, hinge: bool, grad: Tensor | None):
    """The torch.sort path of :func:`_scene_rows`."""
    num_rows, num_points = pred.shape
    scene = scene_of_points(ends, num_points)
    step = _rows_per_chunk(num_rows, num_points, pred.device)
    losses, present = [], []
    for start in range(0, num_rows, step):
        rows = slice(start, min(start + step, num_rows))
        key, slope, fg = _keys(pred[rows], codes[rows], hinge, grad is not None)
        key_sorted, perm = _sort_within_scenes(key, scene)
        del key
        errors_sorted = _decode(key_sorted, pred.dtype)
        step_grad, gts = _scene_jaccard_grad(fg.gather(-1, perm), pred.dtype, ends, scene)
        losses.append(scene_sums(errors_sorted * step_grad, ends))
        present.append(gts > 0)
        if grad is not None and slope is not None:  # the slope comes with grad
            grad[rows].scatter_(-1, perm, step_grad).mul_(slope)
    return torch.cat(losses).T, torch.cat(present).T


def _scene_rows(pred: Tensor, codes: Tensor, ends: Tensor, hinge: bool, grad: Tensor | None) -> tuple[Tensor, Tensor]:
    """Loss and presence ``[S, K]`` of each (scene, class) row of ``pred [K, N]`` (see above);
    d loss / d pred into ``grad``."""
    if pred.numel() == 0 or ends.numel() == 0:
        if grad is not None:
            grad.zero_()
        shape = (ends.shape[0], pred.shape[0])
        return pred.new_zeros(shape), codes.new_zeros(shape, dtype=torch.bool)
    if _use_c_kernel(pred) and C.scene_kernel() is not None:
        loss, present = C.lovasz_scene_rows(
            pred.detach().numpy(),
            codes.numpy(),
            ends.numpy(),
            C.HINGE if hinge else C.SOFTMAX,
            None if grad is None else grad.detach().numpy(),
            torch.get_num_threads(),
        )
        return torch.from_numpy(loss), torch.from_numpy(present)
    if _use_triton(pred):
        num_rows, num_points = pred.shape
        return _triton("_triton_rows").scene_rows(
            pred,
            codes,
            ends,
            hinge,
            grad,
            _rows_per_chunk(num_rows, num_points, pred.device),
        )
    return _scene_rows_torch(pred, codes, ends, hinge, grad)


_TRITON_MAX_CHANNELS = 1024  # a pixel's channels are one tile of registers there


def _softmax_backward_(grad: Tensor, logits: Tensor, scale: Tensor | None) -> None:
    """``grad [B, C, N]`` := the gradient w.r.t. ``logits``, given ``grad / scale`` w.r.t. their softmax.

    The softmax is recomputed in chunks (several images, or part of one), so that no
    temporary is the size of the input and the probabilities are not kept: ``scale``
    is ``[B, C, 1]`` or None.
    """
    batch, channels, num_pixels = grad.shape
    if _use_triton(grad) and channels <= _TRITON_MAX_CHANNELS:
        _triton("_triton_softmax").softmax_backward_(grad, logits, scale)
        return
    # Each temporary at most an eighth of the input: a few chunks, and a peak close to the input's size.
    budget = min(_chunk_elements(grad.device, grad.numel()), max(grad.numel() // 8, 1))
    if channels * num_pixels <= budget:  # whole images
        images = budget // max(channels * num_pixels, 1)
        chunks = [(slice(b, b + images), slice(None)) for b in range(0, batch, images)]
    else:  # runs of pixels of one image
        step = max(budget // channels, 1)
        chunks = [
            (slice(b, b + 1), slice(start, start + step)) for b in range(batch) for start in range(0, num_pixels, step)
        ]
    for images, pixels in chunks:
        g = grad[images, :, pixels]
        if scale is not None:
            g.mul_(scale[images])
        # NaN where the logits hold NaN or inf: 0 instead, so an ignored pixel's zero gradient stays 0
        # (a pixel that is not ignored has made the loss NaN already).
        probs = logits[images, :, pixels].softmax(1).nan_to_num_(0.0)
        g.copy_(torch._softmax_backward_data(g, probs, 1, probs.dtype))


def _set_losses(
    pred: Tensor,
    codes: Tensor,
    row_weights: Tensor,
    hinge: bool,
    softmax: bool,
    per_image: bool,
    present_only: bool,
    class_ids: Tensor | None,
    need_grad: bool,
    ends: Tensor | None,
    points_layout: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if ends is not None and _points_first_on_kernel(pred):
        options = (present_only, class_ids, need_grad, ends)
        per_set, grad, loss, present = _scene_losses_points_first(pred, codes, row_weights, hinge, softmax, *options)
    else:
        options = (per_image, present_only, class_ids, need_grad, ends)
        per_set, grad, loss, present = _row_losses(pred, codes, row_weights, hinge, softmax, *options)
    if need_grad and not _in_op_layout(grad, pred, ends, points_layout):
        grad = _empty_grad(pred, ends, points_layout).copy_(grad)
    return per_set, grad, loss.to(pred.dtype), present


def _class_softmax(pred: Tensor) -> Tensor:
    """The softmax over ``C`` of ``pred [B, C, N]``; of points-first ``[1, C, N]`` (a view of ``[N, C]``), in
    their layout: torch's softmax over the last axis of ``[N, C]``, where over axis 1 of the view it would
    copy the points class-major first."""
    if pred.shape[0] == 1 and pred.stride(1) == 1 and pred.shape[1] > 1:
        return pred[0].T.softmax(1).T.unsqueeze(0)
    return pred.softmax(1)


def _row_losses(
    pred: Tensor,
    codes: Tensor,
    row_weights: Tensor,
    hinge: bool,
    softmax: bool,
    per_image: bool,
    present_only: bool,
    class_ids: Tensor | None,
    need_grad: bool,
    ends: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_set_losses` on class-major rows (copied so where ``pred`` is not): every other case."""
    probs = _class_softmax(pred) if softmax else pred
    rows = probs if class_ids is None else probs.index_select(1, class_ids)
    del probs  # where it is a temporary, it lives on as ``rows`` or not at all
    if not (ends is not None and _use_triton(rows)):  # (the Triton scene kernels read points where they lie)
        rows = rows.contiguous()
    batch, num_rows, num_pixels = rows.shape
    grad = None
    if need_grad:
        # Both kernels read a row before they write its gradient, so the gradient may
        # overwrite the rows where they are a temporary of ours, not the caller's input.
        grad = rows if rows is not pred else torch.empty_like(rows)
    if ends is not None:  # points of scenes, [1, K, N]: a set per scene
        loss, present = _scene_rows(rows[0], codes[0], ends, hinge, None if grad is None else grad[0])
        num_sets = ends.shape[0]
    else:
        layout = (1, batch * num_rows, num_pixels) if per_image else rows.shape  # [S, R, N], see the module doc
        loss, present = _lovasz_rows(
            rows.view(layout), codes.reshape(layout), hinge, None if grad is None else grad.view(layout)
        )
        num_sets = batch if per_image else 1
    del rows
    loss, present = loss.reshape(num_sets, num_rows), present.reshape(num_sets, num_rows)
    per_set, coefficient = _set_means(loss, present, row_weights, present_only)
    if grad is None:
        return per_set, pred.new_empty(0), loss, present
    if ends is not None:  # each point's own scene's coefficients
        grad.mul_(per_point(coefficient.T, ends, num_pixels, dim=1))  # [K, N]
        scale = None
    else:
        scale = coefficient.unsqueeze(-1).expand(batch, num_rows, 1)  # d per_set / d row loss
    if class_ids is not None:  # the classes left out get zero
        grad = pred.new_zeros(pred.shape).index_copy_(1, class_ids, grad if scale is None else grad.mul_(scale))
        scale = None
    if softmax:
        _softmax_backward_(grad, pred, scale)
    elif scale is not None:
        grad.mul_(scale)
    return per_set, grad, loss, present


def _points_first_grad(pred: Tensor, ends: Tensor | None, points_layout: bool) -> bool:
    """Whether the op's gradient is points-first (the memory of ``[N, C]``, whose view ``[1, C, N]`` the
    caller has: autograd hands it back with no transposed copy): for points of scenes, asked for by
    ``points_layout``, which :func:`lovasz_sets` sets eagerly from ``pred``'s strides; a compiled graph,
    whose strides may change, asks for the contiguous layout."""
    return points_layout and ends is not None


def _empty_grad(pred: Tensor, ends: Tensor | None, points_layout: bool) -> Tensor:
    """The op's gradient output, laid out as its fake says (see :func:`_points_first_grad`)."""
    if _points_first_grad(pred, ends, points_layout):
        return pred.new_empty(pred.shape[2], pred.shape[1]).T.unsqueeze(0)
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _in_op_layout(grad: Tensor, pred: Tensor, ends: Tensor | None, points_layout: bool) -> bool:
    """Whether ``grad`` has :func:`_empty_grad`'s layout already (found without allocating)."""
    return grad[0].T.is_contiguous() if _points_first_grad(pred, ends, points_layout) else grad.is_contiguous()


def _set_means(loss: Tensor, present: Tensor, row_weights: Tensor, present_only: bool) -> tuple[Tensor, Tensor]:
    """Each set's weighted mean of its rows' losses ``[S, K]`` (over the present rows if ``present_only``;
    0 where no weight is left), and the coefficients ``d per_set / d loss``."""
    w = row_weights.expand(loss.shape)
    if present_only:
        w = w * present.view(loss.shape)
    weight_sum = w.sum(-1, keepdim=True)
    coefficient = torch.where(weight_sum != 0, w / torch.where(weight_sum != 0, weight_sum, 1), 0)
    return (loss * coefficient).sum(-1), coefficient


def _points_first_on_kernel(pred: Tensor) -> bool:
    """``pred [1, C, N]`` is a transposed view of points ``[N, C]`` that the C kernel can read in place."""
    _, channels, num_points = pred.shape
    points_first = pred.stride(1) == 1 and (pred.stride(2) == channels or num_points <= 1)
    return points_first and num_points > 0 and _use_c_kernel(pred) and C.points_kernel() is not None


def _scene_losses_points_first(
    pred: Tensor,
    codes: Tensor,
    row_weights: Tensor,
    hinge: bool,
    softmax: bool,
    present_only: bool,
    class_ids: Tensor | None,
    need_grad: bool,
    ends: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_set_losses` of points of scenes laid out points-first, on the C kernel, which reads them where
    they lie and writes each point's gradient of its own scene's loss: no transposed copy of the points
    there or back. It takes the softmax too (of every class: ``class_ids`` None), on the way in and back."""
    points = pred[0].T  # [N, C], contiguous
    in_kernel = softmax and class_ids is None
    probs = points.softmax(1) if softmax and not in_kernel else points
    rows = (probs if class_ids is None else probs.index_select(1, class_ids)).contiguous()  # [N, K]
    del probs
    grad = None
    if need_grad:  # the kernel reads a scene's points before it writes their gradient: ours may overwrite them
        grad = rows if rows is not points else torch.empty_like(rows)

    means: list[tuple[Tensor, Tensor]] = []  # each scene's loss and the coefficients, once the kernel has the rows'

    def coefficients(loss: np.ndarray, present: np.ndarray) -> np.ndarray:
        means.append(_set_means(torch.from_numpy(loss), torch.from_numpy(present), row_weights.detach(), present_only))
        return means[0][1].numpy()

    loss, present = C.lovasz_points(
        rows.detach().numpy(),
        codes[0].contiguous().numpy(),
        ends.numpy(),
        C.HINGE if hinge else C.SOFTMAX,
        None if grad is None else grad.detach().numpy(),
        torch.get_num_threads(),
        logits=in_kernel,
        coefficients=coefficients,
    )
    del rows
    loss, present = torch.from_numpy(loss), torch.from_numpy(present)
    per_set, _ = means[0] if means else _set_means(loss, present, row_weights.detach(), present_only)
    if grad is None:
        return per_set, pred.new_empty(0), loss, present
    if class_ids is not None:  # the classes left out get zero
        grad = points.new_zeros(points.shape).index_copy_(1, class_ids, grad)
    grad = grad.T.unsqueeze(0)  # points-first [1, C, N]
    if softmax and not in_kernel:
        _softmax_backward_(grad, pred, None)
    return per_set, grad, loss, present


@torch.library.custom_op("lovasz::lovasz_loss", mutates_args=())
def lovasz_loss(
    pred: Tensor,
    codes: Tensor,
    row_weights: Tensor,
    hinge: bool,
    softmax: bool,
    per_image: bool,
    present_only: bool,
    class_ids: Tensor | None,
    need_grad: bool,
    ends: Tensor | None,
    points_layout: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lovász loss of each set (image, or the batch) of ``pred [B, C, N]``, float32 or float64.

    ``pred`` holds probabilities, logits with ``softmax`` (the softmax over ``C`` is
    taken inside, so that neither it nor its gradient is kept), or hinge scores with
    ``hinge``. ``codes [B, K, N]`` (uint8) mark the pixels of the ``K`` class rows,
    the classes ``class_ids`` (every class when None). Errors are ``|[y = c] - p|``
    (softmax) or ``max(0, 1 - s x)`` (``hinge``). A set's loss is the average of its
    rows' losses weighted by ``row_weights [K]``, over the rows with a foreground
    pixel if ``present_only``, and 0 if no weight is left.

    With ``ends [S]`` (int64), ``B`` is 1 and ``N`` holds the points of ``S`` scenes, scene
    ``s`` the run ``[ends[s - 1], ends[s])``; the sets are the scenes (``per_image`` is True).
    ``points_layout``: the gradient of such points in the layout of ``_empty_grad``.

    Returns ``per_set [B]`` (``[1]`` unless ``per_image``; ``[S]`` with ``ends``) and, if ``need_grad``,
    ``d per_set / d pred [B, C, N]``, each pixel's derivative of its own set's loss
    (else an empty tensor): backward is one multiply; then each row's loss and presence ``[sets, K]``,
    of which :func:`lovasz_sets` takes the derivative in ``row_weights``.
    """
    options = (present_only, class_ids, need_grad, ends, points_layout)
    return _set_losses(pred, codes, row_weights, hinge, softmax, per_image, *options)


@lovasz_loss.register_fake
def _(
    pred,
    codes,
    row_weights,
    hinge,
    softmax,
    per_image,
    present_only,
    class_ids,
    need_grad,
    ends,
    points_layout,
):
    grad = _empty_grad(pred, ends, points_layout) if need_grad else pred.new_empty(0)
    num_sets = ends.shape[0] if ends is not None else pred.shape[0] if per_image else 1
    rows = (num_sets, codes.shape[1])
    return pred.new_empty(num_sets), grad, pred.new_empty(rows), pred.new_empty(rows, dtype=torch.bool)


@torch.library.register_vmap("lovasz::lovasz_loss")
def _vmap(info, in_dims, *inputs):
    """``torch.func.vmap`` over the op (per-sample losses and gradients, ``jacrev``): one call per sample
    of the mapped dim, stacked. Each sample is a batch of its own: its own sets, its own classes present."""

    def sample(value, dim, index):
        return value if dim is None else value.select(dim, index)

    outputs = [
        lovasz_loss(*(sample(value, dim, index) for value, dim in zip(inputs, in_dims)))
        for index in range(info.batch_size)
    ]
    return tuple(torch.stack(values) for values in zip(*outputs)), (0, 0, 0, 0)


_SECOND_ORDER_WITH_SOFTMAX = (
    "lovasz_softmax(from_logits=True) takes the softmax inside and keeps only the first derivative, so it "
    "has no second derivative (create_graph=True: Hessian-vector products, gradient penalties, MAML); pass "
    "probabilities instead, lovasz_softmax(logits.softmax(1), labels), whose derivatives of every order are "
    "exact (the modules: LovaszLoss(..., from_logits=False) on input.softmax(1); for CrossEntropyLovaszLoss, "
    "its cross_entropy(input, target) plus that), or differentiate with torch.func (grad, hessian), which "
    "takes the softmax outside by itself"
)


# The op's arguments in order, by name: autograd hands them to setup_context as a tuple, and backward
# returns one gradient per argument (tests/test_torch_edges.py checks this against the op's schema).
OP_ARGS = (
    "pred",
    "codes",
    "row_weights",
    "hinge",
    "softmax",
    "per_image",
    "present_only",
    "class_ids",
    "need_grad",
    "ends",
    "points_layout",
)
_ARG = {name: index for index, name in enumerate(OP_ARGS)}
_NO_GRADS = (None,) * (len(OP_ARGS) - 1)  # the gradients of every argument after pred


def _setup_context(ctx, inputs, output):
    ctx.softmax, ctx.need_grad = inputs[_ARG["softmax"]], inputs[_ARG["need_grad"]]
    # The gradient is an output that autograd differentiates (to zero, see _backward), so that with
    # create_graph the gradient returned from it hangs on the prediction: a gradient penalty of the
    # loss's input differentiates to zeros, as the original's graph does (nothing more is saved).
    ctx.mark_non_differentiable(*output[2:])
    ctx.save_for_backward(output[1], inputs[_ARG["ends"]])  # the gradient, and the scenes' ends (or None)
    ctx.set_materialize_grads(False)  # most outputs get no gradient: don't fill zeros for them


def _backward(ctx, grad_per_set, grad_of_grad, *_):
    if not ctx.needs_input_grad[0]:  # (the class weights' gradient: see lovasz_sets)
        return (None,) + _NO_GRADS
    if grad_per_set is None:  # the gradient output's alone (a second derivative): piecewise constant, so zeros
        return (None if grad_of_grad is None else torch.zeros_like(ctx.saved_tensors[0]),) + _NO_GRADS
    if not ctx.need_grad:
        raise RuntimeError(
            "lovasz_loss was called with need_grad=False but a gradient was requested: the prediction did not "
            "require grad when the loss was computed, or traced (torch.jit.trace and torch.export keep that "
            "choice: trace or export with inputs that require grad)"
        )
    # The loss is piecewise linear in the errors, so the saved gradient is piecewise constant in the
    # prediction: its own derivative is zero, and create_graph=True is exact, except through the
    # softmax taken inside, whose curvature the saved gradient no longer knows.
    if ctx.softmax and torch.is_grad_enabled():
        raise RuntimeError(_SECOND_ORDER_WITH_SOFTMAX)
    grad, ends = ctx.saved_tensors
    # [1, C, N]: each point takes its own scene's factor
    scale = grad_per_set.view(-1, 1, 1) if ends is None else per_point(grad_per_set, ends, grad.shape[-1])
    if not _graph_freed_after_this_backward() or _batched(grad_per_set) or no_host_values():
        return (scale * grad,) + _NO_GRADS
    # The saved gradient is read for the last time: scaled where it is, not into a new tensor of the
    # input's size (a Cityscapes-like batch on the CPU: 40 MB and a pass less; left as it is for a
    # factor of 1, as from loss.backward() in batch mode).
    if grad_per_set.device.type != "cpu" or not bool((grad_per_set == 1).all()):
        grad.mul_(scale)
    return (grad.detach(),) + _NO_GRADS  # (the saved output is differentiable: see _setup_context)


def _batched(x: Tensor) -> bool:
    """Whether ``x`` is a batch of tensors under a vmap (``torch.func``'s, or the one of
    ``autograd.grad(is_grads_batched=True)``): its values take no part in Python's control flow, and an
    unbatched tensor cannot take it in place."""
    functorch = torch._C._functorch
    return functorch.is_legacy_batchedtensor(x) or functorch.is_functorch_wrapped_tensor(x)


def _graph_freed_after_this_backward() -> bool:
    """Whether autograd frees this backward's graph after it (no ``retain_graph``, no ``create_graph``):
    then no later backward reads the saved gradient again. Eagerly only: a traced backward (torch.compile)
    keeps its functional form."""
    keeps_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)  # (private: may go)
    if keeps_graph is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    try:
        return not keeps_graph()
    except RuntimeError:  # not inside a backward of the engine's
        return False


torch.library.register_autograd("lovasz::lovasz_loss", _backward, setup_context=_setup_context)


class PositionalFunction(torch.autograd.Function):
    """A ``torch.autograd.Function`` whose ``apply`` takes every argument positionally, as ``forward``
    declares them: it skips ``Function.apply``'s binding of the arguments to ``forward``'s signature
    (``inspect.signature``, ~35 µs a call, a tenth of a small loss's), which changes nothing then. Under
    torch.func's transforms ``Function.apply``'s own route runs."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        # (torch._C._FunctionBase.apply, which torch's stubs leave out)
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))  # type: ignore[misc]


class _LovaszSets(PositionalFunction):
    """The op with the autograd that ``torch.func`` and forward mode need: ``setup_context`` and a JVP.

    The JVP is one dot product: the op has each set's gradient already. Under ``torch.func.vmap`` the
    op's own vmap rule runs it per sample, and autograd's formulas here are vmapped as they are.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs):
        if _plain_eager(inputs[0]):  # the op's body without the dispatcher's ~40 µs a call (small inputs)
            return _set_losses(*inputs)
        return lovasz_loss(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        # Under vmap (the generated rule) the outputs here are batched wrappers of the op's: mark those too, or
        # forward mode gives the integer counts a tangent (an internal assert of torch)
        ctx.mark_non_differentiable(*(_without_vmap(out) for out in output[2:]))
        ctx.save_for_forward(output[1], inputs[_ARG["ends"]])
        ctx.num_sets = output[0].shape[0]

    @staticmethod
    def backward(ctx, grad_per_set, *grad_outputs):
        return _backward(ctx, grad_per_set, *grad_outputs)

    @staticmethod
    def jvp(ctx, pred_tangent, *_):
        grad, ends = ctx.saved_tensors
        if pred_tangent is None:  # a tangent of the class weights alone: lovasz_sets adds their term
            return grad.new_zeros(ctx.num_sets), _no_tangent(grad), None, None
        if not ctx.need_grad:
            raise RuntimeError("lovasz_loss was called with need_grad=False but a tangent was given")
        if ends is not None:  # [1, C, N]: each scene's run of points
            return scene_sums((grad * pred_tangent).sum(1)[0], ends), _no_tangent(grad), None, None
        return (grad * pred_tangent).reshape(ctx.num_sets, -1).sum(1), _no_tangent(grad), None, None


_FUNCTIONALIZE_WITH_ANOTHER_TRANSFORM = (
    "lovasz: under torch.func.functionalize the loss has no derivative nor vmap (torch has no functionalize rule "
    "for an autograd.Function, and no torch.func support for a custom op's autograd): functionalize the loss "
    "alone, or trace the training step with torch.compile or torch.export, which differentiate it"
)


def functionalizing() -> bool:
    """Whether the loss runs under ``torch.func.functionalize``: alone, the op serves (the autograd.Function
    has no functionalize rule); with another transform inside or around it, neither does (torch's own
    errors would blame a setup_context), so that is an error of ours."""
    stack = torch._C._functorch.get_interpreter_stack() or []
    functionalize = torch._C._functorch.TransformType.Functionalize
    if not any(interpreter.key() == functionalize for interpreter in stack):
        return False
    if len(stack) > 1:
        raise RuntimeError(_FUNCTIONALIZE_WITH_ANOTHER_TRANSFORM)
    return True


def no_host_values() -> bool:
    """Whether the call's tensors have no values to read on the host: under FakeTensorMode (tools that count a
    step's FLOPs or memory without running it) and in ``make_fx``'s trace (a proxy mode). What would read them
    is queued or left out there, as in a traced graph. (Under torch.compile the graph's own checks decide, and
    Dynamo must not see the query.)"""
    if torch.compiler.is_compiling():
        return False
    return any(torch._C._get_dispatch_mode(mode) is not None for mode in _VALUELESS_MODES)


_VALUELESS_MODES = (torch._C._TorchDispatchModeKey.FAKE, torch._C._TorchDispatchModeKey.PROXY)


def _plain_eager(pred: Tensor) -> bool:
    """Whether the op's body may run as a Python function, not through the dispatcher: a plain tensor on
    the CPU or a GPU, with nothing that must see the op itself (a trace, a dispatch or function mode such
    as FakeTensorMode or ``torch.device('meta')``, torch.func's transforms, a tensor subclass)."""
    return (
        type(pred) is Tensor
        and pred.device.type in ("cpu", "cuda")
        and not torch._C._are_functorch_transforms_active()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and not torch.jit.is_tracing()
    )


def _no_tangent(grad: Tensor) -> Tensor:
    """The gradient output's tangent: zero (the gradient is piecewise constant). Forward mode needs one, the output
    being differentiable (see _setup_context), in its layout (an expanded zero fails where it is a view)."""
    return torch.zeros_like(grad)


def lovasz_sets(
    pred: Tensor,
    codes: Tensor,
    row_weights: Tensor,
    hinge: bool,
    softmax: bool,
    per_image: bool,
    present_only: bool,
    class_ids: Tensor | None,
    need_grad: bool,
    ends: Tensor | None = None,
) -> Tensor:
    """``lovasz_loss``'s per-set losses, differentiable in every autograd mode: reverse (also
    with ``create_graph``), forward (``torch.autograd.forward_ad``) and ``torch.func``. Under
    ``torch.compile`` the op itself is called, with its registered autograd.

    The op differentiates in ``pred`` only; where ``row_weights`` take a gradient too (learned class
    weights), a term of value zero carries it: the weighted mean of the rows' losses (held constant)
    minus itself detached."""
    # Eagerly the gradient of points of scenes keeps their layout (points-first, or class-major where
    # gathered from a grid); a traced graph fixes one: contiguous.
    points_layout = ends is not None and not torch.compiler.is_compiling() and not pred[0].is_contiguous()
    args = (
        pred,
        codes,
        row_weights,
        hinge,
        softmax,
        per_image,
        present_only,
        class_ids,
        need_grad,
        ends,
        points_layout,
    )
    direct = torch.compiler.is_compiling() or functionalizing()
    per_set, _, row_loss, present = lovasz_loss(*args) if direct else _LovaszSets.apply(*args)
    if differentiable(row_weights):
        weighted, _ = _set_means(row_loss, present, row_weights, present_only)
        per_set = per_set + (weighted - weighted.detach())
    return per_set


def differentiable(x: Tensor) -> bool:
    """Whether a gradient may be asked of the loss with respect to ``x``: it requires grad (in grad mode) or
    carries a forward-mode tangent (``torch.autograd.forward_ad``, ``torch.func.jvp``), at any level of
    torch.func's wrappers: under ``vmap`` the batched tensor of a leaf that requires grad says it does not,
    and has no batching rule to unpack a tangent; the level below it answers."""
    if torch.compiler.is_compiling():  # (a graph's tensors are no wrappers, and carry no tangent)
        return torch.is_grad_enabled() and x.requires_grad
    while True:
        if torch.is_grad_enabled() and x.requires_grad:
            return True
        try:
            if torch.autograd.forward_ad.unpack_dual(x).tangent is not None:
                return True
        except RuntimeError:  # 'Batching rule not implemented for aten::_unpack_dual': a vmap level
            pass
        if not torch._C._functorch.is_functorch_wrapped_tensor(x):
            return False
        x = torch._C._functorch.get_unwrapped(x)


def _without_vmap(x: Tensor) -> Tensor:
    """``x`` without the vmap levels that wrap it (nested vmaps: one each), if any do."""
    while torch._C._functorch.is_batchedtensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return x
