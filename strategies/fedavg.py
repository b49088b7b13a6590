"""FedAvg (McMahan et al. 2017) as a Flower Strategy, with validated replies and per-round records."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from flwr_privacy.algorithms.fedavg import weighted_average
from flwr_privacy.compression.dense import DenseCodec
from strategies.base import (
    EvaluateFn,
    RoundCallback,
    RoundRecorder,
    fit_instructions,
    mean_metric,
    parameters_nbytes,
    sample_clients,
    validate_replies,
)


class FedAvg(Strategy):
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
        super().__init__()
        if not 0 < fraction_fit <= 1:
            raise ValueError(f"fraction_fit={fraction_fit} must be in (0, 1]")
        if min_fit_clients < 1:
            raise ValueError(f"min_fit_clients={min_fit_clients} must be >= 1")
        self.codec = DenseCodec(tuple(a.shape for a in initial_arrays), dtype)
        self.initial_arrays = [np.asarray(a, dtype=np.float32) for a in initial_arrays]
        self.evaluate_fn = evaluate_fn
        self.fraction_fit = fraction_fit
        self.min_fit_clients = min_fit_clients
        self.on_fit_config_fn = on_fit_config_fn
        self.recorder = RoundRecorder(on_round)

    @property
    def history(self) -> list[dict]:
        return self.recorder.history

    def __repr__(self) -> str:
        return f"FedAvg(fraction_fit={self.fraction_fit}, min_fit_clients={self.min_fit_clients})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.codec.encode(self.initial_arrays))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.recorder.start(server_round)
        clients = sample_clients(client_manager, self.fraction_fit, self.min_fit_clients)
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
        train_loss = mean_metric(accepted, "train_loss")
        self.recorder.add(train_loss=train_loss, accepted=len(accepted))
        if not accepted:
            return None, {}
        average = weighted_average([a.arrays for a in accepted], [a.num_examples for a in accepted])
        return ndarrays_to_parameters(self.codec.encode(average)), {"accepted": len(accepted)}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        result = None
        if self.evaluate_fn is not None:
            result = self.evaluate_fn(server_round, parameters_to_ndarrays(parameters), {})
        loss, metrics = result if result is not None else (None, {})
        self.recorder.finish(server_round, loss, metrics)
        return result

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}
