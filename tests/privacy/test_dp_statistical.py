"""Statistical tests of the privacy guarantees: each mechanism run on neighbouring inputs.

An adversary who knows everything but the secret sees outputs; epsilon-DP bounds how much more likely any
output is under one neighbour than the other: P[M(x) in S] <= e^epsilon P[M(x') in S] (+ delta). Each test
estimates those frequencies from many runs and checks the bound with a confidence margin (four standard
errors), and checks that the bound is met tightly where the mechanism's noise is calibrated to be
exactly epsilon: removing a noise term or scaling it wrong makes one check or the other fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_privacy.privacy.noise import gaussian_mechanism, gaussian_sigma, laplace_mechanism
from flwr_privacy.privacy.svt import PAPER_RELEASE_FRACTION, budget_split, svt_above_threshold

Z = 4.0  # standard errors of margin


def log_ratio_bounds(p: np.ndarray, q: np.ndarray, n: int, minimum: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Per outcome seen at least ``minimum`` times under both: lower and upper confidence bounds of ln(p/q)."""
    keep = (p * n >= minimum) & (q * n >= minimum)
    p, q = p[keep], q[keep]
    se = np.sqrt((1 - p) / (p * n) + (1 - q) / (q * n))  # of ln p - ln q, by the delta method
    ratio = np.log(p / q)
    return ratio - Z * se, ratio + Z * se


def histogram(samples: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(samples, bins=np.concatenate([[-np.inf], edges, [np.inf]]))
    return counts / len(samples)


def test_laplace_mechanism_is_exactly_epsilon_dp_on_neighbours():
    epsilon, sensitivity, n = 1.0, 1.0, 400_000
    generator = torch.Generator().manual_seed(0)
    x = laplace_mechanism(torch.zeros(n, dtype=torch.float64), sensitivity, epsilon, generator).numpy()
    x_neighbour = laplace_mechanism(torch.full((n,), sensitivity, dtype=torch.float64), sensitivity, epsilon, generator)
    edges = np.arange(-5, 6, 0.25)
    p, q = histogram(x, edges), histogram(x_neighbour.numpy(), edges)
    low, high = log_ratio_bounds(p, q, n)
    # Every output interval: |ln(p/q)| <= epsilon, within the margin.
    assert np.all(low <= epsilon) and np.all(high >= -epsilon)
    # In the tails the ratio is exactly e^epsilon (too little or too much noise moves it).
    assert np.max(high) >= epsilon and np.max(low) <= epsilon
    assert np.min(low) <= -epsilon and np.min(high) >= -epsilon


def hockey_stick(p: np.ndarray, q: np.ndarray, epsilon: float) -> float:
    """sum over outcomes of max(0, p - e^epsilon q): the smallest delta for which (epsilon, delta) holds."""
    return float(np.maximum(0.0, p - math.exp(epsilon) * q).sum())


def test_gaussian_mechanism_meets_its_epsilon_delta_on_neighbours():
    epsilon, delta, sensitivity, n = 0.5, 1e-2, 1.0, 1_000_000
    generator = torch.Generator().manual_seed(1)
    x = gaussian_mechanism(torch.zeros(n, dtype=torch.float64), sensitivity, epsilon, delta, generator).numpy()
    y = gaussian_mechanism(torch.full((n,), sensitivity, dtype=torch.float64), sensitivity, epsilon, delta, generator)
    sigma = gaussian_sigma(sensitivity, epsilon, delta)
    edges = np.linspace(-6 * sigma, 6 * sigma + sensitivity, 400)
    p, q = histogram(x, edges), histogram(y.numpy(), edges)
    # The classic calibration is loose: its true delta at epsilon is far below the promised one.
    assert hockey_stick(p, q, epsilon) <= delta
    assert hockey_stick(q, p, epsilon) <= delta
    # The spread is the calibrated one (a smaller sigma would be a weaker guarantee than reported).
    assert np.std(x) == pytest.approx(sigma, rel=0.01)


def svt_outcomes(values: list[float], threshold: float, epsilon: float, runs: int, seed: int) -> np.ndarray:
    """Frequencies of SVT's selection with c = 1: which query passed (0 .. n-1), or none (n)."""
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.tensor(values, dtype=torch.float64)
    counts = np.zeros(len(values) + 1)
    for _ in range(runs):
        result = svt_above_threshold(tensor, threshold, 1, epsilon, 1.0, generator)
        counts[int(result.indices[0]) if result.indices.numel() else len(values)] += 1
    return counts / runs


RUNS = 40_000
QUERIES = [1.0, 2.0, 3.0]
THRESHOLD, EPSILON = 2.5, 1.0


@pytest.fixture(scope="module")
def svt_frequencies():
    return svt_outcomes(QUERIES, THRESHOLD, EPSILON, RUNS, 0)


def test_svt_selection_is_epsilon_dp_on_neighbouring_queries(svt_frequencies):
    """Neighbours change every query by at most Delta = 1, in either direction (|v| is not monotonic)."""
    epsilon_select = (1 - PAPER_RELEASE_FRACTION) * EPSILON
    for neighbour in ([2.0, 3.0, 4.0], [0.0, 1.0, 2.0], [2.0, 1.0, 4.0]):
        q = svt_outcomes(neighbour, THRESHOLD, EPSILON, RUNS, 1)
        low, high = log_ratio_bounds(svt_frequencies, q, RUNS)
        assert np.all(low <= epsilon_select) and np.all(high >= -epsilon_select), (svt_frequencies, q)


def laplace_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / scale), 1 - 0.5 * np.exp(-np.maximum(x, 0) / scale))


