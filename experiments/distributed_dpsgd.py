"""Federated sample-level DP-SGD with the noise added in shares under SecAgg+: a centralized run's epsilon.

    python -m experiments.distributed_dpsgd experiment=fedavg_cifar10_scatterlinear_iid_distributed_dpsgd
    python -m experiments.distributed_dpsgd experiment=... dpsgd.target_epsilon=1 num_rounds=100

With local DP-SGD (``python -m experiments.run`` with ``dpsgd.enabled``) each client adds all the noise its
own epsilon needs, because the server sees its update alone: the average of n clients' updates then
carries sqrt(n) times the noise of one party training on all their data at the same epsilon. Under secure
aggregation the server sees only the sum, so each client adds a share, N(0, sigma^2 C^2 / (n - t))
(``flwr_privacy.privacy.distributed.DistributedDPSGD``), and the sum of the n clients' steps is one DP-SGD
step over the union of their Poisson lots, with the noise a centralized run adds. One lot a round (a sum
of several local steps at different clients' weights is not that mechanism), and the run config's
``momentum`` is the server's (FedAvgM: v <- beta v + Delta), so that the run is centralized DP-SGD with
momentum, step for step. The server's ledger charges every client one step a round at the noise multiplier
the round's sum carried (less than sigma if a client dropped out after it was given its share).

The run config is the experiment's (``batch_size`` is each client's expected lot; the noise for
``dpsgd.target_epsilon`` is derived for ``num_rounds`` steps); the clients are the project's own
(``experiments.federation.make_client``), each built once, behind ``secaggplus_mod`` on an
``InProcessGrid``; ``dpsgd.tolerated`` is not a run-config key: ``--tolerated T`` sets t. Printed every
``evaluate_every`` rounds: the server's test accuracy and the ledger's epsilon; exit 1 if a round failed.
The run's folder (``--out``, default ``outputs/<date>/<time>``, printed at the end) holds what
``experiments.run`` writes: rounds.csv, rounds.json, accuracy.png and config.json, with
``secagg.dp = "distributed-dpsgd"`` and ``secagg.tolerated`` added (``experiments.dpsgd_plot`` draws it).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr_privacy.clients.message import train_reply
from flwr_privacy.clients.secagg import secaggplus_mod
from flwr_privacy.strategies.base import FederationError
from flwr_privacy.strategies.message import DistributedDPSGD, FedAvg, SecAggPlus
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from experiments.federation import (
    dpsgd_plan,
    make_client,
    model_for,
    server_test_set,
    validate_run_config,
)
from experiments.inprocess import InProcessGrid
from experiments.results import ResultsWriter, plot_rounds
from flwr_privacy.config import RunConfig
from flwr_privacy.privacy.dpsgd import DPSGDPlan
from flwr_privacy.training import evaluate, pick_device

CONF = Path(__file__).resolve().parent / "conf"


def run_config_of(overrides: list[str]) -> dict[str, Any]:
    """The Hydra config composed with the overrides, as Flower's flat run config (paths from the cwd)."""
    from experiments.run import to_run_config

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            return to_run_config(compose(config_name="config", overrides=overrides), Path.cwd())
    except (HydraException, OmegaConfBaseException) as err:  # a bad override: its first line says which
        raise ValueError(str(err).splitlines()[0]) from None


def one_lot_plan(cfg: RunConfig, run_config: dict[str, Any]) -> DPSGDPlan:
    """The run's DP-SGD as one lot a round, its noise (the sum's) derived for ``num_rounds`` steps."""
    plan = dpsgd_plan(cfg, run_config, local_steps=1)
    if plan is None:
        raise ValueError("dpsgd.enabled is false: distributed DP-SGD needs a DP-SGD plan (dpsgd.enabled=true)")
    return plan


