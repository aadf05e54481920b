"""The softmax's backward of lovasz.torch on a GPU (float32): one Triton kernel, one pass.

``lovasz_softmax(from_logits=True)`` keeps neither the probabilities nor their gradient:
backward gets ``g``, the gradient w.r.t. the probabilities (written by the sort path),
recomputes ``p = softmax(logits)`` and overwrites ``g`` with ``p (g s - <p, g s>)``, ``s``
the rows' weights. In torch ops that is five passes over ``[B, C, N]`` (softmax, the
weights' multiply, nan_to_num, the backward, a copy); here each pixel's ``C`` logits
and gradients are read once and written once.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _backward(
    grad_ptr,
    logits_ptr,
    scale_ptr,
    channels,
    num_pixels,
    logits_batch_stride,
    logits_channel_stride,
    logits_pixel_stride,
    grad_batch_stride,
    grad_channel_stride,
    grad_pixel_stride,
    HAS_SCALE: tl.constexpr,
    C_BLOCK: tl.constexpr,
    N_BLOCK: tl.constexpr,
):
    block, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    c = tl.arange(0, C_BLOCK)[:, None]
    n = block.to(tl.int64) * N_BLOCK + tl.arange(0, N_BLOCK)[None, :]
    inside = (c < channels) & (n < num_pixels)
    logits_at = logits_ptr + b * logits_batch_stride + c * logits_channel_stride + n * logits_pixel_stride
    x = tl.load(logits_at, mask=inside, other=-float("inf"))
    e = tl.exp(x - tl.max(x, axis=0)[None, :])
    p = e / tl.sum(e, axis=0)[None, :]
    # NaN where a pixel's logits hold NaN or inf: 0 instead, so an ignored pixel's zero gradient stays 0
    # (a pixel that is not ignored has made the loss NaN already).
    p = tl.where(p == p, p, 0.0)
    at = grad_ptr + b * grad_batch_stride + c * grad_channel_stride + n * grad_pixel_stride
    g = tl.load(at, mask=inside, other=0.0)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr + b * channels + c, mask=c < channels, other=0.0)
    tl.store(at, p * (g - tl.sum(p * g, axis=0)[None, :]), mask=inside)


def softmax_backward_(grad: Tensor, logits: Tensor, scale: Tensor | None) -> None:
    """``grad [B, C, N]`` := the gradient w.r.t. ``logits``, given ``grad / scale`` w.r.t. their softmax
    over ``C``; ``scale`` is ``[B, C, 1]`` or None. Any strides: class-major images and points-first
    ``[N, C]`` alike (Triton specialises a stride of 1)."""
    batch, channels, num_pixels = grad.shape
    if scale is not None:
        scale = scale.reshape(batch, channels).contiguous()
    c_block = triton.next_power_of_2(channels)
    n_block = max(16, min(256, 4096 // c_block))  # a tile of at most 4096 values per tensor, in registers
    grid = (triton.cdiv(num_pixels, n_block), batch)
    _backward[grid](
        grad,
        logits,
        scale if scale is not None else grad,
        channels,
        num_pixels,
        *logits.stride(),
        *grad.stride(),
        HAS_SCALE=scale is not None,
        C_BLOCK=c_block,
        N_BLOCK=n_block,
    )
