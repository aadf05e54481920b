"""The global batch of a ``torch.distributed`` process group, for the batch-mode losses.

A batch-mode Lovász loss depends only on the multiset of its pixels' (error, label)
pairs, and ignored pixels change nothing. So ranks whose batches differ in size or
resolution still form one set: each rank pads its ``pred [B_r, C, N_r]`` and
``codes [B_r, K, N_r]`` to the largest ``[B, C, N]`` of the group (prediction 0,
codes ``IGNORED``), the padded blocks are all-gathered, the padding images are
dropped again, and the loss of the result is exactly the loss of the union of
every rank's pixels.

Every rank first learns every rank's shape and options (one small all-gather of a
fixed-size table), so that all of them take the same path: all gather, or all
raise the same ``ValueError`` (options that change the set or the collectives:
``per_image``, the loss, its hinge variant, ``classes``, ``ignore``, the weights;
class counts or dtypes that cannot form one batch). Per-image losses form no set
across ranks but join the same table: a rank in per-image mode next to one in
batch mode would otherwise return while the other waits in a collective. No rank
is left waiting in a collective that another rank never entered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lovasz._torch_core import IGNORED

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

# A rank's row of the table: its batch (B, C, N, K, dtype), then its options. Fixed size, so it can be
# all-gathered whatever the options: a per-image rank and a batch-mode rank meet in the same collective.
_B, _C, _N, _K, _DTYPE, _PER_IMAGE, _LOSS, _MARGIN, _SYMMETRIC, _CLASSES, _IGNORE, _WEIGHTS = range(12)
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The options in the order their disagreement is reported: whether there is a set at all, which loss, then the
# set's classes and pixels; the weights last, once the class counts are known to agree.
_OPTION_COLUMNS = {
    "per_image": _PER_IMAGE,
    "loss": _LOSS,
    "margin": _MARGIN,
    "symmetric": _SYMMETRIC,
    "classes": _CLASSES,
    "ignore": _IGNORE,
}
_PRIME = 2_147_483_647  # 2**31 - 1: the weights' digest is taken modulo this prime


class GlobalBatch(NamedTuple):
    """A process group whose ranks' batches form one loss, and the options every rank must share.

    ``loss`` names the per-pixel error (``'hinge'``, ``'softmax of logits'``...), so that two calls
    computing the same set agree (``lovasz_hinge`` and ``LovaszLoss('binary')``) and others do not.
    """

    group: ProcessGroup
    loss: str
    ignore: int | None
    margin: str = "relu"
    symmetric: bool = False

    def gather(
        self, pred: Tensor, codes: Tensor, per_image: bool, classes: str | tuple[int, ...], weights: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The group's global batch (see :func:`gather_global_batch`); per-image: ``pred`` and ``codes``
        as they are, once every rank is known to run per-image with the same options.

        Compiled per-image losses skip the check: it needs the table on the host, a graph break
        where per-image losses otherwise have none (batch mode needs the host anyway).
        """
        if per_image and torch.compiler.is_compiling():
            return pred, codes
        options = {
            "per_image": per_image,
            "loss": self.loss,
            "margin": self.margin,
            "symmetric": self.symmetric,
            "classes": classes,
            "ignore": self.ignore,
        }
        table = _exchange_table(pred, codes, options, weights, self.group)
        _check_agreement(table, options, self.group)
        if per_image:
            return pred, codes
        _check_compatible(table)
        _check_weights(table, weights, self.group)
        return _gather_batch(pred, codes, table, self.group)


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES)


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]).replace("torch.", "") if code < len(_DTYPES) else "another dtype"


def _digest(value: object) -> int:
    """A number for an option, the same in every process (``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=7).digest(), "big")


def _weights_digest(weights: Tensor | None, classes: int, device: torch.device) -> Tensor:
    """``[1]`` int64: a digest of the class weights (ones where None, which weigh alike), computed where
    the weights are, in exact integer arithmetic: no host sync, and no rounding that could differ.

    The float64 bits of each weight, in four 16-bit limbs, are summed with distinct coefficients
    modulo a prime: two weight vectors that differ in one limb always differ here, and others
    agree by chance only (about 1 in 2**31).
    """
    if weights is None:
        w = torch.ones(classes, dtype=torch.float64, device=device)
    else:
        w = weights.detach().to(torch.float64).reshape(-1)
    bits = w.view(torch.int64)
    limbs = torch.stack([(bits >> shift) & 0xFFFF for shift in (0, 16, 32, 48)], dim=-1).reshape(-1)
    index = torch.arange(limbs.numel(), dtype=torch.int64, device=limbs.device)
    coefficients = (index * 1_103_515_245 + 12_345) % (_PRIME - 1) + 1  # in [1, P - 1]: never 0 modulo P
    digest = ((limbs * coefficients) % _PRIME).sum().remainder(_PRIME)  # each term < 2**31: no overflow
    return digest.reshape(1).to(device)


def _shape_device(pred: Tensor, group: ProcessGroup) -> torch.device:
    """Where the table travels: the CPU where the backend takes CPU tensors (gloo, mpi,
    ``"cpu:gloo,cuda:nccl"``), which keeps an accelerator out of it; else ``pred``'s device (nccl)."""
    import torch.distributed as dist

    if pred.device.type == "cpu":
        return pred.device
    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend or "cpu:" in backend:
        return torch.device("cpu")
    return pred.device


