"""FedAvg's client (McMahan et al. 2017, Algorithm 1, ClientUpdate): E local epochs of SGD."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.common import NDArrays, RecordDict, Scalar
from flwr_privacy.clients.base import TrainFn, TrainingClient, local_training, server_round
from torch import nn

from flwr_privacy.training import SGDSettings, count_examples
from flwr_privacy.wire import arrays_to_model, model_to_arrays


class FedAvgClient(TrainingClient):
    """Loads the global model, trains ``local_epochs`` epochs on its own data, returns the model.

    Args:
        model, data, device, loss_fn, test_data: the user's (see ``TrainingClient``).
        settings: SGD settings of our training loop; ``local_epochs``: E.
        train_fn: the user's own training function, ``train_fn(model) -> loss``, used instead of our loop.
        seed: seeds the shuffling of TensorData.
        state: the client's ``context.state``, where its privacy accountant lives (needed for DP-SGD only).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        settings: SGDSettings | None = None,
        local_epochs: int = 1,
        train_fn: TrainFn | None = None,
        seed: int = 0,
        state: RecordDict | None = None,
        **common: Any,
    ) -> None:
        super().__init__(model, data, **common)
        self.state = state
        self.settings = settings or SGDSettings()
        self.local_epochs = local_epochs
        self.train_fn = train_fn
        self.seed = seed

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        received = [np.asarray(p, dtype=np.float32) for p in parameters]
        arrays_to_model(self.model, received)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + server_round(config))
        loss = local_training(self, self.settings, self.local_epochs, self.train_fn, generator, config, self.state)
        dtype = str(config.get("wire_dtype", "float32"))
        arrays = model_to_arrays(self.model)
        if config.get("uplink", "model") == "delta":  # the change, so the server's float32 model keeps it
            arrays = [a - r for a, r in zip(arrays, received)]
        arrays = [a.astype(dtype, copy=False) for a in arrays]
        return arrays, count_examples(self.data), {} if loss is None else {"train_loss": loss}


def client_seed(run_seed: int, partition_id: int) -> int:
    """A distinct, reproducible seed per client."""
    return int(np.random.SeedSequence([run_seed, partition_id]).generate_state(1)[0])
