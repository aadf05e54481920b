"""The one kernel behind every PyTorch loss: the Lovász extension of many rows at once.

A *row* is one (set, class) pair: the pixels of one image (``per_image``) or of
the whole batch, for one class. The kernel takes a ``[R, N]`` matrix of
predictions and a ``[R, N]`` matrix of codes (0 background, 1 foreground,
2 ignored) and returns the loss of each row plus, in the same pass, the exact
gradient of each row's loss w.r.t. its predictions, so that backward is one
multiply and nothing but that gradient is kept for it.

Speed tricks, each measured with ``lovasz bench``:

- errors are non-negative floats, whose bit patterns sort like the numbers,
  so we sort integer keys: on CPU a least-significant-digit radix sort in two
  16-bit passes (NumPy's stable sort of 16-bit integers is a radix sort), rows
  spread over threads (about 1.5x faster than ``torch.sort`` of the int32 keys
  in isolation, 14% end to end in batch mode); elsewhere ``torch.sort``;
- the foreground bit rides in the key's lowest bit (the error loses one ulp),
  so no gather of the labels through the permutation is needed;
- ignored pixels get the largest key and sort last, where their error is zero:
  masked, never indexed away, so every shape is static;
- the gradient ``J(k) - J(k-1)`` is computed in closed form from the counts,
  exact to a few ulps where the usual difference of two Jaccard values loses
  digits to cancellation on large rows;
- rows go through in chunks, which caps the temporaries' memory.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

BACKGROUND, FOREGROUND, IGNORED = 0, 1, 2

# Elements per chunk of rows. On CPU, small chunks keep temporaries in cache
# and the peak low; on a GPU, big chunks keep the device busy.
_CHUNK_ELEMENTS = {"cpu": 1 << 20}
_DEFAULT_CHUNK_ELEMENTS = 1 << 27

_KEY_DTYPE = {torch.float32: torch.int32, torch.float64: torch.int64}


def _rows_per_chunk(num_rows: int, num_pixels: int, device: torch.device) -> int:
    budget = _CHUNK_ELEMENTS.get(device.type, _DEFAULT_CHUNK_ELEMENTS)
    rows = max(budget // max(num_pixels, 1), 1)
    if device.type == "cpu":
        rows = max(rows, torch.get_num_threads())  # torch.sort parallelises over rows
    return min(rows, num_rows)


_RADIX_MIN_ELEMENTS = 1 << 16  # below this, the radix sort's fixed costs outweigh its speed
_POOL_LOCK = threading.Lock()
_POOL: Optional[ThreadPoolExecutor] = None


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != workers:
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="lovasz-sort")
        return _POOL


def _radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable ascending argsort of int32 ``keys [r, N]`` along the last axis, in two 16-bit passes."""
    unsigned = keys.view(np.uint32) ^ np.uint32(1 << 31)  # signed order as unsigned order
    low_first = np.argsort(unsigned.astype(np.uint16), axis=-1, kind="stable")
    high = np.take_along_axis((unsigned >> 16).astype(np.uint16), low_first, axis=-1)
    return np.take_along_axis(low_first, np.argsort(high, axis=-1, kind="stable"), axis=-1)


def _sort_keys(key: Tensor) -> Tuple[Tensor, Tensor]:
    """Ascending sort of integer keys along the last dim: ``(sorted, perm)``."""
    if key.device.type != "cpu" or key.dtype != torch.int32 or key.numel() < _RADIX_MIN_ELEMENTS:
        return torch.sort(key, dim=-1)
    keys = key.numpy()
    workers = min(torch.get_num_threads(), key.shape[0])
    if workers <= 1:
        perm = torch.from_numpy(_radix_argsort(keys))
    else:  # NumPy releases the GIL while sorting and gathering
        parts = _pool(workers).map(_radix_argsort, np.array_split(keys, workers))  # blocks of rows
        perm = torch.from_numpy(np.concatenate(list(parts)))
    return key.gather(-1, perm), perm


