"""DSSGD's steps on small hand-worked numbers, the server's counters, and rejected uploads."""

import math

import numpy as np
import pytest
import torch

from flwr_privacy.algorithms.dssgd import (
    DSSGDConfig,
    DSSGDServer,
    Upload,
    clip_selected,
    compute_change,
    download_indices,
    estimate_sensitivity,
    num_upload,
    overwrite_local,
    participant_upload,
    select_largest,
    select_random_above_threshold,
    validate_upload,
)
from flwr_privacy.compression.base import PayloadError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- participant side ---------------------------------------------------------------------------


def test_compute_change():
    before = torch.tensor([1.0, 2.0, 3.0])
    after = torch.tensor([1.5, 2.0, 2.0])
    assert torch.equal(compute_change(before, after), torch.tensor([0.5, 0.0, -1.0]))


def test_compute_change_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        compute_change(torch.zeros(3), torch.zeros(4))


def test_select_largest_picks_largest_magnitudes():
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8, -0.05])
    assert select_largest(delta, 2).tolist() == [1, 3]
    assert select_largest(delta, 3).tolist() == [1, 2, 3]
    assert select_largest(delta, 10).tolist() == [0, 1, 2, 3, 4]


def test_select_random_above_threshold_picks_only_above_tau():
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8, -0.05, 0.25])
    for seed in range(5):
        picked = select_random_above_threshold(delta, 2, 0.2, _gen(seed))
        assert picked.numel() == 2
        assert set(picked.tolist()) <= {1, 2, 3, 5}
        assert picked.tolist() == sorted(picked.tolist())


def test_select_random_above_threshold_returns_fewer_if_fewer_pass():
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8])
    assert select_random_above_threshold(delta, 10, 0.5, _gen()).tolist() == [1, 3]
    assert select_random_above_threshold(delta, 10, 0.9, _gen()).numel() == 0  # strictly above tau


def test_select_random_above_threshold_is_random():
    delta = torch.ones(100)
    a = select_random_above_threshold(delta, 5, 0.0, _gen(1))
    b = select_random_above_threshold(delta, 5, 0.0, _gen(2))
    assert not torch.equal(a, b)


def test_clip_selected():
    assert torch.equal(clip_selected(torch.tensor([-0.3, 0.05, 0.2]), 0.1), torch.tensor([-0.1, 0.05, 0.1]))


@pytest.mark.parametrize(
    ("theta", "n", "c"),
    [(0.1, 100, 10), (0.1, 30, 3), (0.1, 5, 1), (0.001, 10, 1), (1.0, 7, 7), (0.25, 10, 3)],
)
def test_num_upload_is_ceil_and_at_least_one(theta, n, c):
    assert num_upload(theta, n) == c


def test_estimate_sensitivity_is_two_gamma():
    assert estimate_sensitivity(0.01) == 0.02


def test_overwrite_local_replaces_downloaded_entries_only():
    local = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = overwrite_local(local, torch.tensor([0, 2]), torch.tensor([9.0, 8.0]))
    assert out.tolist() == [9.0, 2.0, 8.0, 4.0]
    assert local.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_overwrite_local_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="indices"):
        overwrite_local(torch.zeros(4), torch.tensor([0, 1]), torch.tensor([1.0]))


def test_download_indices_by_counter_rank():
    stats = torch.tensor([3.0, 1.0, 5.0, 0.0, 4.0], dtype=torch.float64)
    assert download_indices(stats, 0.4).tolist() == [2, 4]  # ceil(0.4 * 5) = 2
    assert download_indices(stats, 0.5).tolist() == [0, 2, 4]  # ceil(2.5) = 3


def test_download_indices_ties_go_to_the_lower_index():
    stats = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0], dtype=torch.float64)
    assert download_indices(stats, 0.4).tolist() == [1, 2]
    assert download_indices(torch.zeros(6, dtype=torch.float64), 0.5).tolist() == [0, 1, 2]


def test_download_indices_theta_one_is_everything():
    assert download_indices(torch.tensor([0.0, 5.0, 1.0]), 1.0).tolist() == [0, 1, 2]


def test_participant_upload_largest_without_dp():
    config = DSSGDConfig(theta_u=0.4, gamma=0.5)
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8, -0.05])
    upload = participant_upload(delta, config)
    assert isinstance(upload, Upload)
    assert upload.indices.tolist() == [1, 3]
    assert upload.values.tolist() == [-0.5, 0.5]
    assert upload.epsilon_claimed == upload.epsilon_guaranteed == math.inf


