"""DP-SGD's step as Opacus runs it for us: Poisson lots, per-example clipping, noise of sigma C / B, a
secret source of randomness, and models refused before training when DP-SGD cannot protect them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
    seeded_generators,
)
from flwr_privacy.privacy.noise import SecureGaussian, SecurePoissonSample


def data(n=200, value=0.0, features=8):
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(0))
    return TensorData(torch.full((n, 1, 1, features), value), labels)


def linear(features=8, bias=False):
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 3, bias=bias))


def private_steps(model, tensors, config, batch_size=20, seed=0):
    """PrivateSteps on the CPU, its run generator seeded ``seed``."""
    return PrivateSteps(model, tensors, config, batch_size, torch.device("cpu"), torch.Generator().manual_seed(seed))


def one_step(model, tensors, config, batch_size=20, seed=0, loss_fn=None):
    private = private_steps(model, tensors, config, batch_size, seed)
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


def test_a_lot_returns_its_loss_and_an_empty_lot_is_the_noise_alone():
    """At q = 1/200 about a third of the lots are empty (Poisson sampling): a step on one must still release
    the noise, and report a loss of 0, not NaN (a mean over no example). Zero inputs give logits 0: loss ln 3."""
    model = linear()
    private = private_steps(model, data(200), DPSGDConfig(enabled=True), batch_size=1)
    try:
        lots = private.lots()
        empty_seen = set()
        while empty_seen != {True, False}:
            x, y = next(lots)
            loss = private.noisy_gradient(x, y)
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            assert loss == pytest.approx(0.0 if len(y) == 0 else math.log(3))
            assert torch.isfinite(grad).all() and (grad != 0).all()
            empty_seen.add(len(y) == 0)
    finally:
        private.close()


def lot_labels(insecure: bool, torch_seed: int, lots: int = 20) -> list[list[int]]:
    """The labels of the first lots a client draws, from a run generator seeded 7 and torch's global seed."""
    torch.manual_seed(torch_seed)
    model = linear()
    private = private_steps(model, data(400), DPSGDConfig(enabled=True, insecure_seeded_noise=insecure), seed=7)
    try:
        sample = private.lots()
        return [next(sample)[1].tolist() for _ in range(lots)]
    finally:
        private.close()


def test_the_lots_are_secret_even_under_the_same_global_seed_unless_the_insecure_switch_is_on():
    """Amplification by sampling needs a sample nobody can replay: not from the run's generator, nor torch's
    global one."""
    assert lot_labels(False, 0) != lot_labels(False, 0)
    assert lot_labels(True, 0) == lot_labels(True, 1)  # replayed from the run generator alone


def test_a_model_loader_instead_of_data_is_refused():
    with pytest.raises(ValueError) as refused:
        private_steps(linear(), DataLoader(TensorDataset(torch.zeros(4, 8), torch.zeros(4))), DPSGDConfig(enabled=True))
    assert str(refused.value) == "DP-SGD samples its own lots: give the client a TensorData, not a DataLoader"


def test_lots_are_poisson_samples_not_fixed_batches():
    config = DPSGDConfig(enabled=True)
    model = linear()
    private = PrivateSteps(model, data(400), config, 20, torch.device("cpu"), torch.Generator().manual_seed(0))
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


def lots_of(insecure: bool, seed: int = 7, count: int = 5) -> list[torch.Tensor]:
    """The labels of the first ``count`` lots of PrivateSteps built from a run generator seeded ``seed``, under
    torch's and NumPy's global seeds 0: the example ids of each lot (the labels are the ids here)."""
    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    ids = TensorData(torch.zeros(200, 1, 1, 8), torch.arange(200))
    private = private_steps(linear(), ids, DPSGDConfig(enabled=True, insecure_seeded_noise=insecure), seed=seed)
    try:
        lots = private.lots()
        return [next(lots)[1] for _ in range(count)]
    finally:
        private.close()


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_server_that_knows_the_run_seed_cannot_replay_the_lots():
    """Amplification by sampling assumes the adversary does not know which examples a lot held: with the
    same run generator and the same global seeds, two clients' lots differ (the keystream is the OS's)."""
    first, second = lots_of(insecure=False), lots_of(insecure=False)
    assert not same(first, second)
    assert all(len(set(lot.tolist())) == len(lot) for lot in first)  # each example at most once a lot


