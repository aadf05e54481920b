"""The global batch of a ``torch.distributed`` process group, for the batch-mode losses.

A batch-mode Lovász loss depends only on the multiset of its pixels' (error, label)
pairs, and ignored pixels change nothing. So ranks whose batches differ in size or
resolution still form one set: each rank pads its ``pred [B_r, C, N_r]`` and
``codes [B_r, K, N_r]`` to the largest ``[B, C, N]`` of the group (prediction 0,
codes ``IGNORED``), the padded blocks are all-gathered, the padding images are
dropped again, and the loss of the result is exactly the loss of the union of
every rank's pixels.

Every rank first learns every rank's shape (one small all-gather), so that all of
them take the same path: all gather, or all raise the same ``ValueError`` (class
counts or dtypes that cannot form one batch). No rank is left waiting in a
collective that another rank never entered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lovasz._torch_core import IGNORED

# A rank's entry in the shape table: (B, C, N, K, dtype). Fixed size, so it can be all-gathered.
_B, _C, _N, _K, _DTYPE = range(5)
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES)


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]).replace("torch.", "") if code < len(_DTYPES) else "another dtype"


def _shape_device(pred: Tensor, group) -> torch.device:
    """Where the shape table travels: the CPU where the backend takes CPU tensors (gloo, mpi,
    ``"cpu:gloo,cuda:nccl"``), which keeps an accelerator out of it; else ``pred``'s device (nccl)."""
    import torch.distributed as dist

    if pred.device.type == "cpu":
        return pred.device
    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend or "cpu:" in backend:
        return torch.device("cpu")
    return pred.device


def _describe(values: Sequence[int], what) -> str:
    """``"rank 0 has 3 classes, ranks 1, 2 have 4 classes"``: ranks grouped by value, in rank order."""
    groups: dict = {}
    for rank, value in enumerate(values):
        groups.setdefault(value, []).append(rank)
    parts = []
    for value, ranks in groups.items():
        who = f"rank {ranks[0]} has" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))} have"
        parts.append(f"{who} {what(value)}")
    return ", ".join(parts)


def _check_compatible(table: list[list[int]]) -> None:
    """Raise the same ValueError on every rank where the ranks' batches cannot form one set."""
    checks = (
        (_C, "number of classes", lambda c: f"{c} class{'es' if c != 1 else ''}"),
        (_K, "number of label rows", lambda k: f"{k} label row{'s' if k != 1 else ''}"),
        (
            _DTYPE,
            "precision (float64, or float32, in which half precision is computed)",
            lambda d: f"{_dtype_name(d)} predictions",
        ),
    )
    for column, subject, what in checks:
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            raise ValueError(
                f"process_group: every rank must pass the same {subject} to form one global batch; "
                f"{_describe(values, what)}"
            )


def _pad(x: Tensor, batch: int, pixels: int, value: float) -> Tensor:
    """``x [b, c, n]`` padded to ``[batch, c, pixels]`` with ``value`` (differentiable); ``x`` if no padding."""
    b, _, n = x.shape
    if (b, n) == (batch, pixels):
        return x
    return F.pad(x, (0, pixels - n, 0, 0, 0, batch - b), value=value)


def gather_global_batch(pred: Tensor, codes: Tensor, group) -> tuple[Tensor, Tensor]:
    """The batches of every rank of ``group`` as one batch: ``pred [sum B_r, C, N]``, ``codes [sum B_r, K, N]``.

    ``pred [B_r, C, N_r]`` (float) and ``codes [B_r, K, N_r]`` (uint8, ``IGNORED`` marking
    pixels that take no part) may differ across ranks in ``B_r`` and ``N_r``; the images
    are concatenated in rank order, each padded to the group's largest ``N`` with
    ignored pixels, so the batch-mode loss of the result is the loss of the union of
    every rank's pixels. Only this rank's own part carries gradient: every rank
    computes the same global loss, so the gradient of its own part is exactly its
    share of the global gradient.

    Raises the same ``ValueError`` on every rank if the class counts ``C`` / ``K`` or
    the prediction dtypes differ across ranks.
    """
    import torch.distributed as dist

    if pred.ndim != 3 or codes.ndim != 3 or pred.shape[0] != codes.shape[0] or pred.shape[2] != codes.shape[2]:
        raise AssertionError(
            f"pred [B, C, N] and codes [B, K, N] expected; got {list(pred.shape)}, {list(codes.shape)}"
        )  # an internal error: the same on every rank
    world, me = dist.get_world_size(group), dist.get_rank(group)
    batch, classes, pixels = pred.shape
    mine = torch.tensor(
        [batch, classes, pixels, codes.shape[1], _dtype_code(pred.dtype)],
        dtype=torch.int64,
        device=_shape_device(pred, group),
    )
    shapes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(shapes, mine, group=group)
    # The one host synchronisation: padding and the tensors to receive need the shapes on the
    # host. On gloo (or any CPU-capable backend) it waits for the other ranks, not for a device.
    table = torch.stack(shapes).tolist()
    _check_compatible(table)

    batches, lengths = [row[_B] for row in table], [row[_N] for row in table]
    max_batch, max_pixels = max(batches), max(lengths)
    if all(b == max_batch for b in batches) and all(n == max_pixels for n in lengths):
        sent_pred, sent_codes = pred.detach().contiguous(), codes.contiguous()  # equal shapes: no padding
    else:
        sent_pred = _pad(pred.detach(), max_batch, max_pixels, 0.0).contiguous()
        sent_codes = _pad(codes, max_batch, max_pixels, IGNORED).contiguous()
    pred_parts = [torch.empty_like(sent_pred) for _ in range(world)]
    code_parts = [torch.empty_like(sent_codes) for _ in range(world)]
    dist.all_gather(pred_parts, sent_pred, group=group)
    dist.all_gather(code_parts, sent_codes, group=group)
    # Padding images hold only ignored pixels: drop them. Own part: differentiable, padded in N only.
    pred_parts = [part[:b] for part, b in zip(pred_parts, batches)]
    code_parts = [part[:b] for part, b in zip(code_parts, batches)]
    pred_parts[me] = _pad(pred, batch, max_pixels, 0.0)
    code_parts[me] = _pad(codes, batch, max_pixels, IGNORED)
    return torch.cat(pred_parts), torch.cat(code_parts)
