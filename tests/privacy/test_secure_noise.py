"""Noise nobody can replay: a server that knows everything a DSSGD participant's generator depends on
(the run seed, the partition id, the round, the data and so the data order) reproduces its upload exactly
when the noise is seeded (``insecure_seeded_noise``), and cannot when it is not (the default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.common import parameters_to_ndarrays
from scipy import stats

from flwr_privacy.privacy import (
    gaussian_mechanism,
    gaussian_noise,
    laplace_mechanism,
    laplace_noise,
    svt_above_threshold,
    svt_dssgd,
)
from flwr_privacy.privacy.noise import SecureGaussian, SecurePoissonSample, release_laplace


def dssgd_upload(tmp_path, **dssgd):
    """What participant 0 uploads in round 1, built twice from the same knowledge, as a replaying server would."""
    from experiments.client_app import client_fn
    from experiments.federation import make_strategy, validate_run_config
    from experiments.inprocess import make_federation

    run_config = {
        "strategy": "dssgd", "model": "mlp", "num-clients": 2, "fraction-fit": 1.0, "num-rounds": 1,
        "batch-size": 50, "output-dir": str(tmp_path), "dssgd.dp": True, "dssgd.epsilon": 1.0,
        "dssgd.theta-u": 0.01, **dssgd,
    }
    cfg = validate_run_config(run_config)
    uploads = []
    for _ in range(2):
        strategy = make_strategy(cfg, run_config)
        manager = make_federation(client_fn, run_config, cfg.num_clients)
        proxy = sorted(manager.all().values(), key=lambda p: int(p.cid))[0]
        (_, ins), *_ = [i for i in strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
                        if i[0].cid == proxy.cid]
        res = proxy.fit(ins, None, None)
        uploads.append(parameters_to_ndarrays(res.parameters)[:2])  # (indices, values)
    return uploads


def test_a_server_replaying_the_seed_reproduces_seeded_noise_exactly(tmp_path):
    (i1, v1), (i2, v2) = dssgd_upload(tmp_path, **{"dssgd.insecure-seeded-noise": True})
    assert np.array_equal(i1, i2) and np.array_equal(v1, v2)


def test_a_server_replaying_everything_it_knows_cannot_reproduce_the_default_noise(tmp_path):
    (i1, v1), (i2, v2) = dssgd_upload(tmp_path)
    same = np.intersect1d(i1, i2)
    assert len(same) < min(len(i1), len(i2))  # the SVT selected other entries
    pos1, pos2 = np.searchsorted(i1, same), np.searchsorted(i2, same)
    assert not np.any((v1[pos1] == v2[pos2]) & (np.abs(v1[pos1]) < 0.001))  # and released other values


def test_without_a_generator_noise_is_fresh_even_under_the_same_torch_seed():
    torch.manual_seed(0)
    first = laplace_noise(1000, 1.0)
    torch.manual_seed(0)
    assert not torch.equal(first, laplace_noise(1000, 1.0))
    x = torch.zeros(1000)
    assert not torch.equal(laplace_mechanism(x, 1.0, 1.0), laplace_mechanism(x, 1.0, 1.0))
    assert not torch.equal(gaussian_mechanism(x, 1.0, 0.5, 1e-5), gaussian_mechanism(x, 1.0, 0.5, 1e-5))


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_released_noise_has_the_calibrated_scale(mechanism):
    x = torch.full((20_000,), 3.0, dtype=torch.float64)
    if mechanism == "laplace":
        out, std = laplace_mechanism(x, 2.0, 4.0), np.sqrt(2) * 0.5  # Lap(b = 0.5): std b sqrt(2)
    else:
        out, std = gaussian_mechanism(x, 1.0, 0.5, 1e-5), np.sqrt(2 * np.log(1.25 / 1e-5)) / 0.5
    noise = (out - 3.0).numpy()
    assert out.dtype == torch.float64
    assert abs(noise.mean()) < 5 * std / np.sqrt(len(noise))
    assert noise.std() == pytest.approx(std, rel=0.03)


def test_the_svt_order_may_be_seeded_while_its_noise_stays_secure():
    values = torch.linspace(0, 1, 200)
    runs = [
        svt_above_threshold(values, 0.5, 10, 1.0, 0.1, generator=torch.Generator().manual_seed(3), noise_generator=None)
        for _ in range(2)
    ]
    assert not torch.equal(runs[0].values, runs[1].values)
    seeded = [
        svt_above_threshold(values, 0.5, 10, 1.0, 0.1, generator=torch.Generator().manual_seed(3)) for _ in range(2)
    ]
    assert torch.equal(seeded[0].indices, seeded[1].indices) and torch.equal(seeded[0].values, seeded[1].values)


@pytest.mark.parametrize("svt", [svt_above_threshold, svt_dssgd])
def test_the_svt_order_comes_from_the_given_generator_when_the_noise_is_secure(svt):
    """Every value far above the threshold passes, so the first c of the examination order are released:
    the order of the seeded generator's first permutation, whatever the secure noise."""
    for _ in range(2):
        result = svt(torch.full((50,), 1e6), 0.0, 5, 1.0, 0.1, torch.Generator().manual_seed(3), noise_generator=None)
        assert torch.equal(result.indices, torch.randperm(50, generator=torch.Generator().manual_seed(3))[:5])


