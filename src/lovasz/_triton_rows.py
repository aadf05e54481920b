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

from lovasz import _codes
from lovasz._torch_core import even_chunks, scene_sizes

BLOCK = 1024
_FOREGROUND = tl.constexpr(_codes.FOREGROUND)  # a pixel's codes, as the kernels read them
_IGNORED = tl.constexpr(_codes.IGNORED)
_MAX_GRID_ROWS = 65535  # the grid's second axis


@triton.jit
def _error_bits(x, code, HINGE: tl.constexpr):
    """Each pixel's error as its float bits (an int32 >= 0: non-negative floats sort like their bits),
    and its flags (int8): foreground, and a negative margin (its slope's sign)."""
    fg = code == _FOREGROUND
    if HINGE:
        margin = tl.where(fg, 1.0 - x, 1.0 + x)
        error = tl.where(margin < 0.0, 0.0, margin)  # not tl.maximum, which drops a NaN on a GPU
        negative = margin < 0.0  # error 0: the slope is 0 anyway
    else:
        margin = tl.where(fg, 1.0 - x, x)
        error = tl.abs(margin)
        negative = margin < 0.0  # a "probability" outside [0, 1]: the slope of |margin| flips
    bits = error.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # clears -0.0's sign bit too
    return bits, fg.to(tl.int8) | (negative.to(tl.int8) << 1)


@triton.jit
def _jaccard_step(fg, fg_cum, gts, k):
    """The closed-form Jaccard step ``J(k) - J(k-1)`` at sorted position ``k`` (from 1) of a set with
    ``gts`` foreground pixels, ``fg_cum`` of them among its first ``k``."""
    intersection = (gts - fg_cum).to(tl.float32)
    union = (gts + k - fg_cum).to(tl.float32)
    step = tl.where(fg, 1.0 / union, intersection / (union * tl.maximum(union - 1.0, 1.0)))
    return tl.where(k == 1, 1.0 - intersection / union, step)  # J(1) itself: U(0) may be 0


@triton.jit
def _gradient(error, step, flags, fg):
    """d loss / d prediction of a sorted pixel: its step times its error's slope; NaN at a NaN error."""
    negative = (flags & 2) != 0
    slope = tl.where(error > 0.0, tl.where(negative != fg, -1.0, 1.0), 0.0)
    return tl.where(error != error, float("nan"), step * slope)


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
    code = tl.load(codes_ptr + s * codes_set_stride + row * codes_row_stride + n, mask=inside, other=_IGNORED)
    bits, flags = _error_bits(x, code, HINGE)
    tl.store(key_ptr + row * row_pixels + m, tl.where(code == _IGNORED, -1, bits), mask=inside)
    tl.store(flags_ptr + row * row_pixels + m, flags, mask=inside)


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
    error = tl.where(valid, key.to(tl.float32, bitcast=True), 0.0)
    fg_cum = tl.cumsum(fg.to(tl.int32), axis=0) + tl.load(starts_ptr + row * num_blocks + block)
    step = _jaccard_step(fg, fg_cum, tl.load(totals_ptr + row), m + 1)
    tl.store(partial_ptr + row * num_blocks + block, tl.sum(tl.where(inside, error * step, 0.0), axis=0))
    if WRITE_GRAD:
        p = tl.load(perm_ptr + row * row_pixels + m, mask=inside, other=0)
        s = p // num_pixels
        n = p - s * num_pixels
        tl.store(
            grad_ptr + s * grad_set_stride + row * grad_row_stride + n, _gradient(error, step, flags, fg), mask=inside
        )


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
    step = even_chunks(num_rows, min(rows_per_chunk, _MAX_GRID_ROWS))
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


# ----------------------------------------------------------------------------- points of scenes
# A class's row ``[K, N]`` holds every point; scene s is the run [ends[s - 1], ends[s]). One ascending
# sort of int64 keys, the (row, scene) in the high 32 bits and the complemented error bits below
# (ignored points: all ones, last in their scene), keeps each scene of each row in its own run, errors
# descending, ties in point order. The chunk's rows are sorted as one flat run: torch sorts a 1-D tensor
# with one radix sort, where rows of under a million would go through its segmented path (a sort of all
# rows with their segment ids as values, then one by segment: half as much memory again, and more
# passes). The blocks of the two kernels after the sort are cut at the scenes' bounds, so that a
# block's sums belong to one (row, scene): no atomics, the same result on every run. A point's scene,
# and a block's, are found in the kernels by a binary search of ``ends`` (of the scenes' end blocks):
# no per-point or per-block tensor is made for them, and no torch op.


