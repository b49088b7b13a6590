"""Laplace and Gaussian noise, and the mechanisms calibrating them (Dwork & Roth 2014, Sec. 3.3, App. A).

Noise nobody can replay. Without a ``generator`` (the default) every draw comes from a cryptographically
secure source keyed by the operating system (``os.urandom``), independent of any run seed, so a server
that knows the seed, the round and the data order still cannot reproduce it:

- noise that is released with the value it protects (``laplace_mechanism``, ``gaussian_mechanism``, the
  SVT's numeric answers) is added by OpenDP (``make_laplace``, ``make_gaussian``), whose samplers are
  exact on a discretised grid: the floating-point attack of Mironov (CCS 2012) on textbook samplers
  does not apply;
- noise that is only compared, never released (the SVT's threshold and query noise: the output is which
  queries passed), is drawn here from secure uniforms, as E1 - E2 with E ~ Exp(1) for the Laplace and by
  Box-Muller for the Gaussian (``SecureGaussian``);
- DP-SGD's noise, a Gaussian for each of a model's coordinates at every step, is ``SecureGaussian``'s:
  OpenDP's exact sampler would take seconds a step (13 s for the 199,210 of FedAvg's 2NN).

``SecureGaussian`` draws in bulk: one AES-256-CTR keystream call a step (key and initial counter from
``os.urandom``, once per sampler; the 128-bit counter never repeats a block), turned into 53-bit uniforms
on (0, 1] and by Box-Muller into Gaussians, all in float64. Against the floating-point attack on Gaussian
samplers (Mironov 2012; Jin et al., S&P 2022, showed it on DP-SGD) it keeps precision rather than
Holohan & Braghin's (ESORICS 2021) sum of several Gaussians, which Opacus's secure mode draws four times
per value: four float64 transforms would cost four times as much, more than the plain training step they
protect. What precision buys, and what it does not:

- the noise is computed in float64 from 53-bit uniforms and the noisy value is rounded once, to the
  model's float32, after the noise is added (``PrivateSteps``): each released float32 value collects
  about 2^29 float64 noise values, so no output in the bulk of the distribution is impossible for one
  data set and possible for its neighbour (the attack's signal), and each output's probability is the
  Gaussian mass of its rounding interval up to float64 rounding error;
- it is a mitigation, not a proof: the float64 transform still has rounding artefacts, only 2^29 times
  finer than the released precision; the tails end at |z| <= sqrt(106 ln 2) sigma = 8.57 sigma (u >= 2^-53),
  a mass of 2^-53 cut off per pair; the exact samplers (OpenDP's, the discrete Gaussian of Canonne et al.
  2020) are the proof, at the cost above;
- sines and cosines in float32 would make a draw a third cheaper but move the density by the order of
  1e-6: not taken (docs/privacy.md, DP-SGD's cost).

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


def _uniform_53(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(k + 1) 2^-53 for k the top 53 bits of each random 64-bit word (``words`` is overwritten): uniform on
    (0, 1], every value of the float64 grid of spacing 2^-53 equally likely. In place, into ``out``."""
    np.right_shift(words, np.uint64(11), out=words)
    np.copyto(out, words.view(np.int64), casting="unsafe")  # k < 2^53: exact in float64
    np.add(out, 1.0, out=out)
    return np.multiply(out, 2.0**-53, out=out)


