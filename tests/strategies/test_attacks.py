"""One hostile client among ten, well-formed replies with absurd values: the default bounds keep the model.

Each attack replaces what one client sends (its own, honestly computed reply) before the strategy sees
it; the run must end within 2 points of the same federation without the attacker's interference.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays

pytestmark = pytest.mark.slow

ATTACKS = {
    "every value 1e30": 1e30,
    "values 3.4e38": 3.4e38,
}


def attack_values(arrays: list[np.ndarray], value: float, sparse: bool) -> list[np.ndarray]:
    """The float values of a reply set to ``value`` (a sparse reply keeps its indices)."""
    return [a if (sparse and i == 0) else np.full_like(a, value) for i, a in enumerate(arrays)]


def hostile(fed, value: float, sparse: bool) -> None:
    proxy = fed.proxies[0]
    fit = proxy.fit

    def attacking_fit(ins, timeout, group_id):
        res = fit(ins, timeout, group_id)
        arrays = attack_values(parameters_to_ndarrays(res.parameters), value, sparse)
        return FitRes(res.status, ndarrays_to_parameters(arrays), res.num_examples, res.metrics)

    proxy.fit = attacking_fit


SETTINGS = {
    "fedavg": {"num-rounds": 3, "batch-size": 20, "lr": 0.1},
    "dgc": {"num-rounds": 30, "local-steps": 5, "lr": 0.1, "dgc.warmup-sparsities": "0.75,0.9375"},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("strategy", sorted(SETTINGS))
def test_one_attacker_among_ten_is_refused_and_the_model_keeps_its_accuracy(federation, strategy, attack):
    overrides = {"num-clients": 10, **SETTINGS[strategy]}
    clean = federation(strategy, **overrides).run()
    fed = federation(strategy, **overrides)
    hostile(fed, ATTACKS[attack], sparse=strategy != "fedavg")
    attacked = fed.run()
    assert all(r["failures"] == 1 and r["accepted"] == 9 for r in attacked[1:])
    assert np.isfinite(attacked[-1]["test_loss"])
    assert attacked[-1]["test_accuracy"] > clean[-1]["test_accuracy"] - 0.02, (clean[-1], attacked[-1])


def test_a_claim_of_1e12_examples_is_weighed_as_ten_times_the_median_not_as_claimed(federation):
    """The issue's attack on FedAvg: a random model claiming 1e12 examples. Unbounded it owns the average;
    weighed as 10x the round's median it degrades the model but does not wreck it. (Staying within 2
    points of the attack-free run takes robust aggregation, which this bound does not replace.)"""
    from flwr_privacy.models import build_model
    from flwr_privacy.wire import model_to_arrays

    random_model = model_to_arrays(build_model("mlp", (1, 28, 28), 10, seed=123))

    def run(max_examples_ratio: float) -> float:
        fed = federation("fedavg", **{"num-clients": 10, **SETTINGS["fedavg"]})
        fed.strategy.rounds.max_examples_ratio = max_examples_ratio
        proxy = fed.proxies[0]
        fit = proxy.fit

        def attacking_fit(ins, timeout, group_id):
            res = fit(ins, timeout, group_id)
            return FitRes(res.status, ndarrays_to_parameters(random_model), 10**12, res.metrics)

        proxy.fit = attacking_fit
        return fed.run()[-1]["test_accuracy"]

    assert run(1e15) < 0.2  # the claim believed: the random model is the average
    assert run(10.0) > 0.6  # the default bound
