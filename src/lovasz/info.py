"""`lovasz info`: what this installation runs with, for bug reports and for a slow first run.

Versions come from the installed packages' metadata; only torch and JAX are imported, to
list their devices.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Callable, Sequence

import lovasz
from lovasz import _ckernel

FRAMEWORKS = ("numpy", "torch", "triton", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch_devices() -> list[str]:
    import torch

    devices = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return devices


def _jax_devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in jax.devices()]


def report() -> list[tuple[str, str]]:
    """``(name, value)`` rows: versions, the C kernel's state, threads and devices."""
    rows = [
        ("lovasz", f"{lovasz.__version__} ({os.path.dirname(lovasz.__file__)})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
    ]
    rows += [(name, _version(name)) for name in FRAMEWORKS]
    why = _ckernel.why_not()
    rows.append(
        (
            "C kernel",
            "loaded: float32 rows on the CPU are sorted by it"
            if not why
            else f"NOT loaded ({why}): torch, TF and JAX sort float32 CPU rows with their own sort, 3-4x slower; "
            "reinstall with a C compiler present",
        )
    )
    devices: dict[str, Callable[[], list[str]]] = {"torch devices": _torch_devices, "jax devices": _jax_devices}
    for name, probe in devices.items():
        if importlib.util.find_spec(name.split()[0]) is not None:
            try:
                rows.append((name, ", ".join(probe())))
            except Exception as error:  # a broken install: say so rather than fail the report
                rows.append((name, f"error: {type(error).__name__}: {error}"))
    if importlib.util.find_spec("torch") is not None:
        import torch

        from lovasz._torch_core import _triton

        if not torch.cuda.is_available():  # (a CPU build of torch may come with Triton)
            path = "none: torch sees no CUDA device"
        elif _triton("_triton_rows") is not None:
            path = "Triton kernels, on CUDA devices"
        else:
            path = "torch.sort (Triton not installed, or LOVASZ_TRITON=0)"
        rows.append(("GPU path", path))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lovasz info", description=__doc__.split("\n\n")[0].replace("`", ""))
    parser.parse_args(argv)
    rows = report()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
