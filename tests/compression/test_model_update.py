"""A sparse model update as it travels: top-k (indices, values) of the trainable vector, then dense buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_privacy.compression.base import PayloadError, payload_nbytes
from flwr_privacy.compression.model_update import SparseUpdateCodec


def test_round_trip_with_buffers_and_the_bytes_it_costs():
    codec = SparseUpdateCodec(1000, ((3,), (2, 2)), "float16")
    buffers = [np.array([1.0, 2.0, 3.0], np.float32), np.eye(2, dtype=np.float32)]
    encoded = codec.encode(torch.tensor([7, 3, 999]), torch.tensor([0.5, -1.0, 2.0]), buffers)
    assert len(encoded) == 4
    assert encoded[0].dtype == np.uint16 and encoded[1].dtype == np.float16
    assert payload_nbytes(encoded) == 3 * (2 + 2) + 4 * (3 + 4)  # buffers always float32
    indices, values, decoded = codec.decode(encoded)
    assert indices.tolist() == [3, 7, 999] and values.tolist() == [-1.0, 0.5, 2.0]  # sorted by index
    assert indices.dtype == torch.int64 and values.dtype == torch.float32
    for got, want in zip(decoded, buffers):
        np.testing.assert_array_equal(got, want)


def test_without_buffers_it_is_the_sparse_pair_alone():
    codec = SparseUpdateCodec(10)
    encoded = codec.encode(torch.tensor([1]), torch.tensor([1.0]), [])
    assert len(encoded) == 2 and codec.decode(encoded)[2] == []


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a[:3], r"expected 4 arrays \(indices, values, 2 buffers\), got 3"),
        (lambda a: a + [a[-1]], r"expected 4 arrays \(indices, values, 2 buffers\), got 5"),
        (lambda a: [a[0], a[1], a[2].astype(np.float64), a[3]], "array 0: expected dtype float32"),
        (lambda a: [a[0], a[1], a[2], a[3][:1]], r"array 1: expected shape \(2, 2\)"),
        (lambda a: [np.array([0, 1000], np.uint16), a[1][:2], a[2], a[3]], "out of range"),
    ],
)
def test_decode_checks_the_sparse_part_and_every_buffer(mutate, match):
    codec = SparseUpdateCodec(1000, ((3,), (2, 2)))
    buffers = [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]
    encoded = codec.encode(torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0]), buffers)
    with pytest.raises(PayloadError, match=match):
        codec.decode(mutate(encoded))
