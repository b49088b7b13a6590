"""Codecs for what crosses the wire: a list of NumPy arrays, validated on receipt, sized in bytes."""

from flwr_privacy.compression.base import PayloadError, payload_nbytes

__all__ = ["PayloadError", "payload_nbytes"]
