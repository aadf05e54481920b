"""Cross-entropy first, then Lovász: the schedule the paper's authors recommend, framework-free.

Training with the Lovász loss alone from scratch often fails; Berman et al.
recommend optimising cross-entropy first and fine-tuning with Lovász-Softmax
(or keeping both). :class:`LovaszSchedule` gives the two weights at a step or
epoch ``t``; ``apply`` writes them into a combined loss (``ce_weight`` and
``lovasz_weight`` attributes), such as :class:`lovasz.torch.CrossEntropyLovaszLoss`
or :class:`lovasz.keras.CrossEntropyLovaszLoss` (whose Keras callback is
:class:`lovasz.keras.LovaszScheduleCallback`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, TypeVar

from lovasz._validation import check_count, check_term_weight


class Weighted(Protocol):
    """A combined loss: the weights of its cross-entropy and Lovász terms."""

    ce_weight: float
    lovasz_weight: float


WeightedLoss = TypeVar("WeightedLoss", bound=Weighted)


@dataclasses.dataclass(frozen=True)
class LovaszSchedule:
    """Cross-entropy alone for ``warmup`` steps (or epochs), then a linear ramp to Lovász.

    Args:
        warmup: steps (or epochs: the unit is whatever ``t`` counts) of cross-entropy alone.
        ramp: length of the linear ramp after it: the Lovász share rises by ``1/ramp`` a step and is
            whole at step ``warmup + ramp - 1``, so 0 and 1 both switch at once.
        final_ce_weight: the cross-entropy weight after the ramp: 0 for Lovász alone
            (fine-tuning), 1 to keep both.
        lovasz_weight: the Lovász weight after the ramp.

    Example:
        >>> schedule = LovaszSchedule(warmup=2, ramp=2)
        >>> [schedule.weights(t) for t in range(5)]
        [(1.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (0.0, 1.0)]
    """

    warmup: int
    ramp: int = 0
    final_ce_weight: float = 0.0
    lovasz_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("warmup", "ramp"):
            check_count(getattr(self, name), name)
        for name in ("final_ce_weight", "lovasz_weight"):
            check_term_weight(getattr(self, name), name)
        if not (self.final_ce_weight or self.lovasz_weight):  # (a loss of 0 after the ramp: training stops)
            raise ValueError(
                "final_ce_weight and lovasz_weight are both 0: after the ramp the loss would be 0 and training would "
                "stop without a word; give the Lovász term a weight (lovasz_weight=1.0, the default)"
            )

    def progress(self, t: int) -> float:
        """0 during the warm-up, rising linearly to 1 over the ramp."""
        t = check_count(t, "t")
        if t < self.warmup:
            return 0.0
        return 1.0 if self.ramp == 0 else min(float((t - self.warmup + 1) / self.ramp), 1.0)

    def weights(self, t: int) -> tuple[float, float]:
        """``(ce_weight, lovasz_weight)`` at step or epoch ``t`` (counted from 0)."""
        p = self.progress(t)
        return 1.0 + (float(self.final_ce_weight) - 1.0) * p, float(self.lovasz_weight) * p

    def apply(self, loss: WeightedLoss, t: int) -> WeightedLoss:
        """Set ``loss.ce_weight`` and ``loss.lovasz_weight`` for ``t``; returns ``loss``. A loss without
        them (a Lovász loss alone) raises ``TypeError``: setting them there would change nothing, silently."""
        weights = self.weights(t)
        missing = [name for name in ("ce_weight", "lovasz_weight") if not hasattr(loss, name)]
        if missing:
            raise TypeError(
                f"apply sets the weights of a combined loss (ce_weight and lovasz_weight, as CrossEntropyLovaszLoss "
                f"has); {type(loss).__name__} has no {' or '.join(missing)}"
            )
        loss.ce_weight, loss.lovasz_weight = weights
        return loss
