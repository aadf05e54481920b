"""Framework-agnostic argument checks shared by every backend.

They look only at Python values and shapes (never at array contents), so they
run at trace time under ``torch.compile``, ``tf.function`` and ``jax.jit``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import Any, SupportsIndex

import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def _integer_dtype(dtype: Any) -> bool:
    try:
        return np.dtype(dtype).kind in "iu"
    except TypeError:  # a TensorFlow dtype
        return bool(getattr(dtype, "is_integer", False))


def check_classes(classes: str | Iterable[Any], num_classes: int | None) -> str | tuple[int, ...]:
    """Return 'present', 'all' or a tuple of ints in ``[0, num_classes)`` (``>= 0`` where the number of
    classes is not known yet: a Keras loss built before it sees its input).

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
            if dtype is not None and _integer_dtype(dtype):  # whole numbers, but not known: traced
                raise TypeError(
                    "classes must be known when the function is traced: a list or a NumPy array (under jax.jit a "
                    f"static argument, not a traced one); got a traced array of dtype {getattr(dtype, 'name', dtype)}"
                ) from None
            came = (
                f"an array of dtype {getattr(dtype, 'name', dtype)}"
                if dtype is not None
                else f"{c!r} of type {type(c).__name__}"
            )
            raise TypeError(f"classes must contain integer class indices; got {came}") from None
    for c in indices:
        if num_classes is None and c < 0:
            raise ValueError(f"classes must be class indices >= 0; got {c}")
        if num_classes is not None and not 0 <= c < num_classes:
            raise ValueError(f"classes must lie in [0, {num_classes - 1}] for {num_classes} classes; got {c}")
    return tuple(indices)


MARGINS = ("relu", "elu")


def check_flag(value: object, name: str) -> bool:
    """An option that is True or False (NumPy's bools too): a string or a number would count by its truth
    (``from_logits="no"`` as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_hinge_variant(margin: str, symmetric: bool, from_logits: bool = True) -> tuple[str, bool]:
    """The hinge's ``margin`` ('relu': ``max(0, m)``; 'elu': ``elu(m) + 1``) and ``symmetric`` flag;
    variants of the hinge, so only on scores (``from_logits``), not on probabilities."""
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS} (max(0, m) or elu(m) + 1 of the margin m); got {margin!r}")
    symmetric = check_flag(symmetric, "symmetric")
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
    try:
        return operator.index(ignore)  # (int() would truncate a 0-d float tensor's 2.5 to 2)
    except TypeError:
        if any(kind.__name__ == "Tracer" for kind in type(ignore).__mro__):  # jax.jit's: known only when run
            raise TypeError(
                f"{name} must be an int known when the function is traced (under jax.jit a static argument); "
                f"got a traced {type(ignore).__name__}"
            ) from None
        raise TypeError(f"{name} must be an int or None; got {ignore!r}") from None


def ignore_held(ignore: int | None, bounds: Any) -> int | None:
    """``ignore`` where a label of the integer dtype whose ``iinfo`` is ``bounds`` (None: any other dtype)
    can hold it; else None, no pixel ignored. Compared as they are, -1 would wrap to 255 in uint8 labels
    (255 to -1 in int8), and leave out the pixels of that value without a word; NumPy compares without
    wrapping, and so do the metrics. The labels' range check then names the value."""
    if ignore is None or bounds is None:
        return ignore
    return ignore if int(bounds.min) <= ignore <= int(bounds.max) else None


def check_known_rank(x: Any, name: str) -> None:
    """A TF tensor of unknown rank (a ``tf.py_function``'s output in ``tf.data``) cannot be laid out: the
    layouts are told apart by rank while tracing. Other arrays always have one."""
    if getattr(getattr(x, "shape", None), "rank", 0) is None:
        raise ValueError(
            f"{name} must have a known rank; got shape <unknown> (set it with tf.ensure_shape, or in the "
            "tf.function's input_signature: unknown dims may be None)"
        )


def check_count(value: Any, name: str, minimum: int = 0) -> int:
    """An int of at least ``minimum`` (NumPy's ints too): a bool, a float or a string is no count."""
    what = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, int) and not isinstance(value, bool):  # (torch.compile reads no hasattr of a SymInt)
        count = value
    elif isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be {what}; got {value!r} of type {type(value).__name__}")
    else:
        count = operator.index(value)
    if count < minimum:
        raise ValueError(f"{name} must be {what}; got {count}")
    return count


