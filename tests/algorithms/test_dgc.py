"""DGC's client memory, worked by hand on tiny tensors, plus its config, schedule, state and server step."""

from __future__ import annotations

import dataclasses

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

# Pieces under test one at a time: exact top-k, nothing else switched on unless a test says so.
PLAIN = dict(selection="topk", momentum=0.0, momentum_correction=False, momentum_masking=False)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _sent(memory: DGCMemory, sparsity: float) -> dict[int, float]:
    indices, values = memory.compress_and_mask(sparsity)
    return dict(zip(indices.tolist(), values.tolist()))


# --- momentum correction, masking, accumulation -------------------------------------------------


def test_momentum_correction_with_masking_by_hand() -> None:
    memory = DGCMemory(DGCConfig(momentum=0.5, selection="topk"), segments=[4])
    # Round 1: u = g = [1, 2, 3, 4]; v = u. Half of 4 entries: send {2: 3, 3: 4}, clear them in u and v.
    memory.accumulate(_t(1, 2, 3, 4))
    assert _sent(memory, 0.5) == {2: 3.0, 3: 4.0}
    assert memory.u.tolist() == [1, 2, 0, 0] and memory.v.tolist() == [1, 2, 0, 0]

    # Round 2: u = 0.5 [1, 2, 0, 0] + 1 = [1.5, 2, 1, 1]; v = [1, 2, 0, 0] + u = [2.5, 4, 1, 1].
    memory.accumulate(_t(1, 1, 1, 1))
    assert memory.u.tolist() == [1.5, 2, 1, 1] and memory.v.tolist() == [2.5, 4, 1, 1]
    assert _sent(memory, 0.5) == {0: 2.5, 1: 4.0}
    assert memory.u.tolist() == [0, 0, 1, 1] and memory.v.tolist() == [0, 0, 1, 1]

    # Round 3: u = 0.5 [0, 0, 1, 1] + [0, 0, 0, -4] = [0, 0, 0.5, -3.5]; v = [0, 0, 1.5, -2.5].
    memory.accumulate(_t(0, 0, 0, -4))
    assert _sent(memory, 0.5) == {2: 1.5, 3: -2.5}


def test_without_masking_stale_momentum_keeps_pushing_sent_entries() -> None:
    config = DGCConfig(momentum=0.5, selection="topk", momentum_masking=False)
    memory = DGCMemory(config, segments=[4])
    memory.accumulate(_t(1, 2, 3, 4))
    assert _sent(memory, 0.5) == {2: 3.0, 3: 4.0}
    # v is still cleared where sent, u is not: u = 0.5 [1, 2, 3, 4] + 1 = [1.5, 2, 2.5, 3]; v = [1, 2, 0, 0] + u.
    assert memory.u.tolist() == [1, 2, 3, 4] and memory.v.tolist() == [1, 2, 0, 0]
    memory.accumulate(_t(1, 1, 1, 1))
    assert _sent(memory, 0.5) == {1: 4.0, 3: 3.0}


def test_momentum_correction_over_two_mini_batches_in_a_round() -> None:
    memory = DGCMemory(DGCConfig(momentum=0.5, selection="topk"), segments=[2])
    memory.accumulate(_t(1, 0))  # u = [1, 0], v = [1, 0]
    memory.accumulate(_t(1, 0))  # u = [1.5, 0], v = [2.5, 0]
    assert memory.u.tolist() == [1.5, 0] and memory.v.tolist() == [2.5, 0]


def test_local_accumulation_carries_the_unsent_residual() -> None:
    memory = DGCMemory(DGCConfig(**PLAIN), segments=[3])
    memory.accumulate(_t(1, 5, 2))
    assert _sent(memory, 0.5) == {1: 5.0, 2: 2.0}
    memory.accumulate(_t(1, 1, 0.5))
    # v = [1, 0, 0] + [1, 1, 0.5]: the unsent 1 from round 1 makes entry 0 the largest now.
    assert _sent(memory, 0.5) == {0: 2.0, 1: 1.0}


def test_without_local_accumulation_nothing_is_carried() -> None:
    memory = DGCMemory(DGCConfig(local_accumulation=False, **PLAIN), segments=[3])
    memory.accumulate(_t(1, 5, 2))
    memory.compress_and_mask(0.5)
    assert memory.v.tolist() == [0, 0, 0]


