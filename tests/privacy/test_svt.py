"""The sparse vector technique: noise scales, stopping, selection, and the epsilon each variant guarantees."""

import math

import pytest
import torch

from flwr_privacy.privacy.noise import laplace_noise
from flwr_privacy.privacy.svt import (
    PAPER_RELEASE_FRACTION,
    SVTScales,
    above_threshold,
    budget_split,
    guaranteed_epsilon,
    noisy_threshold,
    release_values,
    svt_above_threshold,
    svt_dssgd,
)

SVTS = [svt_above_threshold, svt_dssgd]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_paper_scales_follow_dssgd_formulas():
    eps, c, delta = 0.9, 5, 2.0
    eps1, eps2 = 8 / 9 * eps, 1 / 9 * eps
    sigma1 = 2 * c * delta / eps1
    scales = budget_split(eps, c, "paper", delta)
    assert scales == pytest.approx(SVTScales(sigma1, 2 * sigma1, 2 * c * delta / eps2))
    assert scales == pytest.approx((25.0, 50.0, 200.0))


@pytest.mark.parametrize("c", [1, 7, 1000])
def test_proven_scales_follow_lyu_alg7_with_optimal_ratio(c):
    eps, delta, release = 2.0, 0.5, 0.25
    eps_select, eps3 = 0.75 * eps, 0.25 * eps
    eps1 = eps_select / (1 + (2 * c) ** (2 / 3))
    eps2 = eps_select - eps1
    scales = budget_split(eps, c, "proven", delta, release)
    assert scales.threshold == pytest.approx(delta / eps1)
    assert scales.query == pytest.approx(2 * c * delta / eps2)
    assert scales.release == pytest.approx(c * delta / eps3)
    # The split is Lyu et al.'s optimum for non-monotonic queries, eps1 : eps2 = 1 : (2c)^(2/3).
    assert (2 * c * delta / scales.query) / (delta / scales.threshold) == pytest.approx((2 * c) ** (2 / 3))


@pytest.mark.parametrize("c", [1, 3, 100])
@pytest.mark.parametrize("release", [PAPER_RELEASE_FRACTION, 0.5])
def test_proven_variant_guarantees_exactly_its_epsilon(c, release):
    scales = budget_split(1.3, c, "proven", 0.2, release)
    assert guaranteed_epsilon(scales, c, 0.2) == pytest.approx(1.3)


@pytest.mark.parametrize("c", [1, 2, 10, 10_000])
def test_paper_variant_guarantee_from_its_scales(c):
    eps = 1.0
    guaranteed = guaranteed_epsilon(budget_split(eps, c, "paper", 0.002), c, 0.002)
    # eps1/(2c) for the threshold + eps1/2 for the queries + eps2/2 for the values.
    assert guaranteed == pytest.approx(eps * (0.5 + 4 / (9 * c)))
    assert guaranteed <= 17 / 18 * eps + 1e-12


def test_guaranteed_epsilon_is_reported_on_the_result():
    values = torch.linspace(-1, 1, 50)
    proven = svt_above_threshold(values, 0.5, 4, 2.0, 2.0, _gen())
    paper = svt_dssgd(values, 0.5, 4, 2.0, 2.0, _gen())
    assert proven.epsilon_claimed == paper.epsilon_claimed == 2.0
    assert proven.epsilon_guaranteed == pytest.approx(2.0)
    assert paper.epsilon_guaranteed == pytest.approx(2.0 * (0.5 + 4 / 36))


@pytest.mark.parametrize("svt", SVTS)
def test_huge_epsilon_selects_exactly_the_values_above_threshold(svt):
    values = torch.tensor([0.1, -0.9, 0.3, 0.75, -0.2, 0.6, 0.05, -0.55])
    result = svt(values, 0.5, 8, 1e9, 1.0, _gen())
    assert sorted(result.indices.tolist()) == [1, 3, 5, 7]
    assert torch.allclose(result.values, values[result.indices], atol=1e-4)
    assert result.num_queries == values.numel()