def test_the_insecure_switch_replays_the_lots_and_the_noise_from_the_run_seed_in_two_streams():
    """Tests only: the same seed gives the same lots; another seed other lots; and the sampling and the noise
    are two streams, not one seed used twice (the lot would then predict the noise)."""
    assert same(lots_of(insecure=True), lots_of(insecure=True))
    assert not same(lots_of(insecure=True), lots_of(insecure=True, seed=8))
    sampling, noise = seeded_generators(torch.Generator().manual_seed(7), torch.device("cpu"))
    assert sampling.initial_seed() != noise.initial_seed()
    streams = {g.initial_seed() for seed in range(50)  # runs with other seeds get other streams
               for g in seeded_generators(torch.Generator().manual_seed(seed), torch.device("cpu"))}
    assert len(streams) == 100


@pytest.mark.parametrize("insecure", [False, True])
def test_the_noise_is_a_secure_gaussians_unless_the_insecure_switch_is_on(insecure):
    model, config = linear(), DPSGDConfig(enabled=True, insecure_seeded_noise=insecure)
    private = PrivateSteps(model, data(), config, 20, torch.device("cpu"), torch.Generator())
    try:
        assert isinstance(private.noise, SecureGaussian) is (not insecure)
        assert isinstance(private.sampling, SecurePoissonSample) is (not insecure)
        if not insecure:
            assert private.noise.size == sum(p.numel() for p in model.parameters())
    finally:
        private.close()


def noise_of_one_lot(insecure: bool, torch_seed: int = 0) -> torch.Tensor:
    """The noisy gradient of one fixed lot of zero inputs (every example's gradient is zero: the noise alone),
    from PrivateSteps built from a run generator seeded 7 under torch's global seed ``torch_seed``."""
    torch.manual_seed(torch_seed)
    model = linear()
    private = private_steps(model, data(), DPSGDConfig(enabled=True, insecure_seeded_noise=insecure), seed=7)
    try:
        private.noisy_gradient(torch.zeros(20, 1, 1, 8), torch.zeros(20, dtype=torch.long))
        return model[1].weight.grad.clone()
    finally:
        private.close()


def test_the_same_lot_gets_other_noise_from_the_same_seeds_unless_the_insecure_switch_is_on():
    """Not the lots this time: one and the same lot, so only the noise can differ."""
    assert not torch.equal(noise_of_one_lot(False), noise_of_one_lot(False))
    assert torch.equal(noise_of_one_lot(True), noise_of_one_lot(True, torch_seed=1))  # the run generator alone


def test_the_noise_is_added_in_float64_and_the_gradient_rounded_once():
    """The mitigation against the floating-point attack: sum / B + noise in float64, one rounding to float32.
    The noise is replaced by known float64 values that float32 cannot hold (a third of C / B)."""
    torch.manual_seed(0)
    model, lot = linear(features=64, bias=True), 20
    private = private_steps(model, data(features=64), DPSGDConfig(enabled=True), lot)
    known = torch.full((private.noise.size,), 1 / (3 * lot), dtype=torch.float64)
    private.noise.sample = lambda std: known.clone()  # type: ignore[method-assign]
    try:
        x, y = torch.randn(lot, 1, 1, 64), torch.zeros(lot, dtype=torch.long)
        sums, _ = private.clipped_sum(x, y)
        private.noisy_gradient(x, y)
    finally:
        private.close()
    flat = torch.cat([s.reshape(-1) for s in sums]).double()
    expected = (known + flat * (1 / lot)).float()
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), expected)
    assert not torch.equal(expected, flat.float() / lot + known.float())  # rounding twice differs here


def test_the_hooks_are_removed_after_a_round():
    model = linear()
    one_step(model, data(), DPSGDConfig(enabled=True))
    assert not model._forward_hooks and not model[1]._forward_hooks and not model[1]._backward_hooks


def test_a_model_with_batch_norm_is_refused_and_fixed_to_group_norm():
    resnet = build_model("resnet20", (3, 32, 32), 10, 0)
    with pytest.raises(ValueError) as refused:
        check_private_model(resnet)
    reason = "this model cannot be trained with DP-SGD: BatchNorm cannot support training with differential privacy."
    assert str(refused.value).startswith(reason)
    assert str(refused.value).count("BatchNorm cannot") == 1  # once, not once per BatchNorm layer
    fixed = make_private_model(resnet)
    check_private_model(fixed)
    assert not list(fixed.buffers())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())


