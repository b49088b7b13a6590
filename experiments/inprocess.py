"""Flower's own server loops over clients in this process, without transport.

For fast tests and for benchmarks that must time a round in the same process as a baseline. Legacy
API: ``flwr.server.Server`` over the ClientApp's ``client_fn`` (``make_federation``, ``run_inprocess``).
Message API: ``InProcessGrid``, a ``Grid`` that hands each message to a ``ClientApp`` (its
``@app.train()`` / ``@app.evaluate()`` handlers) for ``strategy.start(grid=...)``. The strategy, the
serialized arrays and each client's ``context.state`` are the real ones; only Ray/gRPC are left out.
``flwr run`` is the way to run experiments; this is the way to look inside one round.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Error, Message
from flwr.client import Client, ClientApp
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
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server import Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr_privacy.strategies.message import record_nbytes

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
    """Flower's server loop for ``num_rounds``, fitting a round's clients one after another; returns
    Flower's History and the elapsed seconds.

    One at a time, not in Flower's default thread pool: CPython 3.11's ``ast`` module keeps its recursion
    depth in state shared by threads (python/cpython#106905), and torch parses source (its decorators,
    TorchScript) on first use, so clients building models concurrently failed now and then with
    ``SystemError: AST constructor recursion depth mismatch``. A simulation runs its clients in separate
    processes; here, in one process, they share one interpreter.
    """
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(1)
    return server.fit(num_rounds=num_rounds, timeout=None)


class InProcessGrid(Grid):
    """A Message-API Grid over ClientApps in this process: each node keeps its Context (and state) across
    rounds, as in a simulation; a handler that raises becomes an error reply, as Flower delivers it."""

    def __init__(self, app: ClientApp, run_config: dict[str, Any], num_nodes: int) -> None:
        self.app = app
        self.contexts = {
            pid + 1: Context(
                run_id=0,
                node_id=pid + 1,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid in range(num_nodes)
        }
        self._run = Run.create_empty(run_id=0)
        self._replies: dict[str, Message] = {}
        # Per reply: the push it answered (0, 1, ...), its message type, its node id and the bytes of its arrays.
        self.carried: list[tuple[int, str, int, int]] = []
        self._pushes = 0
        # What a ServerApp process is told by its runtime, so that strategies can create Messages.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def handle(self, message: Message) -> Message:
        # Each node gets its own copy, as over the wire: a workflow may send one content object to every node
        # (SecAgg+'s stages do), and a client mod may consume what it reads (secaggplus_mod does).
        message = copy.deepcopy(message)
        try:
            reply = self.app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as err:  # a ClientApp that raises answers with an error, as in Flower's runtimes
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {err}")
            return Message(error, reply_to=message)
        arrays = reply.content.array_records.values() if reply.has_content() else []
        nbytes = sum(record_nbytes(r) for r in arrays)
        self.carried.append((self._pushes, message.metadata.message_type, message.metadata.dst_node_id, nbytes))
        return reply

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for number, message in enumerate(messages, start=len(self._replies)):
            message.metadata.__dict__["_message_id"] = str(number)
            self._replies[str(number)] = self.handle(message)
            ids.append(str(number))
        self._pushes += 1
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))
