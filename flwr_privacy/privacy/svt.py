"""The sparse vector technique (SVT): release at most c noisy values whose magnitudes pass a noisy threshold.

Two variants, both over a 1-D tensor of values whose query answers are their magnitudes |v_i|,
each query with sensitivity `sensitivity` (Delta) and examined in a random order until c of them
pass or all have been examined:

* ``"paper"``: the SVT of Shokri & Shmatikov, "Privacy-Preserving Deep Learning" (CCS 2015), as the
  DSSGD paper writes it: eps1 = 8/9 eps for selection and eps2 = 1/9 eps for the values, with
  sigma(e) = 2 c Delta / e; threshold noise Lap(sigma(eps1)), query noise Lap(2 sigma(eps1)),
  released values v_i + Lap(sigma(eps2)).
* ``"proven"`` (the default): Lyu, Su & Li, "Understanding the Sparse Vector Technique for
  Differential Privacy" (VLDB 2017), Alg. 7 with its numeric output: eps3 = release_fraction * eps
  for the values, and the rest split eps1 : eps2 = 1 : (2c)^(2/3) (their optimum for queries that
  are not monotonic, which magnitudes of parameter changes are not); threshold noise
  Lap(Delta/eps1), query noise Lap(2 c Delta/eps2), released values v_i + Lap(c Delta/eps3) drawn
  fresh.

What each guarantees is computed from the noise scales actually used, by `guaranteed_epsilon`:
Lyu et al.'s privacy proof for their Alg. 1, valid for any threshold and query scales, bounds the
selection by Delta/b_threshold + 2 c Delta/b_query, and releasing at most c values with fresh
Laplace noise costs c Delta/b_release by sequential composition. For "proven" the sum is exactly
eps. For "paper" it is eps * (1/2 + 4/(9c)), at most 17/18 eps: the paper's variant is private at
its claimed eps, with about twice the noise it needs. docs/dssgd.md gives the derivation.

The threshold noise is drawn once and never refreshed (Lyu et al. Alg. 1 and 7), which is what
lets all query noise be drawn at once and the first c passes be read off in one vectorised step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from flwr_privacy.privacy.noise import laplace_noise, release_laplace

VARIANTS = ("proven", "paper")

PAPER_RELEASE_FRACTION = 1 / 9
"""DSSGD's share of the budget for releasing values (eps2 = eps/9); the rest, 8/9, selects."""


class SVTScales(NamedTuple):
    """Laplace scales b of the three noises an SVT run draws."""

    threshold: float
    query: float
    release: float


@dataclass(frozen=True)
class SVTResult:
    """What an SVT run releases, with the epsilon it claims and the epsilon it provably satisfies."""

    indices: torch.Tensor
    """Positions selected (int64), in the order they were examined."""
    values: torch.Tensor
    """Noisy released values, aligned with `indices`."""
    epsilon_claimed: float
    epsilon_guaranteed: float
    num_queries: int
    """Queries answered (above or below) before stopping."""


def _validate_budget(epsilon: float, c: int, sensitivity: float, release_fraction: float) -> None:
    if not epsilon > 0 or math.isinf(epsilon):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ValueError(f"c (the most values released) must be an int >= 1, got {c!r}")
    if not sensitivity > 0 or math.isinf(sensitivity):
        raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity}")
    if not 0 < release_fraction < 1:
        raise ValueError(f"release_fraction must be in (0, 1), got {release_fraction}")


def budget_split(
    epsilon: float,
    c: int,
    variant: str = "proven",
    sensitivity: float = 1.0,
    release_fraction: float = PAPER_RELEASE_FRACTION,
) -> SVTScales:
    """Noise scales of `variant` for budget epsilon, c releases and sensitivity Delta (see the module doc)."""
    _validate_budget(epsilon, c, sensitivity, release_fraction)
    eps_select = (1 - release_fraction) * epsilon
    eps_release = release_fraction * epsilon
    if variant == "paper":
        # DSSGD's sigma(e) = 2 c Delta / e: Lap(sigma(eps1)) on the threshold, Lap(2 sigma(eps1)) per query.
        sigma_select = 2 * c * sensitivity / eps_select
        return SVTScales(sigma_select, 2 * sigma_select, 2 * c * sensitivity / eps_release)
    if variant == "proven":
        eps_threshold = eps_select / (1 + (2 * c) ** (2 / 3))
        eps_queries = eps_select - eps_threshold
        return SVTScales(
            sensitivity / eps_threshold,
            2 * c * sensitivity / eps_queries,
            c * sensitivity / eps_release,
        )
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


class _Same:
    """The default of ``noise_generator``: the noise comes from ``generator`` too."""