def test_ablation_without_momentum_correction_accumulates_the_raw_gradient() -> None:
    config = DGCConfig(momentum=0.9, momentum_correction=False, momentum_masking=False, selection="topk")
    memory = DGCMemory(config, segments=[2])
    memory.accumulate(_t(1, 2))
    memory.accumulate(_t(1, 2))
    assert memory.v.tolist() == [2, 4] and memory.u.tolist() == [0, 0]
    # The momentum is then the server's, on every entry (Eq. 5).
    server = DGCServer(torch.zeros(2), [(2, 1)], config, lr=1.0)
    assert [-float(server.step(_t(1, 0))[0]) for _ in range(2)] == pytest.approx([1, 2.9])


# --- clipping and weight decay -------------------------------------------------------------------


def test_local_clipping_bounds_each_mean_gradient_by_sqrt_workers() -> None:
    # clip_norm 2 with N = 4 workers clips each worker's mean gradient to 2 * sqrt(4) = 4: [6, 8] -> [2.4, 3.2].
    memory = DGCMemory(DGCConfig(clip_norm=2.0, num_workers=4, **PLAIN), segments=[2])
    memory.accumulate(_t(6, 8))
    torch.testing.assert_close(memory.v, _t(2.4, 3.2))


def test_local_clipping_keeps_the_averaged_update_near_the_clip_norm() -> None:
    """The paper's aim (sec. 3.2): with N i.i.d. workers, the aggregate's norm is about clip_norm."""
    workers, numel = 16, 10_000
    grads = torch.randn(workers, numel, generator=torch.Generator().manual_seed(0)) * 100
    sent = []
    for grad in grads:
        memory = DGCMemory(DGCConfig(clip_norm=1.0, num_workers=workers, **PLAIN), segments=[numel])
        memory.accumulate(grad)
        sent.append(memory.v)
    assert float(torch.stack(sent).mean(0).norm()) == pytest.approx(1.0, rel=0.05)


def test_gradient_within_the_clip_norm_is_unchanged() -> None:
    memory = DGCMemory(DGCConfig(clip_norm=10.0, **PLAIN), segments=[2])
    memory.accumulate(_t(3, 4))
    assert memory.v.tolist() == [3, 4]


def test_weight_decay_is_the_servers_dense_and_not_on_one_dimensional_tensors() -> None:
    config = DGCConfig(weight_decay=0.1, **PLAIN)
    memory = DGCMemory(config, segments=[2])
    memory.accumulate(_t(3, 4))
    assert memory.v.tolist() == [3, 4]  # nothing of the weights gets into what is sparsified
    # A 2x1 weight and a bias of 1: the weight decays every round even with no update, the bias does not.
    server = DGCServer(_t(10, -20, 5), [(2, 1), (1,)], config, lr=0.5)
    torch.testing.assert_close(server.step(torch.zeros(3)), _t(9.5, -19, 5))
    torch.testing.assert_close(server.step(torch.zeros(3)), _t(9.025, -18.05, 5))


# --- selection per tensor ------------------------------------------------------------------------


def test_selection_is_per_tensor_with_global_indices() -> None:
    # A global top-2 would take both entries of the first tensor; per tensor each sends its own largest.
    memory = DGCMemory(DGCConfig(**PLAIN), segments=[2, 2])
    memory.accumulate(_t(10, 20, 1, -2))
    assert _sent(memory, 0.5) == {1: 20.0, 3: -2.0}


def test_small_tensors_below_dense_below_are_sent_whole() -> None:
    memory = DGCMemory(DGCConfig(dense_below=16, **PLAIN), segments=[1000, 10])
    memory.accumulate(torch.randn(1010, generator=torch.Generator().manual_seed(0)))
    indices, _ = memory.compress(0.99)
    assert len(indices) == 10 + 10 == memory.num_selected(0.99)
    assert set(range(1000, 1010)) <= set(indices.tolist())
    assert all(i < 1000 for i in indices.tolist()[:10])


def test_sampled_selection_sends_the_same_entries_as_topk() -> None:
    grad = torch.randn(30_000, generator=torch.Generator().manual_seed(3))
    sent = []
    for selection in ("topk", "sampled"):
        memory = DGCMemory(DGCConfig(**{**PLAIN, "selection": selection}), segments=[20_000, 10_000])
        memory.accumulate(grad)
        indices, _ = memory.compress(0.99, torch.Generator().manual_seed(0))
        sent.append(set(indices.tolist()))
    assert sent[0] == sent[1] and len(sent[0]) == 200 + 100


