"""A client's own DP-SGD accountant, kept in ``context.state`` so spend accumulates across rounds, across
rounds it sits out and across client rebuilds; a client whose budget would be exceeded declines.

The accountant is Flower's (``flwr.serverapp.PrivacyAccountant``, its RDP implementation over Google's
dp-accounting); the events are DP-SGD's sampled Gaussian releases as ``flwr_privacy.privacy.dpsgd``
plans them. The server keeps its own ledger from the config alone (``flwr_privacy.strategies.privacy``).

Flower's accountant state lists every ``compose`` call, and loading it replays them, each an RDP
computation (a quarter of a second here): a client in its 200th round replayed 199. The state kept here
merges consecutive releases of the same event into one with their summed count (RDP composes linearly,
so the bound is the same), and a round without ``dpsgd.max-epsilon`` appends its release to the state
without computing anything: only a budget check, or asking what was spent, composes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flwr.common import ConfigRecord, RecordDict
from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from flwr_privacy.privacy.dpsgd import DPSGDPlan, sample_size

ACCOUNTANT_KEY = "dpsgd.accountant"


class PrivacyBudgetExhausted(ValueError):
    """This client's next round would spend more than its ``dpsgd.max-epsilon``: it declines to train."""


def _new_accountant(plan: DPSGDPlan, num_examples: int) -> RdpAccountant:
    config = PrivacyConfig(
        target_delta=plan.config.delta,
        population_size=num_examples,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.POISSON,
        max_epsilon=plan.config.max_epsilon or None,
    )
    return RdpAccountant(config)


def _saved(state: RecordDict) -> dict[str, Any] | None:
    if ACCOUNTANT_KEY not in state.config_records:
        return None
    return json.loads(str(state.config_records[ACCOUNTANT_KEY]["json"]))


def load_accountant(state: RecordDict, plan: DPSGDPlan, num_examples: int) -> RdpAccountant:
    accountant = _new_accountant(plan, num_examples)
    saved = _saved(state)
    if saved is not None:
        accountant.load_state_dict(saved)
    return accountant


def _charge(state: RecordDict, plan: DPSGDPlan, num_examples: int, event: GaussianPrivacyEvent, count: int) -> None:
    """Append ``count`` releases of ``event`` to the accountant state in ``state``, merged with the last
    composition when it is the same event."""
    saved: dict[str, Any] = _saved(state) or _new_accountant(plan, num_examples).state_dict()
    release = {
        "noise_multiplier": event.noise_multiplier,
        "sample_size": event.sample_size,
        "population_size": event.population_size,
    }
    compositions: list[dict[str, Any]] = saved["compositions"]
    if compositions and compositions[-1]["event"] == release:
        compositions[-1]["count"] += count
    else:
        compositions.append({"event": release, "count": count})
    state[ACCOUNTANT_KEY] = ConfigRecord({"json": json.dumps(saved)})


@contextmanager
def private_round(state: RecordDict, plan: DPSGDPlan, num_examples: int) -> Iterator[int]:
    """Around one round of DP-SGD: refuses it if it would exceed the budget, yields the steps to take, and
    charges them to the accountant in ``state`` once the round's training is done (what is released)."""
    steps = plan.steps(num_examples)
    event = GaussianPrivacyEvent(
        noise_multiplier=plan.config.noise_multiplier,
        sample_size=sample_size(plan.batch_size, num_examples),
        population_size=num_examples,
    )
    accountant = load_accountant(state, plan, num_examples) if plan.config.max_epsilon else None
    if accountant is not None and accountant.would_exceed(event, count=steps):
        spent = accountant.get_privacy_spent().epsilon if accountant.num_releases else 0.0
        raise PrivacyBudgetExhausted(
            f"privacy budget exhausted: epsilon {spent:.4g} of dpsgd.max-epsilon={plan.config.max_epsilon:g} "
            f"spent (delta {plan.config.delta:g}); another round would exceed it, so this client declines to train"
        )
    yield steps
    _charge(state, plan, num_examples, event, steps)


def spent_epsilon(state: RecordDict, plan: DPSGDPlan, num_examples: int) -> float:
    """What this client has spent so far at the plan's delta (0 before its first private round)."""
    accountant = load_accountant(state, plan, num_examples)
    return accountant.get_privacy_spent().epsilon if accountant.num_releases else 0.0
