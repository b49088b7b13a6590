"""DGC's client (Lin et al., ICLR 2018, Algorithm 1): gradients through the DGC memory, top-k out.

Each round: take the global model (dense, or overwrite the entries a sparse downlink names), spend
``local_steps`` mini-batches with the user's loss through the memory (clipping, momentum correction,
accumulation; as gradient accumulation or local SGD, ``DGCConfig.local_update``), send the top-k of
the accumulated v (tensors of one dimension whole), and mask what was sent. DGC's settings come with
every instruction from the strategy. u and v live in
``context.state`` and persist across rounds, also across rounds the client sits out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from flwr.common import NDArrays, RecordDict, Scalar
from flwr_privacy.clients.base import TrainingClient, check_trainable_numel, dpsgd_plan, server_round
from flwr_privacy.clients.privacy import private_round
from flwr_privacy.clients.state import load_arrays, save_arrays
from torch import nn

from flwr_privacy.algorithms.dgc import DGCConfig, DGCMemory, dense_tensors, local_round
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.compression.model_update import SparseUpdateCodec
from flwr_privacy.config import section
from flwr_privacy.data import TensorData
from flwr_privacy.privacy.dpsgd import DPSGDPlan, PrivateSteps
from flwr_privacy.training import augment_batch, batches, count_examples, flat_gradient
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


def shared_indices(value: Any, expected: int, numel: int) -> torch.Tensor:
    """The round's shared coordinates as the server sent them: ``expected`` sorted distinct ints in [0, numel)."""
    if not isinstance(value, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise ValueError("dgc_indices must be a list of ints")
    indices = torch.tensor(value, dtype=torch.int64)
    if len(indices) != expected or (len(indices) and (int(indices[0]) < 0 or int(indices[-1]) >= numel)) or bool(
        (indices[1:] <= indices[:-1]).any()
    ):
        raise ValueError(f"dgc_indices must be {expected} sorted distinct ints in [0, {numel})")
    return indices


class DGCClient(TrainingClient):
    """One DGC worker.

    Args:
        model, data, device, loss_fn, test_data: the user's (see ``TrainingClient``).
        state: the client's ``context.state``, where u, v and the model version persist.
        local_steps: mini-batch gradients accumulated per round.
        batch_size: the mini-batch size for TensorData (a DataLoader brings its own).
        seed: seeds TensorData shuffling and the sampled-threshold selection.
        augment: random crops and flips of image batches.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        state: RecordDict,
        local_steps: int = 1,
        batch_size: int = 32,
        seed: int = 0,
        augment: bool = False,
        **common: Any,
    ) -> None:
        if local_steps < 1:
            raise ValueError(f"local-steps={local_steps} must be >= 1")
        super().__init__(model, data, **common)
        self.local_steps = local_steps
        self.batch_size = batch_size
        self.state = state
        self.seed = seed
        self.augment = augment
        self.shapes = [a.shape for a in model_to_arrays(self.model)]
        self.trainable = trainable_mask(self.model)
        self.segments = [p.numel() for p in self.model.parameters()]
        self.dense_shapes = buffer_shapes(self.shapes, self.trainable)

    def receive_model(self, parameters: NDArrays, config: dict[str, Scalar]) -> None:
        """Load the global model: dense as sent, or this client's copy with the sent entries overwritten."""
        if config.get("downlink", "dense") == "dense":
            arrays_to_model(self.model, parameters)
        else:
            held = load_arrays(self.state, MODEL_KEY)
            if held is None or int(held[0][0]) != int(config["base_version"]):
                base = int(config["base_version"])
                raise ValueError(f"sparse downlink based on version {base}, client holds another")
            weights, _ = split_trainable(held[1:], self.trainable)
            # float32 whatever the uplink's dtype: see strategies.dgc
            indices, values, buffers = SparseUpdateCodec(sum(self.segments), self.dense_shapes).decode(parameters)
            weights[indices] = values
            arrays_to_model(self.model, join_trainable(weights, buffers, self.shapes, self.trainable))
        version = np.array([int(config.get("version", 0))], dtype=np.int64)
        save_arrays(self.state, MODEL_KEY, [version, *model_to_arrays(self.model)])

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        dgc = DGCConfig(**section(config, "dgc", DGCConfig))
        check_trainable_numel(config, sum(self.segments))
        value_dtype = str(config.get("wire_dtype", "float32"))
        sparsity = float(config["sparsity"])
        self.receive_model(parameters, config)
        whole = dense_tensors([tuple(p.shape) for p in self.model.parameters()], dgc)
        memory = DGCMemory(dgc, self.segments, self.device, whole)
        saved = load_arrays(self.state, MEMORY_KEY)
        if saved is not None:
            memory.load_state_dict(dict(zip(("u", "v"), saved)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + server_round(config))
        losses: list[float] = []
        plan = dpsgd_plan(self, config, self.state)
        start = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()
        if plan is None:
            steps = self.mini_batches(generator)

            def gradient_at(weights: torch.Tensor) -> torch.Tensor:
                torch.nn.utils.vector_to_parameters(weights, self.model.parameters())
                x, y = next(steps)
                if self.augment:
                    x = augment_batch(x, generator)
                grad, loss = flat_gradient(self.model, x, y, self.loss_fn)
                losses.append(loss)
                return grad

            local_round(memory, gradient_at, start, self.local_steps, float(config.get("server_lr", 0.0)))
        else:
            self.private_round(plan, memory, start, generator, float(config.get("server_lr", 0.0)))
        torch.nn.utils.vector_to_parameters(start, self.model.parameters())
        shared = config.get("dgc_indices")  # under secure aggregation: the round's coordinates, the same for all
        if shared is not None and sparsity > 0:
            indices = shared_indices(shared, memory.num_selected(sparsity), memory.numel)
            values = memory.take_and_mask(indices)
        else:
            indices, values = memory.compress_and_mask(sparsity, generator)
        state = memory.state_dict()
        save_arrays(self.state, MEMORY_KEY, [state["u"], state["v"]])
        _, buffers = split_trainable(model_to_arrays(self.model), self.trainable)
        if sparsity == 0:
            dense = torch.zeros(memory.numel, device=values.device).index_copy_(0, indices, values)
            codec = DenseCodec(((memory.numel,), *self.dense_shapes), value_dtype)
            payload = codec.encode([dense.cpu().numpy(), *buffers])
        else:
            payload = SparseUpdateCodec(memory.numel, self.dense_shapes, value_dtype).encode(indices, values, buffers)
        metrics: dict[str, Scalar] = {"sent": int(indices.numel())}
        if losses:  # not under DP-SGD: the loss is computed from the data and would leave un-noised
            metrics["train_loss"] = float(np.mean(losses))
        return payload, count_examples(self.data), metrics

    def private_round(
        self, plan: DPSGDPlan, memory: DGCMemory, start: torch.Tensor, generator: torch.Generator, server_lr: float
    ) -> None:
        """DGC's local round on DP-SGD gradients: each of the ``local_steps`` gradients is a Poisson lot's,
        clipped per example and noised (``flwr_privacy.privacy.dpsgd.PrivateSteps``), charged to the
        accountant in ``context.state``; DGC's own clipping, momentum and top-k then only post-process it."""
        if plan.local_steps != self.local_steps:
            raise ValueError(
                f"dpsgd: the server accounts {plan.local_steps} DP-SGD steps a round, this client takes "
                f"local-steps={self.local_steps}: make them equal"
            )
        assert isinstance(self.data, TensorData)  # dpsgd_plan checked it
        with private_round(self.state, plan, len(self.data)):
            self.model.train()  # Opacus validates the model in training mode, whatever mode it came in
            private = PrivateSteps(
                self.model, self.data, plan.config, plan.batch_size, self.device, generator
            )
            lots = private.lots()

            def gradient_at(weights: torch.Tensor) -> torch.Tensor:
                torch.nn.utils.vector_to_parameters(weights, self.model.parameters())
                self.model.train()
                private.noisy_gradient(*next(lots), self.loss_fn)
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]
                return torch.cat([g.reshape(-1) for g in grads]).detach()

            try:
                local_round(memory, gradient_at, start, self.local_steps, server_lr)
            finally:
                private.close()

    def mini_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless mini-batches over the local data (reshuffled each pass for TensorData)."""
        while True:
            empty = True
            for batch in batches(self.data, self.batch_size, generator, self.device):
                empty = False
                yield batch
            if empty:
                raise ValueError("the training data yielded no batch")
