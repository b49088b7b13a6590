"""Run one composed config as a Flower simulation (``flwr run`` underneath), then summarise it.

    python -m experiments.run                                 # the main job (FedAvg, embedded MNIST)
    python -m experiments.run experiment=fedavg_mnist_cnn_iid # the FedAvg paper's MNIST CNN, IID
    python -m experiments.run dataset=mnist model=mlp partition=dirichlet alpha=0.1 num_rounds=20
    python -m experiments.run -m lr=0.05,0.1,0.2              # a sweep, one Flower run each

The run's folder (printed at the end) holds rounds.csv, rounds.json, accuracy.png and config.json.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import flwr.common.logger as flwr_logger
import hydra
from flwr_privacy.strategies.base import FederationError
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from experiments.checkpoint import resumable_strategy
from experiments.cli import check_overrides
from experiments.client_app import client_fn
from experiments.federation import check_partitions, validate_run_config
from experiments.flower_run import FlowerRunError, flwr_run, interruptible, interruption
from experiments.inprocess import make_federation, run_inprocess
from experiments.results import ResultsWriter, plot_rounds
from flwr_privacy.data import check_data

RUNNER_ONLY = ("simulation", "experiment", "baseline")
BACKENDS = ("flwr", "inprocess")


def to_run_config(cfg: DictConfig, base: Path | None = None) -> dict[str, Any]:
    """Hydra's snake_case tree -> Flower's flat kebab-case run config (sections become dotted keys); relative
    paths are taken from ``base`` (by default the directory the Hydra app was started in)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key in RUNNER_ONLY or value is None:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub.replace('_', '-')}"] = v
        else:
            flat[key.replace("_", "-")] = value
    for key in ("data-dir", "resume"):  # paths as the user typed them, from where they ran the command
        if flat.get(key):
            path = Path(flat[key]).expanduser()
            flat[key] = str(path if path.is_absolute() else (base or Path(get_original_cwd())) / path)
    return flat


def summarise(rows: list[dict[str, Any]]) -> str:
    last = rows[-1]
    best = max((r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None), default=None)
    return (
        f"{last['round']} rounds: final test accuracy {last['test_accuracy']:.4f} (best {best:.4f}), "
        f"uploaded {last['cum_bytes_up'] / 1e6:.2f} MB, downloaded {last['cum_bytes_down'] / 1e6:.2f} MB, "
        f"{sum(r['wall_time_s'] for r in rows):.1f} s in rounds"
    )


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One line and exit status 1 for what a user can fix (a config value, data) or a failed run."""
    try:
        run(cfg)
    except (ValueError, FlowerRunError, FederationError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def run(cfg: DictConfig) -> None:
    run_config = to_run_config(cfg)
    run_config["output-dir"] = HydraConfig.get().runtime.output_dir
    config = validate_run_config(run_config)
    backend = cfg.simulation.backend
    if backend not in BACKENDS:
        raise ValueError(f"simulation.backend={backend!r} is unknown; allowed: {list(BACKENDS)}")
    check_data(config.dataset, config.data_dir)
    check_partitions(config)
    if backend == "flwr":
        rows = flwr_run(
            run_config,
            num_supernodes=config.num_clients,
            cpus_per_client=cfg.simulation.cpus_per_client,
            gpus_per_client=cfg.simulation.gpus_per_client,
        )
    else:
        # Flower's logger has its own console handler and also propagates to Hydra's (console and the
        # run's log file): keep Hydra's, so each line shows once and lands in the log file.
        logging.getLogger("flwr").removeHandler(flwr_logger.console_handler)
        writer = ResultsWriter(config.output_dir, run_config)
        strategy, rounds_left = resumable_strategy(config, run_config, on_round=writer)
        run_inprocess(strategy, make_federation(client_fn, run_config, config.num_clients), rounds_left)
        rows = writer.rows
    plot_rounds(rows, Path(config.output_dir) / "accuracy.png", title=Path(config.output_dir).name)
    print(summarise(rows))
    print(f"results: {run_config['output-dir']}")


def cli() -> None:
    """``python -m experiments.run``: an interruption (Ctrl-C, SIGINT or SIGTERM, at any moment, even one
    this process inherited as ignored) is one line and exit status 128 + the signal; every process of the
    run has been stopped on the way out (``experiments.flower_run``)."""
    try:
        with interruptible():
            check_overrides(sys.argv[1:])
            main()
    except KeyboardInterrupt as err:
        line, status = interruption(err)
        print(f"error: {line}; the run's processes are stopped", file=sys.stderr)
        sys.exit(status)


if __name__ == "__main__":
    cli()
