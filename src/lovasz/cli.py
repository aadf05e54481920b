"""The ``lovasz`` command: ``lovasz bench``, ``lovasz info`` (and ``lovasz demo`` where installed)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lovasz import __version__

if TYPE_CHECKING:
    import torch

COMMANDS = {
    "bench": ("lovasz.bench", "time the losses (PyTorch, TF, JAX, Keras) against the original, kornia and a bare sort"),
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


def integer(minimum: int, *, maximum: int | None = None, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (at most ``maximum``, a multiple of
    ``multiple_of``), so that a value out of range is ``error: argument --NAME: ...`` and exit status 2."""
    bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    if multiple_of > 1:
        bounds = f"a multiple of {multiple_of} and {bounds}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be {bounds}; got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite float above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0; got {text}")
    return value


def _check_writable(folder: Path) -> None:
    """A file can be written in ``folder``: tried with a temporary file (os.access says yes to root on /proc)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write in {folder}: {error.strerror}") from None


def output_folder(text: str) -> Path:
    """An argparse ``type``: a folder to write into, made now if missing; a file there, or a folder that cannot
    be made or written, is an error now, not a traceback after the work."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a folder; {text} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot make the folder {text}: {error.strerror}") from None
    _check_writable(path)
    return path


def output_file(text: str) -> Path:
    """An argparse ``type``: a file to write, in a folder that exists and can be written (checked now, not after
    the work)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a file name; {text} is a folder")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist")
    _check_writable(path.parent)
    return path


def torch_device(text: str) -> torch.device:
    """An argparse ``type``: a torch device this machine has, cpu or cuda (cuda:N); otherwise an error
    that says which devices there are."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = ", ".join(["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(count)] if count else []))
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; available: {available}") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise argparse.ArgumentTypeError(f"{text}: must be cpu or cuda; available: {available}")
    if device.type == "cuda" and not count:
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine; available: {available}")
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s); available: {available}")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="lovasz", description="Lovász-Softmax and Lovász hinge losses.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
    )
    # `lovasz` has no options of its own but these two: what comes before the command is parsed here (an
    # unknown option there is `unrecognized arguments`), what comes after it is the command's.
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    command, options = parser.parse_args(argv[: at + 1]).command, argv[at + 1 :]
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
    try:
        return module.main(options)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through the frameworks; the shell's status
        print(f"\nlovasz {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