def _exchange_table(
    pred: Tensor, codes: Tensor, options: dict[str, object], weights: Tensor | None, group: ProcessGroup
) -> list[list[int]]:
    """Every rank's row: its batch's shape and dtype, and its options (see ``_B`` ...)."""
    import torch.distributed as dist

    if pred.ndim != 3 or codes.ndim != 3 or pred.shape[0] != codes.shape[0] or pred.shape[2] != codes.shape[2]:
        raise AssertionError(
            f"pred [B, C, N] and codes [B, K, N] expected; got {list(pred.shape)}, {list(codes.shape)}"
        )  # an internal error: the same on every rank
    batch, classes, pixels = pred.shape
    row = [batch, classes, pixels, codes.shape[1], _dtype_code(pred.dtype), int(bool(options["per_image"]))]
    row += [_digest(options[name]) for name in ("loss", "margin", "symmetric", "classes", "ignore")]
    device = _shape_device(pred, group)
    # The weights' digest leaves their device only where the table is on the CPU and they are not: a
    # gloo table for CUDA predictions given CUDA weights, one 8-byte copy after the forward pass.
    mine = torch.cat([torch.tensor(row, dtype=torch.int64, device=device), _weights_digest(weights, classes, device)])
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, mine, group=group)
    # The one host synchronisation: the checks, the padding and the tensors to receive need the table on
    # the host. On gloo (or any CPU-capable backend) it waits for the other ranks, not for a device.
    return torch.stack(rows).tolist()


def _describe(values: Sequence[object], what: Callable[[object], str]) -> str:
    """``"rank 0 has 3 classes, ranks 1, 2 have 4 classes"``: ranks grouped by value, in rank order."""
    groups: dict[object, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault(value, []).append(rank)
    parts = []
    for value, ranks in groups.items():
        who = f"rank {ranks[0]} has" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))} have"
        parts.append(f"{who} {what(value)}")
    return ", ".join(parts)


def _shown(name: str, value: object) -> str:
    """An option as the error message shows it: ``per_image=True``, ``classes=[0, 2]``, ``the loss 'hinge'``."""
    if name == "loss":
        return f"the loss {value!r}"
    if isinstance(value, tuple):
        value = list(value)
    return f"{name}={value!r}"


def _raise_disagreement(subject: str, shown: str, table: list[list[int]], group: ProcessGroup) -> None:
    """Every rank sees the same table, so every rank comes here together: one more collective, for the
    options as text (a digest names no value), and the same ``ValueError`` on every rank."""
    import torch.distributed as dist

    texts: list[object] = [None] * len(table)
    dist.all_gather_object(texts, shown, group=group)
    raise ValueError(
        f"process_group: the ranks' batches form one loss, so every rank must pass the same {subject}; "
        f"{_describe(texts, str)}"
    )


def _check_agreement(table: list[list[int]], options: dict[str, object], group: ProcessGroup) -> None:
    """Raise the same ValueError on every rank where the ranks' options differ."""
    for name, column in _OPTION_COLUMNS.items():
        if len({row[column] for row in table}) > 1:
            subject = "loss (the function, and from_logits)" if name == "loss" else name
            _raise_disagreement(subject, _shown(name, options[name]), table, group)


def _check_weights(table: list[list[int]], weights: Tensor | None, group: ProcessGroup) -> None:
    """Raise the same ValueError on every rank where the class weights differ (the class counts agree)."""
    if len({row[_WEIGHTS] for row in table}) > 1:
        shown = "weights=None" if weights is None else f"weights={weights.detach().cpu().tolist()}"
        _raise_disagreement("class weights", shown, table, group)


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


def _gather_batch(pred: Tensor, codes: Tensor, table: list[list[int]], group: ProcessGroup) -> tuple[Tensor, Tensor]:
    """The batches of every rank of ``group`` as one batch: ``pred [sum B_r, C, N]``, ``codes [sum B_r, K, N]``.

    ``pred [B_r, C, N_r]`` (float) and ``codes [B_r, K, N_r]`` (uint8, ``IGNORED`` marking
    pixels that take no part) may differ across ranks in ``B_r`` and ``N_r``; the images
    are concatenated in rank order, each padded to the group's largest ``N`` with
    ignored pixels, so the batch-mode loss of the result is the loss of the union of
    every rank's pixels. Only this rank's own part carries gradient: every rank
    computes the same global loss, so the gradient of its own part is exactly its
    share of the global gradient.
    """
    import torch.distributed as dist

    world, me = dist.get_world_size(group), dist.get_rank(group)
    batch = pred.shape[0]
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


def global_mean(values: Tensor, weights: Tensor, group: ProcessGroup) -> Tensor:
    """The weighted mean of every rank's ``values`` (0 where every weight is 0), the same on every rank, with the
    gradient of this rank's own values and weights: its slice of the single-process gradient (the other ranks'
    sums enter as constants), as the batch-mode Lovász term's. Two numbers are all-reduced."""
    import torch.distributed as dist

    total, weight = (values * weights).sum(), weights.sum()
    sums = torch.stack([total.detach(), weight.detach()])
    dist.all_reduce(sums, group=group)
    total = total + (sums[0] - total.detach())
    weight = weight + (sums[1] - weight.detach())
    return total / torch.where(weight > 0, weight, torch.ones_like(weight))
