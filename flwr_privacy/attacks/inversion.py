"""Gradient inversion by the server (Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020, "Inverting Gradients").

The server is honest but curious: it runs the protocol as written and keeps what it receives. It knows the
model it sent, the architecture, the client's local training settings (learning rate, local steps, batch
size: it sent them) and the client's upload as it decoded it (an :class:`Observation`). It wants the
client's private images. The attack, in the paper's steps:

1. recover the labels from the output layer's update (`recover_labels`): for one image the label is the
   entry of the last bias's gradient that is negative (iDLG, Zhao et al. 2020), or, without a bias in the
   upload, the row of the last weight's gradient whose sum is negative; for a batch, how many images each
   label has from the bias gradient's size (Geiping Sec. 5; Yin et al. 2021; Geng et al. 2021);
2. draw dummy images, run the client's round on them (`simulate`): one gradient (Sec. 3), or the local
   steps' change of the weights, unrolled (Sec. 4, "multiple local steps");
3. minimise 1 - cos(simulated, observed) + alpha TV(x) over the images (Eq. 4) with Adam on signed
   gradients, the step size cut tenfold at 3/8, 5/8 and 7/8 of the iterations, and the images kept in
   the data's range (Sec. 4: "box constraints"); on a sparse upload (DGC's top-k, DSSGD's selection)
   only the observed entries enter the cosine, which is all the server decoded;
4. restart from new dummy images and keep the restart with the lowest objective (`invert`): the server
   cannot see the private images, so it judges restarts by how well they explain the upload.

Pure PyTorch; the metrics that score a reconstruction against the private images are in
``flwr_privacy.attacks.metrics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

KINDS = ("gradient", "change")


@dataclass(frozen=True)
class Observation:
    """An upload as the server decoded it, over the model's flat trainable entries (``parameters()`` order).

    Args:
        values: the flat vector; entries the upload did not carry are ignored.
        observed: a bool mask of the entries the upload carried (None: all of them, a dense upload).
        kind: ``"gradient"``: the round's summed mini-batch gradients at the sent weights (DGC's accumulated
            v); ``"change"``: the weights after local training minus the weights sent (FedAvg, DSSGD).
        clipped_at: the bound the values were clipped to (DSSGD's gamma), if any: their size then says
            little, their sign still does.
    """

    values: torch.Tensor
    observed: torch.Tensor | None = None
    kind: str = "change"
    clipped_at: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Observation.kind={self.kind!r} is invalid: allowed {KINDS}")
        if self.values.dim() != 1:
            raise ValueError(f"Observation.values must be flat, got shape {tuple(self.values.shape)}")
        if self.observed is not None and self.observed.shape != self.values.shape:
            raise ValueError(f"observed mask {tuple(self.observed.shape)} != values {tuple(self.values.shape)}")

    @property
    def mask(self) -> torch.Tensor:
        """The observed entries as a bool mask (all True for a dense upload)."""
        if self.observed is None:
            return torch.ones_like(self.values, dtype=torch.bool)
        return self.observed.bool()


@dataclass(frozen=True)
class LocalTraining:
    """The client's round as the server configured it: ``steps`` full-batch SGD steps at ``lr``."""

    lr: float = 0.05
    steps: int = 1

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.steps < 1:
            raise ValueError(f"LocalTraining needs lr > 0 and steps >= 1, got lr={self.lr}, steps={self.steps}")


@dataclass(frozen=True)
class InversionConfig:
    """The attack's settings: Geiping Sec. 4's optimiser, with the budget and TV weight that reconstruct one MNIST
    image from a dense upload (docs/privacy-evidence.md; a sparse or noised upload wants tv_weight 0.1).

    Args:
        iterations: Adam steps per restart. restarts: independent tries, the best objective kept.
        lr: Adam's step size on the images (in normalised units), cut tenfold at 3/8, 5/8, 7/8.
        tv_weight: alpha, the weight of the total-variation prior.
        signed: step on the sign of the objective's gradient (the paper's signed Adam).
    """

    iterations: int = 300
    restarts: int = 2
    lr: float = 0.1
    tv_weight: float = 1e-3
    signed: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.restarts < 1:
            raise ValueError(f"iterations and restarts must be >= 1, got {self.iterations}, {self.restarts}")
        if not self.lr > 0 or not self.tv_weight >= 0:
            raise ValueError(f"lr must be > 0 and tv_weight >= 0, got {self.lr}, {self.tv_weight}")


@dataclass(frozen=True)
class Inversion:
    """The attack's result: the images of the best restart (normalised, as the model sees them), the labels
    it used, and the objective each restart ended at."""

    images: torch.Tensor
    labels: torch.Tensor
    objectives: tuple[float, ...]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV(x): mean absolute difference of neighbouring pixels, across and down (the paper's image prior)."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def cosine_distance(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """1 - cos(simulated, observed) (Eq. 4's matching term), both over the observed entries only."""
    return 1 - (simulated * observed).sum() / (simulated.norm() * observed.norm()).clamp_min(1e-12)


def simulate(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, kind: str, training: LocalTraining
) -> torch.Tensor:
    """The client's round on images ``x``, differentiable in ``x``: the flat mean-loss gradient (``gradient``)
    or the change of the weights after ``training.steps`` SGD steps (``change``, Sec. 4's unrolled steps)."""
    start = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
    params = start
    steps = 1 if kind == "gradient" else training.steps
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, params, (x,)), labels)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        if kind == "gradient":
            return torch.cat([g.reshape(-1) for g in grads])
        params = {name: p - training.lr * g for (name, p), g in zip(params.items(), grads)}
    return torch.cat([(params[name] - start[name]).reshape(-1) for name in start])


