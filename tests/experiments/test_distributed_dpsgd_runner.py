"""``python -m experiments.distributed_dpsgd``: a Hydra-composed federation of the project's own clients under
SecAgg+, its DP-SGD noise added in shares; bad input is one line and a non-zero exit."""

from __future__ import annotations

import re

import pytest

from experiments.distributed_dpsgd import main

SMALL = [
    "model=mlp", "num_clients=4", "fraction_fit=1.0", "min_fit_clients=4", "batch_size=100", "lr=0.5",
    "dpsgd.enabled=true", "dpsgd.noise_multiplier=1.0", "dpsgd.max_grad_norm=1.0", "evaluate_every=4",
]


def test_a_short_run_learns_and_reports_the_ledgers_epsilon(capsys):
    main([*SMALL, "num_rounds=8"])
    out = capsys.readouterr().out
    assert "sum's noise multiplier 1, lots of 100 per client" in out
    final = re.search(r"final: test accuracy ([0-9.]+), epsilon ([0-9.]+) \(delta 1e-05\)", out)
    assert final is not None, out
    assert float(final.group(1)) > 0.5  # ten classes: chance is 0.1
    assert 0 < float(final.group(2)) < 10
    assert re.search(r"round 4: test accuracy", out) and re.search(r"round 8: test accuracy", out)


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


def test_a_run_whose_updates_the_server_refuses_fails(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*SMALL, "num_rounds=4", "lr=1e9"])
    assert str(exit_info.value.code).startswith("error: ")