SAME = _Same()
NoiseGenerator = torch.Generator | None | _Same


def guaranteed_epsilon(scales: SVTScales, c: int, sensitivity: float) -> float:
    """Delta/b_threshold + 2c Delta/b_query (Lyu et al., Alg. 1 proof) + c Delta/b_release (composition)."""
    return (
        sensitivity / scales.threshold
        + 2 * c * sensitivity / scales.query
        + c * sensitivity / scales.release
    )


def noisy_threshold(threshold: float, scale: float, generator: torch.Generator | None) -> float:
    """T + rho, rho ~ Lap(b_threshold), drawn once per run (Lyu et al. Alg. 7, the noisy threshold)."""
    return threshold + laplace_noise(1, scale, generator, dtype=torch.float64).item()


def above_threshold(
    values: torch.Tensor,
    noisy_thresh: float,
    c: int,
    query_scale: float,
    generator: torch.Generator | None,
    noise_generator: NoiseGenerator = SAME,
) -> tuple[torch.Tensor, int]:
    """Test |v_i| + nu_i >= T + rho in a random order until c pass (Lyu et al. Alg. 7, the query loop).

    Returns the positions that passed, in the order examined, and how many queries were answered.
    ``generator`` draws the order, ``noise_generator`` (by default the same) the noise.
    """
    n = values.numel()
    noise = generator if isinstance(noise_generator, _Same) else noise_generator
    order = torch.randperm(n, generator=generator)
    answers = values.detach().cpu().to(torch.float64).abs()[order]
    passed = answers + laplace_noise(n, query_scale, noise, dtype=torch.float64) >= noisy_thresh
    positions = torch.nonzero(passed).flatten()[:c]
    num_queries = int(positions[-1]) + 1 if positions.numel() == c else n
    return order[positions], num_queries


def release_values(
    values: torch.Tensor, indices: torch.Tensor, scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """v_i + Lap(b_release) for each selected i, noise drawn fresh (Lyu et al. Alg. 7, numeric output)."""
    return release_laplace(values.detach()[indices.to(values.device)], scale, generator)


def _validate_values(values: torch.Tensor, threshold: float) -> None:
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or not values.is_floating_point():
        raise ValueError("values must be a 1-D floating-point tensor")
    if not torch.isfinite(values).all():
        raise ValueError("values must be finite (no NaN or Inf)")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")


def _run_svt(
    values: torch.Tensor,
    threshold: float,
    c: int,
    epsilon: float,
    sensitivity: float,
    generator: torch.Generator | None,
    variant: str,
    release_fraction: float,
    noise_generator: NoiseGenerator = SAME,
) -> SVTResult:
    _validate_values(values, threshold)
    scales = budget_split(epsilon, c, variant, sensitivity, release_fraction)
    noise = generator if isinstance(noise_generator, _Same) else noise_generator
    thresh = noisy_threshold(threshold, scales.threshold, noise)
    indices, num_queries = above_threshold(values, thresh, c, scales.query, generator, noise)
    return SVTResult(
        indices=indices.to(values.device),
        values=release_values(values, indices, scales.release, noise),
        epsilon_claimed=epsilon,
        epsilon_guaranteed=guaranteed_epsilon(scales, c, sensitivity),
        num_queries=num_queries,
    )


def svt_dssgd(
    values: torch.Tensor,
    threshold: float,
    c: int,
    epsilon: float,
    sensitivity: float,
    generator: torch.Generator | None = None,
    noise_generator: NoiseGenerator = SAME,
) -> SVTResult:
    """The SVT of DSSGD as Shokri & Shmatikov write it (CCS 2015), kept for fidelity (see the module doc).
    ``generator`` orders the queries; the noise comes from ``noise_generator`` (by default the same; None:
    the secure generator)."""
    release_fraction = PAPER_RELEASE_FRACTION
    return _run_svt(
        values, threshold, c, epsilon, sensitivity, generator, "paper", release_fraction, noise_generator
    )


def svt_above_threshold(
    values: torch.Tensor,
    threshold: float,
    c: int,
    epsilon: float,
    sensitivity: float,
    generator: torch.Generator | None = None,
    release_fraction: float = PAPER_RELEASE_FRACTION,
    noise_generator: NoiseGenerator = SAME,
) -> SVTResult:
    """Lyu et al.'s SVT with numeric output (VLDB 2017, Alg. 7): epsilon-DP in total; the default.
    ``generator`` orders the queries; the noise comes from ``noise_generator`` (by default the same; None:
    the secure generator)."""
    return _run_svt(
        values, threshold, c, epsilon, sensitivity, generator, "proven", release_fraction, noise_generator
    )
