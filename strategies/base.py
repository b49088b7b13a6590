"""What every strategy here shares, whichever of Flower's two APIs it speaks.

An algorithm's server side is an :class:`AlgorithmRounds`: what to send each sampled client, how to
decode a reply, how to fold the accepted replies into the global model. It knows nothing of Flower's
message types; ``strategies.legacy`` (``Strategy`` / ``NumPyClient``) and ``strategies.message``
(``flwr.serverapp.strategy.Strategy``) translate Flower's messages into :class:`Reply` objects and
back, so both flavours run the same math, the same codecs, the same validation and the same records.

A record is one dict per round: test accuracy and loss, bytes sent to and received from clients
(counted from the serialized arrays Flower actually carries), failures and wall time. ``on_round``
receives each record as soon as its round's evaluation is done.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.common import log
from flwr_privacy.strategies.layers import Layer
from flwr_privacy.strategies.privacy import PrivacyLedger
from flwr_privacy.strategies.robust import (
    NUM_MALICIOUS_CLIENTS,
    TRIM_FRACTION,
    check_aggregation,
    coordinate_wise,
    krum_keep,
    sparse_locations,
    sparse_table,
)

from flwr_privacy.algorithms.fedavg import weighted_average

SparseUpdate = tuple[torch.Tensor, torch.Tensor]  # (indices, values)
RoundCallback = Callable[[dict[str, Any]], None]
Config = dict[str, Any]

# A round in which every reply is rejected is logged; this many in a row stop the run.
MAX_FAILED_ROUNDS = 3
# An update may move the global model by at most this many times its norm (floored at 1): far beyond any
# honest step, far below a model-wrecking one (values of 1e30, sign-flipped updates scaled by 1e6).
MAX_UPDATE_RATIO = 10.0
# A client's example count weighs at most this many times the round's median count (median_low: one
# inflated claim cannot lift it): unequal honest partitions keep their weights, a claim of 1e12 does not.
MAX_EXAMPLES_RATIO = 10.0
# What a client's error text is cut to in the log and in the final error (a traceback is kilobytes).
REASON_CHARS = 300


class FederationError(RuntimeError):
    """The federation cannot make progress (every reply rejected, round after round); the message says why."""


def short_reason(text: str) -> str:
    """One line from an error text: the last non-empty line of a traceback, cut to REASON_CHARS."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "no reason given"
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


