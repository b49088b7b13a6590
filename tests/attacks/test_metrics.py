"""Scoring a reconstruction: PSNR and SSIM (torchmetrics'), the pairing of a batch, label accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from flwr_privacy.attacks.metrics import label_accuracy, psnr, score, ssim, to_unit_range


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def test_psnr_is_10_log10_of_one_over_the_mean_squared_error():
    a = torch.zeros(1, 4, 4)
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, a) == math.inf


def test_ssim_is_one_for_equal_images_and_lower_for_noise():
    a = images(2)
    assert ssim(a[0], a[0]) == pytest.approx(1.0)
    assert ssim(a[0], a[1]) < 0.1


def test_a_shuffled_batch_is_paired_back_with_its_originals():
    originals = images(4)
    order = [2, 0, 3, 1]
    reconstructions = (originals + 0.01 * images(4, seed=1))[order]
    scores = score(reconstructions, originals, torch.tensor([1, 2, 3, 3]), torch.tensor([3, 1, 2, 7]))
    assert [order[j] for j in scores.order] == [0, 1, 2, 3]
    assert min(scores.psnr) > 35 and min(scores.ssim) > 0.9
    assert scores.label_accuracy == 0.75


def test_labels_count_as_multisets():
    assert label_accuracy(torch.tensor([3, 3, 1]), torch.tensor([1, 3, 3])) == 1.0
    assert label_accuracy(torch.tensor([3, 3, 3]), torch.tensor([1, 3, 2])) == pytest.approx(1 / 3)


def test_normalised_images_go_back_to_unit_range():
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    x = torch.tensor([-2.0, 0.0, 2.0, 9.0]).view(1, 1, 2, 2)
    assert to_unit_range(x, mean, std).flatten().tolist() == [0.0, 0.5, 1.0, 1.0]
