"""Lovász losses as Keras 3 losses, on every backend: TensorFlow, JAX and PyTorch.

The classes take ``(y_true, y_pred)``, as every Keras loss does (the functions of
:mod:`lovasz.tf`, :mod:`lovasz.jax` and :mod:`lovasz.torch` take
``(prediction, labels)``). Each call runs the native implementation of the
active backend, so it is as fast as that backend's functions and differentiable
in ``model.fit``. Channels-last by default (``data_format``), as Keras is.

With ``per_image=True`` a loss returns one value per image and Keras applies
``sample_weight`` and ``reduction`` to them; otherwise the batch is one set and
the loss is one number.

Example:
    >>> import numpy as np
    >>> loss = LovaszSoftmaxLoss(from_logits=True, ignore_class=255)
    >>> y_true = np.array([[[0, 1], [1, 255]]])  # [B=1, H=2, W=2]
    >>> y_pred = np.zeros((1, 2, 2, 3), "float32")  # [B, H, W, C] logits
    >>> round(float(loss(y_true, y_pred)), 4)
    0.6667
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import keras
from keras import ops

from lovasz import _validation as V

__all__ = [
    "LovaszSoftmaxLoss",
    "LovaszHingeLoss",
    "LovaszMultilabelLoss",
    "CrossEntropyLovaszLoss",
    "LovaszScheduleCallback",
    "LovaszSchedule",
]

DATA_FORMATS = ("channels_last", "channels_first")
_BACKENDS = {"tensorflow": "lovasz.tf", "jax": "lovasz.jax", "torch": "lovasz.torch"}

# A tensor of the active backend (tf.Tensor, jax.Array, torch.Tensor) or an array-like: Keras has no type of its own.
Tensor = Any
# A dtype name, a keras.DTypePolicy, or None for the global policy.
DType = Any


def _functions() -> tuple[str, ModuleType]:
    """The module of lovasz functions for the active Keras backend."""
    name = keras.backend.backend()
    if name not in _BACKENDS:
        raise NotImplementedError(f"lovasz.keras runs on the backends {sorted(_BACKENDS)}; Keras uses {name!r}")
    return name, importlib.import_module(_BACKENDS[name])


def _channel_kwargs(backend: str, channels_last: bool) -> dict[str, Any]:
    """How each backend's functions are told where the class axis is."""
    if backend == "tensorflow":
        return {"order": "BHWC" if channels_last else "BCHW"}
    if backend == "jax":
        return {"axis": -1 if channels_last else 1}
    return {}  # torch is channels-first: the prediction is moved instead


def _squeeze_channel(x: Tensor, axis: int, rank: int) -> Tensor:
    """Drop a size-1 channel axis from a rank-``rank`` tensor (Keras masks often come as [B, H, W, 1])."""
    return ops.squeeze(x, axis) if len(x.shape) == rank and x.shape[axis] == 1 else x


def _drop_binary_channel(y_true: Tensor, y_pred: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """Binary input with a size-1 channel axis: drop it from the prediction and, if there, the target."""
    rank = len(y_pred.shape)
    if rank >= 2 and y_pred.shape[axis] == 1:
        y_true, y_pred = _squeeze_channel(y_true, axis, rank), ops.squeeze(y_pred, axis)
    if len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)  # [B, *spatial, 1] masks for a [B, *spatial] prediction
    return y_true, y_pred


def _reduced(loss: Tensor, reduction: str | None) -> Tensor:
    """Keras passes an empty ``[0]`` loss (an empty batch) through unreduced: a reduced loss is 0-d, 0 there."""
    if reduction not in (None, "none") and tuple(loss.shape) == (0,):
        return ops.sum(loss)
    return loss


def _valid_mask(labels: Tensor, ignore: int | None) -> Tensor:
    """1.0 where a pixel takes part, 0.0 where it is labelled ``ignore``."""
    return ops.ones_like(labels, "float32") if ignore is None else ops.cast(ops.not_equal(labels, ignore), "float32")