@pytest.mark.parametrize(
    ("numel", "sparsity", "expected"),
    [(1000, 0.999, 1), (11_000_000, 0.999, 11_000), (10, 0.999, 1), (5, 0.0, 5), (7, 0.75, 2)],
)
def test_kept_count_is_ceil_of_density_times_numel_at_least_one(numel: int, sparsity: float, expected: int) -> None:
    assert kept_count(numel, sparsity) == expected


def test_compress_rejects_sparsity_outside_range() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        DGCMemory(DGCConfig(), segments=[4]).compress(1.0)


def test_accumulate_rejects_a_gradient_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"grad: expected a flat tensor of shape \(4,\)"):
        DGCMemory(DGCConfig(), segments=[4]).accumulate(torch.zeros(5))


# --- warm-up schedule and config -----------------------------------------------------------------


def test_warmup_follows_the_papers_schedule_then_final() -> None:
    config = DGCConfig()
    assert [config.sparsity_at(e) for e in range(7)] == [0.75, 0.9375, 0.984375, 0.996, 0.999, 0.999, 0.999]


def test_warmup_stages_last_several_epochs_then_final_sparsity() -> None:
    config = DGCConfig(warmup_sparsities=[0.5, 0.9], warmup_rounds_per_stage=2, final_sparsity=0.99)
    assert [config.sparsity_at(e) for e in range(6)] == [0.5, 0.5, 0.9, 0.9, 0.99, 0.99]
    assert config.warmup_sparsities == (0.5, 0.9)


def test_no_warmup_means_final_sparsity_from_the_start() -> None:
    assert DGCConfig(warmup_sparsities=(), final_sparsity=0.9).sparsity_at(0) == 0.9


NO_MASKING = {"momentum_masking": False}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum": 1.0}, "momentum=1.0 is invalid: must be in [0, 1)"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1 is invalid: must be >= 0"),
        ({"clip_norm": -1.0}, "clip_norm=-1.0 is invalid: must be None (no clipping) or a finite number > 0"),
        ({"clip_norm": float("inf")}, "clip_norm=inf is invalid: must be None (no clipping) or a finite number > 0"),
        ({"num_workers": 0}, "num_workers=0 is invalid: must be an integer >= 1"),
        ({"final_sparsity": 1.0}, "final_sparsity=1.0 is invalid: must be in [0, 1)"),
        ({"warmup_rounds_per_stage": 0}, "warmup_rounds_per_stage=0 is invalid: must be an integer >= 1"),
        ({"selection": "best"}, "selection='best' is invalid: allowed: ('topk', 'sampled')"),
        ({"sample_ratio": 0.0}, "sample_ratio=0.0 is invalid: must be in (0, 1]"),
        ({"dense_below": -1}, "dense_below=-1 is invalid: must be an integer >= 0"),
        ({"local_update": "fedprox"}, "local_update='fedprox' is invalid: allowed: ('accumulate', 'local_sgd')"),
        ({"lr_schedule": "linear"}, "lr_schedule='linear' is invalid: allowed: ('constant', 'cosine', 'step')"),
        ({"lr_warmup_rounds": -1}, "lr_warmup_rounds=-1 is invalid: must be an integer >= 0"),
        ({"lr_total_rounds": True}, "lr_total_rounds=True is invalid: must be an integer >= 0"),
        ({"lr_schedule": "cosine", "lr_warmup_rounds": 5, "lr_total_rounds": 5},
         "lr_total_rounds=5 is invalid: cosine needs more rounds than lr_warmup_rounds"),
        ({"lr_milestones": "3,2"}, "lr_milestones=(3, 2) is invalid: must be increasing round numbers >= 1"),
        ({"lr_milestones": "0"}, "lr_milestones=(0,) is invalid: must be increasing round numbers >= 1"),
        ({"lr_milestones": "a"}, "lr_milestones='a' is invalid:"),
        ({"lr_gamma": 1.5}, "lr_gamma=1.5 is invalid: must be in (0, 1]"),
        ({"warmup_sparsities": "0.5,1.0"}, "warmup_sparsities=(0.5, 1.0) is invalid: every entry must be in [0, 1)"),
        ({"warmup_sparsities": "0.9,0.5"},
         "warmup_sparsities=(0.9, 0.5) is invalid: must be non-decreasing and end at or below final_sparsity=0.999"),
        ({"momentum": -0.1}, "momentum=-0.1 is invalid: must be in [0, 1)"),
        ({"final_sparsity": -0.1}, "final_sparsity=-0.1 is invalid: must be in [0, 1)"),
        ({"selection": "random"}, "selection='random' is invalid: allowed: ('topk', 'sampled')"),
        ({"warmup_sparsities": "0.5,x"}, "warmup_sparsities='0.5,x' is invalid: must be comma-separated numbers"),
        ({"warmup_sparsities": (0.5, 0.9), "final_sparsity": 0.8},
         "warmup_sparsities=(0.5, 0.9) is invalid: must be non-decreasing and end at or below final_sparsity=0.8"),
        ({"momentum": 0.0}, "momentum_correction=True is invalid: needs momentum > 0: there is no momentum to correct"),
        ({"momentum_correction": False},
         "momentum_masking=True is invalid: needs momentum_correction=True: without it the client keeps no"),
        ({"local_accumulation": False}, "momentum_masking=True is invalid: needs local_accumulation=True: masking"),
    ],
)
def test_each_dgc_setting_is_refused_with_its_value_and_what_is_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        DGCConfig(**kwargs)
    assert str(refused.value).startswith(f"DGCConfig.{message}")


