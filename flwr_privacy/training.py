"""Local training and evaluation on in-memory tensors, on CUDA when there is a GPU, else the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flwr_privacy.data import TensorData


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cpu``/``cuda`` force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} is unknown; allowed: ['auto', 'cpu', 'cuda']")
    return torch.device(name)


@dataclass(frozen=True)
class SGDSettings:
    """Local optimiser settings (plain SGD when momentum is 0, as in FedAvg)."""

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 10
    augment: bool = False

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight-decay={self.weight_decay} must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"batch-size={self.batch_size} must be >= 1")


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 4-pixel-padded random crop, the usual CIFAR augmentation."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator, device="cpu") < 0.5
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = (int(v) for v in torch.randint(0, 9, (2,), generator=generator))
    return padded[:, :, dy : dy + h, dx : dx + w]


def batches(
    data: TensorData, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over the data in mini-batches (the last one may be smaller)."""
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx].to(device, non_blocking=True), data.y[idx].to(device, non_blocking=True)


def train_epochs(
    model: nn.Module,
    data: TensorData,
    epochs: int,
    settings: SGDSettings,
    device: torch.device,
    generator: torch.Generator,
) -> float:
    """Run ``epochs`` passes of mini-batch SGD over ``data``; returns the mean training loss."""
    model.to(device).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    total, count = 0.0, 0
    for _ in range(epochs):
        for x, y in batches(data, settings.batch_size, generator, device):
            if settings.augment:
                x = augment_batch(x, generator)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
    return total / max(count, 1)


def flat_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The mini-batch loss gradient over all trainable parameters as one flat vector, and the loss."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grad = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()]
    )
    return grad.detach(), float(loss.detach())


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TensorData, device: torch.device, batch_size: int = 1000
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of the model on the data."""
    model.to(device).eval()
    loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return loss / len(data), correct / len(data)
