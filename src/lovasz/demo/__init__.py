"""`lovasz demo`: cross-entropy against Lovász-Softmax on IoU, on a seeded synthetic dataset.

Three runs from the same seed and initialisation: cross-entropy; cross-entropy
then Lovász-Softmax fine-tuning (the paper authors' recommendation);
cross-entropy plus Lovász-Softmax. Held-out images are scored with
``lovasz.metrics``; a table is printed, and a PNG figure and a JSON file are
written to ``--out``. ``--data DIR`` trains on a folder of the user's images and
masks instead (layout in :mod:`lovasz.demo.folder`); ``--mode binary`` uses
binary cross-entropy and the Lovász hinge on one output channel.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lovasz.demo.data import CLASS_NAMES, make_dataset
from lovasz.demo.folder import DataFolderError, load_folder
from lovasz.demo.model import UNet
from lovasz.metrics import IoUMeter
from lovasz.torch import CrossEntropyLovaszLoss, LovaszSchedule

RUNS = ("cross-entropy", "CE then Lovász", "CE + Lovász")
IGNORE_INDEX = 255
SYNTHETIC_BINARY_CLASS = CLASS_NAMES.index("building")  # --mode binary on the synthetic scenes


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
        pred = predict(model(images[start:start + batch_size]), binary)
        meter.update(pred, labels[start:start + batch_size])
        predictions.append(pred)
    model.train()
    return meter.compute(), torch.cat(predictions)


def train(run, initial_state, data, args, device, num_classes: int):
    train_x, train_y, val_x, val_y = data
    binary = args.mode == "binary"
    model = UNet(in_channels=train_x.shape[1], num_classes=1 if binary else num_classes).to(device)
    model.load_state_dict(initial_state)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(args.seed)
    curve, seconds = [], []
    criterion, schedule = make_loss(run, args.epochs, args.mode)
    for epoch in tqdm(range(args.epochs), desc=f"{run:>15}", unit="epoch", leave=False):
        if schedule is not None:
            schedule.apply(criterion, epoch)
        start = time.perf_counter()
        order = torch.randperm(len(train_x), generator=shuffle)
        for i in range(0, len(order), args.batch_size):
            index = order[i:i + args.batch_size]
            loss = criterion(model(train_x[index].to(device)), train_y[index].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        seconds.append(time.perf_counter() - start)
        scores, _ = evaluate(model, val_x.to(device), val_y.to(device), args.batch_size, num_classes, binary)
        curve.append(scores["dataset_miou"])
    scores, predictions = evaluate(model, val_x.to(device), val_y.to(device), args.batch_size, num_classes, binary)
    return {"scores": scores, "curve": curve, "seconds_per_epoch": float(np.median(seconds)),
            "predictions": predictions.cpu()}


def table(results, class_names) -> str:
    header = ["run", "pixel acc", "dataset mIoU", "per-image mIoU"] + [f"IoU {n}" for n in class_names] + ["s/epoch"]
    rows = []
    for run, r in results.items():
        s = r["scores"]
        rows.append([run, f"{s['pixel_accuracy']:.3f}", f"{s['dataset_miou']:.3f}", f"{s['per_image_miou']:.3f}"]
                    + [f"{float(v):.3f}" for v in s["per_class"]] + [f"{r['seconds_per_epoch']:.1f}"])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])


def figure(path: Path, val_x, val_y, results, class_names, samples: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

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
                ax.imshow(np.ma.masked_equal(panel, IGNORE_INDEX), cmap=cmap, vmin=0,
                          vmax=max(num_classes - 1, 1) if synthetic else 19, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
    ax = fig.add_subplot(grid[samples, :])
    for run, r in results.items():
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=run)
    ax.set_xlabel("epoch"), ax.set_ylabel("held-out dataset mIoU"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lovasz demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (a multiple of 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--quick", action="store_true", help="a few tiny epochs, for tests")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="train on DIR/images and DIR/masks (PNG or .npy, paired by name) instead of the "
                             "synthetic scenes; a seeded quarter is held out. Masks: class indices, 255 ignored")
    parser.add_argument("--mode", choices=("multiclass", "binary"), default="multiclass",
                        help="binary: one output channel, BCE and the Lovász hinge; masks 0/1 or 0/255 "
                             "(on the synthetic scenes: buildings against the rest)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.size, args.train_images = 2, 32, 16
    if args.size < 8 or args.size % 4:
        parser.error(f"--size must be a multiple of 4 and at least 8; got {args.size}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1; got {args.epochs}")
    device = torch.device(args.device)
    binary = args.mode == "binary"

    if args.data is not None:
        try:
            images, masks, _ = load_folder(args.data, binary, IGNORE_INDEX)
        except DataFolderError as error:
            parser.error(f"--data: {error}")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
        held_out = order[:max(1, len(images) // 4)]
        train_index = order[len(held_out):]
        train_x, train_y, val_x, val_y = images[train_index], masks[train_index], images[held_out], masks[held_out]
        num_classes = 2 if binary else int(masks[masks != IGNORE_INDEX].max().item()) + 1
        class_names = ("background", "foreground") if binary else tuple(f"class {c}" for c in range(num_classes))
        source = f"{args.data}: {len(train_x)} training and {len(val_x)} held-out images of " \
                 f"{train_x.shape[2]}x{train_x.shape[3]}"
    else:
        train_x, train_y = make_dataset(args.train_images, args.size, seed=args.seed)
        val_x, val_y = make_dataset(max(8, args.train_images // 4), args.size, seed=args.seed + 1)
        if binary:
            train_y, val_y = (train_y == SYNTHETIC_BINARY_CLASS).long(), (val_y == SYNTHETIC_BINARY_CLASS).long()
        class_names = ("rest", CLASS_NAMES[SYNTHETIC_BINARY_CLASS]) if binary else CLASS_NAMES
        num_classes = len(class_names)
        source = f"{args.train_images} training and {len(val_x)} held-out synthetic images of {args.size}x{args.size}"
    torch.manual_seed(args.seed)
    initial_state = copy.deepcopy(UNet(train_x.shape[1], 1 if binary else num_classes).state_dict())
    valid = train_y[train_y != IGNORE_INDEX]
    frequencies = np.bincount(valid.numpy().ravel(), minlength=num_classes) / max(valid.numel(), 1)
    print(f"lovasz demo ({args.mode}): {source}, {args.epochs} epochs; class frequencies "
          + ", ".join(f"{n} {f:.1%}" for n, f in zip(class_names, frequencies)))
    data = (train_x, train_y, val_x, val_y)
    results = {run: train(run, initial_state, data, args, device, num_classes) for run in RUNS}

    print(table(results, class_names))
    args.out.mkdir(parents=True, exist_ok=True)
    figure(args.out / "demo.png", val_x, val_y, results, class_names)
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "class_names": list(class_names), "class_frequencies": frequencies.tolist(),
               "runs": {run: {"pixel_accuracy": r["scores"]["pixel_accuracy"],
                              "dataset_miou": r["scores"]["dataset_miou"],
                              "per_image_miou": r["scores"]["per_image_miou"],
                              "per_class_iou": [float(v) for v in r["scores"]["per_class"]],
                              "seconds_per_epoch": r["seconds_per_epoch"], "curve": r["curve"]}
                        for run, r in results.items()}}
    (args.out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'demo.png'} and {args.out / 'demo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