def test_dgc_boundaries_that_are_allowed() -> None:
    assert DGCConfig(momentum=0.0, momentum_correction=False, **NO_MASKING).momentum == 0.0
    assert DGCConfig(weight_decay=0.0, dense_below=0, sample_ratio=1.0, lr_gamma=1.0).lr_gamma == 1.0
    assert DGCConfig(clip_norm=1e-9, lr_warmup_rounds=0, lr_total_rounds=0).clip_norm == 1e-9
    assert DGCConfig(clip_norm=0).clip_norm is None  # 0: no clipping
    assert DGCConfig(warmup_sparsities="0.5,0.5,0.999", lr_milestones="1,2").lr_milestones == (1, 2)


def test_sparsity_at_negative_round_is_rejected() -> None:
    with pytest.raises(ValueError, match="round_index"):
        DGCConfig().sparsity_at(-1)


# --- state ---------------------------------------------------------------------------------------


def test_state_dict_round_trip() -> None:
    config = DGCConfig(momentum=0.5, selection="topk")
    memory = DGCMemory(config, segments=[3, 2])
    memory.accumulate(_t(1, -2, 3, 4, 5))
    memory.compress_and_mask(0.5)
    state = memory.state_dict()
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in state.values())

    restored = DGCMemory(config, segments=[3, 2])
    restored.load_state_dict(state)
    assert torch.equal(restored.u, memory.u) and torch.equal(restored.v, memory.v)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"u": np.zeros(4, np.float32), "v": np.zeros(5, np.float32)}, r"'u': expected shape \(5,\), got \(4,\)"),
        ({"u": np.zeros(5, np.float32)}, "keys"),
    ],
)
def test_load_state_dict_rejects_mismatches(state: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DGCMemory(DGCConfig(), segments=[3, 2]).load_state_dict(state)


# --- server step ---------------------------------------------------------------------------------


def test_average_sparse_weights_by_example_counts() -> None:
    updates = [(torch.tensor([0, 2]), _t(4, 8)), (torch.tensor([2, 3]), _t(4, -4))]
    # Weights 1 and 3: entry 2 = (1 * 8 + 3 * 4) / 4 = 5; entry 0 = 4 / 4; entry 3 = -12 / 4.
    assert average_sparse(updates, [1, 3], numel=4).tolist() == [1, 0, 5, -3]


def test_average_sparse_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="positive"):
        average_sparse([(torch.tensor([0]), _t(1))], [0], numel=2)


def test_the_server_takes_a_plain_sgd_step_where_the_clients_hold_the_momentum() -> None:
    server = DGCServer(_t(1, 1), [(1, 2)], DGCConfig(momentum=0.9), lr=0.5)
    assert server.step(_t(2, -2)).tolist() == [0, 2]
    assert server.step(_t(2, -2)).tolist() == [-1, 3]  # no velocity carried over


# --- tensors sent whole, local steps --------------------------------------------------------------


