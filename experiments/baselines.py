"""Centralized and standalone baselines for a composed config, on the same model and budget.

    python -m experiments.baselines experiment=fedavg_mnist_cnn_iid
    python -m experiments.baselines dataset=mnist model=dssgd_mlp baseline.max_clients=30

Writes ``baselines.json`` in the run folder and prints both accuracies. The budget is the
federated run's: as many passes over the data as the federation's sample gradients add up to
(``baseline.epochs`` overrides it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.cli import check_overrides
from experiments.federation import client_data, validate_run_config
from experiments.run import to_run_config
from flwr_privacy.baselines import centralized, federated_epochs, standalone
from flwr_privacy.config import RunConfig
from flwr_privacy.data import load_dataset
from flwr_privacy.features import with_features
from flwr_privacy.training import pick_device


def samples_per_round(cfg: RunConfig, num_examples: int) -> float:
    """Sample gradients one federated round computes, by strategy."""
    clients = cfg.clients_per_round
    if cfg.strategy == "dgc":
        return clients * cfg.local_steps * cfg.batch_size
    return clients * cfg.local_epochs * num_examples / cfg.num_clients


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    """One line and exit status 1 for what a user can fix (a config value, data)."""
    try:
        baselines(dcfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def baselines(dcfg: DictConfig) -> None:
    run_config = to_run_config(dcfg)
    run_config["output-dir"] = HydraConfig.get().runtime.output_dir
    cfg = validate_run_config(run_config)
    train, test = load_dataset(cfg.dataset, cfg.data_dir)
    train, test = with_features(train, cfg.features), with_features(test, cfg.features)
    epochs = dcfg.baseline.epochs or federated_epochs(samples_per_round(cfg, len(train)), cfg.num_rounds, len(train))
    device = pick_device(cfg.device)
    central = centralized(cfg.model, train, test, epochs, cfg.sgd, device, cfg.seed)
    print(f"centralized: accuracy {central.accuracy:.4f} after {epochs} epochs", flush=True)
    clients = min(dcfg.baseline.max_clients or cfg.num_clients, cfg.num_clients)
    parts = [client_data(cfg, i) for i in range(clients)]
    alone = standalone(cfg.model, parts, test, epochs, cfg.sgd, device, cfg.seed)
    print(f"standalone: mean accuracy {alone.accuracy:.4f} (std {alone.accuracy_std:.4f}) over {clients} clients")
    out = {"config": run_config, "centralized": asdict(central), "standalone": asdict(alone)}
    path = f"{run_config['output-dir']}/baselines.json"
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"results: {path}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
