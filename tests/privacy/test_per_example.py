"""The one-pass clipped sum equals Opacus's: each example's gradient materialised by Opacus's hooks,
clipped to C with Opacus's factor, summed. On the project's networks and on layers with every option the
one-pass code reads (stride, padding, dilation, no bias, a linear layer on a sequence)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flwr_privacy.models import build_model
from flwr_privacy.privacy.per_example import ClippedSum, unsupported_layers


def opacus_clipped_sum(model, x, y, clip, loss_fn):
    from opacus.grad_sample import GradSampleModule

    module = GradSampleModule(model)
    try:
        module.zero_grad(set_to_none=True)
        loss_fn(module(x), y).backward()
        params = [p for p in model.parameters() if p.requires_grad]
        per = [p.grad_sample.reshape(len(y), -1) for p in params]
        norms = torch.cat(per, dim=1).norm(dim=1)
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        return [(factors @ g).reshape(p.shape) for g, p in zip(per, params)]
    finally:
        module._close()


class Sequence(nn.Module):
    """A linear layer applied to each of 5 positions of an example, then pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x.reshape(len(x), 5, 4))).mean(1))


def conv_options():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(4, 5, 3, dilation=2, bias=False), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3),
    )


CASES = {
    "2nn": (lambda: build_model("mlp", (1, 28, 28), 10, seed=0), (1, 28, 28), 10),
    "fedavg-cnn": (lambda: build_model("cnn", (1, 28, 28), 10, seed=0), (1, 28, 28), 10),
    "conv-options": (conv_options, (1, 12, 12), 3),
    "sequence": (Sequence, (20,), 3),
}


@pytest.mark.parametrize("clip", [1e-3, 1.0, 1e6], ids=["all-clipped", "some", "none-clipped"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_one_pass_clipped_sum_is_opacuss(case, clip):
    build, shape, classes = CASES[case]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(16, *shape), torch.randint(0, classes, (16,))
    model(x)  # a LazyLinear takes its shape
    loss_fn = nn.functional.cross_entropy
    ours, _ = ClippedSum(model, clip)(x, y, loss_fn)
    theirs = opacus_clipped_sum(model, x, y, clip, loss_fn)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * clip)
    if clip == 1e-3:  # each example's clipped gradient has norm C: the sum's norm is at most 16 C
        assert torch.cat([a.reshape(-1) for a in ours]).norm() <= 16 * clip * (1 + 1e-4)


def test_an_empty_lot_sums_to_zero_and_a_model_it_cannot_take_is_named():
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    sums, loss = ClippedSum(model, 1.0)(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    assert loss == 0.0 and all(not s.any() for s in sums)
    norm = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.GroupNorm(2, 4))
    assert unsupported_layers(norm) == ["2 (GroupNorm)"]
    with pytest.raises(ValueError, match=r"cannot take 2 \(GroupNorm\)"):
        ClippedSum(norm, 1.0)


def test_a_layer_used_twice_in_one_pass_is_refused():
    layer = nn.Linear(3, 3)
    twice = nn.Sequential(layer, nn.ReLU(), layer)
    with pytest.raises(ValueError, match="exactly once"):
        ClippedSum(twice, 1.0)(torch.randn(4, 3), torch.randint(0, 3, (4,)))
