"""The gradient-inversion benchmark runs end to end and prints its table and grid."""

from __future__ import annotations

import re

from experiments.benchmarks.inversion import main


def test_the_inversion_benchmark_prints_a_row_per_setting_and_saves_the_grid(capsys, tmp_path):
    rows = main([
        "--dataset", "mnist-embedded", "--model", "tanh-cnn", "--images", "2", "--batch-size", "2",
        "--iterations", "3", "--restarts", "1", "--settings", "fedavg,dgc-99.9,dssgd-10+svt1", "--out", str(tmp_path),
    ])
    out = capsys.readouterr().out
    assert [r.setting for r in rows] == ["fedavg", "dgc-99.9", "dssgd-10+svt1"]
    assert re.search(r"\| dssgd-10\+svt1 \| 2 \| [\d.]+ \| [\d.-]+ \| [\d.]+ \| - \| 1 \| \d+ \|", out)
    assert "reference: the mean training image scores PSNR" in out
    assert (tmp_path / "inversion_mnist-embedded_tanh-cnn_init_b2.png").stat().st_size > 1000
