"""Load a user's folder of images and masks for ``lovasz demo --data DIR``.

Layout::

    DIR/images/<name>.png or <name>.npy   an image: PNG (grey, RGB or RGBA) or NumPy [H, W] / [H, W, C]
    DIR/masks/<name>.png or <name>.npy    its mask, same H x W: one integer class index per pixel

Images and masks are paired by file name without extension. All images share one
size and one channel count. 8-bit images are scaled to [0, 1]; float images are
used as they are (finite values). Multi-class masks hold class indices 0..K-1 (K at most
:data:`MAX_CLASSES`), with ``ignore_index``
(255) for pixels that take no part; binary masks hold 0/1 or 0/255.
The images are cropped to a multiple of 4 pixels (the U-Net down-samples twice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EXTENSIONS = (".png", ".npy")
MAX_CLASSES = 1024  # the U-Net has a channel per class up to the largest mask value: a stray 2**40 is no class


class DataFolderError(ValueError):
    """A folder that does not fit the documented layout; the message names the file."""


def _read(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image if image.mode in ("L", "P", "I", "I;16", "RGB", "RGBA") else image.convert("RGB"))
    except Exception as error:  # unreadable or corrupt: name the file
        raise DataFolderError(f"{path}: cannot be read as {path.suffix} ({error})") from None


def _files(folder: Path) -> dict:
    if not folder.is_dir():
        raise DataFolderError(f"{folder}: missing; --data needs images/ and masks/ folders (see lovasz demo --help)")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in EXTENSIONS:
            raise DataFolderError(f"{path}: unsupported file type; expected one of {', '.join(EXTENSIONS)}")
        if path.stem in files:
            raise DataFolderError(f"{path}: a second file named {path.stem!r} (also {files[path.stem].name})")
        files[path.stem] = path
    return files


def _image(path: Path) -> np.ndarray:
    """``[C, H, W]`` float32."""
    array = _read(path)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise DataFolderError(
            f"{path}: an image must be [H, W] or [H, W, C] with 1 to 4 channels; got shape {list(array.shape)}"
        )
    if array.dtype == np.uint8:
        array = array / 255.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise DataFolderError(f"{path}: image values must be uint8 or float; got {array.dtype}")
    elif not np.isfinite(array).all():  # (a NaN pixel made every weight NaN after one step, without a word)
        raise DataFolderError(f"{path}: image values must be finite; found {array[~np.isfinite(array)][0]}")
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def _mask(path: Path, binary: bool, ignore_index: int) -> np.ndarray:
    array = _read(path)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataFolderError(
            f"{path}: a mask must be [H, W] integer class indices (a grey or palette PNG); "
            f"got shape {list(array.shape)} of {array.dtype}"
        )
    # (checked before the cast to int64, which would wrap a uint64 2**64 - 1 to -1)
    if binary:
        values = set(np.unique(array).tolist())
        if not values <= {0, 1} and not values <= {0, 255}:
            raise DataFolderError(f"{path}: a binary mask must hold 0/1 or 0/255; found {sorted(values)[:6]}")
        return (array > 0).astype(np.int64)
    bad = ((array < 0) | (array >= MAX_CLASSES)) & (array != ignore_index)
    if bad.any():
        raise DataFolderError(
            f"{path}: class indices must be in [0, {MAX_CLASSES - 1}] (or {ignore_index}, ignored); "
            f"found {array[bad][0]}"
        )
    return array.astype(np.int64)


def load_folder(root: Path, binary: bool, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``[N, C, H, W]`` float32, masks ``[N, H, W]`` int64 and the names of the pairs."""
    root = Path(root)
    if not root.is_dir():
        raise DataFolderError(f"{root}: not a folder")
    images, masks = _files(root / "images"), _files(root / "masks")
    for stem in sorted(set(images) ^ set(masks)):
        lonely = images.get(stem) or masks.get(stem)
        other = "masks" if stem in images else "images"
        raise DataFolderError(f"{lonely}: no file named {stem}.png or {stem}.npy in {root / other}")
    if len(images) < 2:
        raise DataFolderError(
            f"{root / 'images'}: needs at least 2 image/mask pairs (one to train, one held out); found {len(images)}"
        )
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for stem in sorted(images):
        x, y = _image(images[stem]), _mask(masks[stem], binary, ignore_index)
        if x.shape[1:] != y.shape:
            raise DataFolderError(f"{masks[stem]}: mask is {list(y.shape)} but its image is {list(x.shape[1:])}")
        if xs and x.shape != xs[0].shape:
            raise DataFolderError(
                f"{images[stem]}: shape [C, H, W] = {list(x.shape)} differs from "
                f"{list(xs[0].shape)} of the first image; all images must share one size"
            )
        xs.append(x)
        ys.append(y)
    height, width = (s - s % 4 for s in xs[0].shape[1:])
    if min(height, width) < 8:
        raise DataFolderError(
            f"{images[sorted(images)[0]]}: images must be at least 8x8 pixels; got {list(xs[0].shape[1:])}"
        )
    x = torch.from_numpy(np.stack(xs))[:, :, :height, :width]
    y = torch.from_numpy(np.stack(ys))[:, :height, :width]
    return x.contiguous(), y.contiguous(), sorted(images)
