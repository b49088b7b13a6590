"""Client-level DP with Flower's own wrapper around our FedAvg: accuracy against epsilon, and the plot.

Each run is FedAvg inside Flower's ``DifferentialPrivacyServerSideFixedClipping`` (every client's update
clipped to C, Gaussian noise of std z C / n on the mean of n), in process, on the run config's federation;
epsilon is the RDP bound for a client that took part in every round (``client_level_spent``: no
amplification, as the seeded sampling is no secret from the server). ``--dpsgd-runs`` adds the folders of
``python -m experiments.run ... dpsgd.enabled=true`` runs (their ``epsilon_total_max``) to the plot.

    python -m experiments.client_dp --noise 0,0.1,1 --clip 1.0 dataset=mnist model=mlp num_rounds=5
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

from flwr.common.logger import FLOWER_LOGGER
from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr_privacy.strategies.privacy import client_level_spent

from experiments.client_app import client_fn
from experiments.dpsgd_plot import run_point
from experiments.federation import make_strategy, validate_run_config
from experiments.inprocess import make_federation, run_inprocess

DELTA = 1e-5
BASE = {"strategy": "fedavg", "num-clients": 10, "fraction-fit": 1.0, "device": "cpu", "seed": 0, "output-dir": ""}


def run(run_config: dict[str, Any], noise_multiplier: float | None, clip: float) -> dict[str, Any]:
    """One in-process FedAvg run, inside Flower's server-side clipping wrapper unless ``noise_multiplier`` is
    None (the non-private reference); its final accuracy and epsilon."""
    random.seed(0)
    cfg = validate_run_config(run_config)
    strategy = make_strategy(cfg, run_config)
    manager = make_federation(client_fn, run_config, cfg.num_clients)
    wrapped = strategy
    if noise_multiplier is not None:
        wrapped = DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier, clip, cfg.clients_per_round)
    run_inprocess(wrapped, manager, cfg.num_rounds)
    final = strategy.history[-1]
    epsilon = None
    if noise_multiplier:
        epsilon = client_level_spent(noise_multiplier, cfg.num_rounds, cfg.num_clients, DELTA).epsilon
    return {
        "mechanism": "none" if noise_multiplier is None else "fedavg + client-level DP (Flower's wrapper)",
        "noise_multiplier": noise_multiplier,
        "clip": clip if noise_multiplier is not None else None,
        "epsilon": epsilon if noise_multiplier else (float("inf") if noise_multiplier == 0 else None),
        "accuracy": final["test_accuracy"],
        "accuracy_by_round": [r["test_accuracy"] for r in strategy.history],
    }


def dpsgd_points(folders: list[str]) -> list[dict[str, Any]]:
    """Final accuracy and epsilon of finished ``experiments.run`` folders trained with DP-SGD, as
    ``experiments.dpsgd_plot.run_point`` reads and checks them."""
    points = []
    for folder in folders:
        point = run_point(folder)
        points.append({
            "mechanism": f"{point['strategy']} + DP-SGD (sample-level)",
            "epsilon": point["epsilon"],
            "accuracy": point["accuracy"],
            "folder": point["folder"],
        })
    return points


def plot(points: list[dict[str, Any]], reference: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mechanism in sorted({p["mechanism"] for p in points if p.get("epsilon") not in (None, float("inf"))}):
        mine = sorted((p for p in points if p["mechanism"] == mechanism and p["epsilon"] not in (None, float("inf"))),
                      key=lambda p: p["epsilon"])
        ax.plot([p["epsilon"] for p in mine], [p["accuracy"] for p in mine], "o-", label=mechanism)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", label="no DP")
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon (delta {DELTA:g} per client)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def dataset_folder(dataset: str) -> str:
    """The data folder ``experiments/conf/dataset/<dataset>.yaml`` names (``$FLWR_PRIVACY_DATA`` resolved)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).parent / "conf" / "dataset" / f"{dataset.replace('-', '_')}.yaml")
    return str(OmegaConf.to_container(conf, resolve=True)["data_dir"])


def parse(value: str) -> Any:
    """A command-line value as a run-config value: a number or a bool where it reads as one, else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise", default="0,0.1,1", help="comma-separated noise multipliers z (0: clipping only)")
    parser.add_argument("--clip", type=float, default=1.0, help="C, each client's update norm bound")
    parser.add_argument("--dpsgd-runs", default="", help="comma-separated experiments.run folders (DP-SGD)")
    parser.add_argument("--out", default="privacy_curve", help="folder for points.json and accuracy_epsilon.png")
    parser.add_argument("overrides", nargs="*", help="run-config key=value (kebab or snake case)")
    args = parser.parse_args(argv)
    try:  # read before anything runs: a folder that is not a finished run is one line, not a traceback later
        dpsgd = dpsgd_points([f for f in args.dpsgd_runs.split(",") if f.strip()])
    except ValueError as err:
        raise SystemExit(f"error: --dpsgd-runs: {err}") from None
    FLOWER_LOGGER.setLevel(logging.ERROR)
    run_config: dict[str, Any] = dict(BASE)
    for item in args.overrides:
        key, value = item.split("=", 1)
        run_config[key.replace("_", "-")] = parse(value)
    if "dataset" in run_config and "data-dir" not in run_config:  # where the Hydra runner would look
        run_config["data-dir"] = dataset_folder(run_config["dataset"])
    points = [run(run_config, None, args.clip)]
    points += [run(run_config, float(z), args.clip) for z in args.noise.split(",") if z.strip()]
    points += dpsgd
    print("| mechanism | z | C | epsilon (delta 1e-5) | test accuracy |")
    print("|---|---|---|---|---|")
    for p in points:
        epsilon = "-" if p.get("epsilon") is None else f"{p['epsilon']:.3g}"
        z, clip = p.get("noise_multiplier", "-"), p.get("clip", "-")
        print(f"| {p['mechanism']} | {z} | {clip} | {epsilon} | {p['accuracy']:.4f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "points.json").write_text(json.dumps(points, indent=2))
    plot(points, points[0]["accuracy"], out / "accuracy_epsilon.png")
    print(f"plot: {out / 'accuracy_epsilon.png'}")


if __name__ == "__main__":
    main()
