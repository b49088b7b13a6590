"""Local training and evaluation, on CUDA when there is a GPU, else the CPU.

Data is either this package's in-memory :class:`TensorData` (shuffled with a seeded generator) or
any iterable of batches a user already has, a ``torch.utils.data.DataLoader`` say, yielding
``(inputs, targets)`` tuples or dicts such as ``{"img": ..., "label": ...}`` (see ``as_xy``).
The loss is the user's ``loss_fn(outputs, targets)`` (mean over the batch), cross-entropy by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flwr_privacy.data import TensorData

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Data = TensorData | Iterable[Any]

# Keys a dict batch names its inputs and targets by (Flower's quickstarts use "img" and "label").
INPUT_KEYS = ("img", "image", "images", "x", "input", "inputs", "pixel_values", "features")
TARGET_KEYS = ("label", "labels", "y", "target", "targets")


def as_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one batch: a tuple or list (first two items), or a dict with known keys."""
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is None or y is None:
            raise ValueError(
                f"a dict batch needs an input key {list(INPUT_KEYS)} and a target key {list(TARGET_KEYS)}; "
                f"got keys {sorted(batch)}"
            )
        return x, y
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be an (inputs, targets) pair or a dict, got {type(batch).__name__}")


def count_examples(data: Data) -> int:
    """Examples in one pass over the data: ``len(dataset)`` of a DataLoader, else counted batch by batch."""
    if isinstance(data, TensorData):
        return len(data)
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(as_xy(batch)[1]) for batch in data)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cpu``/``cuda`` force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} is unknown; allowed: ['auto', 'cpu', 'cuda']")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device here; allowed: 'auto' or 'cpu'")
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
    data: Data, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over the data in mini-batches: TensorData shuffled by ``generator`` in ``batch_size``
    batches (the last one may be smaller); any other iterable as it yields them."""
    if not isinstance(data, TensorData):
        for batch in data:
            x, y = as_xy(batch)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx].to(device, non_blocking=True), data.y[idx].to(device, non_blocking=True)


def train_epochs(
    model: nn.Module,
    data: Data,
    epochs: int,
    settings: SGDSettings,
    device: torch.device,
    generator: torch.Generator,
    loss_fn: LossFn | None = None,
) -> float:
    """Run ``epochs`` passes of mini-batch SGD over ``data``; returns the mean training loss."""
    model.to(device).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    loss_fn = loss_fn or F.cross_entropy
    total, count = 0.0, 0
    for _ in range(epochs):
        for x, y in batches(data, settings.batch_size, generator, device):
            if settings.augment:
                x = augment_batch(x, generator)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
    return total / max(count, 1)


def flat_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None
) -> tuple[torch.Tensor, float]:
    """The mini-batch loss gradient over all trainable parameters as one flat vector, and the loss."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = (loss_fn or F.cross_entropy)(model(x), y)
    loss.backward()
    grad = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()]
    )
    return grad.detach(), float(loss.detach())


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, device: torch.device, batch_size: int = 1000, loss_fn: LossFn | None = None
) -> tuple[float, float]:
    """(mean loss, accuracy) of the model on the data; the loss is cross-entropy unless ``loss_fn`` is given."""
    model.to(device).eval()
    loss_fn = loss_fn or F.cross_entropy
    if isinstance(data, TensorData):
        tensors = data
        starts = range(0, len(tensors), batch_size)
        data = ((tensors.x[i : i + batch_size], tensors.y[i : i + batch_size]) for i in starts)
    loss, correct, count = 0.0, 0, 0
    for batch in data:
        x, y = as_xy(batch)
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += float(loss_fn(out, y)) * len(y)
        correct += int((out.argmax(1) == y).sum())
        count += len(y)
    if count == 0:
        raise ValueError("evaluation data yielded no example")
    return loss / count, correct / count
