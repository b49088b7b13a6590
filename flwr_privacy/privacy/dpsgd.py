"""Sample-level DP-SGD on a client (Abadi et al., CCS 2016) through Opacus.

Each step of local training draws a Poisson sample of the client's examples (rate q = B / n, Abadi et
al.'s "lot"), clips every example's gradient to L2 norm ``max_grad_norm`` (C), adds Gaussian noise of
standard deviation ``noise_multiplier * C`` (sigma C) to their sum and divides by the expected lot
size B. The clipped sum is computed in one pass (``flwr_privacy.privacy.per_example``, equal to Opacus's
per-example clipping) for linear and convolutional layers, by Opacus's ``GradSampleModule`` for any
other; the noise is ``flwr_privacy.privacy.noise.SecureGaussian``'s. What this module adds is the wiring
and the rules:

- the noise and the Poisson sample come from AES-CTR keystreams keyed by ``os.urandom``
  (``SecureGaussian``, ``SecurePoissonSample``: independent of the run seed, so a server that knows the
  config cannot replay either; amplification by sampling needs the sample to be secret too);
  ``insecure_seeded_noise`` draws both from generators seeded by the run's, for tests;
- a model must pass Opacus's ``ModuleValidator`` (no BatchNorm: ``make_private_model`` swaps it for
  GroupNorm, as Opacus's ``fix`` does) and carry no buffers, which would leave the client un-noised;
- what a round spends is a function of the config and the client's example count alone
  (``round_steps``, ``sample_size``), so the client's own accountant and the server's ledger
  (``flwr_privacy.strategies.privacy``) compose the same Gaussian events.

Against the floating-point attack on Gaussian sampling (Jin et al. 2022 on Opacus, after Mironov 2012),
the noise is drawn in float64 from 53-bit uniforms and added to the clipped sum in float64; the noisy
gradient is rounded to the parameters' dtype once, after that (the ``noise`` module says what this buys
and what it does not; docs/privacy.md why it replaced Opacus's secure mode, four Gaussian draws a value).
``insecure_seeded_noise`` draws ``torch.normal`` from the seeded generator instead, as Opacus does
outside its secure mode.

Opacus is imported where it is used: it adds seconds to the start of every client process, and a
client without DP-SGD never needs it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flwr_privacy.config import section, to_section
from flwr_privacy.data import TensorData
from flwr_privacy.privacy.noise import SecureGaussian, SecurePoissonSample
from flwr_privacy.privacy.per_example import ClippedSum, clip_factors, unsupported_layers

# The name a round's spend is reported under (the ledger's mechanism).
MECHANISM = "dp-sgd"


class _FractionalOrderNotice(logging.Filter):
    """dp-accounting logs, per fractional RDP order it cannot evaluate at a high sampling rate, that it
    leaves the order out (the bound stays valid, from the other orders): one line per order per query."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