@triton.jit
def _searchsorted(sorted_ptr, length, value, STEPS: tl.constexpr):
    """The number of entries of the rising ``sorted_ptr[:length]`` that are ``<= value`` (scalar or
    tensor), in ``STEPS >= length.bit_length()`` halvings."""
    lo = value.to(tl.int32) * 0
    hi = lo + length
    for _ in tl.static_range(STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        right = tl.load(sorted_ptr + mid, mask=active, other=0) <= value
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    return lo


@triton.jit
def _scene_keys(
    pred_ptr,
    codes_ptr,
    ends_ptr,
    key_ptr,
    flags_ptr,
    num_points,
    num_scenes,
    pred_row_stride,
    pred_point_stride,
    codes_row_stride,
    HINGE: tl.constexpr,
    STEPS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = n < num_points
    x = tl.load(pred_ptr + row * pred_row_stride + n * pred_point_stride, mask=inside, other=0.0)
    code = tl.load(codes_ptr + row * codes_row_stride + n, mask=inside, other=_IGNORED)
    bits, flags = _error_bits(x, code, HINGE)
    low = tl.where(code == _IGNORED, 0xFFFFFFFF, 0x7FFFFFFF - bits.to(tl.int64))
    scene = _searchsorted(ends_ptr, num_scenes, n, STEPS).to(tl.int64)  # the scenes ending at or before n
    tl.store(key_ptr + row * num_points + n, ((row * num_scenes + scene) << 32) | low, mask=inside)
    tl.store(flags_ptr + row * num_points + n, flags, mask=inside)


@triton.jit
def _scene_block(ends_ptr, end_block_ptr, num_scenes, block, STEPS: tl.constexpr, BLOCK: tl.constexpr):
    """Block ``block`` of a sorted row: its positions (within one scene's run), which are inside the run,
    its scene, the scene's first point and first block. Blocks past the last scene's are empty."""
    scene = tl.minimum(_searchsorted(end_block_ptr, num_scenes, block, STEPS), num_scenes - 1)
    scene_start = tl.load(ends_ptr + scene - 1, mask=scene > 0, other=0)
    first_block = tl.load(end_block_ptr + scene - 1, mask=scene > 0, other=0)
    m = scene_start + (block - first_block) * BLOCK + tl.arange(0, BLOCK)
    return m, m < tl.load(ends_ptr + scene), scene, scene_start, first_block


@triton.jit
def _scene_count(
    key_ptr,
    perm_ptr,
    flags_ptr,
    sorted_flags_ptr,
    counts_ptr,
    ends_ptr,
    end_block_ptr,
    num_points,
    num_blocks,
    num_scenes,
    STEPS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    m, inside, _, _, _ = _scene_block(ends_ptr, end_block_ptr, num_scenes, block, STEPS, BLOCK)
    key = tl.load(key_ptr + row * num_points + m, mask=inside, other=0xFFFFFFFF)
    p = tl.load(perm_ptr + row * num_points + m, mask=inside, other=0)  # of the chunk's flat run
    flags = tl.load(flags_ptr + p, mask=inside, other=0)
    tl.store(sorted_flags_ptr + row * num_points + m, flags, mask=inside)
    fg = ((flags & 1) != 0) & ((key & 0xFFFFFFFF) != 0xFFFFFFFF)
    counts_row = counts_ptr + row * (num_blocks + 1)  # [0, then each block's]: a cumsum makes it a running sum
    tl.store(counts_row + block + 1, tl.sum(fg.to(tl.int32), axis=0))
    if block == 0:
        tl.store(counts_row, 0)


@triton.jit
def _scene_steps(
    key_ptr,
    flags_ptr,
    perm_ptr,
    ends_ptr,
    end_block_ptr,
    running_ptr,
    grad_ptr,
    partial_ptr,
    num_points,
    num_blocks,
    num_scenes,
    grad_row_stride,
    grad_point_stride,
    WRITE_GRAD: tl.constexpr,
    STEPS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    block, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    m, inside, scene, scene_start, first_block = _scene_block(ends_ptr, end_block_ptr, num_scenes, block, STEPS, BLOCK)
    low = tl.load(key_ptr + row * num_points + m, mask=inside, other=0xFFFFFFFF) & 0xFFFFFFFF
    flags = tl.load(flags_ptr + row * num_points + m, mask=inside, other=0)
    valid = low != 0xFFFFFFFF
    fg = ((flags & 1) != 0) & valid
    error = tl.where(valid, (0x7FFFFFFF - low).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    # the row's foreground before this block, before the scene's first block and up to its end block
    running = running_ptr + row * (num_blocks + 1)
    scene_before = tl.load(running + first_block)
    fg_cum = tl.cumsum(fg.to(tl.int32), axis=0) + tl.load(running + block) - scene_before
    k = m - scene_start + 1  # the position within the scene, from 1
    step = _jaccard_step(fg, fg_cum, tl.load(running + tl.load(end_block_ptr + scene)) - scene_before, k)
    partial_row = partial_ptr + row * (num_blocks + 1)  # [0, then each block's], float64 like counts_row
    tl.store(partial_row + block + 1, tl.sum(tl.where(inside, error * step, 0.0), axis=0).to(tl.float64))
    if block == 0:
        tl.store(partial_row, 0.0)
    if WRITE_GRAD:
        point = tl.load(perm_ptr + row * num_points + m, mask=inside, other=0) - row * num_points
        tl.store(
            grad_ptr + row * grad_row_stride + point * grad_point_stride,
            _gradient(error, step, flags, fg),
            mask=inside,
        )


class _SceneBlocks:
    """The blocks of the rows' sorted runs, cut at the scenes' bounds: scene ``s`` has the blocks
    ``[bounds[s], bounds[s + 1])`` (``end = bounds[1:]``). Their number is bounded by ``cdiv(N, BLOCK) + S``,
    known without reading ``ends`` (no host sync); blocks past the last scene's are empty."""

    def __init__(self, ends: Tensor, num_points: int):
        blocks_per_scene = (scene_sizes(ends) + BLOCK - 1) // BLOCK
        self.bounds = torch.nn.functional.pad(blocks_per_scene.cumsum(0), (1, 0))
        self.end = self.bounds[1:]
        self.count = triton.cdiv(num_points, BLOCK) + ends.shape[0]


def scene_rows(
    pred: Tensor, codes: Tensor, ends: Tensor, hinge: bool, grad: Tensor | None, rows_per_chunk: int
) -> tuple[Tensor, Tensor]:
    """Loss and presence ``[S, K]`` of each (scene, class) row of float32 ``pred [K, N]`` and uint8 ``codes``,
    scene ``s`` the points ``[ends[s - 1], ends[s])``; d loss / d pred into
    ``grad`` (``[K, N]``) if given. Rows go ``rows_per_chunk`` at a time. ``pred`` and ``grad`` may have
    any strides: points-first ``[N, K]`` are read and written where they lie, with no transposed copy."""
    num_rows, num_points = pred.shape
    codes = codes if codes.stride(1) == 1 else codes.contiguous()
    ends = ends.contiguous()
    num_scenes = ends.shape[0]
    steps = num_scenes.bit_length()  # of the kernels' binary searches of the scenes
    blocks = _SceneBlocks(ends, num_points)
    runs, sums = [], []  # per chunk: the rows' running sums over blocks of the foreground and of the loss
    # (a chunk's rows times its scenes, the high word of its keys, stay under 2**31)
    step = even_chunks(num_rows, min(rows_per_chunk, _MAX_GRID_ROWS, (2**31 - 1) // num_scenes))
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        rows = stop - start
        keys = torch.empty(rows, num_points, dtype=torch.int64, device=pred.device)
        flags = torch.empty(rows, num_points, dtype=torch.int8, device=pred.device)
        _scene_keys[(triton.cdiv(num_points, BLOCK), rows)](
            pred[start:stop],
            codes[start:stop],
            ends,
            keys,
            flags,
            num_points,
            num_scenes,
            pred.stride(0),
            pred.stride(1),
            codes.stride(0),
            HINGE=hinge,
            STEPS=steps,
            BLOCK=BLOCK,
        )
        keys, perm = torch.sort(keys.view(-1), stable=True)  # flat: see above
        sorted_flags = torch.empty_like(flags)
        counts = torch.empty(rows, blocks.count + 1, dtype=torch.int32, device=pred.device)
        grid = (blocks.count, rows)
        _scene_count[grid](
            keys,
            perm,
            flags,
            sorted_flags,
            counts,
            ends,
            blocks.end,
            num_points,
            blocks.count,
            num_scenes,
            STEPS=steps,
            BLOCK=BLOCK,
        )
        del flags
        running = counts.cumsum(1, dtype=torch.int32)  # [rows, blocks + 1]: the foreground before each block
        partial = torch.empty(rows, blocks.count + 1, dtype=torch.float64, device=pred.device)
        chunk_grad = grad[start:stop] if grad is not None else partial  # partial: an unused placeholder
        _scene_steps[grid](
            keys,
            sorted_flags,
            perm,
            ends,
            blocks.end,
            running,
            chunk_grad,
            partial,
            num_points,
            blocks.count,
            num_scenes,
            chunk_grad.stride(0),
            chunk_grad.stride(1),
            WRITE_GRAD=grad is not None,
            STEPS=steps,
            BLOCK=BLOCK,
        )
        runs.append(running)
        sums.append(partial.cumsum(1))
    # Each scene's foreground and loss: differences of the running sums at its first and end block (the
    # loss's in float64, with no atomics: the same on every run), for every row at once.
    totals = torch.cat(runs).index_select(1, blocks.bounds).diff(dim=1)
    losses = torch.cat(sums).index_select(1, blocks.bounds).diff(dim=1).float()
    return losses.T, (totals > 0).T
