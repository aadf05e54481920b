"""The ``lovasz`` command: ``lovasz bench``, ``lovasz info`` (and ``lovasz demo`` where installed)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "bench": ("lovasz.bench", "time the PyTorch losses against the original, kornia and a bare sort"),
    "demo": ("lovasz.demo", "train a small U-Net with cross-entropy and with Lovász-Softmax, compare IoU"),
    "info": ("lovasz.info", "versions, the C kernel's state (and why), threads and devices"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="lovasz", description="Lovász-Softmax and Lovász hinge losses.")
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
    )
    args, rest = parser.parse_known_args(argv[:1])
    name = COMMANDS[args.command][0]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        print(f"lovasz {args.command}: not available in this version ({name} is not written yet)", file=sys.stderr)
        return 2
    return module.main(argv[1:] + rest)


if __name__ == "__main__":
    sys.exit(main())
