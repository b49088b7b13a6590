"""FedAvg's server step (McMahan et al. 2017, Algorithm 1): w <- sum_k (n_k / n) w_k."""

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
    return [
        sum(u[i].astype(np.float64) * (n / total) for u, n in zip(updates, num_examples)).astype(np.float32)
        for i in range(len(updates[0]))
    ]
