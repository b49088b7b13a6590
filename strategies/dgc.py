"""Deep Gradient Compression (Lin et al., ICLR 2018) as a Flower Strategy.

Per round: the server sends the global model (dense, or as a sparse delta to clients that hold an
earlier version) and the round's warm-up sparsity; each client returns its top-k selection of the
accumulated, momentum-corrected gradient; the server averages the sparse updates weighted by
examples and applies them with a plain SGD step (the momentum lives on the clients; with momentum
correction off, the paper's Eq. 5 baseline, the server applies it instead). A round with sparsity 0
is dense momentum SGD: clients then send every value without indices.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from flwr_privacy.algorithms.dgc import DGCConfig, apply_momentum_update, apply_update, average_sparse
from flwr_privacy.algorithms.fedavg import weighted_average
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.wire import buffer_shapes, join_trainable, split_trainable
from flwr_privacy.strategies.base import EvaluateFn, RecordingStrategy, RoundCallback, mean_metric, parameters_nbytes, validate_replies

DOWNLINKS = ("dense", "sparse")


class DGC(RecordingStrategy):
    """DGC's server: warm-up sparsity schedule, validated sparse updates, SGD step with ``lr``.

    ``trainable`` marks the wire entries that are parameters (selected sparsely); the others are
    buffers such as batch-norm statistics, sent dense and averaged.
    """

    def __init__(
        self,
        *,
        initial_arrays: list[np.ndarray],
        trainable: list[bool],
        config: DGCConfig,
        lr: float,
        evaluate_fn: EvaluateFn | None = None,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        value_dtype: str = "float32",
        downlink: str = "dense",
        on_round: RoundCallback | None = None,
    ) -> None:
        super().__init__(
            initial_arrays=initial_arrays,
            evaluate_fn=evaluate_fn,
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            on_round=on_round,
        )
        if not lr > 0:
            raise ValueError(f"lr={lr} must be > 0")
        if downlink not in DOWNLINKS:
            raise ValueError(f"downlink={downlink!r} is unknown; allowed: {list(DOWNLINKS)}")
        self.config, self.lr, self.downlink = config, lr, downlink
        self.shapes = [a.shape for a in self.initial_arrays]
        self.trainable = list(trainable)
        self.weights, self.buffers = split_trainable(self.initial_arrays, self.trainable)
        self.velocity = torch.zeros_like(self.weights)
        dense_shapes = buffer_shapes(self.shapes, self.trainable)
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

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        clients = self.sample(server_round, client_manager)
        sparsity = self.config.sparsity_at(server_round - 1)
        self.recorder.add(sparsity=sparsity)
        dense = ndarrays_to_parameters(self.global_arrays())
        instructions = []
        for client in clients:
            config: dict[str, Scalar] = {"server_round": server_round, "sparsity": sparsity, "version": server_round - 1}
            payload = dense
            held = self.versions.get(str(client.cid))
            if self.downlink == "sparse" and held is not None:
                indices, values = self.delta_since(held)
                if len(indices) * self.downlink_codec.sparse.bytes_per_entry < 4 * self.weights.numel():
                    payload = ndarrays_to_parameters(self.downlink_codec.encode(indices, values, self.buffers))
                    config.update(downlink="sparse", base_version=held)
            config.setdefault("downlink", "dense")
            self.recorder.sent(parameters_nbytes(payload))
            instructions.append((client, FitIns(payload, config)))
        self.sampled = [str(c.cid) for c, _ in instructions]
        self.round_sparsity = sparsity
        return instructions

    def decode(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
        """A client's reply as (indices, values, buffers): dense at sparsity 0, top-k otherwise."""
        if self.round_sparsity == 0:
            decoded = self.dense_codec.decode(arrays)
            return torch.arange(self.weights.numel()), torch.from_numpy(decoded[0]), decoded[1:]
        return self.sparse_codec.decode(arrays)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        accepted = validate_replies(results, failures, self.decode, self.recorder)
        self.recorder.add(train_loss=mean_metric(accepted, "train_loss"), accepted=len(accepted))
        # A client that failed may not have stored the model it was sent: it gets a dense one next time.
        for cid in self.sampled:
            self.versions.pop(cid, None)
        if not accepted:
            return None, {}
        for a in accepted:
            self.versions[str(a.client.cid)] = server_round - 1
        examples = [a.num_examples for a in accepted]
        update = average_sparse([(a.payload[0], a.payload[1]) for a in accepted], examples, self.weights.numel())
        before = self.weights
        if self.config.server_momentum > 0:
            self.weights, self.velocity = apply_momentum_update(
                before, self.velocity, update, self.lr, self.config.server_momentum
            )
        else:
            self.weights = apply_update(before, update, self.lr)
        if self.buffers:
            self.buffers = weighted_average([a.payload[2] for a in accepted], examples)
        if self.downlink == "sparse":
            self.changed[server_round] = torch.nonzero(self.weights != before).reshape(-1)
            oldest = min(self.versions.values(), default=server_round)
            self.changed = {r: i for r, i in self.changed.items() if r > oldest}
        self.recorder.add(update_nnz=int(torch.count_nonzero(update)))
        return ndarrays_to_parameters(self.global_arrays()), {"accepted": len(accepted)}
