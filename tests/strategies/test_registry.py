"""The algorithm registry: a researcher's algorithm registered from outside the package, run end to end.

Everything below uses the public API only (``flwr_privacy.registry``, ``flwr_privacy.strategies``,
``flwr_privacy.clients``, ``flwr_privacy.compression``, the runner's setups); no file of the package
changes. It is the example ``docs/extending.md`` walks through.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from flwr.server.strategy.aggregate import aggregate_trimmed_avg
from flwr_privacy.clients import FedAvgClient
from flwr_privacy.strategies.base import AlgorithmRounds
from flwr_privacy.strategies.legacy import LegacyStrategy

from experiments.algorithms import ClientSetup, ServerSetup
from experiments.federation import validate_run_config
from flwr_privacy import registry
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.registry import Algorithm


@dataclass(frozen=True)
class TrimmedMeanConfig:
    """Coordinate-wise trimmed mean (Yin et al. 2018): ``beta`` of the values cut at each end."""

    beta: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"TrimmedMeanConfig.beta={self.beta!r} is invalid: must be in [0, 0.5)")


class TrimmedMeanRounds(AlgorithmRounds):
    def __init__(self, initial_arrays, config: TrimmedMeanConfig) -> None:
        super().__init__(initial_arrays)
        self.codec = DenseCodec(tuple(self.shapes))
        self.config = config
        self.model = list(self.initial_arrays)

    def configure(self, server_round, clients):
        return [(None, {"server_round": server_round}) for _ in clients]

    def decode(self, arrays):
        return self.codec.decode(arrays)

    def aggregate(self, server_round, accepted):
        # Flower ships the rule: reuse its aggregation function.
        self.model = aggregate_trimmed_avg([(a.payload, a.num_examples) for a in accepted], self.config.beta)
        return accepted

    def global_arrays(self):
        return self.model


def trimmed_mean_strategy(setup: ServerSetup) -> LegacyStrategy:
    return LegacyStrategy(TrimmedMeanRounds(setup.options.pop("initial_arrays"), setup.config), **setup.options)


def trimmed_mean_client(setup: ClientSetup) -> FedAvgClient:
    return FedAvgClient(setup.model, setup.data, settings=setup.cfg.sgd, device=setup.device, seed=setup.seed)


@pytest.fixture
def trimmed_mean():
    algorithm = registry.register(
        Algorithm("trimmedmean", trimmed_mean_strategy, trimmed_mean_client, TrimmedMeanConfig)
    )
    yield algorithm
    registry.unregister("trimmedmean")


def test_an_algorithm_registered_from_outside_runs_end_to_end(trimmed_mean, federation):
    fed = federation("trimmedmean", **{"num-clients": 5, "num-rounds": 3, "trimmedmean.beta": 0.2})
    history = fed.run()
    assert [r["accepted"] for r in history[1:]] == [5, 5, 5]
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.5


def test_its_settings_are_validated_by_its_config_class(trimmed_mean):
    base = {"strategy": "trimmedmean", "model": "mlp", "device": "cpu"}
    with pytest.raises(ValueError, match=r"beta=0.7 is invalid"):
        validate_run_config({**base, "trimmedmean.beta": 0.7})
    with pytest.raises(ValueError, match=r"unknown run-config keys \['trimmedmean.gamma'\]"):
        validate_run_config({**base, "trimmedmean.gamma": 1})
    assert trimmed_mean.keys == ["trimmedmean.beta"]


def test_an_unknown_algorithm_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"strategy='fedprox' is unknown; allowed: \['dgc', 'dssgd', 'fedavg'\]"):
        validate_run_config({"strategy": "fedprox"})
    with pytest.raises(ValueError, match=r"unknown run-config sections \['fedprox'\]"):
        validate_run_config({"strategy": "fedavg", "fedprox.mu": 0.1})


def test_a_name_is_taken_once():
    with pytest.raises(ValueError, match="'dgc' is already registered"):
        registry.register(registry.get("dgc"))
    with pytest.raises(ValueError, match="must be a non-empty word"):
        Algorithm("my.algo", trimmed_mean_strategy, trimmed_mean_client)
