"""How close a reconstruction came: PSNR and SSIM against the private images, label accuracy.

PSNR and SSIM are torchmetrics' (``pip install 'flwr-privacy[experiments]'``), on images in [0, 1]. A batch's
reconstructions come in no particular order, so each private image is paired with one reconstruction, the
pairing that maximises the total PSNR (Hungarian assignment, scipy's), as Geiping et al. score theirs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Scores:
    """Per private image: PSNR (dB) and SSIM of its matched reconstruction; ``order[i]`` is that
    reconstruction's index; ``label_accuracy`` is the share of the batch's labels recovered (as a multiset)."""

    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    order: tuple[int, ...]
    label_accuracy: float


def to_unit_range(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised images (N, C, H, W) back to pixel values in [0, 1]."""
    return (x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1], in dB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a.unsqueeze(0), b.unsqueeze(0), data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity of two images in [0, 1] (Wang et al. 2004; Gaussian window of 11 pixels)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    value = structural_similarity_index_measure(a.unsqueeze(0), b.unsqueeze(0), data_range=1.0)
    assert isinstance(value, torch.Tensor)  # a tuple only with return_full_image
    return float(value)


def label_accuracy(recovered: torch.Tensor, true: torch.Tensor) -> float:
    """The share of the batch's labels recovered, counted as multisets (order carries nothing)."""
    found = Counter(recovered.tolist()) & Counter(true.tolist())
    return sum(found.values()) / len(true)


def score(
    reconstructions: torch.Tensor, originals: torch.Tensor, recovered: torch.Tensor, labels: torch.Tensor
) -> Scores:
    """Pair each original with a reconstruction by the highest total PSNR, then score the pairs; images in [0, 1]."""
    from scipy.optimize import linear_sum_assignment

    table = np.array([[psnr(r, o) for r in reconstructions] for o in originals])
    rows, columns = linear_sum_assignment(table, maximize=True)
    order = [int(c) for _, c in sorted(zip(rows, columns))]
    return Scores(
        tuple(float(table[i, j]) for i, j in enumerate(order)),
        tuple(ssim(reconstructions[j], originals[i]) for i, j in enumerate(order)),
        tuple(order),
        label_accuracy(recovered, labels),
    )