def test_svt_selects_with_the_distribution_its_noise_scales_give(svt_frequencies):
    """P[no query passes] = E_rho[prod_i P(|v_i| + nu_i < T + rho)], rho ~ Lap(b_threshold), nu ~ Lap(b_query):
    drawing the threshold noise per query, dropping a noise or scaling one wrong changes it."""
    scales = budget_split(EPSILON, 1, "proven")
    rho = np.linspace(-40 * scales.threshold, 40 * scales.threshold, 200_001)
    density = np.exp(-np.abs(rho) / scales.threshold) / (2 * scales.threshold)
    below = np.prod([laplace_cdf(THRESHOLD + rho - v, scales.query) for v in QUERIES], axis=0)
    expected_none = float(np.sum(density * below) * (rho[1] - rho[0]))
    observed = svt_frequencies[-1]
    assert abs(observed - expected_none) <= Z * math.sqrt(expected_none * (1 - expected_none) / RUNS)


def dpsgd_projections(big: bool, sigma: float, runs: int, n: int = 100, lot: int = 20, clip: float = 1.0) -> np.ndarray:
    """One DP-SGD step (Opacus: Poisson lot, per-example clipping, noise), ``runs`` times, on a linear model
    whose examples all have zero gradient but the last, whose input is huge (``big``) or zero: the neighbour
    that is in the data or not. Each noisy gradient projected on the big example's clipped gradient, in
    units of C / B (the shift it adds when its lot holds it)."""
    from torch import nn

    from flwr_privacy.data import TensorData
    from flwr_privacy.privacy.dpsgd import DPSGDConfig, PrivateSteps

    x = torch.zeros(n, 1, 1, 1)
    x[-1] = 1e4 if big else 0.0
    data = TensorData(x, torch.zeros(n, dtype=torch.long))
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 3, bias=False))
    # Seeded noise: the same draws every run, so the margins below hold or fail the same way each time.
    config = DPSGDConfig(enabled=True, noise_multiplier=sigma, max_grad_norm=clip, insecure_seeded_noise=True)
    private = PrivateSteps(model, data, config, lot, torch.device("cpu"), torch.Generator().manual_seed(0))
    direction = torch.ones(3) / math.sqrt(3)  # d(sum of outputs)/dW for a positive input, normalised
    lots = private.lots()
    out = np.empty(runs)
    try:
        for i in range(runs):
            private.noisy_gradient(*next(lots), loss_fn=lambda o, y: o.sum(1).mean())
            out[i] = float(model[1].weight.grad.reshape(-1) @ direction) * lot / clip
    finally:
        private.close()
    return out


@pytest.mark.parametrize("sigma", [1.0, 0.5, 1e-6])
def test_dpsgd_step_meets_the_sampled_gaussians_epsilon_delta_on_neighbours(sigma):
    """The sampled Gaussian mechanism (rate q = B / n, noise sigma) on neighbouring data sets: for every
    threshold set, P[out in S | with] <= e^epsilon P[out in S | without] + delta, delta from dp-accounting's
    RDP bound for one step (sigma = 1), within a confidence margin. With the noise halved, or removed (an
    output above zero then happens only with the example), it fails."""
    import dp_accounting

    runs, q, epsilon = 4000, 20 / 100, 1.0
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0)))
    delta = accountant.get_delta(epsilon)
    with_it, without = dpsgd_projections(True, sigma, runs), dpsgd_projections(False, sigma, runs)
    violations = []
    for t in np.arange(0.0, 3.01, 0.25):
        for p_set, q_set in ((with_it > t, without > t), (without < -t, with_it < -t)):
            p, r = p_set.mean(), q_set.mean()
            se = math.sqrt((p * (1 - p) + math.exp(2 * epsilon) * r * (1 - r)) / runs)
            if p - math.exp(epsilon) * r > delta + Z * se:
                violations.append((t, p, r))
    assert (violations == []) == (sigma == 1.0), (violations, delta)
    if sigma == 1.0:  # the example is in about q of the lots: it shifts the mean by q (C / B units)
        assert np.mean(with_it) - np.mean(without) == pytest.approx(q, abs=Z * math.sqrt(2 / runs))
