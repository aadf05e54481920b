"""Time and peak memory of lovasz.torch on a bench case as the rows' chunk changes (a sweep for a GPU).

On an accelerator the sort path takes a class's rows a chunk at a time: ``_torch_core._chunk_elements``
values (a sixteenth of the input, 4M to 32M; under 12M, a third of it from 2M). A bigger chunk means fewer
passes of host work, a smaller one fewer sort temporaries alive at once (points of scenes: int64 keys, about
49 bytes of them an element).
`make gpu-report` runs this on "LiDAR points per-scene" (whose peak memory was above the original's), so
that the chunk is chosen from figures, not guessed. Every row's loss must equal the default's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lovasz import _torch_core as core
from lovasz import bench

DEFAULT_CHUNKS = [1 << 20, 1 << 21, 3 << 20, 1 << 22, 1 << 23]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case", default="LiDAR points per-scene", help="a case of `lovasz bench` on the device (default: %(default)s)"
    )
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=DEFAULT_CHUNKS,
        metavar="ELEMENTS",
        help="chunk sizes to try after the default one, in elements (default: %(default)s)",
    )
    parser.add_argument("--device", default="cuda", help="a torch device (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per chunk, median (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the rows to this JSON file (default: print them only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = bench.cases_by_name(device)
    if args.case not in cases:
        parser.error(f"--case must be one of {sorted(cases)} on {device.type}; got {args.case!r}")
    case = cases[args.case]
    default_chunk = core._chunk_elements
    rows, expected = [], None
    try:
        for chunk in [None, *args.chunks]:
            core._chunk_elements = default_chunk if chunk is None else lambda device, total=0, chunk=chunk: chunk
            step = bench.step_function(case, "lovasz", device)
            assert step is not None, case.name
            loss = float(step()[0])
            expected = loss if expected is None else expected
            if loss != expected:
                raise SystemExit(f"chunk {chunk}: loss {loss!r}, the default chunk's {expected!r}")
            row = {
                "case": case.name,
                "chunk": "default" if chunk is None else chunk,
                "ms": 1e3 * bench.time_step(step, args.repeats, device),
                "peak MiB": bench.peak_memory_cuda(step, device) / 2**20 if device.type == "cuda" else None,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        core._chunk_elements = default_chunk
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
