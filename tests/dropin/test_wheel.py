"""The drop-in as a user meets it: our wheel in a fresh virtual environment, their app run by ``flwr run``.

The environment holds the wheel (not an editable install) and Flower's console scripts; torch, NumPy and
Flower's own dependencies are this environment's, reached through a ``.pth`` line instead of a second
multi-GB install. Nothing of this repository is on its path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

from experiments.flower_run import run_app
from tests.apps.quickstart_app import SWAPS, replace_lines, write_app
from tests.dropin.conftest import NUM_NODES, ROUNDS
from tests.dropin.test_quickstart import expected_upload

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> Path:
    """A new venv with this project's wheel; returns its site-packages."""
    root = tmp_path_factory.mktemp("wheel")
    # A copy of the source, so that setuptools' build/ folder neither lands in the checkout nor feeds a stale
    # file into the wheel.
    skip = (".venv", ".git", ".gpu", "build", "outputs", "multirun", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, root / "src", ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"), str(root / "src")],
        check=True, capture_output=True,
    )
    (wheel,) = (root / "dist").glob("flwr_privacy-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, str(wheel), f"flwr=={version('flwr')}"], check=True, capture_output=True)
    site = Path(
        subprocess.run(
            [str(root / "venv" / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return site


def test_the_wheel_puts_one_name_into_site_packages(fresh_env, tmp_path):
    names = {p.name for p in fresh_env.iterdir()}
    assert "flwr_privacy" in names
    assert not names & {"strategies", "clients", "experiments", "tests"}
    python = fresh_env.parents[2] / "bin" / "python"
    app = tmp_path / "app"
    write_app(app, "dgc")
    imported = subprocess.run(
        [str(python), "-c", "import flwr_privacy.strategies.message, flwr_privacy.clients.message, strategies;"
         "print(flwr_privacy.__file__); print(strategies.__file__)"],
        cwd=app, check=True, capture_output=True, text=True,
    ).stdout.split()
    assert imported == [str(fresh_env / "flwr_privacy" / "__init__.py"), str(app / "strategies" / "__init__.py")]


def flwr_run(fresh_env: Path, app: Path, **run_config) -> dict:
    pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    run_app(app, pairs, f"num-supernodes={NUM_NODES}", flwr=fresh_env.parents[2] / "bin" / "flwr", timeout=600)
    return json.loads((app / "result.json").read_text())


@pytest.mark.parametrize("legacy", [False, True], ids=["message-api", "legacy-api"])
@pytest.mark.parametrize("algorithm", ["fedavg", "dgc", "dssgd"])
def test_flwr_run_trains_the_users_app_with_our_strategy(fresh_env, tmp_path, algorithm, legacy):
    app = tmp_path / "app"
    changes = write_app(app, algorithm, legacy)
    assert all(n <= 2 for n in changes.values()), changes
    result = flwr_run(
        fresh_env, app, **{"num-server-rounds": ROUNDS[algorithm], "algorithm": algorithm,
                           "result-file": str(app / "result.json")}
    )
    history = result["history"]
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.3, [r["test_accuracy"] for r in history]
    for record in history[1:]:
        assert record["failures"] == 0
        assert record["bytes_up_per_client"] == expected_upload(algorithm, record["round"])


def test_a_run_whose_every_reply_is_rejected_exits_non_zero_with_the_reason(fresh_env, tmp_path):
    """DGC on the server, the quickstart's client unchanged: every reply is a dense model, not a DGC update."""
    app = tmp_path / "app"
    write_app(app, "dgc", swap=False)
    replace_lines(app / "quickstart" / "server_app.py", SWAPS["dgc"]["quickstart/server_app.py"])
    result = subprocess.run(
        [sys.executable, "-m", "experiments.flower_run", str(app), "--flwr", str(fresh_env.parents[2] / "bin" / "flwr"),
         "--federation-config", f"num-supernodes={NUM_NODES}", "--run-config", "num-server-rounds=6"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr[-2000:]
    assert error[0].startswith("error: the Flower run finished:failed")
    assert "3 rounds in a row rejected every client reply" in error[0] and "expected 4 arrays" in error[0]


def test_flwr_run_trains_the_users_app_under_secure_aggregation(fresh_env, tmp_path):
    """Flower's simulation engine (Ray, a context per SuperNode) carries SecAgg+'s four stages a round."""
    app = tmp_path / "app"
    changes = write_app(app, "fedavg-secagg")
    assert all(n <= 2 for n in changes.values()), changes
    result = flwr_run(
        fresh_env, app, **{"num-server-rounds": ROUNDS["fedavg-secagg"], "fraction-train": 1.0,
                           "result-file": str(app / "result.json")}
    )
    history = result["history"]
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.3, [r["test_accuracy"] for r in history]
    for record in history[1:]:
        assert record["failures"] == 0 and record["accepted"] == NUM_NODES
        assert record["secagg_bytes_up"] > 0
