"""The one-run privacy audit: its bound against known cases, its score, and a small real audit in which the
non-private upload must give a high lower bound and a DP one a lower bound no higher than the ledger's.

The real audit is the benchmark's command at a small size (200 canaries, 100 other images, the embedded MNIST,
the tanh CNN at initialisation), each upload from the project's own client and decoded by its strategy. A
lower bound above the ledger's epsilon is a bug in the mechanism or in its accounting, and fails the test.
"""

from __future__ import annotations

import math

import pytest
import torch

from experiments.benchmarks.audit import main
from flwr_privacy.attacks.audit import (
    AuditResult,
    audit,
    canary_scores,
    draw_selection,
    epsilon_lower_bound,
    example_gradients,
    guess,
    ledger_exceeded,
    p_value,
)
from flwr_privacy.attacks.inversion import Observation
from flwr_privacy.models import build_model

# What the non-private upload reaches with 200 canaries (3.75: every guess right); the most 200 guesses
# can show at 95 % over the five guess counts is 3.76. Below 3, the audit lost its power.
POWER = 3.0


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize("guesses", [10, 100, 1000])
def test_all_guesses_right_give_the_closed_form_of_the_pure_bound(guesses):
    # P[Binomial(v, q) >= v] = q^v <= beta exactly when q >= beta^(1/v)
    assert epsilon_lower_bound(guesses, guesses, guesses, 0.0, 0.05) == pytest.approx(logit(0.05 ** (1 / guesses)))


def test_the_bound_grows_with_the_guesses_all_right_and_with_the_right_ones():
    all_right = [epsilon_lower_bound(1000, v, v, 1e-5) for v in (10, 50, 100, 500, 1000)]
    assert all_right == sorted(all_right) and all_right[0] > 0
    by_correct = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in range(100, 201, 10)]
    assert by_correct == sorted(by_correct) and by_correct[-1] > by_correct[5] > 0


@pytest.mark.parametrize("correct", [0, 40, 50, 55])
def test_guesses_no_better_than_chance_give_no_bound(correct):
    assert epsilon_lower_bound(100, 100, correct, 1e-5) == 0.0


def test_delta_only_weakens_the_bound_and_the_bound_sits_at_beta():
    pure, approximate = epsilon_lower_bound(1000, 200, 180, 0.0), epsilon_lower_bound(1000, 200, 180, 1e-3)
    assert 0 < approximate < pure
    assert p_value(1000, 200, 180, approximate, 1e-3) == pytest.approx(0.05, abs=1e-6)
    assert p_value(1000, 200, 180, 2.0, 1e-3) > p_value(1000, 200, 180, 2.0, 0.0)


def test_the_p_value_of_a_fair_coin_is_its_binomial_tail():
    # epsilon 0: a right guess is a fair coin, P[Binomial(10, 1/2) >= 8] = 56 / 1024
    assert p_value(10, 10, 8, 0.0, 0.0) == pytest.approx(56 / 1024)


@pytest.mark.parametrize(
    "call",
    [
        lambda: p_value(10, 5, 6, 1.0, 0.0),
        lambda: p_value(10, 12, 6, 1.0, 0.0),
        lambda: p_value(10, 5, 3, -1.0, 0.0),
        lambda: epsilon_lower_bound(10, 5, 3, 0.0, beta=1.0),
        lambda: guess(torch.zeros(4), 3, 2),
        lambda: draw_selection(0, torch.Generator()),
        lambda: audit(torch.zeros(4), torch.zeros(3, dtype=torch.bool), 0.0),
    ],
)
def test_impossible_counts_and_settings_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_guesses_are_the_highest_and_the_lowest_scores():
    scores = torch.tensor([0.3, 0.9, -0.2, 0.5, 0.0])
    assert guess(scores, 2, 1).tolist() == [0, 1, -1, 1, 0]


def test_a_perfect_score_makes_every_guess_right_at_every_count():
    included = torch.arange(400)[torch.randperm(400, generator=torch.Generator().manual_seed(0))] % 2 == 0
    result = audit(included.float(), included, 1e-5)  # 200 in, so k_+ = k_- = 200 can be all right
    assert result.correct == result.guesses == 400
    assert result.epsilon == pytest.approx(epsilon_lower_bound(400, 400, 400, 1e-5, 0.01))
    assert ledger_exceeded(result, 1.0) and not ledger_exceeded(result, 8.0) and not ledger_exceeded(result, None)


def test_the_score_recovers_the_inclusions_of_a_noiseless_linear_upload_and_ranks_a_noisy_one():
    generator = torch.Generator().manual_seed(0)
    m, d = 60, 2000
    canaries = torch.randn((m, d), generator=generator) + 0.5  # correlated, as real canary gradients are
    known = 20 * torch.randn(d, generator=generator)
    included = draw_selection(m, generator)
    gradient = known + included.float() @ canaries
    exact = canary_scores(Observation(-0.01 * gradient, None, "change"), known, canaries)
    assert torch.equal(exact > 0.5, included)
    noise = 3 * torch.randn(d, generator=generator)
    noisy = canary_scores(Observation(gradient + noise, None, "gradient"), known, canaries)
    assert audit(noisy, included, 0.0).correct >= 0.9 * audit(noisy, included, 0.0).guesses


def test_example_gradients_are_the_per_example_gradients_clipped():
    torch.manual_seed(0)
    model = build_model("tanh-cnn", (1, 28, 28), 10, seed=0)
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([1, 4, 7])
    rows = example_gradients(model, x, y, chunk=2)
    loss = torch.nn.functional.cross_entropy(model(x[1:2]), y[1:2])
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    torch.testing.assert_close(rows[1], expected, atol=1e-6, rtol=1e-4)
    clipped = example_gradients(model, x, y, clip=0.5)
    assert clipped.norm(dim=1).max() <= 0.5 + 1e-6


@pytest.fixture(scope="module")
def rows():
    found = main([
        "--dataset", "mnist-embedded", "--canaries", "200", "--examples", "100", "--threads", "1",
        "--settings", "fedavg,fedavg+dp1,dssgd-10+svt1",
    ])
    return {row.setting: row for row in found}


def test_the_audit_of_the_non_private_upload_has_power(rows):
    result = rows["fedavg"].result
    assert isinstance(result, AuditResult) and result.canaries == 200
    assert result.epsilon > POWER
    assert rows["fedavg"].ledger_epsilon is None


@pytest.mark.parametrize("setting", ["fedavg+dp1", "dssgd-10+svt1"])
def test_the_audit_s_lower_bound_is_no_higher_than_the_ledger_s_epsilon(rows, setting):
    row = rows[setting]
    assert row.ledger_epsilon == pytest.approx(1.0, rel=0.01)
    assert row.result.epsilon <= row.ledger_epsilon, (
        f"{setting}: the audit shows epsilon >= {row.result.epsilon:.3g}, above the ledger's {row.ledger_epsilon:.3g}"
    )
    assert not row.exceeded
