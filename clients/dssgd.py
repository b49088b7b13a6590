"""DSSGD's participant (Shokri & Shmatikov, CCS 2015, Sec. 4 "Local training").

Each round: overwrite the local model with what was downloaded, run local SGD, compute the change
of every parameter, and upload a selected, clipped fraction (with DP: by the sparse vector
technique with Laplace noise). The local model lives in ``context.state`` between rounds.
"""

from __future__ import annotations

import torch
from flwr.client import NumPyClient
from flwr.common import NDArrays, RecordDict, Scalar
from torch import nn

from flwr_privacy.clients.state import load_arrays, save_arrays
from flwr_privacy.algorithms.dssgd import DSSGDConfig, compute_change, overwrite_local, participant_upload
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.data import TensorData
from flwr_privacy.training import SGDSettings, train_epochs
from flwr_privacy.wire import (
    arrays_to_model,
    buffer_shapes,
    join_trainable,
    model_to_arrays,
    split_trainable,
    trainable_mask,
)

MODEL_KEY = "dssgd.local_model"


class DSSGDClient(NumPyClient):
    """One participant; ``state`` is its ``context.state``, ``partition_id`` names it in the privacy report."""

    def __init__(
        self,
        model: nn.Module,
        train_data: TensorData,
        config: DSSGDConfig,
        settings: SGDSettings,
        local_epochs: int,
        device: torch.device,
        state: RecordDict,
        seed: int = 0,
        partition_id: int = 0,
        value_dtype: str = "float32",
    ) -> None:
        self.model = model
        self.data = train_data
        self.config = config
        self.settings = settings
        self.local_epochs = local_epochs
        self.device = device
        self.state = state
        self.seed = seed
        self.partition_id = partition_id
        self.shapes = [a.shape for a in model_to_arrays(model)]
        self.trainable = trainable_mask(model)
        numel = sum(p.numel() for p in model.parameters())
        dense_shapes = buffer_shapes(self.shapes, self.trainable)
        self.codec = SparseUpdateCodec(numel, dense_shapes, value_dtype)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return model_to_arrays(self.model)

    def download(self, parameters: NDArrays, config: dict[str, Scalar]) -> None:
        """Step 1: the whole global model, or the theta_d most-updated entries over the local copy."""
        if config.get("download", "dense") == "dense":
            arrays_to_model(self.model, parameters)
            return
        local = load_arrays(self.state, MODEL_KEY)
        if local is not None:
            arrays_to_model(self.model, local)
        weights, _ = split_trainable(model_to_arrays(self.model), self.trainable)
        indices, values, buffers = self.codec.decode(parameters)
        weights = overwrite_local(weights, indices, values)
        arrays_to_model(self.model, join_trainable(weights, buffers, self.shapes, self.trainable))

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        server_round = int(config.get("server_round", 1))
        self.download(parameters, config)
        before, _ = split_trainable(model_to_arrays(self.model), self.trainable)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + server_round)
        loss = train_epochs(self.model, self.data, self.local_epochs, self.settings, self.device, generator)
        arrays = model_to_arrays(self.model)
        after, buffers = split_trainable(arrays, self.trainable)
        upload = participant_upload(compute_change(before, after), self.config, generator)
        save_arrays(self.state, MODEL_KEY, arrays)
        metrics: dict[str, Scalar] = {"train_loss": loss, "partition_id": self.partition_id, "sent": int(upload.indices.numel())}
        if self.config.dp:
            metrics.update(epsilon=upload.epsilon_guaranteed, epsilon_claimed=upload.epsilon_claimed)
        return self.codec.encode(upload.indices, upload.values, buffers), len(self.data), metrics
