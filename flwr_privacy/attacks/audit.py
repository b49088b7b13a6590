"""An empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023, "Privacy Auditing
with One (1) Training Run", arXiv:2305.08846).

The auditor plants m canaries in a client's data and turns its guesses of which ones the client trained on
into a lower bound on the epsilon of what it observed. The paper's Algorithm 1, step by step:

1. m canaries, each included independently with probability 1/2 (`draw_selection`: S_i in {-1, +1});
2. the mechanism runs on the non-canary examples and the included canaries; the auditor observes its output
   (here: the client's upload, as the server decodes it);
3. one score per canary from the output (`canary_scores`);
4. guess +1 for the k_+ highest scores, -1 for the k_- lowest, abstain on the rest (`guess`);
5. count the correct guesses; an (epsilon, delta)-DP mechanism makes v or more correct out of r guesses with
   probability at most ``p_value`` (their Theorem 3: the tail of Binomial(r, e^eps / (1 + e^eps)) plus a
   delta term, as their Appendix D computes it), so the largest epsilon whose p-value is at most beta is
   rejected at confidence 1 - beta (`epsilon_lower_bound`).

The bound holds whatever the score: the score decides only how much the audit can see. Ours is for an
auditor as strong as DP's adversary, who knows every example but whether each canary is in, and the model
the client started from. For one step of (DP-)SGD the upload is then linear in S: the change of the weights
is -lr/n (G + sum_i [S_i = +1] g_i + noise), with G the known examples' summed (clipped) gradient and g_i the
canary's. `canary_scores` fits that model by least squares, reads the noise's size off the residual, and
returns each canary's linear minimum-mean-square-error estimate of [S_i = +1]: without noise it recovers S
exactly, where a plain inner product with g_i suffers the other canaries' interference (Keinan, Shenfeld &
Ligett 2025 name interference as what limits one-run audits).

Pure PyTorch and SciPy; ``experiments.benchmarks.audit`` runs it on the project's real clients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from scipy.stats import binom
from torch import nn
from torch.func import functional_call, grad, vmap

from flwr_privacy.attacks.inversion import Observation

# k_+ = k_- as shares of the canaries: the audit tries each and reports the best, at beta / len(...) each
GUESS_SHARES = (0.025, 0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class AuditResult:
    """What one audit found: ``correct`` right guesses out of ``guesses`` (r and v in the paper) among
    ``canaries`` (m), and the epsilon the mechanism cannot be below at ``delta``, at ``confidence``."""

    canaries: int
    guesses: int
    correct: int
    epsilon: float
    delta: float
    confidence: float


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Theorem 3's bound on P[at least ``correct`` of ``guesses`` right] for an (epsilon, delta)-DP mechanism:
    P[Binomial(r, q) >= v] + 2 m delta max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i, q = e^eps / (1 + e^eps)."""
    _check_counts(canaries, guesses, correct)
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = float(expit(epsilon))  # the accuracy of epsilon-DP randomised response, the best guess DP allows
    tail = float(binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    below = np.cumsum(binom.pmf(np.arange(correct - 1, -1, -1), guesses, q))  # i = 1..v: P[v - i <= W < v]
    slack = float((below / np.arange(1, correct + 1)).max())
    return min(tail + 2 * canaries * delta * slack, 1.0)


def epsilon_lower_bound(canaries: int, guesses: int, correct: int, delta: float, beta: float = 0.05) -> float:
    """The largest epsilon that ``correct`` of ``guesses`` rejects at confidence 1 - beta (0: none): the
    mechanism is not (epsilon', delta)-DP for any epsilon' below it, unless an event of probability <= beta
    occurred. A bisection on epsilon, the p-value growing with it (the paper's Appendix D)."""
    if not 0 < beta < 1:
        raise ValueError(f"beta={beta} must be in (0, 1)")
    if p_value(canaries, guesses, correct, 0.0, delta) > beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(canaries, guesses, correct, high, delta) <= beta:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if p_value(canaries, guesses, correct, middle, delta) <= beta else (low, middle)
    return low


def draw_selection(canaries: int, generator: torch.Generator) -> torch.Tensor:
    """Step 1: S_i = +1 (the canary is in the data) or -1, independently with probability 1/2 each (bool: in)."""
    if canaries < 1:
        raise ValueError(f"an audit needs at least one canary, got {canaries}")
    return torch.rand(canaries, generator=generator) < 0.5


def guess(scores: torch.Tensor, k_plus: int, k_minus: int) -> torch.Tensor:
    """Step 4: T_i = +1 for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, 0 (abstain) else."""
    m = len(scores)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(f"k_plus={k_plus} and k_minus={k_minus} must be >= 0 and at most {m} together")
    order = torch.argsort(scores, descending=True, stable=True)
    guesses = torch.zeros(m, dtype=torch.int64)
    guesses[order[:k_plus]] = 1
    guesses[order[m - k_minus :]] = -1
    return guesses


def audit(
    scores: torch.Tensor, included: torch.Tensor, delta: float, confidence: float = 0.95,
    shares: Sequence[float] = GUESS_SHARES,
) -> AuditResult:
    """Steps 4-5 for each k_+ = k_- = share x m, each at beta / len(shares) (a union bound over the choices,
    so picking the best keeps the confidence); the result with the highest lower bound."""
    if scores.shape != included.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and inclusions {tuple(included.shape)} must be flat, alike")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    m = len(scores)
    truth = included.long() * 2 - 1
    counts = sorted({max(1, min(m // 2, round(share * m))) for share in shares})
    best: AuditResult | None = None
    for k in counts:
        guesses = guess(scores, k, k)
        correct = int((guesses == truth).sum())
        epsilon = epsilon_lower_bound(m, 2 * k, correct, delta, (1 - confidence) / len(counts))
        if best is None or epsilon > best.epsilon:
            best = AuditResult(m, 2 * k, correct, epsilon, delta, confidence)
    assert best is not None  # counts holds at least one k
    return best


def example_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float | None = None, chunk: int = 256
) -> torch.Tensor:
    """Each example's flat gradient of the cross-entropy at the model's weights (``parameters()`` order, an
    (N, d) matrix), each scaled to L2 norm at most ``clip`` where given (DP-SGD's per-example clipping)."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = []
    for start in range(0, len(y), chunk):
        grads = per_example(params, x[start : start + chunk], y[start : start + chunk])
        rows.append(torch.cat([grads[name].flatten(1) for name in params], dim=1))
    matrix = torch.cat(rows) if rows else torch.zeros(0, sum(p.numel() for p in params.values()))
    if clip is not None:
        matrix = matrix * (clip / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
    return matrix


def canary_scores(observation: Observation, known: torch.Tensor, canaries: torch.Tensor) -> torch.Tensor:
    """Step 3: each canary's estimate of [S_i = +1] from one upload of one step, u = a (known + sum_i S_i g_i + z).

    ``known`` is the flat summed (clipped) gradient of the client's other examples, ``canaries`` the (m, d)
    canary gradients, as the client computes them. First the least-squares fit of u on (known, g_1..g_m) over
    the entries the upload carried gives the scale a (lr / n: the auditor need not know n) and the noise's
    variance s^2 per entry, in units of one example's gradient; then the linear minimum-mean-square-error
    estimate under the prior S_i ~ Bernoulli(1/2): 1/2 + (G^T G + 4 s^2 I)^-1 G^T (u / a - known - G 1/2).
    Where the fit is not identified (fewer entries than unknowns) or gives a <= 0 (the upload does not follow
    the client's gradient: noise swamps it), the score is the inner product G^T u, the estimate's limit in
    infinite noise."""
    m, d = canaries.shape
    if known.shape != (d,) or observation.values.shape != (d,):
        raise ValueError(f"known {tuple(known.shape)} and upload {tuple(observation.values.shape)} must be ({d},)")
    # the upload of a change is -lr (gradient); a gradient upload (DGC's) is the gradient itself
    sign = -1.0 if observation.kind == "change" else 1.0
    mask = observation.mask
    u = sign * observation.values[mask].double()
    g = canaries[:, mask].double().T  # (observed, m)
    design = torch.cat([known[mask].double().unsqueeze(1), g], dim=1)
    freedom = len(u) - design.shape[1]
    if freedom < 1:
        return (g.T @ u).float()
    fit = torch.linalg.lstsq(design, u.unsqueeze(1)).solution.squeeze(1)
    scale = float(fit[0])
    if not scale > 0:
        return (g.T @ u).float()
    noise = float((u - design @ fit).square().sum()) / freedom / scale**2
    target = u / scale - design[:, 0] - g.sum(1) / 2
    gram = g.T @ g + 4 * noise * torch.eye(m, dtype=torch.float64)
    return (0.5 + torch.linalg.solve(gram, g.T @ target)).float()


def ledger_exceeded(result: AuditResult, ledger_epsilon: float | None) -> bool:
    """Whether the audit's lower bound is above the epsilon the ledger charged: a bug in the mechanism or in
    its accounting (or an event of probability at most 1 - confidence). No ledger epsilon: no guarantee."""
    return ledger_epsilon is not None and math.isfinite(ledger_epsilon) and result.epsilon > ledger_epsilon
