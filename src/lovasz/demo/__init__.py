"""`lovasz demo`: cross-entropy against Lovász-Softmax on IoU, on a seeded synthetic dataset.

Three runs from the same seed and initialisation: cross-entropy; cross-entropy
then Lovász-Softmax fine-tuning (the paper authors' recommendation);
cross-entropy plus Lovász-Softmax. Held-out images are scored with
``lovasz.metrics``; a table is printed, and a PNG figure and a JSON file are
written to ``--out``. ``--data DIR`` trains on a folder of the user's images and
masks instead (layout in :mod:`lovasz.demo.folder`); ``--mode binary`` uses
binary cross-entropy and the Lovász hinge on one output channel.

``--seeds N`` repeats all of it for the seeds ``--seed`` .. ``--seed + N - 1``
(each one new data, or a new held-out split of ``--data``, and a new
initialisation) and reports the mean and standard deviation over seeds of each
run and metric, and each Lovász run's paired difference to cross-entropy.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lovasz.cli import integer, output_folder, positive_float, torch_device
from lovasz.demo.data import CLASS_NAMES, make_dataset
from lovasz.demo.folder import DataFolderError, load_folder
from lovasz.demo.model import UNet
from lovasz.metrics import IoUMeter
from lovasz.torch import CrossEntropyLovaszLoss, LovaszSchedule

RUNS = ("cross-entropy", "CE then Lovász", "CE + Lovász")
IGNORE_INDEX = 255
SYNTHETIC_BINARY_CLASS = CLASS_NAMES.index("building")  # --mode binary on the synthetic scenes
METRICS = ("pixel_accuracy", "dataset_miou", "per_image_miou", "per_class_iou")  # compared across seeds
DEFAULTS = {"epochs": 12, "size": 64, "train_images": 160}
QUICK = {"epochs": 2, "size": 32, "train_images": 16}  # --quick's, where not given


def make_loss(run: str, epochs: int, mode: str):
    """The loss of ``run`` and its schedule (None when constant): Lovász takes over for the last half."""
    if run == "cross-entropy":
        return CrossEntropyLovaszLoss(mode, ignore_index=IGNORE_INDEX, lovasz_weight=0.0), None
    loss = CrossEntropyLovaszLoss(mode, ignore_index=IGNORE_INDEX)
    return loss, (LovaszSchedule(warmup=epochs // 2) if run == "CE then Lovász" else None)


def predict(logits: torch.Tensor, binary: bool) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if binary else logits.argmax(1)


@torch.no_grad()
def evaluate(model, images, labels, batch_size: int, num_classes: int, binary: bool):
    model.eval()
    meter = IoUMeter(num_classes, ignore_index=IGNORE_INDEX)
    predictions = []
    for start in range(0, len(images), batch_size):
        pred = predict(model(images[start : start + batch_size]), binary)
        meter.update(pred, labels[start : start + batch_size])
        predictions.append(pred)
    model.train()
    return meter.compute(), torch.cat(predictions)


def train(run, initial_state, data, args, device, num_classes: int, seed: int):
    train_x, train_y, val_x, val_y = data
    binary = args.mode == "binary"
    model = UNet(in_channels=train_x.shape[1], num_classes=1 if binary else num_classes).to(device)
    model.load_state_dict(initial_state)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(seed)
    curve, seconds = [], []
    criterion, schedule = make_loss(run, args.epochs, args.mode)
    from tqdm import tqdm  # here, not at the top: `lovasz demo --help` and lovasz.demo.model need no tqdm

    for epoch in tqdm(range(args.epochs), desc=f"{run:>15}", unit="epoch", leave=False):
        if schedule is not None:
            schedule.apply(criterion, epoch)
        start = time.perf_counter()
        order = torch.randperm(len(train_x), generator=shuffle)
        for i in range(0, len(order), args.batch_size):
            index = order[i : i + args.batch_size]
            loss = criterion(model(train_x[index].to(device)), train_y[index].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        seconds.append(time.perf_counter() - start)
        scores, _ = evaluate(model, val_x.to(device), val_y.to(device), args.batch_size, num_classes, binary)
        curve.append(scores["dataset_miou"])
    scores, predictions = evaluate(model, val_x.to(device), val_y.to(device), args.batch_size, num_classes, binary)
    return {
        "scores": scores,
        "curve": curve,
        "seconds_per_epoch": float(np.median(seconds)),
        "predictions": predictions.cpu(),
    }


def scores(result) -> dict:
    """One run's held-out scores, curve and speed, as written to demo.json."""
    s = result["scores"]
    return {
        "pixel_accuracy": s["pixel_accuracy"],
        "dataset_miou": s["dataset_miou"],
        "per_image_miou": s["per_image_miou"],
        "per_class_iou": [float(v) for v in s["per_class"]],
        "seconds_per_epoch": result["seconds_per_epoch"],
        "curve": result["curve"],
    }


