"""DGC's client (Lin et al., ICLR 2018, Algorithm 1): gradients through the DGC memory, top-k out.

Each round: take the global model (dense, or overwrite the entries a sparse downlink names), compute
``local_steps`` mini-batch gradients at it, pass each through the memory (clipping, weight decay,
momentum correction, accumulation), send the top-k of the accumulated v, and mask what was sent.
u and v live in ``context.state`` and persist across rounds, also across rounds the client sits out.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import NDArrays, RecordDict, Scalar
from torch import nn

from flwr_privacy.clients.state import load_arrays, save_arrays
from flwr_privacy.algorithms.dgc import DGCConfig, DGCMemory
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.data import TensorData
from flwr_privacy.training import augment_batch, batches, flat_gradient
from flwr_privacy.wire import (
    arrays_to_model,
    buffer_shapes,
    join_trainable,
    model_to_arrays,
    split_trainable,
    trainable_mask,
)

MEMORY_KEY = "dgc.memory"
MODEL_KEY = "dgc.model"


class DGCClient(NumPyClient):
    """One DGC worker; ``state`` is the client's ``context.state``."""

    def __init__(
        self,
        model: nn.Module,
        train_data: TensorData,
        config: DGCConfig,
        local_steps: int,
        batch_size: int,
        device: torch.device,
        state: RecordDict,
        seed: int = 0,
        value_dtype: str = "float32",
        augment: bool = False,
    ) -> None:
        if local_steps < 1:
            raise ValueError(f"local-steps={local_steps} must be >= 1")
        self.model = model.to(device)
        self.data = train_data
        self.config = config
        self.local_steps = local_steps
        self.batch_size = batch_size
        self.device = device
        self.state = state
        self.seed = seed
        self.augment = augment
        self.shapes = [a.shape for a in model_to_arrays(model)]
        self.trainable = trainable_mask(model)
        self.segments = [p.numel() for p in model.parameters()]
        dense_shapes = buffer_shapes(self.shapes, self.trainable)
        self.sparse_codec = SparseUpdateCodec(sum(self.segments), dense_shapes, value_dtype)
        self.downlink_codec = SparseUpdateCodec(sum(self.segments), dense_shapes)  # float32: see strategies.dgc
        self.dense_codec = DenseCodec(((sum(self.segments),), *dense_shapes), value_dtype)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return model_to_arrays(self.model)

    def receive_model(self, parameters: NDArrays, config: dict[str, Scalar]) -> None:
        """Load the global model: dense as sent, or this client's copy with the sent entries overwritten."""
        if config.get("downlink", "dense") == "dense":
            arrays_to_model(self.model, parameters)
        else:
            held = load_arrays(self.state, MODEL_KEY)
            if held is None or int(held[0][0]) != int(config["base_version"]):
                raise ValueError(f"sparse downlink based on version {config['base_version']}, client holds another")
            weights, _ = split_trainable(held[1:], self.trainable)
            indices, values, buffers = self.downlink_codec.decode(parameters)
            weights[indices] = values
            arrays_to_model(self.model, join_trainable(weights, buffers, self.shapes, self.trainable))
        version = np.array([int(config.get("version", 0))], dtype=np.int64)
        save_arrays(self.state, MODEL_KEY, [version, *model_to_arrays(self.model)])

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        server_round = int(config.get("server_round", 1))
        sparsity = float(config["sparsity"])
        self.receive_model(parameters, config)
        memory = DGCMemory(self.config, self.segments, self.device)
        saved = load_arrays(self.state, MEMORY_KEY)
        if saved is not None:
            memory.load_state_dict(dict(zip(("u", "v"), saved)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + server_round)
        weights = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        losses = []
        steps = self.mini_batches(generator)
        for _ in range(self.local_steps):
            x, y = next(steps)
            if self.augment:
                x = augment_batch(x, generator)
            grad, loss = flat_gradient(self.model, x, y)
            memory.accumulate(grad, weights)
            losses.append(loss)
        indices, values = memory.compress_and_mask(sparsity, generator)
        state = memory.state_dict()
        save_arrays(self.state, MEMORY_KEY, [state["u"], state["v"]])
        _, buffers = split_trainable(model_to_arrays(self.model), self.trainable)
        if sparsity == 0:
            dense = torch.zeros(memory.numel, device=values.device).index_copy_(0, indices, values)
            payload = self.dense_codec.encode([dense.cpu().numpy(), *buffers])
        else:
            payload = self.sparse_codec.encode(indices, values, buffers)
        return payload, len(self.data), {"train_loss": float(np.mean(losses)), "sent": int(indices.numel())}

    def mini_batches(self, generator: torch.Generator):
        """Endless shuffled mini-batches over the local data."""
        while True:
            yield from batches(self.data, self.batch_size, generator, self.device)
