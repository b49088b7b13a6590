"""The Flower ServerApp: builds the configured strategy and writes one result row per round."""

from __future__ import annotations

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from experiments.federation import check_partitions, make_strategy, validate_run_config
from experiments.results import ResultsWriter


def server_fn(context: Context) -> ServerAppComponents:
    run_config = dict(context.run_config)
    cfg = validate_run_config(run_config)
    check_partitions(cfg)
    writer = ResultsWriter(cfg.output_dir, run_config)
    strategy = make_strategy(cfg, run_config, on_round=writer)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=cfg.num_rounds))


app = ServerApp(server_fn=server_fn)
