from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the project (../shared/data); tests needing them skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FLWR_PRIVACY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the slow end-to-end Flower runs")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end run: add --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
