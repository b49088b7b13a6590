"""Flower's own server loop (``flwr.server.Server``) over clients in this process, without transport.

For fast tests and for benchmarks that must time a round in the same process as a baseline. The
strategy, the ClientApp's ``client_fn``, the serialized ``Parameters`` and each client's
``context.state`` are the real ones; only Ray/gRPC are left out. ``flwr run`` is the way to run
experiments; this is the way to look inside one round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.client import Client
from flwr.common import (
    Code,
    Context,
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    RecordDict,
    Status,
)
from flwr.server import Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

ClientFn = Callable[[Context], Client]


class InProcessClientProxy(ClientProxy):
    """A SuperNode stand-in: builds a fresh client per message, as Flower does, with a lasting context."""

    def __init__(self, cid: str, client_fn: ClientFn, context: Context) -> None:
        super().__init__(cid)
        self.client_fn = client_fn
        self.context = context

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        return self.client_fn(self.context).fit(ins)

    def evaluate(self, ins: EvaluateIns, timeout: float | None, group_id: int | None) -> EvaluateRes:
        return self.client_fn(self.context).evaluate(ins)

    def get_parameters(self, ins: GetParametersIns, timeout: float | None, group_id: int | None) -> GetParametersRes:
        return self.client_fn(self.context).get_parameters(ins)

    def get_properties(self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None) -> GetPropertiesRes:
        return GetPropertiesRes(Status(Code.OK, ""), {})

    def reconnect(self, ins, timeout: float | None, group_id: int | None) -> DisconnectRes:
        return DisconnectRes(reason="")


def make_federation(client_fn: ClientFn, run_config: dict[str, Any], num_clients: int) -> SimpleClientManager:
    """A client manager holding ``num_clients`` in-process clients with partition ids 0..n-1."""
    manager = SimpleClientManager()
    for pid in range(num_clients):
        context = Context(
            run_id=0,
            node_id=pid,
            node_config={"partition-id": pid, "num-partitions": num_clients},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        manager.register(InProcessClientProxy(str(pid), client_fn, context))
    return manager


def run_inprocess(strategy: Strategy, manager: SimpleClientManager, num_rounds: int):
    """Flower's server loop for ``num_rounds``; returns Flower's History and the elapsed seconds."""
    return Server(client_manager=manager, strategy=strategy).fit(num_rounds=num_rounds, timeout=None)
