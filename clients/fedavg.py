"""FedAvg's client (McMahan et al. 2017, Algorithm 1, ClientUpdate): E local epochs of SGD."""

from __future__ import annotations

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar
from torch import nn

from flwr_privacy.data import TensorData
from flwr_privacy.training import SGDSettings, evaluate, train_epochs
from flwr_privacy.wire import arrays_to_model, model_to_arrays


class FedAvgClient(NumPyClient):
    """Loads the global model, trains ``local_epochs`` epochs on its own data, returns the model."""

    def __init__(
        self,
        model: nn.Module,
        train_data: TensorData,
        settings: SGDSettings,
        local_epochs: int,
        device: torch.device,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        self.dtype = dtype
        self.model = model
        self.train_data = train_data
        self.settings = settings
        self.local_epochs = local_epochs
        self.device = device
        self.seed = seed

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return model_to_arrays(self.model)

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        arrays_to_model(self.model, [np.asarray(p, dtype=np.float32) for p in parameters])
        generator = torch.Generator().manual_seed(self.seed * 100_003 + int(config.get("server_round", 0)))
        loss = train_epochs(self.model, self.train_data, self.local_epochs, self.settings, self.device, generator)
        arrays = [a.astype(self.dtype, copy=False) for a in model_to_arrays(self.model)]
        return arrays, len(self.train_data), {"train_loss": loss}

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        arrays_to_model(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.train_data, self.device)
        return loss, len(self.train_data), {"accuracy": accuracy}


def client_seed(run_seed: int, partition_id: int) -> int:
    """A distinct, reproducible seed per client."""
    return int(np.random.SeedSequence([run_seed, partition_id]).generate_state(1)[0])