logging.getLogger("absl").addFilter(_FractionalOrderNotice())


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD's settings, the same on every client (run-config section ``dpsgd.*``).

    enabled: train with DP-SGD. noise_multiplier: sigma (noise std / C); ``target_epsilon`` > 0 instead
    derives it for the whole run (``experiments.federation``). max_grad_norm: C, each example's gradient
    bound. delta: the delta epsilon is reported at. max_epsilon: a client's budget; a client whose next
    round would spend beyond it declines to train (0: no limit). insecure_seeded_noise: noise and
    sampling from the run's seeded generator (replayable: tests only).
    """

    enabled: bool = False
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float = 0.0
    max_epsilon: float = 0.0
    insecure_seeded_noise: bool = False

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm", "delta", "target_epsilon", "max_epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"dpsgd.{name.replace('_', '-')}={value!r} must be a finite number")
        if not self.noise_multiplier > 0:
            raise ValueError(f"dpsgd.noise-multiplier={self.noise_multiplier} must be > 0")
        if not self.max_grad_norm > 0:
            raise ValueError(f"dpsgd.max-grad-norm={self.max_grad_norm} must be > 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"dpsgd.delta={self.delta} must be in (0, 1)")
        if self.target_epsilon < 0 or self.max_epsilon < 0:
            raise ValueError("dpsgd.target-epsilon and dpsgd.max-epsilon must be >= 0 (0: not used)")


def sample_size(batch_size: int, num_examples: int) -> int:
    """The expected lot size B of a Poisson sample at rate q = B / n (at most n)."""
    if num_examples < 1:
        raise ValueError(f"a DP-SGD client needs at least one example, it has {num_examples}")
    return min(batch_size, num_examples)


def round_steps(batch_size: int, num_examples: int, local_epochs: int = 1, local_steps: int | None = None) -> int:
    """DP-SGD steps a client takes in one round: ``local_steps`` lots if given (DGC), else ``local_epochs``
    passes of ceil(n / B) lots each (Opacus's DPDataLoader length)."""
    if local_steps is not None:
        return local_steps
    return local_epochs * math.ceil(num_examples / sample_size(batch_size, num_examples))


def make_private_model(model: nn.Module) -> nn.Module:
    """The model Opacus can train privately: BatchNorm swapped for GroupNorm (``ModuleValidator.fix``),
    then checked; raises ValueError naming each module Opacus refuses."""
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    check_private_model(model)
    return model


def check_private_model(model: nn.Module) -> None:
    """Refuse, before training, a model DP-SGD cannot protect: one Opacus's validator rejects, or one with
    buffers (running statistics would leave the client computed from the data and un-noised)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(sorted({str(e).splitlines()[0] for e in errors}))
        raise ValueError(f"this model cannot be trained with DP-SGD: {reasons}")
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ValueError(
            f"this model cannot be trained with DP-SGD: its buffers {buffers[:5]} would be sent un-noised; "
            "use GroupNorm instead of BatchNorm (flwr_privacy.privacy.dpsgd.make_private_model)"
        )


def seeded_generators(generator: torch.Generator, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(sampling, noise) generators of ``insecure_seeded_noise``, two streams seeded from ``generator``:
    replayable by anyone who knows the run seed (tests only)."""
    seeds = [int(torch.randint(0, 2**62, (1,), generator=generator)) for _ in range(2)]
    return torch.Generator().manual_seed(seeds[0]), torch.Generator(device=device).manual_seed(seeds[1])


class PrivateSteps:
    """One round of DP-SGD steps over one client's data: Poisson lots, per-example clipping, Gaussian noise.

    ``lots()`` yields the Poisson lots; ``noisy_gradient(x, y)`` leaves a lot's noisy gradient in the
    parameters' ``.grad`` (the mean over the expected lot size, as Opacus scales it, in buffers the next
    step overwrites), after which the caller steps its optimizer; ``taken`` counts the steps, the releases
    an accountant composes.
    ``close()`` removes Opacus's hooks (the fallback below) so the model is the user's plain module again.

    The clipped sum is computed in one pass (``flwr_privacy.privacy.per_example``) when every trainable
    layer is a linear or convolutional one (the project's networks); otherwise by Opacus's per-example
    hooks (``GradSampleModule``). Either way the noise is drawn at once for the whole model, and each lot
    holds each example independently with probability q = B / n (Poisson sampling, the rate the ledger
    charges); both from keystreams nobody can replay (``SecureGaussian``, ``SecurePoissonSample``) unless
    ``insecure_seeded_noise``.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TensorData,
        config: DPSGDConfig,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        if not isinstance(data, TensorData):
            raise ValueError("DP-SGD samples its own lots: give the client a TensorData, not a DataLoader")
        check_private_model(model)
        self.lot = sample_size(batch_size, len(data))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sizes = [p.numel() for p in self.params]
        # the noisy gradients' buffers, kept from step to step: a step allocates no gradient
        self.grads = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in self.params]
        self.sampling: SecurePoissonSample | torch.Generator
        self.noise: SecureGaussian | torch.Generator
        seeded = seeded_generators(generator, device)  # drawn either way: later draws do not depend on the switch
        if config.insecure_seeded_noise:
            self.sampling, self.noise = seeded
        else:
            self.sampling = SecurePoissonSample(len(data), self.lot / len(data))
            self.noise = SecureGaussian(sum(self.sizes), device)
        self.data, self.config, self.device = data, config, device
        self.hooks: Any = None
        if unsupported_layers(model):
            from opacus.grad_sample import GradSampleModule

            self.hooks = GradSampleModule(model)
        else:
            self.clipped_sum = ClippedSum(model, config.max_grad_norm)
        self.taken = 0

    def lots(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Poisson lots, one after another (a lot may be empty)."""
        n = len(self.data)
        rate = self.lot / n
        while True:
            if isinstance(self.sampling, SecurePoissonSample):
                chosen = self.sampling.sample()
            else:
                chosen = (torch.rand(n, generator=self.sampling) < rate).nonzero().squeeze(1)
            yield self.data.x[chosen].to(self.device), self.data.y[chosen].to(self.device)

    def _clipped_sum_by_hooks(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Any) -> tuple[list[torch.Tensor], float]:
        """Opacus's per-example gradients, clipped with its factor and summed."""
        if not len(y):
            return [torch.zeros_like(p) for p in self.params], 0.0
        self.hooks.zero_grad(set_to_none=True)
        loss = (loss_fn or F.cross_entropy)(self.hooks(x), y)
        with warnings.catch_warnings():  # no input requires a gradient: nothing to warn about
            warnings.simplefilter("ignore", UserWarning)
            loss.backward()
        per = [p.grad_sample.reshape(len(y), -1) for p in self.params]  # type: ignore[attr-defined]
        norms = torch.cat(per, dim=1).norm(dim=1)
        factors = clip_factors(norms, self.config.max_grad_norm)
        sums = [(factors @ g).reshape(p.shape) for g, p in zip(per, self.params)]
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
        return sums, float(loss.detach())

    def noisy_gradient(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Any = None) -> float:
        """Clip each example's gradient of the lot, sum, add noise N(0, sigma^2 C^2) to each coordinate,
        divide by the expected lot size B: the result is in ``.grad``. Returns the lot's loss (local only:
        it is computed from the data and never sent)."""
        if self.hooks is not None:
            sums, loss = self._clipped_sum_by_hooks(x, y, loss_fn)
        else:
            sums, loss = self.clipped_sum(x, y, loss_fn)
        std = self.config.noise_multiplier * self.config.max_grad_norm
        if isinstance(self.noise, SecureGaussian):
            # sum / B + N(0, (sigma C / B)^2) in float64, rounded once into .grad (the mitigation, module docstring)
            noise = self.noise.sample(std / self.lot)
            for s, n, g in zip(sums, noise.split(self.sizes), self.grads):
                g.view(-1).copy_(n.add_(s.reshape(-1), alpha=1 / self.lot))
        else:
            noise = torch.normal(
                0.0, std, (sum(self.sizes),), generator=self.noise, device=self.device, dtype=sums[0].dtype
            )
            for s, n, g in zip(sums, noise.split(self.sizes), self.grads):
                torch.add(s.reshape(-1), n, out=g.view(-1)).div_(self.lot)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.taken += 1
        return loss

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks._close()


def train_epochs_private(
    model: nn.Module,
    data: TensorData,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    config: DPSGDConfig,
    device: torch.device,
    generator: torch.Generator,
    loss_fn: Any = None,
    steps: int | None = None,
) -> int:
    """``epochs`` passes of DP-SGD (ceil(n / B) Poisson lots each), or ``steps`` lots, on the model; returns
    the steps taken. The optimizer is new each call: its first step is plain SGD (no momentum yet)."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    private = PrivateSteps(model, data, config, batch_size, device, generator)
    try:
        lots = private.lots()
        for _ in range(round_steps(batch_size, len(data), epochs, steps)):
            private.noisy_gradient(*next(lots), loss_fn)
            optimizer.step()  # the original optimizer: the gradient is already private
    finally:
        private.close()
    return private.taken


@dataclass(frozen=True)
class DPSGDPlan:
    """What every client's DP-SGD does in a round, as the server configures and accounts it.

    ``batch_size`` is the expected lot size B; each round a client takes ``local_steps`` lots (DGC) or
    ``local_epochs`` passes of ceil(n / B) lots. ``min_examples`` is the fewest examples any client
    holds: the server charges every client as if it held that many (the largest sampling rate), which
    bounds from above what a client with more examples spends. The plan travels to the clients with
    every instruction (``settings``), so a client trains as the server accounts.
    """

    config: DPSGDConfig
    batch_size: int
    min_examples: int
    local_epochs: int = 1
    local_steps: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.min_examples < 1 or self.local_epochs < 1:
            raise ValueError(
                f"a DP-SGD plan needs batch-size, min-examples and local-epochs >= 1, got {self.batch_size}, "
                f"{self.min_examples}, {self.local_epochs}"
            )
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"local-steps={self.local_steps} must be >= 1")

    def steps(self, num_examples: int) -> int:
        """DP-SGD steps in one round of a client that holds ``num_examples``."""
        return round_steps(self.batch_size, num_examples, self.local_epochs, self.local_steps)

    def settings(self) -> dict[str, Any]:
        """The plan as instruction config keys (``from_settings`` reads them back on the client)."""
        values = to_section("dpsgd", self.config)
        values.update({"dpsgd_batch_size": self.batch_size, "dpsgd_local_epochs": self.local_epochs})
        values["dpsgd_local_steps"] = 0 if self.local_steps is None else self.local_steps
        return values

    @classmethod
    def from_settings(cls, config: dict[str, Any], num_examples: int) -> DPSGDPlan | None:
        """The plan an instruction carries (None: no DP-SGD), for a client with ``num_examples``."""
        if not config.get("dpsgd.enabled", False):
            return None
        values = section(config, "dpsgd", DPSGDConfig)
        steps = int(config.get("dpsgd_local_steps", 0))
        return cls(
            DPSGDConfig(**values),
            int(config["dpsgd_batch_size"]),
            num_examples,
            int(config.get("dpsgd_local_epochs", 1)),
            steps or None,
        )


def noise_for_target(plan: DPSGDPlan, rounds: int) -> float:
    """The noise multiplier at which a client that takes part in all ``rounds`` spends ``target_epsilon``
    at ``delta`` (Opacus's search over its RDP accountant); the bound holds for any client that takes
    part in fewer rounds or holds more examples than ``min_examples``."""
    from opacus.accountants.utils import get_noise_multiplier

    config = plan.config
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound holds, only looser
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=config.target_epsilon,
                target_delta=config.delta,
                sample_rate=sample_size(plan.batch_size, plan.min_examples) / plan.min_examples,
                steps=rounds * plan.steps(plan.min_examples),
                accountant="rdp",
            )
        )
