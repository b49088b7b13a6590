"""A model update as it travels for the sparse algorithms: top-k part plus dense buffers.

Payload: ``[indices, values, *buffers]``. ``indices``/``values`` index the flat vector of trainable
entries (``wire.split_trainable``) and are encoded by :class:`SparseCodec`; the buffers (batch-norm
running statistics, usually a few hundred floats) follow dense. Their bytes count like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flwr_privacy.compression.base import PayloadError
from flwr_privacy.compression.dense import DenseCodec
from flwr_privacy.compression.topk import SparseCodec


@dataclass(frozen=True)
class SparseUpdateCodec:
    """Encodes and validates ``(indices, values, buffers)`` for a model of ``numel`` trainable entries."""

    numel: int
    buffer_shapes: tuple[tuple[int, ...], ...] = ()
    value_dtype: str = "float32"

    @property
    def sparse(self) -> SparseCodec:
        return SparseCodec(self.numel, self.value_dtype)

    @property
    def buffers(self) -> DenseCodec:
        return DenseCodec(self.buffer_shapes, "float32")

    def encode(
        self, indices: torch.Tensor, values: torch.Tensor, buffers: list[np.ndarray]
    ) -> list[np.ndarray]:
        return self.sparse.encode(indices, values) + self.buffers.encode(buffers)

    def decode(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
        """(int64 indices, float32 values, float32 buffers); PayloadError names what is wrong."""
        expected = 2 + len(self.buffer_shapes)
        if len(arrays) != expected:
            raise PayloadError(
                f"expected {expected} arrays (indices, values, {len(self.buffer_shapes)} buffers), got {len(arrays)}"
            )
        indices, values = self.sparse.decode(list(arrays[:2]))
        return indices, values, self.buffers.decode(list(arrays[2:]))
