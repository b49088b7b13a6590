"""Laplace and Gaussian noise have the right distribution; the mechanisms calibrate and validate."""

import math

import numpy as np
import pytest
import torch

from flwr_privacy.privacy.noise import (
    gaussian_mechanism,
    gaussian_noise,
    gaussian_sigma,
    laplace_mechanism,
    laplace_noise,
)

N = 200_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _laplace_cdf(x: np.ndarray, b: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(x / b), 1 - 0.5 * np.exp(-x / b))


def _ks_statistic(samples: np.ndarray, cdf) -> float:
    x = np.sort(samples)
    n = x.size
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


@pytest.mark.parametrize("b", [0.5, 3.0])
def test_laplace_noise_has_scale_b(b):
    x = laplace_noise(N, b, _gen()).double()
    assert abs(x.mean().item()) < 0.02 * b
    assert x.abs().mean().item() == pytest.approx(b, rel=0.02)  # E|X| = b
    assert x.var().item() == pytest.approx(2 * b * b, rel=0.04)  # Var X = 2 b^2


def test_laplace_noise_passes_ks_test_against_laplace_cdf():
    b = 2.0
    d = _ks_statistic(laplace_noise(N, b, _gen(1)).double().numpy(), lambda x: _laplace_cdf(x, b))
    # 1.63 / sqrt(n) is the 1% critical value of the Kolmogorov distribution.
    assert d < 1.63 / math.sqrt(N)


def test_ks_test_rejects_a_wrong_scale():
    d = _ks_statistic(laplace_noise(N, 2.2, _gen(1)).double().numpy(), lambda x: _laplace_cdf(x, 2.0))
    assert d > 1.63 / math.sqrt(N)


def test_gaussian_noise_has_std():
    x = gaussian_noise((400, 500), 1.5, _gen(2)).double()
    assert x.shape == (400, 500)
    assert abs(x.mean().item()) < 0.02
    assert x.std().item() == pytest.approx(1.5, rel=0.01)


def test_noise_is_reproducible_with_a_generator():
    assert torch.equal(laplace_noise((3, 4), 1.0, _gen(7)), laplace_noise((3, 4), 1.0, _gen(7)))
    assert torch.equal(gaussian_noise(5, 1.0, _gen(7)), gaussian_noise(5, 1.0, _gen(7)))
    assert not torch.equal(laplace_noise(5, 1.0, _gen(7)), laplace_noise(5, 1.0, _gen(8)))


def test_noise_shape_and_dtype():
    assert laplace_noise(7, 1.0).shape == (7,)
    assert laplace_noise(torch.Size([2, 3]), 1.0, dtype=torch.float64).dtype == torch.float64
    assert gaussian_noise([2, 3], 1.0).dtype == torch.float32


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_noise_rejects_bad_scale(bad):
    with pytest.raises(ValueError, match="scale"):
        laplace_noise(3, bad)
    with pytest.raises(ValueError, match="std"):
        gaussian_noise(3, bad)


def test_laplace_mechanism_uses_sensitivity_over_epsilon():
    x = torch.full((N,), 5.0, dtype=torch.float64)
    out = laplace_mechanism(x, sensitivity=2.0, epsilon=0.5, generator=_gen(3))
    assert out.dtype == torch.float64
    assert (out - 5.0).abs().mean().item() == pytest.approx(4.0, rel=0.02)


def test_gaussian_sigma_matches_the_classic_formula():
    assert gaussian_sigma(1.0, 0.5, 1e-5) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5)


def test_gaussian_mechanism_std_matches_sigma():
    x = torch.zeros(N)
    out = gaussian_mechanism(x, sensitivity=0.1, epsilon=0.9, delta=1e-5, generator=_gen(4))
    assert out.std().item() == pytest.approx(gaussian_sigma(0.1, 0.9, 1e-5), rel=0.01)


def test_gaussian_mechanism_refuses_epsilon_at_least_one():
    with pytest.raises(ValueError, match="epsilon must be < 1"):
        gaussian_mechanism(torch.zeros(3), 1.0, 1.0, 1e-5)


@pytest.mark.parametrize(
    ("sensitivity", "epsilon", "delta", "match"),
    [
        (0.0, 0.5, 1e-5, "sensitivity"),
        (1.0, -0.1, 1e-5, "epsilon"),
        (1.0, 0.5, 0.0, "delta"),
        (1.0, 0.5, 1.0, "delta"),
    ],
)
def test_gaussian_mechanism_validates(sensitivity, epsilon, delta, match):
    with pytest.raises(ValueError, match=match):
        gaussian_mechanism(torch.zeros(3), sensitivity, epsilon, delta)


@pytest.mark.parametrize(
    ("sensitivity", "epsilon", "match"), [(0.0, 1.0, "sensitivity"), (1.0, 0.0, "epsilon")]
)
def test_laplace_mechanism_validates(sensitivity, epsilon, match):
    with pytest.raises(ValueError, match=match):
        laplace_mechanism(torch.zeros(3), sensitivity, epsilon)
