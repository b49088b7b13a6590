"""The server's privacy ledger: what each node has spent, from the configured mechanisms alone.

Keyed by the node that replied (every reply that arrived was released, accepted or not), charged each
round from the config: DP-SGD's sampled Gaussian steps (``flwr_privacy.privacy.dpsgd.DPSGDPlan``,
composed by Flower's RDP accountant, ``flwr.serverapp.PrivacyAccountant``) and any pure-epsilon
release an algorithm makes (DSSGD's sparse vector technique), the two added (basic composition).
Nothing a client reports enters it. The state is plain numbers (steps and epsilon per node), so a
round that is rolled back restores it with the rest of the strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, PrivacySpent
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from flwr_privacy.privacy.dpsgd import MECHANISM, DPSGDPlan, sample_size


def dpsgd_spent(plan: DPSGDPlan, steps: int) -> PrivacySpent:
    """(epsilon, delta) of ``steps`` DP-SGD steps of the plan, for a client with ``plan.min_examples``."""
    return dpsgd_spent_at(plan, ((plan.config.noise_multiplier, steps),))


@lru_cache(maxsize=256)
def dpsgd_spent_at(plan: DPSGDPlan, steps_at: tuple[tuple[float, int], ...]) -> PrivacySpent:
    """(epsilon, delta) of DP-SGD steps of the plan's sampling, for a client with ``plan.min_examples``, given
    as (noise multiplier, steps) pairs: the plan's own, and rounds whose secure sum carried other noise
    (``DistributedDPSGD``'s drop-outs)."""
    n = plan.min_examples
    accountant = RdpAccountant(
        PrivacyConfig(plan.config.delta, n, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.POISSON)
    )
    for z, steps in steps_at:
        if z <= 0:
            return PrivacySpent(float("inf"), plan.config.delta, sum(s for _, s in steps_at), "rdp", None)
        accountant.compose(GaussianPrivacyEvent(z, sample_size(plan.batch_size, n), n), steps)
    return accountant.get_privacy_spent()


@lru_cache(maxsize=256)
def client_level_spent(noise_multiplier: float, releases: int, num_clients: int, delta: float) -> PrivacySpent:
    """(epsilon, delta) of one client's whole data after ``releases`` rounds of client-level DP (McMahan et
    al. 2018; Flower's fixed-clipping wrappers: updates clipped to C, Gaussian noise of std z C on their sum).
    No amplification by sampling: the clients a round samples follow the run seed, which the server knows."""
    accountant = RdpAccountant(
        PrivacyConfig(delta, num_clients, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    )
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, num_clients, num_clients), releases)
    return accountant.get_privacy_spent()


@lru_cache(maxsize=256)
def distributed_spent(noise_multipliers: tuple[float, ...], delta: float) -> PrivacySpent:
    """(epsilon, delta) of a client's data after rounds whose secure sums carried Gaussian noise of these
    multipliers (``flwr_privacy.privacy.distributed``; one per round, each round the Gaussian mechanism on the
    sum of updates clipped to C). Every round is charged to every client, without amplification by sampling,
    as ``client_level_spent``; a multiplier of 0 (no noise left in a sum) is an infinite epsilon."""
    if any(z <= 0 for z in noise_multipliers):
        return PrivacySpent(float("inf"), delta, len(noise_multipliers), "rdp", None)
    accountant = RdpAccountant(
        PrivacyConfig(delta, 1, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    )
    for z in sorted(set(noise_multipliers)):
        accountant.compose(GaussianPrivacyEvent(z, 1, 1), noise_multipliers.count(z))
    return accountant.get_privacy_spent()


@dataclass
class PrivacyLedger:
    """Per node: the DP-SGD steps it took (``plan``) and the pure epsilon it spent (``pure_mechanism``).

    ``delta`` is what epsilon is reported at: the DP-SGD plan's, else 0 (pure DP).
    """

    plan: DPSGDPlan | None = None
    pure_mechanism: str | None = None
    steps: dict[str, int] = field(default_factory=dict)
    pure_epsilon: dict[str, float] = field(default_factory=dict)
    # Per node, DP-SGD steps whose release carried another noise multiplier than the plan's (a secure sum
    # of noise shares some contributors dropped out of): {multiplier: steps}. ``round_noise_multiplier``,
    # when a round sets it, is the multiplier its release is charged at.
    steps_at: dict[str, dict[float, int]] = field(default_factory=dict)
    round_noise_multiplier: float | None = None
    carried_steps: int = 0  # spend before a resume, charged to every node (``carry_over``)
    carried_pure_epsilon: float = 0.0

    @property
    def delta(self) -> float:
        return self.plan.config.delta if self.plan is not None else 0.0

    @property
    def mechanism(self) -> str:
        names = ([MECHANISM] if self.plan is not None else []) + ([self.pure_mechanism] if self.pure_mechanism else [])
        return " + ".join(names)

    def charge(self, clients: Sequence[str], pure_epsilon: float = 0.0) -> None:
        """One round's release by each of ``clients``: the plan's steps, and ``pure_epsilon`` more."""
        z, self.round_noise_multiplier = self.round_noise_multiplier, None
        for client in clients:
            if self.plan is not None:
                steps = self.plan.steps(self.plan.min_examples)
                if z is None or z == self.plan.config.noise_multiplier:
                    self.steps[client] = self.steps.get(client, 0) + steps
                else:
                    other = self.steps_at.setdefault(client, {})
                    other[z] = other.get(z, 0) + steps
            if pure_epsilon:
                self.pure_epsilon[client] = self.pure_epsilon.get(client, 0.0) + pure_epsilon

    def carry_over(self) -> None:
        """A resumed run's nodes have new ids: each is charged from now on as if it were the node that had
        spent the most before (the largest steps and the largest pure epsilon): an upper bound."""
        if any(self.steps_at.values()):
            raise ValueError("a run whose secure sums lost noise to drop-outs cannot be resumed: its spend per node "
                             "is not one step count")
        self.carried_steps += max(self.steps.values(), default=0)
        self.carried_pure_epsilon += max(self.pure_epsilon.values(), default=0.0)
        self.steps, self.pure_epsilon = {}, {}

    def spent(self, client: str) -> PrivacySpent:
        """What ``client`` has spent: (epsilon, delta) by RDP for its DP-SGD steps, plus its pure epsilon."""
        epsilon, releases, order = self.pure_epsilon.get(client, 0.0) + self.carried_pure_epsilon, 0, None
        steps = self.steps.get(client, 0) + self.carried_steps
        if self.plan is not None:
            at = {**self.steps_at.get(client, {}), self.plan.config.noise_multiplier: steps}
            events = tuple(sorted((z, k) for z, k in at.items() if k))
            if events:
                gaussian = dpsgd_spent_at(self.plan, events)
                epsilon, releases = epsilon + gaussian.epsilon, sum(k for _, k in events)
                order = gaussian.optimal_order
        return PrivacySpent(epsilon, self.delta, releases, "rdp" if self.plan else "pure", order)

    def report(self) -> dict[str, Any]:
        """The round record's privacy columns: the largest epsilon any node has spent, at ``delta``."""
        nodes = set(self.steps) | set(self.steps_at) | set(self.pure_epsilon)
        worst = max((self.spent(node).epsilon for node in nodes), default=self.spent("").epsilon)
        return {"epsilon_total_max": worst, "privacy_delta": self.delta, "privacy_mechanism": self.mechanism}