def test_one_dimensional_tensors_are_sent_whole_and_keep_their_momentum() -> None:
    """The reference compresses only tensors of more than one dimension; the rest get momentum SGD."""
    config = DGCConfig(momentum=0.9, selection="topk")
    shapes = [(4, 250), (10,)]
    assert dense_tensors(shapes, config) == [False, True]
    assert dense_tensors(shapes, DGCConfig(compress_vectors=True)) == [False, False]
    assert dense_tensors([(4, 2), (10,)], DGCConfig(compress_vectors=True, dense_below=16)) == [True, True]
    memory = DGCMemory(config, [1000, 10], dense=dense_tensors(shapes, config))
    server = DGCServer(torch.zeros(1010), shapes, config, lr=1.0)
    bias = []
    for _ in range(4):
        memory.accumulate(torch.cat([torch.zeros(1000), torch.ones(10)]))
        indices, values = memory.compress_and_mask(0.99)
        assert set(range(1000, 1010)) <= set(indices.tolist())
        assert values[indices >= 1000].tolist() == [1.0] * 10  # the raw gradient, every round
        bias.append(-float(server.step(average_sparse([(indices, values)], [1], 1010))[1000]))
    steps = np.diff([0, *bias])
    np.testing.assert_allclose(steps, [1, 1.9, 2.71, 3.439], rtol=1e-5)  # momentum SGD's steps


def test_local_steps_accumulate_gradients_at_the_rounds_weights_into_one_step() -> None:
    memory = DGCMemory(DGCConfig(momentum=0.9, selection="topk"), segments=[2])
    seen = []

    def gradient_at(w):
        seen.append(w.clone())
        return _t(1, 1)

    after = local_round(memory, gradient_at, _t(0, 0), steps=4, lr=0.1)
    assert memory.v.tolist() == [4, 4] and memory.u.tolist() == [4, 4]  # the sum of 4, one momentum step
    assert all(w.tolist() == [0, 0] for w in seen) and after.tolist() == [0, 0]


def test_local_sgd_takes_each_gradient_where_the_last_step_left_the_weights() -> None:
    memory = DGCMemory(DGCConfig(momentum=0.9, selection="topk", local_update="local_sgd"), segments=[1])
    seen = []

    def gradient_at(w):  # the gradient of w^2 / 2
        seen.append(float(w))
        return w.clone()

    after = local_round(memory, gradient_at, _t(1), steps=3, lr=0.1)
    # u: 1 -> 0.9 * 1 + 0.9 = 1.8 -> ...; w: 1 -> 0.9 -> 0.9 - 0.1 * 1.8 = 0.72 -> 0.72 - 0.1 * (0.9*1.8 + 0.72)
    assert seen == pytest.approx([1, 0.9, 0.72])
    assert float(after) == pytest.approx(0.72 - 0.1 * (0.9 * 1.8 + 0.72))
    assert float(memory.v) == pytest.approx((1 - float(after)) / 0.1)  # v holds the whole local movement / lr


def test_run_config_forms_are_read_as_written_there() -> None:
    """Strategies send DGCConfig to clients as run-config scalars: a schedule string, clip-norm 0 for off."""
    config = DGCConfig(warmup_sparsities="0.75, 0.9", clip_norm=0)
    assert config.warmup_sparsities == (0.75, 0.9) and config.clip_norm is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.momentum = 0.5  # type: ignore[misc]


def test_the_default_warmup_is_the_papers_schedule_up_to_the_final_sparsity():
    assert DGCConfig().warmup_sparsities == (0.75, 0.9375, 0.984375, 0.996, 0.999)
    assert DGCConfig(final_sparsity=0.99).warmup_sparsities == (0.75, 0.9375, 0.984375)
    assert DGCConfig(final_sparsity=0.5).sparsity_at(0) == 0.5


# --- Nesterov momentum and the server's learning-rate schedule --------------------------------------


