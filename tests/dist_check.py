"""Checks an installed lovasz (not the source tree): run by tests/test_dist.py in fresh venvs, and by
cibuildwheel's test-command on every wheel it builds (pyproject.toml, [tool.cibuildwheel]).

    python dist_check.py --kernel loaded [--torch] [--out values.json]
    python dist_check.py --kernel absent --torch --out values.json

``--kernel loaded``: the C kernel is in the installed package and loads; its rows equal the NumPy
oracle's, and ``lovasz info`` says "loaded". ``--kernel absent``: no kernel file, ``lovasz info`` says
why, and lovasz.torch warns once that it sorts with torch.sort. ``--torch``: losses and gradients of
lovasz.torch on fixed inputs, checked against the oracle and written to ``--out`` for the caller to
compare between installations. Prints what it found; any failed check exits non-zero with the reason.
Needs only the standard library, NumPy and lovasz (torch for ``--torch``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

TOLERANCE = 1e-5  # float32 kernel or torch against the float64 oracle


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"dist_check FAILED: {message}")


def _inputs():
    """Fixed probabilities [B=2, C=3, 6, 7] and labels with ignored pixels (255), and hinge logits."""
    import numpy as np

    rng = np.random.default_rng(20240607)
    logits = rng.normal(size=(2, 3, 6, 7))
    probas = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=(2, 6, 7))
    labels[:, 0, :3] = 255
    scores = rng.normal(size=(2, 6, 7))
    masks = rng.integers(0, 2, size=(2, 6, 7))
    return probas.astype(np.float32), labels, scores.astype(np.float32), masks


def _installed_package() -> Path:
    import lovasz

    package = Path(lovasz.__file__).resolve().parent
    prefix = Path(sys.prefix).resolve()
    _check(prefix in package.parents, f"lovasz was imported from {package}, not from this environment ({prefix})")
    print(f"lovasz {lovasz.__version__} from {package}")
    return package


def _check_kernel(package: Path, expected: str) -> None:
    from lovasz import _ckernel

    binaries = sorted(p.name for p in package.glob("_kernel*") if p.suffix in (".so", ".pyd", ".dylib"))
    why = _ckernel.why_not()
    if expected == "loaded":
        _check(binaries != [], f"no kernel binary in {package}")
        _check(why == "", f"the kernel did not load: {why}")
        print(f"C kernel: {binaries[0]}, loaded")
    else:
        _check(binaries == [], f"expected no kernel, found {binaries}")
        _check(why != "", "the kernel loaded, but none was expected")
        print(f"C kernel: absent ({why})")


def _check_info(expected: str) -> None:
    """The ``lovasz`` console script of this environment."""
    script = Path(sys.executable).parent / ("lovasz.exe" if sys.platform == "win32" else "lovasz")
    _check(script.exists(), f"no console script {script}")
    result = subprocess.run([str(script), "info"], capture_output=True, text=True, timeout=300)
    _check(result.returncode == 0, f"`lovasz info` failed:\n{result.stdout}\n{result.stderr}")
    line = next((line for line in result.stdout.splitlines() if "C kernel" in line), "")
    wanted = "loaded:" if expected == "loaded" else "NOT loaded"
    _check(wanted in line, f"`lovasz info` should say {wanted!r}:\n{result.stdout}")
    print(f"lovasz info: {line.strip()}")


def _check_kernel_rows() -> None:
    """The kernel's per-class rows (batch mode) against the oracle's Lovász-Softmax."""
    import numpy as np

    from lovasz import _ckernel, reference

    probas, labels, _, _ = _inputs()
    batch, classes = probas.shape[:2]
    pred = np.ascontiguousarray(probas.reshape(batch, classes, -1))
    flat = labels.reshape(batch, 1, -1)
    codes = np.where(flat == 255, 2, flat == np.arange(classes)[None, :, None]).astype(np.uint8)
    loss, present = _ckernel.lovasz_rows(pred, codes, _ckernel.SOFTMAX, None, 2)
    value = float(loss[present].mean())
    expected = float(reference.lovasz_softmax(probas, labels, ignore=255))
    _check(abs(value - expected) < TOLERANCE, f"kernel rows give {value}, the oracle {expected}")
    print(f"kernel Lovász-Softmax {value:.7f} (oracle {expected:.7f})")


def _torch_values(expected: str) -> dict:
    """lovasz.torch's losses and gradients (float32, CPU: the kernel's path, or torch.sort's)."""
    import torch

    import lovasz.torch as L
    from lovasz import reference

    probas, labels, scores, masks = _inputs()
    values = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, (x, y, loss) in {
            "softmax": (probas, labels, lambda x, y: L.lovasz_softmax(x, y, ignore=255)),
            "softmax_per_image": (probas, labels, lambda x, y: L.lovasz_softmax(x, y, per_image=True, ignore=255)),
            "hinge": (scores, masks, L.lovasz_hinge),
        }.items():
            tensor = torch.tensor(x, requires_grad=True)
            value = loss(tensor, torch.tensor(y))
            value.backward()
            values[name] = {"loss": float(value), "grad": tensor.grad.flatten().tolist()}
    oracles = {
        "softmax": reference.lovasz_softmax(probas, labels, ignore=255),
        "softmax_per_image": reference.lovasz_softmax(probas, labels, per_image=True, ignore=255),
        "hinge": reference.lovasz_hinge(scores, masks),
    }
    for name, oracle in oracles.items():
        got = values[name]["loss"]
        _check(abs(got - float(oracle)) < TOLERANCE, f"lovasz.torch {name} gives {got}, the oracle {float(oracle)}")
        print(f"lovasz.torch {name}: {got:.7f} (oracle {float(oracle):.7f})")
    missing = [w for w in caught if "C kernel is not loaded" in str(w.message)]
    if expected == "loaded":
        _check(missing == [], f"lovasz.torch warned: {missing[0].message if missing else ''}")
    else:
        _check(len(missing) == 1, f"lovasz.torch should warn once that the kernel is missing; warned {len(missing)}x")
        print(f"lovasz.torch warned: {missing[0].message}")
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", choices=["loaded", "absent"], required=True)
    parser.add_argument("--torch", action="store_true", help="run lovasz.torch's losses (torch must be installed)")
    parser.add_argument("--out", type=Path, help="write lovasz.torch's losses and gradients here (JSON)")
    args = parser.parse_args(argv)
    package = _installed_package()
    _check_kernel(package, args.kernel)
    _check_info(args.kernel)
    if args.kernel == "loaded":
        _check_kernel_rows()
    values = _torch_values(args.kernel) if args.torch else {}
    if args.out:
        args.out.write_text(json.dumps(values))
    print("dist_check: all checks passed")


if __name__ == "__main__":
    main()