def test_each_reason_opacus_gives_is_named_once_in_order():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.LSTM(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError) as refused:
        check_private_model(model)
    message = str(refused.value)
    assert message.startswith("this model cannot be trained with DP-SGD: BatchNorm cannot support training")
    assert "; We do not support nn.LSTM" in message
    assert message.count("BatchNorm cannot") == 1


def test_a_model_with_buffers_is_refused_naming_the_first_five():
    model = linear()
    for i in range(7):
        model.register_buffer(f"running_{i}", torch.zeros(3))
    with pytest.raises(ValueError) as refused:
        check_private_model(model)
    assert str(refused.value) == (
        "this model cannot be trained with DP-SGD: its buffers ['running_0', 'running_1', 'running_2', "
        "'running_3', 'running_4'] would be sent un-noised; use GroupNorm instead of BatchNorm "
        "(flwr_privacy.privacy.dpsgd.make_private_model)"
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"noise_multiplier": 0.0}, "dpsgd.noise-multiplier=0.0 must be > 0"),
        ({"max_grad_norm": 0.0}, "dpsgd.max-grad-norm=0.0 must be > 0"),
        ({"max_grad_norm": -1.0}, "dpsgd.max-grad-norm=-1.0 must be > 0"),
        ({"delta": 0.0}, "dpsgd.delta=0.0 must be in (0, 1)"),
        ({"delta": 1.0}, "dpsgd.delta=1.0 must be in (0, 1)"),
        ({"noise_multiplier": float("nan")}, "dpsgd.noise-multiplier=nan must be a finite number"),
        ({"noise_multiplier": "1"}, "dpsgd.noise-multiplier='1' must be a finite number"),
        ({"max_grad_norm": True}, "dpsgd.max-grad-norm=True must be a finite number"),
        ({"delta": float("inf")}, "dpsgd.delta=inf must be a finite number"),
        ({"target_epsilon": -1.0}, "dpsgd.target-epsilon and dpsgd.max-epsilon must be >= 0 (0: not used)"),
        ({"max_epsilon": -1.0}, "dpsgd.target-epsilon and dpsgd.max-epsilon must be >= 0 (0: not used)"),
    ],
)
def test_bad_settings_are_refused_naming_the_key_and_value(values, message):
    with pytest.raises(ValueError) as refused:
        DPSGDConfig(enabled=True, **values)
    assert str(refused.value) == message


def test_steps_per_round_follow_the_lot_size_and_the_epochs():
    assert round_steps(50, 400, 2) == 16
    assert round_steps(50, 401, 1) == 9
    assert round_steps(50, 400, 3, local_steps=5) == 5
    assert round_steps(500, 40, 1) == 1  # a lot never exceeds the data
    assert round_steps(50, 1, 2) == 2  # one example is enough
    with pytest.raises(ValueError) as refused:
        round_steps(50, 0, 1)
    assert str(refused.value) == "a DP-SGD client needs at least one example, it has 0"


def test_target_epsilon_gives_the_noise_that_spends_it():
    from opacus.accountants import RDPAccountant

    plan = DPSGDPlan(DPSGDConfig(enabled=True, target_epsilon=3.0, delta=1e-5), 50, 6000, 1)
    sigma = noise_for_target(plan, rounds=20)
    accountant = RDPAccountant()
    accountant.history = [(sigma, 50 / 6000, 20 * 120)]
    assert accountant.get_epsilon(1e-5) == pytest.approx(3.0, rel=0.02)


def private_epochs(seed=0, epochs=1, momentum=0.0, weight_decay=0.0, loss_fn=None):
    """A tiny model after train_epochs_private with seeded (replayable, test-only) noise: its weights and the
    steps it reports."""
    from flwr_privacy.privacy.dpsgd import train_epochs_private

    torch.manual_seed(1)
    model = linear()
    features = torch.randn(60, 1, 1, 8, generator=torch.Generator().manual_seed(2))
    tensors = TensorData(features, torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(3)))
    config = DPSGDConfig(enabled=True, noise_multiplier=0.5, insecure_seeded_noise=True)
    steps = train_epochs_private(
        model, tensors, epochs, 0.5, momentum, weight_decay, 20, config, torch.device("cpu"),
        torch.Generator().manual_seed(seed), loss_fn,
    )
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), steps


