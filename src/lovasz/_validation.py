"""Framework-agnostic argument checks shared by every backend.

They look only at Python values and shapes (never at array contents), so they
run at trace time under ``torch.compile``, ``tf.function`` and ``jax.jit``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any, SupportsIndex

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def check_classes(classes: str | Iterable[Any], num_classes: int) -> str | tuple[int, ...]:
    """Return 'present', 'all' or a tuple of ints in ``[0, num_classes)``.

    A list, array or tensor of classes must be 1-D and hold integers: a float 1.7 is an
    error, never class 1 (``int`` would truncate it; ``operator.index`` refuses it).
    """
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a list of class indices; got {classes!r}")
        return classes
    shape = getattr(classes, "shape", None)
    if shape is not None and len(shape) != 1:
        raise ValueError(f"classes must be a 1-D list of class indices; got an array of shape {list(shape)}")
    try:
        listed = list(classes)
    except TypeError:
        raise TypeError(
            f"classes must be 'present', 'all' or a list of class indices; got {type(classes).__name__}"
        ) from None
    if not listed:
        raise ValueError("classes must not be an empty list")
    indices = []
    for c in listed:
        try:
            if isinstance(c, bool):
                raise TypeError
            indices.append(operator.index(c))
        except (TypeError, AttributeError, ValueError):
            dtype = getattr(classes, "dtype", None)
            came = (
                f"an array of dtype {getattr(dtype, 'name', dtype)}"
                if dtype is not None
                else f"{c!r} of type {type(c).__name__}"
            )
            raise TypeError(f"classes must contain integer class indices; got {came}") from None
    for c in indices:
        if not 0 <= c < num_classes:
            raise ValueError(f"classes must lie in [0, {num_classes - 1}] for {num_classes} classes; got {c}")
    return tuple(indices)


MARGINS = ("relu", "elu")


def check_hinge_variant(margin: str, symmetric: bool, from_logits: bool = True) -> tuple[str, bool]:
    """The hinge's ``margin`` ('relu': ``max(0, m)``; 'elu': ``elu(m) + 1``) and ``symmetric`` flag;
    variants of the hinge, so only on scores (``from_logits``), not on probabilities."""
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS} (max(0, m) or elu(m) + 1 of the margin m); got {margin!r}")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be True or False; got {symmetric!r}")
    if not from_logits and (margin != "relu" or symmetric):
        raise ValueError(
            f"margin={margin!r} and symmetric={symmetric} are variants of the hinge: they need "
            "from_logits=True (scores), not probabilities"
        )
    return margin, symmetric


def check_ignore(ignore: SupportsIndex | None, name: str = "ignore") -> int | None:
    if ignore is None:
        return None
    if isinstance(ignore, bool) or not hasattr(ignore, "__index__"):
        raise TypeError(f"{name} must be an int or None; got {ignore!r}")
    return int(ignore)


def check_weights_shape(shape: tuple[int, ...], num_classes: int, name: str = "weights") -> None:
    if tuple(shape) != (num_classes,):
        raise ValueError(f"{name} must have shape [{num_classes}] (one weight per class); got {list(shape)}")


def fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def points_layout(
    prediction_shape: Sequence[int], labels_shape: Sequence[int], multilabel: bool, names: tuple[str, str], how: str
) -> None:
    """Check points-first inputs of scenes (point clouds), given ``how`` (e.g. ``with offsets=``): a prediction
    ``[N, C]`` (or ``[N]`` for one channel), labels ``[N]``; multi-label ``[N, C]`` and ``[N, C]``."""
    p, l = tuple(prediction_shape), tuple(labels_shape)
    prediction, labels = names
    if len(p) not in ((2,) if multilabel else (1, 2)):
        shapes = "[N, C]" if multilabel else "[N, C] (or [N] for one channel)"
        raise ValueError(f"{prediction} must be points-first, {shapes}, {how}; got {fmt(p)}")
    expected = p if multilabel else p[:1]
    if l != expected:
        raise ValueError(f"{labels} must have shape {fmt(expected)} for {prediction} of shape {fmt(p)}; got {fmt(l)}")


def softmax_layout(
    probas_shape: Iterable[int],
    labels_shape: Iterable[int],
    channel_axis: int = 1,
    names: tuple[str, str] = ("probas", "labels"),
) -> tuple[bool, int]:
    """Check the shapes of ``lovasz_softmax``'s inputs (called ``names`` in the messages).

    Returns ``(sigmoid, num_classes)``: ``sigmoid`` is True when ``probas`` has the
    labels' shape (one foreground probability per pixel, read as two classes).
    """
    p, l = tuple(probas_shape), tuple(labels_shape)
    probas, labels = names
    if len(p) < 2:
        raise ValueError(f"{probas} must have shape [B, C, *spatial] or [B, *spatial]; got {fmt(p)}")
    # Lengths first: torch.export would compare the sizes pairwise and guard on unequal dims.
    if len(p) == len(l) and p == l:
        return True, 2
    ax = channel_axis % len(p)
    expected = p[:ax] + p[ax + 1 :]
    if expected != l:
        where = "channels-first [B, C, *spatial]" if ax == 1 else "channels-last [B, *spatial, C]"
        raise ValueError(
            f"{labels} must have shape {fmt(expected)} to match {probas} {fmt(p)} ({where}; or the shape of "
            f"{probas} for sigmoid output); got {fmt(l)}"
        )
    if p[ax] < 1:
        raise ValueError(f"{probas} must have at least one class channel; got shape {fmt(p)}")
    return False, int(p[ax])


def hinge_layout(logits_shape: Iterable[int], labels_shape: Iterable[int]) -> None:
    """``lovasz_hinge`` takes logits [B, *spatial] or [B, 1, *spatial] with labels [B, *spatial]."""
    s, l = tuple(logits_shape), tuple(labels_shape)
    if len(s) < 1:
        raise ValueError(f"logits must have shape [B, *spatial]; got a scalar of shape {fmt(s)}")
    if (len(s) == len(l) and s == l) or (len(s) == len(l) + 1 and len(s) >= 2 and s[1] == 1 and s[:1] + s[2:] == l):
        return
    raise ValueError(
        f"labels must have shape [B, *spatial] to match logits [B, *spatial] or [B, 1, *spatial]; "
        f"got logits {fmt(s)} and labels {fmt(l)}"
    )


def multilabel_layout(
    logits_shape: Iterable[int], targets_shape: Iterable[int], names: tuple[str, str] = ("logits", "targets")
) -> int:
    s, t = tuple(logits_shape), tuple(targets_shape)
    logits, targets = names
    if len(s) < 2:
        raise ValueError(f"{logits} must have shape [B, C, *spatial]; got {fmt(s)}")
    if len(s) != len(t) or s != t:
        raise ValueError(f"{targets} must have the shape of {logits} {fmt(s)} ([B, C, *spatial] of 0/1); got {fmt(t)}")
    return int(s[1])


def without_axis(shape: Iterable[int], axis: int) -> tuple[int, ...]:
    """``shape`` with dim ``axis`` left out (a negative axis counts from the end)."""
    s = tuple(shape)
    if not s:
        return s
    axis %= len(s)
    return s[:axis] + s[axis + 1 :]


def extra_label_axis(labels_shape: Iterable[int | None], accepted_shapes: Iterable[Iterable[int | None]]) -> int | None:
    """The size-1 axis to drop from labels that are an accepted shape plus one: last (``-1``:
    ``[B, H, W, 1]``, as Keras gives sparse labels) or second (``1``: ``[B, 1, H, W]``, as PyTorch
    pipelines give masks), whatever the prediction's channel order. ``None`` when the labels are
    accepted as they are or fit neither (the shape check then names them); only these unambiguous
    cases are read, and the trailing axis first."""
    l, accepted = tuple(labels_shape), [tuple(s) for s in accepted_shapes]
    if l in accepted:
        return None
    if len(l) >= 2 and l[-1] == 1 and l[:-1] in accepted:
        return -1
    if len(l) >= 3 and l[1] == 1 and l[:1] + l[2:] in accepted:
        return 1
    return None