def test_participant_upload_random_threshold_without_dp():
    config = DSSGDConfig(theta_u=0.4, gamma=1.0, tau=0.2, selection="random_threshold")
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8, -0.05])
    upload = participant_upload(delta, config, _gen())
    assert upload.indices.numel() == 2
    assert set(upload.indices.tolist()) <= {1, 2, 3}
    assert torch.equal(upload.values, delta[upload.indices])


@pytest.mark.parametrize("variant", ["proven", "paper"])
def test_participant_upload_with_dp_reports_epsilon_and_clips(variant):
    config = DSSGDConfig(theta_u=0.1, gamma=0.01, tau=0.001, dp=True, epsilon=1.0, svt_variant=variant)
    delta = torch.randn(1000, generator=_gen(1)) * 0.01
    upload = participant_upload(delta, config, _gen(2))
    assert 0 < upload.indices.numel() <= 100
    assert upload.indices.tolist() == sorted(upload.indices.tolist())
    assert upload.values.abs().max().item() <= 0.01
    assert upload.epsilon_claimed == 1.0
    if variant == "proven":
        assert upload.epsilon_guaranteed == pytest.approx(1.0)
    else:
        assert upload.epsilon_guaranteed == pytest.approx(0.5 + 4 / 900)


def test_participant_upload_with_dp_and_huge_epsilon_selects_clipped_values_above_tau():
    config = DSSGDConfig(theta_u=1.0, gamma=0.5, tau=0.2, dp=True, epsilon=1e12)
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8, -0.05], dtype=torch.float64)
    upload = participant_upload(delta, config, _gen())
    assert upload.indices.tolist() == [1, 2, 3]
    assert torch.allclose(upload.values, torch.tensor([-0.5, 0.3, 0.5], dtype=torch.float64), atol=1e-6)


def test_participant_upload_rejects_nan_delta():
    with pytest.raises(ValueError, match="NaN"):
        participant_upload(torch.tensor([0.1, math.nan]), DSSGDConfig())


# --- server side --------------------------------------------------------------------------------


def _server(n: int = 5, gamma: float = 0.5, **kwargs) -> DSSGDServer:
    return DSSGDServer(torch.zeros(n), DSSGDConfig(gamma=gamma, **kwargs))


def test_apply_upload_adds_values_and_counts():
    server = _server()
    server.apply_upload(torch.tensor([1, 3]), torch.tensor([0.5, -0.25]))
    server.apply_upload(np.array([3, 4], dtype=np.uint16), np.array([0.5, 0.1], dtype=np.float16))
    assert server.params.tolist() == pytest.approx([0.0, 0.5, 0.0, 0.25, 0.1], abs=1e-4)
    assert server.stats.tolist() == [0.0, 1.0, 0.0, 2.0, 1.0]


def test_apply_empty_upload_is_a_no_op():
    server = _server()
    server.apply_upload(torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert server.stats.sum().item() == 0


def test_value_at_gamma_after_float16_rounding_is_accepted():
    gamma = 0.001
    value = np.array([gamma], dtype=np.float16)  # rounds up to 0.0010004
    assert float(value[0]) > gamma
    _server(gamma=gamma).apply_upload(np.array([0]), value)


@pytest.mark.parametrize(
    ("indices", "values", "match"),
    [
        (torch.tensor([0, 1]), torch.tensor([0.1]), "2 indices but 1 values"),
        (torch.tensor([0, 1]), torch.tensor([0.1, 0.6]), "outside"),
        (torch.tensor([0, 1]), torch.tensor([0.1, math.nan]), "NaN"),
        (torch.tensor([0, 1]), torch.tensor([0.1, -math.inf]), "NaN or Inf"),
        (torch.tensor([0, 5]), torch.tensor([0.1, 0.1]), "out of range"),
        (torch.tensor([0, -1]), torch.tensor([0.1, 0.1]), "negative"),
        (torch.tensor([2, 2]), torch.tensor([0.1, 0.1]), "duplicate"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.1]), "integers"),
        (torch.tensor([0, 1]), torch.tensor([1, 0]), "floating"),
        (torch.tensor([[0, 1]]), torch.tensor([[0.1, 0.1]]), "1-D"),
    ],
)
def test_rejected_upload_changes_neither_counters_nor_parameters(indices, values, match):
    server = _server()
    server.apply_upload(torch.tensor([0, 1]), torch.tensor([0.2, 0.3]))
    before = server.state_dict()
    with pytest.raises(PayloadError, match=match):
        server.apply_upload(indices, values)
    after = server.state_dict()
    assert np.array_equal(before["params"], after["params"])
    assert np.array_equal(before["stats"], after["stats"])


