"""Loud failure and reproducible sampling, with the user's quickstart app on the other end."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.server import ServerApp, ServerConfig
from flwr_privacy.strategies import DGC as LegacyDGC
from flwr_privacy.strategies.base import FederationError
from flwr_privacy.strategies.message import DGC, FedAvg

from flwr_privacy.algorithms.dgc import DGCConfig
from flwr_privacy.wire import model_to_arrays, trainable_mask


def test_a_run_whose_every_reply_is_rejected_stops_with_the_reason(quickstart, caplog):
    """The server swapped to DGC, the client left as the quickstart wrote it: its dense model is no DGC update."""
    net = quickstart.task.Net()
    initial = ArrayRecord(net.state_dict())
    strategy = DGC(lr=0.1, max_failed_rounds=3)
    with caplog.at_level(logging.ERROR), pytest.raises(FederationError) as raised:
        lr = ConfigRecord({"lr": 0.01})
        strategy.start(grid=quickstart.grid(), initial_arrays=initial, num_rounds=10, train_config=lr)
    message = str(raised.value)
    assert message.startswith("3 rounds in a row rejected every client reply (round 3: 4 of 4)")
    assert "expected 4 arrays" in message and "\n" not in message
    # One line per round and distinct reason, not one per client (4 clients, the same reason).
    every = [r.getMessage() for r in caplog.records if "every reply rejected" in r.getMessage()]
    assert len(every) == 3 and all("4 x " in line for line in every)
    # Nothing was applied: the global model is the initial one.
    for key, array in strategy.global_record().items():
        np.testing.assert_array_equal(array.numpy(), initial[key].numpy())


def test_a_legacy_strategy_with_a_message_api_client_fails_loudly(quickstart):
    """The issue's 'KeyError: arrays' run: it used to log tracebacks for every round and exit 0."""
    net = quickstart.task.Net()
    strategy = LegacyDGC(
        initial_arrays=model_to_arrays(net), trainable=trainable_mask(net), config=DGCConfig(), lr=0.1
    )
    server = ServerApp(config=ServerConfig(num_rounds=5), strategy=strategy)
    context = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(FederationError, match=r"3 rounds in a row .*KeyError: 'arrays'"):
        server(quickstart.grid(), context)
    assert [r["accepted"] for r in strategy.history[1:]] == [0, 0]  # round 3 raised before its record


def sampled(grid) -> list[list[int]]:
    """The nodes each training round went to, as the grid delivered them."""
    pushes: dict[int, list[int]] = {}
    for push, kind, node, _ in grid.carried:
        if kind == "train":
            pushes.setdefault(push, []).append(node)
    return list(pushes.values())


def test_sampling_follows_the_seed(quickstart):
    def run(seed: int):
        quickstart.task.torch.manual_seed(0)
        grid = quickstart.grid(num_nodes=8)
        strategy = FedAvg(fraction_train=0.25, fraction_evaluate=0.0, seed=seed)
        initial = ArrayRecord(quickstart.task.Net().state_dict())
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=4, train_config=ConfigRecord({"lr": 0.01}))
        records = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in strategy.history]
        return sampled(grid), records

    first, again, other = run(seed=7), run(seed=7), run(seed=8)
    assert first == again
    assert len(first[0]) == 4 and all(len(nodes) == 2 for nodes in first[0])
    assert other[0] != first[0]


def test_message_api_krum_leaves_out_a_node_sending_its_change_flipped(quickstart, caplog):
    """Robust aggregation is an option of the Message-API strategies too: with ``aggregation="krum"`` the
    node that sends its change w_k - w flipped and times 10 is left out every round, and the model learns."""
    from flwr.app import Array, Message, RecordDict
    from flwr.clientapp import ClientApp

    hostile = ClientApp()

    @hostile.train()
    def train(msg, context):
        reply = quickstart.client.train(msg, context)
        if context.node_config["partition-id"] == 0:
            sent, arrays = msg.content["arrays"], reply.content["arrays"]
            flipped = {k: sent[k].numpy() - 10 * (a.numpy() - sent[k].numpy()) for k, a in arrays.items()}
            arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in flipped.items()})
            content = RecordDict({"arrays": arrays, "metrics": reply.content["metrics"]})
            return Message(content=content, reply_to=msg)
        return reply

    def run(aggregation: str) -> list[dict]:
        quickstart.task.torch.manual_seed(0)
        strategy = FedAvg(fraction_evaluate=0.0, aggregation=aggregation, seed=0)
        initial = ArrayRecord(quickstart.task.Net().state_dict())
        grid = quickstart.grid(app=hostile, num_nodes=5)
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=3, train_config=ConfigRecord({"lr": 0.01}),
                       evaluate_fn=lambda r, arrays: None)
        return strategy.history

    with caplog.at_level(logging.INFO):
        krum = run("krum")
    assert [r["left_out"] for r in krum[1:]] == [1, 1, 1] and all(r["failures"] == 0 for r in krum[1:])
    left_out = [r.getMessage() for r in caplog.records if "Krum left out" in r.getMessage()]
    assert left_out == [f"round {r}: Krum left out the updates of 1" for r in (1, 2, 3)]  # partition 0's node


def test_message_api_fedavg_inside_flowers_dp_wrapper_sends_the_noised_model_on(quickstart):
    """Flower's Message-API client-level DP wrapper around our FedAvg: round 2's clients get the model the
    wrapper noised (std z C / n around the uniform mean of the clipped updates), not FedAvg's own average."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping as MessageServerSideClipping

    z, clip, nodes = 2.0, 0.5, 4
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=nodes, seed=0)
    clipped, sent = [], {}
    aggregate_train, configure_train = strategy.aggregate_train, strategy.configure_train

    def recording_aggregate(server_round, replies):
        replies = list(replies)
        clipped.extend(flat(r.content["arrays"]) for r in replies if server_round == 1)
        return aggregate_train(server_round, replies)

    def recording_configure(server_round, arrays, config, grid):
        messages = list(configure_train(server_round, arrays, config, grid))
        sent[server_round] = flat(messages[0].content["arrays"])
        return messages

    strategy.aggregate_train, strategy.configure_train = recording_aggregate, recording_configure
    wrapper = MessageServerSideClipping(strategy, z, clip, num_sampled_clients=nodes)
    quickstart.task.torch.manual_seed(0)
    initial = ArrayRecord(quickstart.task.Net().state_dict())
    wrapper.start(grid=quickstart.grid(), initial_arrays=initial, num_rounds=2, train_config=ConfigRecord({"lr": 0.01}))
    mean = np.mean(clipped, axis=0)
    assert np.std(sent[2] - mean) == pytest.approx(z * clip / nodes, rel=0.1)


def flat(record: ArrayRecord) -> np.ndarray:
    """A record's float arrays as one vector (the integer batch-norm counter left out)."""
    return np.concatenate([a.numpy().ravel() for a in record.values() if a.numpy().dtype.kind == "f"])