def output_layer(model: nn.Module, num_classes: int) -> tuple[slice, slice | None]:
    """Where the output layer's weight (num_classes x h) and bias (if any) sit in the flat vector."""
    spans: list[tuple[tuple[int, ...], slice]] = []
    offset = 0
    for p in model.parameters():
        spans.append((tuple(p.shape), slice(offset, offset + p.numel())))
        offset += p.numel()
    shape, last = spans[-1]
    if shape == (num_classes,) and len(spans) > 1 and spans[-2][0][:1] == (num_classes,):
        return spans[-2][1], last
    if len(shape) == 2 and shape[0] == num_classes:
        return last, None
    raise ValueError(f"the model's last parameter {shape} is not an output layer of {num_classes} classes")


def _counts_from_bias(gradient: torch.Tensor, expected_probs: torch.Tensor, batch: int) -> torch.Tensor:
    """Images per label from the bias gradient g_c = mean_i (p_ic - [y_i = c]): n_c = B (p_c - g_c), rounded
    to B in total by largest remainders (the estimate, not its floor at 0, ranks the labels)."""
    estimate = batch * (expected_probs - gradient)
    counts = estimate.clamp_min(0).floor()
    while int(counts.sum()) < batch:
        counts[torch.argmax(estimate - counts)] += 1
    while int(counts.sum()) > batch:
        counts[torch.argmin(torch.where(counts > 0, estimate - counts, math.inf))] -= 1
    return counts.long()


def recover_labels(
    model: nn.Module,
    observation: Observation,
    batch: int,
    num_classes: int,
    training: LocalTraining,
    probe: torch.Tensor,
) -> torch.Tensor:
    """The batch's labels, sorted, from the output layer's entries of the upload (step 1 of the attack).

    The upload's direction is the gradient's (DGC) or against it (a change of weights). One image: iDLG, the
    only negative bias gradient entry, else the row of the output weight with the most negative sum (its
    input is non-negative after a ReLU). A batch: each label's count from the bias gradient's size, with the
    mean predicted probability estimated on ``probe`` images (the attacker's, here dummy ones); from the
    weight rows alone, or from clipped values, the labels with the most negative entries.
    """
    weight, bias = output_layer(model, num_classes)
    sign = 1.0 if observation.kind == "gradient" else -1.0
    values, mask = sign * observation.values, observation.mask
    bias_seen = bias is not None and bool(mask[bias].all())
    if bias_seen:
        assert bias is not None
        score = values[bias]
    else:
        rows = (values[weight] * mask[weight]).reshape(num_classes, -1)
        score = rows.sum(1)
    if batch == 1:
        return torch.argmin(score).reshape(1)
    if bias_seen and observation.clipped_at is None:
        scale = 1.0 if observation.kind == "gradient" else training.lr * training.steps
        with torch.no_grad():
            expected = F.softmax(model(probe), dim=1).mean(0)
        counts = _counts_from_bias(score / scale, expected, batch)
    else:  # present labels first, most negative first, the most negative repeated for the rest
        order = torch.argsort(score)
        present = order[score[order] < 0][:batch]
        if not len(present):
            present = order[:1]
        counts = torch.zeros(num_classes, dtype=torch.long)
        counts[present] = 1
        counts[present[0]] += batch - len(present)
    return torch.repeat_interleave(torch.arange(num_classes), counts)


def invert(
    model: nn.Module,
    observation: Observation,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    training: LocalTraining,
    config: InversionConfig,
    bounds: tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator,
) -> Inversion:
    """Steps 2-4: dummy images fitted to the upload by cosine matching and TV, best of ``config.restarts``.

    ``bounds`` are the lowest and highest value a pixel takes after the data's normalisation, per channel
    (shape (1, C, 1, 1)): the box the images are kept in.
    """
    low, high = bounds
    # Indices rather than a mask: a boolean index's backward writes the whole vector, a slow pass per step.
    index = None if observation.observed is None else torch.nonzero(observation.mask).reshape(-1)
    target = observation.values.detach() if index is None else observation.values.detach()[index]
    model.eval()
    best: torch.Tensor | None = None
    objectives: list[float] = []
    milestones = [round(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    for _ in range(config.restarts):
        x = torch.randn((len(labels), *image_shape), generator=generator).clamp(low, high).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=config.lr)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        for _ in range(config.iterations):
            objective = _objective(model, x, labels, observation.kind, training, target, index, config)
            (grad,) = torch.autograd.grad(objective, x)
            x.grad = grad.sign() if config.signed else grad
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        final = float(_objective(model, x, labels, observation.kind, training, target, index, config).detach())
        objectives.append(final if math.isfinite(final) else math.inf)
        if best is None or objectives[-1] <= min(objectives):
            best = x.detach().clone()
    assert best is not None
    return Inversion(best, labels, tuple(objectives))


def _objective(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    kind: str,
    training: LocalTraining,
    target: torch.Tensor,
    index: torch.Tensor | None,
    config: InversionConfig,
) -> torch.Tensor:
    """Eq. 4: 1 - cos(simulated round, upload) + alpha TV(x), over the entries the upload carried (``index``)."""
    simulated = simulate(model, x, labels, kind, training)
    if index is not None:
        simulated = simulated.index_select(0, index)
    return cosine_distance(simulated, target) + config.tv_weight * total_variation(x)
