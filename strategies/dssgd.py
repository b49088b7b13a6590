"""Distributed Selective SGD (Shokri & Shmatikov, CCS 2015) as a Flower Strategy.

Order inside a round (the paper's participants upload asynchronously; a Flower round is a
synchronous exchange): every sampled participant downloads from the same global state (the theta_d
most-updated parameters, or all of them); the server then applies the accepted uploads one after
another in a fixed order (by client id), counting each update in stat_j; buffers are averaged;
finally the counters decay if the round number calls for it.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from flwr_privacy.algorithms.dssgd import DSSGDConfig, DSSGDServer
from flwr_privacy.algorithms.fedavg import weighted_average
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.wire import buffer_shapes, join_trainable, split_trainable
from flwr_privacy.strategies.base import (
    EvaluateFn,
    RecordingStrategy,
    RoundCallback,
    fit_instructions,
    mean_metric,
    parameters_nbytes,
    validate_replies,
)


class DSSGD(RecordingStrategy):
    """DSSGD's parameter server, with per-round privacy spend in the records (``epsilon``)."""

    def __init__(
        self,
        *,
        initial_arrays: list[np.ndarray],
        trainable: list[bool],
        config: DSSGDConfig,
        evaluate_fn: EvaluateFn | None = None,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        value_dtype: str = "float32",
        on_round: RoundCallback | None = None,
    ) -> None:
        super().__init__(
            initial_arrays=initial_arrays,
            evaluate_fn=evaluate_fn,
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            on_round=on_round,
        )
        self.config = config
        self.shapes = [a.shape for a in self.initial_arrays]
        self.trainable = list(trainable)
        weights, self.buffers = split_trainable(self.initial_arrays, self.trainable)
        self.server = DSSGDServer(weights, config)
        dense_shapes = buffer_shapes(self.shapes, self.trainable)
        self.codec = SparseUpdateCodec(weights.numel(), dense_shapes, value_dtype)
        self.spent: dict[str, float] = {}  # cumulative epsilon per participant (sequential composition)

    def global_arrays(self) -> list[np.ndarray]:
        return join_trainable(self.server.params, self.buffers, self.shapes, self.trainable)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        clients = self.sample(server_round, client_manager)
        if self.config.theta_d == 1:
            payload = ndarrays_to_parameters(self.global_arrays())
            config: dict[str, Scalar] = {"server_round": server_round, "download": "dense"}
        else:
            indices, values = self.server.serve_download()
            payload = ndarrays_to_parameters(self.codec.encode(indices, values, self.buffers))
            config = {"server_round": server_round, "download": "sparse"}
        self.recorder.sent(parameters_nbytes(payload), len(clients))
        return fit_instructions(clients, payload, config)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        accepted = validate_replies(results, failures, self.codec.decode, self.recorder)
        applied = []
        for a in accepted:
            indices, values, _ = a.payload
            try:
                self.server.apply_upload(indices, values)
            except ValueError as err:  # e.g. values outside [-gamma, gamma]: nothing was applied
                self.recorder.failed(f"client {a.client.cid}: {err}")
                continue
            applied.append(a)
        if applied and self.buffers:
            self.buffers = weighted_average([a.payload[2] for a in applied], [a.num_examples for a in applied])
        self.server.maybe_decay(server_round)
        self.record_privacy(applied)
        self.recorder.add(train_loss=mean_metric(applied, "train_loss"), accepted=len(applied))
        if not applied:
            return None, {}
        return ndarrays_to_parameters(self.global_arrays()), {"accepted": len(applied)}

    def record_privacy(self, applied) -> None:
        """Epsilon each participant spent this round, and the largest running total (basic composition)."""
        if not self.config.dp:
            return
        round_spend = [float(a.metrics.get("epsilon", math.inf)) for a in applied]
        for a, eps in zip(applied, round_spend):
            key = str(a.metrics.get("partition_id", a.client.cid))
            self.spent[key] = self.spent.get(key, 0.0) + eps
        self.recorder.add(
            epsilon=max(round_spend, default=0.0),
            epsilon_claimed=max((float(a.metrics.get("epsilon_claimed", math.inf)) for a in applied), default=0.0),
            epsilon_total_max=max(self.spent.values(), default=0.0),
        )
