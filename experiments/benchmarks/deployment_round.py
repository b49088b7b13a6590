"""A FedAvg round as a real deployment against the same round in Flower's simulation, and where the
deployment's time goes.

Both halves run the same small config (``--clients`` clients, all of them every round, ``--model``)
of this repository's app, one after the other:

- deployment: a SuperLink and ``--clients`` SuperNodes as separate processes on loopback (insecure,
  free ports, a private FLWR_HOME), then ``flwr run . <that SuperLink>``; every message a node gets
  starts a fresh ``flwr-clientapp`` process (Flower's process isolation);
- simulation: ``flwr run`` with ``num-supernodes=--clients`` (``experiments.flower_run``: Ray, its
  workers started once and kept, each with OMP_NUM_THREADS=1 from its one CPU: Ray sets it;
  ``--node-threads 1`` gives the deployment's SuperNodes, and so their ClientApps, the same).

Seconds per round come from each run's ``rounds.json``: ``wall_time_s`` is a round's whole wall time
as the server sees it, from sampling the clients to the end of the server-side evaluation. Round 1 is
printed apart (the simulation starts Ray's workers in it); the ratio deployment / simulation is over
rounds 2 and later. Every process of both halves is stopped at the end, however the benchmark ends.

``--breakdown`` then times, in fresh processes one at a time, what one ``flwr-clientapp`` process of
ours does (interpreter start, ``import torch``, Flower's ClientApp entry, our modules, the client's
data, its model, one local epoch). The nodes' logs give each message's phases on its node (pull,
SuperExec start, ClientApp process, push); the rest of a round is the server side: the SuperNodes'
3 s pull poll, the ServerApp's 3 s reply poll, aggregation and evaluation.

    python -m experiments.benchmarks.deployment_round [--clients 3] [--rounds 3] [--repeats 1] [--breakdown]

Other work on the machine slows both halves; they run back to back, and ``--repeats`` alternates them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from experiments.flower_run import (
    PROJECT_ROOT,
    FlowerRunError,
    flwr_run,
    free_port,
    interruptible,
    stop_processes,
    write_run_config,
)
from experiments.results import load_rows

BIN = Path(sys.executable).parent


def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a process whose output lines land in ``log``, each prefixed with the time it was read."""
    process = subprocess.Popen(
        command, cwd=log.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def copy() -> None:
        assert process.stdout is not None
        with open(log, "w") as out:
            for line in process.stdout:
                out.write(f"{time.time():.3f} {line}")
                out.flush()

    threading.Thread(target=copy, daemon=True).start()
    return process


def wait_for(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise FlowerRunError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)


def deployment(
    run_config: dict[str, Any], clients: int, folder: Path, node_threads: str = ""
) -> list[dict[str, Any]]:
    """The run on a SuperLink and ``clients`` SuperNodes started here (their ClientApp processes with
    OMP_NUM_THREADS=node_threads if given); its result rows."""
    home = folder / "flwr-home"
    home.mkdir(parents=True)
    # unbuffered: each log line is stamped when it is written, not when a buffer fills
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "here"\n\n[superlink.here]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    link_log = folder / "superlink.log"
    try:
        spawn([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
               "--database", str(folder / "state.db")], link_log, env)
        wait_for("the SuperLink's start", lambda: link_log.exists() and "Uvicorn running" in link_log.read_text(), 120)
        for i in range(clients):
            node = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                    str(free_port()), "--node-config", f"partition-id={i} num-partitions={clients}"]
            spawn(node, folder / f"node{i}.log", {**env, "OMP_NUM_THREADS": node_threads} if node_threads else env)
        # every node connected before the run, so that round 1 does not wait for one
        wait_for("the SuperNodes' connection", lambda: link_log.read_text().count("Activated node_id") >= clients, 120)
        out = folder / "out"
        overrides = write_run_config({**run_config, "output-dir": str(out)}, folder / "run-config.toml")
        run = spawn([str(BIN / "flwr"), "run", str(PROJECT_ROOT), "here", "--stream", "--run-config", str(overrides)],
                    folder / "flwr-run.log", env)
        run.wait(timeout=3600)
        rows = load_rows(out) if (out / "rounds.json").exists() else []
        if len(rows) != run_config["num-rounds"] + 1:
            raise FlowerRunError(f"the deployment's run stopped at {len(rows) - 1} rounds; logs in {folder}")
        return rows
    finally:
        stop_processes(home)


def simulation(run_config: dict[str, Any], clients: int, folder: Path, node_threads: str = "") -> list[dict[str, Any]]:
    """The run as ``flwr run`` on Flower's simulation engine; its result rows (output in a log file).
    ``node_threads`` is the deployment's: Ray sets its workers' OMP_NUM_THREADS itself."""
    with open(folder / "flwr-run.log", "w") as log, contextlib.redirect_stdout(log):
        return flwr_run({**run_config, "output-dir": str(folder / "out")}, num_supernodes=clients, cpus_per_client=1)