class _LovaszLoss(keras.losses.Loss):
    """What the three losses share: options, the data format, the backend dispatch and the config."""

    def __init__(
        self,
        *,
        per_image: bool,
        ignore_class: int | None,
        data_format: str | None,
        name: str,
        reduction: str,
        dtype: DType,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        data_format = data_format or keras.config.image_data_format()
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}; got {data_format!r}")
        self.per_image = bool(per_image)
        self.ignore_class = V.check_ignore(ignore_class, "ignore_class")
        self.data_format = data_format

    @property
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return _reduced(super().__call__(y_true, y_pred, sample_weight), self.reduction)

    def _run(self, function: str, y_pred: Tensor, labels: Tensor, channels: bool = True, **kwargs: Any) -> Tensor:
        """Call ``function`` of the backend's module; ``channels=False`` for inputs without a class axis."""
        backend, module = _functions()
        channels_last = self.data_format == "channels_last"
        if not channels:
            pass
        elif backend == "torch" and channels_last:
            y_pred = y_pred.movedim(-1, 1)
            labels = labels.movedim(-1, 1) if function == "lovasz_multilabel" else labels
        else:
            kwargs.update(_channel_kwargs(backend, channels_last))
        return getattr(module, function)(
            y_pred,
            labels,
            per_image=self.per_image,
            ignore=self.ignore_class,
            reduction="none" if self.per_image else "mean",
            **kwargs,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "per_image": self.per_image,
            "ignore_class": self.ignore_class,
            "data_format": self.data_format,
        }


def _classes_config(classes: str | Sequence[int]) -> str | list[int]:
    classes = V.check_classes(classes, 1 << 30)  # the form only; the range is checked against the input
    return classes if isinstance(classes, str) else list(classes)


def _weights_config(class_weights: Sequence[float] | None) -> list[float] | None:
    return None if class_weights is None else [float(w) for w in class_weights]


