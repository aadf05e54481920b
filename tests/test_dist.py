"""The packages, as a user gets them: `make dist` on a clean copy of the tree, then the wheel and the
sdist each installed into a fresh venv with no C compiler on PATH (docs/packaging.md).

The wheel must carry the compiled kernel (manylinux, abi3) and load it without a compiler; the sdist
must install without one, leave the kernel out, and give through torch.sort the values the wheel's
kernel gives. One test, in one process: its steps share the builds (pytest-xdist would spread separate
tests over workers and build several times). About 100 s on 2 cores: ~13 s for `make dist`, ~10 s per
venv for torch (a local wheel here; numpy, setuptools and the build tools from the index), ~15 s per
check (imports without byte-code), ~10 s for each other CPython found (the abi3 wheel on 3.10 and 3.13).

Skipped where no C compiler is found, or on a GPU run (LOVASZ_TEST_DEVICE: the packages are the
host's business), unless LOVASZ_REQUIRE names `kernel`, as `make test` does: then it fails.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from conftest import DEVICE_NAME, REQUIRED

ROOT = Path(__file__).resolve().parent.parent
CHECK = Path(__file__).resolve().parent / "dist_check.py"
TORCH = "torch==2.13.0"  # as in the Makefile: a CPU build here
COMPILERS = ("cc", "gcc", "clang", "c89", "c99", "tcc", "icx", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc")
# Variables that would point a build at a compiler, a build at the source tree, or make a nested make
# share this make's job server; none of them reaches a step.
SCRUBBED = (
    "CC", "CXX", "LDSHARED", "CFLAGS", "CPPFLAGS", "LDFLAGS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
    "CIBUILDWHEEL", "LOVASZ_BUILD_KERNEL", "LOVASZ_REQUIRE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
)  # fmt: skip


CONFIGURED_CC = (sysconfig.get_config_var("CC") or "cc").split()[0]  # what setuptools runs


def _compiler() -> str | None:
    return shutil.which(CONFIGURED_CC) or shutil.which("cc") or shutil.which("gcc")


def _why_skip() -> str:
    if sys.platform == "win32":
        return "make and a POSIX venv layout: the Windows wheels are cibuildwheel's (release.yml)"
    if "kernel" in REQUIRED:
        return ""
    if DEVICE_NAME != "cpu":
        return "a GPU run (LOVASZ_TEST_DEVICE): the packages are built and checked by the CPU suite"
    if _compiler() is None or shutil.which("make") is None:
        return "no C compiler (or no make): the wheel's kernel cannot be built here"
    return ""


def _other_cpythons() -> list[Path]:
    """The oldest and newest CPython >= 3.10 this machine has besides this one (on PATH or pyenv's), for
    the abi3 wheel: the kernel built on this interpreter must load on those too."""
    found = {}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for minor in range(10, 20):
        if minor == sys.version_info.minor:
            continue
        candidates = [shutil.which(f"python3.{minor}")] + sorted(pyenv.glob(f"3.{minor}.*/bin/python3"))
        for candidate in filter(None, candidates):
            probe = [candidate, "-c", "import sys, sysconfig; assert not sysconfig.get_config_var('Py_GIL_DISABLED')"]
            if subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:  # a pyenv shim may not run
                found[minor] = Path(candidate)
                break
    minors = sorted(found)
    return [found[m] for m in sorted({minors[0], minors[-1]})] if minors else []


def _run(step: str, command: list, timeout: float, note: str = "", **options) -> subprocess.CompletedProcess:
    """Run one step; on failure (or a timeout) the assertion shows the command and the end of its output."""
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [str(part) for part in command], capture_output=True, text=True, timeout=timeout, **options
        )
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"")[-4000:], (error.stderr or b"")[-4000:]
        pytest.fail(f"{step}: timed out after {timeout:.0f} s: {' '.join(map(str, command))}\n{output}")
    print(f"{step}: {time.perf_counter() - start:.1f} s")
    if result.returncode != 0:
        pytest.fail(
            f"{step} failed (exit {result.returncode}): {' '.join(map(str, command))}\n"
            f"--- stdout (end) ---\n{result.stdout[-6000:]}\n--- stderr (end) ---\n{result.stderr[-6000:]}\n{note}"
        )
    return result


def _clean_copy(destination: Path) -> str:
    """The files git tracks, as they are in the work tree: what a clean clone of the next commit holds.
    Untracked files are left out, as CI leaves them out; returns a note naming those of src/."""
    listed = _run("git ls-files", ["git", "-C", ROOT, "ls-files", "-z"], 60).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not in the next commit
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    command = ["git", "-C", ROOT, "ls-files", "--others", "--exclude-standard", "src", "setup.py", "pyproject.toml"]
    untracked = _run("git ls-files --others", command, 60).stdout.split()
    return f"(not in the packages, as git does not track them yet: {', '.join(untracked)})" if untracked else ""


def _environment(path: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED}
    env["PATH"] = path
    return env


def _fresh_venv(directory: Path, no_compiler: dict) -> Path:
    _run(f"venv {directory.name}", [sys.executable, "-m", "venv", directory], 180, env=no_compiler)
    return directory / "bin" / "python"


def _pip(python: Path, step: str, arguments: list, env: dict, cwd: Path) -> str:
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *arguments]
    result = _run(step, command, 600, env=env, cwd=cwd)
    return result.stdout + result.stderr  # pip logs the build's output to either, depending on the level


def test_release_configuration():
    """What cibuildwheel and the release workflow name exists (neither runs here: docs/packaging.md)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    for source in config["test-sources"]:
        assert (ROOT / source).exists(), source
    assert "dist_check.py --kernel loaded" in config["test-command"]
    assert config["environment"]["LOVASZ_BUILD_KERNEL"] == "required"
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    for step in ("pypa/cibuildwheel@", "pypa/gh-action-pypi-publish@", "id-token: write", "dist_check.py"):
        assert step in workflow, step
    for runner in ("ubuntu-latest", "ubuntu-24.04-arm", "macos-15-intel", "macos-latest", "windows-latest"):
        assert f"runs-on: {runner}" in workflow, runner


@pytest.mark.skipif(bool(_why_skip()), reason=_why_skip())
def test_dist_packages(tmp_path_factory):
    start = time.perf_counter()
    work = tmp_path_factory.mktemp("dist")
    try:
        _check_dist(work)
    finally:
        removing = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)  # two venvs with torch: about 2 GB
        print(f"removing the venvs: {time.perf_counter() - removing:.1f} s")
    print(f"test_dist: {time.perf_counter() - start:.0f} s")


