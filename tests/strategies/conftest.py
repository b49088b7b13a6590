"""Shared ground of the DGC and DSSGD strategy tests: a real in-process federation built from a run config.

A ``Federation`` runs Flower's own server loop (``experiments.inprocess``) over the ClientApp's
``client_fn``, and keeps what a test needs to look inside it: the global model and every client's
``context.state`` after each round, and each client's fit calls (the instructions it got, its state
before, its reply).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, Context, FitIns, FitRes, RecordDict, Status, ndarrays_to_parameters

from experiments.client_app import client_fn
from experiments.federation import make_strategy, validate_run_config
from experiments.inprocess import InProcessClientProxy, make_federation, run_inprocess
from flwr_privacy.config import RunConfig


@dataclass
class FitCall:
    """One client's fit in one round: what it was sent, its state before, and its reply."""

    server_round: int
    cid: str
    ins: FitIns
    state_before: RecordDict
    res: FitRes


@dataclass
class Federation:
    run_config: dict[str, Any]
    cfg: RunConfig
    strategy: Any = None
    manager: Any = None
    globals: dict[int, list[np.ndarray]] = field(default_factory=dict)  # global model after each round
    states: dict[int, dict[str, RecordDict]] = field(default_factory=dict)  # client states after each round
    calls: list[FitCall] = field(default_factory=list)

    @property
    def proxies(self) -> list[InProcessClientProxy]:
        return sorted(self.manager.all().values(), key=lambda p: int(p.cid))

    def run(self, num_rounds: int | None = None) -> list[dict[str, Any]]:
        run_inprocess(self.strategy, self.manager, num_rounds or self.cfg.num_rounds)
        return self.strategy.history

    def after_round(self, record: dict[str, Any]) -> None:
        self.globals[record["round"]] = [a.copy() for a in self.strategy.global_arrays()]
        self.states[record["round"]] = {p.cid: copy.deepcopy(p.context.state) for p in self.proxies}

    def sampled(self, server_round: int) -> set[str]:
        return {c.cid for c in self.calls if c.server_round == server_round}

    def replay(self, call: FitCall, state: RecordDict) -> tuple[FitRes, RecordDict]:
        """The same fit instruction to a fresh client of the same node holding ``state``: its reply and state after."""
        proxy = self.manager.all()[call.cid]
        context = Context(
            run_id=0,
            node_id=proxy.context.node_id,
            node_config=dict(proxy.context.node_config),
            state=copy.deepcopy(state),
            run_config=dict(self.run_config),
        )
        return client_fn(context).fit(call.ins), context.state

    def _record_fits(self) -> None:
        for proxy in self.proxies:
            fit = proxy.fit

            def recording_fit(ins, timeout, group_id, proxy=proxy, fit=fit):
                before = copy.deepcopy(proxy.context.state)
                res = fit(ins, timeout, group_id)
                self.calls.append(FitCall(int(ins.config["server_round"]), proxy.cid, ins, before, res))
                return res

            proxy.fit = recording_fit


BASE_CONFIG = {
    "model": "mlp",
    "dataset": "mnist-embedded",
    "num-clients": 4,
    "fraction-fit": 1.0,
    "num-rounds": 3,
    "batch-size": 32,
    "lr": 0.05,
    "device": "cpu",
    "seed": 0,
}


@pytest.fixture
def federation(tmp_path):
    """``federation(strategy, **run_config_overrides)``: a seeded in-process federation, not yet run."""

    def build(strategy: str, **overrides: Any) -> Federation:
        random.seed(0)  # Flower's SimpleClientManager samples clients with the random module
        run_config = {**BASE_CONFIG, "strategy": strategy, "output-dir": str(tmp_path), **overrides}
        cfg = validate_run_config(run_config)
        fed = Federation(run_config, cfg)
        fed.strategy = make_strategy(cfg, run_config, on_round=fed.after_round)
        fed.manager = make_federation(client_fn, run_config, cfg.num_clients)
        fed._record_fits()
        return fed

    return build


@pytest.fixture
def reply():
    """``reply(arrays, num_examples)``: a client's fit reply, serialized as Flower serializes it."""

    def build(arrays: list[np.ndarray], num_examples: int = 1000, metrics: dict | None = None) -> FitRes:
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, metrics or {})

    return build
