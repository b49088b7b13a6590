"""The adapter onto Flower's Message API: ``flwr.serverapp.strategy.Strategy`` and ``strategy.start(...)``.

A drop-in for the strategies of a Flower app written the way Flower's quickstarts now are::

    from flwr_privacy.strategies.message import DGC      # was: from flwr.serverapp.strategy import FedAvg
    strategy = DGC(lr=0.05, fraction_train=0.5)          # was: FedAvg(fraction_train=0.5)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=3, evaluate_fn=global_evaluate)

The same ``AlgorithmRounds`` as the legacy strategies do the work; this module translates Flower's
messages. The global model travels as the app's own ArrayRecord (its own keys, so a client's
``model.load_state_dict(msg.content["arrays"].to_torch_state_dict())`` and its ``@app.evaluate()``
work unchanged); an algorithm's own payload (a sparse update, a sparse download) travels as a list
ArrayRecord. Integer entries of the state (BatchNorm's ``num_batches_tracked``) never travel: the
global record keeps the initial ones. ``start`` returns Flower's ``Result`` holding the final arrays.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
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
    check_metrics,
    check_num_examples,
    check_reply_bounds,
    check_sampling,
    check_train_sampling,
    evaluation_summary,
    mean_metric,
    sample_ids,
)
from flwr_privacy.strategies.dgc import DGCRounds, check_server_arguments
from flwr_privacy.strategies.dssgd import DSSGDRounds
from flwr_privacy.strategies.fedavg import FedAvgRounds, check_server_momentum
from flwr_privacy.strategies.layers import MESSAGE_SECAGG, layer_of_caller
from flwr_privacy.strategies.privacy import distributed_spent
from flwr_privacy.strategies.robust import NUM_MALICIOUS_CLIENTS, TRIM_FRACTION
from flwr_privacy.strategies.secagg import SecAggError, SecAggOutcome, SecAggPlus, SecAggPlusRound, config_nbytes

from flwr_privacy.algorithms.dgc import DGCConfig
from flwr_privacy.algorithms.dssgd import DSSGDConfig
from flwr_privacy.compression.base import PayloadError
from flwr_privacy.privacy.distributed import (
    DistributedDP,
    DistributedDPSGD,
    remaining_multiplier,
    share_multiplier,
    sum_noise_multiplier,
)
from flwr_privacy.privacy.dpsgd import DPSGDPlan

__all__ = [
    "DGC", "DGCConfig", "DSSGD", "DSSGDConfig", "DistributedDP", "DistributedDPSGD", "FedAvg", "MessageStrategy",
    "SecAggPlus",
]

# State entries that are buffers, not parameters, when a strategy is not told which are trainable:
# what torch's normalization layers register.
BUFFER_SUFFIXES = ("running_mean", "running_var")

MessageEvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's arrays as serialized (each ``Array.data`` is an ``np.save`` blob)."""
    return int(sum(len(array.data) for array in record.values()))


def is_float(array: Array) -> bool:
    return np.dtype(array.dtype).kind == "f"


