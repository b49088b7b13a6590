"""Clipping: bound each value (DSSGD's gamma) or a vector's L2 norm (DGC's local clipping, DP)."""

from __future__ import annotations

import torch


def clip_by_value(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Clip every entry to [-bound, bound]."""
    if not bound > 0:
        raise ValueError(f"clipping bound must be > 0, got {bound}")
    return x.clamp(-bound, bound)


def clip_by_l2_norm(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale x down so that its L2 norm is at most max_norm; x is returned unchanged if it is within."""
    if not max_norm > 0:
        raise ValueError(f"max L2 norm must be > 0, got {max_norm}")
    norm = torch.linalg.vector_norm(x)
    if norm <= max_norm:
        return x
    return x * (max_norm / norm)
