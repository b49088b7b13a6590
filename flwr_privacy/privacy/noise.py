"""Laplace and Gaussian noise, and the mechanisms calibrating them (Dwork & Roth 2014, Sec. 3.3, App. A).

Every sampler takes an optional ``torch.Generator`` so that a seeded run is reproducible;
``torch.distributions`` cannot take one, so Laplace noise is drawn as the difference of two
exponentials from the generator (if E1, E2 ~ Exp(1) then b * (E1 - E2) ~ Lap(b)).

These are floating-point samplers: like most DP code they do not defend against the
floating-point attacks of Mironov (CCS 2012). They suit research and simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Shape = int | Sequence[int] | torch.Size


def _as_shape(shape_or_n: Shape) -> tuple[int, ...]:
    if isinstance(shape_or_n, int):
        return (shape_or_n,)
    return tuple(shape_or_n)


def _require_positive(name: str, value: float) -> None:
    # `not value > 0` also rejects NaN.
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def laplace_noise(
    shape_or_n: Shape,
    scale: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Samples of Lap(0, scale), density exp(-|x|/scale) / (2 scale) (Dwork & Roth Def. 3.2)."""
    _require_positive("Laplace scale", scale)
    shape = _as_shape(shape_or_n)
    # Sampled in float64 so that the difference of exponentials keeps its tails before the cast.
    e1 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
    e2 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
    return (scale * (e1 - e2)).to(dtype)


def gaussian_noise(
    shape: Shape,
    std: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Samples of N(0, std^2)."""
    _require_positive("Gaussian std", std)
    return std * torch.randn(_as_shape(shape), generator=generator, dtype=dtype)


def laplace_mechanism(
    x: torch.Tensor,
    sensitivity: float,
    epsilon: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x + Lap(sensitivity / epsilon) per entry: epsilon-DP for that L1 sensitivity (D&R Thm. 3.6)."""
    _require_positive("sensitivity", sensitivity)
    _require_positive("epsilon", epsilon)
    noise = laplace_noise(x.shape, sensitivity / epsilon, generator, dtype=x.dtype)
    return x + noise.to(x.device)


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """sigma = sqrt(2 ln(1.25/delta)) sensitivity / epsilon, valid for epsilon < 1 (D&R Thm. A.1)."""
    _require_positive("sensitivity", sensitivity)
    _require_positive("epsilon", epsilon)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if epsilon >= 1:
        # The classic proof bounds the privacy loss only for epsilon < 1; above it this sigma
        # can be too small, so refuse rather than silently report an unproven guarantee.
        raise ValueError(
            f"epsilon must be < 1 for the classic Gaussian mechanism, got {epsilon}; "
            "for epsilon >= 1 use the analytic Gaussian mechanism (Balle & Wang 2018) or an RDP accountant"
        )
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon


def gaussian_mechanism(
    x: torch.Tensor,
    sensitivity: float,
    epsilon: float,
    delta: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x + N(0, sigma^2) per entry: (epsilon, delta)-DP for that L2 sensitivity (D&R Thm. A.1)."""
    sigma = gaussian_sigma(sensitivity, epsilon, delta)
    return x + gaussian_noise(x.shape, sigma, generator, dtype=x.dtype).to(x.device)
