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
    averaged = []
    for i, first in enumerate(updates[0]):
        acc = np.zeros(np.shape(first), dtype=np.float64)
        for update, n in zip(updates, num_examples):
            acc += update[i].astype(np.float64) * (n / total)
        averaged.append(acc.astype(np.float32))
    return averaged
