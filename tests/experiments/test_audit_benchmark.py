"""The privacy-audit benchmark runs end to end, prints its table, and refuses a bad flag in one line."""

from __future__ import annotations

import re

import pytest

from experiments.benchmarks.audit import main


def test_the_audit_benchmark_prints_a_row_per_setting(capsys):
    rows = main([
        "--dataset", "mnist-embedded", "--canaries", "20", "--examples", "10", "--threads", "1",
        "--settings", "fedavg,dssgd-10+svt8",
    ])
    out = capsys.readouterr().out
    assert [r.setting for r in rows] == ["fedavg", "dssgd-10+svt8"]
    assert re.search(r"\| fedavg \| 20 \| \d+ \| \d+ \| [\d.]+ \| - \| 1e-05 \| - \| \d+ \|", out)
    assert re.search(r"\| dssgd-10\+svt8 \| 20 \| \d+ \| \d+ \| [\d.]+ \| 8 \| 0 \| - \| \d+ \|", out)
    assert "AUDIT FAILED" not in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--canaries", "1"], "--canaries=1 must be >= 2"),
        (["--confidence", "1.5"], "--confidence=1.5 must be in (0, 1)"),
        (["--settings", "fedavg+svt1"], "sparse vector technique is DSSGD's"),
        (["--dataset", "mnist-embedded", "--canaries", "5000"], "1000 test images for --canaries"),
        (["--dataset", "mnist-embedded", "--model", "cnn"], "too large: use fewer canaries"),
    ],
)
def test_a_bad_flag_is_one_line_and_a_non_zero_exit(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error
