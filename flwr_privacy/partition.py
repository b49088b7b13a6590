"""Partitioners: which training examples each client holds. Seeded and deterministic."""

from __future__ import annotations

import numpy as np

PARTITIONS = ("iid", "dirichlet", "shards")


def partition_iid(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then split into ``num_clients`` parts whose sizes differ by at most one."""
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(p) for p in np.array_split(order, num_clients)]


def partition_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Per class, split its examples over clients in proportions drawn from Dirichlet(alpha).

    Small alpha gives skewed label mixes (Hsu et al. 2019). Every client receives at least one
    example: the client with most examples gives one to each empty client.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    for client in range(num_clients):
        if not parts[client]:
            donor = max(range(num_clients), key=lambda i: len(parts[i]))
            parts[client].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_shards(labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """FedAvg's pathological non-IID split: sort by label, cut into equal shards, deal each client some.

    With 100 clients and 2 shards each, most clients see only two digits (McMahan et al. 2017, Sec. 3).
    """
    rng = np.random.default_rng(seed)
    num_shards = num_clients * shards_per_client
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


def partition(
    labels: np.ndarray,
    num_clients: int,
    method: str,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Index arrays, one per client, by the named method."""
    if num_clients < 1 or num_clients > len(labels):
        raise ValueError(f"num-clients={num_clients} must be in [1, {len(labels)}] (the training set size)")
    if method == "iid":
        return partition_iid(len(labels), num_clients, seed)
    if method == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha={alpha} must be > 0")
        return partition_dirichlet(labels, num_clients, alpha, seed)
    if method == "shards":
        if shards_per_client < 1 or num_clients * shards_per_client > len(labels):
            raise ValueError(f"shards-per-client={shards_per_client} must be >= 1 with at least one example per shard")
        return partition_shards(labels, num_clients, shards_per_client, seed)
    raise ValueError(f"partition={method!r} is unknown; allowed: {list(PARTITIONS)}")
