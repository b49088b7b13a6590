"""From a run config to the strategy (server side) and the client (client side) it names."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from flwr.common import Context

from flwr_privacy.clients.dgc import DGCClient
from flwr_privacy.clients.dssgd import DSSGDClient
from flwr_privacy.clients.fedavg import FedAvgClient, client_seed
from flwr_privacy.algorithms.dgc import DGCConfig
from flwr_privacy.algorithms.dssgd import DSSGDConfig
from flwr_privacy.config import RunConfig, section
from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.models import build_model
from flwr_privacy.partition import partition
from flwr_privacy.training import evaluate, pick_device
from flwr_privacy.wire import arrays_to_model, model_to_arrays, trainable_mask
from flwr_privacy.strategies import DGC, DSSGD, FedAvg
from flwr_privacy.strategies.base import RoundCallback


def dgc_config(run_config: dict[str, Any], cfg: RunConfig) -> DGCConfig:
    """DGCConfig from the ``dgc.*`` keys: the schedule is a comma-separated string, clip-norm 0 is off,
    and num-workers 0 means the clients sampled per round (the N of the N^(-1/2) clipping scale)."""
    values = section(run_config, "dgc", DGCConfig)
    if values.get("num_workers", 0) == 0:
        values["num_workers"] = cfg.clients_per_round
    return DGCConfig(**values)


def dssgd_config(run_config: dict[str, Any], cfg: RunConfig) -> DSSGDConfig:
    return DSSGDConfig(**section(run_config, "dssgd", DSSGDConfig))


ALGORITHM_SECTIONS = {"dgc": dgc_config, "dssgd": dssgd_config}


def validate_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Check every key of a run config, the algorithms' sections included, before anything trains."""
    cfg = RunConfig.from_run_config(run_config)
    sections = {k.split(".", 1)[0] for k in run_config if "." in k}
    unknown = sections - set(ALGORITHM_SECTIONS)
    if unknown:
        raise ValueError(f"unknown run-config sections {sorted(unknown)}; allowed: {sorted(ALGORITHM_SECTIONS)}")
    for build in ALGORITHM_SECTIONS.values():
        build(run_config, cfg)
    return cfg


@lru_cache(maxsize=4)
def client_partitions(
    dataset: str, data_dir: str, method: str, num_clients: int, seed: int, alpha: float, shards: int
) -> list[np.ndarray]:
    train, _ = load_dataset(dataset, data_dir)
    return partition(train.y.numpy(), num_clients, method, seed, alpha, shards)


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
    """Server-side evaluation of the global model on the held-out test set."""
    model = build_model(cfg.model, test.in_shape, 10, cfg.seed)
    device = pick_device(cfg.device)

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict]:
        arrays_to_model(model, arrays)
        loss, accuracy = evaluate(model, test, device)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def make_strategy(cfg: RunConfig, run_config: dict[str, Any], on_round: RoundCallback | None = None):
    """The Flower Strategy a run config names, initialised with the seeded global model."""
    _, test = load_dataset(cfg.dataset, cfg.data_dir)
    model = build_model(cfg.model, test.in_shape, 10, cfg.seed)
    common = dict(
        initial_arrays=model_to_arrays(model),
        evaluate_fn=make_evaluate_fn(cfg, test),
        fraction_fit=cfg.fraction_fit,
        min_fit_clients=cfg.min_fit_clients,
        min_available_clients=cfg.min_fit_clients,
        fraction_evaluate=0.0,  # every round is scored on the server's held-out test set
        seed=cfg.seed,
        on_round=on_round,
    )
    if cfg.strategy == "fedavg":
        return FedAvg(**common, dtype=cfg.wire_dtype)
    if cfg.strategy == "dgc":
        return DGC(
            **common,
            trainable=trainable_mask(model),
            config=dgc_config(run_config, cfg),
            lr=cfg.lr,
            value_dtype=cfg.wire_dtype,
            downlink=cfg.downlink,
        )
    return DSSGD(
        **common, trainable=trainable_mask(model), config=dssgd_config(run_config, cfg), value_dtype=cfg.wire_dtype
    )


def make_client(cfg: RunConfig, run_config: dict[str, Any], context: Context):
    """The NumPyClient a run config names, for the SuperNode this context belongs to."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num_partitions != cfg.num_clients:
        raise ValueError(
            f"num-clients={cfg.num_clients} but the federation has num-partitions={num_partitions}: make them equal"
        )
    data = client_data(cfg, partition_id)
    model = build_model(cfg.model, data.in_shape, 10, cfg.seed)
    device = pick_device(cfg.device)
    seed = client_seed(cfg.seed, partition_id)
    if cfg.strategy == "fedavg":
        return FedAvgClient(model, data, settings=cfg.sgd, local_epochs=cfg.local_epochs, device=device, seed=seed)
    if cfg.strategy == "dgc":
        return DGCClient(
            model,
            data,
            state=context.state,
            local_steps=cfg.local_steps,
            batch_size=cfg.batch_size,
            device=device,
            seed=seed,
            augment=cfg.augment,
        )
    return DSSGDClient(
        model,
        data,
        state=context.state,
        settings=cfg.sgd,
        local_epochs=cfg.local_epochs,
        device=device,
        seed=seed,
        partition_id=partition_id,
    )