def summarise(per_seed) -> dict:
    """Mean and standard deviation (ddof=1; None for one seed) over seeds of every run and metric, and
    each Lovász run's paired difference to cross-entropy: its mean, std and on how many seeds it was positive.

    ``per_seed``: one ``{run: scores(...)}`` per seed. A per-class entry holds one value per class.
    """

    def over_seeds(run, key):
        return np.array([runs[run][key] for runs in per_seed], dtype=float)

    def stats(values):
        return {"mean": values.mean(0).tolist(), "std": values.std(0, ddof=1).tolist() if len(values) > 1 else None}

    def difference(run, key):
        d = over_seeds(run, key) - over_seeds(RUNS[0], key)
        return {**stats(d), "positive": (d > 0).sum(0).tolist()}

    return {
        "seeds": len(per_seed),
        "runs": {run: {key: stats(over_seeds(run, key)) for key in METRICS + ("seconds_per_epoch",)} for run in RUNS},
        "paired_differences": {run: {key: difference(run, key) for key in METRICS} for run in RUNS[1:]},
    }


def markdown_table(header, rows) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])


def tables(summary, class_names) -> str:
    """Mean (± std with several seeds) per run and metric; with several seeds, the paired differences too."""
    columns: list[tuple[str, str, int | None]] = [
        ("pixel acc", "pixel_accuracy", None),
        ("dataset mIoU", "dataset_miou", None),
        ("per-image mIoU", "per_image_miou", None),
    ]
    columns += [(f"IoU {name}", "per_class_iou", i) for i, name in enumerate(class_names)]

    def cell(stats, index=None, digits=3, signed=False):
        value = lambda v: v if index is None else v[index]
        mean = value(stats["mean"])
        mean = 0.0 if round(mean, digits) == 0 else mean  # 0.000, neither +0.000 nor -0.000
        text = f"{mean:{'+' if signed and mean else ''}.{digits}f}"
        if stats["std"] is not None:
            text += f" ± {value(stats['std']):.{digits}f}"
        if "positive" in stats:
            text += f" ({value(stats['positive'])}/{summary['seeds']})"
        return text

    header = [c[0] for c in columns]
    text = markdown_table(
        ["run"] + header + ["s/epoch"],
        [
            [run] + [cell(r[key], i) for _, key, i in columns] + [cell(r["seconds_per_epoch"], digits=1)]
            for run, r in summary["runs"].items()
        ],
    )
    if summary["seeds"] > 1:
        text += (
            f"\n\nPaired difference to cross-entropy over the same {summary['seeds']} seeds "
            "(mean ± std; in brackets, on how many seeds it was positive):\n"
        )
        text += markdown_table(
            ["run"] + header,
            [
                [f"{run} - CE"] + [cell(d[key], i, signed=True) for _, key, i in columns]
                for run, d in summary["paired_differences"].items()
            ],
        )
    return text