def secure_uniform(shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform samples in (0, 1], float64, 53 random bits each from ``os.urandom``."""
    words = np.frombuffer(bytearray(os.urandom(8 * math.prod(shape))), dtype=np.uint64)
    return torch.from_numpy(_uniform_53(words, np.empty(words.shape))).reshape(shape)


class Keystream:
    """``count`` random 64-bit words a call, from one AES-256-CTR keystream (the key and the initial counter
    drawn once, from ``os.urandom``; the 128-bit counter never repeats a block), into a buffer the next call
    overwrites: one cipher call, no allocation.

    Args:
        count: how many words each ``words`` call returns.
    """

    def __init__(self, count: int) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self.cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
        self.zeros = bytes(8 * count + 8 * (count % 2))  # whole 16-byte blocks
        self.bits = bytearray(len(self.zeros) + 15)  # update_into's room for one more block
        self.buffer = np.frombuffer(self.bits, dtype=np.uint64, count=count)

    def words(self) -> np.ndarray:
        """The next ``count`` words of the keystream, uint64."""
        self.cipher.update_into(self.zeros, self.bits)
        return self.buffer


class SecurePoissonSample:
    """Poisson samples of ``n`` items at rate ``q``: each item in independently with probability q (a DP-SGD
    lot, Abadi et al. 2016), from a ``Keystream`` nobody can replay, so that a server knowing the run seed
    cannot tell which examples a lot held (amplification by sampling assumes it cannot).

    Item i is in when its 64-bit word w_i < floor(q 2^64): with probability within 2^-64 below q, never above
    (the rate the accountant charges is an upper bound), exact for q = 1.

    Args:
        n: how many items there are.
        q: the sampling rate, in (0, 1].
    """

    def __init__(self, n: int, q: float) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"a Poisson sample's item count must be an int >= 0, got {n!r}")
        if not 0 < q <= 1:  # also rejects NaN
            raise ValueError(f"a Poisson sample's rate must be in (0, 1], got {q}")
        self.keystream = Keystream(n)
        self.every = q == 1
        self.threshold = np.uint64(min(int(q * 2.0**64), 2**64 - 1))

    def sample(self) -> torch.Tensor:
        """The indices of one sample's items, ascending, int64."""
        words = self.keystream.words()
        if self.every:
            return torch.arange(len(words))
        return torch.from_numpy(np.flatnonzero(words < self.threshold))


class SecureGaussian:
    """Samples of N(0, std^2), ``size`` at a time, from a keystream nobody can replay (module docstring).

    Each ``sample`` is one ``Keystream`` call, 53-bit uniforms u1, u2 on (0, 1] from its 64-bit words, and
    Box-Muller in float64: std sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2), two samples a pair. The buffers
    are the sampler's, so a step allocates nothing; the uniforms are made with NumPy on the CPU, the sines
    and cosines by torch on ``device``.

    Args:
        size: how many samples each ``sample`` call returns.
        device: the device the samples are returned on.
    """

    def __init__(self, size: int, device: torch.device | str = "cpu") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"a Gaussian sampler's size must be an int >= 0, got {size!r}")
        self.size, self.device = size, torch.device(device)
        self.pairs = (size + 1) // 2
        self.keystream = Keystream(2 * self.pairs)
        self.uniforms = np.empty(2 * self.pairs)
        self.samples = torch.empty(2, self.pairs, dtype=torch.float64, device=self.device)

    def sample(self, std: float) -> torch.Tensor:
        """``size`` samples of N(0, std^2), float64 on ``device``, in a buffer the next call overwrites."""
        _require_positive("Gaussian std", std)
        radius, angle = _uniform_53(self.keystream.words(), self.uniforms).reshape(2, self.pairs)
        np.log(radius, out=radius)
        np.multiply(radius, -2.0, out=radius)
        np.sqrt(radius, out=radius)
        np.multiply(radius, std, out=radius)
        np.multiply(angle, 2 * math.pi, out=angle)
        r, theta = (torch.from_numpy(a).to(self.device) for a in (radius, angle))
        torch.sin(theta, out=self.samples[1])
        torch.cos(theta, out=self.samples[0])
        return self.samples.mul_(r).view(-1)[: self.size]


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
    """Samples of N(0, std^2); ``SecureGaussian``'s unless a (seeded, replayable) ``generator`` is given."""
    _require_positive("Gaussian std", std)
    shape = _as_shape(shape)
    if generator is None:
        return SecureGaussian(math.prod(shape)).sample(std).reshape(shape).to(dtype)
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