@pytest.mark.parametrize("svt", SVTS)
def test_stops_after_c_positive_answers(svt):
    values = torch.ones(100)
    result = svt(values, 0.0, 5, 1e9, 1.0, _gen())
    assert result.indices.numel() == 5
    assert result.num_queries == 5
    assert len(set(result.indices.tolist())) == 5


def test_proven_variant_never_selects_more_than_c():
    values = torch.rand(500, generator=_gen(1))
    for seed in range(10):
        result = svt_above_threshold(values, 0.5, 20, 5.0, 1.0, _gen(seed))
        assert result.indices.numel() <= 20
        assert result.values.shape == result.indices.shape
        if result.indices.numel() == 20:
            assert 20 <= result.num_queries <= 500
        else:
            assert result.num_queries == 500


def test_selection_is_a_random_sample_in_random_order():
    values = torch.ones(1000)
    picks = [svt_above_threshold(values, 0.0, 10, 1e9, 1.0, _gen(s)).indices.tolist() for s in range(2)]
    assert picks[0] != picks[1]
    assert picks[0] != sorted(picks[0])


def test_magnitudes_are_the_queries():
    values = torch.tensor([-5.0, 0.0, 5.0])
    result = svt_dssgd(values, 1.0, 3, 1e9, 1.0, _gen())
    assert sorted(result.indices.tolist()) == [0, 2]


def test_release_noise_has_the_release_scale():
    n, eps = 20_000, 1.0
    values = torch.zeros(n, dtype=torch.float64)
    # A threshold far below every value passes them all, so all n values are released with noise.
    result = svt_above_threshold(values, -1e12, n, eps, 1.0, _gen(5))
    expected = budget_split(eps, n, "proven", 1.0).release
    assert result.values.abs().mean().item() == pytest.approx(expected, rel=0.03)


def test_reproducible_with_a_generator():
    values = torch.randn(200, generator=_gen(3))
    a = svt_above_threshold(values, 0.5, 10, 1.0, 1.0, _gen(9))
    b = svt_above_threshold(values, 0.5, 10, 1.0, 1.0, _gen(9))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)


@pytest.mark.parametrize(("svt", "variant"), [(svt_above_threshold, "proven"), (svt_dssgd, "paper")])
def test_a_seeded_run_is_alg_7_step_by_step(svt, variant):
    """Whoever holds the seed replays the run (why seeded noise is for tests only), and the replay spells out
    Lyu et al.'s Alg. 7: the noisy threshold T + rho, the random order, the noisy queries |v_i| + nu_i tested
    against it until c pass, then the released values v_i + Lap(b_release)."""
    values, threshold, c, epsilon = torch.randn(300, generator=_gen(3), dtype=torch.float64), 1.0, 8, 2.0
    result = svt(values, threshold, c, epsilon, 0.5, _gen(9))

    scales, replay = budget_split(epsilon, c, variant, 0.5), _gen(9)
    noisy_thresh = noisy_threshold(threshold, scales.threshold, replay)
    assert noisy_thresh != threshold
    indices, num_queries = above_threshold(values, noisy_thresh, c, scales.query, replay)
    assert torch.equal(result.indices, indices) and result.num_queries == num_queries
    assert torch.equal(result.values, release_values(values, indices, scales.release, replay))

    by_hand = _gen(9)
    rho = laplace_noise(1, scales.threshold, by_hand, torch.float64).item()
    assert noisy_thresh == threshold + rho
    order = torch.randperm(300, generator=by_hand)
    passed = values.abs()[order] + laplace_noise(300, scales.query, by_hand, torch.float64) >= threshold + rho
    assert torch.equal(indices, order[torch.nonzero(passed).flatten()[:c]])
    assert torch.equal(result.values, values[indices] + laplace_noise(c, scales.release, by_hand, torch.float64))


def test_results_keep_device_and_dtype():
    values = torch.tensor([1.0, 2.0], dtype=torch.float64)
    result = svt_above_threshold(values, 0.0, 2, 1e9, 1.0, _gen())
    assert result.indices.dtype == torch.int64
    assert result.values.dtype == torch.float64


