"""Distributed Gaussian noise for a secure sum: client-level DP that holds against the server too.

DP-FedAvg (McMahan et al. 2018) clips each client's update to L2 norm C and adds N(0, z^2 C^2) to the sum.
Added by the server, that noise protects the released model, but the server itself saw the sum before it.
Under secure aggregation the server sees nothing but the sum, so the noise can be added in pieces by the
clients instead (distributed DP; Truex et al. 2019, Kairouz et al. 2021): each of the n contributors of a
round adds its share, N(0, z^2 C^2 / (n - t)), so that the shares of any n - t of them sum to N(0, z^2 C^2).
``t`` (``tolerated``) is how many of them may drop out, or collude with the server (who then knows their
shares), before the sum carries less than the planned noise. The noise that is really in the sum is what
the epsilon is computed from (``sum_noise_multiplier``): z sqrt((survivors - t) / (n - t)).

``DistributedDP`` is the plan; ``clip_update`` and ``noise_share`` are a client's two steps.

Sample-level DP-SGD (Abadi et al. 2016) splits the same way (``DistributedDPSGD``): each client clips each
example's gradient of its Poisson lot and adds N(0, sigma^2 C^2 / (n - t)) (``share_multiplier``: its
DP-SGD run at noise multiplier sigma / sqrt(n - t)), so that the sum of the n clients' noisy gradients is
one DP-SGD step over the union of their lots, with the noise a single party holding all of them would add.
Each example is then in a lot with probability q and the sum carries noise multiplier sigma (less, by
``remaining_multiplier``, if contributors drop out): the epsilon of centralized DP-SGD, where the ledger of
local DP-SGD (each client's own noise, which the server sees alone) is sqrt(n) times noisier for it.
One lot a round: the sum of several local steps, each at a different client's weights, is not that
mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flwr_privacy.privacy.clipping import clip_by_l2_norm
from flwr_privacy.privacy.noise import SecureGaussian

__all__ = [
    "DistributedDP", "DistributedDPSGD", "clip_update", "noise_share", "remaining_multiplier", "share_multiplier",
    "sum_noise_multiplier",
]


@dataclass(frozen=True)
class DistributedDP:
    """Client-level DP by noise the clients add under secure aggregation.

    Args:
        noise_multiplier: z, the std of the noise in the sum over the clipping norm.
        clipping_norm: C, the L2 norm each client's whole update (all its float arrays) is clipped to.
        delta: the delta epsilon is reported at.
        tolerated: t, the contributors that may drop out or collude with the server while the sum keeps
            noise of std z C; each client adds std z C / sqrt(n - t).
    """

    noise_multiplier: float
    clipping_norm: float
    delta: float = 1e-5
    tolerated: int = 0

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "clipping_norm"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a positive number")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta!r} must lie in (0, 1)")
        _check_tolerated(self.tolerated)


def _check_tolerated(tolerated: Any) -> None:
    if isinstance(tolerated, bool) or not isinstance(tolerated, int) or tolerated < 0:
        raise ValueError(f"tolerated={tolerated!r} must be an int >= 0")


@dataclass(frozen=True)
class DistributedDPSGD:
    """Sample-level DP-SGD with its noise added in shares under secure aggregation.

    The strategy's DP-SGD plan (its noise multiplier sigma, clipping norm C, lot size and delta) describes
    the *sum*: each of a round's n contributors runs it at ``share_multiplier(sigma, n, tolerated)``, one
    lot a round, and the server charges the noise the survivors' sum really carries
    (``remaining_multiplier``).

    Args:
        tolerated: t, the contributors that may drop out or collude with the server while the sum keeps
            noise of multiplier sigma; each client adds sigma / sqrt(n - t).
    """

    tolerated: int = 0

    def __post_init__(self) -> None:
        _check_tolerated(self.tolerated)


def share_multiplier(noise_multiplier: float, contributors: int, tolerated: int) -> float:
    """A contributor's share of noise multiplier z in a sum of ``contributors`` shares: z / sqrt(n - t)."""
    if contributors <= tolerated:
        raise ValueError(f"{contributors} contributors cannot carry noise with tolerated={tolerated}")
    return noise_multiplier / math.sqrt(contributors - tolerated)


def remaining_multiplier(noise_multiplier: float, tolerated: int, contributors: int, survivors: int) -> float:
    """z of the noise in a sum of ``survivors`` shares (of ``contributors`` planned, each of multiplier
    z / sqrt(n - t)), against a server that knows up to t of them: z sqrt((survivors - t) / (n - t));
    0 if none is left."""
    honest = max(0, survivors - tolerated)
    return noise_multiplier * math.sqrt(honest / (contributors - tolerated))


def clip_update(arrays: Sequence[np.ndarray], clipping_norm: float) -> list[np.ndarray]:
    """The update scaled down, as one vector, to L2 norm at most ``clipping_norm`` (float64)."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))
    clipped = clip_by_l2_norm(flat, clipping_norm).numpy()
    sizes = np.cumsum([np.size(a) for a in arrays])[:-1]
    return [part.reshape(np.shape(a)) for part, a in zip(np.split(clipped, sizes), arrays)]


def noise_share(arrays: Sequence[np.ndarray], plan: DistributedDP, contributors: int) -> list[np.ndarray]:
    """The arrays plus this client's share of the sum's noise: N(0, (z C)^2 / (contributors - t)) per entry,
    from ``SecureGaussian`` (a keystream seeded by the OS, which no run seed replays)."""
    std = share_multiplier(plan.noise_multiplier, contributors, plan.tolerated) * plan.clipping_norm
    size = int(sum(np.size(a) for a in arrays))
    noise = SecureGaussian(size).sample(std).numpy() if size else np.zeros(0)
    sizes = np.cumsum([np.size(a) for a in arrays])[:-1]
    parts = np.split(noise, sizes)
    return [np.asarray(a, dtype=np.float64) + part.reshape(np.shape(a)) for part, a in zip(parts, arrays)]


def sum_noise_multiplier(plan: DistributedDP, contributors: int, survivors: int) -> float:
    """z of the noise in a sum of ``survivors`` shares (of ``contributors`` planned), against a server that
    knows up to t of them: z sqrt((survivors - t) / (contributors - t)); 0 if none is left."""
    return remaining_multiplier(plan.noise_multiplier, plan.tolerated, contributors, survivors)
