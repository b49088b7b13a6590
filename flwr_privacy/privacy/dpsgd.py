"""Sample-level DP-SGD on a client (Abadi et al., CCS 2016) through Opacus.

Each step of local training draws a Poisson sample of the client's examples (rate q = B / n, Abadi et
al.'s "lot"), clips every example's gradient to L2 norm ``max_grad_norm`` (C), adds Gaussian noise of
standard deviation ``noise_multiplier * C`` (sigma C) to their sum and divides by the expected lot
size B: Opacus's ``GradSampleModule``, ``DPOptimizer`` and ``DPDataLoader`` do each of these, so
the clipping and the noise are theirs, not ours. What this module adds is the wiring and the rules:

- the noise and the Poisson sample are drawn from generators seeded by ``os.urandom`` (independent of
  the run seed: a server that knows the config cannot replay either; amplification by sampling needs
  the sample to be secret too); ``insecure_seeded_noise`` seeds both from the run's generator, for tests;
- a model must pass Opacus's ``ModuleValidator`` (no BatchNorm: ``make_private_model`` swaps it for
  GroupNorm, as Opacus's ``fix`` does) and carry no buffers, which would leave the client un-noised;
- what a round spends is a function of the config and the client's example count alone
  (``round_steps``, ``sample_size``), so the client's own accountant and the server's ledger
  (``flwr_privacy.strategies.privacy``) compose the same Gaussian events.

Against the floating-point attack on Gaussian sampling (Jin et al. 2022 on Opacus, after Mironov 2012),
the optimizer runs in Opacus's ``secure_mode``: every noise value is the sum of four Gaussian draws,
halved (Holohan & Braghin 2021), unless ``insecure_seeded_noise``. Opacus's other half of secure mode, a
cryptographically secure generator (``torchcsprng``), is not built for current PyTorch: the draws come
from torch's generator seeded by the OS (unpredictable, not a CSPRNG). docs/privacy.md says what this does
and does not protect.

Opacus is imported where it is used: it adds seconds to the start of every client process, and a
client without DP-SGD never needs it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flwr_privacy.config import section, to_section
from flwr_privacy.data import TensorData

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


def noise_generators(config: DPSGDConfig, generator: torch.Generator, device: torch.device) -> tuple[
    torch.Generator, torch.Generator
]:
    """(sampling, noise) generators: seeded by the OS, or from ``generator`` with ``insecure_seeded_noise``."""
    seeds = [int(torch.randint(0, 2**62, (1,), generator=generator)) for _ in range(2)]
    if not config.insecure_seeded_noise:
        seeds = [int.from_bytes(os.urandom(8), "little") for _ in range(2)]
    sampling = torch.Generator().manual_seed(seeds[0])
    noise = torch.Generator(device=device).manual_seed(seeds[1])
    return sampling, noise


class PrivateSteps:
    """One round of DP-SGD steps over one client's data: Poisson lots, per-example clipping, Gaussian noise.

    ``steps()`` yields the noisy gradient of each lot, left in the parameters' ``.grad`` (the mean over
    the expected lot size, as Opacus scales it), after which the caller steps its optimizer; ``taken``
    counts the steps, the releases an accountant composes. ``close()`` removes Opacus's hooks so the
    model is the user's plain module again.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TensorData,
        config: DPSGDConfig,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        from opacus.data_loader import DPDataLoader
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        if not isinstance(data, TensorData):
            raise ValueError("DP-SGD samples its own lots: give the client a TensorData, not a DataLoader")
        check_private_model(model)
        self.lot = sample_size(batch_size, len(data))
        sampling, noise = noise_generators(config, generator, device)
        loader = DataLoader(TensorDataset(data.x, data.y), batch_size=self.lot)
        self.loader = DPDataLoader.from_data_loader(loader, generator=sampling)
        self.module = GradSampleModule(model)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=self.lot,
            generator=noise,
            # Opacus's defence against the floating-point attack on Gaussian sampling (Holohan & Braghin
            # 2021): each noise value the normalised sum of four draws.
            secure_mode=not config.insecure_seeded_noise,
        )
        self.device = device
        self.taken = 0

    def lots(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Poisson lots, pass after pass (a lot may be empty: Opacus then yields a zero-size batch)."""
        while True:
            for x, y in self.loader:
                yield x.to(self.device), y.to(self.device)

    def noisy_gradient(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Any = None) -> float:
        """Clip each example's gradient of the lot, sum, add noise, scale: the result is in ``.grad``.
        Returns the lot's loss (local only: it is computed from the data and never sent)."""
        self.optimizer.zero_grad(set_to_none=True)
        if len(y):
            loss = (loss_fn or F.cross_entropy)(self.module(x), y)
        else:  # an empty lot: no example's gradient, the noise alone (a mean over no example is NaN)
            loss = self.module(x).sum() * 0.0
        with warnings.catch_warnings():  # Opacus's hooks on a lot of no example: nothing to warn about
            warnings.simplefilter("ignore", UserWarning)
            loss.backward()
        value = float(loss.detach())
        self.optimizer.pre_step()  # clip_and_accumulate, add_noise, scale_grad
        self.taken += 1
        return value

    def close(self) -> None:
        self.module._close()


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
) -> int:
    """``epochs`` passes of DP-SGD (ceil(n / B) Poisson lots each) on the model; returns the steps taken."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    private = PrivateSteps(model, data, config, batch_size, device, generator, optimizer)
    try:
        lots = private.lots()
        for _ in range(round_steps(batch_size, len(data), epochs)):
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
