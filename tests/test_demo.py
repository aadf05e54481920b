"""`lovasz demo --quick` end to end: table printed, figure and JSON written."""

import json
import re

import numpy as np
import pytest

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


def write_folder(root, count=8, size=18, binary=False, fmt="png"):
    """A tiny folder in the documented layout: images/ and masks/, paired by name."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = rng.integers(0, 2 if binary else 3, (size, size)).astype(np.uint8)
        image = (mask[..., None] * 60 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
        if binary:
            mask = mask * 255  # 0/255 masks, as image editors save them
        else:
            mask[0, :4] = 255  # ignored pixels
        if fmt == "png":
            Image.fromarray(image).save(root / "images" / f"tile{i}.png")
            Image.fromarray(mask).save(root / "masks" / f"tile{i}.png")
        else:
            np.save(root / "images" / f"tile{i}.npy", image.astype(np.float32) / 255)
            np.save(root / "masks" / f"tile{i}.npy", mask.astype(np.int64))
    return root


@pytest.mark.parametrize("mode,fmt", [("multiclass", "png"), ("binary", "png"), ("multiclass", "npy")])
def test_data_folder_trains_and_reports(tmp_path, capsys, mode, fmt):
    data = write_folder(tmp_path / "data", binary=mode == "binary", fmt=fmt)
    out = tmp_path / "out"
    assert demo.main(["--data", str(data), "--mode", mode, "--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 training and 2 held-out images of 16x16" in printed  # cropped to a multiple of 4
    summary = json.loads((out / "demo.json").read_text())
    expected = ["background", "foreground"] if mode == "binary" else ["class 0", "class 1", "class 2"]
    assert summary["class_names"] == expected
    assert all(len(r["per_class_iou"]) == len(expected) for r in summary["runs"].values())
    assert (out / "demo.png").exists()


def test_synthetic_binary_mode(tmp_path, capsys):
    assert demo.main(["--quick", "--mode", "binary", "--out", str(tmp_path)]) == 0
    assert "IoU building" in capsys.readouterr().out


@pytest.mark.parametrize("breakage,message", [
    (lambda d: (d / "masks" / "tile3.png").unlink(), r"tile3.png: no file named tile3.png or tile3.npy in .*masks"),
    (lambda d: (d / "images" / "notes.txt").write_text("x"), r"notes.txt: unsupported file type"),
    (lambda d: (d / "masks" / "tile1.png").write_bytes(b"not a png"), r"tile1.png: cannot be read"),
    (lambda d: np.save(d / "masks" / "tile2.npy", np.zeros((5, 5), np.int64)) or (d / "masks" / "tile2.png").unlink(),
     r"tile2.npy: mask is \[5, 5\] but its image is \[18, 18\]"),
    (lambda d: np.save(d / "masks" / "tile0.npy", np.full((18, 18), 0.5)) or (d / "masks" / "tile0.png").unlink(),
     r"tile0.npy: a mask must be \[H, W\] integer class indices"),
    (lambda d: __import__("shutil").rmtree(d / "masks"), r"masks: missing"),
])
def test_data_folder_that_does_not_fit_names_the_file(tmp_path, capsys, breakage, message):
    data = write_folder(tmp_path / "data")
    breakage(data)
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--data", str(data), "--epochs", "1", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_binary_mask_with_other_values_is_refused(tmp_path, capsys):
    data = write_folder(tmp_path / "data")  # multi-class masks: 0, 1, 2 and 255
    with pytest.raises(SystemExit):
        demo.main(["--data", str(data), "--mode", "binary", "--epochs", "1", "--out", str(tmp_path / "out")])
    assert "a binary mask must hold 0/1 or 0/255" in capsys.readouterr().err
