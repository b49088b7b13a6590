"""The centralized DP-SGD anchor runs on ScatterNet features and prints its accuracy; bad flags are one line."""

from __future__ import annotations

import re

import pytest

from experiments.benchmarks.centralized_dpsgd import main


@pytest.mark.parametrize("norm", ["groupnorm", "exact"])
def test_the_centralized_anchor_learns_and_prints_its_setting(norm, capsys):
    main(["--dataset", "mnist-embedded", "--data-dir", "", "--epochs", "2", "--batch-size", "500",
          "--norm", norm, "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"q = 0\.125, 16 steps, noise multiplier [\d.]+ for epsilon 3 at delta 1e-05", out), out
    final = re.search(rf"final: test accuracy ([\d.]+) at epsilon 3 \({norm}\)", out)
    assert final is not None and float(final.group(1)) > 0.8  # ten digits: chance is 0.1


def test_bad_flags_exit_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--epochs", "0"])
    assert exit_info.value.code == 1
    message = "error: --batch-size and --epochs must be >= 1, --lr and --target-epsilon > 0"
    assert capsys.readouterr().err.strip() == message
