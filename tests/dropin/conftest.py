"""A user's quickstart-style Flower app (``tests/apps``), run in this process over an ``InProcessGrid``."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from experiments.inprocess import InProcessGrid
from tests.apps.quickstart_app import write_app

NUM_NODES = 4
ROUNDS = {"fedavg": 3, "fedavg-secagg": 3, "dgc": 20, "dssgd": 3}


def forget_app_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in ("quickstart", "strategies")]:
        del sys.modules[name]


@pytest.fixture
def user_app(tmp_path, monkeypatch):
    """``user_app(algorithm, legacy=False, **run_config)``: the app with our strategy swapped in, run in
    process; returns (changed lines per file, the app's result file, the grid)."""

    def run(
        algorithm: str, legacy: bool = False, **overrides: Any
    ) -> tuple[dict[str, int], dict[str, Any], InProcessGrid]:
        app_dir = tmp_path / f"{algorithm}-{'legacy' if legacy else 'message'}"
        changes = write_app(app_dir, algorithm, legacy)
        forget_app_modules()
        monkeypatch.syspath_prepend(str(app_dir))
        monkeypatch.chdir(app_dir)  # the app saves its final model in its working directory
        result_file = app_dir / "result.json"
        run_config = {
            "num-server-rounds": ROUNDS[algorithm],
            "fraction-train": 0.5,
            "local-epochs": 1,
            "lr": 0.01,
            "result-file": str(result_file),
            "algorithm": algorithm,
            **overrides,
        }
        flavour = "legacy_" if legacy else ""
        server = importlib.import_module(f"quickstart.{flavour}server_app")
        client = importlib.import_module(f"quickstart.{flavour}client_app")
        torch.manual_seed(0)  # the user's app seeds nothing: its model init and DataLoader shuffles
        grid = InProcessGrid(client.app, run_config, NUM_NODES)
        server.app(grid, Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
        forget_app_modules()
        return changes, json.loads(result_file.read_text()), grid

    yield run
    forget_app_modules()


@pytest.fixture
def quickstart(tmp_path, monkeypatch):
    """The user's app as written (no swap), imported: ``.task``, ``.client`` and ``grid()`` over its ClientApp."""
    app_dir = tmp_path / "quickstart"
    write_app(app_dir, "fedavg", swap=False)
    forget_app_modules()
    monkeypatch.syspath_prepend(str(app_dir))
    task = importlib.import_module("quickstart.task")
    client = importlib.import_module("quickstart.client_app")
    run_config = {"local-epochs": 1, "lr": 0.01}

    class App:
        def grid(self, app=client.app, num_nodes: int = NUM_NODES) -> InProcessGrid:
            return InProcessGrid(app, run_config, num_nodes)

    App.task, App.client, App.run_config = task, client, run_config
    torch.manual_seed(0)
    yield App()
    forget_app_modules()
