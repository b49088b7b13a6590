"""The DP-SGD cost benchmark runs and prints its figures, the ratio measured in the same run."""

from __future__ import annotations

import re

from experiments.benchmarks.dpsgd_epoch import main


def test_the_dpsgd_epoch_benchmark_prints_both_times_and_their_ratio(capsys):
    main(["--examples", "300", "--repeats", "1", "--batch-size", "100", "--threads", "1"])
    out = capsys.readouterr().out
    plain = float(re.search(r"plain local epoch:\s+([\d.]+) s", out).group(1))
    private = float(re.search(r"DP-SGD local epoch:\s+([\d.]+) s", out).group(1))
    assert plain > 0 and private > 0
    assert re.search(r"ratio private / plain: \d+\.\dx", out)
    # The noise's share, measured in the same run: the floor a private epoch cannot go below.
    noise = re.search(r"of which the noise, (\d+) draws of (\d+) values: ([\d.]+) s \(([\d.]+)x a plain epoch\)", out)
    assert noise is not None and int(noise.group(1)) == 3 and float(noise.group(3)) > 0
