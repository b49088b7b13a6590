"""FedAvg (McMahan et al. 2017) as a Flower Strategy, with validated replies and per-round records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr_privacy.strategies.base import Accepted, AlgorithmRounds, Config, check_update_norm, float_arrays
from flwr_privacy.strategies.layers import Layer
from flwr_privacy.strategies.legacy import LegacyStrategy
from flwr_privacy.strategies.robust import arrays_norm, median_norm_scales

from flwr_privacy.algorithms.fedavg import server_momentum_step, weighted_average
from flwr_privacy.compression.dense import DenseCodec


def check_server_momentum(beta: object) -> float:
    """FedAvgM's beta as a float, or a one-line refusal naming the value."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"server_momentum={beta!r} must be a number in [0, 1)")
    return float(beta)


class FedAvgRounds(AlgorithmRounds):
    """Every sampled client gets the global model; w <- sum_k (n_k / n) w_k over the accepted replies.

    Each reply is checked against the model's shapes, the uplink dtype (``dtype``: float32, or
    float16 to halve the upload) and finiteness. The global model and the downlink stay float32: with
    a float16 uplink clients send their change w_k - w (``uplink="delta"``) and the server adds the
    weighted mean of the changes to its float32 model, so a change far below float16's spacing at the
    weight's magnitude is not rounded away.
    """

    def __init__(
        self, initial_arrays: Sequence[np.ndarray], dtype: str = "float32", server_momentum: float = 0.0
    ) -> None:
        super().__init__(initial_arrays)
        self.codec = DenseCodec(tuple(self.shapes), dtype)
        self.model = [a.copy() for a in self.initial_arrays]
        self.server_momentum = check_server_momentum(server_momentum)
        self.velocity: list[np.ndarray] | None = None  # FedAvgM's v, after the first round with server momentum

    def settings(self) -> Config:
        return {"wire_dtype": self.codec.dtype, "uplink": "delta" if self.codec.dtype == "float16" else "model"}

    def configure(self, server_round: int, clients: Sequence[str]) -> list[tuple[None, Config]]:
        return [(None, {"server_round": server_round, **self.settings()}) for _ in clients]

    def payload_nbytes(self, server_round: int) -> int:
        itemsize = np.dtype(self.codec.dtype).itemsize
        return sum(itemsize * int(np.prod(shape)) + 128 for shape in self.shapes)

    def decode(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The client's model (or change, with a float16 uplink), its move bounded (``check_update_norm``).
        Under SecAgg+ every reply carries the round's aggregate, which Flower dequantizes to float64."""
        if self.layer is not None and self.layer.kind == "SecAgg+":
            arrays = [a.astype(self.codec.dtype) if a.dtype == np.float64 else a for a in arrays]
        decoded = self.codec.decode(arrays)
        change = decoded if self.sends_change() else [d.astype(np.float64) - w for d, w in zip(decoded, self.model)]
        check_update_norm(arrays_norm(change), arrays_norm(self.model), self.max_update_ratio)
        return decoded

    def aggregate(self, server_round: int, accepted: list[Accepted]) -> list[Accepted]:
        """w <- sum_k (n_k / n) w_k, or the strategy's robust rule (``flwr_privacy.strategies.robust``) over
        the clients' changes w_k - w: a coordinate-wise median or trimmed mean, their norms bounded, or the
        mean of those Krum kept."""
        examples = self.vote_weights(accepted)
        if self.aggregation == "mean" and not self.server_momentum:
            average = weighted_average([a.payload for a in accepted], examples)
            self.model = [w + d for w, d in zip(self.model, average)] if self.sends_change() else average
            return accepted
        changes = self.changes(accepted)
        if self.aggregation == "norm_bound":
            scales = median_norm_scales([arrays_norm(change) for change in changes])
            changes = [[c * scale for c in change] for change, scale in zip(changes, scales)]
        average = self.average_dense(changes, examples)
        if self.server_momentum:
            self.model, self.velocity = server_momentum_step(self.model, self.velocity, average, self.server_momentum)
        else:
            self.model = [(w + d).astype(np.float32) for w, d in zip(self.model, average)]
        return accepted

    def global_arrays(self) -> list[np.ndarray]:
        return self.model

    def enter(self, layer: Layer) -> None:
        """FedAvg runs inside Flower's client-level DP wrappers and SecAgg+ with plain averaging: a robust
        rule needs each client's update, which SecAgg+ hides and whose sensitivity the wrappers' noise
        (calibrated to a uniform mean) does not cover."""
        if self.aggregation != "mean":
            raise ValueError(
                f"aggregation={self.aggregation!r} cannot run inside Flower's {layer.name} ({layer.kind}): "
                "it needs each client's own update; use aggregation='mean'"
            )
        self.layer = layer

    secure_upload = "change"  # under SecAgg+ the clients' mod masks the change of the model it was sent

    def secure_shapes(self, server_round: int) -> list[tuple[int, ...]]:
        return list(self.shapes)

    def secure_payload(self, mean: list[np.ndarray]) -> list[np.ndarray]:
        """The global model moved by the unmasked mean change, as a client's model."""
        return [(w.astype(np.float64) + d).astype(np.float32) for w, d in zip(self.model, mean)]

    def adopt(self, arrays: Sequence[np.ndarray]) -> None:
        model = float_arrays(arrays)
        if [a.shape for a in model] != self.shapes:
            raise ValueError(f"the model Flower handed back has shapes {[a.shape for a in model]}, not {self.shapes}")
        self.model = model

    def sends_change(self) -> bool:
        """Whether clients send w_k - w (a float16 uplink) rather than w_k."""
        return self.settings()["uplink"] == "delta"

    def changes(self, accepted: Sequence[Accepted]) -> list[list[np.ndarray]]:
        """Each accepted client's change w_k - w."""
        return [a.payload if self.sends_change() else [p - w for p, w in zip(a.payload, self.model)] for a in accepted]

    def update_vectors(self, accepted: Sequence[Accepted]) -> np.ndarray:
        """The clients' changes w_k - w, each flattened into one row (Krum compares whole updates)."""
        return np.stack([np.concatenate([c.ravel() for c in change]) for change in self.changes(accepted)])


class FedAvg(LegacyStrategy):
    """FedAvg for ``NumPyClient``s: sample a fraction C of clients, average their models weighted by examples.

    Args:
        initial_arrays: the global model in wire order (``flwr_privacy.wire.model_to_arrays``); integer
            arrays (BatchNorm's ``num_batches_tracked``) are dropped, as they never travel.
        dtype: the uplink's value dtype, ``"float32"`` or ``"float16"``; sent to the clients each round.
        server_momentum: beta of FedAvgM (Hsu et al. 2019): v <- beta v + Delta, w <- w + v (0: FedAvg).
        **options: ``LegacyStrategy``'s (``evaluate_fn``, ``fraction_fit``, ``min_fit_clients``, ``seed`` ...).
    """

    def __init__(
        self, *, initial_arrays: Sequence[np.ndarray], dtype: str = "float32", server_momentum: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(FedAvgRounds(initial_arrays, dtype, server_momentum), **options)
