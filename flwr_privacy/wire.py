"""Model <-> list of NumPy arrays, in one fixed order.

The order is the model's ``state_dict()`` order, keeping only floating-point entries (weights,
biases and batch-norm running statistics); integer buffers such as ``num_batches_tracked`` are
local bookkeeping and never travel. Every algorithm and every peer uses this one order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def wire_keys(model: nn.Module) -> list[str]:
    """Names of the state entries that travel, in wire order."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def model_to_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's travelling state as float32 arrays, in wire order."""
    state = model.state_dict()
    return [state[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in wire_keys(model)]


def arrays_to_model(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load arrays (in wire order) into the model; shapes must match exactly."""
    keys = wire_keys(model)
    if len(arrays) != len(keys):
        raise ValueError(f"expected {len(keys)} arrays for this model, got {len(arrays)}")
    state = model.state_dict()
    for key, array in zip(keys, arrays):
        if tuple(array.shape) != tuple(state[key].shape):
            raise ValueError(f"{key}: expected shape {tuple(state[key].shape)}, got {tuple(array.shape)}")
        state[key].copy_(torch.from_numpy(np.asarray(array)))


def trainable_mask(model: nn.Module) -> list[bool]:
    """Per wire entry: True for a trainable parameter, False for a buffer (running statistics)."""
    params = {name for name, _ in model.named_parameters()}
    return [k in params for k in wire_keys(model)]


def flatten(arrays: list[np.ndarray] | list[torch.Tensor]) -> torch.Tensor:
    """Concatenate arrays into one flat float32 tensor (the flat vector sparse codecs index)."""
    return torch.cat([torch.as_tensor(a, dtype=torch.float32).reshape(-1) for a in arrays])


def unflatten(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Split a flat tensor back into float32 arrays of the given shapes."""
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.numel() != sum(sizes):
        raise ValueError(f"flat vector has {flat.numel()} entries, shapes need {sum(sizes)}")
    parts = torch.split(flat.detach().cpu().float(), sizes)
    return [p.reshape(s).numpy().copy() for p, s in zip(parts, shapes)]


def buffer_shapes(shapes: list[tuple[int, ...]], mask: list[bool]) -> tuple[tuple[int, ...], ...]:
    """Shapes of the non-trainable arrays (buffers), in wire order: what travels dense beside a sparse update."""
    return tuple(tuple(s) for s, m in zip(shapes, mask) if not m)


def split_trainable(arrays: list[np.ndarray], mask: list[bool]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Wire arrays -> (flat vector of the trainable entries, buffers in wire order).

    Sparse algorithms select over the flat trainable vector; buffers (batch-norm statistics) have no
    gradient and travel dense beside it.
    """
    if len(arrays) != len(mask):
        raise ValueError(f"expected {len(mask)} arrays, got {len(arrays)}")
    flat = flatten([a for a, m in zip(arrays, mask) if m])
    return flat, [np.asarray(a, dtype=np.float32) for a, m in zip(arrays, mask) if not m]


def join_trainable(
    flat: torch.Tensor, buffers: list[np.ndarray], shapes: list[tuple[int, ...]], mask: list[bool]
) -> list[np.ndarray]:
    """Inverse of split_trainable: wire arrays from the flat trainable vector and the buffers."""
    trainable = iter(unflatten(flat, [s for s, m in zip(shapes, mask) if m]))
    rest = iter(buffers)
    return [next(trainable) if m else np.asarray(next(rest), dtype=np.float32) for m in mask]
