"""``python -m experiments.distributed_dpsgd``: a Hydra-composed federation of the project's own clients under
SecAgg+, its DP-SGD noise added in shares; bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import re

import pytest

from experiments.distributed_dpsgd import main

SMALL = [
    "model=mlp", "num_clients=4", "fraction_fit=1.0", "min_fit_clients=4", "batch_size=100", "lr=0.5",
    "dpsgd.enabled=true", "dpsgd.noise_multiplier=1.0", "dpsgd.max_grad_norm=1.0", "evaluate_every=4",
]


def test_a_short_run_learns_and_reports_the_ledgers_epsilon(tmp_path, capsys):
    """...and writes its folder as experiments.run does, which the accuracy-against-epsilon plot reads as a
    line of its own."""
    from experiments.dpsgd_plot import run_point

    main([*SMALL, "num_rounds=8", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "sum's noise multiplier 1, lots of 100 per client" in out
    final = re.search(r"final: test accuracy ([0-9.]+), epsilon ([0-9.]+) \(delta 1e-05\)", out)
    assert final is not None, out
    assert float(final.group(1)) > 0.5  # ten classes: chance is 0.1
    assert 0 < float(final.group(2)) < 10
    assert re.search(r"round 4: test accuracy", out) and re.search(r"round 8: test accuracy", out)
    assert f"results: {tmp_path / 'run'}" in out
    rows = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [r["round"] for r in rows] == list(range(9))  # round 0: the initial model
    assert (tmp_path / "run" / "accuracy.png").is_file() and (tmp_path / "run" / "rounds.csv").is_file()
    point = run_point(tmp_path / "run")
    assert point["label"] == "fedavg under SecAgg+ (noise in shares), mlp"
    assert point["accuracy"] == pytest.approx(float(final.group(1)), abs=1e-4)
    assert point["epsilon"] == pytest.approx(float(final.group(2)), abs=1e-3)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["secagg.dp"] == "distributed-dpsgd" and config["secagg.tolerated"] == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset=nope"], "error: In 'config': Could not find 'dataset/nope'"),
        (["dpsgd.enabled=false"], "error: dpsgd.enabled is false"),
        (["strategy=dgc", "dpsgd.enabled=true"], "error: strategy=dgc: distributed DP-SGD runs with FedAvg"),
    ],
)
def test_bad_input_is_one_line_and_a_failed_exit(overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        main(overrides)
    text = str(exit_info.value.code)
    assert text.startswith(message) and "\n" not in text


def test_a_run_whose_updates_the_server_refuses_fails(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*SMALL, "num_rounds=4", "lr=1e9", "--out", str(tmp_path / "run")])
    assert str(exit_info.value.code).startswith("error: ")