def client_app(run_config: dict[str, Any]) -> ClientApp:
    """The project's FedAvg client on each node's partition, built once per node (its data and features
    stay in memory), behind SecAgg+'s mod."""
    app = ClientApp(mods=[secaggplus_mod])
    clients: dict[int, Any] = {}
    cfg = RunConfig.from_run_config(run_config)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid not in clients:
            clients[pid] = make_client(cfg, run_config, context)
        client = clients[pid]
        client.state = context.state
        return train_reply(msg, client.model, client, named=True)

    return app


def run(run_config: dict[str, Any], tolerated: int = 0, out: Path | None = None) -> list[dict[str, Any]]:
    """The federation, round by round, each round's record written to the folder ``out`` as it closes (none
    without); the strategy's history (round 0 first)."""
    cfg = validate_run_config(run_config)
    if cfg.strategy != "fedavg":
        raise ValueError(f"strategy={cfg.strategy}: distributed DP-SGD runs with FedAvg")
    plan = one_lot_plan(cfg, run_config)
    torch.manual_seed(cfg.seed)
    test = server_test_set(cfg)
    scorer = model_for(cfg, run_config, test.in_shape)
    device = pick_device(cfg.device)
    started = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round % max(1, cfg.evaluate_every) and server_round != cfg.num_rounds:
            return None
        scorer.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(scorer, test, device)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    writer = None
    if out is not None:
        writer = ResultsWriter(out, {**run_config, "output-dir": str(out), "secagg.dp": "distributed-dpsgd",
                                     "secagg.tolerated": tolerated})

    def report(record: dict[str, Any]) -> None:
        if writer is not None:
            writer(record)
        if record.get("test_accuracy") is not None:
            print(f"round {record['round']}: test accuracy {record['test_accuracy']:.4f}, epsilon "
                  f"{record.get('epsilon_total_max', 0.0):.3f}, {time.perf_counter() - started:.0f} s", flush=True)

    secagg = SecAggPlus(dp=DistributedDPSGD(tolerated=tolerated))
    strategy = FedAvg(
        secagg=secagg, dpsgd=plan, server_momentum=cfg.momentum, fraction_train=cfg.fraction_fit,
        min_train_nodes=max(2, cfg.min_fit_clients), min_available_nodes=2, fraction_evaluate=0.0, seed=cfg.seed,
        on_round=report,
    )
    model = model_for(cfg, run_config, test.in_shape)
    print(f"distributed DP-SGD: {cfg.num_clients} clients, sum's noise multiplier "
          f"{plan.config.noise_multiplier:.4g}, lots of {plan.batch_size} per client "
          f"(q = {plan.batch_size / plan.min_examples:.4g}), C = {plan.config.max_grad_norm:g}, lr {cfg.lr:g}, "
          f"server momentum {cfg.momentum:g}, {cfg.num_rounds} rounds", flush=True)
    strategy.start(grid=InProcessGrid(client_app(run_config), run_config, cfg.num_clients),
                   initial_arrays=ArrayRecord(model.state_dict()), num_rounds=cfg.num_rounds, evaluate_fn=evaluate_fn)
    if writer is not None:
        plot_rounds(writer.rows, writer.dir / "accuracy.png", title=writer.dir.name)
    return strategy.history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerated", type=int, default=0, help="t: drop-outs or colluders the noise survives")
    parser.add_argument("--out", default="", help="the run's folder (default: outputs/<date>/<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m experiments.run")
    args = parser.parse_args(argv)
    out = Path(args.out or Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).resolve()
    try:
        history = run(run_config_of(args.overrides), args.tolerated, out)
    except (ValueError, FederationError) as err:
        sys.exit(f"error: {err}")
    rounds = history[1:]
    failures = sum(r["failures"] for r in rounds)
    last = rounds[-1] if rounds else {}
    print(f"final: test accuracy {last.get('test_accuracy', float('nan')):.4f}, epsilon "
          f"{last.get('epsilon_total_max', float('nan')):.3f} (delta {last.get('privacy_delta', 0):g}), "
          f"upload per client per round {last.get('bytes_up_per_client', 0):.0f} B, {failures} client failures")
    print(f"results: {out}")
    if failures or not rounds:
        sys.exit(f"error: {failures} client failures")


if __name__ == "__main__":
    main()
