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


def test_gaussian_noise_honours_the_requested_dtype():
    noise = gaussian_noise(4, 1.0, _gen(5), dtype=torch.float64)
    assert noise.dtype == torch.float64
    # Drawn in float64, not drawn in float32 and widened: the same seed gives the float64 draw.
    assert torch.equal(noise, torch.randn(4, generator=_gen(5), dtype=torch.float64))


def test_noise_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"^Gaussian std must be a finite number > 0, got 0\.0$"):
        gaussian_noise(3, 0.0)
    with pytest.raises(ValueError, match=r"^Laplace scale must be a finite number > 0, got -1\.0$"):
        laplace_noise(3, -1.0)


@pytest.mark.parametrize("sensitivity", [0.1, 1.0, 2.5])
def test_gaussian_sigma_grows_linearly_with_sensitivity(sensitivity):
    epsilon, delta = 0.5, 1e-5
    assert gaussian_sigma(sensitivity, epsilon, delta) == pytest.approx(
        math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon
    )
    unit = gaussian_sigma(1.0, epsilon, delta)
    assert gaussian_sigma(sensitivity, epsilon, delta) == pytest.approx(sensitivity * unit)


def test_gaussian_refusal_points_to_the_alternatives():
    with pytest.raises(ValueError) as excinfo:
        gaussian_sigma(1.0, 2.0, 1e-5)
    message = str(excinfo.value)
    assert message.startswith("epsilon must be < 1 for the classic Gaussian mechanism, got 2.0; ")
    advice = "for epsilon >= 1 use the analytic Gaussian mechanism (Balle & Wang 2018) or an RDP accountant"
    assert message.endswith(advice)


def test_mechanisms_are_reproducible_with_a_generator():
    x = torch.zeros(50)
    for mechanism in (
        lambda seed: laplace_mechanism(x, 1.0, 0.5, _gen(seed)),
        lambda seed: gaussian_mechanism(x, 1.0, 0.5, 1e-5, _gen(seed)),
    ):
        assert torch.equal(mechanism(7), mechanism(7))
        assert not torch.equal(mechanism(7), mechanism(8))


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_float64_inputs_get_float64_noise(mechanism):
    x = torch.zeros(1000, dtype=torch.float64)
    if mechanism == "laplace":
        out = laplace_mechanism(x, 1.0, 0.5, _gen(9))
    else:
        out = gaussian_mechanism(x, 1.0, 0.5, 1e-5, _gen(9))
    assert out.dtype == torch.float64
    # The noise is drawn at the input's precision, not drawn in float32 and widened.
    assert (out.to(torch.float32).to(torch.float64) != out).float().mean().item() > 0.9


def test_mechanism_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"^sensitivity must be a finite number > 0, got 0\.0$"):
        laplace_mechanism(torch.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^epsilon must be a finite number > 0, got -1\.0$"):
        laplace_mechanism(torch.zeros(3), 1.0, -1.0)
    with pytest.raises(ValueError, match=r"^sensitivity must be a finite number > 0, got 0\.0$"):
        gaussian_mechanism(torch.zeros(3), 0.0, 0.5, 1e-5)
    with pytest.raises(ValueError, match=r"^epsilon must be a finite number > 0, got -1\.0$"):
        gaussian_mechanism(torch.zeros(3), 1.0, -1.0, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mechanisms_keep_the_input_dtype(dtype):
    x = torch.zeros(10, dtype=dtype)
    assert laplace_mechanism(x, 1.0, 0.5, _gen(1)).dtype == dtype
    assert gaussian_mechanism(x, 1.0, 0.5, 1e-5, _gen(1)).dtype == dtype
