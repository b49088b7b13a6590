"""Dense codec: every value sent, as float32 or float16, validated against the expected shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flwr_privacy.compression.base import PayloadError

DENSE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class DenseCodec:
    """Encodes a list of arrays in a fixed order and shape; decoding checks all of it."""

    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DENSE_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not supported; allowed: {DENSE_DTYPES}")
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))

    def encode(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Arrays cast to the wire dtype."""
        return [np.asarray(a).astype(self.dtype, copy=False) for a in arrays]

    def decode(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """float32 arrays after checking count, shape, dtype and finiteness; PayloadError otherwise."""
        if len(arrays) != len(self.shapes):
            raise PayloadError(f"expected {len(self.shapes)} arrays, got {len(arrays)}")
        decoded = []
        for i, (array, shape) in enumerate(zip(arrays, self.shapes)):
            if not isinstance(array, np.ndarray):
                raise PayloadError(f"array {i}: expected a NumPy array, got {type(array).__name__}")
            if array.dtype != np.dtype(self.dtype):
                raise PayloadError(f"array {i}: expected dtype {self.dtype}, got {array.dtype}")
            if array.shape != shape:
                raise PayloadError(f"array {i}: expected shape {shape}, got {array.shape}")
            if not np.isfinite(array).all():
                raise PayloadError(f"array {i}: contains NaN or Inf")
            decoded.append(array.astype(np.float32, copy=False))
        return decoded
