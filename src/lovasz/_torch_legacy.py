"""The original ``pytorch/lovasz_losses.py``'s helpers beside the losses, so that ``import lovasz.torch as L``
replaces ``import lovasz_losses as L`` in code that calls them: the same names, arguments, defaults and
values (re-exported by :mod:`lovasz.torch`; ``iou`` and ``iou_binary`` live in :mod:`lovasz.metrics`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lovasz import _validation as V


def isnan(x: Any) -> Any:
    """``x != x``: True where ``x`` is NaN (a tensor elementwise), as the original's ``isnan``.

    Example:
        >>> isnan(float("nan")), isnan(1.0)
        (True, False)
    """
    return x != x


def mean(l: Iterable[Any], ignore_nan: bool = False, empty: Any = 0) -> Any:  # noqa: E741  (the original's name)
    """The mean of an iterable of numbers or tensors, as the original's ``mean`` (which its per-image
    loops call): NaN values left out with ``ignore_nan``; ``empty`` for nothing (``'raise'``: a
    ``ValueError``). Tensors are summed as they are (differentiable).

    Example:
        >>> mean([1.0, float("nan"), 3.0], ignore_nan=True)
        2.0
    """
    ignore_nan = V.check_flag(ignore_nan, "ignore_nan")
    items = iter(l)
    if ignore_nan:
        items = itertools.filterfalse(lambda v: bool(isnan(v)), items)
    try:
        total = next(items)
    except StopIteration:
        if isinstance(empty, str) and empty == "raise":
            raise ValueError("mean: empty input (empty='raise')") from None
        return empty
    count = 1
    for v in items:
        total = total + v  # (not +=: the original's in-place sum wrote into the first tensor)
        count += 1
    return total if count == 1 else total / count


def xloss(logits: Tensor, labels: Tensor, ignore: int | None = None) -> Tensor:
    """Cross-entropy of ``[B, C, H, W]`` logits, as the original's ``xloss``, which leaves out the pixels
    labelled 255 whatever ``ignore`` says: here ``ignore=None`` does so, and a given ``ignore`` is honoured.

    Example:
        >>> round(float(xloss(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 255]]]))), 4)
        0.6931
    """
    ignore = V.check_ignore(ignore)
    return F.cross_entropy(logits, labels, ignore_index=255 if ignore is None else ignore)


class StableBCELoss(nn.Module):
    """The mean binary cross-entropy of logits against 0/1 targets, as the original's ``StableBCELoss``
    (``max(x, 0) - x y + log(1 + exp(-|x|))``: torch's ``binary_cross_entropy_with_logits``).

    Example:
        >>> round(float(StableBCELoss()(torch.zeros(2), torch.tensor([0.0, 1.0]))), 4)
        0.6931
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if target.shape != input.shape and _broadcasts_to(target.shape, input.shape):
            target = target.expand_as(input)  # a target that broadcasts to the input's shape, as the original's
        return F.binary_cross_entropy_with_logits(input, target.to(input.dtype))


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:  # shapes that do not broadcast: binary_cross_entropy_with_logits names both
        return False


def binary_xloss(logits: Tensor, labels: Tensor, ignore: int | None = None) -> Tensor:
    """Binary cross-entropy of ``[B, H, W]`` logits against 0/1 labels, pixels labelled ``ignore`` left
    out, as the original's ``binary_xloss``.

    Example:
        >>> round(float(binary_xloss(torch.zeros(1, 1, 2), torch.tensor([[[1, 255]]]), ignore=255)), 4)
        0.6931
    """
    from lovasz.torch import flatten_binary_scores  # (lovasz.torch re-exports this module: imported when called)

    logits, labels = flatten_binary_scores(logits, labels, ignore)
    if not labels.numel():  # every pixel ignored: 0, as the losses give (the original's mean of nothing: NaN)
        return logits.sum() * 0
    return StableBCELoss()(logits, labels.float())


__all__ = ["isnan", "mean", "xloss", "binary_xloss", "StableBCELoss"]
