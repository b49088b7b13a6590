"""Train handlers for Message-API ClientApps (``@app.train()``), one per algorithm.

Called from the app's own train function with its own model, DataLoader (tuple or dict batches, or
any iterable), loss and device; each returns the reply Message. State that outlives a round (DGC's u
and v, a participant's local copy) lives in ``context.state``. For example::

    @app.train()
    def train(msg: Message, context: Context):
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        trainloader, _ = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
        return dgc_train(msg, context, model, trainloader, loss_fn=torch.nn.CrossEntropyLoss())

The algorithm's settings come with the message from the strategy (``flwr_privacy.strategies.message``).
The handlers are the legacy ``NumPyClient``s (``flwr_privacy.clients``) behind a Message-API front.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr_privacy.clients.dgc import DGCClient
from flwr_privacy.clients.dssgd import DSSGDClient
from flwr_privacy.clients.fedavg import FedAvgClient
from torch import nn

from flwr_privacy.wire import wire_keys


def arrays_for_model(record: Any, model: nn.Module) -> list[np.ndarray]:
    """The message's arrays in wire order: by the model's keys (the global model), or a list record as sent."""
    if not isinstance(record, ArrayRecord):
        raise ValueError(
            "the message carries no ArrayRecord under 'arrays': is the ServerApp's strategy one of "
            "flwr_privacy.strategies.message?"
        )
    keys = list(record.keys())
    if keys == [str(i) for i in range(len(keys))]:
        return record.to_numpy_ndarrays()
    missing = [k for k in wire_keys(model) if k not in record]
    if missing:
        raise ValueError(f"the global model sent lacks this model's entries {missing[:5]}: a different model?")
    return [record[k].numpy() for k in wire_keys(model)]


def train_reply(msg: Message, model: nn.Module, client: NumPyClient, named: bool = False) -> Message:
    """Run ``client.fit`` on the message's arrays and config; the reply carries the arrays and metrics
    (with Flower's ``num-examples``). ``named``: the arrays under the model's keys, as Flower's apps send."""
    content = msg.content
    config: dict[str, Any] = dict(content.config_records.get("config", {}))
    arrays, num_examples, metrics = client.fit(arrays_for_model(content.array_records.get("arrays"), model), config)
    if named:
        record = ArrayRecord(array_dict={k: Array(np.asarray(a)) for k, a in zip(wire_keys(model), arrays)})
    else:
        record = ArrayRecord([np.asarray(a) for a in arrays])
    values: dict[str, Any] = {**metrics, "num-examples": num_examples}
    reply = RecordDict({"arrays": record, "metrics": MetricRecord(values)})
    return Message(content=reply, reply_to=msg)


def partition_id(context: Context) -> int:
    return int(context.node_config.get("partition-id", context.node_id))


def fedavg_train(msg: Message, context: Context, model: nn.Module, data: Any, **options: Any) -> Message:
    """FedAvg's local update on the app's model and data; ``options`` are ``FedAvgClient``'s
    (``loss_fn``, ``device``, ``settings``, ``local_epochs``, or the app's own ``train_fn(model)``)."""
    options.setdefault("state", context.state)
    return train_reply(msg, model, FedAvgClient(model, data, **options), named=True)


def dgc_train(msg: Message, context: Context, model: nn.Module, data: Any, **options: Any) -> Message:
    """DGC's local gradients, momentum correction and top-k on the app's model and data; ``options`` are
    ``DGCClient``'s (``loss_fn``, ``device``, ``local_steps`` ...). u and v persist in ``context.state``."""
    options.setdefault("seed", partition_id(context))
    return train_reply(msg, model, DGCClient(model, data, state=context.state, **options))


def dssgd_train(msg: Message, context: Context, model: nn.Module, data: Any, **options: Any) -> Message:
    """DSSGD's local training and selective upload on the app's model and data; ``options`` are
    ``DSSGDClient``'s (``loss_fn``, ``device``, ``settings``, ``local_epochs``, or the app's ``train_fn``)."""
    options.setdefault("partition_id", partition_id(context))
    options.setdefault("seed", partition_id(context))
    return train_reply(msg, model, DSSGDClient(model, data, state=context.state, **options))
