"""The ``lovasz`` command: ``lovasz bench``, ``lovasz info`` (and ``lovasz demo`` where installed)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

COMMANDS = {
    "bench": ("lovasz.bench", "time the PyTorch losses against the original, kornia and a bare sort"),
    "demo": ("lovasz.demo", "train a small U-Net with cross-entropy and with Lovász-Softmax, compare IoU"),
    "info": ("lovasz.info", "versions, the C kernel's state (and why), threads and devices"),
}
# The extra (pyproject.toml) each command comes with, and the packages of it that the command cannot run
# without ({distribution: import name}). The benchmark's other peers (kornia, the original) are optional:
# a missing one is a row marked missing.
EXTRAS: dict[str, tuple[str, dict[str, str]]] = {
    "bench": ("bench", {"torch": "torch"}),
    "demo": ("demo", {"torch": "torch", "matplotlib": "matplotlib", "tqdm": "tqdm", "pillow": "PIL"}),
}
_HELP = ("-h", "--help")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module set to None in sys.modules
        return False


def missing_packages(command: str) -> list[str]:
    """The packages ``command`` needs that are not installed (distribution names)."""
    _, packages = EXTRAS.get(command, ("", {}))
    return [distribution for distribution, module in packages.items() if not _installed(module)]


def _refuse(command: str, missing: Sequence[str]) -> int:
    """One line on stderr naming what is missing and the extra to install; the exit status."""
    extra = EXTRAS[command][0]
    print(
        f'lovasz {command}: needs {", ".join(missing)}, not installed: pip install "lovasz[{extra}]"',
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="lovasz", description="Lovász-Softmax and Lovász hinge losses.")
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
    )
    args, rest = parser.parse_known_args(argv[:1])
    command, options = args.command, argv[1:] + rest
    name = COMMANDS[command][0]
    # Before the command starts (the demo would otherwise train for minutes, then fail to draw its figure);
    # its help needs only what its module imports.
    missing = missing_packages(command)
    if missing and not any(option in _HELP for option in options):
        return _refuse(command, missing)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            print(f"lovasz {command}: not available in this version ({name} is not written yet)", file=sys.stderr)
            return 2
        missing_module = (error.name or "").split(".")[0]
        if command in EXTRAS and missing_module in EXTRAS[command][1].values():
            return _refuse(command, missing or [missing_module])
        raise
    return module.main(options)


if __name__ == "__main__":
    sys.exit(main())
