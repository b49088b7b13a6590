"""Where a run's results land under ``flwr run``: the ServerApp called as Flower calls it, with the app's
own defaults from pyproject.toml fused with a run's overrides (Flower's ``get_fused_config_from_dir``)."""

import json
import re
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.config import get_fused_config_from_dir

from experiments.server_app import server_fn

ROOT = Path(__file__).resolve().parents[2]


def start(run_id, caplog, **overrides):
    """The ServerApp's start of run ``run_id``; the folder its log names, with the folder's config.json."""
    run_config = get_fused_config_from_dir(ROOT, {"model": "mlp", **overrides})
    caplog.clear()
    server_fn(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    logged = re.findall(rf"Run {run_id} writes its results to (\S+)", caplog.text)
    assert len(logged) == 1, caplog.text
    folder = Path(logged[0])
    return folder, json.loads((folder / "config.json").read_text())


def test_each_run_gets_its_own_folder_by_default_and_the_log_names_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # as the directory a SuperLink was started from
    monkeypatch.delenv("FLWR_PRIVACY_OUTPUTS", raising=False)
    first, first_config = start(1111, caplog)
    second, second_config = start(2222, caplog)  # most likely in the same second as the first
    assert first != second
    for folder, config, run_id in ((first, first_config, 1111), (second, second_config, 2222)):
        assert folder.is_absolute() and folder.parent.parent == tmp_path / "outputs"
        assert folder.name.endswith(f"-run{run_id}")
        assert config["output-dir"] == str(folder)  # config.json names the folder actually used

    monkeypatch.setenv("FLWR_PRIVACY_OUTPUTS", str(tmp_path / "elsewhere"))
    third, _ = start(3333, caplog)
    assert third.parent.parent == tmp_path / "elsewhere"

    chosen, _ = start(4444, caplog, **{"output-dir": "mine"})  # an explicit output-dir wins
    assert chosen == tmp_path / "mine"
