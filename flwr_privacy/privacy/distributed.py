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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flwr_privacy.privacy.clipping import clip_by_l2_norm
from flwr_privacy.privacy.noise import SecureGaussian

__all__ = ["DistributedDP", "clip_update", "noise_share", "sum_noise_multiplier"]


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
        if isinstance(self.tolerated, bool) or not isinstance(self.tolerated, int) or self.tolerated < 0:
            raise ValueError(f"tolerated={self.tolerated!r} must be an int >= 0")


def clip_update(arrays: Sequence[np.ndarray], clipping_norm: float) -> list[np.ndarray]:
    """The update scaled down, as one vector, to L2 norm at most ``clipping_norm`` (float64)."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))
    clipped = clip_by_l2_norm(flat, clipping_norm).numpy()
    sizes = np.cumsum([np.size(a) for a in arrays])[:-1]
    return [part.reshape(np.shape(a)) for part, a in zip(np.split(clipped, sizes), arrays)]


def noise_share(arrays: Sequence[np.ndarray], plan: DistributedDP, contributors: int) -> list[np.ndarray]:
    """The arrays plus this client's share of the sum's noise: N(0, (z C)^2 / (contributors - t)) per entry,
    from ``SecureGaussian`` (a keystream seeded by the OS, which no run seed replays)."""
    if contributors <= plan.tolerated:
        raise ValueError(f"{contributors} contributors cannot carry noise with tolerated={plan.tolerated}")
    std = plan.noise_multiplier * plan.clipping_norm / math.sqrt(contributors - plan.tolerated)
    size = int(sum(np.size(a) for a in arrays))
    noise = SecureGaussian(size).sample(std).numpy() if size else np.zeros(0)
    sizes = np.cumsum([np.size(a) for a in arrays])[:-1]
    parts = np.split(noise, sizes)
    return [np.asarray(a, dtype=np.float64) + part.reshape(np.shape(a)) for part, a in zip(parts, arrays)]


def sum_noise_multiplier(plan: DistributedDP, contributors: int, survivors: int) -> float:
    """z of the noise in a sum of ``survivors`` shares (of ``contributors`` planned), against a server that
    knows up to t of them: z sqrt((survivors - t) / (contributors - t)); 0 if none is left."""
    honest = max(0, survivors - plan.tolerated)
    return plan.noise_multiplier * math.sqrt(honest / (contributors - plan.tolerated))
