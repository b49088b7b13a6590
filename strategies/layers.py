"""Flower's own privacy layers around our strategies: its client-level DP wrappers and SecAgg+.

Flower adds client-level differential privacy (McMahan et al. 2018) by wrapping a strategy
(``DifferentialPrivacyServerSideFixedClipping`` and its client-side and adaptive siblings, in both
APIs): the wrapper clips each client's model update (or has ``fixedclipping_mod`` clip it on the
client), lets the strategy average, and adds Gaussian noise to the average it returns. SecAgg+
(``SecAggPlusWorkflow`` with ``secaggplus_mod``) hands the strategy only the sum of the clients'
models. Neither tells the wrapped strategy, and both break a strategy that keeps its own global model
or needs each client's update:

- the noise is added to what the strategy *returns*; a strategy that sends its own model next round
  sends it without the noise (the guarantee silently gone), so ours take the model Flower hands back;
- the noise is calibrated to a uniform mean over the sampled clients (sensitivity C / n), so ours
  weigh every client equally inside a wrapper, whatever example count it claims;
- a sparse update (DGC's top-k, DSSGD's selection) has its own index set per client: clipping it
  against the dense model, or summing it with others, is meaningless, so DGC and DSSGD refuse both.

A strategy learns which layer called it from the calling frame (``layer_of_caller``): Flower's wrappers
call the wrapped strategy's methods themselves, and SecAgg+'s workflow calls ``configure_fit``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import FrameType

from flwr.server import strategy as legacy
from flwr.serverapp import strategy as message

DP_WRAPPERS = tuple(
    getattr(module, name)
    for module in (legacy, message)
    for name in (
        "DifferentialPrivacyServerSideFixedClipping",
        "DifferentialPrivacyClientSideFixedClipping",
        "DifferentialPrivacyServerSideAdaptiveClipping",
        "DifferentialPrivacyClientSideAdaptiveClipping",
    )
)
SECAGG_MODULE = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
FRAMES_LOOKED_AT = 4  # a wrapper inside SecAgg+'s workflow: ours <- wrapper <- workflow


@dataclass(frozen=True)
class Layer:
    """A Flower layer around a strategy: ``kind`` is "client-level DP" or "SecAgg+"; ``name`` its class."""

    kind: str
    name: str


# flwr_privacy's own SecAgg+ for the Message API (``strategies.secagg``): it tells the strategy itself, and
# lets an algorithm send what adds up under masks (DGC: its v at coordinates shared by the round's clients).
MESSAGE_SECAGG = Layer("SecAgg+", "secure aggregation (flwr_privacy.strategies.secagg)")


def layer_of_caller(depth: int = 2) -> Layer | None:
    """The Flower privacy layer among the callers of the method that calls this (``depth`` frames up)."""
    frame: FrameType | None = sys._getframe(depth)
    for _ in range(FRAMES_LOOKED_AT):
        if frame is None:
            return None
        caller = frame.f_locals.get("self")
        if isinstance(caller, DP_WRAPPERS):
            return Layer("client-level DP", type(caller).__name__)
        if frame.f_globals.get("__name__") == SECAGG_MODULE:
            return Layer("SecAgg+", "SecAggPlusWorkflow")
        frame = frame.f_back
    return None