def test_private_epochs_take_their_steps_with_the_given_loss_optimizer_and_generator():
    weights, steps = private_epochs()
    assert steps == 3 and private_epochs(epochs=2)[1] == 6  # ceil(60 / 20) lots an epoch
    assert torch.equal(private_epochs()[0], weights)  # seeded: the same generator, the same model
    assert not torch.equal(private_epochs(seed=1)[0], weights)  # ... and it is the generator's
    assert not torch.equal(private_epochs(momentum=0.9)[0], weights)
    assert not torch.equal(private_epochs(weight_decay=0.5)[0], weights)
    calls = []

    def loss_fn(outputs, labels):
        calls.append(len(labels))
        return torch.nn.functional.cross_entropy(outputs, labels)

    private_epochs(loss_fn=loss_fn)
    assert len(calls) == sum(1 for n in calls if n > 0) >= 2  # every non-empty lot through the user's loss


@pytest.mark.parametrize(
    "batch_size, min_examples, local_epochs", [(0, 10, 1), (5, 0, 1), (5, 10, 0)]
)
def test_a_plan_needs_a_lot_examples_and_an_epoch(batch_size, min_examples, local_epochs):
    config = DPSGDConfig(enabled=True)
    with pytest.raises(ValueError, match="^a DP-SGD plan needs batch-size, min-examples and local-epochs >= 1"):
        DPSGDPlan(config, batch_size, min_examples, local_epochs)


def test_a_plan_travels_to_the_client_whole():
    plan = DPSGDPlan(DPSGDConfig(enabled=True, noise_multiplier=0.7), 1, 50, local_epochs=3)
    assert DPSGDPlan.from_settings(plan.settings(), 50) == plan
    steps = DPSGDPlan(DPSGDConfig(enabled=True), 10, 50, local_steps=4)
    assert DPSGDPlan.from_settings(steps.settings(), 50) == steps


def test_a_plan_of_one_example_or_one_step_is_allowed_and_zero_steps_is_not():
    config = DPSGDConfig(enabled=True)
    assert DPSGDPlan(config, 1, 1, local_steps=1).steps(1) == 1
    with pytest.raises(ValueError, match="^local-steps=0 must be >= 1$"):
        DPSGDPlan(config, 1, 1, local_steps=0)
    assert round_steps(50, 100) == 2  # one epoch unless told


def test_a_minimal_instruction_reads_as_one_epoch_and_no_instruction_as_no_dp_sgd():
    assert DPSGDPlan.from_settings({}, 50) is None
    plan = DPSGDPlan.from_settings({"dpsgd.enabled": True, "dpsgd_batch_size": 10}, 50)
    assert plan is not None and plan.local_epochs == 1 and plan.local_steps is None


def test_only_dp_accountings_fractional_order_notices_are_silenced():
    import logging

    from flwr_privacy.privacy.dpsgd import _FractionalOrderNotice

    notice = _FractionalOrderNotice()
    record = logging.LogRecord("absl", logging.WARNING, "", 0, "RDP order 1.5: failed to converge", None, None)
    other = logging.LogRecord("absl", logging.WARNING, "", 0, "something else", None, None)
    assert notice.filter(record) is False and notice.filter(other) is True


@pytest.mark.parametrize("norm", [False, True], ids=["one-pass", "opacus-hooks"])
def test_every_lot_is_clipped_whether_in_one_pass_or_by_opacuss_hooks(norm):
    """Noise all but removed: each noisy gradient is the clipped sum over B, so its norm is at most
    C |lot| / B, for the networks the one-pass sum takes and for one it cannot (GroupNorm: Opacus's hooks)."""
    layers = [nn.Flatten(), nn.Linear(8, 6), *([nn.GroupNorm(2, 6)] if norm else []), nn.Tanh(), nn.Linear(6, 3)]
    model = nn.Sequential(*layers)
    clip, lot = 1e-3, 20
    config = DPSGDConfig(enabled=True, noise_multiplier=1e-9, max_grad_norm=clip, insecure_seeded_noise=True)
    private = private_steps(model, data(value=100.0), config, lot)  # inputs this large: every gradient is clipped
    assert (private.hooks is not None) is norm
    try:
        lots = private.lots()
        for _ in range(5):
            x, y = next(lots)
            private.noisy_gradient(x, y)
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            assert 0 < grad.norm() <= clip * len(y) / lot * (1 + 1e-4)
    finally:
        private.close()
