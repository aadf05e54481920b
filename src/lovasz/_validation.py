"""Framework-agnostic argument checks shared by every backend.

They look only at Python values and shapes (never at array contents), so they
run at trace time under ``torch.compile``, ``tf.function`` and ``jax.jit``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def check_classes(classes, num_classes: int) -> object:
    """Return 'present', 'all' or a tuple of ints, validated against ``num_classes``."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a list of class indices; got {classes!r}")
        return classes
    try:
        listed = tuple(classes)
    except TypeError:
        raise TypeError(
            f"classes must be 'present', 'all' or a list of class indices; got {type(classes).__name__}"
        ) from None
    if not listed:
        raise ValueError("classes must not be an empty list")
    for c in listed:
        if isinstance(c, bool) or not isinstance(c, int) and not hasattr(c, "__index__"):
            raise TypeError(f"classes must contain integers; got {c!r} of type {type(c).__name__}")
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"classes must lie in [0, {num_classes - 1}] for {num_classes} classes; got {int(c)}")
    return tuple(int(c) for c in listed)


def check_ignore(ignore, name: str = "ignore") -> Optional[int]:
    if ignore is None:
        return None
    if isinstance(ignore, bool) or not hasattr(ignore, "__index__"):
        raise TypeError(f"{name} must be an int or None; got {ignore!r}")
    return int(ignore)


def check_weights_shape(shape: Tuple[int, ...], num_classes: int, name: str = "weights") -> None:
    if tuple(shape) != (num_classes,):
        raise ValueError(f"{name} must have shape [{num_classes}] (one weight per class); got {list(shape)}")


def fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def softmax_layout(probas_shape, labels_shape, channel_axis: int = 1) -> Tuple[bool, int]:
    """Check the shapes of ``lovasz_softmax``'s inputs.

    Returns ``(sigmoid, num_classes)``: ``sigmoid`` is True when ``probas`` has the
    labels' shape (one foreground probability per pixel, read as two classes).
    """
    p, l = tuple(probas_shape), tuple(labels_shape)
    if len(p) < 2:
        raise ValueError(f"probas must have shape [B, C, *spatial] or [B, *spatial]; got {fmt(p)}")
    if p == l:
        return True, 2
    ax = channel_axis % len(p)
    expected = p[:ax] + p[ax + 1:]
    if expected != l:
        where = "channels-first [B, C, *spatial]" if ax == 1 else "channels-last [B, *spatial, C]"
        raise ValueError(
            f"labels must have shape {fmt(expected)} to match probas {fmt(p)} ({where}; or the shape of "
            f"probas for sigmoid output); got {fmt(l)}"
        )
    if p[ax] < 1:
        raise ValueError(f"probas must have at least one class channel; got shape {fmt(p)}")
    return False, int(p[ax])


def hinge_layout(logits_shape, labels_shape) -> None:
    """``lovasz_hinge`` takes logits [B, *spatial] or [B, 1, *spatial] with labels [B, *spatial]."""
    s, l = tuple(logits_shape), tuple(labels_shape)
    if len(s) < 1:
        raise ValueError(f"logits must have shape [B, *spatial]; got a scalar of shape {fmt(s)}")
    if s == l or (len(s) == len(l) + 1 and len(s) >= 2 and s[1] == 1 and s[:1] + s[2:] == l):
        return
    raise ValueError(
        f"labels must have shape [B, *spatial] to match logits [B, *spatial] or [B, 1, *spatial]; "
        f"got logits {fmt(s)} and labels {fmt(l)}"
    )


def multilabel_layout(logits_shape, targets_shape) -> int:
    s, t = tuple(logits_shape), tuple(targets_shape)
    if len(s) < 2:
        raise ValueError(f"logits must have shape [B, C, *spatial]; got {fmt(s)}")
    if s != t:
        raise ValueError(f"targets must have the shape of logits {fmt(s)} ([B, C, *spatial] of 0/1); got {fmt(t)}")
    return int(s[1])