def test_nesterov_momentum_steps_as_torch_sgd_does_on_both_sides() -> None:
    """Constant gradient 1, m = 0.9: torch.optim.SGD(nesterov=True) steps 1.9, 2.71, 3.439."""
    weight = torch.zeros(1, requires_grad=True)
    sgd = torch.optim.SGD([weight], lr=1.0, momentum=0.9, nesterov=True)
    torch_steps = []
    for _ in range(3):
        before = weight.item()
        weight.grad = torch.ones(1)
        sgd.step()
        torch_steps.append(before - weight.item())
    config = DGCConfig(momentum=0.9, nesterov=True, momentum_masking=False, local_accumulation=False, selection="topk")
    memory = DGCMemory(config, segments=[1])
    client_steps = [float(memory.accumulate(_t(1))) for _ in range(3)]
    server = DGCServer(torch.zeros(1), [(1,)], config, lr=1.0)  # a 1-D tensor: the server's momentum
    server_steps = np.diff([0, *[-float(server.step(_t(1))) for _ in range(3)]])
    np.testing.assert_allclose(client_steps, torch_steps, rtol=1e-6)
    np.testing.assert_allclose(server_steps, torch_steps, rtol=1e-6)
    assert torch_steps == pytest.approx([1.9, 2.71, 3.439])


def test_the_servers_learning_rate_warms_up_then_follows_its_schedule() -> None:
    warm = DGCConfig(lr_warmup_rounds=4)
    assert [warm.lr_at(r, 0.8) for r in (1, 2, 4, 5, 100)] == pytest.approx([0.2, 0.4, 0.8, 0.8, 0.8])
    cosine = DGCConfig(lr_warmup_rounds=2, lr_schedule="cosine", lr_total_rounds=12)
    assert [cosine.lr_at(r, 1.0) for r in (2, 7, 12, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    step = DGCConfig(lr_schedule="step", lr_milestones="10, 20", lr_gamma=0.5)
    assert step.lr_milestones == (10, 20)
    assert [step.lr_at(r, 1.0) for r in (9, 10, 19, 20)] == [1.0, 0.5, 0.5, 0.25]
    server = DGCServer(torch.zeros(2), [(1, 2)], DGCConfig(lr_warmup_rounds=2), lr=1.0)
    assert server.step(_t(1, 1), server_round=1).tolist() == [-0.5, -0.5]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_schedule": "cosine", "lr_total_rounds": 0}, "lr_total_rounds"),
        ({"lr_milestones": "20,10"}, "lr_milestones"),
        ({"lr_milestones": "ten"}, "lr_milestones"),
        ({"lr_gamma": 0.0}, "lr_gamma"),
        ({"lr_warmup_rounds": -1}, "lr_warmup_rounds"),
        ({"local_update": "fedprox"}, "local_update"),
    ],
)
def test_bad_schedule_settings_raise_naming_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"DGCConfig.{match}="):
        DGCConfig(**kwargs)


def test_shared_selection_takes_as_many_as_top_k_per_tensor_at_random_and_whole_tensors_whole():
    """The coordinates all clients of a secure round send: the counts ``compress`` would take, sorted and
    within each tensor, whole tensors in full, and a fresh draw each time."""
    from flwr_privacy.algorithms.dgc import entries_sent, shared_selection

    segments, dense = [1000, 10, 500], [False, True, False]
    first = shared_selection(segments, dense, 0.99, torch.Generator().manual_seed(1))
    second = shared_selection(segments, dense, 0.99, torch.Generator().manual_seed(2))
    assert len(first) == entries_sent(segments, dense, 0.99) == 10 + 10 + 5
    assert torch.equal(first, torch.sort(first).values) and len(torch.unique(first)) == len(first)
    assert ((first >= 1000) & (first < 1010)).sum() == 10  # the whole tensor
    assert ((first < 1000).sum(), (first >= 1010).sum()) == (10, 5)
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="sparsity=1 is invalid"):
        shared_selection(segments, dense, 1)


def test_take_and_mask_sends_v_at_the_given_coordinates_and_clears_them():
    from flwr_privacy.algorithms.dgc import DGCConfig, DGCMemory

    memory = DGCMemory(DGCConfig(), [6])
    memory.accumulate(torch.arange(1.0, 7.0))
    indices = torch.tensor([1, 4])
    values = memory.take_and_mask(indices)
    assert torch.equal(values, torch.tensor([2.0, 5.0]))
    assert memory.v[indices].abs().sum() == 0 and memory.u[indices].abs().sum() == 0  # Eq. 8's masking
    assert memory.v[0] == 1.0  # the rest stays accumulated
    with pytest.raises(ValueError, match="shared indices must be a flat vector in \\[0, 6\\)"):
        memory.take_and_mask(torch.tensor([6]))
