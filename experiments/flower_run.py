"""Run the Flower App with ``flwr run`` as a local simulation, and clean up after it.

``flwr run`` against the ``local`` connection starts a SuperLink that keeps running after the run;
this module gives each call its own ``FLWR_HOME`` and stops that SuperLink when the run is over.
``flwr run --stream`` can exit 0 when the run failed, so success is judged by the result rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.results import load_rows

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class FlowerRunError(RuntimeError):
    """The Flower run did not produce the expected result rows."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_run_config(run_config: dict[str, Any], path: Path) -> Path:
    """A TOML file of overrides for ``flwr run --run-config`` (dotted keys quoted)."""
    lines = [f'"{k}" = {_toml_value(v)}' for k, v in sorted(run_config.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of SuperLinks started for this FLWR_HOME (their log file lives under it)."""
    marker = str(flwr_home / "local-superlink")
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmdline and marker in cmdline:
            pids.append(int(proc.name))
    return pids


def stop_superlink(flwr_home: Path, timeout: float = 10.0) -> None:
    """Stop the local SuperLink that ``flwr run`` left running for this FLWR_HOME."""
    pids = _superlink_pids(flwr_home)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def flwr_run(
    run_config: dict[str, Any],
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    app_dir: Path = PROJECT_ROOT,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Run the app with these run-config overrides; returns the result rows it wrote.

    ``run_config`` must hold an absolute ``output-dir``. Output streams to this process's stdout.
    """
    output_dir = Path(run_config["output-dir"])
    if not output_dir.is_absolute():
        raise ValueError(f"output-dir={str(output_dir)!r} must be absolute for a flwr run")
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flwr-home-") as home:
        flwr_home = Path(home)
        env = dict(os.environ, FLWR_HOME=home, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        federation = (
            f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} "
            f"client-resources-num-gpus={gpus_per_client}"
        )
        overrides = write_run_config(run_config, flwr_home / "run-config.toml")
        command = [
            str(Path(sys.executable).parent / "flwr"),
            "run",
            str(app_dir),
            "--run-config",
            str(overrides),
            "--federation-config",
            federation,
            "--stream",
        ]
        try:
            subprocess.run(command, env=env, cwd=app_dir, check=False, timeout=timeout)
        finally:
            stop_superlink(flwr_home)
    rows_file = output_dir / "rounds.json"
    if not rows_file.exists():
        raise FlowerRunError(f"the Flower run wrote no results to {rows_file}; see its log above")
    rows = load_rows(output_dir)
    num_rounds = int(run_config.get("num-rounds", 0))
    if num_rounds and (not rows or rows[-1]["round"] != num_rounds):
        last = rows[-1]["round"] if rows else None
        raise FlowerRunError(f"the Flower run stopped at round {last} of {num_rounds}; see its log above")
    return rows
