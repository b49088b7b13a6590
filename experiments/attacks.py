"""Hostile clients for the robustness tests and benchmark: each attack rewrites an honest client's reply.

An attacker runs the honest client's fit (so it holds real data and the real model), then replaces what it
sends with a well-formed reply: finite values of the right shapes and dtypes, so only the strategy's
bounds and its aggregation stand in the way. ``attack(proxy, name, sparse)`` installs one on a client of an
in-process federation (``experiments.inprocess``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import FitIns, FitRes, ndarrays_to_parameters, parameters_to_ndarrays

Arrays = list[np.ndarray]
# (the honest reply's arrays, the model the client was sent, its instruction's config, whether the reply is
# sparse, its example count) -> the arrays and the example count sent instead
Rewrite = Callable[[Arrays, Arrays, dict, bool, int], tuple[Arrays, int]]


def set_values(arrays: Arrays, value: float, sparse: bool) -> Arrays:
    """Every float value set to ``value`` (a sparse reply keeps its indices, the first array)."""
    return [a if (sparse and i == 0) else np.full_like(a, value) for i, a in enumerate(arrays)]


def scaled(factor: float) -> Rewrite:
    """The honest update times ``factor``: a sparse reply's values (its update), or a model's change w_k - w."""

    def rewrite(arrays: Arrays, sent: Arrays, config: dict, sparse: bool, examples: int) -> tuple[Arrays, int]:
        if sparse:
            return [arrays[0], (arrays[1] * factor).astype(arrays[1].dtype), *arrays[2:]], examples
        return [(w + factor * (a - w)).astype(a.dtype) for a, w in zip(arrays, sent)], examples

    return rewrite


def claim_examples(arrays: Arrays, sent: Arrays, config: dict, sparse: bool, examples: int) -> tuple[Arrays, int]:
    """A random model (sparse: random values on the honest indices) claiming 10^12 examples."""
    rng = np.random.default_rng(123)
    if sparse:
        values = arrays[1]
        noise = rng.standard_normal(values.shape).astype(values.dtype)
        noise *= np.linalg.norm(values) / max(float(np.linalg.norm(noise)), 1e-12)
        return [arrays[0], noise, *arrays[2:]], 10**12
    return [(rng.standard_normal(a.shape) * 0.1).astype(a.dtype) for a in arrays], 10**12


def every_entry(arrays: Arrays, sent: Arrays, config: dict, sparse: bool, examples: int) -> tuple[Arrays, int]:
    """A sparse reply covering every trainable entry (the honest values where it had them) instead of k."""
    indices, values = arrays[0], arrays[1]
    size = int(config["trainable_numel"])
    dense = np.full(size, 1e-4, dtype=values.dtype)
    dense[indices] = values
    return [np.arange(size, dtype=indices.dtype), dense, *arrays[2:]], examples


ATTACKS: dict[str, Rewrite] = {
    "every value 1e30": lambda arrays, sent, config, sparse, n: (set_values(arrays, 1e30, sparse), n),
    "values 3.4e38": lambda arrays, sent, config, sparse, n: (set_values(arrays, 3.4e38, sparse), n),
    "1e12 examples (random model)": claim_examples,
    "sign flipped x10": scaled(-10.0),
    "scaled x100": scaled(100.0),
    "every entry instead of k": every_entry,
}
SPARSE_ONLY = {"every entry instead of k"}


def attack(proxy, name: str, sparse: bool) -> None:
    """Make one in-process client (an ``InProcessClientProxy``) send the named attack instead of its reply."""
    rewrite = ATTACKS[name]
    fit = proxy.fit

    def attacking_fit(ins: FitIns, timeout, group_id):
        res = fit(ins, timeout, group_id)
        sent = parameters_to_ndarrays(ins.parameters)
        honest = parameters_to_ndarrays(res.parameters)
        arrays, examples = rewrite(honest, sent, dict(ins.config), sparse, res.num_examples)
        return FitRes(res.status, ndarrays_to_parameters(arrays), examples, res.metrics)

    proxy.fit = attacking_fit
