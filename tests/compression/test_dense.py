"""The dense codec: every value, float32 or float16, checked against the expected shapes on decode."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_privacy.compression.base import PayloadError, payload_nbytes
from flwr_privacy.compression.dense import DenseCodec

SHAPES = ((2, 3), (4,))


def arrays(dtype="float32"):
    return [np.arange(6, dtype=dtype).reshape(2, 3), np.array([0.5, -1.0, 2.0, 3.0], dtype=dtype)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_in_the_wire_dtype_decodes_to_float32(dtype):
    codec = DenseCodec(SHAPES, dtype)
    encoded = codec.encode(arrays())
    assert [a.dtype for a in encoded] == [np.dtype(dtype)] * 2
    assert payload_nbytes(encoded) == 10 * np.dtype(dtype).itemsize
    decoded = codec.decode(encoded)
    assert [a.dtype for a in decoded] == [np.float32, np.float32]
    for got, want in zip(decoded, arrays()):
        np.testing.assert_array_equal(got, want)


def test_shapes_are_normalised_to_int_tuples():
    assert DenseCodec([[2, 3], (4,)]).shapes == SHAPES


@pytest.mark.parametrize(
    "bad,match",
    [
        (arrays()[:1], "expected 2 arrays, got 1"),
        (arrays() + arrays()[:1], "expected 2 arrays, got 3"),
        ([arrays()[0].tolist(), arrays()[1]], "array 0: expected a NumPy array, got list"),
        ([arrays()[0], arrays()[1].astype(np.float64)], "array 1: expected dtype float32, got float64"),
        ([arrays()[0].reshape(3, 2), arrays()[1]], r"array 0: expected shape \(2, 3\), got \(3, 2\)"),
        ([arrays()[0], np.array([0, np.nan, 0, 0], np.float32)], "array 1: contains NaN or Inf"),
        ([np.full((2, 3), np.inf, np.float32), arrays()[1]], "array 0: contains NaN or Inf"),
    ],
)
def test_decode_rejects_what_does_not_match_naming_the_array(bad, match):
    with pytest.raises(PayloadError, match=match):
        DenseCodec(SHAPES).decode(bad)


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        DenseCodec(SHAPES, "int8")
