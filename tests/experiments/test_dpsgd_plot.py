"""The accuracy-against-epsilon plot of docs/results.md, from run folders as experiments.run writes them."""

from __future__ import annotations

import json
import logging

import pytest

from experiments.dpsgd_plot import main, run_point
from experiments.results import ResultsWriter


def finished_run(folder, dataset, accuracy, epsilon=None):
    config = {"strategy": "fedavg", "dataset": dataset, "model": "scatter-linear", "features": "scatternet",
              "dpsgd.enabled": epsilon is not None}
    writer = ResultsWriter(folder, config, plot=False)
    row = {"round": 1, "test_accuracy": accuracy}
    if epsilon is not None:
        row["epsilon_total_max"] = epsilon
    writer(row)
    return folder


def test_runs_become_points_and_one_png_with_both_data_sets(tmp_path, capsys):
    runs = [
        finished_run(tmp_path / "a", "mnist", 0.9787, 2.994),
        finished_run(tmp_path / "b", "mnist", 0.9737, 0.998),
        finished_run(tmp_path / "c", "mnist", 0.9846),
        finished_run(tmp_path / "d", "cifar10", 0.61, 2.99),
    ]
    point = run_point(runs[0])
    assert point == {"dataset": "mnist", "strategy": "fedavg", "label": "fedavg, scatternet scatter-linear",
                     "epsilon": 2.994, "accuracy": 0.9787, "folder": str(runs[0])}
    assert run_point(runs[2])["epsilon"] is None
    out = tmp_path / "plot.png"
    main([str(r) for r in runs] + ["--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| mnist | fedavg, scatternet scatter-linear | 2.994 | 0.9787 |" in printed
    assert "| cifar10 | fedavg, scatternet scatter-linear | 2.990 | 0.6100 |" in printed


def test_a_folder_that_is_no_finished_run_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path} is not a run folder: no config.json\n"
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "mnist", "dpsgd.enabled": True}))
    (tmp_path / "rounds.json").write_text(json.dumps([{"round": 1, "test_accuracy": 0.9}]))
    with pytest.raises(ValueError, match="trained with DP-SGD but its last round reports no epsilon_total_max"):
        run_point(tmp_path)


def test_client_dp_reads_dpsgd_runs_as_the_plot_does_and_refuses_a_bad_folder_before_any_run(tmp_path):
    """``experiments.client_dp --dpsgd-runs``: the same points, and a bad folder is one line, before training."""
    from experiments.client_dp import dpsgd_points
    from experiments.client_dp import main as client_dp_main

    run = finished_run(tmp_path / "a", "mnist", 0.9787, 2.994)
    assert dpsgd_points([str(run)]) == [
        {"mechanism": "fedavg + DP-SGD (sample-level)", "epsilon": 2.994, "accuracy": 0.9787, "folder": str(run)}
    ]
    flower = logging.getLogger("flwr")
    level = flower.level
    with pytest.raises(SystemExit, match=f"error: --dpsgd-runs: {tmp_path / 'nothing'} is not a run folder"):
        client_dp_main(["--dpsgd-runs", str(tmp_path / "nothing"), "num_rounds=1"])
    assert flower.level == level  # refused before it quietened Flower's logger for the rest of the process
