"""DSSGD's participant (Shokri & Shmatikov, CCS 2015, Sec. 4 "Local training").

Each round: overwrite the local model with what was downloaded, run local SGD (ours, or the user's own
``train_fn``), compute the change of every parameter, and upload a selected, clipped fraction (with DP:
by the sparse vector technique with Laplace noise). DSSGD's settings come with every instruction from
the strategy. The local model lives in ``context.state`` between rounds.
"""

from __future__ import annotations

from logging import WARNING
from typing import Any

import torch
from flwr.common import NDArrays, RecordDict, Scalar, log
from flwr_privacy.clients.base import TrainFn, TrainingClient, check_trainable_numel, local_training, server_round
from flwr_privacy.clients.state import load_arrays, save_arrays
from torch import nn

from flwr_privacy.algorithms.dssgd import DSSGDConfig, compute_change, overwrite_local, participant_upload
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.config import section
from flwr_privacy.training import SGDSettings, count_examples
from flwr_privacy.wire import (
    arrays_to_model,
    buffer_shapes,
    join_trainable,
    model_to_arrays,
    split_trainable,
    trainable_mask,
)

MODEL_KEY = "dssgd.local_model"


class DSSGDClient(TrainingClient):
    """One participant.

    Args:
        model, data, device, loss_fn, test_data: the user's (see ``TrainingClient``).
        state: the participant's ``context.state``, where its local model persists.
        settings: SGD settings of our training loop; ``local_epochs``: its epochs per round.
        train_fn: the user's own training function, ``train_fn(model) -> loss``, used instead of our loop.
        seed: seeds TensorData shuffling and the selection. partition_id: names it in the privacy report.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        state: RecordDict,
        settings: SGDSettings | None = None,
        local_epochs: int = 1,
        train_fn: TrainFn | None = None,
        seed: int = 0,
        partition_id: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(model, data, **common)
        self.state = state
        self.settings = settings or SGDSettings()
        self.local_epochs = local_epochs
        self.train_fn = train_fn
        self.seed = seed
        self.partition_id = partition_id
        self.shapes = [a.shape for a in model_to_arrays(self.model)]
        self.trainable = trainable_mask(self.model)
        self.numel = sum(p.numel() for p in self.model.parameters())
        self.dense_shapes = buffer_shapes(self.shapes, self.trainable)

    def download(self, parameters: NDArrays, config: dict[str, Scalar]) -> None:
        """Step 1: the whole global model, or the theta_d most-updated entries over the local copy."""
        if config.get("download", "dense") == "dense":
            arrays_to_model(self.model, parameters)
            return
        local = load_arrays(self.state, MODEL_KEY)
        if local is not None:
            arrays_to_model(self.model, local)
        weights, _ = split_trainable(model_to_arrays(self.model), self.trainable)
        indices, values, buffers = SparseUpdateCodec(self.numel, self.dense_shapes).decode(parameters)
        weights = overwrite_local(weights, indices, values)
        arrays_to_model(self.model, join_trainable(weights, buffers, self.shapes, self.trainable))

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        dssgd = DSSGDConfig(**section(config, "dssgd", DSSGDConfig))
        check_trainable_numel(config, self.numel)
        codec = SparseUpdateCodec(self.numel, self.dense_shapes, str(config.get("wire_dtype", "float32")))
        self.download(parameters, config)
        before, _ = split_trainable(model_to_arrays(self.model), self.trainable)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + server_round(config))
        loss = local_training(self, self.settings, self.local_epochs, self.train_fn, generator, config, self.state)
        arrays = model_to_arrays(self.model)
        after, buffers = split_trainable(arrays, self.trainable)
        if dssgd.dp and dssgd.insecure_seeded_noise:
            log(WARNING, "INSECURE: DSSGD's DP noise is drawn from the seeded generator (dssgd.insecure-seeded-noise):"
                " anyone who knows the run seed can replay it and strip it; for tests only")
        upload = participant_upload(compute_change(before, after), dssgd, generator)
        save_arrays(self.state, MODEL_KEY, arrays)
        metrics: dict[str, Scalar] = {"partition_id": self.partition_id, "sent": int(upload.indices.numel())}
        if loss is not None:
            metrics["train_loss"] = loss
        if dssgd.dp:
            metrics.update(epsilon=upload.epsilon_guaranteed, epsilon_claimed=upload.epsilon_claimed)
        return codec.encode(upload.indices, upload.values, buffers), count_examples(self.data), metrics
