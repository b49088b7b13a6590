"""The Flower ServerApp: builds the configured strategy (resumed from a checkpoint if asked), writes one
result row per round and a checkpoint every ``checkpoint-every`` rounds."""

from __future__ import annotations

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from experiments.checkpoint import resumable_strategy
from experiments.federation import check_partitions, validate_run_config
from experiments.results import ResultsWriter


def server_fn(context: Context) -> ServerAppComponents:
    run_config = dict(context.run_config)
    cfg = validate_run_config(run_config)
    check_partitions(cfg)
    writer = ResultsWriter(cfg.output_dir, run_config)
    strategy, rounds_left = resumable_strategy(cfg, run_config, on_round=writer)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds_left))


app = ServerApp(server_fn=server_fn)
