"""The runner as a user calls it: bad configs stop before training; a real `flwr run` simulation trains."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*overrides, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "experiments.run", f"hydra.run.dir={tmp_path}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["fraction_fit=1.5"], "fraction-fit=1.5 must be in (0, 1]"),
        (["min_fit_clients=11"], "min-fit-clients=11 samples more clients than exist (num-clients=10)"),
        (["dataset=mnist", "data_dir=/nonexistent/mnist"], "data-dir='/nonexistent/mnist' is not a folder"),
        (["strategy=dgc", "dgc.final_sparsity=1.0"], "final_sparsity=1.0"),
        (["+dssgd.theta_u=0"], "theta_u=0"),
        (["model=gpt"], "model='gpt' is unknown: choose one of cnn, dssgd_cnn,"),
        (["output_dir=x"], "output_dir is not a config key (known keys: strategy, dataset,"),
        (["experiment=dgc_mnist_2nn_iid"], "experiment='dgc_mnist_2nn_iid' is unknown: choose one of dgc_cifar10"),
        (["num_rounds"], "cannot read the override: Error parsing override 'num_rounds'"),
        (["seed=-1"], "seed=-1 must be >= 0"),
        (["partition=shards", "shards_per_client=100000"], "shards-per-client=100000 must be >= 1 with at least one"),
    ],
)
def test_bad_config_stops_before_training_and_names_the_key(overrides, message, tmp_path):
    result = run(*overrides, tmp_path=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert not (tmp_path / "rounds.json").exists()


def test_inprocess_backend_runs_the_same_app_without_ray(tmp_path):
    result = run(
        "simulation.backend=inprocess", "model=mlp", "num_clients=4", "fraction_fit=0.5", "num_rounds=2",
        "batch_size=20", "lr=0.1", tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["clients"] == 2
    assert rows[-1]["test_accuracy"] > 0.6 > rows[0]["test_accuracy"]
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000


def test_unknown_backend_is_a_config_error(tmp_path):
    result = run("simulation.backend=ray2", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "simulation.backend='ray2' is unknown" in result.stderr + result.stdout


@pytest.mark.slow
def test_flwr_run_simulation_trains_fedavg_on_real_mnist(tmp_path):
    result = run(
        "model=mlp", "num_clients=4", "fraction_fit=1.0", "num_rounds=3", "batch_size=20", "lr=0.1", tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "rounds.json").read_text())
    accuracy = [r["test_accuracy"] for r in rows]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.85
    assert all(r["clients"] == 4 and r["failures"] == 0 for r in rows[1:])
    assert (tmp_path / "rounds.csv").read_text().startswith("round,")
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
    assert "final test accuracy" in result.stdout


@pytest.mark.slow
def test_flwr_run_simulation_trains_dgc_at_999_sparsity(tmp_path):
    result = run(
        "strategy=dgc",
        "model=mlp",
        "num_clients=4",
        "fraction_fit=1.0",
        "num_rounds=12",
        "batch_size=32",
        "local_steps=4",
        "lr=0.1",
        "dgc.clip_norm=1.0",
        "dgc.warmup_sparsities='0.75,0.9375,0.984375,0.996'",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "rounds.json").read_text())
    assert rows[-1]["sparsity"] == 0.999
    # 199 of the 198,800 weights of the two-dimensional tensors per client per round, and the 410 biases
    # whole: slower than dense, but learning.
    assert rows[-1]["test_accuracy"] > 0.55 > 0.2 > rows[0]["test_accuracy"]
    dense_upload = 4 * 199_210
    assert rows[-1]["bytes_up_per_client"] == (199 + 410) * (4 + 4) + 2 * 128  # uint32 + float32, 2 headers
    assert rows[-1]["bytes_up_per_client"] < dense_upload / 150


@pytest.mark.slow
def test_flwr_run_simulation_trains_dssgd_with_dp_and_reports_epsilon(tmp_path):
    result = run(
        "strategy=dssgd",
        "model=dssgd_mlp",
        "num_clients=4",
        "fraction_fit=0.25",
        "num_rounds=6",
        "batch_size=32",
        "lr=0.05",
        "dssgd.theta_u=0.1",
        "dssgd.gamma=0.01",
        "dssgd.dp=true",
        "dssgd.epsilon=1000000",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "rounds.json").read_text())
    assert rows[-1]["test_accuracy"] > 0.4 > 0.2 > rows[0]["test_accuracy"]
    # The SVT takes values above the noisy threshold in random order: it learns like random_threshold
    # selection, slower than "largest" (0.638 after 6 turns of 30 participants, measured in-process).
    assert all(r["clients"] == 1 and r["epsilon"] == pytest.approx(1e6) for r in rows[1:])
    assert rows[-1]["epsilon_total_max"] >= 2e6
    # At most 10,939 of 109,386 values per upload: int32 indices + float32 values, plus Flower's framing.
    assert all(0 < r["bytes_up_per_client"] <= 10_939 * 8 + 400 for r in rows[1:])
