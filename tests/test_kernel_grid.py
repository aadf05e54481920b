"""The C kernel's gather and scatter of a mostly ignored grid's pixels (``lovasz_gather_f32``,
``lovasz_scatter_f32``), against NumPy: rows that start anywhere against a cache line, images with no
pixel, pixels at both ends; and inputs out of order or out of range never written out of bounds. Also the
checks of the scenes' ends that every entry taking scenes makes."""

import numpy as np
import pytest

from lovasz import _ckernel

pytestmark = pytest.mark.skipif(_ckernel.grid_kernel() is None, reason="the kernel is not built")

SHAPES = [(1, 1, 1), (1, 3, 5), (2, 3, 37), (3, 2, 1000), (2, 5, 4099), (1, 2, 20_000)]


def pixels(shape, occupied, seed):
    """A grid ``[B, K, N]`` of values, its valid pixels (image, pixel) in pixel order, and each image's run."""
    images, _, num_pixels = shape
    rng = np.random.default_rng(seed)
    grid = rng.normal(size=shape).astype(np.float32)
    valid = rng.random((images, num_pixels)) < occupied
    valid[0, [0, -1]] = occupied > 0  # both ends of a row
    if images > 2:
        valid[1] = False  # an image with no pixel
    image, pixel = np.nonzero(valid)
    return grid, valid, image, pixel, np.cumsum(valid.sum(1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("occupied", [0.0, 0.02, 0.5, 1.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_gather_and_scatter_match_numpy(shape, occupied, threads):
    grid, valid, image, pixel, ends = pixels(shape, occupied, seed=len(shape) + int(occupied * 100))
    images, rows, num_pixels = shape
    gathered = _ckernel.gather_pixels(grid, image * rows * num_pixels + pixel, threads)
    np.testing.assert_array_equal(gathered, grid.transpose(1, 0, 2)[:, image, pixel])
    out = np.full(shape, np.nan, np.float32)  # every element must be written
    _ckernel.scatter_pixels(gathered, pixel, ends, out, threads)
    np.testing.assert_array_equal(out, np.where(valid[:, None], grid, 0))


@pytest.mark.parametrize("start", range(0, 17, 3))
def test_scatter_writes_only_its_grid_whatever_its_alignment(start):
    """The grid starts at any float of a buffer (the streamed lines are aligned inside it); pixels out of
    order, negative or past the row are not written outside it."""
    shape = (2, 3, 101)
    size = int(np.prod(shape))
    buffer = np.full(start + size + 64, 7.0, np.float32)
    grid = buffer[start : start + size].reshape(shape)
    pixel = np.array([5, 90, 3, -1, 40, 100, 101, 10**6, 0, 50], np.int64)
    values = np.arange(3 * pixel.size, dtype=np.float32).reshape(3, -1) + 1
    _ckernel.scatter_pixels(values, pixel, np.array([5, pixel.size]), grid, 1)
    assert (buffer[:start] == 7).all() and (buffer[start + size :] == 7).all()
    assert np.isin(grid, np.append(values, 0)).all()  # what was written: given values, or zeros


def test_scatter_of_rising_pixels_writes_each_of_them():
    values = np.arange(1, 19, dtype=np.float32).reshape(3, 6)
    grid = np.full((2, 3, 101), np.nan, np.float32)
    _ckernel.scatter_pixels(values, np.array([5, 90, 0, 40, 50, 100]), np.array([2, 6]), grid, 2)
    assert grid[0, 1, 5] == values[1, 0] and grid[1, 2, 100] == values[2, 5] and grid[1, 0, 0] == values[0, 2]
    assert np.count_nonzero(grid) == 18 and not np.isnan(grid).any()


def test_scene_ends_are_checked():
    """Every entry that takes scenes checks their ends before the kernel reads the points by them."""
    rows, codes = np.zeros((2, 6), np.float32), np.zeros((2, 6), np.uint8)
    points = np.zeros((6, 2), np.float32)
    for ends in ([-1, 6], [4, 3, 6], [2, 7]):
        with pytest.raises(ValueError, match="scene ends must rise from 0 to at most 6"):
            _ckernel.lovasz_scene_rows(rows, codes, np.array(ends), _ckernel.HINGE, None, 1)
        with pytest.raises(ValueError, match="scene ends must rise from 0 to at most 6"):
            _ckernel.lovasz_points(points, codes, np.array(ends), _ckernel.HINGE, None, 1, False, np.ones_like)
    with pytest.raises(ValueError, match="the last scene must end at the last point, 6; got 5"):
        _ckernel.lovasz_points(points, codes, np.array([2, 5]), _ckernel.HINGE, None, 1, False, np.ones_like)
    loss, present = _ckernel.lovasz_scene_rows(rows, codes, np.array([0, 2, 2, 6]), _ckernel.HINGE, None, 1)
    assert loss.shape == present.shape == (4, 2)  # empty scenes are fine


def test_boundary_checks():
    grid = np.zeros((2, 3, 10), np.float32)
    with pytest.raises(ValueError, match="pixel offsets must lie in the grid of 60 elements"):
        _ckernel.gather_pixels(grid, np.array([0, 41]), 1)  # row 2 of it would be past the end
    with pytest.raises(ValueError, match="pixel offsets must lie in the grid"):
        _ckernel.gather_pixels(grid, np.array([-1]), 1)
    with pytest.raises(TypeError, match="at must be a int64 array; got int32"):
        _ckernel.gather_pixels(grid, np.array([0], np.int32), 1)
    values = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="ends must give one run per image, 2; got 1"):
        _ckernel.scatter_pixels(values, np.arange(4), np.array([4]), grid, 1)
    with pytest.raises(ValueError, match="scene ends must rise from 0 to at most 4"):
        _ckernel.scatter_pixels(values, np.arange(4), np.array([3, 2]), grid, 1)
    with pytest.raises(ValueError, match=r"values must have shape \[3, 5\]"):
        _ckernel.scatter_pixels(values, np.arange(5), np.array([2, 5]), grid, 1)
    strided = np.zeros((2, 10, 3), np.float32).transpose(0, 2, 1)
    with pytest.raises(ValueError, match="grad must be a writeable C-contiguous array"):
        _ckernel.scatter_pixels(values, np.arange(4), np.array([2, 4]), strided, 1)
