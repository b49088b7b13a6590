"""Hostile clients against each strategy: final accuracy with and without the attack, and robust aggregation's cost.

Ten clients on the embedded MNIST (an MLP, in process); ``--attackers`` of them (client 0, 1, ...) send an
attack of ``experiments.attacks`` instead of their reply. Each row is one run against the attack-free run
of the same settings, measured in the same process; the last table is the round time of each robust rule
as a ratio to plain averaging over the same attack-free federation.

    python -m experiments.benchmarks.attacks                       # the one-attacker table, default bounds
    python -m experiments.benchmarks.attacks --attackers 2 --aggregation median --attacks "sign flipped x10"
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

from flwr.common.logger import FLOWER_LOGGER
from flwr_privacy.strategies.base import FederationError

from experiments.attacks import ATTACKS, SPARSE_ONLY, attack
from experiments.client_app import client_fn
from experiments.federation import make_strategy, validate_run_config
from experiments.inprocess import make_federation, run_inprocess

# Settings each strategy learns in within a minute on two CPU cores (the strategy tests' scale).
SETTINGS: dict[str, dict[str, Any]] = {
    "fedavg": {"num-rounds": 3, "fraction-fit": 1.0, "batch-size": 20, "lr": 0.1},
    "dgc": {
        "num-rounds": 30, "fraction-fit": 1.0, "local-steps": 5, "lr": 0.02, "dgc.warmup-sparsities": "0.75,0.9375"
    },
    # DSSGD adds every participant's upload: two per round keep the step stable at this learning rate.
    "dssgd": {"num-rounds": 15, "lr": 0.01, "fraction-fit": 0.2, "dssgd.theta-u": 0.1, "dssgd.gamma": 0.01},
}
BASE = {
    "model": "mlp",
    "dataset": "mnist-embedded",
    "num-clients": 10,
    "batch-size": 32,
    "device": "cpu",
    "seed": 0,
}


def run(strategy: str, attack_name: str | None, attackers: int, **overrides: Any) -> list[dict[str, Any]]:
    """One in-process federation, ``attackers`` of its clients sending ``attack_name``; its round records."""
    random.seed(0)
    run_config = {**BASE, "strategy": strategy, **SETTINGS[strategy], "output-dir": "", **overrides}
    cfg = validate_run_config(run_config)
    built = make_strategy(cfg, run_config)
    manager = make_federation(client_fn, run_config, cfg.num_clients)
    proxies = sorted(manager.all().values(), key=lambda p: int(p.cid))
    if attack_name is not None:
        for proxy in proxies[:attackers]:
            attack(proxy, attack_name, sparse=strategy != "fedavg")
    aggregate_fit, spent = built.aggregate_fit, []

    def timed_aggregate_fit(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return aggregate_fit(*args)
        finally:
            spent.append(time.perf_counter() - started)

    built.aggregate_fit = timed_aggregate_fit
    run_inprocess(built, manager, cfg.num_rounds)
    for record, seconds in zip(built.history[1:], spent):
        record["aggregate_s"] = seconds
    return built.history


# Rounds averaged into a run's final accuracy: DGC's and DSSGD's short runs swing by several points from one
# round to the next (a small test set, a large step), so their last rounds are averaged.
SMOOTH = {"fedavg": 1, "dgc": 5, "dssgd": 5}


def final_accuracy(strategy: str, history: list[dict[str, Any]]) -> float:
    """The mean test accuracy of the run's last SMOOTH[strategy] rounds."""
    last = [r["test_accuracy"] for r in history[-SMOOTH.get(strategy, 1) :]]
    return sum(last) / len(last)


def seconds_per_round(history: list[dict[str, Any]], key: str = "wall_time_s") -> float:
    rounds = history[1:]
    return sum(r[key] for r in rounds) / len(rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="fedavg,dgc,dssgd")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated names of experiments.attacks")
    parser.add_argument("--attackers", type=int, default=1)
    parser.add_argument("--aggregation", default="mean")
    parser.add_argument("--num-malicious", type=int, default=1, help="krum's f (num-malicious-clients)")
    parser.add_argument("--cost", action="store_true", help="also time each robust rule against plain averaging")
    args = parser.parse_args(argv)
    FLOWER_LOGGER.setLevel(logging.ERROR)
    strategies = args.strategies.split(",")
    names = [n.strip() for n in args.attacks.split(",") if n.strip()]
    robust = {"aggregation": args.aggregation, "num-malicious-clients": args.num_malicious}
    print(f"{args.attackers} attacker(s) of 10, " + ", ".join(f"{k}={v}" for k, v in robust.items()))
    print("| strategy | attack | accuracy attacked | accuracy attack-free (mean) | difference | rejected per round |")
    print("|---|---|---|---|---|---|")
    for strategy in strategies:
        clean = final_accuracy(strategy, run(strategy, None, 0))
        for name in names:
            if name in SPARSE_ONLY and strategy == "fedavg":
                continue
            try:
                history = run(strategy, name, args.attackers, **robust)
            except FederationError as err:  # the model went so far off that every reply is now rejected
                print(f"| {strategy} | {name} | run stopped: {err} | {clean:.4f} | - | - |")
                continue
            final = final_accuracy(strategy, history)
            rejected = sum(r["failures"] for r in history[1:]) / (len(history) - 1)
            print(f"| {strategy} | {name} | {final:.4f} | {clean:.4f} | {final - clean:+.4f} | {rejected:.1f} |")
    if args.cost:
        print("\n| strategy | aggregation | s per round | ratio to mean | s aggregating | ratio to mean | accuracy |")
        print("|---|---|---|---|---|---|---|")
        for strategy in strategies:
            base: tuple[float, float] | None = None
            for rule in ("mean", "median", "trimmed_mean", "norm_bound", "krum"):
                try:
                    history = run(strategy, None, 0, aggregation=rule)
                except ValueError as err:  # krum below 2f + 3 clients a round (DSSGD's two participants)
                    print(f"| {strategy} | {rule} | refused: {err} | | | | |")
                    continue
                seconds, aggregating = seconds_per_round(history), seconds_per_round(history, "aggregate_s")
                base = base or (seconds, aggregating)
                print(
                    f"| {strategy} | {rule} | {seconds:.3f} | {seconds / base[0]:.2f} | {aggregating:.4f} "
                    f"| {aggregating / base[1]:.2f} | {final_accuracy(strategy, history):.4f} |"
                )


if __name__ == "__main__":
    main()
