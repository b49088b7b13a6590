"""What every codec shares: the error a bad payload raises, and how a payload is sized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PayloadError(ValueError):
    """A payload received from a peer is malformed; the message says what is wrong."""


def payload_nbytes(arrays: Sequence[np.ndarray]) -> int:
    """Bytes of the array data in a payload (the wire adds a small header per array on top)."""
    return int(sum(np.asarray(a).nbytes for a in arrays))