def figure(path: Path, val_x, val_y, results, class_names, final_miou=None, samples: int = 4) -> None:
    """Predictions and mIoU curves of one seed's ``results``; with ``final_miou`` (``{run: [per seed]}``)
    of several seeds, a panel of every seed's final held-out mIoU beside the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import MaxNLocator

    num_classes = len(class_names)
    synthetic = tuple(class_names) == CLASS_NAMES
    cmap = ListedColormap(["#2d4a22", "#c9c33b", "#d9534f", "#cfd2d6"]) if synthetic else plt.get_cmap("tab20")
    samples = min(samples, len(val_x))
    columns = ["input", "ground truth"] + list(results)
    fig = plt.figure(figsize=(2.2 * len(columns), 2.2 * samples + 2.6))
    grid = fig.add_gridspec(samples + 1, len(columns), height_ratios=[1] * samples + [1.3])
    for row in range(samples):
        image = val_x[row].permute(1, 2, 0)
        image = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
        panels = [image.clamp(0, 1).numpy(), val_y[row].numpy()]
        panels += [r["predictions"][row].numpy() for r in results.values()]
        for col, panel in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            if col == 0:
                ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            else:  # ignored pixels (255) are masked out
                ax.imshow(
                    np.ma.masked_equal(panel, IGNORE_INDEX),
                    cmap=cmap,
                    vmin=0,
                    vmax=max(num_classes - 1, 1) if synthetic else 19,
                    interpolation="nearest",
                )
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
    several = final_miou is not None and len(next(iter(final_miou.values()))) > 1
    ax = fig.add_subplot(grid[samples, :-2] if several else grid[samples, :])
    for run, r in results.items():
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=run)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # (1.2, 1.4, ... on a short run)
    ax.set_ylabel("held-out dataset mIoU")
    ax.legend()
    ax.grid(alpha=0.3)
    if several:
        ax.set_title("first seed", fontsize=9)
        ax = fig.add_subplot(grid[samples, -2:])
        finals = np.array(list(final_miou.values())).T  # [seeds, runs]
        for i, seed_finals in enumerate(finals):
            ax.plot(seed_finals, color="grey", alpha=0.6, marker="o", markersize=3, label=None if i else "one seed")
        ax.plot(finals.mean(0), color="black", marker="s", label="mean")
        ax.set_xticks(range(len(final_miou)), [run.replace(" then ", "\nthen ") for run in final_miou], fontsize=8)
        ax.set_title(f"final dataset mIoU, {len(finals)} seeds", fontsize=9)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lovasz demo", description=__doc__.split("\n\n")[0].replace("`", ""))
    # None: not given, filled from QUICK with --quick and from DEFAULTS without, so that a value given wins.
    parser.add_argument(
        "--epochs",
        type=integer(1),
        help=f"training epochs of each run (default: {DEFAULTS['epochs']}; {QUICK['epochs']} with --quick)",
    )
    parser.add_argument(
        "--size",
        type=integer(8, multiple_of=4),
        help="side of the synthetic images in pixels, a multiple of 4 "
        f"(default: {DEFAULTS['size']}; {QUICK['size']} with --quick)",
    )
    parser.add_argument(
        "--seed",
        type=integer(0, maximum=2**32 - 1),
        default=0,
        help="seed of the data, the held-out split and the initialisation (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=integer(1),
        default=1,
        metavar="N",
        help="repeat for the seeds SEED .. SEED+N-1 (new data or held-out split, new "
        "initialisation) and report mean ± std and the paired differences to "
        "cross-entropy (default: %(default)s)",
    )
    parser.add_argument(
        "--device", type=torch_device, default="cpu", help="torch device to train on, cpu or cuda (default: cpu)"
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        default=Path("demo-output"),
        help="folder for demo.png and demo.json (default: %(default)s)",
    )
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=integer(1), default=8, help="images per training step (default: %(default)s)"
    )
    parser.add_argument(
        "--train-images",
        type=integer(1),
        help="synthetic training images; a quarter as many, at least 8, are held out "
        f"(default: {DEFAULTS['train_images']}; {QUICK['train_images']} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few tiny epochs, for tests: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + " unless given (default: off)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="train on DIR/images and DIR/masks (PNG or .npy, paired by name) instead of the "
        "synthetic scenes; a seeded quarter is held out. Masks: class indices, 255 ignored "
        "(default: the synthetic scenes)",
    )
    parser.add_argument(
        "--mode",
        choices=("multiclass", "binary"),
        default="multiclass",
        help="binary: one output channel, BCE and the Lovász hinge; masks 0/1 or 0/255"
        "; on the synthetic scenes, buildings against the rest (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    from tqdm import tqdm

    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = args.device
    binary = args.mode == "binary"

    if args.data is not None:
        try:
            images, masks, _ = load_folder(args.data, binary, IGNORE_INDEX)
        except DataFolderError as error:
            parser.error(f"--data: {error}")
        held_out_count = max(1, len(images) // 4)

        # a seeded quarter held out
        def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
            held_out, train_index = order[:held_out_count], order[held_out_count:]
            return images[train_index], masks[train_index], images[held_out], masks[held_out]

        labelled = masks[masks != IGNORE_INDEX]
        if not labelled.numel():
            parser.error(f"--data: every mask pixel is {IGNORE_INDEX} (ignored): no labelled pixel to train on")
        num_classes = 2 if binary else int(labelled.max().item()) + 1
        absent = num_classes - int(torch.bincount(labelled, minlength=num_classes).count_nonzero())
        if absent:  # (a stray value, 200 in one mask, makes 201 classes)
            print(f"lovasz demo: {absent} of the {num_classes} classes (0 to the largest mask value) have no pixel")
        class_names = ("background", "foreground") if binary else tuple(f"class {c}" for c in range(num_classes))
        source = (
            f"{args.data}: {len(images) - held_out_count} training and {held_out_count} held-out images of "
            f"{images.shape[2]}x{images.shape[3]}"
        )
    else:

        def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            train_x, train_y = make_dataset(args.train_images, args.size, seed=seed)
            # a stream of its own: seed + 1 drew the next seed's first training scenes
            val_x, val_y = make_dataset(max(8, args.train_images // 4), args.size, seed=(seed, 1))
            if binary:
                train_y, val_y = (train_y == SYNTHETIC_BINARY_CLASS).long(), (val_y == SYNTHETIC_BINARY_CLASS).long()
            return train_x, train_y, val_x, val_y

        class_names = ("rest", CLASS_NAMES[SYNTHETIC_BINARY_CLASS]) if binary else CLASS_NAMES
        num_classes = len(class_names)
        source = (
            f"{args.train_images} training and {max(8, args.train_images // 4)} held-out synthetic images "
            f"of {args.size}x{args.size}"
        )

    seeds = list(range(args.seed, args.seed + args.seeds))
    per_seed: list[dict[str, Any]] = []
    for seed in tqdm(seeds, desc="seeds", unit="seed", disable=len(seeds) == 1):
        data = make_data(seed)
        valid = data[1][data[1] != IGNORE_INDEX]
        frequencies = np.bincount(valid.numpy().ravel(), minlength=num_classes) / max(valid.numel(), 1)
        if not per_seed:
            tqdm.write(
                f"lovasz demo ({args.mode}): {source}, {args.epochs} epochs"
                + (
                    f", seeds {seeds[0]} to {seeds[-1]}; class frequencies (seed {seed}) "
                    if len(seeds) > 1
                    else "; class frequencies "
                )
                + ", ".join(f"{n} {f:.1%}" for n, f in zip(class_names, frequencies))
            )
        torch.manual_seed(seed)  # one initialisation per seed, shared by its three runs
        initial_state = copy.deepcopy(UNet(data[0].shape[1], 1 if binary else num_classes).state_dict())
        results = {run: train(run, initial_state, data, args, device, num_classes, seed) for run in RUNS}
        if not per_seed:
            shown = (*data[2:], results)  # the figure shows the first seed
        per_seed.append(
            {
                "seed": seed,
                "class_frequencies": frequencies.tolist(),
                "runs": {run: scores(r) for run, r in results.items()},
            }
        )
        if len(seeds) > 1:
            tqdm.write(
                f"seed {seed}: dataset mIoU "
                + ", ".join(f"{run} {r['scores']['dataset_miou']:.3f}" for run, r in results.items())
            )

    summary = summarise([entry["runs"] for entry in per_seed])
    print(tables(summary, class_names))
    args.out.mkdir(parents=True, exist_ok=True)
    final_miou = {run: [entry["runs"][run]["dataset_miou"] for entry in per_seed] for run in RUNS}
    output = {
        "settings": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
        "class_names": list(class_names),
        "class_frequencies": per_seed[0]["class_frequencies"],
        "runs": per_seed[0]["runs"],  # the first seed's, as shown in the figure
        "seeds": seeds,
        "per_seed": per_seed,
        "summary": summary,
    }
    # strict JSON: the IoU of a class absent from the held-out set and never predicted is null, not NaN
    (args.out / "demo.json").write_text(json.dumps(_without_nan(output), indent=2, allow_nan=False))
    figure(args.out / "demo.png", *shown, class_names, final_miou)  # (after the JSON: both are this run's)
    print(f"wrote {args.out / 'demo.png'} and {args.out / 'demo.json'}")
    return 0


def _without_nan(value: Any) -> Any:
    """``value`` with every NaN float (in dicts, lists and tuples) as None."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