def test_validate_upload_returns_int64_indices():
    indices, values = np.array([3, 1], dtype=np.uint32), np.array([0.1, 0.2], dtype=np.float32)
    idx, vals = validate_upload(indices, values, 4, 1.0)
    assert idx.dtype == torch.int64 and idx.tolist() == [3, 1]
    assert vals.dtype == torch.float32


def test_decay_counters():
    server = _server()
    server.apply_upload(torch.tensor([0, 1]), torch.tensor([0.1, 0.1]))
    server.apply_upload(torch.tensor([1]), torch.tensor([0.1]))
    server.decay_counters(0.5)
    assert server.stats.tolist() == [0.5, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="beta"):
        server.decay_counters(0.0)


def test_maybe_decay_follows_the_config():
    server = _server(counter_decay=0.5, decay_every=2)
    server.apply_upload(torch.tensor([0]), torch.tensor([0.1]))
    assert server.maybe_decay(1) is False
    assert server.stats[0].item() == 1.0
    assert server.maybe_decay(2) is True
    assert server.stats[0].item() == 0.5
    assert _server().maybe_decay(1) is False  # counter_decay = 1 never decays
    with pytest.raises(ValueError, match="round_idx"):
        server.maybe_decay(0)


def test_serve_download_by_counter_rank():
    server = _server(theta_d=0.4)
    server.apply_upload(torch.tensor([4, 2]), torch.tensor([0.4, 0.2]))
    server.apply_upload(torch.tensor([2]), torch.tensor([0.1]))
    indices, values = server.serve_download()
    assert indices.tolist() == [2, 4]
    assert values.tolist() == pytest.approx([0.3, 0.4])
    indices, values = server.serve_download(theta_d=1.0)
    assert indices.tolist() == [0, 1, 2, 3, 4]


def test_state_dict_round_trip():
    server = _server()
    server.apply_upload(torch.tensor([1]), torch.tensor([0.3]))
    server.decay_counters(0.5)
    restored = _server()
    restored.load_state_dict(server.state_dict())
    assert torch.equal(restored.params, server.params)
    assert torch.equal(restored.stats, server.stats)
    assert isinstance(server.state_dict()["params"], np.ndarray)


def test_load_state_dict_rejects_bad_state():
    server = _server()
    with pytest.raises(ValueError, match="shapes"):
        server.load_state_dict({"params": np.zeros(4), "stats": np.zeros(4)})
    with pytest.raises(ValueError, match="non-negative"):
        server.load_state_dict({"params": np.zeros(5), "stats": -np.ones(5)})


def test_one_synchronous_round_end_to_end():
    config = DSSGDConfig(theta_u=0.5, theta_d=0.5, gamma=1.0)
    server = DSSGDServer(torch.zeros(4), config)
    # Two clients start from the same download and upload in client-id order.
    for delta in (torch.tensor([0.9, 0.0, -0.2, 0.1]), torch.tensor([0.0, 0.3, -0.8, 0.0])):
        upload = participant_upload(delta, config)
        server.apply_upload(upload.indices, upload.values)
    assert server.params.tolist() == pytest.approx([0.9, 0.3, -1.0, 0.0])
    assert server.stats.tolist() == [1.0, 1.0, 2.0, 0.0]
    indices, values = server.serve_download()
    assert indices.tolist() == [0, 2]  # stat 2 first, then the lower index among the ties
    local = overwrite_local(torch.full((4,), 7.0), indices, values)
    assert local.tolist() == pytest.approx([0.9, 7.0, -1.0, 7.0])


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("theta_u", 0.0, "(0, 1]"),
        ("theta_u", 1.5, "(0, 1]"),
        ("theta_u", True, "(0, 1]"),
        ("theta_d", -0.1, "(0, 1]"),
        ("theta_d", math.nan, "(0, 1]"),
        ("gamma", 0.0, "> 0"),
        ("gamma", math.inf, "> 0"),
        ("tau", -1e-4, ">= 0"),
        ("selection", "smallest", "one of"),
        ("dp", 1, "True or False"),
        ("epsilon", 0.0, "> 0"),
        ("svt_variant", "roth", "one of"),
        ("counter_decay", 0.0, "(0, 1]"),
        ("counter_decay", 1.1, "(0, 1]"),
        ("decay_every", 0, "int >= 1"),
        ("decay_every", 1.5, "int >= 1"),
    ],
)
def test_config_errors_name_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError) as info:
        DSSGDConfig(**{key: value})
    message = str(info.value)
    assert f"DSSGDConfig.{key}={value!r}" in message
    assert allowed in message


def test_config_defaults_are_valid():
    config = DSSGDConfig()
    assert (config.theta_u, config.theta_d, config.selection, config.dp, config.svt_variant) == (
        0.1,
        1.0,
        "largest",
        False,
        "proven",
    )