@pytest.mark.parametrize("svt", [svt_above_threshold, svt_dssgd])
def test_the_svt_query_noise_stays_secure_when_only_the_order_is_seeded(svt):
    """Every value sits at the threshold, so entry i passes when nu_i >= rho. Were the query noise nu drawn from
    the seeded order generator, a replaying server would know it, and the sets passing in different runs would
    only differ through the one secure scalar rho: each would contain the next or be contained in it."""
    n = 40
    passing = [
        set(svt(torch.zeros(n), 0.0, n, 1.0, 0.1, torch.Generator().manual_seed(3), noise_generator=None)
            .indices.tolist())
        for _ in range(10)
    ]
    assert any(not (a <= b or b <= a) for a in passing for b in passing)


@pytest.mark.parametrize("svt", [svt_above_threshold, svt_dssgd])
def test_both_svts_keep_their_noise_secure_when_only_the_order_is_seeded(svt):
    values = torch.linspace(0, 1, 200)
    runs = [svt(values, 0.5, 10, 1.0, 0.1, torch.Generator().manual_seed(3), noise_generator=None) for _ in range(2)]
    assert not torch.equal(runs[0].values, runs[1].values)


def test_secure_gaussian_noise_is_normal_with_the_given_std():
    """The Box-Muller draw from secure uniforms (the SVT's compared noise) against N(0, 2^2)."""
    noise = gaussian_noise(200_000, 2.0).numpy()
    assert abs(noise.mean()) < 5 * 2.0 / np.sqrt(len(noise))
    assert noise.std() == pytest.approx(2.0, rel=0.01)
    assert stats.kstest(noise / 2.0, "norm").pvalue > 1e-4


# DP-SGD's sampler, at the 2NN's size (199,210, even: both Box-Muller halves) and twice that.
SIZE, STD = 398_420, 0.3


def test_a_secure_gaussian_is_normal_with_the_given_std():
    """Mean within 5 standard errors, std within 1 % (9 standard errors of the estimate: a wrong scale
    shows, chance does not), and the Kolmogorov-Smirnov distance to N(0, std^2) at a p-value above 1e-6:
    a correct sampler fails it once in a million runs."""
    noise = SecureGaussian(SIZE).sample(STD).numpy()
    assert abs(noise.mean()) < 5 * STD / np.sqrt(SIZE)
    assert noise.std() == pytest.approx(STD, rel=0.01)
    assert stats.kstest(noise, "norm", args=(0, STD)).pvalue > 1e-6


@pytest.mark.parametrize("off", [0.9, 1.1])
def test_the_checks_above_fail_a_std_off_by_ten_percent(off):
    """The same checks against a std 10 % off: each of them alone rejects it."""
    noise = SecureGaussian(SIZE).sample(STD).numpy()
    assert noise.std() != pytest.approx(STD * off, rel=0.01)
    assert stats.kstest(noise, "norm", args=(0, STD * off)).pvalue < 1e-6


def test_a_secure_gaussians_halves_and_successive_draws_are_uncorrelated():
    """Box-Muller's two halves come from the same pairs (cos and sin): independent in theory, and each call
    draws a fresh keystream."""
    sampler = SecureGaussian(SIZE)
    first = sampler.sample(1.0).numpy().copy()
    second = sampler.sample(1.0).numpy()
    half = SIZE // 2
    for a, b in ((first[:half], first[half:]), (first, second), (first[:half] ** 2, first[half:] ** 2)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(len(a))


def test_a_secure_gaussian_is_not_replayed_by_any_seed():
    """Its keystream is keyed by the OS: torch's and NumPy's global seeds, or the same seeded generator
    (as two PrivateSteps of one client get), change nothing, and no two samplers or calls repeat."""
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        draws.append(SecureGaussian(1000).sample(1.0).clone())
    sampler = SecureGaussian(1000)
    draws += [sampler.sample(1.0).clone(), sampler.sample(1.0).clone()]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1:])


@pytest.mark.parametrize("size", [0, 1, 7, 10])
def test_a_secure_gaussian_has_its_size_float64_and_device(size):
    noise = SecureGaussian(size, "cpu").sample(1.0)
    assert noise.shape == (size,) and noise.dtype == torch.float64 and noise.device == torch.device("cpu")
    assert torch.isfinite(noise).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_secure_gaussian_samples_on_the_gpu():
    noise = SecureGaussian(SIZE, "cuda").sample(STD)
    assert noise.device.type == "cuda" and noise.dtype == torch.float64 and noise.shape == (SIZE,)
    assert noise.std().item() == pytest.approx(STD, rel=0.01)
    assert stats.kstest(noise.cpu().numpy(), "norm", args=(0, STD)).pvalue > 1e-6


