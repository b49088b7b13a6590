"""The baselines every federated run is compared with, on the same model and the same budget.

- centralized: all clients' data pooled, trained by one party;
- standalone: each client trains alone on its own data; the mean test accuracy over clients.

Budget: both train for the epochs that make each training example be used as often as in the
federated run (``federated_epochs``), so the three spend the same number of sample gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flwr_privacy.data import TensorData
from flwr_privacy.models import build_model
from flwr_privacy.training import SGDSettings, evaluate, train_epochs


@dataclass(frozen=True)
class BaselineResult:
    name: str
    accuracy: float
    loss: float
    epochs: int
    accuracy_std: float = 0.0
    clients: int = 1


def federated_epochs(samples_per_round: float, num_rounds: int, num_examples: int) -> int:
    """Passes over the pooled data that the federation's sample gradients add up to (at least 1)."""
    return max(1, round(samples_per_round * num_rounds / num_examples))


def train_alone(
    model_name: str,
    data: TensorData,
    test: TensorData,
    epochs: int,
    settings: SGDSettings,
    device: torch.device,
    seed: int,
) -> tuple[float, float]:
    """One party trains the model on ``data`` for ``epochs``; its test loss and accuracy."""
    model = build_model(model_name, data.in_shape, 10, seed)
    train_epochs(model, data, epochs, settings, device, torch.Generator().manual_seed(seed))
    return evaluate(model, test, device)


def centralized(
    model_name: str,
    train: TensorData,
    test: TensorData,
    epochs: int,
    settings: SGDSettings,
    device: torch.device,
    seed: int = 0,
) -> BaselineResult:
    """One party holding all the data trains the same model for ``epochs``."""
    loss, accuracy = train_alone(model_name, train, test, epochs, settings, device, seed)
    return BaselineResult("centralized", accuracy, loss, epochs)


def standalone(
    model_name: str,
    parts: list[TensorData],
    test: TensorData,
    epochs: int,
    settings: SGDSettings,
    device: torch.device,
    seed: int = 0,
) -> BaselineResult:
    """Each client trains the same model alone on its own data; mean (and std) of their test accuracy."""
    results = [train_alone(model_name, part, test, epochs, settings, device, seed) for part in parts]
    losses, accuracies = (np.array(r) for r in zip(*results))
    return BaselineResult(
        "standalone", float(accuracies.mean()), float(losses.mean()), epochs, float(accuracies.std()), len(parts)
    )
