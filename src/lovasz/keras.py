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
from typing import Optional, Sequence, Union

import keras
from keras import ops

from lovasz import _validation as V

__all__ = ["LovaszSoftmaxLoss", "LovaszHingeLoss", "LovaszMultilabelLoss"]

DATA_FORMATS = ("channels_last", "channels_first")
_BACKENDS = {"tensorflow": "lovasz.tf", "jax": "lovasz.jax", "torch": "lovasz.torch"}


def _functions():
    """The module of lovasz functions for the active Keras backend."""
    name = keras.backend.backend()
    if name not in _BACKENDS:
        raise NotImplementedError(f"lovasz.keras runs on the backends {sorted(_BACKENDS)}; Keras uses {name!r}")
    return name, importlib.import_module(_BACKENDS[name])


def _channel_kwargs(backend: str, channels_last: bool) -> dict:
    """How each backend's functions are told where the class axis is."""
    if backend == "tensorflow":
        return {"order": "BHWC" if channels_last else "BCHW"}
    if backend == "jax":
        return {"axis": -1 if channels_last else 1}
    return {}  # torch is channels-first: the prediction is moved instead


def _squeeze_channel(x, axis: int, rank: int):
    """Drop a size-1 channel axis from a rank-``rank`` tensor (Keras masks often come as [B, H, W, 1])."""
    return ops.squeeze(x, axis) if len(x.shape) == rank and x.shape[axis] == 1 else x


class _LovaszLoss(keras.losses.Loss):
    """What the three losses share: options, the data format, the backend dispatch and the config."""

    def __init__(self, *, per_image: bool, ignore_class: Optional[int], data_format: Optional[str],
                 name: str, reduction: str, dtype):
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

    def _run(self, function: str, y_pred, labels, **kwargs):
        backend, module = _functions()
        channels_last = self.data_format == "channels_last"
        if not kwargs.pop("channels", True):
            pass  # the hinge has no class axis
        elif backend == "torch" and channels_last:
            y_pred = y_pred.movedim(-1, 1)
            labels = labels.movedim(-1, 1) if function == "lovasz_multilabel" else labels
        else:
            kwargs.update(_channel_kwargs(backend, channels_last))
        return getattr(module, function)(y_pred, labels, per_image=self.per_image, ignore=self.ignore_class,
                                         reduction="none" if self.per_image else "mean", **kwargs)

    def get_config(self) -> dict:
        return {**super().get_config(), "per_image": self.per_image, "ignore_class": self.ignore_class,
                "data_format": self.data_format}


def _classes_config(classes):
    classes = V.check_classes(classes, 1 << 30)  # the form only; the range is checked against the input
    return classes if isinstance(classes, str) else list(classes)


def _weights_config(class_weights):
    return None if class_weights is None else [float(w) for w in class_weights]


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszSoftmaxLoss(_LovaszLoss):
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
    """

    def __init__(self, from_logits: bool = False, per_image: bool = False,
                 classes: Union[str, Sequence[int]] = "present", ignore_class: Optional[int] = None,
                 class_weights: Optional[Sequence[float]] = None, data_format: Optional[str] = None,
                 name: str = "lovasz_softmax", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(per_image=per_image, ignore_class=ignore_class, data_format=data_format,
                         name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.classes = _classes_config(classes)
        self.class_weights = _weights_config(class_weights)

    def call(self, y_true, y_pred):
        labels = _squeeze_channel(y_true, self._channel_axis, len(y_pred.shape))
        return self._run("lovasz_softmax", y_pred, ops.cast(labels, "int32"), classes=self.classes,
                         from_logits=self.from_logits, weights=self.class_weights)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "classes": self.classes,
                "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszHingeLoss(_LovaszLoss):
    """Lovász hinge loss for binary segmentation; see :func:`lovasz.torch.lovasz_hinge`.

    ``y_pred`` are raw scores (logits: no sigmoid), ``[B, *spatial]`` or with a size-1
    channel axis; ``y_true`` 0/1 masks of the same shape (or without the channel axis).
    ``per_image`` defaults to True, as in the original.
    """

    def __init__(self, per_image: bool = True, ignore_class: Optional[int] = None,
                 data_format: Optional[str] = None, name: str = "lovasz_hinge",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(per_image=per_image, ignore_class=ignore_class, data_format=data_format,
                         name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        rank = len(y_pred.shape)
        if rank >= 2 and y_pred.shape[self._channel_axis] == 1:
            y_pred = ops.squeeze(y_pred, self._channel_axis)
            y_true = _squeeze_channel(y_true, self._channel_axis, rank)
        return self._run("lovasz_hinge", y_pred, ops.cast(y_true, "int32"), channels=False)


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszMultilabelLoss(_LovaszLoss):
    """Multi-label Lovász loss, one binary loss per channel; see :func:`lovasz.torch.lovasz_multilabel`.

    ``y_pred`` and ``y_true`` are ``[B, *spatial, C]`` (channels-last). With ``from_logits``
    (the default here, as for the hinge) each channel gets the Lovász hinge of its scores;
    otherwise the Lovász-Softmax term of its foreground probability.
    """

    def __init__(self, from_logits: bool = True, per_image: bool = True,
                 classes: Union[str, Sequence[int]] = "present", ignore_class: Optional[int] = None,
                 class_weights: Optional[Sequence[float]] = None, data_format: Optional[str] = None,
                 name: str = "lovasz_multilabel", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(per_image=per_image, ignore_class=ignore_class, data_format=data_format,
                         name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.classes = _classes_config(classes)
        self.class_weights = _weights_config(class_weights)

    def call(self, y_true, y_pred):
        return self._run("lovasz_multilabel", y_pred, ops.cast(y_true, "int32"), classes=self.classes,
                         from_logits=self.from_logits, weights=self.class_weights)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "classes": self.classes,
                "class_weights": self.class_weights}
