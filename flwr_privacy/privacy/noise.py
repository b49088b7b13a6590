"""Laplace and Gaussian noise, and the mechanisms calibrating them (Dwork & Roth 2014, Sec. 3.3, App. A).

Noise nobody can replay. Without a ``generator`` (the default) every draw comes from the operating
system's cryptographically secure generator (``os.urandom``), independent of any run seed, so a server
that knows the seed, the round and the data order still cannot reproduce it:

- noise that is released with the value it protects (``laplace_mechanism``, ``gaussian_mechanism``, the
  SVT's numeric answers) is added by OpenDP (``make_laplace``, ``make_gaussian``), whose samplers are
  exact on a discretised grid: the floating-point attack of Mironov (CCS 2012) on textbook samplers
  does not apply;
- noise that is only compared, never released (the SVT's threshold and query noise: the output is which
  queries passed), is drawn here from secure uniforms, as E1 - E2 with E ~ Exp(1) for the Laplace and by
  Box-Muller for the Gaussian.

Passing a seeded ``torch.Generator`` draws from it instead: reproducible, so replayable by anyone who
knows the seed. That is for tests only, and callers say so out loud (DSSGD's ``insecure_seeded_noise``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
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


def secure_uniform(shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform samples in (0, 1], float64, 53 random bits each from ``os.urandom``."""
    n = math.prod(shape)
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return torch.from_numpy((bits.astype(np.float64) + 1.0) * 2.0**-53).reshape(shape)


def laplace_noise(
    shape_or_n: Shape,
    scale: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Samples of Lap(0, scale), density exp(-|x|/scale) / (2 scale) (Dwork & Roth Def. 3.2); from the
    secure generator unless a (seeded, replayable) ``generator`` is given."""
    _require_positive("Laplace scale", scale)
    shape = _as_shape(shape_or_n)
    # Sampled in float64 so that the difference of exponentials keeps its tails before the cast.
    if generator is None:
        e1, e2 = -torch.log(secure_uniform(shape)), -torch.log(secure_uniform(shape))
    else:
        e1 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        e2 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
    return (scale * (e1 - e2)).to(dtype)


def gaussian_noise(
    shape: Shape,
    std: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Samples of N(0, std^2); from the secure generator (Box-Muller) unless a ``generator`` is given."""
    _require_positive("Gaussian std", std)
    shape = _as_shape(shape)
    if generator is None:
        u1, u2 = secure_uniform(shape), secure_uniform(shape)
        return (std * torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)
    return std * torch.randn(shape, generator=generator, dtype=dtype)


@cache
def _opendp() -> Any:
    """OpenDP, imported on first use: it takes seconds, and every client process would pay them (a
    deployment starts one per message) though only released DP values need it."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _opendp_release(x: torch.Tensor, mechanism: str, scale: float) -> torch.Tensor:
    """x plus OpenDP's exact Laplace (L1) or Gaussian (L2) noise of this scale, per entry, as x's dtype."""
    dp = _opendp()
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    make, distance = {"laplace": (dp.m.make_laplace, dp.l1_distance), "gaussian": (dp.m.make_gaussian, dp.l2_distance)}[
        mechanism
    ]
    measurement = make(domain, distance(T=float), scale=scale)
    flat = x.detach().reshape(-1).cpu().to(torch.float64).tolist()
    released = torch.tensor(measurement(flat) if flat else [], dtype=torch.float64)
    return released.reshape(x.shape).to(dtype=x.dtype, device=x.device)


def release_laplace(x: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + Lap(scale) per entry, for a value that is released: OpenDP's exact sampler from the secure
    generator, or the seeded ``generator`` (replayable, for tests)."""
    _require_positive("Laplace scale", scale)
    if generator is None:
        return _opendp_release(x, "laplace", scale)
    return x + laplace_noise(x.shape, scale, generator, dtype=x.dtype).to(x.device)


def laplace_mechanism(
    x: torch.Tensor,
    sensitivity: float,
    epsilon: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x + Lap(sensitivity / epsilon) per entry: epsilon-DP for that L1 sensitivity (D&R Thm. 3.6)."""
    _require_positive("sensitivity", sensitivity)
    _require_positive("epsilon", epsilon)
    return release_laplace(x, sensitivity / epsilon, generator)


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
    if generator is None:
        return _opendp_release(x, "gaussian", sigma)
    return x + gaussian_noise(x.shape, sigma, generator, dtype=x.dtype).to(x.device)
