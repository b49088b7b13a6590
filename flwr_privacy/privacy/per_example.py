"""DP-SGD's clipped sum, sum_i clip_C(g_i) over a lot, in one forward and one backward pass.

Opacus's hooks materialise every example's gradient of every layer (B copies of the model) and then
clip them; its ghost clipping runs the backward pass twice. Neither is needed for the layers that hold
the parameters of the networks DP-SGD trains here (``nn.Linear``, ``nn.Conv2d``):

- each layer's output gradient is taken with ``torch.autograd.grad`` (row i: example i's, since the
  loss is a mean over the lot, times its size), which skips the weight gradients plain training pays for;
- per-example gradient norms: for a linear layer on one vector per example, ||g_i a_i^T||^2 =
  ||g_i||^2 ||a_i||^2 (Goodfellow 2015, "Efficient per-example gradient computations"); for a
  convolution, each example's gradient (a (out x in k^2) matrix per example) as the weight gradient of
  one grouped convolution, a group per example (Rochette et al. 2019);
- the clipped sum is then one weighted product per layer, sum_i c_i g_i a_i^T = (c * G)^T A, with
  c_i = min(1, C / ||g_i||) over all layers together: the "book-keeping" of Bu et al. 2023
  ("Differentially private optimization on large model at small cost").

The result is the clipped sum Opacus computes (the clip factor is Opacus's, C / (||g_i|| + 1e-6) capped
at 1), to float rounding; ``unsupported_layers`` names what this cannot take, for which the caller keeps
Opacus's per-example hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """c_i = min(1, C / (||g_i|| + 1e-6)), each example's clip factor (Opacus's, 1e-6 included)."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module that holds a trainable parameter of its own."""
    return [
        (name, module) for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def unsupported_layers(model: nn.Module) -> list[str]:
    """The layers holding trainable parameters that ``ClippedSum`` cannot take ("name (Type)")."""
    return [f"{name or 'model'} ({type(module).__name__})" for name, module in _layers(model) if not _supported(module)]


class ClippedSum:
    """sum_i clip_C(g_i) over a lot for each trainable parameter of ``model`` (every one in a supported
    layer: ``unsupported_layers(model)`` must be empty)."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        refused = unsupported_layers(model)
        if refused:
            raise ValueError(f"per-example clipping in one pass cannot take {', '.join(refused)}")
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.layers = [module for _, module in _layers(model)]
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None) -> tuple[
        list[torch.Tensor], float
    ]:
        """The clipped sums, one tensor per trainable parameter (in ``model.parameters()`` order), and the
        lot's loss. A lot of no example sums to zeros."""
        if len(y) == 0:
            return [torch.zeros_like(p) for p in self.params], 0.0
        seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.append((module, inputs[0].detach(), output))

        handles = [layer.register_forward_hook(record) for layer in self.layers]
        try:
            outputs = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        if len({id(m) for m, _, _ in seen}) != len(seen) or len(seen) != len(self.layers):
            raise ValueError("per-example clipping in one pass needs each layer used exactly once per forward pass")
        loss = (loss_fn or F.cross_entropy)(outputs, y)
        backprops = torch.autograd.grad(loss * len(y), [out for _, _, out in seen])
        pieces = [_per_example(module, a, g) for (module, a, _), g in zip(seen, backprops)]
        squared = torch.stack([sq for piece in pieces for sq in piece.squared_norms]).sum(0)
        factors = clip_factors(squared.sqrt(), self.max_grad_norm)
        sums = {id(p): s for piece in pieces for p, s in piece.clipped_sums(factors)}
        return [sums[id(p)] for p in self.params], float(loss.detach())


class _LayerPiece:
    """One layer's per-example gradient norms (squared) and, given the clip factors, its clipped sums."""

    def __init__(self, squared_norms: list[torch.Tensor], sums: Callable[[torch.Tensor], list[tuple[
        nn.Parameter, torch.Tensor
    ]]]) -> None:
        self.squared_norms = squared_norms
        self.clipped_sums = sums


def _per_example(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> _LayerPiece:
    trainable = {name: p for name, p in module.named_parameters(recurse=False) if p.requires_grad}
    weight, bias = trainable.get("weight"), trainable.get("bias")
    if isinstance(module, nn.Linear) and a.dim() == 2:
        squared, g_squared = [], g.pow(2).sum(1)
        if weight is not None:
            squared.append(g_squared * a.pow(2).sum(1))
        if bias is not None:
            squared.append(g_squared)

        def linear_sums(c: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
            weighted = g * c.unsqueeze(1)
            out = []
            if weight is not None:
                out.append((weight, weighted.t() @ a))
            if bias is not None:
                out.append((bias, weighted.sum(0)))
            return out

        return _LayerPiece(squared, linear_sums)
    # a convolution, or a linear layer on a sequence per example: each example's gradient, materialised
    batch = len(a)
    per_weight: torch.Tensor | None = None
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        assert not isinstance(padding, str)  # _supported refused "same" and "valid"
        grads_out = g.reshape(batch, g.shape[1], -1)  # (B, out, T)
        if weight is not None:
            # Each example's weight gradient as the weight gradient of one convolution with B groups (example
            # b's input channels to its output channels; Rochette et al. 2019): the convolution's own backward
            # kernel, 3x faster here than unfolding the input and a batched product.
            out_channels, in_channels = weight.shape[:2]
            per_weight = conv2d_weight(
                a.reshape(1, batch * in_channels, *a.shape[2:]),
                (batch * out_channels, in_channels, *weight.shape[2:]),
                g.reshape(1, batch * out_channels, *g.shape[2:]),
                module.stride, padding, module.dilation, groups=batch,
            ).reshape(batch, out_channels, -1)  # (B, out, in k^2)
    else:
        columns = a.reshape(batch, -1, a.shape[-1]).transpose(1, 2)  # (B, in, T)
        grads_out = g.reshape(batch, -1, g.shape[-1]).transpose(1, 2)  # (B, out, T)
        per_weight = torch.bmm(grads_out, columns.transpose(1, 2)) if weight is not None else None
    per_bias = grads_out.sum(2) if bias is not None else None
    squared = [t.reshape(batch, -1).pow(2).sum(1) for t in (per_weight, per_bias) if t is not None]

    def materialised_sums(c: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        out = []
        if weight is not None and per_weight is not None:
            out.append((weight, torch.einsum("b,boi->oi", c, per_weight).reshape(weight.shape)))
        if bias is not None and per_bias is not None:
            out.append((bias, c @ per_bias))
        return out

    return _LayerPiece(squared, materialised_sums)
