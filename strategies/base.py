"""What every strategy here shares: client sampling, reply validation and per-round records.

A record is one dict per round: test accuracy and loss, bytes sent to and received from clients
(counted from the serialized arrays, i.e. the ``np.save`` blobs Flower actually carries), failures
and wall time. ``on_round`` receives each record as soon as its round's evaluation is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

EvaluateFn = Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]
RoundCallback = Callable[[dict[str, Any]], None]


def parameters_nbytes(parameters: Parameters) -> int:
    """Bytes of a Parameters message as serialized: the sum of its tensor blobs."""
    return int(sum(len(t) for t in parameters.tensors))


def sample_clients(
    client_manager: ClientManager, fraction: float, min_clients: int, timeout: int = 60
) -> list[ClientProxy]:
    """Sample max(fraction * available, min_clients) clients; fail clearly if fewer exist.

    SuperNodes of a deployment may connect late: wait up to ``timeout`` seconds for ``min_clients``.
    """
    if client_manager.num_available() < min_clients:
        client_manager.wait_for(min_clients, timeout=timeout)
    available = client_manager.num_available()
    wanted = max(int(fraction * available), min_clients)
    if wanted > available:
        raise ValueError(
            f"min-fit-clients={min_clients} samples more clients than exist ({available} connected); "
            "lower min-fit-clients or start more SuperNodes"
        )
    return client_manager.sample(num_clients=wanted, min_num_clients=wanted)


@dataclass
class Accepted:
    """A client reply that passed validation."""

    client: ClientProxy
    payload: Any  # what ``decode`` returned
    num_examples: int
    metrics: dict[str, Scalar]


@dataclass
class RoundRecorder:
    """Collects one round's bytes, failures and timing, and emits the round's record."""

    on_round: RoundCallback | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    _current: dict[str, Any] = field(default_factory=dict)
    _started: float = 0.0

    def start(self, server_round: int) -> None:
        self._started = time.perf_counter()
        self._current = {
            "round": server_round,
            "clients": 0,
            "failures": 0,
            "bytes_down": 0,
            "bytes_up": 0,
        }

    def sent(self, nbytes_each: int, num_clients: int = 1) -> None:
        self._current["bytes_down"] += nbytes_each * num_clients
        self._current["clients"] += num_clients

    def received(self, nbytes: int) -> None:
        self._current["bytes_up"] += nbytes

    def failed(self, reason: str) -> None:
        self._current["failures"] += 1
        log(WARNING, "round %s: client reply rejected: %s", self._current.get("round"), reason)

    def add(self, **values: Any) -> None:
        self._current.update(values)

    def finish(self, server_round: int, loss: float | None, metrics: dict[str, Scalar]) -> dict[str, Any]:
        """Close the round (round 0 is the initial model) and hand its record to ``on_round``."""
        if self._current.get("round") != server_round:
            self.start(server_round)
        record = dict(self._current)
        clients = max(record["clients"], 1)
        record["bytes_up_per_client"] = record["bytes_up"] / clients
        record["bytes_down_per_client"] = record["bytes_down"] / clients
        previous = self.history[-1] if self.history else {"cum_bytes_up": 0, "cum_bytes_down": 0}
        record["cum_bytes_up"] = previous["cum_bytes_up"] + record["bytes_up"]
        record["cum_bytes_down"] = previous["cum_bytes_down"] + record["bytes_down"]
        record["test_loss"] = loss
        record["test_accuracy"] = metrics.get("accuracy")
        record.update({k: v for k, v in metrics.items() if k != "accuracy"})
        record["wall_time_s"] = time.perf_counter() - self._started if server_round > 0 else 0.0
        self.history.append(record)
        log(
            INFO,
            "round %d: test accuracy %s, loss %s, %d clients, %d failures, bytes up %d, down %d, %.1f s",
            server_round,
            "n/a" if record["test_accuracy"] is None else f"{record['test_accuracy']:.4f}",
            "n/a" if loss is None else f"{loss:.4f}",
            record["clients"],
            record["failures"],
            record["bytes_up"],
            record["bytes_down"],
            record["wall_time_s"],
        )
        if self.on_round is not None:
            self.on_round(record)
        self._current = {}
        return record


def validate_replies(
    results: list[tuple[ClientProxy, FitRes]],
    failures: list[tuple[ClientProxy, FitRes] | BaseException],
    decode: Callable[[list[np.ndarray]], Any],
    recorder: RoundRecorder,
) -> list[Accepted]:
    """Decode and check every reply with ``decode``; a bad one becomes a logged failure, not an update."""
    for failure in failures:
        recorder.failed(repr(failure) if isinstance(failure, BaseException) else "client returned an error status")
    accepted = []
    for client, res in sorted(results, key=lambda r: str(r[0].cid)):
        recorder.received(parameters_nbytes(res.parameters))
        try:
            if not isinstance(res.num_examples, int) or res.num_examples <= 0:
                raise ValueError(f"num_examples={res.num_examples!r} must be a positive integer")
            payload = decode(parameters_to_ndarrays(res.parameters))
        except Exception as err:  # any malformed reply is that client's failure, never the round's
            recorder.failed(f"client {client.cid}: {err}")
            continue
        accepted.append(Accepted(client, payload, res.num_examples, dict(res.metrics or {})))
    return accepted


def mean_metric(accepted: list[Accepted], key: str) -> float | None:
    """Example-weighted mean of a numeric client metric, or None if no client reported it."""
    pairs = [(a.metrics[key], a.num_examples) for a in accepted if isinstance(a.metrics.get(key), (int, float))]
    if not pairs:
        return None
    return float(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))


def fit_instructions(
    clients: list[ClientProxy], parameters: Parameters, config: dict[str, Scalar]
) -> list[tuple[ClientProxy, FitIns]]:
    return [(c, FitIns(parameters, dict(config))) for c in clients]


class RecordingStrategy(Strategy):
    """Common ground of this package's strategies: sampling, server-side evaluation, round records.

    Subclasses implement ``configure_fit`` and ``aggregate_fit`` (the algorithm); evaluation on the
    server's test set (``evaluate_fn``, Flower's signature) closes each round's record. Federated
    (client-side) evaluation is not used: every round is scored on the server's held-out set.
    """

    def __init__(
        self,
        *,
        initial_arrays: list[np.ndarray],
        evaluate_fn: EvaluateFn | None,
        fraction_fit: float,
        min_fit_clients: int,
        on_round: RoundCallback | None,
    ) -> None:
        super().__init__()
        if not 0 < fraction_fit <= 1:
            raise ValueError(f"fraction_fit={fraction_fit} must be in (0, 1]")
        if min_fit_clients < 1:
            raise ValueError(f"min_fit_clients={min_fit_clients} must be >= 1")
        self.initial_arrays = [np.asarray(a, dtype=np.float32) for a in initial_arrays]
        self.evaluate_fn = evaluate_fn
        self.fraction_fit = fraction_fit
        self.min_fit_clients = min_fit_clients
        self.recorder = RoundRecorder(on_round)
        self.sample_timeout = 60

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished round (round 0 is the initial model)."""
        return self.recorder.history

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction_fit={self.fraction_fit}, min_fit_clients={self.min_fit_clients})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.initial_arrays)

    def sample(self, server_round: int, client_manager: ClientManager) -> list[ClientProxy]:
        """Open the round's record and sample its clients."""
        self.recorder.start(server_round)
        return sample_clients(client_manager, self.fraction_fit, self.min_fit_clients, self.sample_timeout)

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
