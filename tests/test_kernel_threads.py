"""The C kernel's threads: its scratch memory does not grow with the thread count, and its one pool is
not rebuilt when a call has fewer blocks than threads (point clouds of few rows, another framework)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from lovasz import _ckernel

pytestmark = pytest.mark.skipif(_ckernel.kernel() is None, reason="the kernel is not built")


def test_threads_at_work_stay_within_the_scratch_budget(monkeypatch):
    blocks_seen = []
    run_blocks = _ckernel._run_blocks
    monkeypatch.setattr(
        _ckernel,
        "_run_blocks",
        lambda run, blocks, workers: blocks_seen.append(len(blocks)) or run_blocks(run, blocks, workers),
    )
    monkeypatch.setattr(_ckernel, "MIN_SCRATCH_BUDGET", 1 << 20)  # 1 MiB: rows of 32k pixels, 4 at a time
    rng = np.random.default_rng(0)
    pred = rng.random((1, 16, 1 << 15), dtype=np.float32)
    codes = rng.integers(0, 2, pred.shape).astype(np.uint8)
    expected = _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, None, 1)
    got = _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, None, 64)
    assert blocks_seen[-1] == 3  # (1 MiB) // (8 bytes x 32769): 3 threads, not 16 (one a row) nor 64
    np.testing.assert_array_equal(got[0], expected[0])


def test_the_pool_is_kept_across_block_counts():
    pool = _ckernel._pool(2)
    rng = np.random.default_rng(1)
    for rows in (1, 2, 3, 1):  # 1 block (inline), then 2
        pred = rng.random((1, rows, _ckernel.GRAIN + 100), dtype=np.float32)
        _ckernel.lovasz_rows(pred, np.zeros(pred.shape, np.uint8), _ckernel.SOFTMAX, None, 2)
    assert _ckernel._POOL is pool
    assert _ckernel._pool(1) is pool  # fewer threads: the same pool
    grown = _ckernel._pool(pool._max_workers + 1)  # more: it grows
    assert grown is not pool and grown._max_workers == pool._max_workers + 1


def test_small_calls_run_inline_and_large_ones_on_every_thread(executor, monkeypatch):
    workers_seen = []
    run_blocks = _ckernel._run_blocks
    monkeypatch.setattr(
        _ckernel,
        "_run_blocks",
        lambda run, blocks, workers: workers_seen.append(workers) or run_blocks(run, blocks, workers),
    )
    rng = np.random.default_rng(2)
    grain = _ckernel.TEAM_GRAIN if executor == "openmp team" else _ckernel.GRAIN
    for pixels, expected_workers in ((64, 1), (grain // 4, 1), (grain // 2, 2), (1 << 16, 4)):
        pred = rng.random((1, 4, pixels), dtype=np.float32)
        codes = rng.integers(0, 2, pred.shape).astype(np.uint8)
        workers_seen.clear()
        got = _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, None, 4)
        assert workers_seen == [expected_workers], pixels
        np.testing.assert_array_equal(got[0], _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, None, 1)[0])
    points = rng.random((64, 19), dtype=np.float32)
    codes = (np.arange(19)[:, None] == rng.integers(0, 19, 64)).astype(np.uint8)
    workers_seen.clear()
    _ckernel.lovasz_points(
        points, codes, np.array([64]), _ckernel.SOFTMAX, np.empty_like(points), 4, False, lambda loss, _: loss
    )
    assert workers_seen == [1, 1, 1]  # in, rows, out: all inline


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_peak_memory_stays_within_the_scratch_budget_at_any_thread_count():
    """At 64 threads, the kernel's scratch adds at most its budget (64 MiB here) to the peak, whichever threads
    run the blocks: torch's OpenMP team (whose threads start at once, so more scratch is held at a time
    than on the pool: up to +10 MiB over one thread, measured) or the pool."""
    script = textwrap.dedent("""
        import sys, torch
        torch.set_num_threads(int(sys.argv[1]))
        import lovasz.torch as L
        def kib(field):
            return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
        x = torch.rand(4, 19, 256, 256).requires_grad_()
        y = torch.randint(0, 19, (4, 256, 256))
        L.lovasz_softmax(x, y).backward()
        x.grad = None
        open("/proc/self/clear_refs", "w").write("5")
        before = kib("VmRSS")
        L.lovasz_softmax(x, y).backward()
        print(kib("VmHWM") - before)
    """)
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "65536",
        "PYTHONWARNINGS": "ignore",
    }
    peaks = [
        int(
            subprocess.run(
                [sys.executable, "-c", script, str(t)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
        for t in (1, 64)
    ]
    assert peaks[1] - peaks[0] <= (_ckernel.MIN_SCRATCH_BUDGET >> 10) + 8192, peaks  # KiB; slack: threads' stacks


def _every_entry(threads: int):
    """Loss, presence and gradient of rows, rows of scenes and points-first logits, on ``threads`` threads."""
    rng = np.random.default_rng(3)
    pred = rng.random((2, 4, _ckernel.GRAIN), dtype=np.float32)  # 4 rows of 2 images: 2 blocks on 2 threads
    codes = rng.integers(0, 3, pred.shape).astype(np.uint8)
    rows_grad = np.empty_like(pred)
    rows = _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, rows_grad, threads)
    scene_pred, scene_codes = pred[0], codes[0]
    scene_grad = np.empty_like(scene_pred)
    ends = np.array([1000, 20_000, _ckernel.GRAIN])
    scenes = _ckernel.lovasz_scene_rows(scene_pred, scene_codes, ends, _ckernel.HINGE, scene_grad, threads)
    points = rng.normal(size=(20_000, 7)).astype(np.float32)
    point_codes = (np.arange(7)[:, None] == rng.integers(0, 7, 20_000)).astype(np.uint8)
    point_grad = np.empty_like(points)
    point_losses = _ckernel.lovasz_points(
        points, point_codes, np.array([5000, 20_000]), _ckernel.SOFTMAX, point_grad, threads, True, lambda l, _: l
    )
    valid = rng.random(pred.shape[::2]) < 0.5  # half the pixels of each image: 2 blocks of rows
    image, pixel = np.nonzero(valid)
    gathered = _ckernel.gather_pixels(pred, image * pred[0].size + pixel, threads)
    scattered = np.empty_like(pred)
    _ckernel.scatter_pixels(gathered, pixel, np.cumsum(valid.sum(1)), scattered, threads)
    return [*rows, rows_grad, *scenes, scene_grad, *point_losses, point_grad, gathered, scattered]


def test_every_entry_gives_the_inline_results_on_the_threads(executor, monkeypatch):
    ran_on_team = []
    run_on_team = _ckernel._run_on_team
    monkeypatch.setattr(_ckernel, "_run_on_team", lambda *args: ran_on_team.append(1) or run_on_team(*args))
    inline = _every_entry(1)
    assert not ran_on_team
    for got, expected in zip(_every_entry(2), inline):
        np.testing.assert_array_equal(got, expected)
    # rows, scene rows, points in, rows, out, gather, scatter
    assert len(ran_on_team) == (7 if executor == "openmp team" else 0)


def test_python_threads_each_running_the_kernel_get_the_serial_results(executor):
    """Each Python thread that calls the kernel leads a team (or shares the pool) of its own blocks."""
    from concurrent.futures import ThreadPoolExecutor

    expected = _every_entry(1)
    with ThreadPoolExecutor(3) as threads:
        for results in threads.map(lambda _: _every_entry(2), range(6)):
            for got, want in zip(results, expected):
                np.testing.assert_array_equal(got, want)


def test_a_team_smaller_than_asked_still_runs_every_block():
    """OMP_THREAD_LIMIT=1 gives a team of one thread for the four blocks asked: it takes them all."""
    if sys.platform != "linux":
        pytest.skip("libgomp's team: Linux only")
    require("torch")  # which loads its libgomp
    script = textwrap.dedent("""
        import numpy as np, torch
        from lovasz import _ckernel as C
        assert C._team() is not None, "no libgomp loaded"
        rng = np.random.default_rng(0)
        pred = rng.random((2, 8, 128 * 128), dtype=np.float32)
        codes = rng.integers(0, 3, pred.shape).astype(np.uint8)
        on_team, inline = np.empty_like(pred), np.empty_like(pred)
        a = C.lovasz_rows(pred, codes, C.SOFTMAX, on_team, 4)
        b = C.lovasz_rows(pred, codes, C.SOFTMAX, inline, 1)
        print(np.array_equal(a[0], b[0]) and np.array_equal(on_team, inline))
    """)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.split()[-1] == "True", out.stderr[-2000:]