def check_term_weight(value: Any, name: str) -> float:
    """A loss term's weight (the cross-entropy's, the Lovász term's, a schedule's): a finite non-negative real
    number (NumPy's floats too, not its bools). NaN passes ``< 0``, and inf makes a schedule's warm-up weight
    NaN (``1 + (inf - 1) * 0``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite non-negative number; got {value!r} of type {type(value).__name__}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond every float: 10**400
        finite = False
    if not (finite and float(value) >= 0):
        raise ValueError(f"{name} must be a finite non-negative number; got {value!r}")
    return float(value)


def check_weight_values(values: Iterable[float], name: str = "weights") -> float:
    """Class weights, where their values are known: finite and >= 0 (0 takes a class out of the mean). A
    negative sum would turn the weighted mean's sign, a NaN the loss.

    Returns a power of two to scale them by, 1 unless their largest is far from 1: the weighted mean takes
    only their ratios, and float32 holds neither a sum past 3.4e38 (the loss was 0 or NaN) nor, on XLA's and
    TensorFlow's CPU kernels, which flush them to zero, numbers below 1.2e-38 (weights of 1e-39 gave 0).
    Scaled by a power of two, their ratios keep their bits."""
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):  # a string ('abc' iterates to letters), a number, None inside
        raise TypeError(f"{name} must be [C] real numbers (one weight per class); got {values!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{name} must be finite numbers >= 0 (a weight of 0 takes a class out); got {values}")
    largest = max(values, default=0.0)
    if largest == 0 or 2.0**-60 <= largest <= 2.0**60:
        return 1.0
    return 2.0 ** min(max(-math.frexp(largest)[1], -1022), 1023)  # (a normal float64: kernels flush the rest)


def check_weights_shape(shape: Iterable[int | None], num_classes: int, name: str = "weights") -> None:
    shape = tuple(shape)
    if not compatible(shape, (num_classes,)):
        raise ValueError(f"{name} must have shape [{num_classes}] (one weight per class); got {list(shape)}")


# Shapes may hold unknown dims (None: TF while tracing a tf.function with an input_signature, or Keras on a
# tf.data pipeline): an unknown dim matches any size, as in TF's TensorShape.is_compatible_with. Where only
# the unknown dims could tell two layouts apart, the functions below take the first that the known dims
# allow, in the order they try layouts of known shapes; at run time TF's reshapes and squeezes of the
# layout fail on inputs that do not fit it. (The rank of every shape is known.)


def same_dim(a: int | None, b: int | None) -> bool:
    """Dims that may be equal: equal sizes, or either unknown (None)."""
    # Identity first, as tuples compare: torch.export's symbolic sizes need no guard then.
    return a is b or a is None or b is None or bool(a == b)


def compatible(a: Sequence[int | None], b: Sequence[int | None]) -> bool:
    """Shapes that may be equal (TF's ``is_compatible_with`` for known ranks): of one rank, each dim :func:`same_dim`.

    The lengths first: torch.export would compare the sizes pairwise and guard on unequal dims."""
    return len(a) == len(b) and all(same_dim(x, y) for x, y in zip(a, b))


def fmt(shape: Iterable[int | None]) -> str:
    """``[2, 4, 4]``; an unknown dim prints as None (``[None, 4, 4]``), as TF's ``as_list`` shows it."""
    return "[" + ", ".join("None" if s is None else str(int(s)) for s in shape) + "]"


def _known_channels(shape: tuple[int | None, ...], axis: int, name: str) -> int:
    """The size of the class axis ``axis``, which must be known: the class count is static."""
    channels = shape[axis]
    if channels is None:
        raise ValueError(f"the class axis of {name} must be known; got shape {fmt(shape)}")
    return channels


def hinge_points(prediction_shape: Iterable[int | None], how: str, name: str = "logits") -> None:
    """The hinge's points-first logits are ``[N]`` or ``[N, 1]``: a message of the shape given (an ``[N, 2]``
    was refused later as the ``[1, 2, N]`` it became)."""
    p = tuple(prediction_shape)
    if len(p) not in (1, 2) or len(p) == 2 and p[1] is not None and p[1] != 1:
        raise ValueError(f"{name} must be points-first, [N] (or [N, 1]: one score per point), {how}; got {fmt(p)}")


def points_label_axis(
    prediction_shape: Iterable[int | None], labels_shape: Iterable[int | None], multilabel: bool
) -> bool:
    """Whether points-first labels are ``[N, 1]``: the ``[N]`` of a prediction ``[N, C]``, ``[N]`` or ``[N, 1]``
    with the extra size-1 axis that images' labels may have (``[B, H, W, 1]``), which the caller drops."""
    p, l = tuple(prediction_shape), tuple(labels_shape)
    return not multilabel and len(p) in (1, 2) and len(l) == 2 and same_dim(l[1], 1) and same_dim(l[0], p[0])


def points_layout(
    prediction_shape: Iterable[int | None],
    labels_shape: Iterable[int | None],
    multilabel: bool,
    names: tuple[str, str],
    how: str,
) -> None:
    """Check points-first inputs of scenes (point clouds), given ``how`` (e.g. ``with offsets=``): a prediction
    ``[N, C]`` (or ``[N]`` for one channel), labels ``[N]``; multi-label ``[N, C]`` and ``[N, C]``."""
    p, l = tuple(prediction_shape), tuple(labels_shape)
    prediction, labels = names
    if len(p) not in ((2,) if multilabel else (1, 2)):
        shapes = "[N, C]" if multilabel else "[N, C] (or [N] for one channel)"
        raise ValueError(f"{prediction} must be points-first, {shapes}, {how}; got {fmt(p)}")
    expected = p if multilabel else p[:1]
    if not compatible(l, expected):
        raise ValueError(f"{labels} must have shape {fmt(expected)} for {prediction} of shape {fmt(p)}; got {fmt(l)}")


def softmax_layout(
    probas_shape: Iterable[int | None],
    labels_shape: Iterable[int | None],
    channel_axis: int = 1,
    names: tuple[str, str] = ("probas", "labels"),
) -> tuple[bool, int]:
    """Check the shapes of ``lovasz_softmax``'s inputs (called ``names`` in the messages).

    Returns ``(sigmoid, num_classes)``: ``sigmoid`` is True when ``probas`` has the
    labels' shape (one foreground probability per pixel, read as two classes). The ranks
    decide between the two, so unknown dims (None) leave no doubt; the class axis must be known.
    """
    p, l = tuple(probas_shape), tuple(labels_shape)
    probas, labels = names
    if len(p) < 2:
        raise ValueError(f"{probas} must have shape [B, C, *spatial] or [B, *spatial]; got {fmt(p)}")
    if compatible(p, l):
        return True, 2
    ax = channel_axis % len(p)
    expected = p[:ax] + p[ax + 1 :]
    if not compatible(expected, l):
        where = "channels-first [B, C, *spatial]" if ax == 1 else "channels-last [B, *spatial, C]"
        raise ValueError(
            f"{labels} must have shape {fmt(expected)} to match {probas} {fmt(p)} ({where}; or the shape of "
            f"{probas} for sigmoid output); got {fmt(l)}"
        )
    channels = _known_channels(p, ax, probas)
    if channels < 1:
        raise ValueError(f"{probas} must have at least one class channel; got shape {fmt(p)}")
    return False, int(channels)


def hinge_layout(logits_shape: Iterable[int | None], labels_shape: Iterable[int | None]) -> None:
    """``lovasz_hinge`` takes logits [B, *spatial] or [B, 1, *spatial] with labels [B, *spatial].

    Logits of one more dim than the labels whose last dim is unknown (None) are also taken: only
    a size-1 channel axis there fits (TF's caller squeezes a known one; its reshape checks this)."""
    s, l = tuple(logits_shape), tuple(labels_shape)
    if len(s) < 1:
        raise ValueError(f"logits must have shape [B, *spatial]; got a scalar of shape {fmt(s)}")
    if compatible(s, l):
        return
    if len(s) == len(l) + 1 and len(s) >= 2:
        if same_dim(s[1], 1) and compatible(s[:1] + s[2:], l):
            return
        if s[-1] is None and compatible(s[:-1], l):
            return
    raise ValueError(
        f"labels must have shape [B, *spatial] to match logits [B, *spatial] or [B, 1, *spatial]; "
        f"got logits {fmt(s)} and labels {fmt(l)}"
    )


def multilabel_layout(
    logits_shape: Iterable[int | None],
    targets_shape: Iterable[int | None],
    names: tuple[str, str] = ("logits", "targets"),
) -> int:
    """The class count of channels-first ``[B, C, *spatial]`` logits and targets of that shape
    (unknown dims match any size; the class axis must be known)."""
    s, t = tuple(logits_shape), tuple(targets_shape)
    logits, targets = names
    if len(s) < 2:
        raise ValueError(f"{logits} must have shape [B, C, *spatial]; got {fmt(s)}")
    if not compatible(s, t):
        raise ValueError(f"{targets} must have the shape of {logits} {fmt(s)} ([B, C, *spatial] of 0/1); got {fmt(t)}")
    return int(_known_channels(s, 1, logits))


def without_axis(shape: Iterable[int | None], axis: int) -> tuple[int | None, ...]:
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
    cases are read, and the trailing axis first.

    An unknown dim (None) matches any size, in the same order: labels that may be an accepted shape
    are taken as they are, and an unknown dim that may be 1 is dropped only when nothing earlier fits
    (TF's squeeze then checks at run time that it is 1)."""
    l, accepted = tuple(labels_shape), [tuple(s) for s in accepted_shapes]

    def fits(shape: tuple[int | None, ...]) -> bool:
        return any(compatible(shape, a) for a in accepted)

    if fits(l):
        return None
    if len(l) >= 2 and same_dim(l[-1], 1) and fits(l[:-1]):
        return -1
    if len(l) >= 3 and same_dim(l[1], 1) and fits(l[:1] + l[2:]):
        return 1
    return None
