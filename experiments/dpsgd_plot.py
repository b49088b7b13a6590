"""Federated DP-SGD's accuracy against epsilon, MNIST and CIFAR-10 side by side, with the published
centralized anchors drawn as reference points (docs/results.md, "DP-SGD at the published accuracy").

Each run folder is a finished ``python -m experiments.run ... dpsgd.enabled=true`` run, or one of
``python -m experiments.distributed_dpsgd`` (its own line, "under SecAgg+ (noise in shares)"): its final test
accuracy against the server ledger's ``epsilon_total_max``; runs of one algorithm and model make one line
per data set. A run without DP-SGD (``dpsgd.enabled=false``) is drawn as a dashed line, "no DP".

    python -m experiments.dpsgd_plot outputs/2026-12-06/21-50-03 outputs/... --out docs/dpsgd_accuracy_epsilon.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from experiments.results import load_rows

# (data set, what, epsilon, accuracy) at delta 1e-5, centralized, as published.
ANCHORS = (
    ("mnist", "Opacus MNIST example", 2.91, 0.9678),
    ("mnist", "TF Privacy tutorial", 2.92, 0.966),
    ("mnist", "Tramer & Boneh, tanh CNN", 3.0, 0.981),
    ("mnist", "Tramer & Boneh, ScatterNet + linear", 3.0, 0.987),
    ("cifar10", "Tramer & Boneh, ScatterNet + linear", 3.0, 0.670),
    ("cifar10", "Tramer & Boneh, ScatterNet + CNN", 3.0, 0.693),
)
DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def run_point(folder: str | Path) -> dict[str, Any]:
    """A finished run's data set, line label, epsilon (None without DP-SGD) and final test accuracy."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a run folder: no config.json")
    config = json.loads(config_file.read_text())
    rows = load_rows(folder)
    if not rows:
        raise ValueError(f"{folder} holds no finished round")
    last = rows[-1]
    private = bool(config.get("dpsgd.enabled"))
    epsilon = last.get("epsilon_total_max") if private else None
    if private and epsilon in (None, ""):
        raise ValueError(f"{folder} trained with DP-SGD but its last round reports no epsilon_total_max")
    features = "" if config.get("features", "pixels") == "pixels" else f"{config['features']} "
    shares = " under SecAgg+ (noise in shares)" if config.get("secagg.dp") == "distributed-dpsgd" else ""
    return {
        "dataset": config["dataset"],
        "strategy": config["strategy"],
        "label": f"{config['strategy']}{shares}, {features}{config['model']}",
        "epsilon": None if epsilon is None else float(epsilon),
        "accuracy": float(last["test_accuracy"]),
        "folder": str(folder),
    }


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = [d for d in DATASETS if any(p["dataset"] == d for p in points)] or list(DATASETS)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 6.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [p for p in points if p["dataset"] == dataset]
        for i, label in enumerate(sorted({p["label"] for p in mine})):
            color = f"C{i}"
            line = sorted((p for p in mine if p["label"] == label and p["epsilon"] is not None),
                          key=lambda p: p["epsilon"])
            if line:
                ax.plot([p["epsilon"] for p in line], [p["accuracy"] for p in line], "o-", color=color,
                        label=f"{label} + DP-SGD (federated)")
            for p in mine:
                if p["label"] == label and p["epsilon"] is None:
                    ax.axhline(p["accuracy"], color=color, linestyle="--", linewidth=1, label=f"{label}, no DP")
        for j, (_, what, epsilon, accuracy) in enumerate(a for a in ANCHORS if a[0] == dataset):
            ax.plot([epsilon], [accuracy], marker="*^sD"[j % 4], markersize=9, color="black", linestyle="none",
                    markerfacecolor="none", label=f"{what} (centralized)")
        ax.set_xscale("log")
        ax.set_xlim(0.7, 12)
        ax.set_xticks([1, 2, 3, 5, 8])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("epsilon (delta 1e-5 per client)")
        ax.set_ylabel("test accuracy")
        ax.set_title(DATASETS.get(dataset, dataset))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="experiments.run folders")
    parser.add_argument("--out", default="dpsgd_accuracy_epsilon.png", help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        points = [run_point(folder) for folder in args.runs]
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print("| data set | run | epsilon | test accuracy | folder |")
    print("| --- | --- | --- | --- | --- |")
    for p in points:
        epsilon = "-" if p["epsilon"] is None else f"{p['epsilon']:.3f}"
        print(f"| {p['dataset']} | {p['label']} | {epsilon} | {p['accuracy']:.4f} | {p['folder']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(points, out)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