def test_empty_selection_is_allowed():
    result = svt_above_threshold(torch.zeros(10), 100.0, 3, 1e9, 1.0, _gen())
    assert result.indices.numel() == 0 and result.values.numel() == 0
    assert result.num_queries == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"c": 0}, "c "),
        ({"c": 2.0}, "c "),
        ({"sensitivity": -1.0}, "sensitivity"),
        ({"release_fraction": 1.0}, "release_fraction"),
        ({"release_fraction": 0.0}, "release_fraction"),
        ({"variant": "roth"}, "variant"),
    ],
)
def test_budget_split_validates(kwargs, match):
    args = {"epsilon": 1.0, "c": 2, "variant": "proven", "sensitivity": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        budget_split(**args)


@pytest.mark.parametrize("svt", SVTS)
def test_svt_validates_values(svt):
    with pytest.raises(ValueError, match="1-D"):
        svt(torch.zeros(2, 2), 0.0, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="1-D"):
        svt(torch.zeros(3, dtype=torch.int64), 0.0, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        svt(torch.tensor([1.0, math.nan]), 0.0, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="threshold"):
        svt(torch.zeros(3), math.inf, 1, 1.0, 1.0)


@pytest.mark.parametrize("svt", SVTS)
def test_both_variants_are_reproducible_with_a_generator(svt):
    values = torch.randn(200, generator=_gen(3))
    a = svt(values, 0.5, 10, 1.0, 1.0, _gen(9))
    b = svt(values, 0.5, 10, 1.0, 1.0, _gen(9))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert a.num_queries == b.num_queries
    # The generator is what is used: other seeds give other runs.
    others = [svt(values, 0.5, 10, 1.0, 1.0, _gen(s)) for s in range(10, 13)]
    assert any(not torch.equal(a.values, o.values) for o in others)


@pytest.mark.parametrize("svt", SVTS)
def test_float64_values_are_released_with_float64_noise(svt):
    values = torch.zeros(1000, dtype=torch.float64)
    result = svt(values, -1e12, 1000, 1.0, 1.0, _gen(6))
    # Every value passes and is released as 0 + noise; float64 noise is not rounded to float32.
    assert result.values.dtype == torch.float64
    rounded = result.values.to(torch.float32).to(torch.float64)
    assert (rounded != result.values).float().mean().item() > 0.9


def test_budget_split_defaults_to_the_proven_variant():
    assert budget_split(1.0, 3) == budget_split(1.0, 3, "proven")
    assert budget_split(1.0, 3, sensitivity=2.0) == budget_split(1.0, 3, "proven", 2.0)


@pytest.mark.parametrize("variant", ["proven", "paper"])
def test_budget_split_rejects_zero_sensitivity(variant):
    with pytest.raises(ValueError, match="sensitivity must be a finite number > 0, got 0.0"):
        budget_split(1.0, 2, variant, 0.0)


def test_release_fraction_sets_the_release_noise():
    n, eps = 20_000, 1.0
    values = torch.zeros(n, dtype=torch.float64)
    result = svt_above_threshold(values, -1e12, n, eps, 1.0, _gen(5), release_fraction=0.5)
    expected = budget_split(eps, n, "proven", 1.0, 0.5).release  # c Delta / (eps / 2)
    assert result.values.abs().mean().item() == pytest.approx(expected, rel=0.03)
    assert result.epsilon_guaranteed == pytest.approx(eps)


@pytest.mark.parametrize("svt", SVTS)
def test_svt_value_errors_say_what_is_wrong(svt):
    with pytest.raises(ValueError, match=r"^values must be a 1-D floating-point tensor$"):
        svt(torch.zeros(2, 2), 0.0, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^values must be finite \(no NaN or Inf\)$"):
        svt(torch.tensor([1.0, math.inf]), 0.0, 1, 1.0, 1.0)
