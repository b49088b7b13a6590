"""The Flower ClientApp: the configured algorithm's NumPyClient on this SuperNode's partition."""

from __future__ import annotations

from flwr.client import ClientApp
from flwr.common import Context

from experiments.federation import make_client
from flwr_privacy.config import RunConfig


def client_fn(context: Context):
    run_config = dict(context.run_config)
    cfg = RunConfig.from_run_config(run_config)
    return make_client(cfg, run_config, context).to_client()


app = ClientApp(client_fn=client_fn)