class _ClassAveragedLoss(_LovaszLoss):
    """A Lovász loss averaged over class channels: adds ``from_logits``, ``classes`` and ``class_weights``."""

    def __init__(
        self,
        *,
        from_logits: bool,
        classes: str | Sequence[int],
        class_weights: Sequence[float] | None,
        **options: Any,
    ):
        super().__init__(**options)
        self.from_logits = bool(from_logits)
        self.classes = _classes_config(classes)
        self.class_weights = _weights_config(class_weights)

    def _run_classes(self, function: str, y_pred: Tensor, labels: Tensor) -> Tensor:
        return self._run(
            function, y_pred, labels, classes=self.classes, from_logits=self.from_logits, weights=self.class_weights
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "classes": self.classes,
            "class_weights": self.class_weights,
        }


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszSoftmaxLoss(_ClassAveragedLoss):
    """Lovász-Softmax loss for multi-class segmentation; see :func:`lovasz.torch.lovasz_softmax`.

    Args:
        from_logits: ``y_pred`` are logits (a softmax is taken inside); otherwise probabilities.
        per_image: the loss of each image (one value per image, weighed by ``sample_weight``);
            otherwise the batch is one set of pixels.
        classes: ``'present'``, ``'all'`` or a list of class indices to average over.
        ignore_class: label value of pixels that take no part (Keras' name for ``ignore``).
        class_weights: one weight per class for the class average.
        data_format: ``'channels_last'`` (``y_pred [B, *spatial, C]``, the default of
            ``keras.config.image_data_format()``) or ``'channels_first'``.

    ``y_true`` is ``[B, *spatial]`` integer class indices (or with a size-1 channel axis);
    ``y_pred`` holds ``C`` channels, or one channel of sigmoid output (read as ``[1 - p, p]``).
    The loss is 0-d, or one value per image with ``per_image`` before Keras' ``reduction``.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([[[0, 1], [1, 1]], [[2, 2], [0, 2]]])  # [B=2, H=2, W=2]
        >>> y_pred = np.zeros((2, 2, 2, 3), "float32")  # [B, H, W, C=3] logits
        >>> loss = LovaszSoftmaxLoss(from_logits=True, per_image=True, reduction=None)
        >>> [round(float(v), 4) for v in loss(y_true, y_pred)]  # one loss per image
        [0.6667, 0.6667]
    """

    def __init__(
        self,
        from_logits: bool = False,
        per_image: bool = False,
        classes: str | Sequence[int] = "present",
        ignore_class: int | None = None,
        class_weights: Sequence[float] | None = None,
        data_format: str | None = None,
        name: str = "lovasz_softmax",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
    ):
        super().__init__(
            from_logits=from_logits,
            classes=classes,
            class_weights=class_weights,
            per_image=per_image,
            ignore_class=ignore_class,
            data_format=data_format,
            name=name,
            reduction=reduction,
            dtype=dtype,
        )

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        labels = _squeeze_channel(y_true, self._channel_axis, len(y_pred.shape))
        return self._run_classes("lovasz_softmax", y_pred, labels)  # float labels are checked to be whole there


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszHingeLoss(_LovaszLoss):
    """Lovász hinge loss for binary segmentation; see :func:`lovasz.torch.lovasz_hinge`.

    ``y_pred`` are raw scores (logits: no sigmoid), ``[B, *spatial]`` or with a size-1
    channel axis; ``y_true`` 0/1 masks of the same shape (or without the channel axis).

    Args:
        per_image: the loss of each image (the default, as in the original); otherwise the
            batch is one set of pixels.
        ignore_class: label value of pixels that take no part.
        data_format: where a size-1 channel axis of ``y_pred`` is, ``'channels_last'`` or
            ``'channels_first'`` (default: ``keras.config.image_data_format()``).
        margin: ``'relu'`` (the paper's ``max(0, m)`` of the margins ``m = 1 - s x``) or
            ``'elu'``: ``elu(m) + 1``, smooth and positive everywhere.
        symmetric: the mean with the loss of ``-y_pred`` against ``1 - y_true``, which scores
            the background too.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([[[1, 0], [0, 1]]])  # [B=1, H=2, W=2] masks
        >>> y_pred = np.array([[[2.0, -1.0], [0.5, 1.0]]], "float32")  # [B, H, W] logits
        >>> round(float(LovaszHingeLoss()(y_true, y_pred)), 4)
        0.5
        >>> y_true, y_pred = y_true[..., None], y_pred[..., None]  # [B, H, W, 1]
        >>> round(float(LovaszHingeLoss()(y_true, y_pred)), 4)
        0.5
    """

    def __init__(
        self,
        per_image: bool = True,
        ignore_class: int | None = None,
        data_format: str | None = None,
        name: str = "lovasz_hinge",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
        margin: str = "relu",
        symmetric: bool = False,
    ):
        super().__init__(
            per_image=per_image,
            ignore_class=ignore_class,
            data_format=data_format,
            name=name,
            reduction=reduction,
            dtype=dtype,
        )
        self.margin, self.symmetric = V.check_hinge_variant(margin, symmetric)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        y_true, y_pred = _drop_binary_channel(y_true, y_pred, self._channel_axis)
        return self._run("lovasz_hinge", y_pred, y_true, channels=False, margin=self.margin, symmetric=self.symmetric)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "symmetric": self.symmetric}


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszMultilabelLoss(_ClassAveragedLoss):
    """Multi-label Lovász loss, one binary loss per channel; see :func:`lovasz.torch.lovasz_multilabel`.

    ``y_pred`` and ``y_true`` are ``[B, *spatial, C]`` (channels-last; ``[B, C, *spatial]``
    with ``data_format='channels_first'``), ``y_true`` holding 0/1 per channel. With
    ``from_logits`` (the default here, as for the hinge) each channel gets the Lovász hinge
    of its scores; otherwise the Lovász-Softmax term of its foreground probability.
    ``margin`` and ``symmetric`` are the hinge's variants, as in :class:`LovaszHingeLoss`
    (``from_logits`` only). The other arguments are those of :class:`LovaszSoftmaxLoss`,
    ``classes='present'`` averaging over the channels with a positive target in the set.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([[[[1, 0], [0, 1]], [[0, 1], [0, 1]]]])  # [B, H, W, C=2]
        >>> y_pred = np.zeros(y_true.shape, "float32")  # logits
        >>> round(float(LovaszMultilabelLoss()(y_true, y_pred)), 4)
        1.0
        >>> y_pred = np.where(y_true == 1, 3.0, -3.0).astype("float32")  # right by 3
        >>> round(float(LovaszMultilabelLoss()(y_true, y_pred)), 4)
        0.0
    """

    def __init__(
        self,
        from_logits: bool = True,
        per_image: bool = True,
        classes: str | Sequence[int] = "present",
        ignore_class: int | None = None,
        class_weights: Sequence[float] | None = None,
        data_format: str | None = None,
        name: str = "lovasz_multilabel",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
        margin: str = "relu",
        symmetric: bool = False,
    ):
        super().__init__(
            from_logits=from_logits,
            classes=classes,
            class_weights=class_weights,
            per_image=per_image,
            ignore_class=ignore_class,
            data_format=data_format,
            name=name,
            reduction=reduction,
            dtype=dtype,
        )
        self.margin, self.symmetric = V.check_hinge_variant(margin, symmetric, self.from_logits)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return self._run(
            "lovasz_multilabel",
            y_pred,
            y_true,
            classes=self.classes,
            from_logits=self.from_logits,
            weights=self.class_weights,
            margin=self.margin,
            symmetric=self.symmetric,
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "symmetric": self.symmetric}


