"""Deep Gradient Compression (Lin et al., ICLR 2018) as a Flower Strategy.

Per round: the server sends the global model (dense, or as a sparse delta to clients that hold an
earlier version), the round's warm-up sparsity and DGC's settings; each client returns its top-k
selection of the accumulated, momentum-corrected gradient; the server averages the sparse updates
weighted by examples and applies them with ``DGCServer``'s step (SGD where the clients hold the
momentum; momentum on the tensors sent whole, and everywhere without momentum correction, the paper's
Eq. 5 baseline; weight decay, dense). A round with sparsity 0 is dense momentum SGD: clients then send
every value without indices.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from flwr_privacy.strategies.base import Accepted, AlgorithmRounds, Config, MetricBound, check_update_norm
from flwr_privacy.strategies.layers import MESSAGE_SECAGG, Layer
from flwr_privacy.strategies.legacy import LegacyStrategy

from flwr_privacy.algorithms.dgc import (
    DGCConfig,
    DGCServer,
    average_sparse,
    dense_tensors,
    entries_sent,
    shared_selection,
)
from flwr_privacy.compression.base import PayloadError
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.config import to_section
from flwr_privacy.wire import buffer_shapes, join_trainable, split_trainable

DOWNLINKS = ("dense", "sparse")


def check_server_arguments(lr: float, downlink: str) -> None:
    """The server-side arguments of DGC, checked before anything is built."""
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0")
    if downlink not in DOWNLINKS:
        raise ValueError(f"downlink={downlink!r} is unknown; allowed: {list(DOWNLINKS)}")


class DGCRounds(AlgorithmRounds):
    """DGC's server: warm-up sparsity schedule, validated sparse updates, SGD step with ``lr``.

    ``trainable`` marks the wire entries that are parameters (selected sparsely); the others are
    buffers such as batch-norm statistics, sent dense and averaged.
    """

    def __init__(
        self,
        initial_arrays: Sequence[np.ndarray],
        trainable: Sequence[bool],
        config: DGCConfig,
        lr: float,
        value_dtype: str = "float32",
        downlink: str = "dense",
    ) -> None:
        super().__init__(initial_arrays)
        check_server_arguments(lr, downlink)
        if len(trainable) != len(self.initial_arrays):
            raise ValueError(f"trainable has {len(trainable)} entries for {len(self.initial_arrays)} float arrays")
        self.config, self.lr, self.downlink, self.value_dtype = config, lr, downlink, value_dtype
        self.trainable = list(trainable)
        self.weights, self.buffers = split_trainable(self.initial_arrays, self.trainable)
        parameter_shapes = [shape for shape, t in zip(self.shapes, self.trainable) if t]
        self.server = DGCServer(self.weights, parameter_shapes, config, lr)
        self.segments = [int(np.prod(shape)) for shape in parameter_shapes]
        self.whole = dense_tensors(parameter_shapes, config)
        dense_shapes = buffer_shapes(self.shapes, self.trainable)
        self.buffer_nbytes = sum(4 * int(np.prod(s)) + 128 for s in dense_shapes)
        self.sparse_codec = SparseUpdateCodec(self.weights.numel(), dense_shapes, value_dtype)
        # The downlink overwrites the clients' copies with these values: float32 whatever the uplink's
        # dtype, or a float16 wire would leave every client a slightly different model than the server's.
        self.downlink_codec = SparseUpdateCodec(self.weights.numel(), dense_shapes)
        self.dense_codec = DenseCodec(((self.weights.numel(),), *dense_shapes), value_dtype)
        # Sparse downlink: which weights each round changed, and the version each client holds.
        self.changed: dict[int, torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.sampled: list[str] = []
        self.round_sparsity = config.sparsity_at(0)
        self.round_k = self.entries(1)
        # Under secure aggregation (``shared``): one random coordinate set a round for every client
        # (``shared_selection``), sent with the instruction.
        self.round_indices = torch.arange(self.weights.numel())

    def settings(self) -> Config:
        return {
            **to_section("dgc", self.config),
            "wire_dtype": self.value_dtype,
            "trainable_numel": self.weights.numel(),
        }

    def global_arrays(self) -> list[np.ndarray]:
        return join_trainable(self.weights, self.buffers, self.shapes, self.trainable)

    def delta_since(self, version: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights changed in rounds after ``version``, as (indices, current values) to overwrite.

        Sending current values rather than differences keeps a client's copy bit-identical to the
        server's model however many rounds it catches up on.
        """
        changed = [i for r, i in self.changed.items() if r > version]
        indices = torch.unique(torch.cat(changed)) if changed else torch.empty(0, dtype=torch.long)
        return indices, self.weights[indices]

    def configure(self, server_round: int, clients: Sequence[str]) -> list[tuple[list[np.ndarray] | None, Config]]:
        sparsity = self.config.sparsity_at(server_round - 1)
        self.recorder.add(sparsity=sparsity)
        shared: list[int] = []
        if self.shared:
            generator = torch.Generator().manual_seed(secrets.randbits(63))  # no run seed replays the choice
            self.round_indices = (
                shared_selection(self.segments, self.whole, sparsity, generator)
                if sparsity > 0 else torch.arange(self.weights.numel())
            )
            shared = self.round_indices.tolist()
        instructions = []
        for client in clients:
            config: Config = {
                "server_round": server_round,
                "sparsity": sparsity,
                "version": server_round - 1,
                "downlink": "dense",
                "server_lr": self.config.lr_at(server_round, self.lr),  # a local SGD's step (local_update)
                **self.settings(),
            }
            if self.shared and sparsity > 0:
                config["dgc_indices"] = shared
            payload = None
            held = self.versions.get(client)
            if self.downlink == "sparse" and held is not None:
                indices, values = self.delta_since(held)
                if self.sparse_is_smaller(len(indices)):
                    payload = self.downlink_codec.encode(indices, values, self.buffers)
                    config.update(downlink="sparse", base_version=held)
            instructions.append((payload, config))
        self.sampled = list(clients)
        self.round_sparsity = sparsity
        self.round_k = self.entries(server_round)
        return instructions

    def resumed(self) -> None:
        """The clients of a resumed run hold no model: each gets the dense model first."""
        super().resumed()
        self.versions = {}

    def entries(self, server_round: int) -> int:
        """Entries a client sends this round: its k (tensors sent whole count in full)."""
        return entries_sent(self.segments, self.whole, self.config.sparsity_at(server_round - 1))

    def payload_nbytes(self, server_round: int) -> int:
        if self.config.sparsity_at(server_round - 1) == 0:
            return self.weights.numel() * np.dtype(self.value_dtype).itemsize + 128 + self.buffer_nbytes
        return self.entries(server_round) * self.sparse_codec.sparse.bytes_per_entry + 256 + self.buffer_nbytes

    def metric_bounds(self, server_round: int) -> dict[str, MetricBound]:
        return {"sent": MetricBound(0, self.entries(server_round), integer=True)}

    def decode(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
        """A client's reply as (indices, values, buffers): dense at sparsity 0, top-k otherwise, with no
        more entries than the round's k."""
        if self.round_sparsity == 0:
            decoded = self.dense_codec.decode(arrays)
            self.check_step(torch.from_numpy(decoded[0]))
            return torch.arange(self.weights.numel()), torch.from_numpy(decoded[0]), decoded[1:]
        indices, values, buffers = self.sparse_codec.decode(arrays)
        if len(indices) > self.round_k:
            raise PayloadError(f"{len(indices)} entries sent, more than this round's k={self.round_k}")
        self.check_step(values)
        return indices, values, buffers

    def check_step(self, values: torch.Tensor) -> None:
        """The step the update alone would take, lr * ||v||, bounded like any update (``check_update_norm``)."""
        step = self.lr * float(torch.linalg.vector_norm(values.double()))
        check_update_norm(step, float(torch.linalg.vector_norm(self.weights.double())), self.max_update_ratio)

    def after_round(self, server_round: int, accepted: list[Accepted]) -> None:
        # A client that failed may not have stored the model it was sent: it gets a dense one next time.
        for client in self.sampled:
            self.versions.pop(client, None)
        for a in accepted:
            self.versions[a.client] = server_round - 1
        if self.downlink == "sparse":
            self.forget_old_versions()
            oldest = min(self.versions.values(), default=server_round)
            self.changed = {r: i for r, i in self.changed.items() if r > oldest}

    def enter(self, layer: Layer) -> None:
        """Under secure aggregation every client of a round sends its v at the same coordinates (``shared_
        selection``: drawn at random by the server each round), not its own top-k. The masked values then add
        up, and no index leaves a client. Flower's client-level DP wrappers, and its legacy SecAggPlusWorkflow
        (which would sum the indices), are refused (``AlgorithmRounds.enter``)."""
        if layer != MESSAGE_SECAGG:  # Flower's DP wrappers, and its legacy SecAggPlusWorkflow (it sums indices)
            super().enter(layer)
        if self.aggregation != "mean" or self.value_dtype != "float32":
            raise ValueError(
                f"DGC under {layer.name} needs aggregation='mean' and value_dtype='float32' (it sums quantized "
                f"values), got {self.aggregation!r} and {self.value_dtype!r}"
            )
        self.layer = layer

    @property
    def shared(self) -> bool:
        """Whether this round's clients send at shared coordinates: inside flwr_privacy's SecAgg+."""
        return self.layer == MESSAGE_SECAGG

    secure_upload = "payload"  # the clients' own arrays are masked (values and buffers), not a model change

    def secure_shapes(self, server_round: int) -> list[tuple[int, ...]]:
        """What each client's masked vector holds this round: its v at the shared coordinates, its buffers."""
        return [(len(self.round_indices),), *buffer_shapes(self.shapes, self.trainable)]

    def secure_payload(self, mean: list[np.ndarray]) -> list[np.ndarray]:
        """The unmasked weighted mean as a reply this strategy decodes: the shared coordinates, their mean v."""
        values = torch.from_numpy(np.asarray(mean[0], dtype=np.float32))
        buffers = [np.asarray(b, dtype=np.float32) for b in mean[1:]]
        if self.round_sparsity == 0:
            return self.dense_codec.encode([values.numpy(), *buffers])
        return self.sparse_codec.encode(self.round_indices, values, buffers)

    def sparse_is_smaller(self, entries: int) -> bool:
        """Whether a delta of this many entries costs less than the dense model."""
        return entries * self.downlink_codec.sparse.bytes_per_entry < 4 * self.weights.numel()

    def forget_old_versions(self) -> None:
        """Bound the history of changes: a client whose delta would cost more than the dense model gets the
        dense model anyway, so versions that old (a client that stopped participating) are forgotten."""
        seen = torch.zeros(self.weights.numel(), dtype=torch.bool)
        for r in sorted(self.changed, reverse=True):
            seen[self.changed[r]] = True
            if not self.sparse_is_smaller(int(seen.sum())):
                self.versions = {c: v for c, v in self.versions.items() if v >= r}
                return

    def aggregate(self, server_round: int, accepted: list[Accepted]) -> list[Accepted]:
        """Eq. 7's weighted mean of the sparse updates (or, with a robust ``aggregation``, of each update's
        values replaced by the per-entry robust location: ``flwr_privacy.strategies.robust``), then the step."""
        examples = self.vote_weights(accepted)
        sparse = self.robust_sparse([(a.payload[0], a.payload[1]) for a in accepted])
        update = average_sparse(sparse, examples, self.weights.numel())
        before = self.weights
        self.weights = self.server.step(update, server_round)
        if self.buffers:
            self.buffers = self.average_dense([a.payload[2] for a in accepted], examples)
        if self.downlink == "sparse":
            self.changed[server_round] = torch.nonzero(self.weights != before).reshape(-1)
        self.recorder.add(update_nnz=int(torch.count_nonzero(update)))
        return accepted


class DGC(LegacyStrategy):
    """DGC for ``NumPyClient``s (``flwr_privacy.clients.DGCClient``).

    Args:
        initial_arrays: the global model in wire order (``flwr_privacy.wire.model_to_arrays``); integer
            arrays are dropped, as they never travel.
        trainable: per float array, True for a parameter (``flwr_privacy.wire.trainable_mask(model)``),
            False for a buffer such as a batch-norm running statistic (sent dense, averaged).
        config: DGC's settings, sent to the clients with every instruction.
        lr: the server's SGD step size.
        value_dtype: the uplink's value dtype, ``"float32"`` or ``"float16"``.
        downlink: ``"dense"`` (the model) or ``"sparse"`` (the weights changed since a client's version).
        **options: ``LegacyStrategy``'s (``evaluate_fn``, ``fraction_fit``, ``min_fit_clients``, ``seed`` ...).
    """

    def __init__(
        self,
        *,
        initial_arrays: Sequence[np.ndarray],
        trainable: Sequence[bool],
        config: DGCConfig,
        lr: float,
        value_dtype: str = "float32",
        downlink: str = "dense",
        **options: Any,
    ) -> None:
        super().__init__(DGCRounds(initial_arrays, trainable, config, lr, value_dtype, downlink), **options)
