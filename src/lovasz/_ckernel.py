"""The C kernel (``_kernel.c``) through ctypes, on NumPy arrays: the CPU path of lovasz.torch and lovasz.jax.

Framework-free, so that each backend module imports only its own framework.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import NamedTuple, cast

import numpy as np

# How the kernel reads a prediction (callers say C.HINGE): re-exported from the codes' home.
from lovasz._codes import ERRORS as ERRORS
from lovasz._codes import HINGE as HINGE
from lovasz._codes import SOFTMAX as SOFTMAX

MAX_ELEMENTS = 1 << 30  # a pixel's offset takes 30 bits of a sort item
# Each thread sorts one row at a time in a scratch of 8 bytes per pixel of the row: the threads at work
# are as many as this budget allows (half the input's bytes, at least 64 MiB), so that the peak memory
# does not grow with the thread count (64 threads on Cityscapes-sized rows would hold gigabytes).
MIN_SCRATCH_BUDGET = 64 << 20
# Each thread gets at least this many elements (ATen's grain size): handing a small call's blocks to the
# pool and waiting for them costs more than it saves (64 points of 19 classes, fwd+bwd: 1.2 ms, 1.7 on 2).
GRAIN = 32768
# On torch's OpenMP team (see _Team), whose threads are waiting already, handing blocks over costs less: there
# a quarter of it (fwd+bwd of points of 19 classes, interleaved medians: 1,500 points 1.23 -> 1.00 ms,
# 3,000 points 1.77 -> 1.30 ms; 4096 gave the same).
TEAM_GRAIN = 8192
# The kernel's calling convention: _kernel.c's LOVASZ_ABI. A library that says another number (an in-place
# build left from an older commit) would be called with shifted arguments: it is refused at load.
ABI = 2

_POOL_LOCK = threading.Lock()
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The one pool, grown (never rebuilt smaller) to ``workers`` threads: a call with fewer blocks uses
    fewer of its threads, so point clouds of few rows, or another framework's thread count, keep it."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)  # its threads finish what they hold and exit
            _POOL = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lovasz")
        return _POOL


def _forget_pool() -> None:
    """A forked child has the pool object but not its threads: it makes its own. Nor has it the threads of
    an OpenMP team its parent ran (libgomp would wait for them forever): it leaves OpenMP alone."""
    global _POOL, _POOL_LOCK, _TEAM, _FORKED
    _POOL, _POOL_LOCK = None, threading.Lock()
    _TEAM, _FORKED = None, True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


@functools.cache
def kernel() -> Callable[..., int] | None:
    """The compiled ``lovasz_rows_f32``, or None where the package was installed without it
    (:func:`why_not` says why)."""
    global _WHY_NOT
    try:
        from lovasz import _kernel

        library = ctypes.CDLL(_kernel.__file__)
        function = library.lovasz_rows_f32
        version = library.lovasz_abi_version() if hasattr(library, "lovasz_abi_version") else 1
    except (ImportError, OSError, AttributeError) as error:  # not built, or not loadable: torch.sort / lax.sort
        _WHY_NOT = f"{type(error).__name__}: {error}"
        return None
    if version != ABI:
        _WHY_NOT = f"{_kernel.__file__} was built from another lovasz (ABI {version}, this one {ABI}): rebuild it"
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    function.argtypes = [ptr, ptr, ptr, i64, i64, i64, ctypes.c_int, i64, i64, ptr, ptr]
    function.restype = ctypes.c_int
    return function


def _entry(name: str, argtypes: list) -> Callable[..., int] | None:
    """Another entry of the compiled kernel, or None (no kernel, or one built from an older source)."""
    if kernel() is None:
        return None
    from lovasz import _kernel

    try:
        function = getattr(ctypes.CDLL(_kernel.__file__), name)
    except AttributeError:
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


@functools.cache
def scene_kernel() -> Callable[..., int] | None:
    """The compiled ``lovasz_scene_rows_f32`` (class-major rows of scenes), or None: the sort path takes them."""
    return _entry("lovasz_scene_rows_f32", [_PTR, _PTR, _PTR, _I64, _I64, _PTR, _INT, _I64, _I64, _PTR, _PTR])


@functools.cache
def points_kernel() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """The compiled ``lovasz_points_in_f32`` and ``lovasz_points_out_f32`` (points-first scenes), or None."""
    into = _entry("lovasz_points_in_f32", [_PTR, _PTR, _PTR, _I64, _I64, _INT, _I64, _I64])
    out = _entry("lovasz_points_out_f32", [_PTR, _PTR, _PTR, _I64, _I64, _PTR, _I64, _PTR, _I64, _I64])
    return None if into is None or out is None or scene_kernel() is None else (into, out)


@functools.cache
def grid_kernel() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """The compiled ``lovasz_gather_f32`` and ``lovasz_scatter_f32`` (a mostly ignored grid's pixels), or None."""
    gather = _entry("lovasz_gather_f32", [_PTR, _PTR, _I64, _I64, _PTR, _I64, _I64])
    scatter = _entry("lovasz_scatter_f32", [_PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _I64, _I64])
    return None if gather is None or scatter is None else (gather, scatter)


_WHY_NOT = ""
_WARNED = False


def why_not() -> str:
    """Why :func:`kernel` is None (an empty string when it loaded)."""
    kernel()
    return _WHY_NOT


def warn_missing(framework: str) -> None:
    """Say once, where float32 CPU rows would have gone to it, that the kernel is missing and why."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            f"lovasz: the C kernel is not loaded ({why_not() or 'unknown reason'}), so {framework} sorts float32 "
            "rows on the CPU with its own sort, 3-4x slower, with the same values; reinstall lovasz with a C "
            "compiler present to build it (`lovasz info` shows the state)",
            RuntimeWarning,
            stacklevel=3,
        )


def applies(dtype, size: int) -> bool:
    """Whether the kernel can take float32 rows of ``size`` elements in all."""
    return dtype == np.float32 and size <= MAX_ELEMENTS and kernel() is not None


def _loaded(
    kernels: tuple[Callable[..., int], Callable[..., int]] | None, what: str
) -> tuple[Callable[..., int], Callable[..., int]]:
    """``kernels`` (a pair of entries), or a RuntimeError saying that the ``what`` kernel is not loaded, and why."""
    if kernels is None:
        raise RuntimeError(f"lovasz kernel: the {what} kernel is not loaded ({why_not() or 'an older build'})")
    return kernels


def _float32(array: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``array`` C-contiguous, checked to be float32 (and of ``shape``): the kernel reads raw memory, so a
    wrong array would be read as garbage. Real checks, not asserts, which ``python -O`` strips."""
    return _checked(array, name, np.float32, shape)


def _checked(array: np.ndarray, name: str, dtype, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"lovasz kernel: {name} must be a {np.dtype(dtype).name} array; got {found}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"lovasz kernel: {name} must have shape {list(shape)}; got {list(array.shape)}")
    return np.ascontiguousarray(array)


def _output(array: np.ndarray | None, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """An array the kernel writes: float32, C-contiguous (a copy would take the writes) and of ``shape``."""
    if array is None:
        return None
    if not (isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable):
        raise ValueError(f"lovasz kernel: {name} must be a writeable C-contiguous array")
    return _float32(array, name, shape)


@dataclasses.dataclass(frozen=True)
class _Call:
    """A call of the kernel's entry ``function`` on a block ``(begin, end)``, which goes between ``args``
    and ``after``; ``entry`` is its number in ``_kernel.c``'s ``lovasz_team_worker``."""

    entry: int
    function: Callable[..., int]
    args: tuple
    after: tuple = ()

    def __call__(self, block: tuple[int, int]) -> int:
        return self.function(*self.args, *block, *self.after)


# The entries' numbers in _kernel.c's lovasz_team_worker
ROWS_ENTRY, SCENE_ROWS_ENTRY, POINTS_IN_ENTRY, POINTS_OUT_ENTRY, GATHER_ENTRY, SCATTER_ENTRY = range(6)


# torch runs its CPU ops on an OpenMP team (GNU libgomp, which its Linux wheels bundle), whose threads spin
# for a while after each op, waiting for the next. The threads of our pool would share the cores with them
# (on 2 cores, the points of PolarSeg's grid right after a torch op: 7.5 ms, against 4.4 ms where libgomp
# does not spin): where a libgomp is loaded, the blocks run on its team instead, its spinning threads
# taking them. Not in a forked child: libgomp would wait there for its parent's threads.
class _Team(NamedTuple):
    parallel: Callable[..., None]  # GOMP_parallel(function, data, threads, flags)
    thread_num: int  # the addresses of omp_get_thread_num and omp_get_num_threads
    num_threads: int
    worker: int  # the address of lovasz_team_worker


class _Job(ctypes.Structure):  # _kernel.c's Job
    _fields_ = [
        ("entry", ctypes.c_int),
        ("args", ctypes.c_int64 * 10),
        ("bounds", ctypes.c_void_p),
        ("blocks", ctypes.c_int64),
        ("status", ctypes.c_void_p),
        ("thread_num", ctypes.c_void_p),
        ("num_threads", ctypes.c_void_p),
    ]


_TEAM: _Team | None = None
_TEAM_SEARCHED_AT: int | None = None  # len(sys.modules) when last searched in vain (an import may load libgomp)
_FORKED = False


def _team() -> _Team | None:
    """The OpenMP team of the libgomp loaded in this process (by torch), or None (none loaded, not Linux, a
    forked child, or a kernel built without ``lovasz_team_worker``)."""
    global _TEAM, _TEAM_SEARCHED_AT
    if _TEAM is not None or _FORKED or _TEAM_SEARCHED_AT == len(sys.modules) or not sys.platform.startswith("linux"):
        return _TEAM
    _TEAM_SEARCHED_AT = len(sys.modules)
    try:  # RTLD_NOLOAD: only a library that is loaded already (its soname matches)
        gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        parallel, thread_num, num_threads = gomp.GOMP_parallel, gomp.omp_get_thread_num, gomp.omp_get_num_threads
    except (OSError, AttributeError):
        return None
    worker = _entry("lovasz_team_worker", [_PTR])
    if worker is None:
        return None
    parallel.argtypes, parallel.restype = [_PTR, _PTR, ctypes.c_uint, ctypes.c_uint], None
    address = lambda function: int(ctypes.cast(function, ctypes.c_void_p).value or 0)  # noqa: E731
    _TEAM = _Team(parallel, address(thread_num), address(num_threads), address(worker))
    return _TEAM


def _run_on_team(team: _Team, call: _Call, blocks: list[tuple[int, int]], workers: int) -> list[int]:
    """``call`` on every block, by ``workers`` threads of the OpenMP team (the caller's thread one of them)."""
    job = _Job()
    job.entry = call.entry
    words = [0 if arg is None else int(arg) for arg in (*call.args, *call.after)]
    job.args[: len(words)] = words
    bounds = (ctypes.c_int64 * (2 * len(blocks)))(*[bound for block in blocks for bound in block])
    status = (ctypes.c_int * len(blocks))()
    job.bounds, job.blocks, job.status = ctypes.addressof(bounds), len(blocks), ctypes.addressof(status)
    job.thread_num, job.num_threads = team.thread_num, team.num_threads
    team.parallel(team.worker, ctypes.byref(job), workers, 0)  # returns when every block is done
    return list(status)


def _run_blocks(run: _Call, blocks: list[tuple[int, int]], workers: int) -> list[int]:
    """``run`` on every block: on the OpenMP team where there is one (see :class:`_Team`), else on the pool's
    threads (ctypes releases the GIL, so they run in parallel).

    The blocks write into the caller's arrays, so no block may outlive this call: an
    interrupt (Ctrl-C) that lands while they run is held until every submitted block has
    finished, then raised. Where the pool takes no more work (the interpreter is shutting
    down: an ``atexit`` handler, a thread still running after the main one), the rest runs here.
    """
    if workers == 1:
        return [run(block) for block in blocks]
    team = _team()
    if team is not None:
        return _run_on_team(team, run, blocks, workers)
    futures: list[concurrent.futures.Future[int]] = []
    interrupt, rest = None, []
    try:
        pool = _pool(workers)
        for i, block in enumerate(blocks):
            rest = blocks[i:]
            futures.append(pool.submit(run, block))
        rest = []
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        pass
    except BaseException as error:  # KeyboardInterrupt, or whatever a signal handler raises
        interrupt, rest = error, []
    while True:
        try:
            concurrent.futures.wait(futures)
            break
        except BaseException as error:
            interrupt = interrupt or error
    if interrupt is not None:
        raise interrupt
    return [future.result() for future in futures] + [run(block) for block in rest]


def lovasz_rows(
    pred: np.ndarray, codes: np.ndarray, mode: int, grad: np.ndarray | None, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and presence of each row ``[:, r, :]`` of ``pred [S, R, N]`` (float32) and ``codes`` (uint8).

    Writes d loss_r / d pred into ``grad`` (C-contiguous float32 of the same shape,
    possibly ``pred`` itself) if given. Blocks of rows run on up to ``threads`` threads.
    """
    sets, num_rows, num_pixels = pred.shape
    pred, codes = _float32(pred, "pred"), _checked(codes, "codes", np.uint8, pred.shape)
    grad = _output(grad, "grad", pred.shape)
    loss = np.empty(num_rows, np.float32)
    present = np.empty(num_rows, np.bool_)
    args = (
        pred.ctypes.data,
        codes.ctypes.data,
        None if grad is None else grad.ctypes.data,
        sets,
        num_rows,
        num_pixels,
        mode,
    )
    threads = _within_budget(_threads_for(pred.size, threads), 8 * (sets * num_pixels + 1), pred.nbytes)
    _run_rows(ROWS_ENTRY, kernel(), args, loss, present, threads, f"{sets * num_pixels} pixels")
    return loss, present


def _threads_for(elements: int, threads: int) -> int:
    """``threads``, or fewer, so that each has at least :data:`GRAIN` elements (:data:`TEAM_GRAIN` on an OpenMP
    team); one, inline, for a small call."""
    grain = TEAM_GRAIN if _team() is not None else GRAIN
    return max(1, min(threads, elements // grain))


def _within_budget(threads: int, scratch_per_thread: int, input_bytes: int) -> int:
    """``threads``, or fewer, so that their scratch stays within the budget (see MIN_SCRATCH_BUDGET)."""
    budget = max(MIN_SCRATCH_BUDGET, input_bytes // 2)
    return max(1, min(threads, budget // max(scratch_per_thread, 1)))


def _split(count: int, threads: int) -> list[tuple[int, int]]:
    """``[0, count)`` in up to ``threads`` runs of nearly equal length (one, empty, if ``count`` is 0)."""
    workers = max(min(threads, count), 1)
    bounds = [count * w // workers for w in range(workers + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _run_rows(
    entry: int, function, args: tuple, loss: np.ndarray, present: np.ndarray, threads: int, what: str
) -> None:
    """``function(*args, row_begin, row_end, loss, present)`` over every row, in blocks on the threads."""
    outputs = (loss.ctypes.data, present.ctypes.data)
    blocks = _split(loss.size, threads)
    status = _run_blocks(_Call(entry, function, args, outputs), blocks, len(blocks))
    if any(status):
        raise MemoryError(f"lovasz: no memory for the sort scratch of {what}")


def _scene_ends(ends: np.ndarray, num_points: int) -> tuple[np.ndarray, int]:
    """``ends`` as C-contiguous int64, checked to rise from 0 to at most ``num_points``, and the most points
    a scene has."""
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    if not ends.size:
        return ends, 0
    sizes = ends.copy()
    sizes[1:] -= ends[:-1]
    if sizes.min() < 0 or ends[-1] > num_points:
        raise ValueError(f"scene ends must rise from 0 to at most {num_points}; got {ends.tolist()}")
    return ends, int(sizes.max())


def lovasz_scene_rows(
    pred: np.ndarray, codes: np.ndarray, ends: np.ndarray, mode: int, grad: np.ndarray | None, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and presence ``[S, K]`` of each (scene, class) row of sets of points.

    ``pred [K, N]`` (float32) and ``codes [K, N]`` (uint8) hold each class's row of all
    points; scene ``s`` is points ``[ends[s - 1], ends[s])``. Writes d loss / d pred into
    ``grad`` (C-contiguous float32 shaped like ``pred``, possibly ``pred`` itself) if given.
    """
    pred, codes = _float32(pred, "pred", codes.shape), _checked(codes, "codes", np.uint8)
    return _scene_rows(
        pred, codes, *_scene_ends(ends, codes.shape[1]), mode, _output(grad, "grad", pred.shape), threads
    )


def _scene_rows(
    pred: np.ndarray,
    codes: np.ndarray,
    ends: np.ndarray,
    largest: int,
    mode: int,
    grad: np.ndarray | None,
    threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lovasz_scene_rows` of arrays checked already; ``largest``: the most points a scene has."""
    num_classes, num_points = codes.shape
    loss = np.empty((ends.size, num_classes), np.float32)
    present = np.empty((ends.size, num_classes), np.bool_)
    args = (pred.ctypes.data, codes.ctypes.data, None if grad is None else grad.ctypes.data)
    args += (num_classes, num_points, ends.ctypes.data, mode)
    threads = _within_budget(_threads_for(pred.size, threads), 8 * (largest + 1), pred.nbytes)
    _run_rows(SCENE_ROWS_ENTRY, scene_kernel(), args, loss, present, threads, f"{num_points} points")
    return loss, present


def _point_blocks(num_points: int, threads: int) -> list[tuple[int, int]]:
    """Up to ``threads`` runs of points, each starting at a multiple of the kernel's tile of 32 points."""
    return [(begin * 32, min(end * 32, num_points)) for begin, end in _split(-(-num_points // 32), threads)]


def lovasz_points(
    points: np.ndarray,
    codes: np.ndarray,
    ends: np.ndarray,
    mode: int,
    grad: np.ndarray | None,
    threads: int,
    logits: bool,
    coefficients: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and presence ``[S, K]`` of each (scene, class) row of points laid out points-first.

    ``points [N, K]`` (float32; logits with ``logits``, whose softmax over ``K`` the kernel takes)
    are read where they lie, ``codes [K, N]`` (uint8) hold each class's row; scene ``s`` is points
    ``[ends[s - 1], ends[s])``, the last end ``N``. Writes into ``grad`` (C-contiguous float32
    ``[N, K]``, possibly ``points`` itself unless ``logits``), if given, the derivative of each point's
    own scene's loss: its rows' losses weighted by ``coefficients(loss, present)`` (float32 ``[S, K]``).
    Three passes, each on up to ``threads`` threads: the points transposed class-major (and their
    softmax), the rows, the gradient back.
    """
    num_classes, num_points = codes.shape
    ends, largest = _scene_ends(ends, num_points)
    if ends.size and ends[-1] != num_points:
        raise ValueError(f"the last scene must end at the last point, {num_points}; got {ends[-1]}")
    points, codes = _float32(points, "points", (num_points, num_classes)), _checked(codes, "codes", np.uint8)
    grad = _output(grad, "grad", points.shape)
    if logits and grad is not None and np.shares_memory(grad, points):
        raise ValueError("lovasz kernel: with logits, grad must not be the points (their softmax goes there)")
    into, out = _loaded(points_kernel(), "points")
    block = np.empty((num_classes, num_points), np.float32)  # the rows, class-major; then their gradient
    probs = grad if logits else None  # the softmax, where the gradient will be
    point_blocks = _point_blocks(num_points, _threads_for(points.size, threads))
    args = (points.ctypes.data, block.ctypes.data, None if probs is None else probs.ctypes.data)
    args += (num_classes, num_points, int(logits))
    _run_blocks(_Call(POINTS_IN_ENTRY, into, args), point_blocks, len(point_blocks))
    loss, present = _scene_rows(block, codes, ends, largest, mode, None if grad is None else block, threads)
    if grad is not None:
        coefficient = _float32(np.asarray(coefficients(loss, present), dtype=np.float32), "coefficients", loss.shape)
        args = (block.ctypes.data, None if probs is None else probs.ctypes.data, grad.ctypes.data)
        args += (num_classes, num_points, ends.ctypes.data, ends.size, coefficient.ctypes.data)
        status = _run_blocks(_Call(POINTS_OUT_ENTRY, out, args), point_blocks, len(point_blocks))
        if any(status):
            raise MemoryError(f"lovasz: no memory for the scratch of {num_points} points")
    return loss, present


def gather_pixels(grid: np.ndarray, at: np.ndarray, threads: int) -> np.ndarray:
    """``[K, M]``: row ``k`` of ``grid [B, K, N]`` (float32) at the ``M`` pixels ``at`` (int64 offsets in the
    flat grid of row 0: image ``b``'s pixel ``p`` is ``b * K * N + p``), class-major."""
    grid, at = _float32(grid, "grid"), _checked(at, "at", np.int64)
    _, num_rows, num_pixels = grid.shape
    if at.size and (at.min() < 0 or at.max() + (num_rows - 1) * num_pixels >= grid.size):
        raise ValueError(f"lovasz kernel: pixel offsets must lie in the grid of {grid.size} elements")
    out = np.empty((num_rows, at.size), np.float32)
    args = (grid.ctypes.data, at.ctypes.data, at.size, num_pixels, out.ctypes.data)
    blocks = _split(num_rows, _threads_for(out.size, threads))
    _run_blocks(_Call(GATHER_ENTRY, _loaded(grid_kernel(), "grid")[0], args), blocks, len(blocks))
    return out


def scatter_pixels(values: np.ndarray, pixel: np.ndarray, ends: np.ndarray, grad: np.ndarray, threads: int) -> None:
    """Write into ``grad [B, K, N]`` (float32, C-contiguous) the values ``[K, M]`` of the pixels ``pixel [M]``
    (image ``b``'s pixels are the run ``[ends[b - 1], ends[b])``, rising) and 0 at every other pixel. Pixels
    out of order, or out of ``[0, N)``, are never written out of bounds (some of them not at all)."""
    images, num_rows, num_pixels = grad.shape
    values = _float32(values, "values", (num_rows, pixel.size))
    pixel, (ends, _) = _checked(pixel, "pixel", np.int64), _scene_ends(ends, pixel.size)
    grid = cast(np.ndarray, _output(grad, "grad", grad.shape))  # (an array in, an array out)
    if ends.size != images:
        raise ValueError(f"lovasz kernel: ends must give one run per image, {images}; got {ends.size}")
    args = (values.ctypes.data, pixel.ctypes.data, ends.ctypes.data, num_rows, num_pixels, pixel.size)
    blocks = _split(images * num_rows, _threads_for(grad.size, threads))
    scatter = _loaded(grid_kernel(), "grid")[1]
    _run_blocks(_Call(SCATTER_ENTRY, scatter, args + (grid.ctypes.data,)), blocks, len(blocks))
