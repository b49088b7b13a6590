"""Robust aggregation: what a round makes of its accepted updates when some clients may lie.

Every strategy takes ``aggregation`` (and ``trim_fraction``, the beta of the trimmed mean):

- ``"mean"``: the algorithm's own average (FedAvg's n_k / n, DGC's Eq. 7, DSSGD's uploads in turn).
- ``"median"``: the coordinate-wise median (Yin et al. 2018), through Flower's ``aggregate_median``.
- ``"trimmed_mean"``: the coordinate-wise beta-trimmed mean (Yin et al. 2018): the int(beta * m)
  largest and smallest of the m values of each coordinate dropped, through Flower's ``aggregate_trimmed_avg``.
- ``"norm_bound"``: every update's L2 norm clipped to the round's median update norm (Sun et al. 2019,
  "Can you really backdoor federated learning?"), then the algorithm's own average.
- ``"krum"``: multi-Krum (Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant
  gradient descent"): each update scored by the sum of its squared distances to its n - f - 2 nearest
  others, the n - f best kept (``num_malicious_clients`` is f), then the algorithm's own average over them.
  Flower's ``aggregate_krum`` rule, returning which clients it keeps so that every algorithm can average
  its own way.

Every robust rule ignores example counts (as Flower's ``FedMedian`` and ``FedTrimmedAvg`` do): one
client, one vote, so a client cannot buy weight by claiming data.

Sparse updates (DGC's top-k, DSSGD's selected uploads) carry one index set per client. There the
coordinate-wise rules take, for each entry, the clients that sent it: each sender's value is replaced by
the median (or trimmed mean) of the senders' values, and the algorithm's own average runs on that, so an
entry every client sent gets Yin et al.'s estimate and an entry fewer clients sent keeps the weight of its
senders. An entry that one client alone sent has nothing to be compared with, so the sparse rules bound
every update to the round's median norm first (``norm_bound``'s step): a lone attacker's entries are
then no larger than an honest update. Krum compares whole updates instead, a sparse one as the dense
vector it stands for (zero where it sent nothing), so it needs no entry to be shared: an update that
points away from the others, or is far larger, is left out whatever its support.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg

from flwr_privacy.config import AGGREGATIONS

TRIM_FRACTION = 0.2  # Flower's FedTrimmedAvg default beta
NUM_MALICIOUS_CLIENTS = 1  # Krum's f: the hostile clients a round is assumed to hold at most


def check_aggregation(
    aggregation: str, trim_fraction: float, num_malicious_clients: int = NUM_MALICIOUS_CLIENTS
) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r} is unknown; allowed: {list(AGGREGATIONS)}")
    if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, (int, float)) or not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction={trim_fraction!r} must be in [0, 0.5)")
    f = num_malicious_clients
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise ValueError(f"num_malicious_clients={f!r} must be an integer >= 0")


def krum_keep(vectors: np.ndarray, num_malicious: int) -> list[int]:
    """Multi-Krum's choice among the rows of ``vectors`` (one update each): the n - f rows of smallest score,
    a row's score being the sum of its squared distances to its n - f - 2 nearest other rows (at least one),
    in ascending order of index. The rule and its tie-breaking are Flower's ``aggregate_krum``'s."""
    n = len(vectors)
    keep = max(1, n - num_malicious)
    if keep >= n:
        return list(range(n))
    rows = np.asarray(vectors, dtype=np.float64)
    distances = np.array([[float(np.sum(np.square(a - b))) for b in rows] for a in rows])
    closest = max(1, n - num_malicious - 2)
    scores = [float(np.sum(d[np.argsort(d)[1 : closest + 1]])) for d in distances]
    return sorted(int(i) for i in np.argsort(scores)[::-1][n - keep :])


def sparse_table(updates: Sequence[tuple[np.ndarray, np.ndarray]], fill: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sparse updates laid out over the union of their entries: a (clients x entries) table, ``fill`` where a
    client sent nothing, and per client the columns of its entries."""
    entries, positions = np.unique(np.concatenate([idx for idx, _ in updates]), return_inverse=True)
    starts = np.cumsum([0] + [len(idx) for idx, _ in updates])
    columns = [positions[starts[k] : starts[k + 1]] for k in range(len(updates))]
    table = np.full((len(updates), len(entries)), fill)
    for k, (_, values) in enumerate(updates):
        table[k, columns[k]] = values
    return table, columns


def coordinate_wise(
    updates: Sequence[Sequence[np.ndarray]], aggregation: str, trim_fraction: float
) -> list[np.ndarray]:
    """Yin et al.'s estimate of same-shaped dense updates, one array per layer (float32)."""
    results = [(list(update), 1) for update in updates]
    if aggregation == "median":
        robust = aggregate_median(results)
    elif aggregation == "trimmed_mean":
        robust = aggregate_trimmed_avg(results, trim_fraction)
    else:
        raise ValueError(f"aggregation={aggregation!r} is not coordinate-wise")
    return [np.asarray(layer, dtype=np.float32) for layer in robust]


def arrays_norm(arrays: Sequence[np.ndarray]) -> float:
    """The L2 norm of a list of arrays taken as one vector, in float64 (no overflow for finite float32)."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def median_norm_scales(norms: Sequence[float]) -> list[float]:
    """Per update, the factor that clips its norm to the round's median norm (Sun et al. 2019)."""
    bound = statistics.median(norms)
    return [1.0 if norm <= bound or norm == 0 else bound / norm for norm in norms]


def bound_norms(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each update (a vector, or a sparse update's values) clipped to the round's median L2 norm."""
    norms = [arrays_norm([v]) for v in values]
    return [(v * scale).astype(v.dtype) if scale < 1 else v for v, scale in zip(values, median_norm_scales(norms))]


def sparse_locations(
    updates: Sequence[tuple[np.ndarray, np.ndarray]], aggregation: str, trim_fraction: float
) -> list[np.ndarray]:
    """Per client, its sent values replaced by the robust location of each entry over the clients that sent
    it (norms bounded to the round's median first; see the module's docstring). ``norm_bound`` stops after
    the bound; ``mean`` changes nothing."""
    if aggregation in ("mean", "krum"):  # Krum chooses whole updates (``krum_keep``) and leaves values alone
        return [values for _, values in updates]
    bounded = bound_norms([values for _, values in updates])
    if aggregation == "norm_bound":
        return bounded
    table, client_columns = sparse_table([(idx, v) for (idx, _), v in zip(updates, bounded)], np.nan)
    senders = np.sum(~np.isnan(table), axis=0)
    table.sort(axis=0)  # NaN last: the first s rows of a column are its s senders' values
    location = np.empty(table.shape[1])
    for s in np.unique(senders):
        columns = senders == s
        location[columns] = coordinate_wise([[row] for row in table[:s, columns]], aggregation, trim_fraction)[0]
    return [location[c].astype(np.float32) for c in client_columns]
