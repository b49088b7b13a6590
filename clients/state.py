"""Client state that outlives a round, kept in Flower's ``context.state`` (a RecordDict).

Client objects are rebuilt for every message; what must survive (DGC's u and v, a participant's
local model) is stored here as an ArrayRecord, in simulation and deployment alike.
"""

from __future__ import annotations

import numpy as np
from flwr.common import ArrayRecord, RecordDict


def load_arrays(state: RecordDict, key: str) -> list[np.ndarray] | None:
    """The arrays stored under ``key``, or None if this client has none yet."""
    if key not in state.array_records:
        return None
    return state.array_records[key].to_numpy_ndarrays()


def save_arrays(state: RecordDict, key: str, arrays: list[np.ndarray]) -> None:
    state[key] = ArrayRecord([np.ascontiguousarray(a) for a in arrays])
