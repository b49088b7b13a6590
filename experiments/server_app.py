"""The Flower ServerApp: builds the configured strategy (resumed from a checkpoint if asked), writes one
result row per round and a checkpoint every ``checkpoint-every`` rounds into the run's folder (its own
by default, logged at the start: ``experiments.results.run_folder``)."""

from __future__ import annotations

from dataclasses import replace
from logging import INFO

from flwr.common import Context, log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from experiments.checkpoint import resumable_strategy
from experiments.federation import check_partitions, validate_run_config
from experiments.results import ResultsWriter, run_folder


def server_fn(context: Context) -> ServerAppComponents:
    run_config = dict(context.run_config)
    cfg = validate_run_config(run_config)
    check_partitions(cfg)
    # The folder resolved once, here, so config.json and the checkpoint name the folder actually used.
    folder = run_folder(cfg.output_dir, context.run_id)
    run_config["output-dir"] = str(folder)
    cfg = replace(cfg, output_dir=str(folder))
    log(INFO, "Run %s writes its results to %s", context.run_id, folder)
    writer = ResultsWriter(folder, run_config)
    strategy, rounds_left = resumable_strategy(cfg, run_config, on_round=writer)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds_left))


app = ServerApp(server_fn=server_fn)
