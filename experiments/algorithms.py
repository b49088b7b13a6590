"""The built-in algorithms, registered in ``flwr_privacy.registry``, and what their factories receive.

``ServerSetup`` and ``ClientSetup`` are what the runner has built from a run config before it asks an
algorithm for its strategy or its client: the model, the data, the device, the algorithm's own config
and the options every strategy takes. A new algorithm writes two functions over them and registers
(``docs/extending.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.common import Context
from flwr_privacy.clients import DGCClient, DSSGDClient, FedAvgClient
from flwr_privacy.strategies import DGC, DSSGD, FedAvg
from torch import nn

from flwr_privacy.algorithms.dgc import DGCConfig
from flwr_privacy.algorithms.dssgd import DSSGDConfig
from flwr_privacy.config import RunConfig
from flwr_privacy.data import TensorData
from flwr_privacy.registry import Algorithm, register
from flwr_privacy.wire import trainable_mask


@dataclass(frozen=True)
class ServerSetup:
    """What a strategy factory gets.

    ``options`` are the keyword arguments every ``flwr_privacy.strategies`` strategy takes
    (``initial_arrays``, ``evaluate_fn``, ``fraction_fit``, ``min_fit_clients``, ``seed``, ``on_round`` ...).
    """

    cfg: RunConfig
    run_config: dict[str, Any]
    model: nn.Module
    config: Any  # the algorithm's config object (None if it has no config class)
    options: dict[str, Any]


@dataclass(frozen=True)
class ClientSetup:
    """What a client factory gets: this node's data and model, the device, a per-client seed, its context."""

    cfg: RunConfig
    run_config: dict[str, Any]
    model: nn.Module
    data: TensorData
    device: Any
    seed: int
    partition_id: int
    context: Context


def fedavg_strategy(s: ServerSetup) -> FedAvg:
    return FedAvg(**s.options, dtype=s.cfg.wire_dtype)


def fedavg_client(s: ClientSetup) -> FedAvgClient:
    return FedAvgClient(
        s.model, s.data, settings=s.cfg.sgd, local_epochs=s.cfg.local_epochs, device=s.device, seed=s.seed,
        state=s.context.state,
    )


def dgc_config(values: dict[str, Any], cfg: RunConfig) -> DGCConfig:
    """The schedule is a comma-separated string, clip-norm 0 is off, and num-workers 0 means the clients
    sampled per round (the N of local gradient clipping)."""
    if values.get("num_workers", 0) == 0:
        values = {**values, "num_workers": cfg.clients_per_round}
    return DGCConfig(**values)


def dgc_strategy(s: ServerSetup) -> DGC:
    return DGC(
        **s.options,
        trainable=trainable_mask(s.model),
        config=s.config,
        lr=s.cfg.lr,
        value_dtype=s.cfg.wire_dtype,
        downlink=s.cfg.downlink,
    )


def dgc_client(s: ClientSetup) -> DGCClient:
    return DGCClient(
        s.model,
        s.data,
        state=s.context.state,
        local_steps=s.cfg.local_steps,
        batch_size=s.cfg.batch_size,
        device=s.device,
        seed=s.seed,
        augment=s.cfg.augment,
    )


def dssgd_strategy(s: ServerSetup) -> DSSGD:
    return DSSGD(**s.options, trainable=trainable_mask(s.model), config=s.config, value_dtype=s.cfg.wire_dtype)


def dssgd_client(s: ClientSetup) -> DSSGDClient:
    return DSSGDClient(
        s.model,
        s.data,
        state=s.context.state,
        settings=s.cfg.sgd,
        local_epochs=s.cfg.local_epochs,
        device=s.device,
        seed=s.seed,
        partition_id=s.partition_id,
    )


BUILT_IN = (
    Algorithm("fedavg", fedavg_strategy, fedavg_client),
    Algorithm("dgc", dgc_strategy, dgc_client, DGCConfig, dgc_config, dpsgd_steps="steps"),
    Algorithm("dssgd", dssgd_strategy, dssgd_client, DSSGDConfig),
)
for _algorithm in BUILT_IN:
    register(_algorithm, replace=True)
