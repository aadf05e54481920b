"""Cross-entropy (or BCE) plus Lovász as one PyTorch loss; re-exported by :mod:`lovasz.torch`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lovasz import _validation as V

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from lovasz.torch import Classes, Weights


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean that is 0 (not NaN) when every weight is 0, e.g. every pixel ignored."""
    total = weights.sum()
    return (values * weights).sum() / torch.where(total > 0, total, torch.ones_like(total))


class CrossEntropyLovaszLoss(nn.Module):
    """``ce_weight * cross-entropy + lovasz_weight * Lovász`` on logits, one ``ignore_index`` for both.

    - ``mode='multiclass'``: softmax cross-entropy and :func:`lovasz_softmax` (input
      ``[B, C, *spatial]``, target ``[B, *spatial]`` class indices).
    - ``mode='binary'``: binary cross-entropy with logits and :func:`lovasz_hinge`.
    - ``mode='multilabel'``: binary cross-entropy per channel and :func:`lovasz_multilabel`.

    ``per_image``, ``classes``, ``ignore_index``, ``class_weights``, ``margin``, ``symmetric``, ``process_group`` and
    ``include_background`` are those of :class:`LovaszLoss` (a one-hot target too); ``class_weights`` also
    weigh the cross-entropy (``include_background``, as in MONAI's DiceCELoss, only the Lovász term) (as PyTorch's
    ``weight``: a weighted mean over pixels). Ignored pixels take no part in either
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
        from lovasz.torch import LovaszLoss

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
        self.mode, self.ignore_index = mode, self.lovasz.ignore_index
        self.ce_weight, self.lovasz_weight = float(ce_weight), float(lovasz_weight)

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
        with ``per_image=True`` (the cross-entropy is a mean over all points either way)."""
        from lovasz.torch import class_indices

        if self.mode == "multiclass":
            target = class_indices(input, target)
        total = input.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            total = total + self.ce_weight * self.cross_entropy(input, target)
        if self.lovasz_weight:
            scenes = {"batch": batch, "offsets": offsets, "num_scenes": num_scenes}
            total = total + self.lovasz_weight * self.lovasz(input, target, **scenes).float()
        if not (self.ce_weight or self.lovasz_weight):
            total = total + 0 * input.sum()  # keeps the graph, so backward() still works
        return total

    def cross_entropy(self, input: Tensor, target: Tensor) -> Tensor:
        """The cross-entropy term alone: a mean over the non-ignored pixels."""
        weights = self.lovasz.class_weights
        x = input.float()
        valid = None if self.ignore_index is None else target != self.ignore_index
        if self.mode == "multiclass":
            if x.ndim < 2 or x.shape[:1] + x.shape[2:] != target.shape:
                raise ValueError(
                    f"target must have shape {V.fmt(x.shape[:1] + x.shape[2:])} to match input "
                    f"{V.fmt(x.shape)} (class indices); got {V.fmt(target.shape)}"
                )
            safe = target.long() if valid is None else torch.where(valid, target.long(), 0)
            pixel_weight = torch.ones_like(x[:, 0]) if weights is None else weights.to(x.device)[safe]
            values = F.cross_entropy(x, safe, reduction="none")
        else:
            if self.mode == "binary" and x.ndim == target.ndim + 1 and x.shape[1] == 1:
                x = x.squeeze(1)
            if x.shape != target.shape:
                raise ValueError(f"target must have the shape of input {V.fmt(x.shape)}; got {V.fmt(target.shape)}")
            safe = target.float() if valid is None else torch.where(valid, target.float(), 0.0)
            pixel_weight = torch.ones_like(x)
            if weights is not None and self.mode == "multilabel":
                pixel_weight = pixel_weight * weights.to(x.device).view(1, -1, *([1] * (x.ndim - 2)))
            values = F.binary_cross_entropy_with_logits(x, safe, reduction="none")
        if valid is not None:
            pixel_weight = pixel_weight * valid
        return _masked_mean(values, pixel_weight)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ce_weight={self.ce_weight}, lovasz_weight={self.lovasz_weight}"
