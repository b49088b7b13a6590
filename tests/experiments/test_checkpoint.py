"""A run's server checkpointed every round and resumed from it: the same results as a run never stopped
(FedAvg's clients hold nothing between rounds), and a checkpoint that does not fit is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.checkpoint import CHECKPOINT, resumable_strategy
from experiments.client_app import client_fn
from experiments.federation import validate_run_config
from experiments.inprocess import make_federation, run_inprocess
from experiments.results import ResultsWriter, load_rows

BASE = {"model": "mlp", "num-clients": 4, "fraction-fit": 0.5, "num-rounds": 4, "batch-size": 32, "lr": 0.1,
        "device": "cpu", "seed": 3}
COMPARED = ("round", "test_accuracy", "test_loss", "clients", "accepted", "bytes_up", "bytes_down", "cum_bytes_up",
            "epsilon_total_max")


class Stop(Exception):
    pass


def run(folder: Path, stop_after: int | None = None, **overrides) -> list[dict]:
    run_config = {**BASE, "output-dir": str(folder), **overrides}
    cfg = validate_run_config(run_config)
    writer = ResultsWriter(folder, run_config, plot=False)

    def on_round(record):
        writer(record)
        if stop_after is not None and record["round"] == stop_after:
            raise Stop  # the server dies after the round's rows, before its checkpoint: resumed from the one before

    strategy, left = resumable_strategy(cfg, run_config, on_round)
    try:
        run_inprocess(strategy, make_federation(client_fn, run_config, cfg.num_clients), left)
    except Stop:
        pass
    return load_rows(folder)


def compared(rows):
    return [{k: r.get(k) for k in COMPARED} for r in rows]


@pytest.mark.parametrize("strategy, extra", [("fedavg", {}), ("fedavg", {"dpsgd.enabled": True, "batch-size": 50})],
                         ids=["fedavg", "fedavg-dp-sgd"])
def test_a_resumed_run_ends_with_the_results_of_one_never_stopped(tmp_path, strategy, extra):
    extra = {"strategy": strategy, "dpsgd.insecure-seeded-noise": True, **extra}
    whole = run(tmp_path / "whole", **extra)
    stopped = run(tmp_path / "stopped", stop_after=3, **extra)
    assert [r["round"] for r in stopped] == [0, 1, 2, 3]
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "stopped"), **extra)
    assert [r["round"] for r in resumed] == [0, 1, 2, 3, 4]
    if "dpsgd.enabled" not in extra:
        assert compared(resumed) == compared(whole)
    else:  # clients' accountants start afresh; the server's ledger never under-reports
        assert compared(resumed)[:3] == compared(whole)[:3]
        assert resumed[-1]["epsilon_total_max"] >= whole[-1]["epsilon_total_max"]


def test_a_resumed_dgc_run_sends_each_new_client_the_dense_model_first(tmp_path):
    extra = {"strategy": "dgc", "downlink": "sparse", "fraction-fit": 1.0, "dgc.warmup-sparsities": ""}
    stopped = run(tmp_path / "stopped", stop_after=2, **extra)  # checkpoint after round 1
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "stopped"), **extra)
    assert [r["round"] for r in resumed] == [0, 1, 2, 3, 4]
    assert all(r["failures"] == 0 for r in resumed)
    dense = resumed[1]["bytes_down"]  # round 1: every client gets the whole model
    assert stopped[2]["bytes_down"] < dense / 10  # round 2 of the first run: sparse deltas
    assert resumed[2]["bytes_down"] == dense  # the resumed run's clients hold nothing: dense again
    assert resumed[3]["bytes_down"] < dense / 10  # then sparse


def test_the_checkpoint_is_written_whole_every_k_rounds(tmp_path):
    run(tmp_path / "run", stop_after=3, **{"checkpoint-every": 2})
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "run"))
    assert [r["round"] for r in resumed] == [0, 1, 2, 3, 4]  # from round 2: round 3 again, then 4


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "there is no checkpoint.pt"),
        ("truncated", "is not a readable checkpoint"),
        ("other-config", "from another config: lr=0.1 there, 0.2 here"),
        ("finished", "nothing to run"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path, damage, message):
    run(tmp_path / "run", stop_after=2)
    path = tmp_path / "run" / CHECKPOINT
    overrides = {"resume": str(tmp_path / "run")}
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "other-config":
        overrides["lr"] = 0.2
    else:
        overrides["num-rounds"] = 1
    with pytest.raises(ValueError, match=message) as err:
        run(tmp_path / "resumed", **overrides)
    assert "\n" not in str(err.value)