def _check_dist(work: Path) -> None:
    assert shutil.which("git"), "git is needed to list the tracked files"
    tree = work / "tree"
    copying = time.perf_counter()
    untracked = _clean_copy(tree)
    print(f"clean copy: {time.perf_counter() - copying:.1f} s")

    # 1. `make dist` in the clean copy, with the compiler (its own .venv there, from this interpreter)
    build_env = _environment(os.environ["PATH"])
    _run("make dist", ["make", "-C", tree, "dist", f"PYTHON={sys.executable}"], 600, env=build_env)
    dist = tree / "dist"
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"dist/ should hold one wheel and one sdist: {os.listdir(dist)}"
    wheel, sdist = wheels[0], sdists[0]
    if sys.platform.startswith("linux"):
        # cp310-abi3: the kernel is a limited-API module (setup.py); auditwheel gave the manylinux tag
        tags = re.fullmatch(r"lovasz-[^-]+-cp310-abi3-([^-]+)\.whl", wheel.name)
        assert tags and all(tag.startswith("manylinux") for tag in tags[1].split(".")), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        kernels = [name for name in archive.namelist() if re.fullmatch(r"lovasz/_kernel\.[^/]*(so|pyd)", name)]
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        licenses = [name for name in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", name)]
    assert kernels, f"no compiled kernel in {wheel.name}"
    assert "License-Expression: MIT" in metadata.splitlines() and licenses, "the wheel should carry its license"
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/LICENSE") for name in archive.getnames()), "the sdist should carry LICENSE"
    print(f"wheel {wheel.name} ({wheel.stat().st_size} bytes, kernel {kernels[0]}); sdist {sdist.stat().st_size} bytes")

    # 2. A PATH with no compiler: an empty folder (every step's python is named by its full path)
    no_compiler_bin = work / "bin-no-compiler"
    no_compiler_bin.mkdir()
    path = str(no_compiler_bin)
    found = {name: shutil.which(name, path=path) for name in COMPILERS + (CONFIGURED_CC,)}
    assert not any(found.values()), f"a compiler is still on PATH: {found}"
    no_compiler = _environment(path)
    run_dir = work / "run"  # outside the tree, so that nothing of the source is importable
    run_dir.mkdir()
    check = shutil.copy(CHECK, run_dir / "dist_check.py")

    # 3. The wheel: the kernel loads, losses run through it. torch with --no-compile: byte-compiling its
    # files would double the install's time.
    python = _fresh_venv(work / "venv-wheel", no_compiler)
    _pip(python, "pip install torch (wheel venv)", ["--no-compile", TORCH, "numpy"], no_compiler, run_dir)
    _pip(python, "pip install the wheel", [wheel], no_compiler, run_dir)
    wheel_values = run_dir / "wheel.json"
    command = [python, check, "--kernel", "loaded", "--torch", "--out", wheel_values]
    print(_run("dist_check (wheel)", command, 300, untracked, env=no_compiler, cwd=run_dir).stdout)

    # 3b. The same wheel on other CPythons (abi3): the kernel loads and its rows equal the oracle's
    others = _other_cpythons()
    print(f"other CPythons: {', '.join(map(str, others)) or 'none found'}")
    for number, interpreter in enumerate(others):
        venv = work / f"venv-wheel-other-{number}"
        _run(f"venv {venv.name}", [interpreter, "-m", "venv", venv], 180, env=no_compiler)
        _pip(venv / "bin" / "python", f"pip install the wheel ({interpreter})", [wheel], no_compiler, run_dir)
        command = [venv / "bin" / "python", check, "--kernel", "loaded"]
        print(_run(f"dist_check ({interpreter})", command, 300, untracked, env=no_compiler, cwd=run_dir).stdout)

    # 4. The sdist, with no compiler: installs, no kernel, the fallback gives the same values.
    # --no-cache-dir: no wheel built earlier from an sdist (with a compiler) may stand in for this build.
    python = _fresh_venv(work / "venv-sdist", no_compiler)
    _pip(python, "pip install torch (sdist venv)", ["--no-compile", TORCH, "numpy"], no_compiler, run_dir)
    log = _pip(python, "pip install the sdist", ["-vv", "--no-cache-dir", sdist], no_compiler, run_dir)
    failed = re.search(r'building extension "lovasz._kernel" failed: .*', log)
    assert failed, f"the sdist's build did not try the kernel, or did not fail:\n{log[-4000:]}"
    print(f"pip install the sdist: {failed.group(0)}")
    sdist_values = run_dir / "sdist.json"
    command = [python, check, "--kernel", "absent", "--torch", "--out", sdist_values]
    print(_run("dist_check (sdist)", command, 300, untracked, env=no_compiler, cwd=run_dir).stdout)

    with_kernel, fallback = json.loads(wheel_values.read_text()), json.loads(sdist_values.read_text())
    assert with_kernel.keys() == fallback.keys() and with_kernel
    for name in with_kernel:
        a, b = with_kernel[name], fallback[name]
        assert abs(a["loss"] - b["loss"]) <= 1e-6, f"{name}: kernel {a['loss']}, fallback {b['loss']}"
        worst = max(abs(x - y) for x, y in zip(a["grad"], b["grad"], strict=True))
        assert worst <= 1e-6, f"{name}: the gradients differ by up to {worst}"
        print(f"{name}: kernel - fallback: loss {a['loss'] - b['loss']:.1e}, gradient up to {worst:.1e}")
