"""Clipping by value (DSSGD's gamma) and by L2 norm."""

import math

import pytest
import torch

from flwr_privacy.privacy.clipping import clip_by_l2_norm, clip_by_value


def test_clip_by_value_bounds_every_entry():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    assert torch.equal(clip_by_value(x, 1.0), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


def test_clip_by_value_does_not_modify_its_input():
    x = torch.tensor([5.0])
    clip_by_value(x, 1.0)
    assert x.item() == 5.0


@pytest.mark.parametrize("bound", [0.0, -1.0, math.nan])
def test_clip_by_value_rejects_bad_bound(bound):
    with pytest.raises(ValueError, match="clipping bound"):
        clip_by_value(torch.zeros(2), bound)


def test_clip_by_l2_norm_scales_down_to_max_norm():
    out = clip_by_l2_norm(torch.tensor([3.0, 4.0]), 1.0)
    assert torch.allclose(out, torch.tensor([0.6, 0.8]))
    assert torch.linalg.vector_norm(out).item() == pytest.approx(1.0)


def test_clip_by_l2_norm_leaves_a_short_vector_alone():
    x = torch.tensor([0.3, 0.4])
    assert torch.equal(clip_by_l2_norm(x, 1.0), x)
    assert torch.equal(clip_by_l2_norm(x, 0.5), x)


def test_clip_by_l2_norm_works_on_any_shape():
    x = torch.ones(2, 2) * 2.0  # norm 4
    assert torch.allclose(clip_by_l2_norm(x, 2.0), torch.ones(2, 2))


@pytest.mark.parametrize("max_norm", [0.0, -2.0, math.nan])
def test_clip_by_l2_norm_rejects_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="max L2 norm"):
        clip_by_l2_norm(torch.ones(2), max_norm)
