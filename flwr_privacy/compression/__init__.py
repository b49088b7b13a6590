"""Codecs for what crosses the wire: a list of NumPy arrays, validated on receipt, sized in bytes."""

from flwr_privacy.compression.base import PayloadError, payload_nbytes
from flwr_privacy.compression.topk import SparseCodec, select_sampled_threshold, select_topk

__all__ = ["PayloadError", "SparseCodec", "payload_nbytes", "select_sampled_threshold", "select_topk"]
