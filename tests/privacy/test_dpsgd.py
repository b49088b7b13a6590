"""DP-SGD's step as Opacus runs it for us: Poisson lots, per-example clipping, noise of sigma C / B, a
secret source of randomness, and models refused before training when DP-SGD cannot protect them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flwr_privacy.data import TensorData
from flwr_privacy.models import build_model
from flwr_privacy.privacy.dpsgd import (
    DPSGDConfig,
    DPSGDPlan,
    PrivateSteps,
    check_private_model,
    make_private_model,
    noise_for_target,
    round_steps,
)


def data(n=200, value=0.0, features=8):
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(0))
    return TensorData(torch.full((n, 1, 1, features), value), labels)


def linear(features=8, bias=False):
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 3, bias=bias))


def one_step(model, tensors, config, batch_size=20, seed=0, loss_fn=None):
    private = PrivateSteps(
        model, tensors, config, batch_size, torch.device("cpu"), torch.Generator().manual_seed(seed),
        torch.optim.SGD(model.parameters(), lr=1.0),
    )
    try:
        x, y = next(private.lots())
        private.noisy_gradient(x, y, loss_fn)
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone(), len(y)
    finally:
        private.close()


def test_the_noise_is_sigma_c_over_the_expected_lot_size():
    """Inputs of zero give every example a zero gradient (no bias): what is left is the noise alone."""
    sigma, clip, lot = 2.0, 0.5, 20
    config = DPSGDConfig(enabled=True, noise_multiplier=sigma, max_grad_norm=clip)
    draws = torch.cat([one_step(linear(), data(), config, lot, seed)[0] for seed in range(200)])
    assert draws.std().item() == pytest.approx(sigma * clip / lot, rel=0.08)
    assert draws.mean().item() == pytest.approx(0.0, abs=0.1 * sigma * clip / lot)


def test_every_examples_gradient_is_clipped_before_the_sum():
    """Identical examples with huge inputs have identical huge gradients (a linear loss: d/dW of the summed
    outputs is the input, 1e4 * sqrt(24) per example); with almost no noise the lot's gradient is then
    exactly C per example: C * (examples in the lot) / B."""
    clip, lot = 0.1, 20
    config = DPSGDConfig(enabled=True, noise_multiplier=1e-6, max_grad_norm=clip)
    same = TensorData(torch.full((200, 1, 1, 8), 1e4), torch.zeros(200, dtype=torch.long))
    grad, size = one_step(linear(), same, config, lot, loss_fn=lambda out, y: out.sum(1).mean())
    assert size > 0
    assert grad.norm().item() == pytest.approx(clip * size / lot, rel=1e-3)


def test_lots_are_poisson_samples_not_fixed_batches():
    config = DPSGDConfig(enabled=True)
    model = linear()
    private = PrivateSteps(model, data(400), config, 20, torch.device("cpu"), torch.Generator().manual_seed(0),
                           torch.optim.SGD(model.parameters(), lr=1.0))
    lots = private.lots()
    sizes = [len(next(lots)[1]) for _ in range(200)]
    private.close()
    assert len(set(sizes)) > 5 and 17 < sum(sizes) / len(sizes) < 23  # expected B = 20, varying


def test_noise_and_sampling_are_secret_unless_the_insecure_switch_is_on():
    """Someone who knows the run's seed (and so the generator a client is given) cannot replay the noise."""
    config = DPSGDConfig(enabled=True)
    first, _ = one_step(linear(), data(), config, seed=7)
    second, _ = one_step(linear(), data(), config, seed=7)
    assert not torch.equal(first, second)
    insecure = DPSGDConfig(enabled=True, insecure_seeded_noise=True)
    assert torch.equal(one_step(linear(), data(), insecure, seed=7)[0], one_step(linear(), data(), insecure, seed=7)[0])


@pytest.mark.parametrize("insecure", [False, True])
def test_the_noise_is_drawn_in_opacus_secure_mode_unless_the_insecure_switch_is_on(insecure):
    """Secure mode: each noise value the halved sum of four Gaussian draws (Holohan & Braghin 2021), the
    defence against the floating-point attack on Gaussian sampling."""
    model, config = linear(), DPSGDConfig(enabled=True, insecure_seeded_noise=insecure)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    private = PrivateSteps(model, data(), config, 20, torch.device("cpu"), torch.Generator(), optimizer)
    try:
        assert private.optimizer.secure_mode is not insecure
    finally:
        private.close()


def test_the_hooks_are_removed_after_a_round():
    model = linear()
    one_step(model, data(), DPSGDConfig(enabled=True))
    assert not model._forward_hooks and not model[1]._forward_hooks and not model[1]._backward_hooks


def test_a_model_with_batch_norm_is_refused_and_fixed_to_group_norm():
    resnet = build_model("resnet20", (3, 32, 32), 10, 0)
    with pytest.raises(ValueError, match="cannot be trained with DP-SGD"):
        check_private_model(resnet)
    fixed = make_private_model(resnet)
    check_private_model(fixed)
    assert not list(fixed.buffers())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())


def test_a_model_with_buffers_is_refused():
    model = linear()
    model.register_buffer("running_mean", torch.zeros(3))
    with pytest.raises(ValueError, match="buffers"):
        check_private_model(model)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"noise_multiplier": 0.0}, "noise-multiplier"),
        ({"max_grad_norm": -1.0}, "max-grad-norm"),
        ({"delta": 1.0}, "delta"),
        ({"noise_multiplier": float("nan")}, "noise-multiplier"),
        ({"max_epsilon": -1.0}, "max-epsilon"),
    ],
)
def test_bad_settings_name_the_key(values, key):
    with pytest.raises(ValueError, match=key):
        DPSGDConfig(enabled=True, **values)


def test_steps_per_round_follow_the_lot_size_and_the_epochs():
    assert round_steps(50, 400, 2) == 16
    assert round_steps(50, 401, 1) == 9
    assert round_steps(50, 400, 3, local_steps=5) == 5
    assert round_steps(500, 40, 1) == 1  # a lot never exceeds the data


def test_target_epsilon_gives_the_noise_that_spends_it():
    from opacus.accountants import RDPAccountant

    plan = DPSGDPlan(DPSGDConfig(enabled=True, target_epsilon=3.0, delta=1e-5), 50, 6000, 1)
    sigma = noise_for_target(plan, rounds=20)
    accountant = RDPAccountant()
    accountant.history = [(sigma, 50 / 6000, 20 * 120)]
    assert accountant.get_epsilon(1e-5) == pytest.approx(3.0, rel=0.02)
