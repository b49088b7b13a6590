"""What SecAgg+ costs, and that it changes nothing else: the main job with and without secure aggregation.

The main job's setup (``python -m experiments.run``: FedAvg, the FedAvg paper's CNN, the 5,000 embedded
MNIST images, 10 clients of which 5 train each round, 10 rounds, seed 0), run twice in this process as a
Message-API app over an ``InProcessGrid``: once with ``flwr_privacy.strategies.message.FedAvg`` as it is,
once with ``secagg=SecAggPlus(...)`` and ``secaggplus_mod`` on the ClientApp. The clients are the
project's own (``experiments.federation.make_client``: the run config's partition, model, optimiser and
seed), behind ``clients.message.train_reply``; the server scores every round's model on the test set.

``--strategy dgc`` runs DGC instead (the run config's ``dgc.*``: the paper's warm-up to 99.9 %): under
secure aggregation its clients send their v at one random coordinate set per round, the same for all
(``flwr_privacy.algorithms.dgc.shared_selection``), instead of each its own top-k.

Printed per run: the final accuracy after the run's rounds, the mean bytes up and down per client per round
as the grid carried them (SecAgg+'s keys, shares and masked vectors included), and the server's own SecAgg+
time per round. Seconds come from ``--repeats`` pairs of one-round runs, plain and secure alternating after
a warm-up of each, so that both see the same machine: the median seconds of each, and the median of the
per-pair ratios. The clients run one after another in this process, so a round's seconds are the sum of
the clients' work (training, masking) and the server's. ``--clients 50`` runs 50 clients (25 a round);
``--rounds`` shortens the accuracy runs. On a CPU shared with other work, ``--threads 1`` is steadier.

    python -m experiments.benchmarks.secagg_round [--strategy fedavg|dgc] [--clients 10] [--rounds 10]
        [--num-shares 1.0] [--threshold 0.5] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr_privacy.clients.message import train_reply
from flwr_privacy.clients.secagg import secaggplus_mod
from flwr_privacy.strategies.message import DGC, FedAvg, SecAggPlus
from hydra import compose, initialize_config_dir

from experiments.federation import make_client, model_for, server_test_set, validate_run_config
from experiments.inprocess import InProcessGrid
from flwr_privacy import registry
from flwr_privacy.config import RunConfig
from flwr_privacy.training import evaluate, pick_device

CONF = Path(__file__).resolve().parents[1] / "conf"


def main_job_config(num_clients: int, num_rounds: int | None, strategy: str = "fedavg") -> dict[str, Any]:
    """The main job's run config (the Hydra defaults), with ``num_clients``, ``num_rounds`` and the strategy
    (``dgc``: its config group, the paper's warm-up to 99.9 %) set."""
    from experiments.run import to_run_config

    overrides = [f"num_clients={num_clients}", f"strategy={strategy}"]
    overrides += [f"num_rounds={num_rounds}"] if num_rounds else []
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return to_run_config(compose(config_name="config", overrides=overrides))


def client_app(secure: bool) -> ClientApp:
    """The project's FedAvg client on each node's partition, as a Message-API ClientApp."""
    app = ClientApp(mods=[secaggplus_mod] if secure else [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run_config = dict(context.run_config)
        cfg = RunConfig.from_run_config(run_config)
        client = make_client(cfg, run_config, context)
        return train_reply(msg, client.model, client, named=cfg.strategy == "fedavg")

    return app


def run(run_config: dict[str, Any], secagg: SecAggPlus | None) -> dict[str, Any]:
    """One run of the main job; its final accuracy, per-round seconds and bytes."""
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = validate_run_config(run_config)
    test = server_test_set(cfg)
    model = model_for(cfg, run_config, test.in_shape)
    scorer = model_for(cfg, run_config, test.in_shape)
    device = pick_device(cfg.device)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        scorer.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(scorer, test, device)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    options: dict[str, Any] = dict(
        fraction_train=cfg.fraction_fit, min_train_nodes=max(2, cfg.min_fit_clients), min_available_nodes=2,
        fraction_evaluate=0.0, seed=cfg.seed, secagg=secagg,
    )
    if cfg.strategy == "dgc":
        strategy: FedAvg | DGC = DGC(lr=cfg.lr, config=registry.get("dgc").config(run_config, cfg), **options)
    else:
        strategy = FedAvg(**options)
    grid = InProcessGrid(client_app(secagg is not None), run_config, cfg.num_clients)
    started = time.perf_counter()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=cfg.num_rounds,
                   evaluate_fn=evaluate_fn)
    elapsed = time.perf_counter() - started
    rounds = strategy.history[1:]
    failures = sum(r["failures"] for r in rounds)
    if failures:
        raise SystemExit(f"error: {failures} client failures in the {'secure' if secagg else 'plain'} run")
    return {
        "accuracy": rounds[-1]["test_accuracy"],
        "seconds": statistics.mean(r["wall_time_s"] for r in rounds),
        "total_seconds": elapsed,
        "up": statistics.mean(r["bytes_up_per_client"] for r in rounds),
        "up_last": rounds[-1]["bytes_up_per_client"],
        "down": statistics.mean(r["bytes_down_per_client"] for r in rounds),
        "secagg_seconds": statistics.mean(r.get("secagg_seconds", 0.0) for r in rounds),
        "clients": rounds[-1]["clients"],
        "rounds": len(rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="fedavg", choices=("fedavg", "dgc"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=0, help="rounds per run (0: the main job's 10)")
    parser.add_argument("--num-shares", type=float, default=1.0, help="SecAggPlus num_shares (>= 3: a count)")
    parser.add_argument("--threshold", type=float, default=0.5, help="reconstruction_threshold (>= 2: a count)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of one-round runs timed")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.clients < 4 or args.rounds < 0 or args.repeats < 1:
        sys.exit("error: --clients must be at least 4, --rounds at least 0, --repeats at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    as_count = {"num_shares": args.num_shares >= 3, "reconstruction_threshold": args.threshold >= 2}
    try:
        secagg = SecAggPlus(
            num_shares=int(args.num_shares) if as_count["num_shares"] else args.num_shares,
            reconstruction_threshold=int(args.threshold) if as_count["reconstruction_threshold"] else args.threshold,
        )
    except ValueError as err:
        sys.exit(f"error: {err}")
    run_config = main_job_config(args.clients, args.rounds or None, args.strategy)
    one_round = main_job_config(args.clients, 1, args.strategy)
    run(one_round, None), run(one_round, secagg)  # warm-up: data loading and caches, both code paths
    pairs = [(run(one_round, None)["seconds"], run(one_round, secagg)["seconds"]) for _ in range(args.repeats)]
    plain = run(run_config, None)
    secure = run(run_config, secagg)
    print(f"{args.strategy}, {args.clients} clients, {plain['clients']} a round, {secagg}")
    print(f"{'':8} {'accuracy':>9} {'B up/client':>12} {'B down/client':>14} {'SecAgg+ server s':>17} {'s/round':>8}")
    for name, row, seconds in (("plain", plain, [p for p, _ in pairs]), ("secagg", secure, [s for _, s in pairs])):
        print(f"{name:8} {row['accuracy']:9.4f} {row['up']:12.0f} {row['down']:14.0f} "
              f"{row['secagg_seconds']:17.2f} {statistics.median(seconds):8.2f}")
    ratio = statistics.median(s / p for p, s in pairs)
    print(f"bytes up per client in the last round: plain {plain['up_last']:.0f}, secagg {secure['up_last']:.0f} "
          f"({secure['up_last'] / plain['up_last']:.2f}x)")
    print(f"ratio secure / plain: seconds {ratio:.2f}x (median of {args.repeats} pairs), bytes up "
          f"{secure['up'] / plain['up']:.2f}x, bytes down {secure['down'] / plain['down']:.2f}x; accuracy "
          f"difference {100 * (secure['accuracy'] - plain['accuracy']):+.2f} points after {plain['rounds']} rounds")


if __name__ == "__main__":
    main()
