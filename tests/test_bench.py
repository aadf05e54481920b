"""`lovasz bench` end to end on small shapes: table, ratios, JSON, peers reported, never dropped."""

import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import cuda_devices, require

require("torch")
bench = require("lovasz.bench")


def test_markdown_has_a_line_for_each_shape_of_a_case_name():
    """The per-image case comes at two sizes: two lines, each with its own figures."""
    rows = [
        bench.Row("per-image", (8, 19, 256, 256), "lovasz", 0.1, ratios={"original": 9.0}),
        bench.Row("per-image", (8, 19, 256, 256), "original", 0.9),
        bench.Row("per-image", (4, 21, 128, 128), "lovasz", 0.02, ratios={"original": 7.0}),
        bench.Row("per-image", (4, 21, 128, 128), "original", 0.14),
    ]
    lines = bench.markdown(rows, {"cpu": "cpu", "device": "cpu", "torch": "2"}, "abc").splitlines()[4:]
    assert lines == [
        "| per-image | 8×19×256×256 | 100.0 | 900.0 | 9.00x | n/a | - / - |",
        "| per-image | 4×21×128×128 | 20.0 | 140.0 | 7.00x | n/a | - / - |",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "bogus"], "argument --device: 'bogus' is not a device; available: cpu"),
        (["--device", "meta"], "argument --device: meta: must be cpu or cuda; available: cpu"),
        (["--device", "cuda:1"], "argument --device: cuda:1: this machine has 1 CUDA device(s); available: cpu, cuda"),
        (["--repeats", "0"], "argument --repeats: must be at least 1; got 0"),
        (["--repeats", "two"], "argument --repeats: must be an integer; got 'two'"),
        (["--impl", "nope"], "--impl must be one of lovasz, "),
        (["--case", "nope"], "--case must match one of the cases on cpu: "),
        (["--device", "cpu:1"], "argument --device: cpu:1: must be cpu or cuda; available: cpu"),
        (["--out", __file__], f"argument --out: must be a folder; {__file__} is a file"),
        (["--markdown", "/no-such-folder/x.md"], "argument --markdown: the folder /no-such-folder does not exist"),
        (["--markdown", "/"], "argument --markdown: must be a file name; / is a folder"),
        # a folder that cannot be made or written: now, not a traceback after the cases are timed
        (["--out", "/dev/null/sub"], "argument --out: cannot make the folder /dev/null/sub: Not a directory"),
        (["--markdown", "/proc/x.md"], "argument --markdown: cannot write in /proc: "),
        # the worker options the parent process passes: a bad one is an error too, not a traceback
        (["--memory-probe", "x", "lovasz"], "--memory-probe CASE must be a case index below "),
        (["--memory-probe", "0", "nope"], "--memory-probe IMPL must be one of lovasz, "),
        (["--keras-worker", "jax", "0,x"], "--keras-worker CASES must be case indices, comma-separated, below "),
        (["--keras-worker", "tf", "0"], "--keras-worker BACKEND must be one of jax, torch; got 'tf'"),
    ],
)
def test_bad_options_are_argparse_errors(argv, message, capsys, monkeypatch):
    """Each names its option and what it takes, exit status 2 before anything is timed."""
    cuda_devices(monkeypatch, 1 if "cuda:1" in argv else 0)  # (a machine of one GPU for cuda:1)
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_quick_bench_writes_table_and_json(tmp_path, capsys):
    table = tmp_path / "table.md"
    argv = ["--quick", "--repeats", "1", "--no-memory", "--out", str(tmp_path), "--markdown", str(table)]
    assert bench.main([*argv, "--commit", "abc1234"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "torch", "torch_threads"} <= set(result["machine"])
    impls = {(r["case"], r["impl"]) for r in result["rows"]}
    # every peer has a row; the dense twin only in the point-cloud cases
    points = sum(case.kind.startswith("points") for case in bench.QUICK_CASES)
    assert len(impls) == len(bench.QUICK_CASES) * (len(bench.CPU_DEFAULT) - 1) + points
    dense = [r for r in result["rows"] if r["impl"] == "lovasz" and "lovasz dense" in r["ratios"]]
    assert len(dense) == points > 0
    ours = [r for r in result["rows"] if r["impl"] == "lovasz"]
    assert all(r["seconds"] > 0 and "sort floor" in r["ratios"] for r in ours)
    assert "the sort floor" in out and "computes another quantity" in out
    assert result["commit"] == "abc1234" and result["complete"]
    lines = table.read_text().splitlines()
    assert "commit abc1234" in lines[0] and "Partial" not in lines[0]
    assert lines[2].startswith("| case | shape | lovasz ms | original ms |")
    assert len(lines) == 4 + len(bench.QUICK_CASES)
    assert all(line.count("|") == lines[2].count("|") for line in lines[2:])


def test_results_are_written_after_each_case(tmp_path, monkeypatch):
    """A run stopped part way (the device machine's time box) keeps the cases it finished."""
    timed = []

    def time_step(step, repeats, device=None):
        if len(timed) == 2:  # lovasz and original of the first case
            raise KeyboardInterrupt
        timed.append(step())
        return 1e-3

    monkeypatch.setattr(bench, "time_step", time_step)
    argv = ["--quick", "--no-memory", "--out", str(tmp_path), "--markdown", str(tmp_path / "table.md")]
    with pytest.raises(KeyboardInterrupt):
        bench.main([*argv, "--impl", "lovasz", "--impl", "original"])
    result = json.loads((tmp_path / "results.json").read_text())
    rows = result["rows"]
    assert [(r["case"], r["impl"]) for r in rows] == [(bench.QUICK_CASES[0].name, i) for i in ("lovasz", "original")]
    assert rows[0]["ratios"] == {"original": 1.0}
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert len(lines) == 5
    # marked as partial, where the run stopped (a complete-looking table of one case of six)
    assert not result["complete"] and f"stopped with {len(bench.QUICK_CASES) - 1} case(s) left" in lines[0]


def test_an_implementation_named_twice_is_timed_once(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "time_step", lambda step, repeats, device=None: step() and 1e-3 or 1e-3)
    argv = ["--quick", "--no-memory", "--out", str(tmp_path), "--case", bench.QUICK_CASES[0].name]
    assert bench.main([*argv, "--impl", "lovasz", "--impl", "lovasz"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["lovasz"]


def test_times_shown_below_10_ms_keep_3_significant_figures():
    """0.6 ms beside a sort floor of 0.0 ms read as 17x: the ratios must be checkable from the times."""
    assert [bench._ms(s) for s in (0.000034, 0.00061234, 0.0061234, 0.061234)] == ["0.034", "0.612", "6.12", "61.2"]


@pytest.mark.parametrize("impl", ["lovasz.jax", "lovasz.tf", "lovasz.tf eager"])
@pytest.mark.parametrize("kind", ["points", "points-flat"])
def test_point_rows_of_jax_and_tf_compute_lovasz_torchs_loss(impl, kind):
    """The points of scenes (segment_ids=, row_splits=) and Pointcept's one set: the loss and gradient
    norm of lovasz.torch's row on the same points."""
    require("jax" if "jax" in impl else "tensorflow")
    case = next(c for c in bench.QUICK_CASES if c.kind == kind)
    expected = bench.torch_reference(case, CPU)
    loss, grad = bench.step_function(case, impl)()
    assert float(loss) == pytest.approx(expected[0], rel=1e-5)
    assert float(np.linalg.norm(np.asarray(grad))) == pytest.approx(expected[1], rel=1e-4)


@pytest.mark.parametrize("case", bench.QUICK_CASES, ids=lambda case: case.name)
def test_the_original_tf_rows_compute_lovasz_torchs_loss(case):
    """The original TF file as the row calls it (a volume folded into 2-D, scenes in a loop, the valid points
    masked): the loss and gradient norm of lovasz.torch's row on every quick case."""
    require("tensorflow")
    expected = bench.torch_reference(case, CPU)
    loss, grad = bench.step_function(case, "original tf")()
    assert float(loss) == pytest.approx(expected[0], rel=1e-5)
    assert float(np.linalg.norm(np.asarray(grad))) == pytest.approx(expected[1], rel=1e-4)


def test_peak_memory_probe_measures_a_step():
    peak = bench.peak_memory_here(bench.QUICK_CASES[0], "lovasz")
    assert peak is None or peak >= 0


# ----------------------------------------------------------------------------- the Keras rows

KERAS = tuple(bench.KERAS_BACKENDS)
CPU = bench.torch.device("cpu")


def oracle(case) -> float:
    """The NumPy oracle's loss of a quick case, as the row ``lovasz`` calls lovasz.torch."""
    import lovasz.reference as R

    logits, labels = (t.numpy() for t in bench.make_inputs(case))
    if case.kind == "hinge":
        return float(R.lovasz_hinge(logits[:, 0], labels, per_image=case.per_image))
    # point clouds [S, C, N]: each scene an image (per_image), or all points one set
    return float(
        R.lovasz_softmax(logits, labels, case.classes, case.per_image, case.ignore, from_logits=not case.probas)
    )


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    """One quick bench of lovasz, the original and both Keras rows, on the CPU through --impl; with the
    answers of the two Keras processes as the bench got them."""
    require("keras")
    require("jax")
    answers, real = {}, bench.keras_results

    def recorded(impl, *args):
        answers[impl] = real(impl, *args)
        return answers[impl]

    out = tmp_path_factory.mktemp("keras")
    impls = ["lovasz", "original", *KERAS]
    argv = ["--quick", "--repeats", "1", "--no-memory", "--out", str(out), "--markdown", str(out / "table.md")]
    bench.keras_results = recorded
    try:
        assert bench.main([*argv, *(a for impl in impls for a in ("--impl", impl))]) == 0
    finally:
        bench.keras_results = real
    return json.loads((out / "results.json").read_text())["rows"], answers, (out / "table.md").read_text()


def test_keras_rows_are_timed_in_quick_mode(keras_run):
    rows, answers, table = keras_run
    assert set(answers) == set(KERAS)
    by = {(r["case"], r["impl"]): r for r in rows}
    for case in bench.QUICK_CASES:
        ours = by[case.name, "lovasz"]
        for impl in KERAS:
            row = by[case.name, impl]
            assert row["seconds"] > 0 and row["note"] == "", row
            assert row["ratios"]["original"] == pytest.approx(by[case.name, "original"]["seconds"] / row["seconds"])
            assert ours["ratios"][impl] == pytest.approx(row["seconds"] / ours["seconds"])
    assert "| lovasz.keras jax ms | lovasz.keras torch ms |" in table.splitlines()[2]


def test_keras_losses_and_gradients_match_lovasz_torch(keras_run):
    _, answers, _ = keras_run
    for index, case in enumerate(bench.QUICK_CASES):
        value, norm = bench.torch_reference(case, CPU)
        assert value == pytest.approx(oracle(case), rel=1e-5)
        for impl in KERAS:
            result = answers[impl]["cases"][str(index)]
            assert result["value"] == pytest.approx(oracle(case), rel=1e-5), (impl, case.name)
            assert result["grad_norm"] == pytest.approx(norm, rel=1e-4), (impl, case.name)


def answer_for(case, shift: float) -> dict:
    """A Keras process's answer for the first quick case: lovasz.torch's loss, moved by ``shift``."""
    value, norm = bench.torch_reference(case, CPU)
    return {"cases": {"0": {"seconds": 0.002, "value": value + shift, "grad_norm": norm}}}


@pytest.mark.parametrize("shift", [0.0, 0.01])
def test_a_keras_row_that_differs_from_lovasz_is_not_timed(monkeypatch, shift):
    case = bench.QUICK_CASES[0]
    monkeypatch.setattr(bench, "keras_results", lambda *args: answer_for(case, shift))
    rows = bench.run(1, True, False, progress=lambda _: None, impls=["lovasz", KERAS[1]], case_names=[case.name])
    ours, keras = rows
    if shift:
        assert keras.seconds is None and keras.note.startswith("failed: loss ")
        assert "against lovasz's" in keras.note and "(in 2.0 ms)" in keras.note
        assert KERAS[1] not in ours.ratios
    else:
        assert keras.seconds == 0.002 and keras.note == ""
        assert ours.ratios[KERAS[1]] == pytest.approx(0.002 / ours.seconds)


def shadow_keras(tmp_path, monkeypatch, body: str) -> None:
    """A package ``keras`` whose import runs ``body``, first on the path of the processes the bench starts."""
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "__init__.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


def test_keras_rows_are_na_without_keras(tmp_path, monkeypatch, capsys):
    shadow_keras(tmp_path, monkeypatch, "raise ModuleNotFoundError(\"No module named 'keras'\", name='keras')\n")
    table = tmp_path / "table.md"
    argv = ["--quick", "--repeats", "1", "--no-memory", "--out", str(tmp_path), "--markdown", str(table)]
    impls = ["--impl", "lovasz", "--impl", KERAS[0], "--impl", KERAS[1]]
    assert bench.main([*argv, *impls, "--case", "multiclass batch"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    keras = [r for r in rows if r["impl"] in KERAS]
    assert len(keras) == 2 and all(r["seconds"] is None for r in keras)
    assert all(r["note"] == "missing: No module named 'keras'" for r in keras)
    assert "missing: No module named 'keras'" in capsys.readouterr().out
    cells = table.read_text().splitlines()[4].split(" | ")
    assert cells[3:5] == ["n/a", "n/a"]  # lovasz.keras jax ms, lovasz.keras torch ms


@pytest.mark.parametrize(
    "body, why",
    [
        ("raise RuntimeError('broken install')\n", "exited with 1: RuntimeError: broken install"),
        # the answer is printed, then something else: the row says what came last
        ("import atexit\natexit.register(print, 'bye')\n", "ended its output with 'bye'"),
    ],
)
def test_a_keras_process_that_fails_is_reported(tmp_path, monkeypatch, body, why):
    shadow_keras(tmp_path, monkeypatch, body)
    assert bench.keras_results(KERAS[1], [0], True, 1, False, CPU) == {
        "failed": f"failed: the {KERAS[1]} process {why}"
    }


def test_keras_rows_run_on_the_cpu_only_when_asked():
    assert not set(KERAS) & set(bench.default_implementations(CPU))
    assert set(KERAS) <= set(bench.implementations(CPU))
    assert set(KERAS) <= set(bench.default_implementations(bench.torch.device("cuda")))


def test_keras_step_needs_its_backend_from_the_start(monkeypatch):
    keras = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "tensorflow"))
    monkeypatch.setitem(sys.modules, "keras", keras)
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax before Keras is imported"):
        bench.step_function(bench.QUICK_CASES[0], KERAS[0])


def test_keras_torch_peak_memory_is_probed_in_a_keras_process():
    require("keras")
    peak = bench.peak_memory(0, KERAS[1], quick=True)
    if Path("/proc/self/clear_refs").exists():
        assert isinstance(peak, int) and peak >= 0
    else:
        assert peak is None


def test_the_chunk_sweep_gives_the_default_loss_at_every_chunk_and_restores_it(tmp_path, monkeypatch):
    """tools/scene_chunks.py (run by `make gpu-report`): a row per chunk, the same loss (it exits otherwise),
    the default chunk back afterwards. On the CPU the float64 torch.sort path is the one chunked; here it only
    has to run."""
    core = require("lovasz._torch_core")
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "tools"))
    import scene_chunks

    default = core._chunk_elements
    out = tmp_path / "chunks.json"
    argv = ["--device", "cpu", "--case", "points per-scene", "--repeats", "1", "--chunks", "100", "5000"]
    assert scene_chunks.main([*argv, "--out", str(out)]) == 0
    assert [row["chunk"] for row in json.loads(out.read_text())] == ["default", 100, 5000]
    assert core._chunk_elements is default
    with pytest.raises(SystemExit):
        scene_chunks.main(["--device", "cpu", "--case", "no such case"])


def test_the_step_profile_gives_a_row_per_case_and_implementation(tmp_path, monkeypatch):
    """tools/step_profile.py (run by `make gpu-report`): on the CPU, rows with the step's time, its host ops
    and the busiest of them; no kernel time (none is recorded there); an implementation that does not apply
    to a case (the dense layout of a grid) is left out; an unknown case is an argparse error."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "tools"))
    import step_profile

    out = tmp_path / "profile.json"
    argv = ["--device", "cpu", "--case", "points per-scene", "--case", "voxels 5%", "--steps", "1", "--top", "3"]
    assert step_profile.main([*argv, "--impl", "lovasz", "--impl", "lovasz dense", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(row["case"], row["impl"]) for row in rows] == [
        ("points per-scene", "lovasz"),
        ("points per-scene", "lovasz dense"),
        ("voxels 5%", "lovasz"),
    ]
    for row in rows:
        assert row["ms"] > 0 and row["host ms"] > 0 and row["ops"] > 0 and row["kernels ms"] is None
        assert len(row["top host ops"]) == 3 and all(op["self us"] >= 0 for op in row["top host ops"])
    with pytest.raises(SystemExit):
        step_profile.main(["--device", "cpu", "--case", "no such case"])


def test_the_host_work_proxy_runs_both_layouts():
    """tools/host_work.py (its own process: it stubs Triton's kernels and forces the GPU path) prints both
    layouts' host time and their ratio."""
    pytest.importorskip("triton")
    import subprocess

    tool = Path(__file__).parent.parent / "tools" / "host_work.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(tool), "--rounds", "1", "--calls", "2"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"points with offsets \d+ us, dense layout \d+ us, ratio \d+\.\d\d", out.stdout), out.stdout
