"""Checkpoints of a run's server, and resuming from one.

After every ``checkpoint-every`` rounds (and the last), ``<output-dir>/checkpoint.pt`` holds the
strategy's whole state (``LegacyStrategy.state_dict``: the global model, the algorithm's own state,
the privacy ledger, the records so far) and the run config that made it, written atomically (a
temporary file renamed over the old one: never half a file). Client sampling and every client's data
order are functions of (seed, round), so nothing else is needed to continue. ``resume=<folder>``
refuses a checkpoint that is missing, unreadable or from another config (naming the keys that differ);
the resumed run writes the rows so far and then its own into its output folder.

What clients held (DGC's u and v, a DSSGD participant's local model, a DP-SGD accountant) lives in
their processes and is gone after a restart: the clients start those afresh and say so in the log,
and the server's privacy ledger charges every node from the worst spend before the restart.

A checkpoint is a pickle (``torch.save``): resume only from checkpoints you wrote.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
# Keys that may differ between a run and the run that resumes it.
NOT_COMPARED = ("resume", "output-dir", "num-rounds", "checkpoint-every")


def comparable(run_config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run_config.items() if k not in NOT_COMPARED}


class Checkpointer:
    """The ``on_round`` hook that writes the strategy's checkpoint every ``every`` rounds and after ``last``."""

    def __init__(self, output_dir: str | Path, run_config: dict[str, Any], every: int, last: int) -> None:
        self.path = Path(output_dir) / CHECKPOINT
        self.run_config, self.every, self.last = dict(run_config), every, last
        self.strategy: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        server_round = int(record["round"])
        if self.strategy is None or not self.every or server_round == 0:
            return
        if server_round % self.every == 0 or server_round == self.last:
            save(self.path, {"format": FORMAT, "run_config": self.run_config, "strategy": self.strategy.state_dict()})


def save(path: Path, content: dict[str, Any]) -> None:
    """Write atomically: to a temporary file beside ``path``, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        torch.save(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def load(folder: str | Path, run_config: dict[str, Any]) -> dict[str, Any]:
    """The strategy state of the checkpoint in ``folder``, checked against ``run_config``; a ValueError in
    one line for a checkpoint that is missing, unreadable, or from another config, or already at the end."""
    path = Path(folder).expanduser() / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"resume={folder!r}: there is no {CHECKPOINT} in that folder")
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
        saved, state = dict(content["run_config"]), content["strategy"]
        if content.get("format") != FORMAT or not isinstance(state, dict) or "round" not in state:
            raise ValueError("not a checkpoint of this format")
    except Exception as err:  # a truncated or foreign file fails in many ways, each one line
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(f"resume={folder!r}: {path} is not a readable checkpoint ({reason})") from None
    ours, theirs = comparable(run_config), comparable(saved)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ[:5])
        raise ValueError(f"resume={folder!r}: the checkpoint is from another config: {shown}")
    done, total = int(state["round"]), int(run_config.get("num-rounds", 0))
    if total and done >= total:
        raise ValueError(f"resume={folder!r}: the checkpoint is at round {done}, num-rounds={total}: nothing to run")
    return state


def resumable_strategy(cfg: Any, run_config: dict[str, Any], on_round: Any) -> tuple[Any, int]:
    """The run's strategy, checkpointed every ``cfg.checkpoint_every`` rounds, resumed from ``cfg.resume``
    if given (its records so far handed to ``on_round`` first); returns it and the rounds left to run."""
    from flwr.common import log

    from experiments.federation import make_strategy

    checkpointer = Checkpointer(cfg.output_dir, run_config, cfg.checkpoint_every, cfg.num_rounds)

    def each_round(record: dict[str, Any]) -> None:
        on_round(record)
        checkpointer(record)

    strategy = make_strategy(cfg, run_config, on_round=each_round)
    if hasattr(strategy, "state_dict"):
        checkpointer.strategy = strategy
    if not cfg.resume:
        return strategy, cfg.num_rounds
    if not hasattr(strategy, "load_state_dict"):
        raise ValueError(f"resume={cfg.resume!r}: strategy={cfg.strategy!r} has no load_state_dict to resume with")
    state = load(cfg.resume, run_config)
    strategy.load_state_dict(state)
    for record in strategy.history:
        on_round(record)
    log(
        30,
        "resumed from %s after round %d; the clients start without what they held (DGC's u and v, a "
        "participant's local model, a DP-SGD accountant); the privacy ledger carries the worst spend over",
        Path(cfg.resume) / CHECKPOINT, state["round"],
    )
    return strategy, cfg.num_rounds - int(state["round"])
