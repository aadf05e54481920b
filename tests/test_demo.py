"""`lovasz demo --quick` end to end: table printed, figure and JSON written; `--seeds N` summarised."""

import json
import re

import numpy as np
import pytest

from conftest import cuda_devices, require

torch = require("torch")
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
    assert "±" not in out and "Paired difference" not in out  # one seed: today's table, no std
    settings = summary["settings"]  # --quick's presets, none given
    assert {key: settings[key] for key in demo.QUICK} == demo.QUICK == {"epochs": 2, "size": 32, "train_images": 16}
    assert summary["seeds"] == [0] and summary["per_seed"][0]["runs"] == summary["runs"]
    assert summary["summary"]["runs"]["cross-entropy"]["dataset_miou"] == {
        "mean": summary["runs"]["cross-entropy"]["dataset_miou"],
        "std": None,
    }


def test_several_seeds_summary_matches_the_per_seed_scores(tmp_path, capsys):
    assert demo.main(["--quick", "--seeds", "2", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "seeds 3 to 4" in out and "Paired difference to cross-entropy over the same 2 seeds" in out
    assert "seed 3: dataset mIoU" in out and "seed 4: dataset mIoU" in out
    written = json.loads((tmp_path / "demo.json").read_text())
    assert written["seeds"] == [3, 4] and [s["seed"] for s in written["per_seed"]] == [3, 4]
    assert written["runs"] == written["per_seed"][0]["runs"]  # the first seed, as in the figure
    assert written["per_seed"][0]["class_frequencies"] != written["per_seed"][1]["class_frequencies"]  # new data
    summary = written["summary"]
    assert summary["seeds"] == 2 and set(summary["runs"]) == set(demo.RUNS)
    assert set(summary["paired_differences"]) == set(demo.RUNS[1:])

    def values(run, key):
        return np.array([s["runs"][run][key] for s in written["per_seed"]], dtype=float)

    for run in demo.RUNS:
        for key in demo.METRICS + ("seconds_per_epoch",):
            stats = summary["runs"][run][key]
            np.testing.assert_allclose(stats["mean"], values(run, key).mean(0))
            np.testing.assert_allclose(stats["std"], values(run, key).std(0, ddof=1))
    for run in demo.RUNS[1:]:
        for key in demo.METRICS:
            difference = values(run, key) - values("cross-entropy", key)
            stats = summary["paired_differences"][run][key]
            np.testing.assert_allclose(stats["mean"], difference.mean(0))
            np.testing.assert_allclose(stats["std"], difference.std(0, ddof=1))
            assert np.array_equal(stats["positive"], (difference > 0).sum(0))
    assert len(summary["runs"]["cross-entropy"]["per_class_iou"]["std"]) == len(CLASS_NAMES)


def test_summary_of_known_scores():
    def seed(ce, lovasz):
        run = lambda miou, building: {
            "pixel_accuracy": 0.9,
            "dataset_miou": miou,
            "per_image_miou": miou,
            "per_class_iou": [0.9, 0.8, building, 0.7],
            "seconds_per_epoch": 1.0,
        }
        return {"cross-entropy": run(*ce), "CE then Lovász": run(*ce), "CE + Lovász": run(*lovasz)}

    summary = demo.summarise(
        [seed((0.5, 0.2), (0.55, 0.3)), seed((0.6, 0.3), (0.58, 0.3)), seed((0.7, 0.4), (0.75, 0.5))]
    )
    ce = summary["runs"]["cross-entropy"]["dataset_miou"]
    assert ce["mean"] == pytest.approx(0.6) and ce["std"] == pytest.approx(0.1)
    gain = summary["paired_differences"]["CE + Lovász"]
    assert gain["dataset_miou"]["mean"] == pytest.approx(0.08 / 3) and gain["dataset_miou"]["positive"] == 2
    assert gain["dataset_miou"]["std"] == pytest.approx(np.std([0.05, -0.02, 0.05], ddof=1))
    assert gain["per_class_iou"]["positive"] == [0, 0, 2, 0]
    assert summary["paired_differences"]["CE then Lovász"]["dataset_miou"]["positive"] == 0
    text = demo.tables(summary, CLASS_NAMES)
    assert "0.600 ± 0.100" in text and "+0.027 ± 0.040 (2/3)" in text
    one = demo.summarise([seed((0.5, 0.2), (0.55, 0.3))])
    assert one["runs"]["CE + Lovász"]["dataset_miou"] == {"mean": 0.55, "std": None}
    assert "±" not in demo.tables(one, CLASS_NAMES)


@pytest.mark.parametrize("seeds", ["0", "-2"])
def test_seeds_below_one_is_refused(tmp_path, capsys, seeds):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--quick", "--seeds", seeds, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"argument --seeds: must be at least 1; got {seeds}" in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    """It failed with FileExistsError after the whole training."""
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--quick", "--out", str(taken)])
    assert exit_info.value.code == 2
    assert f"lovasz demo: error: argument --out: must be a folder; {taken} is a file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "bogus"], "argument --device: 'bogus' is not a device; available: cpu"),
        (["--device", "meta"], "argument --device: meta: must be cpu or cuda; available: cpu"),
        (["--device", "cuda"], "argument --device: cuda: CUDA is not available on this machine; available: cpu"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1; got 0"),
        (["--batch-size", "-1"], "argument --batch-size: must be at least 1; got -1"),
        (["--seed", "-1"], "argument --seed: must be from 0 to 4294967295; got -1"),
        (["--seed", str(2**64)], f"argument --seed: must be from 0 to 4294967295; got {2**64}"),
        (["--train-images", "0"], "argument --train-images: must be at least 1; got 0"),
        (["--epochs", "0"], "argument --epochs: must be at least 1; got 0"),
        (["--epochs", "two"], "argument --epochs: must be an integer; got 'two'"),
        (["--size", "30"], "argument --size: must be a multiple of 4 and at least 8; got 30"),
        (["--size", "4"], "argument --size: must be a multiple of 4 and at least 8; got 4"),
        (["--lr", "-0.1"], "argument --lr: must be a finite number above 0; got -0.1"),
        (["--lr", "nan"], "argument --lr: must be a finite number above 0; got nan"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_bad_option_is_a_parse_error_naming_it(tmp_path, capsys, monkeypatch, args, message):
    """Refused by argparse, before any work: exit status 2 and `lovasz demo: error: argument --NAME: ...`,
    whether or not --quick is given (its presets apply only to options not given). On a machine without
    CUDA as torch sees it, so that the devices listed are the same everywhere."""
    cuda_devices(monkeypatch, 0)
    for quick in ([], ["--quick"]):
        with pytest.raises(SystemExit) as exit_info:
            demo.main([*quick, *args, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: lovasz demo") and err.endswith(f"lovasz demo: error: {message}\n"), err
    assert not (tmp_path / "out").exists()


def test_a_cuda_index_the_machine_lacks_is_a_parse_error(tmp_path, capsys, monkeypatch):
    cuda_devices(monkeypatch, 1)
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--device", "cuda:1", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    expected = "argument --device: cuda:1: this machine has 1 CUDA device(s); available: cpu, cuda, cuda:0"
    assert capsys.readouterr().err.endswith(f"lovasz demo: error: {expected}\n")


def test_explicit_options_win_over_quick(tmp_path, capsys):
    assert demo.main(["--quick", "--epochs", "1", "--size", "16", "--out", str(tmp_path)]) == 0
    assert "16 training and 8 held-out synthetic images of 16x16, 1 epochs" in capsys.readouterr().out
    settings = json.loads((tmp_path / "demo.json").read_text())["settings"]
    assert (settings["epochs"], settings["size"], settings["train_images"]) == (1, 16, demo.QUICK["train_images"])
    assert settings["device"] == "cpu" and settings["quick"] is True


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


def replace_with_npy(png, as_array, at, value):
    """``png`` replaced by a .npy of its values (cast by ``as_array``) with ``value`` at ``at``."""
    from PIL import Image

    array = as_array(np.asarray(Image.open(png)))
    array[at] = value
    np.save(png.with_suffix(".npy"), array)
    png.unlink()


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda d: (d / "masks" / "tile3.png").unlink(), r"tile3.png: no file named tile3.png or tile3.npy in .*masks"),
        (lambda d: (d / "images" / "notes.txt").write_text("x"), r"notes.txt: unsupported file type"),
        (lambda d: (d / "masks" / "tile1.png").write_bytes(b"not a png"), r"tile1.png: cannot be read"),
        (
            lambda d: (
                np.save(d / "masks" / "tile2.npy", np.zeros((5, 5), np.int64)) or (d / "masks" / "tile2.png").unlink()
            ),
            r"tile2.npy: mask is \[5, 5\] but its image is \[18, 18\]",
        ),
        (
            lambda d: (
                np.save(d / "masks" / "tile0.npy", np.full((18, 18), 0.5)) or (d / "masks" / "tile0.png").unlink()
            ),
            r"tile0.npy: a mask must be \[H, W\] integer class indices",
        ),
        (lambda d: __import__("shutil").rmtree(d / "masks"), r"masks: missing"),
        (  # a NaN pixel trained every weight to NaN, and the scores of class 0 everywhere, without a word
            lambda d: replace_with_npy(d / "images" / "tile1.png", lambda a: a.astype(np.float32), (2, 3), np.nan),
            r"tile1.npy: image values must be finite; found nan",
        ),
        (  # int64 wrapped it to -1; a class past MAX_CLASSES would make the U-Net that many channels
            lambda d: replace_with_npy(d / "masks" / "tile2.png", lambda a: a.astype(np.uint64), (0, 0), 2**64 - 1),
            r"tile2.npy: class indices must be in \[0, 1023\] \(or 255, ignored\); found 18446744073709551615",
        ),
        (
            lambda d: replace_with_npy(d / "masks" / "tile2.png", lambda a: a.astype(np.int64), (0, 0), 1024),
            r"tile2.npy: class indices must be in \[0, 1023\] \(or 255, ignored\); found 1024",
        ),
    ],
)
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


def test_masks_with_no_labelled_pixel_are_refused(tmp_path, capsys):
    """Every pixel ignored: max() of no value was a RuntimeError from inside torch."""
    data = write_folder(tmp_path / "data", fmt="npy")
    for mask in (data / "masks").iterdir():
        np.save(mask, np.full_like(np.load(mask), 255))
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--data", str(data), "--epochs", "1", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--data: every mask pixel is 255 (ignored): no labelled pixel to train on" in capsys.readouterr().err


def test_a_class_of_no_pixel_is_named_and_the_json_stays_strict(tmp_path, capsys):
    """A stray value (9 in one mask) makes classes no pixel has: said so; their IoU is null in demo.json, whose
    NaN no strict JSON parser read."""
    data = write_folder(tmp_path / "data", fmt="npy")
    mask = data / "masks" / "tile0.npy"
    stray = np.load(mask)
    stray[1, 1] = 9
    np.save(mask, stray)
    out = tmp_path / "out"
    assert demo.main(["--data", str(data), "--epochs", "1", "--out", str(out)]) == 0
    assert "6 of the 10 classes (0 to the largest mask value) have no pixel" in capsys.readouterr().out

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    summary = json.loads((out / "demo.json").read_text(), parse_constant=refuse)
    assert None in summary["runs"]["cross-entropy"]["per_class_iou"]


def test_the_held_out_set_of_a_seed_is_no_other_seeds_training_set():
    """The held-out scenes of seed s were drawn with seed s + 1: the first training scenes of the next seed."""
    _, train = make_dataset(16, 32, seed=1)
    _, held_out = make_dataset(8, 32, seed=(0, 1))
    assert not any(torch.equal(a, b) for a in held_out for b in train)
