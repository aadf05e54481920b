"""The GPU path of lovasz.torch for float32 rows: two Triton kernels around one ``torch.sort``.

Rows are read where they lie in ``[S, R, N]`` (row ``r`` is ``[:, r, :]``), so batch
mode needs no transposed copy. Three kernels, all one pass over a row's pixels:

1. ``_keys``: each pixel's sort key, an int32: the error's float bits (non-negative
   floats sort like their bits); ignored pixels get -1, which sorts last. Beside it, the
   pixel's flags (int8): foreground, and a negative margin (its slope's sign).
2. ``torch.sort`` of the keys, descending and stable (tied errors in pixel order, as on
   every path), with the permutation.
3. ``_count``: the flags gathered into sorted order, and the foreground pixels of each block
   of the sorted row; their running sum over blocks gives each block's start of the
   cumulative count.
4. ``_steps``: per block, the cumulative foreground count, the closed-form Jaccard step
   ``J(k) - J(k-1)`` (see ``_torch_core._sorted_jaccard_grad``), the block's share of the
   loss, and each pixel's gradient written to its place through the permutation (NaN
   where the error is NaN).

Where Triton is not installed the torch.sort path runs instead (same values, more passes
over memory). ``LOVASZ_TRITON=0`` turns this path off.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024
_MAX_GRID_ROWS = 65535  # the grid's second axis


@triton.jit
def _keys(
    pred_ptr,
    codes_ptr,
    key_ptr,
    flags_ptr,
    num_pixels,
    row_pixels,
    pred_set_stride,
    pred_row_stride,
    codes_set_stride,
    codes_row_stride,
    HINGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    m = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # position in the row, over its S sets
    inside = m < row_pixels
    s = m // num_pixels
    n = m - s * num_pixels
    x = tl.load(pred_ptr + s * pred_set_stride + row * pred_row_stride + n, mask=inside, other=0.0)
    code = tl.load(codes_ptr + s * codes_set_stride + row * codes_row_stride + n, mask=inside, other=2)
    fg = code == 1
    if HINGE:
        margin = tl.where(fg, 1.0 - x, 1.0 + x)
        error = tl.where(margin < 0.0, 0.0, margin)  # not tl.maximum, which drops a NaN on a GPU
        negative = margin < 0.0  # error 0: the slope is 0 anyway
    else:
        margin = tl.where(fg, 1.0 - x, x)
        error = tl.abs(margin)
        negative = margin < 0.0  # a "probability" outside [0, 1]: the slope of |margin| flips
    key = error.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # clears -0.0's sign bit too
    key = tl.where(code == 2, -1, key)
    tl.store(key_ptr + row * row_pixels + m, key, mask=inside)
    tl.store(flags_ptr + row * row_pixels + m, (fg.to(tl.int8) | (negative.to(tl.int8) << 1)), mask=inside)


@triton.jit
def _count(key_ptr, perm_ptr, flags_ptr, sorted_flags_ptr, counts_ptr, row_pixels, num_blocks, BLOCK: tl.constexpr):
    block, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    m = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = m < row_pixels
    key = tl.load(key_ptr + row * row_pixels + m, mask=inside, other=-1)
    p = tl.load(perm_ptr + row * row_pixels + m, mask=inside, other=0)
    flags = tl.load(flags_ptr + row * row_pixels + p, mask=inside, other=0)
    tl.store(sorted_flags_ptr + row * row_pixels + m, flags, mask=inside)
    fg = ((flags & 1) != 0) & (key != -1)
    tl.store(counts_ptr + row * num_blocks + block, tl.sum(fg.to(tl.int32), axis=0))


@triton.jit
def _steps(
    key_ptr,
    flags_ptr,
    perm_ptr,
    starts_ptr,
    totals_ptr,
    grad_ptr,
    partial_ptr,
    num_pixels,
    row_pixels,
    num_blocks,
    grad_set_stride,
    grad_row_stride,
    WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    m = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = m < row_pixels
    key = tl.load(key_ptr + row * row_pixels + m, mask=inside, other=-1)
    flags = tl.load(flags_ptr + row * row_pixels + m, mask=inside, other=0)
    valid = key != -1
    fg = ((flags & 1) != 0) & valid
    negative = (flags & 2) != 0
    error = tl.where(valid, key.to(tl.float32, bitcast=True), 0.0)
    fg_cum = tl.cumsum(fg.to(tl.int32), axis=0) + tl.load(starts_ptr + row * num_blocks + block)
    gts = tl.load(totals_ptr + row)
    intersection = (gts - fg_cum).to(tl.float32)
    union = (gts + (m + 1) - fg_cum).to(tl.float32)
    step = tl.where(fg, 1.0 / union, intersection / (union * tl.maximum(union - 1.0, 1.0)))
    step = tl.where(m == 0, 1.0 - intersection / union, step)  # J(1) itself: U(0) may be 0
    tl.store(partial_ptr + row * num_blocks + block, tl.sum(tl.where(inside, error * step, 0.0), axis=0))
    if WRITE_GRAD:
        slope = tl.where(error > 0.0, tl.where(negative != fg, -1.0, 1.0), 0.0)
        slope = tl.where(error != error, float("nan"), slope)  # a NaN error: a NaN gradient
        p = tl.load(perm_ptr + row * row_pixels + m, mask=inside, other=0)
        s = p // num_pixels
        n = p - s * num_pixels
        tl.store(grad_ptr + s * grad_set_stride + row * grad_row_stride + n, step * slope, mask=inside)


def rows(pred: Tensor, codes: Tensor, hinge: bool, grad: Tensor | None, rows_per_chunk: int) -> tuple[Tensor, Tensor]:
    """Loss and presence of each row ``[:, r, :]`` of float32 ``pred [S, R, N]`` and uint8 ``codes``;
    d loss_r / d pred into ``grad`` (same shape, pixels contiguous) if given. Rows go ``rows_per_chunk``
    at a time."""
    sets, num_rows, num_pixels = pred.shape
    # The kernels step through a row's pixels one element apart (channels-last inputs are not).
    pred = pred if pred.stride(2) == 1 or num_pixels == 1 else pred.contiguous()
    codes = codes if codes.stride(2) == 1 or num_pixels == 1 else codes.contiguous()
    row_pixels = sets * num_pixels
    num_blocks = triton.cdiv(row_pixels, BLOCK)
    step = max(1, min(rows_per_chunk, _MAX_GRID_ROWS))
    losses, present = [], []
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        chunk_pred, chunk_codes = pred[:, start:stop], codes[:, start:stop]
        grid = (num_blocks, stop - start)
        keys = torch.empty(stop - start, row_pixels, dtype=torch.int32, device=pred.device)
        flags = torch.empty(stop - start, row_pixels, dtype=torch.int8, device=pred.device)
        _keys[grid](
            chunk_pred,
            chunk_codes,
            keys,
            flags,
            num_pixels,
            row_pixels,
            pred.stride(0),
            pred.stride(1),
            codes.stride(0),
            codes.stride(1),
            HINGE=hinge,
            BLOCK=BLOCK,
        )
        keys, perm = torch.sort(keys, dim=1, descending=True, stable=True)
        sorted_flags = torch.empty_like(flags)
        counts = torch.empty(stop - start, num_blocks, dtype=torch.int32, device=pred.device)
        _count[grid](keys, perm, flags, sorted_flags, counts, row_pixels, num_blocks, BLOCK=BLOCK)
        del flags
        totals = counts.sum(1, dtype=torch.int32)
        starts = counts.cumsum(1, dtype=torch.int32).sub_(counts)
        partial = torch.empty(stop - start, num_blocks, dtype=torch.float32, device=pred.device)
        chunk_grad = grad[:, start:stop] if grad is not None else partial  # partial: an unused placeholder
        _steps[grid](
            keys,
            sorted_flags,
            perm,
            starts,
            totals,
            chunk_grad,
            partial,
            num_pixels,
            row_pixels,
            num_blocks,
            chunk_grad.stride(0),
            chunk_grad.stride(1),
            WRITE_GRAD=grad is not None,
            BLOCK=BLOCK,
        )
        losses.append(partial.sum(1))
        present.append(totals > 0)
    return torch.cat(losses), torch.cat(present)
