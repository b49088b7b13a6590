"""FedAvg (McMahan et al. 2017) as a Flower Strategy, with validated replies and per-round records."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from flwr_privacy.algorithms.fedavg import weighted_average
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.strategies.base import (
    EvaluateFn,
    RecordingStrategy,
    RoundCallback,
    fit_instructions,
    mean_metric,
    parameters_nbytes,
    validate_replies,
)


class FedAvg(RecordingStrategy):
    """Sample a fraction C of clients, let them train, average their models weighted by examples.

    ``initial_arrays`` is the global model in wire order; every reply is checked against its shapes,
    dtype (``dtype``, float32 by default) and finiteness before it may count. ``evaluate_fn`` runs the
    server-side test every round (Flower's signature: ``(round, arrays, config) -> (loss, metrics)``).
    """

    def __init__(
        self,
        *,
        initial_arrays: list[np.ndarray],
        evaluate_fn: EvaluateFn | None = None,
        fraction_fit: float = 0.1,
        min_fit_clients: int = 1,
        on_fit_config_fn: Callable[[int], dict[str, Scalar]] | None = None,
        dtype: str = "float32",
        on_round: RoundCallback | None = None,
    ) -> None:
        super().__init__(
            initial_arrays=initial_arrays,
            evaluate_fn=evaluate_fn,
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            on_round=on_round,
        )
        self.codec = DenseCodec(tuple(a.shape for a in initial_arrays), dtype)
        self.on_fit_config_fn = on_fit_config_fn

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.codec.encode(self.initial_arrays))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        clients = self.sample(server_round, client_manager)
        config = {"server_round": server_round}
        if self.on_fit_config_fn is not None:
            config.update(self.on_fit_config_fn(server_round))
        self.recorder.sent(parameters_nbytes(parameters), len(clients))
        return fit_instructions(clients, parameters, config)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        accepted = validate_replies(results, failures, self.codec.decode, self.recorder)
        self.recorder.add(train_loss=mean_metric(accepted, "train_loss"), accepted=len(accepted))
        if not accepted:
            return None, {}
        average = weighted_average([a.payload for a in accepted], [a.num_examples for a in accepted])
        return ndarrays_to_parameters(self.codec.encode(average)), {"accepted": len(accepted)}
