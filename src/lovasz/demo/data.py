"""A seeded synthetic segmentation set where pixel accuracy and IoU part ways.

Classes of very different frequency, as in land cover or road scenes: a large
background, medium blobs (fields), small objects (buildings) and thin lines
(roads). Each class has its own colour; noise and blur make the task non-trivial.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLASS_NAMES = ("background", "field", "building", "road")
_COLOURS = np.array([[0.35, 0.45, 0.30], [0.55, 0.60, 0.25], [0.60, 0.35, 0.35], [0.40, 0.40, 0.45]])


def _draw(rng: np.random.Generator, size: int) -> np.ndarray:
    labels = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(rng.integers(1, 4)):  # fields: ellipses
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size * 0.08, size * 0.25, 2)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
    for _ in range(rng.integers(1, 3)):  # roads: thin lines
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-size / 3, size / 3)
        distance = np.abs((xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle) - offset)
        labels[distance < max(1.0, size / 64)] = 3
    for _ in range(rng.integers(2, 7)):  # buildings: small squares
        y, x = rng.integers(0, size - 4, 2)
        s = rng.integers(max(2, size // 32), max(3, size // 12))
        labels[y : y + s, x : x + s] = 2
    return labels


def make_dataset(count: int, size: int, seed: int | tuple[int, ...]):
    """``images [N, 3, size, size]`` float32 and ``labels [N, size, size]`` int64; ``seed`` as NumPy's
    ``default_rng`` takes it (a tuple: a stream of its own)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([_draw(rng, size) for _ in range(count)])
    images = _COLOURS[labels].transpose(0, 3, 1, 2) + rng.normal(0, 0.12, (count, 3, size, size))
    images = torch.from_numpy(images).float()
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    images = F.conv2d(images, kernel, padding=1, groups=3)  # blur
    return images, torch.from_numpy(labels)