# ----------------------------------------------------------------------------- cross-entropy + Lovász

_LOVASZ_OF_MODE = {"multiclass": LovaszSoftmaxLoss, "binary": LovaszHingeLoss, "multilabel": LovaszMultilabelLoss}


@keras.saving.register_keras_serializable(package="lovasz")
class CrossEntropyLovaszLoss(keras.losses.Loss):
    """``ce_weight * cross-entropy + lovasz_weight * Lovász`` on logits; ``ignore_class`` for both terms.

    ``mode`` is ``'multiclass'`` (sparse softmax cross-entropy and :class:`LovaszSoftmaxLoss`),
    ``'binary'`` (binary cross-entropy and :class:`LovaszHingeLoss`) or ``'multilabel'``
    (binary cross-entropy per channel and :class:`LovaszMultilabelLoss`). ``y_pred`` are
    logits. The other arguments are those of the Lovász class; ``per_image`` defaults to
    that class's default. The cross-entropy is the mean over the non-ignored pixels of
    each image (``per_image``) or of the batch. :class:`LovaszScheduleCallback` changes
    the two weights during ``fit``.

    Args:
        mode: ``'multiclass'``, ``'binary'`` or ``'multilabel'``; the shapes are those of the
            Lovász class of the mode.
        ce_weight: the weight of the cross-entropy term (0: not computed).
        lovasz_weight: the weight of the Lovász term (0: not computed).
        per_image: None for the Lovász class's default (False for ``'multiclass'``, True
            otherwise).
        classes: ``'present'``, ``'all'`` or a list, for the Lovász term (not ``'binary'``).
        ignore_class: label value of pixels left out of both terms.
        data_format: ``'channels_last'`` or ``'channels_first'``.

    Example:
        >>> import numpy as np
        >>> loss = CrossEntropyLovaszLoss("multiclass", ignore_class=255)
        >>> y_true = np.array([[[0, 1], [1, 255]]])  # [B=1, H=2, W=2]
        >>> y_pred = np.zeros((1, 2, 2, 3), "float32")  # [B, H, W, C=3] logits
        >>> round(float(loss(y_true, y_pred)), 4)  # ln 3 + 2/3
        1.7653
    """

    def __init__(
        self,
        mode: str = "multiclass",
        ce_weight: float = 1.0,
        lovasz_weight: float = 1.0,
        per_image: bool | None = None,
        classes: str | Sequence[int] = "present",
        ignore_class: int | None = None,
        data_format: str | None = None,
        name: str = "cross_entropy_lovasz",
        reduction: str = "sum_over_batch_size",
        dtype: DType = None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if mode not in _LOVASZ_OF_MODE:
            raise ValueError(f"mode must be one of {tuple(_LOVASZ_OF_MODE)}; got {mode!r}")
        options: dict[str, Any] = dict(ignore_class=ignore_class, data_format=data_format, dtype=dtype)
        if per_image is not None:
            options["per_image"] = per_image
        if mode != "binary":
            options.update(classes=classes, from_logits=True)
        self.mode = mode
        self.lovasz = _LOVASZ_OF_MODE[mode](**options)
        self.ce_weight, self.lovasz_weight = float(ce_weight), float(lovasz_weight)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        lovasz, terms = self.lovasz, []
        if self.ce_weight:
            terms.append(self.ce_weight * self._cross_entropy(y_true, y_pred))
        if self.lovasz_weight or not terms:
            terms.append(self.lovasz_weight * lovasz.call(y_true, y_pred))
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return _reduced(super().__call__(y_true, y_pred, sample_weight), self.reduction)

    def _cross_entropy(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        axis = self.lovasz._channel_axis
        rank = len(y_pred.shape)
        ignore = self.lovasz.ignore_class
        if self.mode == "multiclass":
            labels = ops.cast(_squeeze_channel(y_true, axis, rank), "int32")
            valid = _valid_mask(labels, ignore)
            labels = labels * ops.cast(valid, "int32")  # any class for ignored pixels: they weigh 0
            pixel = ops.sparse_categorical_crossentropy(labels, y_pred, from_logits=True, axis=axis)
        else:
            if self.mode == "binary":
                y_true, y_pred = _drop_binary_channel(y_true, y_pred, axis)
            valid = _valid_mask(y_true, ignore)
            target = ops.cast(y_true, "float32") * valid
            pixel = ops.binary_crossentropy(target, y_pred, from_logits=True)
        axes = tuple(range(1, len(valid.shape))) if self.lovasz.per_image else None
        total, count = ops.sum(pixel * valid, axis=axes), ops.sum(valid, axis=axes)
        return ops.divide_no_nan(total, count)

    def get_config(self) -> dict[str, Any]:
        lovasz = self.lovasz.get_config()
        config = {
            **super().get_config(),
            "mode": self.mode,
            "ce_weight": self.ce_weight,
            "lovasz_weight": self.lovasz_weight,
            "per_image": lovasz["per_image"],
            "ignore_class": lovasz["ignore_class"],
            "data_format": lovasz["data_format"],
        }
        if self.mode != "binary":
            config["classes"] = lovasz["classes"]
        return config


class LovaszScheduleCallback(keras.callbacks.Callback):
    """Applies a :class:`lovasz.schedule.LovaszSchedule` to a :class:`CrossEntropyLovaszLoss` during ``fit``.

    Args:
        schedule: the weights of the two terms per epoch (or batch).
        loss: the loss to change; by default the model's compiled loss.
        by: ``'epoch'`` (the schedule counts epochs) or ``'batch'`` (training steps).

    On the TensorFlow and JAX backends the train step is compiled with the weights
    as constants, so a change of weights rebuilds it: a ramp counted in epochs
    costs one retrace per epoch of the ramp, one counted in batches one per step.

    Example:
        >>> loss = CrossEntropyLovaszLoss("multiclass")
        >>> callback = LovaszScheduleCallback(LovaszSchedule(warmup=5), loss)
        >>> # model.compile(loss=loss); model.fit(x, y, epochs=10, callbacks=[callback])
    """

    def __init__(self, schedule: LovaszSchedule, loss: CrossEntropyLovaszLoss | None = None, by: str = "epoch"):
        super().__init__()
        if by not in ("epoch", "batch"):
            raise ValueError(f"by must be 'epoch' or 'batch'; got {by!r}")
        self.schedule, self.loss, self.by = schedule, loss, by
        self._step = 0

    def _target(self) -> CrossEntropyLovaszLoss:
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if not isinstance(loss, CrossEntropyLovaszLoss):
            raise TypeError(
                f"LovaszScheduleCallback needs a lovasz.keras.CrossEntropyLovaszLoss (pass loss=, or "
                f"compile the model with one); got {type(loss).__name__}"
            )
        return loss

    def _apply(self, t: int) -> None:
        loss = self._target()
        before = (loss.ce_weight, loss.lovasz_weight)
        self.schedule.apply(loss, t)
        if (loss.ce_weight, loss.lovasz_weight) != before and keras.backend.backend() != "torch":
            self.model.make_train_function(force=True)  # the weights are compiled in: retrace

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.by == "epoch":
            self._apply(epoch)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.by == "batch":
            self._apply(self._step)
            self._step += 1


from lovasz.schedule import LovaszSchedule  # noqa: E402  re-exported for Keras users
