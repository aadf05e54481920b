"""A seeded sweep of loss cases shared by the backend tests: inputs as NumPy, plus the options."""

from __future__ import annotations

import dataclasses

import numpy as np

from lovasz import reference as R

IGNORE = 255
SPATIAL = [(9,), (4, 5), (2, 3, 4)]


@dataclasses.dataclass
class Case:
    kind: str  # softmax | hinge | multilabel
    pred: np.ndarray  # float64, channels-first
    labels: np.ndarray
    options: dict

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind}{list(self.pred.shape)}[{opts}]"

    def oracle(self, pred: np.ndarray | None = None):
        fn = {"softmax": R.lovasz_softmax, "hinge": R.lovasz_hinge, "multilabel": R.lovasz_multilabel}[self.kind]
        return fn(self.pred if pred is None else pred, self.labels, **self.options)

    def oracle_grad(self, eps: float = 1e-6) -> np.ndarray:
        """Central differences of the oracle: exact for this piecewise-smooth loss away from kinks."""
        grad = np.zeros_like(self.pred)
        out = np.zeros(()) if np.ndim(self.oracle()) == 0 else np.ones_like(self.oracle())
        for index in np.ndindex(self.pred.shape):
            up, down = self.pred.copy(), self.pred.copy()
            up[index] += eps
            down[index] -= eps
            grad[index] = (
                np.sum(out * (np.asarray(self.oracle(up)) - np.asarray(self.oracle(down)))) / (2 * eps)
                if out.ndim
                else (self.oracle(up) - self.oracle(down)) / (2 * eps)
            )
        return grad


def _labels(rng, shape, high, ignore):
    labels = rng.integers(0, high, shape)
    if ignore:
        labels[rng.random(shape) < 0.25] = IGNORE
        if shape[0] > 1 and rng.random() < 0.3:
            labels[0] = IGNORE  # a whole image ignored
    return labels


def sweep(count: int = 240, seed: int = 0, max_classes: int = 21):
    rng = np.random.default_rng(seed)
    kinds = ["softmax", "softmax", "hinge", "multilabel"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        batch = int(rng.integers(1, 4))
        spatial = SPATIAL[i % len(SPATIAL)]
        per_image = bool(rng.integers(0, 2))
        ignore = IGNORE if rng.random() < 0.5 else None
        reduction = ["mean", "sum", "none"][int(rng.integers(0, 3))]
        options = dict(per_image=per_image, ignore=ignore, reduction=reduction)
        if kind == "hinge":
            pred = rng.normal(size=(batch, *spatial)) * 2
            labels = _labels(rng, (batch, *spatial), 2, ignore)
            yield Case(kind, pred, labels, options)
            continue
        classes_choices = [c for c in (1, 2, 3, 7, 21) if c <= max_classes]
        num = int(rng.choice(classes_choices if kind == "softmax" else [1, 2, 3, 7]))
        real = 2 if (kind == "softmax" and num == 1) else num
        form = ["present", "all", "list"][int(rng.integers(0, 3))]
        classes = form if form != "list" else [int(c) for c in rng.choice(real, size=min(real, 2), replace=False)]
        options["classes"] = classes
        if rng.random() < 0.3:
            options["weights"] = rng.random(real) + 0.1
        if kind == "softmax":
            from_logits = bool(rng.integers(0, 2))
            options["from_logits"] = from_logits
            logits = rng.normal(size=(batch, num, *spatial)) * 2
            if num == 1:
                logits = logits[:, 0]  # sigmoid output [B, *spatial]
                pred = logits if from_logits else 1 / (1 + np.exp(-logits))
            else:
                e = np.exp(logits - logits.max(1, keepdims=True))
                pred = logits if from_logits else e / e.sum(1, keepdims=True)
            labels = _labels(rng, (batch, *spatial), real, ignore)
        else:
            pred = rng.normal(size=(batch, num, *spatial)) * 2
            labels = _labels(rng, (batch, num, *spatial), 2, ignore)
        yield Case(kind, pred, labels, options)


def weakly_labelled_points(kind: str, seed: int, num_points: int = 600, channels: int = 5) -> tuple:
    """Points of a weakly labelled cloud: ~10% labelled, the others -1, none among points 100-199. For ``kind``
    (softmax, hinge, multilabel): the prediction (float32 ``[N, C]``, ``[N]`` scores for the hinge), the labels
    (``[N, C]`` targets for multi-label, a labelled point ignored in channel 3), where they are ignored (laid
    out as the prediction) and the number of points labelled."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_points, channels)).astype(np.float32)
    labels = rng.integers(0, channels, num_points)
    labels[rng.random(num_points) >= 0.1] = -1
    labels[100:200] = -1
    labelled = int(np.count_nonzero(labels != -1))
    if kind == "softmax":
        return logits, labels, np.broadcast_to((labels == -1)[:, None], logits.shape), labelled
    if kind == "hinge":
        return logits[:, 0], np.where(labels == -1, -1, labels % 2), labels == -1, labelled
    targets = rng.integers(0, 2, logits.shape)
    targets[labels == -1] = -1
    targets[labels != -1, 3] = -1  # ignored in one channel only: the point still counts
    return logits, targets, targets == -1, labelled
