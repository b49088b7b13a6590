"""Result files of a run: one row per round in ``rounds.csv`` and ``rounds.json``, and ``accuracy.png``."""

from __future__ import annotations

import csv
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

COLUMNS = (
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "clients",
    "accepted",
    "failures",
    "bytes_up",
    "bytes_down",
    "bytes_up_per_client",
    "bytes_down_per_client",
    "cum_bytes_up",
    "cum_bytes_down",
    "epsilon",
    "wall_time_s",
)


# The base of the runs' own folders when output-dir is empty; default ./outputs, where the Hydra runner writes too.
OUTPUTS_ENV = "FLWR_PRIVACY_OUTPUTS"


def run_folder(output_dir: str, run_id: int, now: datetime | None = None) -> Path:
    """The absolute folder a run writes to: ``output-dir`` when set (a relative one under the current
    directory), else one of its own, ``$FLWR_PRIVACY_OUTPUTS/<date>/<time>-run<run_id>`` (``./outputs``
    without the variable). Under ``flwr run`` the current directory is the one the SuperLink was started
    from: a shared ``output-dir`` default would have every run overwrite the last one's files there, and
    Flower's run ids (random 64-bit) keep two runs started in the same second apart."""
    if output_dir:
        return Path(output_dir).expanduser().resolve()
    base = Path(os.environ.get(OUTPUTS_ENV) or "outputs").expanduser()
    now = now or datetime.now()
    return (base / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}-run{run_id}").resolve()


class ResultsWriter:
    """Appends each round's row to the run's result files as it closes, so a stopped run keeps what it
    reached; ``rounds.json`` stays a valid JSON list after every row. The CSV is rewritten only when a
    row brings a column the earlier ones lacked (round 1's algorithm metrics, once)."""

    def __init__(
        self, output_dir: str | Path, config: dict[str, Any], plot: bool = True, plot_every_s: float = 10.0
    ) -> None:
        self.dir = Path(output_dir).expanduser().resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self.plot = plot
        self.plot_every_s = plot_every_s  # a plot costs ~0.3 s: long runs of short rounds replot at most this often
        self.last_plot = -float("inf")
        (self.dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (self.dir / "rounds.json").write_text("[]")

    def __call__(self, record: dict[str, Any]) -> None:
        self.rows.append(record)
        self.append_json(record)
        self.append_csv(record)
        if self.plot and time.monotonic() - self.last_plot >= self.plot_every_s:
            self.finish()

    def append_json(self, record: dict[str, Any]) -> None:
        """Replace the list's closing bracket by the new row and a bracket."""
        with open(self.dir / "rounds.json", "r+b") as f:
            f.seek(-1, 2)
            separator = b"\n" if len(self.rows) == 1 else b",\n"
            f.write(separator + json.dumps(record).encode() + b"]")

    def append_csv(self, record: dict[str, Any]) -> None:
        new = [k for k in record if k not in self.columns]
        if new:
            extra = sorted({*self.columns, *new} - set(COLUMNS))
            self.columns = [c for c in COLUMNS if any(c in r for r in self.rows)] + extra
            rows, mode = self.rows, "w"
        else:
            rows, mode = [record], "a"
        with open(self.dir / "rounds.csv", mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def finish(self) -> None:
        """Plot every row written so far."""
        plot_rounds(self.rows, self.dir / "accuracy.png", title=self.dir.name)
        self.last_plot = time.monotonic()


def plot_rounds(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Test accuracy against round, and against cumulative bytes exchanged (up + down)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("test_accuracy") is not None]
    if not rows:
        return
    rounds = [r["round"] for r in rows]
    acc = [r["test_accuracy"] for r in rows]
    mb_up = [r["cum_bytes_up"] / 1e6 for r in rows]
    mb_all = [(r["cum_bytes_up"] + r["cum_bytes_down"]) / 1e6 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(rounds, acc, marker=".")
    ax1.set(xlabel="round", ylabel="test accuracy", title=title)
    ax1.grid(alpha=0.3)
    ax2.plot(mb_all, acc, marker=".", label="up + down")
    ax2.plot(mb_up, acc, marker=".", label="up (clients to server)")
    ax2.set(xlabel="cumulative MB exchanged", ylabel="test accuracy")
    if max(mb_all) > 0:
        ax2.set_xscale("symlog", linthresh=max(min(v for v in mb_all if v > 0), 1e-3))
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_rows(output_dir: str | Path) -> list[dict[str, Any]]:
    return json.loads((Path(output_dir) / "rounds.json").read_text())