def float_arrays(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The floating-point arrays of a model's state, as float32: integer buffers (BatchNorm's
    ``num_batches_tracked``) are local bookkeeping and never travel (``flwr_privacy.wire``)."""
    return [np.asarray(a, dtype=np.float32) for a in arrays if np.asarray(a).dtype.kind == "f"]


def check_sampling(fraction: float, minimum: int, name: str) -> None:
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction_{name}={fraction} must be in [0, 1]")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
        raise ValueError(f"min_{name}_clients={minimum!r} must be an integer >= 0")


def check_train_sampling(fraction: float, minimum: int, fraction_name: str, minimum_name: str) -> None:
    """The training side of sampling: a fraction in (0, 1] and a minimum of at least one client."""
    if not 0 < fraction <= 1:
        raise ValueError(f"{fraction_name}={fraction} must be in (0, 1]")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"{minimum_name}={minimum!r} must be an integer >= 1")


def check_reply_bounds(
    max_failed_rounds: int,
    max_update_ratio: float,
    max_examples_ratio: float,
    aggregation: str = "mean",
    trim_fraction: float = TRIM_FRACTION,
    num_malicious_clients: int = NUM_MALICIOUS_CLIENTS,
) -> None:
    """The options both adapters take that bound what a round accepts and how it is aggregated."""
    check_aggregation(aggregation, trim_fraction, num_malicious_clients)
    if max_failed_rounds < 1:
        raise ValueError(f"max_failed_rounds={max_failed_rounds} must be >= 1")
    if not max_update_ratio > 0:
        raise ValueError(f"max_update_ratio={max_update_ratio} must be > 0")
    if not max_examples_ratio >= 1:
        raise ValueError(f"max_examples_ratio={max_examples_ratio} must be >= 1")


def sample_ids(
    ids: Sequence[Any], fraction: float, minimum: int, seed: int | None, server_round: int, purpose: str = "train"
) -> list[Any]:
    """Sample max(fraction * len(ids), minimum) of the ids, in sorted order.

    With a seed the choice is a function of (seed, round, purpose) alone: two runs with the same seed and
    the same connected ids sample the same clients (Flower's own samplers use the unseeded ``random``).
    """
    ordered = sorted(ids)
    if fraction == 0:
        return []
    wanted = max(int(fraction * len(ordered)), minimum)
    if wanted > len(ordered):
        raise ValueError(
            f"min-fit-clients={minimum} samples more clients than exist ({len(ordered)} connected); "
            "lower min-fit-clients or start more SuperNodes"
        )
    rng = random.Random(f"{seed}:{server_round}:{purpose}") if seed is not None else random.SystemRandom()
    return sorted(rng.sample(ordered, wanted))


@dataclass
class Reply:
    """One client's answer as either API delivers it; nothing in it is trusted yet.

    ``arrays`` is called to deserialize the payload (so a reply rejected on its metadata is never
    decoded); ``error`` holds the client's own error text if it failed.
    """

    client: str
    arrays: Callable[[], list[np.ndarray]] | None
    num_examples: Any
    metrics: dict[str, Any]
    nbytes: int = 0
    error: str | None = None


@dataclass
class Accepted:
    """A client reply that passed validation."""

    client: str
    payload: Any  # what ``decode`` returned
    num_examples: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class MetricBound:
    """What a client may report under one metric key: a finite number in [low, high], an integer if said."""

    low: float = -1e12
    high: float = 1e12
    integer: bool = False


# Any metric without a bound of its own: a finite real number of sane magnitude (or a list of them).
ANY_METRIC = MetricBound()
# The weight of a Message-API reply, checked by check_num_examples.
WEIGHT_KEY = "num-examples"


def check_metrics(metrics: dict[str, Any], bounds: dict[str, MetricBound]) -> None:
    """Every metric a client reported is a number (not a bool, a string or NaN) within its bound; raises
    ValueError naming the key, the value and what is allowed. Nothing a client says is trusted."""
    for key, value in metrics.items():
        if key == WEIGHT_KEY:
            continue
        bound = bounds.get(key, ANY_METRIC)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or not isinstance(item, (int, float, np.integer, np.floating)):
                raise ValueError(f"metric {key}={value!r} must be a number")
            if not (math.isfinite(item) and bound.low <= item <= bound.high):
                raise ValueError(f"metric {key}={value!r} must be finite and in [{bound.low:g}, {bound.high:g}]")
            if bound.integer and float(item) != int(item):
                raise ValueError(f"metric {key}={value!r} must be an integer")


def check_update_norm(update_norm: float, weights_norm: float, ratio: float) -> None:
    """An update's L2 norm must stay within ``ratio`` times the global model's (at least ``ratio``)."""
    bound = ratio * max(weights_norm, 1.0)
    if not update_norm <= bound:
        raise ValueError(
            f"update norm {update_norm:.4g} is over {ratio:g} x the global model's norm {weights_norm:.4g} "
            f"(at least {ratio:g}): bound {bound:.4g}"
        )


def check_num_examples(value: Any) -> int:
    """A reply's example count: a positive int (not a bool, not a float that happens to be whole)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"num_examples={value!r} must be a positive integer")
    return int(value)


@dataclass
class RoundRecorder:
    """Collects one round's bytes, failures and timing, and emits the round's record."""

    on_round: RoundCallback | None = None
    max_failed_rounds: int = MAX_FAILED_ROUNDS
    history: list[dict[str, Any]] = field(default_factory=list)
    _current: dict[str, Any] = field(default_factory=dict)
    _reasons: list[str] = field(default_factory=list)
    failed_in_a_row: int = 0
    _started: float = 0.0

    def start(self, server_round: int) -> None:
        self._started = time.perf_counter()
        self._reasons = []
        self._current = {"round": server_round, "clients": 0, "failures": 0, "bytes_down": 0, "bytes_up": 0}

    def sent(self, nbytes_each: int, num_clients: int = 1) -> None:
        self._current["bytes_down"] += nbytes_each * num_clients
        self._current["clients"] += num_clients

    def received(self, nbytes: int) -> None:
        self._current["bytes_up"] += nbytes

    def protocol(self, down: int, up: int) -> None:
        """Bytes of a protocol's own messages (SecAgg+'s keys and shares), counted in the round's and apart."""
        for key, nbytes in (("bytes_down", down), ("bytes_up", up)):
            self._current[key] = self._current.get(key, 0) + nbytes
            self._current[f"secagg_{key}"] = self._current.get(f"secagg_{key}", 0) + nbytes

    @property
    def current_round(self) -> int:
        return int(self._current.get("round", 0))

    def failed(self, client: str, reason: str) -> None:
        reason = short_reason(reason)
        self._current["failures"] += 1
        self._reasons.append(reason)
        log(WARNING, "round %s: client %s: reply rejected: %s", self._current.get("round"), client, reason)

    def add(self, **values: Any) -> None:
        self._current.update(values)

    def aggregated(self, accepted: int) -> None:
        """Close the round's aggregation: a round that sampled clients and accepted none is said out loud,
        one line per distinct reason, and ``max_failed_rounds`` of them in a row stop the run."""
        self._current["accepted"] = accepted
        if accepted or not self._current.get("clients"):
            self.failed_in_a_row = 0
            return
        self.failed_in_a_row += 1
        server_round = self._current.get("round")
        counts = Counter(self._reasons or ["no reply arrived"])
        for reason, count in counts.most_common():
            log(ERROR, "round %s: every reply rejected; %d x %s", server_round, count, reason)
        if self.failed_in_a_row >= self.max_failed_rounds:
            reason, count = counts.most_common(1)[0]
            raise FederationError(
                f"{self.failed_in_a_row} rounds in a row rejected every client reply "
                f"(round {server_round}: {count} of {self._current['clients']}): {reason}"
            )

    def finish(self, server_round: int, loss: float | None, metrics: dict[str, Any]) -> dict[str, Any]:
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
        record.update({k: v for k, v in metrics.items() if k not in ("accuracy", "loss")})
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


def validate_replies(replies: Sequence[Reply], rounds: AlgorithmRounds, server_round: int) -> list[Accepted]:
    """Check every reply (its size before anything is decoded, its example count, its metrics, then its
    arrays with the algorithm's ``decode``); a bad one becomes a logged failure, not an update."""
    accepted = []
    recorder = rounds.recorder
    # Who released something this round, accepted or not (a privacy ledger charges them all).
    rounds.replied = sorted(r.client for r in replies if r.error is None)
    max_nbytes = rounds.max_reply_nbytes(server_round)
    bounds = rounds.metric_bounds(server_round)
    for reply in sorted(replies, key=lambda r: r.client):
        recorder.received(reply.nbytes)
        try:
            if reply.error is not None:
                raise ValueError(reply.error)
            if max_nbytes is not None and reply.nbytes > max_nbytes:
                raise ValueError(f"the reply carries {reply.nbytes} bytes of arrays, over this round's {max_nbytes}")
            num_examples = check_num_examples(reply.num_examples)
            check_metrics(dict(reply.metrics or {}), bounds)
            if reply.arrays is None:
                raise ValueError("the reply carries no arrays")
            payload = rounds.decode(reply.arrays())
        except Exception as err:  # any malformed reply is that client's failure, never the round's
            recorder.failed(reply.client, str(err))
            continue
        accepted.append(Accepted(reply.client, payload, num_examples, dict(reply.metrics or {})))
    return bound_weights(accepted, rounds.max_examples_ratio, server_round)


def bound_weights(accepted: list[Accepted], ratio: float, server_round: int = 0) -> list[Accepted]:
    """Example counts above ``ratio`` times the round's lower median are cut to it, and logged: a
    client cannot buy the average by claiming more data than it trained on."""
    if len(accepted) < 2:
        return accepted
    cap = max(1, int(ratio * statistics.median_low(a.num_examples for a in accepted)))
    for a in accepted:
        if a.num_examples > cap:
            claimed = a.num_examples
            log(WARNING, "round %s: client %s claims %d examples; weighed as %d", server_round, a.client, claimed, cap)
            a.num_examples = cap
    return accepted


def mean_metric(accepted: Sequence[Accepted], key: str) -> float | None:
    """Example-weighted mean of a finite numeric client metric, or None if no client reported one."""
    pairs = [
        (float(a.metrics[key]), a.num_examples)
        for a in accepted
        if isinstance(a.metrics.get(key), (int, float))
        and not isinstance(a.metrics.get(key), bool)
        and math.isfinite(a.metrics[key])
    ]
    if not pairs:
        return None
    return float(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))


