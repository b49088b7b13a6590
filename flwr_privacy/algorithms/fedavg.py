"""FedAvg's server step (McMahan et al. 2017, Algorithm 1): w <- sum_k (n_k / n) w_k; with server momentum
(FedAvgM, Hsu et al. 2019) the averaged change Delta moves a velocity, v <- beta v + Delta, and w <- w + v."""

from __future__ import annotations

import numpy as np


def weighted_average(updates: list[list[np.ndarray]], num_examples: list[int]) -> list[np.ndarray]:
    """Average clients' arrays weighted by their example counts n_k (Algorithm 1, server line)."""
    if not updates:
        raise ValueError("no updates to average")
    if len(updates) != len(num_examples):
        raise ValueError(f"{len(updates)} updates but {len(num_examples)} example counts")
    if any(n <= 0 for n in num_examples):
        raise ValueError(f"example counts must be positive, got {num_examples}")
    total = float(sum(num_examples))
    averaged = []
    for i, first in enumerate(updates[0]):
        acc = np.zeros(np.shape(first), dtype=np.float64)
        for update, n in zip(updates, num_examples):
            acc += update[i].astype(np.float64) * (n / total)
        averaged.append(acc.astype(np.float32))
    return averaged


def server_momentum_step(
    model: list[np.ndarray], velocity: list[np.ndarray] | None, change: list[np.ndarray], beta: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FedAvgM's step: v <- beta v + Delta (v = 0 before the first round), w <- w + v; returns (w, v), w in
    float32. With clients that take one plain SGD step of size lr (Delta = -lr g), this is heavy-ball SGD
    on the averaged gradient, as ``torch.optim.SGD(momentum=beta)`` runs it centrally."""
    if not 0 <= beta < 1:
        raise ValueError(f"server momentum {beta!r} must be in [0, 1)")
    v = [np.asarray(d, dtype=np.float64) for d in change]
    if velocity is not None:
        v = [beta * u + d for u, d in zip(velocity, v)]
    return [(w.astype(np.float64) + u).astype(np.float32) for w, u in zip(model, v)], v
