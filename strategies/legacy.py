"""The adapter onto Flower's legacy API: ``flwr.server.strategy.Strategy``, talking to ``NumPyClient``s.

The design card's API, and the one SecAgg+ needs. Parameters become lists of arrays, FitRes become
:class:`~flwr_privacy.strategies.base.Reply` objects, and the algorithm (an ``AlgorithmRounds``) does
the rest. Server-side evaluation (``evaluate_fn``, Flower's legacy signature) closes each round's
record; client-side evaluation runs on ``fraction_evaluate`` of the clients, as Flower's FedAvg does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

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
from flwr_privacy.strategies.base import (
    MAX_EXAMPLES_RATIO,
    MAX_FAILED_ROUNDS,
    MAX_UPDATE_RATIO,
    AlgorithmRounds,
    Reply,
    RoundCallback,
    RoundRecorder,
    aggregate_round,
    check_evaluation,
    check_reply_bounds,
    check_sampling,
    check_train_sampling,
    evaluation_summary,
    mean_metric,
    sample_ids,
    short_reason,
)
from flwr_privacy.strategies.layers import layer_of_caller
from flwr_privacy.strategies.robust import NUM_MALICIOUS_CLIENTS, TRIM_FRACTION

from flwr_privacy.privacy.dpsgd import DPSGDPlan

EvaluateFn = Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]
FitConfigFn = Callable[[int], dict[str, Scalar]]


def parameters_nbytes(parameters: Parameters) -> int:
    """Bytes of a Parameters message as serialized: the sum of its tensor blobs."""
    return int(sum(len(t) for t in parameters.tensors))


def legacy_reply(client: ClientProxy, res: FitRes | EvaluateRes) -> Reply:
    parameters = getattr(res, "parameters", None)
    return Reply(
        client=str(client.cid),
        arrays=(lambda: parameters_to_ndarrays(parameters)) if parameters is not None else None,
        num_examples=res.num_examples,
        metrics=dict(res.metrics or {}),
        nbytes=parameters_nbytes(parameters) if parameters is not None else 0,
    )


def failure_reply(failure: tuple[ClientProxy, Any] | BaseException) -> Reply:
    if isinstance(failure, BaseException):
        return Reply(client="?", arrays=None, num_examples=0, metrics={}, error=short_reason(repr(failure)))
    client, res = failure
    message = getattr(getattr(res, "status", None), "message", "") or "client returned an error status"
    return Reply(client=str(client.cid), arrays=None, num_examples=0, metrics={}, error=message)


class LegacyStrategy(Strategy):
    """A legacy Flower Strategy over an ``AlgorithmRounds``: sampling, evaluation and round records.

    Defaults are Flower's (``fraction_fit=1.0``, ``min_fit_clients=2`` ...). ``seed`` makes client
    sampling reproducible; ``max_failed_rounds`` consecutive rounds with every reply rejected stop the
    run with a ``FederationError`` naming the reason. ``dpsgd`` (a ``flwr_privacy.privacy.dpsgd.DPSGDPlan``)
    has every client train with DP-SGD and the server's ledger report what each node spent.
    """

    def __init__(
        self,
        rounds: AlgorithmRounds,
        *,
        evaluate_fn: EvaluateFn | None = None,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 2,
        min_evaluate_clients: int = 2,
        min_available_clients: int = 2,
        on_fit_config_fn: FitConfigFn | None = None,
        on_evaluate_config_fn: FitConfigFn | None = None,
        seed: int | None = None,
        max_failed_rounds: int = MAX_FAILED_ROUNDS,
        max_update_ratio: float = MAX_UPDATE_RATIO,
        max_examples_ratio: float = MAX_EXAMPLES_RATIO,
        aggregation: str = "mean",
        trim_fraction: float = TRIM_FRACTION,
        num_malicious_clients: int = NUM_MALICIOUS_CLIENTS,
        dpsgd: DPSGDPlan | None = None,
        on_round: RoundCallback | None = None,
    ) -> None:
        super().__init__()
        check_train_sampling(fraction_fit, min_fit_clients, "fraction_fit", "min_fit_clients")
        check_sampling(fraction_evaluate, min_evaluate_clients, "evaluate")
        check_reply_bounds(
            max_failed_rounds, max_update_ratio, max_examples_ratio, aggregation, trim_fraction, num_malicious_clients
        )
        self.max_update_ratio, self.max_examples_ratio = max_update_ratio, max_examples_ratio
        self.aggregation, self.trim_fraction = aggregation, trim_fraction
        self.num_malicious_clients = num_malicious_clients
        self.rounds = rounds
        rounds.max_update_ratio, rounds.max_examples_ratio = max_update_ratio, max_examples_ratio
        rounds.aggregation, rounds.trim_fraction = aggregation, trim_fraction
        rounds.num_malicious_clients = num_malicious_clients
        rounds.ledger.plan = dpsgd
        self.evaluate_fn = evaluate_fn
        self.fraction_fit = fraction_fit
        self.fraction_evaluate = fraction_evaluate
        self.min_fit_clients = min_fit_clients
        self.min_evaluate_clients = min_evaluate_clients
        self.min_available_clients = min_available_clients
        self.on_fit_config_fn = on_fit_config_fn
        self.on_evaluate_config_fn = on_evaluate_config_fn
        self.seed = seed
        self.recorder = RoundRecorder(on_round, max_failed_rounds)
        rounds.recorder = self.recorder
        self.sample_timeout = 60
        self.round_offset = 0  # rounds already done before Flower's round 1 (a resumed run)

    def state_dict(self) -> dict[str, Any]:
        """Everything the server holds after the last finished round: the algorithm's state (global model,
        momentum, counters, versions, privacy ledger) and the records so far; ``load_state_dict`` resumes."""
        return {
            "round": self.history[-1]["round"] if self.history else 0,
            "rounds": self.rounds.snapshot(),
            "history": copy.deepcopy(self.history),
            "failed_in_a_row": self.recorder.failed_in_a_row,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["round"]``: Flower's round k is then round k + that. The clients are new
        processes whose own state is gone (``AlgorithmRounds.resumed``)."""
        self.rounds.restore(state["rounds"])
        self.rounds.resumed()
        self.recorder.history = list(state["history"])
        self.recorder.failed_in_a_row = int(state["failed_in_a_row"])
        self.round_offset = int(state["round"])

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished round (round 0 is the initial model)."""
        return self.recorder.history

    @property
    def initial_arrays(self) -> list[np.ndarray]:
        return self.rounds.initial_arrays

    def global_arrays(self) -> list[np.ndarray]:
        return self.rounds.global_arrays()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction_fit={self.fraction_fit}, min_fit_clients={self.min_fit_clients})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        self.rounds.join(layer_of_caller())  # Flower's DP wrappers delegate this call: entered, or refused
        return ndarrays_to_parameters(self.rounds.global_arrays())

    def take_model(self, parameters: Parameters) -> None:
        """The model Flower hands over, where it is the global one (``AlgorithmRounds.takes_released_model``)."""
        if self.rounds.takes_released_model:
            self.rounds.adopt(parameters_to_ndarrays(parameters))

    def sample(self, client_manager: ClientManager, fraction: float, minimum: int, server_round: int, purpose: str):
        """Wait for enough clients (SuperNodes of a deployment may connect late), then sample by the seed."""
        needed = max(minimum, self.min_available_clients if fraction else 0)
        if client_manager.num_available() < needed:
            client_manager.wait_for(needed, timeout=self.sample_timeout)
        available = client_manager.all()
        chosen = sample_ids(list(available), fraction, minimum, self.seed, server_round, purpose)
        return [available[cid] for cid in chosen]

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.rounds.join(layer_of_caller())  # SecAgg+'s workflow calls this one
        self.take_model(parameters)
        server_round += self.round_offset
        self.recorder.start(server_round)
        clients = self.sample(client_manager, self.fraction_fit, self.min_fit_clients, server_round, "train")
        extra = self.on_fit_config_fn(server_round) if self.on_fit_config_fn is not None else {}
        dense = None
        instructions = []
        configured = self.rounds.configure(server_round, [str(c.cid) for c in clients])
        for client, (payload, config) in zip(clients, configured):
            if payload is None:
                dense = dense or ndarrays_to_parameters(self.rounds.global_arrays())
                parameters = dense
            else:
                parameters = ndarrays_to_parameters(payload)
            self.recorder.sent(parameters_nbytes(parameters))
            instructions.append((client, FitIns(parameters, {**extra, **config, **self.rounds.instruction_settings()})))
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        server_round += self.round_offset
        replies = [failure_reply(f) for f in failures] + [legacy_reply(c, r) for c, r in results]
        applied = aggregate_round(self.rounds, replies, server_round)
        self.recorder.add(train_loss=mean_metric(applied, "train_loss"))
        self.recorder.aggregated(len(applied))
        if not applied:
            return None, {}
        return ndarrays_to_parameters(self.rounds.global_arrays()), {"accepted": len(applied)}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0 and self.round_offset:  # a resumed run: its starting model is already recorded
            return None
        self.take_model(parameters)
        server_round += self.round_offset
        result = None
        if self.evaluate_fn is not None:
            result = self.evaluate_fn(server_round, self.rounds.global_arrays(), {})
            if result is not None and check_evaluation(self.rounds, server_round, [result[0], *result[1].values()]):
                result = self.evaluate_fn(server_round, self.rounds.global_arrays(), {})
        loss, metrics = result if result is not None else (None, {})
        self.recorder.finish(server_round, loss, metrics)
        return result

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if self.fraction_evaluate == 0:
            return []
        server_round += self.round_offset
        clients = self.sample(
            client_manager, self.fraction_evaluate, self.min_evaluate_clients, server_round, "evaluate"
        )
        config: dict[str, Scalar] = {"server_round": server_round}
        if self.on_evaluate_config_fn is not None:
            config.update(self.on_evaluate_config_fn(server_round))
        ins = EvaluateIns(ndarrays_to_parameters(self.rounds.global_arrays()), config)
        return [(client, ins) for client in clients]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        server_round += self.round_offset
        replies = [failure_reply(f) for f in failures]
        for client, res in results:
            reply = legacy_reply(client, res)
            reply.metrics = {**reply.metrics, "loss": res.loss}
            replies.append(reply)
        summary = evaluation_summary(replies, server_round)
        return summary.pop("loss", None), summary