class MessageStrategy(Strategy):
    """A Message-API Strategy over an ``AlgorithmRounds``, built from ``start``'s ``initial_arrays``.

    Defaults are Flower's FedAvg's (``fraction_train=1.0``, ``min_train_nodes=2``, ``fraction_evaluate=1.0``
    ...). ``seed`` makes node sampling reproducible; ``max_failed_rounds`` consecutive rounds with every
    reply rejected stop the run with a ``FederationError`` naming the reason; ``on_round`` gets each
    round's record (also in ``history``). ``secagg=SecAggPlus(...)`` runs every training round under secure
    aggregation (``flwr_privacy.strategies.secagg``; the ClientApp needs ``flwr_privacy.clients.secagg.
    secaggplus_mod``): the server learns only the weighted mean of the clients' model changes.
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        seed: int | None = None,
        max_failed_rounds: int = MAX_FAILED_ROUNDS,
        max_update_ratio: float = MAX_UPDATE_RATIO,
        max_examples_ratio: float = MAX_EXAMPLES_RATIO,
        aggregation: str = "mean",
        trim_fraction: float = TRIM_FRACTION,
        num_malicious_clients: int = NUM_MALICIOUS_CLIENTS,
        dpsgd: DPSGDPlan | None = None,
        secagg: SecAggPlus | None = None,
        on_round: RoundCallback | None = None,
    ) -> None:
        check_train_sampling(fraction_train, min_train_nodes, "fraction_train", "min_train_nodes")
        check_sampling(fraction_evaluate, min_evaluate_nodes, "evaluate")
        check_reply_bounds(
            max_failed_rounds, max_update_ratio, max_examples_ratio, aggregation, trim_fraction, num_malicious_clients
        )
        self.max_update_ratio, self.max_examples_ratio = max_update_ratio, max_examples_ratio
        self.aggregation, self.trim_fraction = aggregation, trim_fraction
        self.num_malicious_clients = num_malicious_clients
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.seed = seed
        self.dpsgd = dpsgd
        if secagg is not None and not isinstance(secagg, SecAggPlus):
            raise TypeError(f"secagg must be a flwr_privacy.strategies.message.SecAggPlus, got {type(secagg).__name__}")
        self.secagg = secagg
        if secagg is not None and isinstance(secagg.dp, DistributedDPSGD):
            if dpsgd is None or dpsgd.local_steps != 1:
                raise ValueError(
                    "SecAggPlus(dp=DistributedDPSGD(...)) needs dpsgd=DPSGDPlan(..., local_steps=1): its noise is "
                    "the secure sum's, and a sum of several local steps is not one DP-SGD step"
                )
        self.pending: SecAggPlusRound | None = None  # this round's SecAgg+, between configure and aggregate
        self.dp_releases: list[float] = []  # per released sum under SecAggPlus(dp=...): the noise multiplier in it
        self.recorder = RoundRecorder(on_round, max_failed_rounds)
        self.rounds: AlgorithmRounds | None = None
        self.template: ArrayRecord | None = None
        self.float_keys: list[str] = []
        self.sample_timeout = 600.0

    @abstractmethod
    def build_rounds(self, arrays: list[np.ndarray], keys: list[str]) -> AlgorithmRounds:
        """The algorithm over the model's float arrays (in ``keys`` order)."""

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished round (round 0 is the initial model)."""
        return self.recorder.history

    def initialize(self, arrays: ArrayRecord) -> None:
        """Take the global model from an ArrayRecord (say ``ArrayRecord(model.state_dict())``)."""
        if not isinstance(arrays, ArrayRecord):
            raise TypeError(f"initial_arrays must be a flwr.app.ArrayRecord, got {type(arrays).__name__}")
        self.template = arrays
        self.float_keys = [k for k, a in arrays.items() if is_float(a)]
        if not self.float_keys:
            raise ValueError("initial_arrays holds no floating-point array: nothing to train")
        self.rounds = self.build_rounds([arrays[k].numpy() for k in self.float_keys], self.float_keys)
        self.rounds.recorder = self.recorder
        self.rounds.max_update_ratio, self.rounds.max_examples_ratio = self.max_update_ratio, self.max_examples_ratio
        self.rounds.aggregation, self.rounds.trim_fraction = self.aggregation, self.trim_fraction
        self.rounds.num_malicious_clients = self.num_malicious_clients
        self.rounds.ledger.plan = self.dpsgd
        if self.secagg is not None:
            self.rounds.enter(MESSAGE_SECAGG)  # an algorithm that cannot be summed says why, before anything is sent
            if isinstance(self.secagg.dp, DistributedDPSGD) and not isinstance(self.rounds, FedAvgRounds):
                raise ValueError(
                    f"{type(self).__name__} cannot run DistributedDPSGD: its clients' uploads are not their "
                    "noisy DP-SGD steps themselves; use FedAvg"
                )

    @property
    def algorithm(self) -> AlgorithmRounds:
        """The algorithm's rounds, built by ``initialize`` (which ``start`` calls)."""
        if self.rounds is None:
            raise RuntimeError(f"{type(self).__name__} has no model yet: call start() or initialize() first")
        return self.rounds

    @property
    def model_template(self) -> ArrayRecord:
        """The initial ArrayRecord, whose keys and integer entries every global record keeps."""
        if self.template is None:
            raise RuntimeError(f"{type(self).__name__} has no model yet: call start() or initialize() first")
        return self.template

    def global_record(self) -> ArrayRecord:
        """The global model under the app's own keys; integer entries as they were given."""
        current = dict(zip(self.float_keys, self.algorithm.global_arrays()))
        return ArrayRecord(
            array_dict={k: Array(current[k]) if k in current else a for k, a in self.model_template.items()}
        )

    def arrays_of(self, record: Any) -> list[np.ndarray]:
        """A reply's ArrayRecord as the algorithm's list: by the model's keys, or a list record ('0', '1', ...)."""
        if not isinstance(record, ArrayRecord):
            raise PayloadError(f"reply has no ArrayRecord under {self.arrayrecord_key!r}")
        keys = list(record.keys())
        if keys == [str(i) for i in range(len(keys))]:
            return record.to_numpy_ndarrays()
        integer_keys = {k for k, a in self.model_template.items() if not is_float(a)}
        missing = [k for k in self.float_keys if k not in record]
        unexpected = [k for k in keys if k not in self.float_keys and k not in integer_keys]
        if missing or unexpected:
            raise PayloadError(f"reply arrays: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        return [record[k].numpy() for k in self.float_keys]

    def to_reply(self, message: Message) -> Reply:
        node = str(message.metadata.src_node_id)
        if message.has_error():
            return Reply(node, None, 0, {}, error=f"client error: {message.error.reason}")
        content = message.content
        record = content.array_records.get(self.arrayrecord_key)
        metrics = dict(content.metric_records.get("metrics", MetricRecord()))
        return Reply(
            client=node,
            arrays=lambda: self.arrays_of(record),
            num_examples=metrics.get(self.weighted_by_key),
            metrics=metrics,
            nbytes=record_nbytes(record) if isinstance(record, ArrayRecord) else 0,
        )

    def sample(self, grid: Grid, fraction: float, minimum: int, server_round: int, purpose: str) -> list[int]:
        """Wait for enough nodes (a deployment's SuperNodes may connect late), then sample by the seed."""
        needed = max(minimum, self.min_available_nodes)
        deadline = time.monotonic() + self.sample_timeout
        while len(nodes := list(grid.get_node_ids())) < needed:
            if time.monotonic() > deadline:
                raise ValueError(f"{len(nodes)} nodes connected, {needed} needed: start more SuperNodes")
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).", len(nodes), needed)
            time.sleep(1)
        return sample_ids(nodes, fraction, minimum, self.seed, server_round, purpose)

    def summary(self) -> None:
        log(INFO, "\t├──> Sampling: train %.2f (min %d), evaluate %.2f (min %d), seed %s",
            self.fraction_train, self.min_train_nodes, self.fraction_evaluate, self.min_evaluate_nodes, self.seed)
        log(INFO, "\t└──> Algorithm: %s", type(self.rounds).__name__ if self.rounds else type(self).__name__)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.rounds is None:
            self.initialize(arrays)
        algorithm = self.algorithm
        layer = layer_of_caller()
        if layer is not None and self.secagg is not None:
            raise ValueError(
                f"{type(self).__name__} with secagg cannot run inside Flower's {layer.name}: its noise is added after "
                "the server unmasked the sum, and calibrated to an unweighted mean; for client-level DP under "
                "secure aggregation use SecAggPlus(dp=DistributedDP(...)), whose noise the clients add"
            )
        algorithm.join(layer)  # Flower's DP wrappers call this first: entered, or refused
        if algorithm.takes_released_model:
            algorithm.adopt([arrays[k].numpy() for k in self.float_keys])
        self.recorder.start(server_round)
        nodes = self.sample(grid, self.fraction_train, self.min_train_nodes, server_round, "train")
        dense = None
        contents = []
        configured = self.algorithm.configure(server_round, [str(n) for n in nodes])
        for payload, instruction in configured:
            if payload is None:
                dense = dense or self.global_record()
                record = dense
            else:
                record = ArrayRecord(payload)
            settings = ConfigRecord(
                {**dict(config), **instruction, **self.algorithm.instruction_settings(), "server-round": server_round}
            )
            contents.append(RecordDict({self.arrayrecord_key: record, self.configrecord_key: settings}))
        if self.secagg is not None:
            return self.open_secagg(server_round, nodes, contents, grid)
        for content in contents:
            self.recorder.sent(record_nbytes(content.array_records[self.arrayrecord_key]))
        return [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            for node, content in zip(nodes, contents)
        ]

    def open_secagg(
        self, server_round: int, nodes: list[int], contents: list[RecordDict], grid: Grid
    ) -> list[Message]:
        """SecAgg+'s first two stages with the sampled nodes; the third's messages carry the training."""
        shapes = self.algorithm.secure_shapes(server_round)
        self.pending = SecAggPlusRound(self.secagg, grid, server_round, shapes, on_traffic=self.recorder.protocol,
                                       upload=self.algorithm.secure_upload)
        try:
            messages = self.pending.open(nodes, contents)
        except SecAggError as err:
            self.pending.error = str(err)
            messages = []
        if messages and self.dpsgd is not None and self.secagg is not None and isinstance(
            self.secagg.dp, DistributedDPSGD
        ):  # each contributor's DP-SGD adds its share of the sum's noise
            share = share_multiplier(
                self.dpsgd.config.noise_multiplier, len(self.pending.shared_keys), self.secagg.dp.tolerated
            )
            for message in messages:
                message.content.config_records[self.configrecord_key]["dpsgd.noise-multiplier"] = share
        for node, content in zip(nodes, contents):
            went = any(m.metadata.dst_node_id == node for m in messages)
            # The arrays, and what an instruction carries as a list (DGC's shared coordinates, 8 bytes each).
            instruction = content.config_records[self.configrecord_key]
            lists = sum(8 * len(v) for v in instruction.values() if isinstance(v, list))
            self.recorder.sent(record_nbytes(content.array_records[self.arrayrecord_key]) + lists if went else 0)
        return messages

    def check_secagg_reply(self, message: Message) -> None:
        """What the strategy refuses in a masked reply, before it joins the sum: its example count, its metrics."""
        metrics = dict(message.content.metric_records.get("metrics", MetricRecord()))
        check_num_examples(metrics.get(self.weighted_by_key))
        check_metrics(metrics, self.algorithm.metric_bounds(self.recorder.current_round))

    def secagg_replies(self, outcome: SecAggOutcome, pending: SecAggPlusRound) -> list[Reply]:
        """The unmasked round as replies for the algorithm: each survivor carries the mean as the algorithm
        decodes a reply (FedAvg: the global model moved by the mean change; DGC: the mean v at the round's
        shared coordinates), and the algorithm averages identical copies; each drop-out its reason."""
        for node, reason in outcome.late.items():
            log(WARNING, "round %s: node %s: %s", pending.server_round, node, reason)
        replies = [Reply(str(n), None, 0, {}, error=reason) for n, reason in sorted(outcome.dropped.items())]
        if outcome.mean_update is None:
            why = outcome.error or "SecAgg+ gave no sum"
            left = [n for n in pending.sampled if n not in outcome.dropped]
            return replies + [Reply(str(n), None, 0, {}, error=why) for n in left]
        model = self.algorithm.secure_payload(outcome.mean_update)
        for message in outcome.survivors:
            metrics = dict(message.content.metric_records.get("metrics", MetricRecord()))
            replies.append(Reply(
                client=str(message.metadata.src_node_id),
                arrays=lambda: [a.copy() for a in model],
                num_examples=metrics.get(self.weighted_by_key),
                metrics=metrics,
                nbytes=config_nbytes(message.content.config_records[RECORD_KEY_CONFIGS]),
            ))
        return replies

    def charge_distributed_dp(self, outcome: SecAggOutcome, replies: list[Reply]) -> list[Reply]:
        """The round's sum released: its noise (what the survivors added, less what t colluders know) charged
        to every client, and the epsilon so far recorded. A sum left with no noise is not applied."""
        assert self.secagg is not None and self.secagg.dp is not None
        plan = self.secagg.dp
        z = sum_noise_multiplier(plan, outcome.contributors, len(outcome.survivors))
        self.dp_releases.append(z)
        spent = distributed_spent(tuple(self.dp_releases), plan.delta)
        self.recorder.add(distributed_dp_noise_multiplier=z, distributed_dp_epsilon=spent.epsilon,
                          distributed_dp_delta=plan.delta)
        return replies if z > 0 else noiseless_sum_withheld(replies, len(outcome.survivors), plan.tolerated)

    def charge_distributed_dpsgd(self, outcome: SecAggOutcome, replies: list[Reply]) -> list[Reply]:
        """The round's secure sum of DP-SGD steps released: the ledger charges each survivor one step at the
        noise multiplier the sum really carries (the plan's, less if contributors dropped out after taking
        their share). A sum left with no noise is not applied."""
        assert self.secagg is not None and isinstance(self.secagg.dp, DistributedDPSGD) and self.dpsgd is not None
        tolerated = self.secagg.dp.tolerated
        z = remaining_multiplier(
            self.dpsgd.config.noise_multiplier, tolerated, outcome.contributors, len(outcome.survivors)
        )
        self.algorithm.ledger.round_noise_multiplier = z
        self.recorder.add(distributed_dpsgd_noise_multiplier=z)
        return replies if z > 0 else noiseless_sum_withheld(replies, len(outcome.survivors), tolerated)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        algorithm = self.algorithm
        pending, self.pending = self.pending, None
        if pending is not None:
            if pending.error is not None:
                reason = pending.error
                round_replies = [Reply(str(n), None, 0, {}, error=pending.dropped.get(n, reason))
                                 for n in pending.sampled]
            else:
                outcome = pending.close(list(replies), self.check_secagg_reply)
                round_replies = self.secagg_replies(outcome, pending)
                if self.secagg is not None and self.secagg.dp is not None and outcome.mean_update is not None:
                    if isinstance(self.secagg.dp, DistributedDPSGD):
                        round_replies = self.charge_distributed_dpsgd(outcome, round_replies)
                    else:
                        round_replies = self.charge_distributed_dp(outcome, round_replies)
            self.recorder.add(secagg_seconds=pending.seconds)
        else:
            round_replies = [self.to_reply(m) for m in replies]
        applied = aggregate_round(algorithm, round_replies, server_round)
        train_loss = mean_metric(applied, "train_loss")
        self.recorder.add(train_loss=train_loss)
        self.recorder.aggregated(len(applied))
        if not applied:
            return None, None
        metrics = {"accepted": len(applied)} | ({} if train_loss is None else {"train_loss": train_loss})
        return self.global_record(), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0:
            return []
        nodes = self.sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round, "evaluate")
        settings = ConfigRecord({**dict(config), "server-round": server_round})
        # The global model as this strategy holds it (a round rolled back after Flower took its arrays).
        content = RecordDict({self.arrayrecord_key: self.global_record(), self.configrecord_key: settings})
        return [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        summary = evaluation_summary([self.to_reply(m) for m in replies], server_round)
        return MetricRecord(summary) if summary else None

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: MessageEvaluateFn | None = None,
    ) -> Result:
        """Flower's ``Strategy.start``; every round also closes a record (``history``, ``on_round``)."""
        self.initialize(initial_arrays)

        def evaluate_and_record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = None
            if evaluate_fn is not None:
                metrics = evaluate_fn(server_round, arrays)
                if metrics is not None and check_evaluation(self.algorithm, server_round, list(metrics.values())):
                    metrics = evaluate_fn(server_round, self.global_record())
            values = dict(metrics) if metrics is not None else {}
            self.recorder.finish(server_round, values.get("loss"), values)
            return metrics

        result = super().start(
            grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_and_record
        )
        result.arrays = self.global_record()
        return result


