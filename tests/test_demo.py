"""`lovasz demo --quick` end to end: table printed, figure and JSON written."""

import json

from conftest import require

require("torch")
require("matplotlib")
demo = require("lovasz.demo")
from lovasz.demo.data import CLASS_NAMES, make_dataset  # noqa: E402


def test_quick_demo_writes_figure_json_and_table(tmp_path, capsys):
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dataset mIoU" in out and all(run in out for run in demo.RUNS)
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert set(summary["runs"]) == set(demo.RUNS)
    for run in summary["runs"].values():
        assert 0 <= run["dataset_miou"] <= 1 and len(run["per_class_iou"]) == len(CLASS_NAMES)
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dataset_is_seeded_and_has_every_class():
    a, la = make_dataset(6, 32, seed=3)
    b, lb = make_dataset(6, 32, seed=3)
    assert (a == b).all() and (la == lb).all()
    assert set(la.unique().tolist()) == set(range(len(CLASS_NAMES)))
