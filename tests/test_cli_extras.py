"""Without its extra's packages, `lovasz demo` and `lovasz bench` say which extra to install, in one line and
without a traceback, before doing any work; their `--help` needs only what their module imports (the demo's:
torch, not tqdm, matplotlib or pillow). A package is made missing by a `None` in `sys.modules`, in a fresh
process, which is what an import of an absent package meets: a ModuleNotFoundError naming it."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

require("torch")
from lovasz import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# argv[1]: the modules to hide, comma-separated; the rest: the command line of `lovasz`.
_WITHOUT = (
    "import sys; sys.modules.update(dict.fromkeys(filter(None, sys.argv[1].split(','))));"
    "from lovasz.cli import main; sys.exit(main(sys.argv[2:]))"
)
DEMO_ONLY = ("tqdm", "matplotlib", "PIL")  # the demo extra's packages besides torch (import names)


def lovasz_without(hidden: tuple[str, ...], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _WITHOUT, ",".join(hidden), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_demo_help_without_tqdm_matplotlib_or_pillow(tmp_path: Path) -> None:
    result = lovasz_without(DEMO_ONLY, "demo", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lovasz demo") and "--quick" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("hidden", "args", "message"),
    [
        (("tqdm",), ("demo", "--quick"), 'lovasz demo: needs tqdm, not installed: pip install "lovasz[demo]"'),
        (
            DEMO_ONLY,
            ("demo",),
            'lovasz demo: needs matplotlib, tqdm, pillow, not installed: pip install "lovasz[demo]"',
        ),
        (("torch",), ("demo", "--help"), 'lovasz demo: needs torch, not installed: pip install "lovasz[demo]"'),
        (("torch",), ("bench", "--quick"), 'lovasz bench: needs torch, not installed: pip install "lovasz[bench]"'),
    ],
    ids=["demo-no-tqdm", "demo-torch-only", "demo-help-no-torch", "bench-no-torch"],
)
def test_missing_extra_is_one_line_naming_it(tmp_path: Path, hidden, args, message) -> None:
    result = lovasz_without(hidden, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == message + "\n" and result.stdout == ""
    assert not any(tmp_path.iterdir()), "the command started before refusing"  # no demo-output, no bench-output


def test_bench_and_its_network_row_need_no_tqdm(tmp_path: Path) -> None:
    result = lovasz_without(("tqdm",), "bench", "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: lovasz bench"), result.stderr
    # The benchmark's `network` row builds the demo's U-Net: lovasz.demo.model, whose package imports no tqdm.
    network = (
        "import sys; sys.modules['tqdm'] = None\n"
        "import torch\n"
        "from lovasz.demo.model import UNet\n"
        "print(tuple(UNet(in_channels=3, num_classes=4)(torch.zeros(1, 3, 16, 16)).shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", network], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 4, 16, 16)"


def test_refusal_comes_before_the_command_runs(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    require("tqdm"), require("PIL")  # the demo extra but matplotlib
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.missing_packages("demo") == ["matplotlib"]
    assert cli.missing_packages("info") == []  # no extra
    assert cli.main(["demo", "--epochs", "1"]) == 2
    assert capsys.readouterr().err == 'lovasz demo: needs matplotlib, not installed: pip install "lovasz[demo]"\n'


def _extras() -> dict[str, list[str]]:
    """pyproject.toml's extras: {extra: [distribution names]}."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = {}
    for name, requirements in re.findall(r"^([\w-]+)\s*=\s*\[(.*?)\]", section, re.MULTILINE):
        extras[name] = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in re.findall(r'"([^"]+)"', requirements)]
    return extras


def test_commands_name_their_extras_packages() -> None:
    extras = _extras()
    for command, (extra, packages) in cli.EXTRAS.items():
        assert set(packages) <= set(extras[extra]), (command, extra)
    assert list(cli.EXTRAS["demo"][1]) == extras["demo"]  # the demo needs every package of its extra


def test_tf_extra_does_not_force_the_cpu_build() -> None:
    """`tensorflow` and `tensorflow-cpu` are two projects to pip: one extra each."""
    extras = _extras()
    assert extras["tf"] == ["tensorflow"] and extras["tf-cpu"] == ["tensorflow-cpu"]


def _option_entries(help_text: str) -> list[str]:
    """The entries of the options in a --help, each on one line."""
    entries: list[str] = []
    current = None
    for line in help_text.splitlines():
        if re.match(r"  -", line):
            entries.append(line.strip())
            current = len(entries) - 1
        elif current is not None and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(cli.COMMANDS))], ids=lambda c: " ".join(c))
def test_every_option_shows_its_default(capsys, command: list[str]) -> None:
    require("tqdm"), require("matplotlib")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(" ".join(["usage: lovasz", *command]))
    entries = [e for e in _option_entries(help_text) if not e.startswith(("-h, --help", "--version"))]
    assert entries or command in ([], ["info"])  # the demo and the benchmark have options
    assert [e for e in entries if "(default:" not in e] == []


def test_version(capsys) -> None:
    from lovasz import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"lovasz {__version__}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quiet", "info"], "lovasz: error: unrecognized arguments: --quiet"),  # no such option, anywhere
        ([], "lovasz: error: the following arguments are required: command"),
        (["nonsense"], "lovasz: error: argument command: invalid choice: 'nonsense'"),
    ],
)
def test_top_level_errors_say_what_is_wrong(capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_command_options_are_the_commands(capsys) -> None:
    """Options after the command are the command's own: `lovasz info --quiet` is info's parser's error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "--quiet"])
    assert exit_info.value.code == 2
    assert "lovasz info: error: unrecognized arguments: --quiet" in capsys.readouterr().err


def test_bad_demo_option_from_the_command_line(tmp_path: Path) -> None:
    """The whole way, as a user runs it: one error line naming the option, exit status 2, no traceback."""
    require("tqdm"), require("matplotlib"), require("PIL")
    result = lovasz_without((), "demo", "--batch-size", "0", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "lovasz demo: error: argument --batch-size: must be at least 1; got 0"
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_ctrl_c_is_one_line_and_the_shells_status(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt printed three chained tracebacks through TensorFlow's internals."""
    import lovasz.info

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(lovasz.info, "main", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err == "\nlovasz info: interrupted\n"


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_work(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="cannot make the folder /dev/null/out: Not a directory"):
        cli.output_folder("/dev/null/out")
    made = cli.output_folder(str(tmp_path / "a" / "b"))
    assert made.is_dir() and not any(made.iterdir())  # made now, and the write test left nothing
