"""`lovasz demo`: cross-entropy against Lovász-Softmax on IoU, on a seeded synthetic dataset.

Three runs from the same seed and initialisation: cross-entropy; cross-entropy
then Lovász-Softmax fine-tuning (the paper authors' recommendation);
cross-entropy plus Lovász-Softmax. Held-out images are scored with
``lovasz.metrics``; a table is printed, and a PNG figure and a JSON file are
written to ``--out``.
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
import torch.nn.functional as F
from tqdm import tqdm

from lovasz.demo.data import CLASS_NAMES, make_dataset
from lovasz.demo.model import UNet
from lovasz.metrics import IoUMeter
from lovasz.torch import lovasz_softmax

RUNS = ("cross-entropy", "CE then Lovász", "CE + Lovász")


def loss_for(run: str, epoch: int, epochs: int):
    """The loss of ``run`` at ``epoch``: the schedule switches to Lovász for the last half."""
    ce = lambda logits, labels: F.cross_entropy(logits, labels)
    lovasz = lambda logits, labels: lovasz_softmax(logits, labels, from_logits=True)
    if run == "cross-entropy" or (run == "CE then Lovász" and epoch < epochs // 2):
        return ce
    if run == "CE then Lovász":
        return lovasz
    return lambda logits, labels: ce(logits, labels) + lovasz(logits, labels)


@torch.no_grad()
def evaluate(model, images, labels, batch_size: int):
    model.eval()
    meter = IoUMeter(len(CLASS_NAMES))
    predictions = []
    for start in range(0, len(images), batch_size):
        pred = model(images[start:start + batch_size]).argmax(1)
        meter.update(pred, labels[start:start + batch_size])
        predictions.append(pred)
    model.train()
    return meter.compute(), torch.cat(predictions)


def train(run, initial_state, data, args, device):
    train_x, train_y, val_x, val_y = data
    model = UNet(num_classes=len(CLASS_NAMES)).to(device)
    model.load_state_dict(initial_state)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(args.seed)
    curve, seconds = [], []
    for epoch in tqdm(range(args.epochs), desc=f"{run:>15}", unit="epoch", leave=False):
        criterion = loss_for(run, epoch, args.epochs)
        start = time.perf_counter()
        order = torch.randperm(len(train_x), generator=shuffle)
        for i in range(0, len(order), args.batch_size):
            index = order[i:i + args.batch_size]
            loss = criterion(model(train_x[index].to(device)), train_y[index].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        seconds.append(time.perf_counter() - start)
        curve.append(evaluate(model, val_x.to(device), val_y.to(device), args.batch_size)[0]["dataset_miou"])
    scores, predictions = evaluate(model, val_x.to(device), val_y.to(device), args.batch_size)
    return {"scores": scores, "curve": curve, "seconds_per_epoch": float(np.median(seconds)),
            "predictions": predictions.cpu()}


def table(results) -> str:
    header = ["run", "pixel acc", "dataset mIoU", "per-image mIoU"] + [f"IoU {n}" for n in CLASS_NAMES] + ["s/epoch"]
    rows = []
    for run, r in results.items():
        s = r["scores"]
        rows.append([run, f"{s['pixel_accuracy']:.3f}", f"{s['dataset_miou']:.3f}", f"{s['per_image_miou']:.3f}"]
                    + [f"{float(v):.3f}" for v in s["per_class"]] + [f"{r['seconds_per_epoch']:.1f}"])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])


def figure(path: Path, val_x, val_y, results, samples: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#2d4a22", "#c9c33b", "#d9534f", "#cfd2d6"])
    columns = ["input", "ground truth"] + list(results)
    fig = plt.figure(figsize=(2.2 * len(columns), 2.2 * samples + 2.6))
    grid = fig.add_gridspec(samples + 1, len(columns), height_ratios=[1] * samples + [1.3])
    for row in range(samples):
        panels = [val_x[row].permute(1, 2, 0).clamp(0, 1).numpy(), val_y[row].numpy()]
        panels += [r["predictions"][row].numpy() for r in results.values()]
        for col, panel in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(panel, **({} if col == 0 else {"cmap": cmap, "vmin": 0, "vmax": len(CLASS_NAMES) - 1,
                                                     "interpolation": "nearest"}))
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
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.size, args.train_images = 2, 32, 16
    if args.size < 8 or args.size % 4:
        parser.error(f"--size must be a multiple of 4 and at least 8; got {args.size}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1; got {args.epochs}")
    device = torch.device(args.device)

    train_x, train_y = make_dataset(args.train_images, args.size, seed=args.seed)
    val_x, val_y = make_dataset(max(8, args.train_images // 4), args.size, seed=args.seed + 1)
    torch.manual_seed(args.seed)
    initial_state = copy.deepcopy(UNet(num_classes=len(CLASS_NAMES)).state_dict())
    frequencies = np.bincount(train_y.numpy().ravel(), minlength=len(CLASS_NAMES)) / train_y.numel()
    print(f"lovasz demo: {args.train_images} training and {len(val_x)} held-out images of {args.size}x{args.size}, "
          f"{args.epochs} epochs; class frequencies "
          + ", ".join(f"{n} {f:.1%}" for n, f in zip(CLASS_NAMES, frequencies)))
    results = {run: train(run, initial_state, (train_x, train_y, val_x, val_y), args, device) for run in RUNS}

    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    figure(args.out / "demo.png", val_x, val_y, results)
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "class_names": CLASS_NAMES, "class_frequencies": frequencies.tolist(),
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