def _sorted_jaccard_grad(fg_sorted: Tensor, dtype: torch.dtype) -> Tensor:
    """``J(k) - J(k-1)`` along the last dim for 0/1 ``fg_sorted`` (int), with ``J(0) = 0``.

    With ``F`` the foreground count and ``U`` the union of the first k pixels:
    a foreground pixel adds ``1 / U``; a background pixel adds ``I / (U (U - 1))``
    where ``I`` is the intersection. Both are exact ratios of integers.
    """
    num_pixels = fg_sorted.shape[-1]
    fg_cum = fg_sorted.cumsum(-1, dtype=torch.int64 if num_pixels >= 1 << 31 else torch.int32)
    gts = fg_cum[..., -1:]
    intersection = (gts - fg_cum).to(dtype)
    k = torch.arange(1, num_pixels + 1, device=fg_sorted.device, dtype=fg_cum.dtype)
    union = (gts + k - fg_cum).to(dtype)
    background_step = intersection / (union * (union - 1).clamp_min_(1))
    grad = torch.where(fg_sorted.bool(), union.reciprocal(), background_step)
    # The first step is J(1) itself; the formula above divides by U(0), which is 0 without foreground.
    grad[..., 0] = 1 - intersection[..., 0] / union[..., 0]
    return grad


def _chunk(pred: Tensor, codes: Tensor, hinge: bool, grad_out: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Loss and foreground presence of each row; writes d loss / d pred into ``grad_out`` if given."""
    fg = codes == FOREGROUND
    if hinge:  # max(0, 1 - s * x) with s = +-1
        errors = torch.where(fg, 1 - pred, 1 + pred).clamp_min_(0)
    else:  # |[y = c] - p|
        errors = torch.where(fg, 1 - pred, pred).abs_()
    key_dtype = _KEY_DTYPE[errors.dtype]
    int_max = torch.iinfo(key_dtype).max
    # Non-negative float bits sort like the floats; clearing the sign bit turns -0.0 into 0.0.
    key = errors.view(key_dtype).bitwise_and_(int_max - 1).bitwise_or_(fg)
    key = key.bitwise_not_().masked_fill_(codes == IGNORED, int_max)  # ascending sort = errors descending
    del errors
    key_sorted, perm = _sort_keys(key)
    del key
    bits = key_sorted.bitwise_not_()  # ignored pixels become -0.0 errors: they add nothing
    fg_sorted = bits & 1
    errors_sorted = bits.bitwise_and_(-2).view(pred.dtype)
    grad = _sorted_jaccard_grad(fg_sorted, pred.dtype)
    loss = (errors_sorted * grad).sum(-1)
    if grad_out is not None:
        # d loss / d pred = grad * d error / d pred, and d error / d pred = 1 - 2 [y = c] where the error is > 0.
        grad.mul_(errors_sorted > 0).mul_(1 - 2 * fg_sorted.to(pred.dtype))
        grad_out.scatter_(-1, perm, grad)
    return loss, fg.any(-1)


@torch.library.custom_op("lovasz::lovasz_rows", mutates_args=())
def lovasz_rows(pred: Tensor, codes: Tensor, hinge: bool, need_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Lovász extension of each row of ``pred [R, N]`` (float32 or float64) against ``codes [R, N]`` (uint8).

    Errors are ``|[y = c] - p|`` (softmax) or ``max(0, 1 - s x)`` (``hinge``).
    Returns ``loss [R]``, ``present [R]`` (bool: the row has a foreground pixel)
    and, if ``need_grad``, ``d loss_r / d pred [R, N]`` (else an empty tensor).
    """
    num_rows, num_pixels = pred.shape
    grad = torch.empty_like(pred) if need_grad else pred.new_empty(0)  # scatter fills every entry
    if num_pixels == 0:
        return pred.new_zeros(num_rows), codes.new_zeros(num_rows, dtype=torch.bool), grad
    step = _rows_per_chunk(num_rows, num_pixels, pred.device)
    losses, present = zip(*(
        _chunk(pred[start:start + step], codes[start:start + step], hinge,
               grad[start:start + step] if need_grad else None)
        for start in range(0, num_rows, step)
    ))
    if len(losses) == 1:
        return losses[0], present[0], grad
    return torch.cat(losses), torch.cat(present), grad


@lovasz_rows.register_fake
def _(pred, codes, hinge, need_grad):
    num_rows = pred.shape[0]
    grad = torch.empty_like(pred) if need_grad else pred.new_empty(0)
    return pred.new_empty(num_rows), pred.new_empty(num_rows, dtype=torch.bool), grad


def _setup_context(ctx, inputs, output):
    ctx.need_grad = inputs[3]
    ctx.save_for_backward(output[2])


def _backward(ctx, grad_loss, _grad_present, _grad_grad):
    if not ctx.need_grad:
        raise RuntimeError("lovasz_rows was called with need_grad=False but a gradient was requested")
    (grad,) = ctx.saved_tensors
    return grad_loss.unsqueeze(-1) * grad, None, None, None


torch.library.register_autograd("lovasz::lovasz_rows", _backward, setup_context=_setup_context)
