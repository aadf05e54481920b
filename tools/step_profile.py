"""Where a step's time goes on a device: GPU kernels against host work, per bench case (a profile for a GPU).

A loss step on a GPU is bound by host work where its kernels add up to less than its time: the H200 run of
69ff6cb gave 2.3 ms of kernels in a 4.8 ms step on the points of scenes, 1.7 in 5.2 on the Cylinder3D grid.
This profiles a few steps of each case and implementation with torch.profiler and gives, a step: the time
(as `lovasz bench` times it), the kernels' total, the aten calls (nested ones too) and kernel launches, and
the ops that take the most host time (their own CPU time, without their children's; an autograd Function's
includes its Python): what to cut next. `make gpu-report` runs it on the cases of the issue's GPU targets.
On the CPU it runs too (no kernels to count).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from lovasz import bench

DEFAULT_CASES = ["Cylinder3D voxels 2%", "LiDAR points per-scene"]
DEFAULT_IMPLS = ["lovasz", "lovasz dense", "original"]


def profile_step(step, steps: int, device: torch.device, top: int) -> dict:
    """One row: ``step``'s median time, then ``steps`` of it profiled, each figure a step's share."""
    row: dict = {"ms": 1e3 * bench.time_step(step, steps, device)}
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    host = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    row["kernels ms"] = sum(e.self_device_time_total for e in kernels) / steps / 1e3 if cuda else None
    row["ops"] = sum(e.count for e in host if e.key.startswith("aten::")) / steps
    row["launches"] = sum(e.count for e in host if "LaunchKernel" in e.key) / steps
    row["host ms"] = sum(e.self_cpu_time_total for e in host) / steps / 1e3
    busiest = sorted(host, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    row["top host ops"] = [
        {"op": e.key, "calls": e.count / steps, "self us": e.self_cpu_time_total / steps} for e in busiest
    ]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        action="append",
        help=f"a case of `lovasz bench` on the device; repeat for several (default: {DEFAULT_CASES})",
    )
    parser.add_argument(
        "--impl",
        action="append",
        choices=bench.IMPLEMENTATIONS,
        help=f"an implementation; repeat for several (default: {DEFAULT_IMPLS}, where they apply)",
    )
    parser.add_argument("--device", default="cuda", help="a torch device (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed, then profiled (default: %(default)s)")
    parser.add_argument("--top", type=int, default=12, help="host ops listed per row (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the rows to this JSON file (default: print them only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = bench.cases_by_name(device)
    wanted = args.case or DEFAULT_CASES
    unknown = [name for name in wanted if name not in cases]
    if unknown:
        parser.error(f"--case must be among {sorted(cases)} on {device.type}; got {unknown}")
    rows = []
    for name in wanted:
        for impl in args.impl or DEFAULT_IMPLS:
            step = bench.step_function(cases[name], impl, device)
            if step is None:  # (the dense layout of a grid, say)
                continue
            row = {"case": name, "impl": impl, **profile_step(step, args.steps, device, args.top)}
            rows.append(row)
            kernels = "n/a" if row["kernels ms"] is None else f"{row['kernels ms']:.2f}"
            print(
                f"{name} / {impl}: {row['ms']:.2f} ms a step, kernels {kernels} ms, host ops {row['host ms']:.2f} ms, "
                f"{row['ops']:.0f} aten calls, {row['launches']:.0f} launches",
                flush=True,
            )
            for op in row["top host ops"]:
                print(f"    {op['self us']:9.1f} us  {op['calls']:6.1f} x  {op['op']}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