def noiseless_sum_withheld(replies: list[Reply], survivors: int, tolerated: int) -> list[Reply]:
    """A secure sum whose noise t colluders could remove: every survivor's reply made a failure, not applied."""
    why = (f"the sum of {survivors} survivors carries no noise beyond what tolerated={tolerated} colluders know: "
           "not applied")
    return [r if r.error is not None else Reply(r.client, None, 0, {}, error=why) for r in replies]


def trainable_keys(keys: Sequence[str], trainable: Iterable[str] | None) -> list[bool]:
    """Per float key, whether it is a parameter: the names given, or every key but normalization statistics."""
    if trainable is None:
        return [not k.endswith(BUFFER_SUFFIXES) for k in keys]
    names = set(trainable)
    unknown = sorted(names - set(keys))
    if unknown:
        raise ValueError(f"trainable names {unknown[:5]} are not floating-point entries of initial_arrays")
    return [k in names for k in keys]


class FedAvg(MessageStrategy):
    """FedAvg (McMahan et al. 2017) for Message-API apps: weighted average of the clients' models.

    Clients may reply as Flower's quickstart does (``ArrayRecord(model.state_dict())`` and
    ``"num-examples"``), or through ``flwr_privacy.clients.message.fedavg_train``. ``dtype`` is the
    uplink's value dtype (``"float16"`` halves it). ``server_momentum`` (beta, FedAvgM): the averaged change
    moves a velocity v <- beta v + Delta, and the model moves by v. Every other argument is
    ``MessageStrategy``'s.
    """

    def __init__(self, *, dtype: str = "float32", server_momentum: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.server_momentum = check_server_momentum(server_momentum)
        if self.secagg is not None and dtype != "float32":
            raise ValueError(
                f"dtype={dtype!r} cannot go with secagg: under SecAgg+ clients upload a quantized, masked change, "
                "not float values; leave dtype at 'float32'"
            )
        self.dtype = dtype

    def build_rounds(self, arrays: list[np.ndarray], keys: list[str]) -> AlgorithmRounds:
        return FedAvgRounds(arrays, self.dtype, self.server_momentum)


class DGC(MessageStrategy):
    """Deep Gradient Compression (Lin et al. 2018) for Message-API apps; clients use ``dgc_train``.

    Args:
        lr: the server's SGD step size.
        config: DGC's settings (``DGCConfig()`` by default), sent to the clients with every message.
        value_dtype: the uplink's value dtype. downlink: ``"dense"`` or ``"sparse"``.
        trainable: names of the parameters; by default every float entry but normalization statistics.
        **options: ``MessageStrategy``'s (``fraction_train``, ``min_train_nodes``, ``seed`` ...).
    """

    def __init__(
        self,
        *,
        lr: float,
        config: DGCConfig | None = None,
        value_dtype: str = "float32",
        downlink: str = "dense",
        trainable: Iterable[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.lr, self.config, self.value_dtype, self.downlink = lr, config or DGCConfig(), value_dtype, downlink
        self.trainable = None if trainable is None else list(trainable)
        check_server_arguments(lr, downlink)

    def build_rounds(self, arrays: list[np.ndarray], keys: list[str]) -> AlgorithmRounds:
        mask = trainable_keys(keys, self.trainable)
        return DGCRounds(arrays, mask, self.config, self.lr, self.value_dtype, self.downlink)


class DSSGD(MessageStrategy):
    """Distributed Selective SGD (Shokri & Shmatikov 2015) for Message-API apps; clients use ``dssgd_train``.

    Args:
        config: DSSGD's settings (``DSSGDConfig()`` by default), sent to the participants with every message.
        value_dtype: the uplink's value dtype.
        trainable: names of the parameters; by default every float entry but normalization statistics.
        **options: ``MessageStrategy``'s (``fraction_train``, ``min_train_nodes``, ``seed`` ...).
    """

    def __init__(
        self,
        *,
        config: DSSGDConfig | None = None,
        value_dtype: str = "float32",
        trainable: Iterable[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.config, self.value_dtype = config or DSSGDConfig(), value_dtype
        self.trainable = None if trainable is None else list(trainable)

    def build_rounds(self, arrays: list[np.ndarray], keys: list[str]) -> AlgorithmRounds:
        return DSSGDRounds(arrays, trainable_keys(keys, self.trainable), self.config, self.value_dtype)
