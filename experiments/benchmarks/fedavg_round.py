"""FedAvg's orchestration overhead: one round of 10 clients against centralized training on the same samples.

Both sides run in this process on the same data, model and optimiser settings:

- federated: one round of Flower's own server loop (``flwr.server.Server.fit_round``) over 10 in-process
  clients built by the ClientApp's ``client_fn`` (each trains one local epoch on its partition and
  its reply is serialized, validated and aggregated by ``strategies.FedAvg``), then the strategy's
  server-side evaluation on the test set. The clients run one after another, as the centralized
  side's compute does; Flower's default, a thread pool that fits them concurrently, is timed too
  (on a multi-core CPU it can beat the single centralized loop: that is parallelism, not overhead);
- centralized: one epoch of the same SGD over the union of the 10 partitions (the same samples,
  the same number of gradient steps up to rounding), then one evaluation on the test set.

The ratio federated / centralized is what FL's orchestration costs on top of the training itself
(model copies, serialization, context state, aggregation); Ray and gRPC are not in it (``flwr run``
adds them). The two alternate, one of each per repeat after a warm-up of each, so that both see the
same machine; each time printed is the median over --repeats, the ratio is the median of the
per-repeat ratios.

    python -m experiments.benchmarks.fedavg_round [--model mlp|cnn] [--repeats N] [--threads N]

On a CPU shared with other work, --threads 1 gives steadier numbers (see topk_selection.py).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from flwr.server import Server

from experiments.client_app import client_fn
from experiments.federation import client_data, make_strategy, validate_run_config
from experiments.inprocess import make_federation
from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.models import build_model
from flwr_privacy.training import evaluate, pick_device, train_epochs

NUM_CLIENTS = 10


def federated_round(run_config: dict, max_workers: int | None = 1) -> float:
    """Seconds for one FedAvg round (fit of every client, aggregation) plus the server-side evaluation.

    Flower fits a round's clients in a thread pool of ``max_workers`` threads (None: Python's default);
    1 runs them one after another, the same compute as the centralized side.
    """
    random.seed(0)
    cfg = validate_run_config(run_config)
    strategy = make_strategy(cfg, run_config)
    server = Server(client_manager=make_federation(client_fn, run_config, cfg.num_clients), strategy=strategy)
    server.set_max_workers(max_workers)
    server.parameters = strategy.initialize_parameters(server.client_manager())
    start = time.perf_counter()
    parameters, _, (results, failures) = server.fit_round(server_round=1, timeout=None)
    strategy.evaluate(1, parameters)
    elapsed = time.perf_counter() - start
    if failures or len(results) != NUM_CLIENTS:
        raise RuntimeError(f"the round had {len(failures)} failures and {len(results)} results")
    return elapsed


def centralized_epoch(run_config: dict) -> float:
    """Seconds for one epoch of the same SGD over the union of the clients' data, plus one evaluation."""
    cfg = validate_run_config(run_config)
    parts = [client_data(cfg, i) for i in range(cfg.num_clients)]
    pooled = TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    _, test = load_dataset(cfg.dataset, cfg.data_dir)
    device = pick_device(cfg.device)
    model = build_model(cfg.model, pooled.in_shape, 10, cfg.seed)
    start = time.perf_counter()
    train_epochs(model, pooled, cfg.local_epochs, cfg.sgd, device, torch.Generator().manual_seed(cfg.seed))
    evaluate(model, test, device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn", help="a flwr_privacy.models name (default: cnn)")
    parser.add_argument("--dataset", default="mnist-embedded")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run_config = {
        "strategy": "fedavg",
        "model": args.model,
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "num-clients": NUM_CLIENTS,
        "fraction-fit": 1.0,
        "local-epochs": 1,
        "batch-size": args.batch_size,
        "lr": 0.05,
        "device": args.device,
        "output-dir": "",
    }
    cfg = validate_run_config(run_config)
    samples = sum(len(client_data(cfg, i)) for i in range(NUM_CLIENTS))
    print(
        f"FedAvg round vs centralized epoch: model={args.model}, dataset={args.dataset}, {NUM_CLIENTS} clients, "
        f"{samples} samples, batch {args.batch_size}, device {pick_device(args.device)}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    centralized_epoch(run_config), federated_round(run_config)  # warm-up: data loading, allocator, kernels
    times = [
        (centralized_epoch(run_config), federated_round(run_config), federated_round(run_config, None))
        for _ in range(args.repeats)
    ]
    central, federated, threaded = (statistics.median(column) for column in zip(*times))
    ratio = statistics.median(f / c for c, f, _ in times)
    threaded_ratio = statistics.median(t / c for c, _, t in times)
    print(f"centralized: one epoch over the {samples} samples + evaluation: {central:.3f} s")
    print(
        f"federated:   one round of {NUM_CLIENTS} clients one after another, 1 local epoch each + evaluation: "
        f"{federated:.3f} s"
    )
    print(f"ratio federated / centralized (orchestration overhead): {ratio:.2f}x")
    print(
        f"federated with Flower's default thread pool (clients concurrently): {threaded:.3f} s, "
        f"{threaded_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
