"""Distributed Selective SGD (Shokri & Shmatikov, CCS 2015) as a Flower Strategy.

Order inside a round (the paper's participants upload asynchronously; a Flower round is a
synchronous exchange): every sampled participant downloads from the same global state (the theta_d
most-updated parameters, or all of them) with DSSGD's settings; the server then applies the accepted
uploads one after another in a fixed order (by client id), counting each update in stat_j; buffers
are averaged; finally the counters decay if the round number calls for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr_privacy.strategies.base import Accepted, AlgorithmRounds, Config, MetricBound
from flwr_privacy.strategies.legacy import LegacyStrategy

from flwr_privacy.algorithms.dssgd import DSSGDConfig, DSSGDServer, num_upload, round_epsilon
from flwr_privacy.compression.base import PayloadError
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.config import to_section
from flwr_privacy.wire import buffer_shapes, join_trainable, split_trainable


class DSSGDRounds(AlgorithmRounds):
    """DSSGD's parameter server, with per-round privacy spend in the records (``epsilon``)."""

    def __init__(
        self,
        initial_arrays: Sequence[np.ndarray],
        trainable: Sequence[bool],
        config: DSSGDConfig,
        value_dtype: str = "float32",
    ) -> None:
        super().__init__(initial_arrays)
        if len(trainable) != len(self.initial_arrays):
            raise ValueError(f"trainable has {len(trainable)} entries for {len(self.initial_arrays)} float arrays")
        self.config, self.value_dtype = config, value_dtype
        self.trainable = list(trainable)
        weights, self.buffers = split_trainable(self.initial_arrays, self.trainable)
        self.server = DSSGDServer(weights, config)
        self.codec = SparseUpdateCodec(weights.numel(), buffer_shapes(self.shapes, self.trainable), value_dtype)
        # The download overwrites the participants' copies: float32 whatever the uplink's dtype.
        self.download_codec = SparseUpdateCodec(weights.numel(), buffer_shapes(self.shapes, self.trainable))
        if config.dp:
            self.ledger.pure_mechanism = f"svt ({config.svt_variant})"

    def settings(self) -> Config:
        return {
            **to_section("dssgd", self.config),
            "wire_dtype": self.value_dtype,
            "trainable_numel": self.server.num_params,
        }

    def global_arrays(self) -> list[np.ndarray]:
        return join_trainable(self.server.params, self.buffers, self.shapes, self.trainable)

    def configure(self, server_round: int, clients: Sequence[str]) -> list[tuple[list[np.ndarray] | None, Config]]:
        config: Config = {"server_round": server_round, "download": "dense", **self.settings()}
        payload = None
        if self.config.theta_d < 1:
            indices, values = self.server.serve_download()
            payload = self.download_codec.encode(indices, values, self.buffers)
            config["download"] = "sparse"
        return [(payload, dict(config)) for _ in clients]

    @property
    def upload_count(self) -> int:
        """c = ceil(theta_u |w|): the most values a participant uploads."""
        return num_upload(self.config.theta_u, self.server.num_params)

    def payload_nbytes(self, server_round: int) -> int:
        buffers = sum(4 * int(np.prod(s)) + 128 for s in self.codec.buffer_shapes)
        return self.upload_count * self.codec.sparse.bytes_per_entry + 256 + buffers

    def metric_bounds(self, server_round: int) -> dict[str, MetricBound]:
        return {
            "sent": MetricBound(0, self.upload_count, integer=True),
            "partition_id": MetricBound(0, 2**31 - 1, integer=True),
            "epsilon": MetricBound(0, 1e12),
            "epsilon_claimed": MetricBound(0, 1e12),
        }

    def decode(self, arrays: list[np.ndarray]) -> Any:
        """A participant's upload: at most c values (step 4), checked by the codec."""
        indices, values, buffers = self.codec.decode(arrays)
        if len(indices) > self.upload_count:
            raise PayloadError(f"{len(indices)} values uploaded, more than c={self.upload_count}")
        return indices, values, buffers

    def aggregate(self, server_round: int, accepted: list[Accepted]) -> list[Accepted]:
        """The uploads applied one after another (or, with a robust ``aggregation``, each upload's values
        replaced by the per-entry robust location over the participants that sent the entry:
        ``flwr_privacy.strategies.robust``); an upload the server refuses changes nothing."""
        uploads = self.robust_sparse([(a.payload[0], a.payload[1]) for a in accepted])
        applied = []
        for a, (indices, values) in zip(accepted, uploads):
            try:
                self.server.apply_upload(indices, values)
            except ValueError as err:  # e.g. values outside [-gamma, gamma]: nothing was applied
                self.recorder.failed(a.client, str(err))
                continue
            applied.append(a)
        if applied and self.buffers:
            self.buffers = self.average_dense([a.payload[2] for a in applied], self.vote_weights(applied))
        return applied

    def after_round(self, server_round: int, accepted: list[Accepted]) -> None:
        self.server.maybe_decay(server_round)
        if self.config.dp:  # what each participant that replied spent this round, rejected or not
            self.recorder.add(
                epsilon=self.round_pure_epsilon() if self.replied else 0.0,
                epsilon_claimed=self.config.epsilon if self.replied else 0.0,
            )

    def round_pure_epsilon(self) -> float:
        """The SVT's guaranteed epsilon per upload, from the configured mechanism (the server's ledger,
        ``strategies.privacy``, charges it to each node that replied: nothing a client reports enters it)."""
        return round_epsilon(self.config, self.server.num_params) if self.config.dp else 0.0


class DSSGD(LegacyStrategy):
    """DSSGD for ``NumPyClient``s (``flwr_privacy.clients.DSSGDClient``).

    Args:
        initial_arrays: the global model in wire order (``flwr_privacy.wire.model_to_arrays``); integer
            arrays are dropped, as they never travel.
        trainable: per float array, True for a parameter (``flwr_privacy.wire.trainable_mask(model)``).
        config: DSSGD's settings, sent to the participants with every instruction.
        value_dtype: the uplink's value dtype, ``"float32"`` or ``"float16"``.
        **options: ``LegacyStrategy``'s (``evaluate_fn``, ``fraction_fit``, ``min_fit_clients``, ``seed`` ...).
    """

    def __init__(
        self,
        *,
        initial_arrays: Sequence[np.ndarray],
        trainable: Sequence[bool],
        config: DSSGDConfig,
        value_dtype: str = "float32",
        **options: Any,
    ) -> None:
        super().__init__(DSSGDRounds(initial_arrays, trainable, config, value_dtype), **options)
