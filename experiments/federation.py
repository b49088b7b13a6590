"""From a run config to the strategy (server side) and the client (client side) it names."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from flwr.common import Context
from flwr_privacy.clients.fedavg import client_seed
from flwr_privacy.strategies.base import RoundCallback

from experiments.algorithms import ClientSetup, ServerSetup
from flwr_privacy import registry
from flwr_privacy.config import RunConfig
from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.models import build_model
from flwr_privacy.partition import partition
from flwr_privacy.training import evaluate, pick_device
from flwr_privacy.wire import arrays_to_model, model_to_arrays


def validate_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Check every key of a run config, the algorithms' sections included, before anything trains."""
    cfg = RunConfig.from_run_config(run_config)
    registry.get(cfg.strategy)
    pick_device(cfg.device)  # CUDA asked for and absent: said before any data is loaded
    sections = {k.split(".", 1)[0] for k in run_config if "." in k}
    unknown = sections - set(registry.names())
    if unknown:
        raise ValueError(f"unknown run-config sections {sorted(unknown)}; allowed: {registry.names()}")
    for name in registry.names():
        registry.get(name).config(run_config, cfg)
    return cfg


@lru_cache(maxsize=4)
def client_partitions(
    dataset: str, data_dir: str, method: str, num_clients: int, seed: int, alpha: float, shards: int
) -> list[np.ndarray]:
    train, _ = load_dataset(dataset, data_dir)
    return partition(train.y.numpy(), num_clients, method, seed, alpha, shards)


def check_partitions(cfg: RunConfig) -> None:
    """The split of the training set the run config asks for, made once before training (cached for the
    clients): a split that cannot be made (more shards than examples) is a config error, not every
    client's failure round after round."""
    client_partitions(
        cfg.dataset, cfg.data_dir, cfg.partition, cfg.num_clients, cfg.seed, cfg.alpha, cfg.shards_per_client
    )


def client_data(cfg: RunConfig, partition_id: int) -> TensorData:
    """The training examples that client ``partition_id`` holds."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id={partition_id} is outside [0, num-clients={cfg.num_clients})")
    train, _ = load_dataset(cfg.dataset, cfg.data_dir)
    parts = client_partitions(
        cfg.dataset, cfg.data_dir, cfg.partition, cfg.num_clients, cfg.seed, cfg.alpha, cfg.shards_per_client
    )
    return train.subset(parts[partition_id])


def make_evaluate_fn(cfg: RunConfig, test: TensorData):
    """Server-side evaluation of the global model on the held-out test set, on the rounds ``cfg.evaluates``."""
    model = build_model(cfg.model, test.in_shape, 10, cfg.seed)
    device = pick_device(cfg.device)

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict] | None:
        if not cfg.evaluates(server_round):
            return None
        arrays_to_model(model, arrays)
        loss, accuracy = evaluate(model, test, device)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def make_strategy(cfg: RunConfig, run_config: dict[str, Any], on_round: RoundCallback | None = None):
    """The Flower Strategy of the algorithm a run config names, initialised with the seeded global model."""
    algorithm = registry.get(cfg.strategy)
    _, test = load_dataset(cfg.dataset, cfg.data_dir)
    model = build_model(cfg.model, test.in_shape, 10, cfg.seed)
    options = dict(
        initial_arrays=model_to_arrays(model),
        evaluate_fn=make_evaluate_fn(cfg, test),
        fraction_fit=cfg.fraction_fit,
        min_fit_clients=cfg.min_fit_clients,
        min_available_clients=cfg.min_fit_clients,
        fraction_evaluate=0.0,  # the server scores the global model on its held-out test set
        seed=cfg.seed,
        aggregation=cfg.aggregation,
        trim_fraction=cfg.trim_fraction,
        on_round=on_round,
    )
    return algorithm.strategy(ServerSetup(cfg, run_config, model, algorithm.config(run_config, cfg), options))


def make_client(cfg: RunConfig, run_config: dict[str, Any], context: Context):
    """The NumPyClient of the algorithm a run config names, for the SuperNode this context belongs to."""
    algorithm = registry.get(cfg.strategy)
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num_partitions != cfg.num_clients:
        raise ValueError(
            f"num-clients={cfg.num_clients} but the federation has num-partitions={num_partitions}: make them equal"
        )
    data = client_data(cfg, partition_id)
    model = build_model(cfg.model, data.in_shape, 10, cfg.seed)
    device, seed = pick_device(cfg.device), client_seed(cfg.seed, partition_id)
    setup = ClientSetup(cfg, run_config, model, data, device, seed, partition_id, context)
    return algorithm.client(setup)
