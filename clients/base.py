"""What every client here shares: the user's model, data, loss and device, and evaluation.

A client takes the model the user already has, any iterable of batches (a DataLoader of tuple or dict
batches, or this package's TensorData), the user's ``loss_fn(outputs, targets)`` and device. The
algorithm's settings arrive with every instruction from the strategy (one copy of the config, on the
server); what must outlive a round lives in ``context.state`` (``clients.state``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from flwr.client import NumPyClient
from flwr.common import NDArrays, RecordDict, Scalar
from flwr_privacy.clients.privacy import private_round
from torch import nn

from flwr_privacy.data import TensorData
from flwr_privacy.privacy.dpsgd import DPSGDPlan, train_epochs_private
from flwr_privacy.training import Data, LossFn, SGDSettings, count_examples, evaluate, pick_device, train_epochs
from flwr_privacy.wire import arrays_to_model, model_to_arrays

TrainFn = Callable[[nn.Module], Any]


def server_round(config: dict[str, Any]) -> int:
    """The round an instruction belongs to (the legacy key, or the Message API's ``server-round``)."""
    return int(config.get("server_round", config.get("server-round", 1)))


def check_trainable_numel(config: dict[str, Any], numel: int) -> None:
    """The strategy's count of trainable entries must be this model's, or no sparse index lines up."""
    expected = config.get("trainable_numel")
    if expected is not None and int(expected) != numel:
        raise ValueError(
            f"the strategy treats {expected} entries as trainable but this model has {numel} parameters: "
            "build both from the same model (Message API: pass trainable=[names of model.named_parameters()])"
        )


class TrainingClient(NumPyClient):
    """A NumPyClient over the user's model and data; evaluates on ``test_data`` (else the training data)."""

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        device: torch.device | str | None = None,
        loss_fn: LossFn | None = None,
        test_data: Data | None = None,
    ) -> None:
        self.device = pick_device("auto") if device is None else torch.device(device)
        self.model = model.to(self.device)
        self.data = data
        self.loss_fn = loss_fn
        self.test_data = test_data

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return model_to_arrays(self.model)

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        arrays_to_model(self.model, parameters)
        data = self.data if self.test_data is None else self.test_data
        loss, accuracy = evaluate(self.model, data, self.device, loss_fn=self.loss_fn)
        return loss, count_examples(data), {"accuracy": accuracy}


def dpsgd_plan(client: TrainingClient, config: dict[str, Any], state: RecordDict | None, train_fn: Any = None):
    """The DP-SGD plan an instruction carries (None: none), checked against what this client can do."""
    plan = DPSGDPlan.from_settings(config, count_examples(client.data))
    if plan is None:
        return None
    if train_fn is not None:
        raise ValueError(
            "dpsgd.enabled: DP-SGD trains with flwr_privacy's own loop, and a train_fn would train outside the "
            "accounting; drop train_fn or turn DP-SGD off"
        )
    if state is None:
        raise ValueError("dpsgd.enabled: DP-SGD needs the client's context.state for its accountant: pass state=")
    if not isinstance(client.data, TensorData):
        raise ValueError(
            "dpsgd.enabled: DP-SGD draws its own Poisson lots and needs the client's data as a "
            "flwr_privacy.data.TensorData, not a DataLoader"
        )
    return plan


def local_training(
    client: TrainingClient,
    settings: SGDSettings,
    local_epochs: int,
    train_fn: TrainFn | None,
    generator: torch.Generator,
    config: dict[str, Any] | None = None,
    state: RecordDict | None = None,
) -> float | None:
    """Step 2 of FedAvg and DSSGD alike: the user's own ``train_fn(model)`` if given, else our SGD loop;
    with a DP-SGD plan in ``config``, DP-SGD (``flwr_privacy.privacy.dpsgd``) charged to the accountant in
    ``state``, and no training loss returned (it is computed from the data and would leave un-noised)."""
    plan = dpsgd_plan(client, config or {}, state, train_fn)
    if plan is not None:
        assert state is not None and isinstance(client.data, TensorData)  # dpsgd_plan checked both
        with private_round(state, plan, len(client.data)) as steps:
            train_epochs_private(
                client.model, client.data, plan.local_epochs, settings.lr, settings.momentum, settings.weight_decay,
                plan.batch_size, plan.config, client.device, generator, client.loss_fn, steps,
            )
        return None
    if train_fn is not None:
        loss = train_fn(client.model)
        return float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None
    return train_epochs(client.model, client.data, local_epochs, settings, client.device, generator, client.loss_fn)
