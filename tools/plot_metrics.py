#!/usr/bin/env python
"""Plot a training run's metrics.json: loss.png (each loss term and the total) and map.png
(segm/bbox AP, AP50, AP75 over iterations)."""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str) -> list:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path} line {n}: not JSON") from None
    return rows


def plot_losses(rows, out_path):
    train = [r for r in rows if "total_loss" in r]
    if not train:
        raise ValueError("metrics.json has no training losses")
    keys = sorted({k for r in train for k in r if k.startswith("loss_")}) + ["total_loss"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for k in keys:
        pts = [(r["iteration"], r[k]) for r in train if k in r]
        ax.plot(*zip(*pts), label=k, linewidth=2.5 if k == "total_loss" else 1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training losses")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_map(rows, out_path):
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for task, style in (("segm", "-"), ("bbox", "--")):
        for metric in ("AP", "AP50", "AP75"):
            key = f"{task}/{metric}"
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", label=key)
                drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no evaluation results in metrics.json", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP (%)")
    ax.set_title("COCO AP on the evaluation set")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("output_dir", help="training output folder with metrics.json")
    p.add_argument("--out", help="where to write the PNGs (default: output_dir)")
    args = p.parse_args(argv)
    path = os.path.join(args.output_dir, "metrics.json")
    out = args.out or args.output_dir
    try:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: not found")
        rows = read_metrics(path)
        os.makedirs(out, exist_ok=True)
        plot_losses(rows, os.path.join(out, "loss.png"))
        plot_map(rows, os.path.join(out, "map.png"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}/loss.png and {out}/map.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