def evaluation_summary(replies: Sequence[Reply], recorder_round: int) -> dict[str, float]:
    """Client-side evaluation: example-weighted means of the finite numeric metrics the clients reported."""
    accepted = []
    for reply in replies:
        try:
            if reply.error is not None:
                raise ValueError(reply.error)
            accepted.append(Accepted(reply.client, None, check_num_examples(reply.num_examples), reply.metrics))
        except ValueError as err:
            reason = short_reason(str(err))
            log(WARNING, "round %s: client %s evaluation rejected: %s", recorder_round, reply.client, reason)
    keys = sorted({k for a in accepted for k in a.metrics if k != "num-examples"})
    summary = {k: mean_metric(accepted, k) for k in keys}
    return {k: v for k, v in summary.items() if v is not None}


class AlgorithmRounds(ABC):
    """An algorithm's server side, round by round, in arrays and plain dicts (no Flower message types).

    ``initial_arrays`` are the global model's float arrays in wire order. Subclasses decide what each
    sampled client gets (``configure``), check a reply (``decode``) and apply the accepted ones
    (``aggregate``); ``recorder`` is set by the adapter and takes per-round extras (``recorder.add``).
    """

    recorder: RoundRecorder
    rollback_point: tuple[int, dict[str, Any], list[str]] | None = None  # set by ``aggregate_round``
    replied: list[str] = []  # the clients whose replies arrived this round (``validate_replies``)
    max_update_ratio: float = MAX_UPDATE_RATIO  # set by the strategy (its ``max_update_ratio`` option)
    max_examples_ratio: float = MAX_EXAMPLES_RATIO  # likewise
    aggregation: str = "mean"  # likewise: ``flwr_privacy.strategies.robust``
    trim_fraction: float = TRIM_FRACTION  # likewise
    num_malicious_clients: int = NUM_MALICIOUS_CLIENTS  # likewise (Krum's f)
    layer: Layer | None = None  # the Flower privacy layer it runs inside, if any (``strategies.layers``)

    def __init__(self, initial_arrays: Sequence[np.ndarray]) -> None:
        self.initial_arrays = float_arrays(initial_arrays)
        if not self.initial_arrays:
            raise ValueError("initial_arrays holds no floating-point array: nothing to train")
        self.shapes = [a.shape for a in self.initial_arrays]
        self.ledger = PrivacyLedger()  # the strategy sets its DP-SGD plan; an algorithm its own mechanism

    def settings(self) -> Config:
        """The algorithm's settings, sent to every client with every instruction (one copy of the config)."""
        return {}

    @abstractmethod
    def configure(self, server_round: int, clients: Sequence[str]) -> list[tuple[list[np.ndarray] | None, Config]]:
        """Per sampled client: its payload (None: the dense global model) and its instruction config."""

    @abstractmethod
    def decode(self, arrays: list[np.ndarray]) -> Any:
        """A reply's arrays checked and decoded; raises (PayloadError) naming what is wrong."""

    @abstractmethod
    def aggregate(self, server_round: int, accepted: list[Accepted]) -> list[Accepted]:
        """Fold the accepted replies (at least one) into the global model; returns those applied (an
        algorithm may still refuse one, say DSSGD a value beyond gamma, logging it as a failure)."""

    @abstractmethod
    def global_arrays(self) -> list[np.ndarray]:
        """The current global model, float32, in wire order."""

    def metric_bounds(self, server_round: int) -> dict[str, MetricBound]:
        """What the algorithm's clients may report besides any finite number (``ANY_METRIC``)."""
        return {}

    def max_reply_nbytes(self, server_round: int) -> int | None:
        """The most bytes of arrays a reply may carry this round, checked before decoding (None: no cap).
        Twice the algorithm's payload and 64 KiB of slack: enough for any framing, far from a flood."""
        expected = self.payload_nbytes(server_round)
        return None if expected is None else 2 * expected + 65_536

    def payload_nbytes(self, server_round: int) -> int | None:
        """Bytes of array data a well-formed reply carries at most this round (None: not known)."""
        return None

    def after_round(self, server_round: int, accepted: list[Accepted]) -> None:  # noqa: B027 (optional hook)
        """Hook run after every round's aggregation, accepted or not (e.g. DSSGD's counter decay)."""

    def resumed(self) -> None:
        """After a restore from a checkpoint into a new run: the clients are new processes, whatever they
        held is gone (DGC forgets which model version each holds); the privacy ledger carries the worst
        spend so far over to every node, as node ids change from run to run."""
        self.ledger.carry_over()

    def round_pure_epsilon(self) -> float:
        """The pure epsilon each replying client's own mechanism spends in a round (DSSGD's SVT); 0: none."""
        return 0.0

    def instruction_settings(self) -> Config:
        """What every instruction carries besides the algorithm's own: the DP-SGD plan, if any."""
        return self.ledger.plan.settings() if self.ledger.plan is not None else {}

    def join(self, layer: Layer | None) -> None:
        """Called with the Flower layer around the strategy's call, if any: a new one is entered (or refused)."""
        if layer is not None and layer != self.layer:
            self.enter(layer)

    @property
    def takes_released_model(self) -> bool:
        """Inside a client-level DP wrapper the model Flower hands over (the wrapper's noised average) is the
        global model (``adopt``): the noise is what the guarantee rests on."""
        return self.layer is not None and self.layer.kind == "client-level DP"

    def enter(self, layer: Layer) -> None:
        """Run inside one of Flower's privacy layers (``strategies.layers``); an algorithm that cannot says why.
        Here: a sparse update carries its own index set per client, which Flower's clipping of dense model
        updates and SecAgg+'s sum of same-shaped vectors cannot take."""
        raise ValueError(
            f"{type(self).__name__.removesuffix('Rounds')} cannot run inside Flower's {layer.name} ({layer.kind}): "
            "its clients send sparse updates, each with its own index set, which Flower's layer can neither "
            "clip as a model update nor sum; use sample-level DP-SGD (dpsgd.enabled) for a formal guarantee"
        )

    secure_upload = "change"  # what the SecAgg+ mod masks: "change" (of the model) or "payload" (the reply)

    def secure_shapes(self, server_round: int) -> list[tuple[int, ...]]:
        """Under SecAgg+ (``enter``ed), the shapes of each client's masked vector this round."""
        raise NotImplementedError(f"{type(self).__name__} does not run under secure aggregation")

    def secure_payload(self, mean: list[np.ndarray]) -> list[np.ndarray]:
        """Under SecAgg+, the unmasked weighted mean of the clients' vectors as a reply ``decode`` takes."""
        raise NotImplementedError(f"{type(self).__name__} does not run under secure aggregation")

    def adopt(self, arrays: Sequence[np.ndarray]) -> None:
        """Take the global model Flower hands back (a DP wrapper's noised average) as this strategy's own."""
        raise NotImplementedError(f"{type(self).__name__} keeps its own global model")

    def vote_weights(self, accepted: Sequence[Accepted]) -> list[int]:
        """What each accepted reply weighs: its example count under ``"mean"``; one client, one vote under a
        robust rule (as Flower's FedMedian and FedTrimmedAvg count), so a claimed count buys nothing, and
        inside Flower's client-level DP wrappers, whose noise is calibrated to a uniform mean (C / n)."""
        uniform = self.aggregation != "mean" or self.takes_released_model
        return [1 if uniform else a.num_examples for a in accepted]

    def average_dense(self, arrays: list[list[np.ndarray]], num_examples: list[int]) -> list[np.ndarray]:
        """Dense arrays of the accepted clients (buffers, FedAvg's models) by the strategy's ``aggregation``:
        a coordinate-wise rule where one is asked for, the example-weighted mean otherwise."""
        if self.aggregation in ("median", "trimmed_mean"):
            return coordinate_wise(arrays, self.aggregation, self.trim_fraction)
        return weighted_average(arrays, num_examples)

    def update_vectors(self, accepted: Sequence[Accepted]) -> np.ndarray:
        """The accepted updates as rows of one matrix, for rules that compare whole updates (Krum). Sparse
        payloads (indices, values, ...) over the union of their entries, zero where a client sent nothing
        (distances are those of the dense vectors); FedAvg overrides it with the clients' changes."""
        table, _ = sparse_table([(a.payload[0].numpy(), a.payload[1].numpy()) for a in accepted], 0.0)
        return table

    def krum(self, accepted: list[Accepted], server_round: int) -> list[Accepted]:
        """Under ``aggregation="krum"``, the n - f replies multi-Krum keeps (``robust.krum_keep``); the ones
        left out are logged, not failures (they were well-formed), and count in the record's ``left_out``."""
        if self.aggregation != "krum" or len(accepted) < 2:
            return accepted
        kept = krum_keep(self.update_vectors(accepted), self.num_malicious_clients)
        left_out = [a.client for i, a in enumerate(accepted) if i not in kept]
        if left_out:
            log(INFO, "round %s: Krum left out the updates of %s", server_round, ", ".join(left_out))
        self.recorder.add(left_out=len(left_out))
        return [accepted[i] for i in kept]

    def robust_sparse(self, updates: list[SparseUpdate]) -> list[SparseUpdate]:
        """Sparse updates (indices, values) with each value replaced by the strategy's robust ``aggregation``
        (``flwr_privacy.strategies.robust.sparse_locations``); unchanged for ``"mean"``."""
        if self.aggregation == "mean" or not updates:
            return updates
        located = sparse_locations([(i.numpy(), v.numpy()) for i, v in updates], self.aggregation, self.trim_fraction)
        return [(i, torch.from_numpy(v)) for (i, _), v in zip(updates, located)]

    def snapshot(self) -> dict[str, Any]:
        """Everything the algorithm holds (model, momentum, counters, versions), to roll a round back."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if k not in ("recorder", "rollback_point")})

    def restore(self, snapshot: dict[str, Any]) -> None:
        vars(self).update(snapshot)


def is_finite(arrays: Sequence[np.ndarray]) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


def aggregate_round(rounds: AlgorithmRounds, replies: Sequence[Reply], server_round: int) -> list[Accepted]:
    """A round's replies validated and folded into the global model; the accepted ones are returned.

    The model never goes bad: an aggregate that is not finite is rolled back to the previous global model
    at once, and the round's state is kept (``rollback_point``) so that ``check_evaluation`` can roll it
    back too if the server's evaluation of the new model is not finite. Either is logged with the
    clients whose updates made the round.
    """
    accepted = rounds.krum(validate_replies(replies, rounds, server_round), server_round)
    before = rounds.snapshot() if accepted else None
    applied = rounds.aggregate(server_round, accepted) if accepted else []
    if before is not None and applied and not is_finite(rounds.global_arrays()):
        roll_back(rounds, before, server_round, [a.client for a in applied], "the aggregate is not finite")
        applied = []
    rounds.after_round(server_round, applied)
    charge_privacy(rounds)
    clients = [a.client for a in applied]
    rounds.rollback_point = (server_round, before, clients) if before is not None and applied else None
    return applied


def roll_back(
    rounds: AlgorithmRounds, before: dict[str, Any], server_round: int, clients: Sequence[str], why: str
) -> None:
    rounds.restore(before)
    log(ERROR, "round %s rolled back to the previous global model: %s; clients aggregated: %s", server_round, why,
        ", ".join(clients))
    for client in clients:
        rounds.recorder.failed(client, f"round rolled back: {why}")
    rounds.recorder.add(rolled_back=1)


def check_evaluation(rounds: AlgorithmRounds, server_round: int, values: Sequence[Any]) -> bool:
    """After the server evaluated the round's model: if a value (loss, accuracy) is not finite, roll the
    round back (its state before aggregation, counters and versions too) and return True."""
    point = rounds.rollback_point
    finite = all(
        math.isfinite(v) for v in values if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    )
    if finite or point is None or point[0] != server_round:
        return False
    _, before, clients = point
    roll_back(rounds, before, server_round, clients, "the server's evaluation of the new model is not finite")
    rounds.rollback_point = None
    rounds.recorder.add(accepted=0)
    rounds.after_round(server_round, [])
    charge_privacy(rounds)
    return True


def charge_privacy(rounds: AlgorithmRounds) -> None:
    """The round's release charged to every client that replied (``validate_replies``), from the config
    alone, and the ledger's report added to the round's record."""
    ledger = rounds.ledger
    if ledger.plan is None and not ledger.pure_mechanism:
        return
    ledger.charge(rounds.replied, rounds.round_pure_epsilon())
    rounds.recorder.add(**ledger.report())
