"""Top-k selection (exact and DGC's sampled threshold) and the sparse codec's wire format and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_privacy.compression import PayloadError, SparseCodec, payload_nbytes, select_sampled_threshold, select_topk
from flwr_privacy.compression.topk import index_dtype_for


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- selection ------------------------------------------------------------------------------------


def test_select_topk_returns_largest_magnitudes_with_their_signs() -> None:
    x = torch.tensor([0.1, -5.0, 2.0, -0.3, 4.0])
    indices, values = select_topk(x, 2)
    assert sorted(indices.tolist()) == [1, 4]
    assert torch.equal(values, x[indices])


@pytest.mark.parametrize(("k", "expected"), [(-3, 0), (0, 0), (5, 5), (9, 5)])
def test_k_is_clamped_to_numel(k: int, expected: int) -> None:
    x = torch.randn(5)
    for select in (select_topk, select_sampled_threshold):
        indices, values = select(x, k)
        assert len(indices) == len(values) == expected


def test_selection_needs_a_flat_tensor() -> None:
    with pytest.raises(ValueError, match="1-D"):
        select_topk(torch.zeros(2, 3), 1)


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_sampled_threshold_returns_exactly_k_and_the_topk_set(k: int) -> None:
    x = torch.randn(100_000, generator=_gen(k))
    indices, values = select_sampled_threshold(x, k, generator=_gen(0))
    assert len(indices) == k
    assert set(indices.tolist()) == set(select_topk(x, k)[0].tolist())
    assert torch.equal(values, x[indices])


def test_sampled_threshold_is_exact_on_heavy_tails_whatever_the_sample() -> None:
    # Heavy tails make the sampled threshold land far off either way: too many or too few survive.
    x = torch.tan(torch.pi * (torch.rand(50_000, generator=_gen(0)) - 0.5))  # standard Cauchy
    exact = set(select_topk(x, 50)[0].tolist())
    for seed in range(10):
        indices, _ = select_sampled_threshold(x, 50, sample_ratio=0.02, generator=_gen(seed))
        assert set(indices.tolist()) == exact


def test_sampled_threshold_keeps_the_largest_survivors_not_the_first() -> None:
    # Ties at 1.0 everywhere put the sampled threshold at 1.0, so all 100 000 entries survive;
    # the true top 100 sit at the very end, where "the first k survivors" would never reach.
    x = torch.ones(100_000)
    x[-100:] = -(2.0 + torch.arange(100) / 100)
    indices, values = select_sampled_threshold(x, 100, generator=_gen(0))
    assert sorted(indices.tolist()) == list(range(99_900, 100_000))
    assert (values < -1.5).all()


def test_sampled_threshold_is_reproducible_with_a_generator() -> None:
    x = torch.randn(20_000)
    first = select_sampled_threshold(x, 20, generator=_gen(7))
    again = select_sampled_threshold(x, 20, generator=_gen(7))
    assert torch.equal(first[0], again[0])


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_sample_ratio_outside_range_is_rejected(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"^sample_ratio=.* is invalid: must be in \(0, 1\]$"):
        select_sampled_threshold(torch.randn(10), 1, sample_ratio=ratio)


def test_a_sample_of_everything_is_allowed_and_exact() -> None:
    x = torch.randn(5_000, generator=_gen(1))
    indices, _ = select_sampled_threshold(x, 7, sample_ratio=1.0)
    assert set(indices.tolist()) == set(select_topk(x, 7)[0].tolist())


def test_nothing_asked_of_a_long_vector_is_nothing_sent() -> None:
    indices, values = select_sampled_threshold(torch.randn(100_000, generator=_gen(2)), 0, generator=_gen(0))
    assert indices.numel() == 0 and values.numel() == 0


def test_sampled_threshold_falls_back_to_exact_topk_when_every_refinement_is_too_high() -> None:
    """990 ones among 200,000 zeros and k = 1,000: a sample of 1,000 that holds twice its expected 5 ones
    (seed 5 does) sets the threshold at 1, which no decay brings below the ones' level, so fewer than k
    ever pass; the rule must still send exactly the top k (the 990 ones and 10 zeros), not fewer."""
    x = torch.zeros(200_000)
    ones = torch.arange(0, 200_000, 200_000 // 990)[:990]
    x[ones] = 1.0
    indices, values = select_sampled_threshold(x, 1_000, sample_ratio=0.005, generator=_gen(5))
    assert sorted(indices.tolist()) == sorted(select_topk(x, 1_000)[0].tolist())
    assert set(ones.tolist()) <= set(indices.tolist()) and values.sum() == 990


# --- codec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_round_trip(value_dtype: str) -> None:
    codec = SparseCodec(numel=1000, value_dtype=value_dtype)
    x = torch.randn(1000, generator=_gen(1))
    indices, values = select_topk(x, 37)
    decoded_indices, decoded_values = codec.decode(codec.encode(indices, values))
    assert decoded_indices.dtype == torch.int64 and decoded_values.dtype == torch.float32
    tol = 1e-3 if value_dtype == "float16" else 0.0
    torch.testing.assert_close(
        codec.densify(decoded_indices, decoded_values), codec.densify(indices, values), atol=tol, rtol=tol
    )


def test_encode_sorts_by_index() -> None:
    codec = SparseCodec(numel=10)
    index_array, value_array = codec.encode(torch.tensor([7, 2, 5]), torch.tensor([0.7, 0.2, 0.5]))
    assert index_array.tolist() == [2, 5, 7]
    np.testing.assert_allclose(value_array, [0.2, 0.5, 0.7], rtol=1e-6)


@pytest.mark.parametrize(
    ("numel", "dtype"),
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65_536, np.uint16), (65_537, np.uint32),
     (2**32, np.uint32), (2**32 + 1, np.uint64)],
)
def test_narrowest_unsigned_index_dtype(numel: int, dtype: type) -> None:
    assert SparseCodec(numel=numel).index_dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    ("numel", "value_dtype", "per_entry"),
    [(200, "float32", 1 + 4), (200, "float16", 1 + 2), (1_000_000, "float32", 4 + 4), (50_000, "float16", 2 + 2)],
)
def test_payload_bytes_equal_k_times_index_plus_value_bytes(numel: int, value_dtype: str, per_entry: int) -> None:
    codec = SparseCodec(numel=numel, value_dtype=value_dtype)
    k = 150
    arrays = codec.encode(*select_topk(torch.randn(numel), k))
    assert codec.bytes_per_entry == per_entry
    assert payload_nbytes(arrays) == k * per_entry


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_densify_puts_values_at_indices_and_zeros_elsewhere(dtype: torch.dtype) -> None:
    dense = SparseCodec(numel=5).densify(torch.tensor([4, 1]), torch.tensor([2.0, -3.0], dtype=dtype))
    assert dense.tolist() == [0.0, -3.0, 0.0, 0.0, 2.0] and dense.dtype == dtype


@pytest.mark.parametrize("index_dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64])
def test_decode_accepts_any_integer_index_dtype(index_dtype: type) -> None:
    indices, _ = SparseCodec(numel=100).decode([np.array([3, 1], dtype=index_dtype), np.array([1, 2], np.float32)])
    assert indices.tolist() == [3, 1]


def _payload(indices: list, values: list, index_dtype: object = np.uint8, value_dtype: object = np.float32) -> list:
    return [np.array(indices, dtype=index_dtype), np.array(values, dtype=value_dtype)]


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ([np.array([1], np.uint8)], "exactly 2 arrays"),
        (_payload([1], [1.0]) + [np.zeros(1)], "exactly 2 arrays"),
        ([[1], np.array([1.0], np.float32)], "indices: expected a NumPy array, got list"),
        ([np.array([[1]], np.uint8), np.array([1.0], np.float32)], "indices: expected a 1-D array"),
        ([np.array([1], np.uint8), np.array([[1.0]], np.float32)], "values: expected a 1-D array"),
        (_payload([1.0], [1.0], index_dtype=np.float32), "indices: expected an integer dtype"),
        (_payload([True], [1.0], index_dtype=np.bool_), "indices: expected an integer dtype"),
        (_payload([1], [1.0], value_dtype=np.float64), "values: expected dtype float32"),
        (_payload([1], [1.0], value_dtype=np.float16), "values: expected dtype float32"),
        (_payload([1, 2], [1.0]), "2 indices but 1 values"),
        (_payload([-1], [1.0], index_dtype=np.int32), "negative index -1"),
        (_payload([10], [1.0]), "index 10 out of range for numel 10"),
        (_payload([3, 3], [1.0, 2.0]), "duplicate indices"),
        (_payload([9, 5, 1, 5], [1.0, 2.0, 3.0, 4.0]), "duplicate indices"),  # apart, and not the smallest
        (_payload([1, 2], [1.0, np.nan]), "NaN or Inf"),
        (_payload([1, 2], [np.inf, 1.0]), "NaN or Inf"),
        (_payload(list(range(11)), [1.0] * 11), "11 entries for a vector of only 10"),
    ],
)
def test_decode_rejects_malformed_payloads(arrays: list, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        SparseCodec(numel=10).decode(arrays)


def test_encode_refuses_values_that_overflow_float16() -> None:
    with pytest.raises(ValueError, match="not finite as float16"):
        SparseCodec(numel=10, value_dtype="float16").encode(torch.tensor([1]), torch.tensor([1e6]))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"numel": 0}, "numel"), ({"numel": 5, "value_dtype": "int8"}, "value_dtype")]
)
def test_codec_config_is_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SparseCodec(**kwargs)


def test_a_payload_naming_every_entry_once_is_accepted() -> None:
    """DSSGD at theta_u = 1 uploads all c = numel entries: the bound is more than numel, not numel."""
    indices, values = SparseCodec(numel=10).decode(_payload(list(range(10)), [1.0] * 10))
    assert indices.tolist() == list(range(10)) and values.tolist() == [1.0] * 10


def test_codec_sizes_are_plain_ints_and_bools_are_not_sizes() -> None:
    codec = SparseCodec(numel=np.int64(5))
    assert type(codec.numel) is int and codec.numel == 5
    with pytest.raises(ValueError, match=r"^numel=True is invalid: must be an integer >= 1$"):
        SparseCodec(numel=True)
    with pytest.raises(ValueError, match=r"^numel=18446744073709551617 does not fit in uint64 indices$"):
        index_dtype_for(2**64 + 1)


def test_encode_refuses_an_index_past_the_end() -> None:
    with pytest.raises(ValueError, match=r"^indices must lie in \[0, 5\), got \[0, 5\]$"):
        SparseCodec(numel=5).encode(torch.tensor([0, 5]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"^indices must lie in \[0, 5\), got \[-1, 2\]$"):
        SparseCodec(numel=5).encode(torch.tensor([-1, 2]), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ([np.array([1, 1], np.uint8), np.zeros(2, np.float32)], "^indices: duplicate indices$"),
        ([np.array([1], np.uint8), np.array([np.nan], np.float32)], "^values: contains NaN or Inf$"),
    ],
)
def test_decode_names_the_reason_exactly(arrays: list, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        SparseCodec(numel=5).decode(arrays)
