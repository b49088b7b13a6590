"""The algorithms' contracts at their edges: each refusal names what is wrong (what a user or a log
reader sees), each boundary sits where the papers put it, and randomness comes from where it is said to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_privacy.algorithms.dgc import (
    DGCConfig,
    DGCMemory,
    DGCServer,
    average_sparse,
    dense_tensors,
    kept_count,
    local_round,
)
from flwr_privacy.algorithms.dssgd import (
    GAMMA_TOLERANCE,
    DSSGDConfig,
    DSSGDServer,
    compute_change,
    download_indices,
    num_upload,
    overwrite_local,
    participant_upload,
    select_largest,
    select_random_above_threshold,
    validate_upload,
)
from flwr_privacy.algorithms.fedavg import weighted_average
from flwr_privacy.compression.base import PayloadError

ONE = [np.ones(3, dtype=np.float32)]
SPARSE = (torch.tensor([0]), torch.tensor([1.0]))
SGD_MEMORY = DGCMemory(DGCConfig(local_update="local_sgd"), [3])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: weighted_average([], []), "^no updates to average$"),
        (lambda: weighted_average([ONE], [1, 2]), "^1 updates but 2 example counts$"),
        (lambda: weighted_average([ONE], [0]), r"^example counts must be positive, got \[0\]$"),
        (lambda: average_sparse([], [], 3), "^no updates to average$"),
        (lambda: average_sparse([SPARSE], [1.0, 2.0], 3), "^1 updates but 2 weights$"),
        (lambda: num_upload(0.1, 0), "^number of parameters must be an int >= 1, got 0$"),
        (lambda: num_upload(0.0, 10), r"^fraction must be in \(0, 1\], got 0.0$"),
        (lambda: num_upload(1.5, 10), r"^fraction must be in \(0, 1\], got 1.5$"),
        (lambda: download_indices(torch.zeros(2, 2), 1.0), "^stats must be a 1-D floating-point tensor$"),
        (lambda: overwrite_local(torch.zeros(2, 2), SPARSE[0], SPARSE[1]), "^local parameters must be a 1-D"),
        (lambda: participant_upload(torch.zeros(2, 2), DSSGDConfig()), "^delta must be a 1-D"),
        (lambda: participant_upload(torch.tensor([float("nan")]), DSSGDConfig()),
         "^delta contains NaN or Inf: local training diverged$"),
        (lambda: select_largest(torch.zeros(2, 2), 1), "^delta must be a 1-D floating-point tensor$"),
        (lambda: compute_change(torch.zeros(2, 2), torch.zeros(4)), "^before must be a 1-D floating-point tensor$"),
        (lambda: compute_change(torch.zeros(4), torch.zeros(2, 2)), "^after must be a 1-D floating-point tensor$"),
        (lambda: DSSGDServer(torch.zeros(2, 2), DSSGDConfig()), "^params must be a 1-D floating-point tensor$"),
        (lambda: DSSGDServer(torch.tensor([0.0, float("inf")]), DSSGDConfig()), "^initial params must be finite$"),
        (lambda: num_upload(0.5, True), "^number of parameters must be an int >= 1, got True$"),
        (lambda: select_random_above_threshold(torch.zeros(2, 2), 1, 0.0), "^delta must be a 1-D floating-point"),
        (lambda: DSSGDServer(torch.zeros(3), DSSGDConfig()).decay_counters(1.5),
         r"^decay factor beta must be in \(0, 1\], got 1.5$"),
        (lambda: local_round(DGCMemory(DGCConfig(), [3]), torch.zeros_like, torch.zeros(3), 0, 0.1),
         "^steps=0 must be >= 1$"),
        (lambda: DGCConfig().lr_at(0, 0.1), "^server_round=0 is invalid: must be >= 1$"),
        (lambda: DGCServer(torch.zeros(5), [(2, 2)], DGCConfig(), 0.1), "^shapes cover 4 entries, the weights have 5$"),
        (lambda: DGCServer(torch.zeros(4), [(2, 2)], DGCConfig(), 0.0), "^lr=0.0 must be > 0$"),
        (lambda: DSSGDServer(torch.zeros(3), DSSGDConfig()).maybe_decay(True),
         r"^round_idx must be an int >= 1 \(Flower counts from 1\), got True$"),
        (lambda: local_round(SGD_MEMORY, torch.zeros_like, torch.zeros(3), 1, 0.0),
         "^lr=0.0 must be > 0 for local SGD$"),
    ],
)
def test_each_refusal_names_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "indices, values, message",
    [
        (np.array([[0]]), np.array([0.0], np.float32), r"^indices must be 1-D, got shape \(1, 1\)$"),
        (np.array([0]), np.array([[0.0]], np.float32), r"^values must be 1-D, got shape \(1, 1\)$"),
        (np.array([0.0]), np.array([0.0], np.float32), "^indices must be integers, got dtype float64$"),
        (np.array([1, 1]), np.array([0.0, 0.0], np.float32), "^duplicate indices$"),
        (np.array([1]), np.array([np.inf], np.float32), "^values contain NaN or Inf$"),
        (np.array([1]), np.array([0.5], np.float32), "^value of magnitude 0.5 outside"),
    ],
)
def test_a_bad_upload_is_refused_with_its_reason(indices, values, message):
    with pytest.raises(PayloadError, match=message):
        validate_upload(indices, values, 10, gamma=0.1)


def test_unsigned_indices_are_integers_too_and_gamma_is_inclusive():
    at_bound = np.float32(0.1 * (1 + GAMMA_TOLERANCE))
    idx, vals = validate_upload(np.array([3], np.uint32), np.array([at_bound], np.float32), 10, gamma=0.1)
    assert idx.tolist() == [3] and vals.tolist() == [at_bound]


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("theta_u", 0.0, r"a number in \(0, 1\]"),
        ("counter_decay", 1.5, r"a number in \(0, 1\]"),
        ("gamma", 0.0, "a finite number > 0"),
        ("tau", -1e-9, "a finite number >= 0"),
        ("tau", float("inf"), "a finite number >= 0"),
        ("dp", 1, "True or False"),
        ("insecure_seeded_noise", "yes", "True or False"),
    ],
)
def test_a_bad_dssgd_setting_names_the_key_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^DSSGDConfig\.{field}=.* is invalid: must be {allowed}$"):
        DSSGDConfig(**{field: value})


def test_boundaries_sit_where_the_paper_puts_them():
    assert DSSGDConfig(tau=0.0).tau == 0.0  # "above a threshold" of 0: any change
    assert num_upload(1.0, 1) == 1  # one parameter, all of it
    assert num_upload(0.1, 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point: not 4
    assert num_upload(0.1, 31) == 4  # ceil otherwise


def test_the_most_updated_download_breaks_ties_by_index():
    stats = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0, 1.0])
    assert download_indices(stats, 0.5).tolist() == [1, 2, 4]
    ties = torch.zeros(10_000)
    assert download_indices(ties, 0.001).tolist() == list(range(10))


def test_random_selection_follows_the_generator_it_is_given():
    delta = torch.linspace(-1, 1, 1000)
    first = select_random_above_threshold(delta, 10, 0.5, torch.Generator().manual_seed(1))
    again = select_random_above_threshold(delta, 10, 0.5, torch.Generator().manual_seed(1))
    other = select_random_above_threshold(delta, 10, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (delta[first].abs() > 0.5).all()
    config = DSSGDConfig(selection="random_threshold", tau=0.5, theta_u=0.01)
    uploads = [participant_upload(delta, config, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(uploads[0].indices, uploads[1].indices)
    assert not torch.equal(uploads[0].indices, uploads[2].indices)


def test_private_uploads_draw_secret_noise_unless_seeded_noise_is_asked_for():
    delta = torch.linspace(-1e-3, 1e-3, 2000)
    secure = DSSGDConfig(dp=True, theta_u=0.01, epsilon=1e4)
    a, b = (participant_upload(delta, secure, torch.Generator().manual_seed(5)) for _ in range(2))
    assert not (torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values))
    seeded = DSSGDConfig(dp=True, theta_u=0.01, epsilon=1e4, insecure_seeded_noise=True)
    c, d = (participant_upload(delta, seeded, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(c.indices, d.indices) and torch.equal(c.values, d.values)


def test_overwrite_local_keeps_the_local_dtype():
    local = torch.zeros(4, dtype=torch.float64)
    updated = overwrite_local(local, torch.tensor([1, 3]), torch.tensor([0.5, -0.25], dtype=torch.float32))
    assert updated.dtype == torch.float64 and updated.tolist() == [0.0, 0.5, 0.0, -0.25]
    assert local.tolist() == [0.0] * 4  # a new tensor: the caller's copy untouched


def test_a_random_selection_of_none_selects_none():
    delta = torch.linspace(-1, 1, 100)
    assert select_random_above_threshold(delta, 0, 0.5, torch.Generator().manual_seed(0)).tolist() == []


def test_counters_may_be_kept_undecayed_and_the_state_is_checked_part_by_part():
    server = DSSGDServer(torch.zeros(3), DSSGDConfig())
    server.apply_upload(torch.tensor([1]), torch.tensor([0.001]))
    server.decay_counters(1.0)  # beta = 1: no decay, allowed
    assert server.stats.tolist() == [0.0, 1.0, 0.0]
    good = server.state_dict()
    for bad, message in [
        ({**good, "stats": np.zeros(4)}, r"^state shapes params \(3,\), stats \(4,\) do not match \(3,\)$"),
        ({**good, "params": np.array([0.0, np.nan, 0.0])}, "^state must be finite with non-negative counters$"),
        ({**good, "stats": np.array([0.0, np.inf, 0.0])}, "^state must be finite with non-negative counters$"),
    ]:
        with pytest.raises(ValueError, match=message):
            server.load_state_dict(bad)
    assert server.stats.tolist() == [0.0, 1.0, 0.0]  # a refused state leaves the server as it was


def test_dgc_sampled_selection_draws_from_the_clients_generator_only():
    """The sampled threshold (the default) takes its sample from the generator it is given, so a client's
    selection is reproducible from its own seed; exact top-k draws nothing."""
    for selection, draws in (("sampled", True), ("topk", False)):
        memory = DGCMemory(DGCConfig(selection=selection), [20_000])
        memory.accumulate(torch.linspace(-1, 1, 20_000))
        generator = torch.Generator().manual_seed(3)
        before, global_before = generator.get_state(), torch.get_rng_state()
        indices, _ = memory.compress_and_mask(0.999, generator)
        assert indices.numel() == 20
        assert torch.equal(torch.get_rng_state(), global_before)
        assert torch.equal(generator.get_state(), before) is not draws, selection


def test_tensors_sent_whole_keep_no_client_momentum():
    """Their momentum is the server's (the reference code's convention): u stays 0 there, so the client's
    saved state holds nothing for them."""
    memory = DGCMemory(DGCConfig(dense_below=5, momentum=0.9), [30, 3])
    for _ in range(3):
        memory.accumulate(torch.ones(33))
    u = memory.state_dict()["u"]
    assert (u[30:] == 0).all() and (u[:30] > 0).all()


def test_dgc_sizes_at_their_boundaries():
    assert kept_count(10, 0.75) == 3  # ceil(2.5), not Python's round-half-even 2
    assert kept_count(1000, 0.999) == 1  # (1 - 0.999) * 1000 is 1.0000000000000009: still 1
    # dense_below: tensors with fewer entries travel whole; one with exactly that many is compressed
    assert dense_tensors([(2, 5), (3, 3), (7,)], DGCConfig(dense_below=10)) == [False, True, True]


def test_a_server_step_without_a_round_is_round_one():
    """During the learning-rate warm-up round 1 steps at lr / warm-up rounds."""
    config = DGCConfig(lr_warmup_rounds=4)
    server = DGCServer(torch.zeros(4), [(2, 2)], config, lr=1.0)
    assert torch.allclose(server.step(torch.ones(4)), torch.full((4,), -0.25))


def test_the_server_keeps_float32_parameters_and_float64_counters_through_a_restore():
    server = DSSGDServer(torch.zeros(3), DSSGDConfig())
    assert server.stats.dtype == torch.float64  # counters are sums of many small decays: float64
    server.load_state_dict({"params": np.ones(3, dtype=np.float64), "stats": np.ones(3, dtype=np.float32)})
    assert server.params.dtype == torch.float32 and server.stats.dtype == torch.float64
    assert download_indices(torch.zeros(30), 0.1).numel() == 3  # 0.1 * 30 in floating point is not 4
