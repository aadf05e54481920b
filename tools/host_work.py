"""Host work of lovasz.torch's GPU path, measured on the CPU: the Triton path with its kernels stubbed out.

On a GPU the loss of points of scenes is bound by host work (an H200 spent 2.3 ms of GPU kernels in a
4.8 ms step), which is Python and torch ops, and that runs the same on CPU tensors. This runs the path
that CUDA float32 takes (Triton's, the C kernel off) on small CPU inputs with every Triton launch made
a no-op (the values are garbage; nothing checks them): what is left is the host's share. It prints the
points of scenes (``offsets=``, from logits, per scene) against the dense layout of the same numbers
(``[S, C, N]``, per image), the ratio the bench's "lovasz dense" column gives on a GPU. A proxy: the
launches themselves, the same number on both sides, are not timed. The chunk of rows is set so that both
sides take as many chunks as the bench's "LiDAR points per-scene" case on a GPU (4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["TRITON_INTERPRET"] = "1"  # (before Triton is imported: the stubs replace its kernels anyway)

import torch  # noqa: E402

import lovasz.torch as L  # noqa: E402
from lovasz import _torch_core as core  # noqa: E402


class _NoLaunch:
    """A Triton kernel whose launches do nothing; calls from other kernels go through."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, *args, **kwargs):
        return self.kernel(*args, **kwargs)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_kernels() -> None:
    from lovasz import _triton_rows, _triton_softmax

    for module in (_triton_rows, _triton_softmax):
        for name, value in list(vars(module).items()):
            if type(value).__name__ in ("InterpretedFunction", "JITFunction"):
                setattr(module, name, _NoLaunch(value))
    core._use_c_kernel = lambda pred: False
    core._use_triton = lambda pred: pred.dtype == torch.float32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenes", type=int, default=4, help="scenes (images of the dense layout) (default: %(default)s)"
    )
    parser.add_argument("--classes", type=int, default=19, help="classes (default: %(default)s)")
    parser.add_argument("--points", type=int, default=64, help="points per scene (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds, median (default: %(default)s)")
    parser.add_argument(
        "--calls", type=int, default=100, help="forward + backward calls per round (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    _stub_kernels()
    scenes, classes, points = args.scenes, args.classes, args.points
    # rows per chunk: at most 6 of the points' 19 and 24 of the dense layout's 76, 4 even chunks each, as
    # the bench case's on a GPU
    chunk = points * scenes * 6
    core._chunk_elements = lambda device, total=0: chunk
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(scenes * points, classes, generator=g)
    labels = torch.randint(0, classes, (scenes * points,), generator=g)
    offsets = torch.arange(1, scenes + 1) * points
    dense_logits = logits.view(scenes, points, classes).permute(0, 2, 1).contiguous()
    dense_labels = labels.view(scenes, points)

    def call(x, y, **kwargs):
        x = x.clone().requires_grad_()
        L.lovasz_softmax(x, y, per_image=True, from_logits=True, **kwargs).backward()

    def timed(x, y, **kwargs) -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            call(x, y, **kwargs)
        return (time.perf_counter() - start) / args.calls * 1e6

    for _ in range(20):  # warm-up
        call(logits, labels, offsets=offsets)
        call(dense_logits, dense_labels)
    rounds = [(timed(logits, labels, offsets=offsets), timed(dense_logits, dense_labels)) for _ in range(args.rounds)]
    scene_us = statistics.median(r[0] for r in rounds)
    dense_us = statistics.median(r[1] for r in rounds)
    ratio = statistics.median(r[0] / r[1] for r in rounds)
    print(f"host work a call: points with offsets {scene_us:.0f} us, dense layout {dense_us:.0f} us, ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
