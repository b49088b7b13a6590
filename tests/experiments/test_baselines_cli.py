"""`python -m experiments.baselines` as a user calls it, on the embedded MNIST."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_baselines_write_centralized_and_standalone(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.baselines", f"hydra.run.dir={tmp_path}", "model=mlp", "num_rounds=2",
         "baseline.max_clients=3", "lr=0.05"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads((tmp_path / "baselines.json").read_text())
    # 5 of 10 clients x 1 epoch over 400 examples, 2 rounds = 4,000 sample gradients: one pass.
    assert out["centralized"]["epochs"] == out["standalone"]["epochs"] == 1
    assert out["standalone"]["clients"] == 3
    assert out["centralized"]["accuracy"] > out["standalone"]["accuracy"] > 0.3
    assert "centralized: accuracy" in result.stdout