def test_a_secure_gaussian_refuses_a_bad_size_or_std():
    for size in (-1, 2.5, True):
        with pytest.raises(ValueError, match="a Gaussian sampler's size must be an int >= 0"):
            SecureGaussian(size)  # type: ignore[arg-type]
    for std in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="Gaussian std must be a finite number > 0"):
            SecureGaussian(3).sample(std)


def test_seeded_mechanisms_add_exactly_the_noise_their_generator_draws():
    """What "replayable" means: whoever holds the seed recomputes the noise (the reason seeded noise is for
    tests only)."""
    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    sigma = np.sqrt(2 * np.log(1.25 / 1e-5)) / 0.5
    out = gaussian_mechanism(x, 1.0, 0.5, 1e-5, torch.Generator().manual_seed(9))
    assert torch.allclose(out - x, gaussian_noise(50, sigma, torch.Generator().manual_seed(9), torch.float64))
    out = laplace_mechanism(x, 2.0, 4.0, torch.Generator().manual_seed(9))
    assert torch.allclose(out - x, laplace_noise(50, 0.5, torch.Generator().manual_seed(9), torch.float64))


def test_a_release_refuses_a_scale_that_is_not_positive():
    with pytest.raises(ValueError) as refused:
        release_laplace(torch.zeros(2), 0.0)
    assert str(refused.value) == "Laplace scale must be a finite number > 0, got 0.0"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_released_values_keep_their_dtype_and_its_precision(dtype):
    x = torch.zeros(100, dtype=dtype)
    for released in (laplace_mechanism(x, 1.0, 1.0), gaussian_mechanism(x, 1.0, 0.5, 1e-5)):
        assert released.dtype == dtype
        # float64 values that passed through float32 on the way would all be float32 numbers
        assert bool((released.float().to(dtype) != released).any()) is (dtype == torch.float64)


def test_secure_laplace_noise_is_laplace_with_the_given_scale():
    """E1 - E2 from secure uniforms (the SVT's compared noise) against Lap(0, 0.5)."""
    noise = laplace_noise(200_000, 0.5).numpy()
    assert abs(noise.mean()) < 5 * 0.5 * np.sqrt(2) / np.sqrt(len(noise))
    assert noise.std() == pytest.approx(0.5 * np.sqrt(2), rel=0.01)
    assert stats.kstest(noise, "laplace", args=(0, 0.5)).pvalue > 1e-4


@pytest.mark.parametrize("n, q", [(6000, 50 / 6000), (1000, 0.3), (7, 0.5)])
def test_a_secure_poisson_sample_holds_each_item_independently_at_rate_q(n, q):
    """Over many samples: the sample size has the binomial's mean and variance, every item is in about as
    often as every other (chi-square over the items), and two items are in together at the product of their
    rates (items 0 and 1, where the rate makes that count). A sampler at another rate, of a fixed size, or
    favouring some items fails."""
    draws = 4000
    sampler = SecurePoissonSample(n, q)
    counts, sizes, both = np.zeros(n), [], 0
    for _ in range(draws):
        chosen = sampler.sample().numpy()
        assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0) and (len(chosen) == 0 or chosen[-1] < n)
        counts[chosen] += 1
        sizes.append(len(chosen))
        both += int(len(chosen) >= 2 and chosen[0] == 0 and chosen[1] == 1)
    sizes = np.array(sizes)
    assert abs(sizes.mean() - n * q) < 5 * np.sqrt(n * q * (1 - q) / draws)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)
    assert stats.chisquare(counts).pvalue > 1e-6
    if draws * q * q >= 100:  # items 0 and 1 together as often as the product of their rates
        assert abs(both / draws - q * q) < 5 * np.sqrt(q * q * (1 - q * q) / draws)


def test_a_secure_poisson_sample_is_not_replayed_by_any_seed():
    """Two samplers under the same global seeds, and two calls of one, draw different samples."""
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        draws.append(SecurePoissonSample(1000, 0.1).sample())
    sampler = SecurePoissonSample(1000, 0.1)
    draws += [sampler.sample(), sampler.sample()]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1:])


def test_a_secure_poisson_sample_at_rate_one_holds_every_item_and_of_no_item_none():
    assert torch.equal(SecurePoissonSample(9, 1.0).sample(), torch.arange(9))
    assert len(SecurePoissonSample(0, 0.5).sample()) == 0


def test_a_secure_poisson_sample_refuses_a_bad_count_or_rate():
    for n in (-1, 2.5, True):
        with pytest.raises(ValueError, match="a Poisson sample's item count must be an int >= 0"):
            SecurePoissonSample(n, 0.5)  # type: ignore[arg-type]
    for q in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"a Poisson sample's rate must be in \(0, 1\]"):
            SecurePoissonSample(10, q)
