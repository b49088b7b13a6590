"""From a run config to the strategy (server side) and the client (client side) it names."""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.common import Context
from flwr_privacy.clients.fedavg import client_seed
from flwr_privacy.strategies.base import RoundCallback

from experiments.algorithms import ClientSetup, ServerSetup
from flwr_privacy import registry
from flwr_privacy.config import RunConfig, section
from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.features import with_features
from flwr_privacy.models import build_model
from flwr_privacy.partition import partition
from flwr_privacy.privacy.dpsgd import DPSGDConfig, DPSGDPlan, make_private_model, noise_for_target
from flwr_privacy.training import evaluate, pick_device
from flwr_privacy.wire import arrays_to_model, model_to_arrays


def validate_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Check every key of a run config, the algorithms' sections included, before anything trains."""
    cfg = RunConfig.from_run_config(run_config)
    registry.get(cfg.strategy)
    pick_device(cfg.device)  # CUDA asked for and absent: said before any data is loaded
    sections = {k.split(".", 1)[0] for k in run_config if "." in k}
    unknown = sections - set(registry.names()) - {"dpsgd"}
    if unknown:
        raise ValueError(f"unknown run-config sections {sorted(unknown)}; allowed: {[*registry.names(), 'dpsgd']}")
    dpsgd_config(run_config)
    for name in registry.names():
        registry.get(name).config(run_config, cfg)
    return cfg


def dpsgd_config(run_config: dict[str, Any]) -> DPSGDConfig:
    return DPSGDConfig(**section(run_config, "dpsgd", DPSGDConfig))


def dpsgd_plan(cfg: RunConfig, run_config: dict[str, Any], local_steps: int | None = None) -> DPSGDPlan | None:
    """The DP-SGD every client runs (None: none): the run's lot size and local epochs or steps (``local_steps``
    lots a round if given), charged by the server as for the client with the fewest examples;
    ``target-epsilon`` turned into the noise at which a client in every round spends it."""
    config = dpsgd_config(run_config)
    if not config.enabled:
        return None
    parts = client_partitions(
        cfg.dataset, cfg.data_dir, cfg.partition, cfg.num_clients, cfg.seed, cfg.alpha, cfg.shards_per_client
    )
    if local_steps is not None:
        steps, epochs = local_steps, 1
    else:
        steps = cfg.local_steps if registry.get(cfg.strategy).dpsgd_steps == "steps" else None
        epochs = cfg.local_epochs
    plan = DPSGDPlan(config, cfg.batch_size, min(len(p) for p in parts), epochs, steps)
    if config.target_epsilon:
        plan = replace(plan, config=replace(config, noise_multiplier=noise_for_target(plan, cfg.num_rounds)))
    return plan


def model_for(cfg: RunConfig, run_config: dict[str, Any], in_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The run's model, the same in every process; under DP-SGD with GroupNorm for BatchNorm (Opacus)."""
    model = build_model(cfg.model, in_shape, 10, cfg.seed)
    return make_private_model(model) if dpsgd_config(run_config).enabled else model


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
    """The training examples that client ``partition_id`` holds, as its model takes them (``features``:
    computed by the client from its own images)."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id={partition_id} is outside [0, num-clients={cfg.num_clients})")
    train, _ = load_dataset(cfg.dataset, cfg.data_dir)
    parts = client_partitions(
        cfg.dataset, cfg.data_dir, cfg.partition, cfg.num_clients, cfg.seed, cfg.alpha, cfg.shards_per_client
    )
    return with_features(train.subset(parts[partition_id]), cfg.features)


def server_test_set(cfg: RunConfig) -> TensorData:
    """The server's held-out test set, as the model takes it."""
    _, test = load_dataset(cfg.dataset, cfg.data_dir)
    return with_features(test, cfg.features)


def make_evaluate_fn(cfg: RunConfig, test: TensorData, model: torch.nn.Module):
    """Server-side evaluation of the global model on the held-out test set, on the rounds ``cfg.evaluates``."""
    model = copy.deepcopy(model)
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
    test = server_test_set(cfg)
    model = model_for(cfg, run_config, test.in_shape)
    options = dict(
        initial_arrays=model_to_arrays(model),
        evaluate_fn=make_evaluate_fn(cfg, test, model),
        fraction_fit=cfg.fraction_fit,
        min_fit_clients=cfg.min_fit_clients,
        min_available_clients=cfg.min_fit_clients,
        fraction_evaluate=0.0,  # the server scores the global model on its held-out test set
        seed=cfg.seed,
        aggregation=cfg.aggregation,
        trim_fraction=cfg.trim_fraction,
        num_malicious_clients=cfg.num_malicious_clients,
        dpsgd=dpsgd_plan(cfg, run_config),
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
    model = model_for(cfg, run_config, data.in_shape)
    device, seed = pick_device(cfg.device), client_seed(cfg.seed, partition_id)
    setup = ClientSetup(cfg, run_config, model, data, device, seed, partition_id, context)
    return algorithm.client(setup)