def seconds(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Round 1's wall time and the mean of the later rounds'."""
    times = [r["wall_time_s"] for r in rows if r["round"] >= 1]
    return times[0], statistics.mean(times[1:])


# What a SuperNode logs as it handles a message, in order; the time between two marks is a phase.
MARKS = ("Receiving: train message", "Received successfully", "Start `flwr-clientapp` process",
         "Sending: train message", "Sent successfully")
PHASES = ("pull the message's content from the SuperLink", "wait for the SuperExec to start a ClientApp (1 s poll)",
          "the ClientApp process, then the node's next push (3 s poll)", "push the reply to the SuperLink")


def message_phases(folder: Path) -> list[list[float]]:
    """For each message a node handled: seconds between successive MARKS in the node's log, then the total."""
    messages = []
    for log in sorted(folder.glob("node*.log")):
        stamps: list[float] = []
        for line in log.read_text().splitlines():
            at = len(stamps)
            if at < len(MARKS) and MARKS[at] in line:
                stamps.append(float(line.split(" ", 1)[0]))
            if len(stamps) == len(MARKS):
                messages.append([b - a for a, b in zip(stamps, stamps[1:])] + [stamps[-1] - stamps[0]])
                stamps = []
    return messages


# One ClientApp process of ours, stage by stage: what Flower's flwr-clientapp imports first (its entry
# point), then the app's module (ours), then what the client does with a message.
STAGES = r"""
import json, sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
from flwr.supernode.cli import flwr_clientapp
t.append(time.perf_counter())
import experiments.client_app
t.append(time.perf_counter())
from experiments.federation import client_data, validate_run_config
from flwr_privacy.models import build_model
from flwr_privacy.training import train_epochs
cfg = validate_run_config(json.loads(sys.argv[1]))
data = client_data(cfg, 0)
t.append(time.perf_counter())
model = build_model(cfg.model, data.in_shape, 10, cfg.seed)
t.append(time.perf_counter())
train_epochs(model, data, cfg.local_epochs, cfg.sgd, torch.device("cpu"), torch.Generator().manual_seed(0))
t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])] + [t[-1] - t[0]]))
"""
STAGE_NAMES = ("import torch", "import flwr (flwr-clientapp's entry)", "import experiments.client_app (ours)",
               "client data (load + partition)", "model build", "one local epoch")


def breakdown(run_config: dict[str, Any], repeats: int) -> None:
    """Median seconds of each stage of STAGES in fresh processes, with torch's default threads and with
    OMP_NUM_THREADS=1 (what Ray gives a simulation's clients with client-resources-num-cpus=1)."""
    columns = {}
    for threads in ("default", "1"):
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        if threads != "default":
            env["OMP_NUM_THREADS"] = threads
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", STAGES, json.dumps(run_config)], cwd=PROJECT_ROOT, env=env,
                                 capture_output=True, text=True, check=True).stdout
            wall = time.perf_counter() - start
            *stages, inside = json.loads(out.splitlines()[-1])
            samples.append([wall - inside, *stages, wall])
        columns[threads] = [statistics.median(column) for column in zip(*samples)]
    print(f"one fresh ClientApp process of ours, stage by stage (median of {repeats}, one process at a time):")
    print(f"  {'':46s} {'threads: default':>17s} {'OMP_NUM_THREADS=1':>18s}")
    for i, name in enumerate(("interpreter start and exit (torch's teardown)", *STAGE_NAMES, "total")):
        print(f"  {name:46s} {columns['default'][i]:15.2f} s {columns['1'][i]:16.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="at least 2: round 1 is reported apart")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--repeats", type=int, default=1, help="deployment and simulation, alternating")
    parser.add_argument("--node-threads", default="", help="OMP_NUM_THREADS for the deployment's SuperNodes "
                        "(default: unset, torch's own choice; the simulation's Ray workers get their num-cpus, 1)")
    parser.add_argument("--breakdown", action="store_true", help="also time a ClientApp process stage by stage")
    parser.add_argument("--keep", action="store_true", help="keep the logs and results (the folder printed first)")
    args = parser.parse_args()
    run_config = {"strategy": "fedavg", "model": args.model, "num-clients": args.clients, "fraction-fit": 1.0,
                  "min-fit-clients": args.clients, "num-rounds": args.rounds, "device": "cpu"}
    from flwr_privacy.data import load_dataset

    load_dataset("mnist-embedded", "")  # the data set's cache, as any run after the first finds it
    root = Path(tempfile.mkdtemp(prefix="fp-deployment-round-"))
    import flwr_privacy

    print(f"FedAvg, model={args.model}, {args.clients} clients every round, {args.rounds} rounds; app {PROJECT_ROOT} "
          f"(flwr_privacy from {Path(flwr_privacy.__file__).parent}); SuperNodes' OMP_NUM_THREADS "
          f"{args.node_threads or 'unset'}; logs in {root}")
    with interruptible():  # SIGINT and SIGTERM leave through the clean-up of each half
        for repeat in range(args.repeats):
            figures = {}
            for name, half in (("deployment", deployment), ("simulation", simulation)):
                folder = root / f"{repeat}-{name}"
                folder.mkdir()
                figures[name] = seconds(half(run_config, args.clients, folder, args.node_threads))
                first, later = figures[name]
                print(f"{name:10s}: round 1 {first:6.2f} s, later rounds {later:6.2f} s per round")
            messages = message_phases(root / f"{repeat}-deployment")
            medians = [statistics.median(column) for column in zip(*messages)]
            print(f"deployment: each message on its node, median over {len(messages)} messages:")
            for phase, value in zip((*PHASES, "received -> reply sent"), medians):
                print(f"  {phase:60s} {value:6.2f} s")
            ratio = figures["deployment"][1] / figures["simulation"][1]
            print(f"ratio deployment / simulation (rounds 2 and later): {ratio:.1f}x")
        if args.breakdown:
            breakdown(run_config, repeats=3)
    if not args.keep:  # a failed run keeps its logs (the error names the folder)
        shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
