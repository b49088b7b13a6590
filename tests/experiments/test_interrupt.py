"""`python -m experiments.run` as a user stops it: Ctrl-C or SIGTERM leave no process and no new row behind,
exit with 128 + the signal and one line, also when the run was started with SIGINT ignored (a shell's
background job); and two runs started at once each get their own SuperLink and both complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments.flower_run import Interrupted, interruptible, run_processes, stop_processes

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model=mlp", "num_clients=2", "fraction_fit=1.0", "batch_size=50", "lr=0.1"]

slow = pytest.mark.slow


def processes_with(scratch: Path) -> list[int]:
    """PIDs of processes whose TMPDIR is ``scratch`` (every process a run starts inherits it)."""
    marker = f"TMPDIR={scratch}\0".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes() + b"\0":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def describe(pids: list[int]) -> list[str]:
    """What each process is: its command line, its parent, and whether it carries the run's FLWR_HOME."""
    out = []
    for pid in pids:
        try:
            raw = (Path(f"/proc/{pid}") / "cmdline").read_bytes()
            cmdline = raw.replace(b"\0", b" ")[:160].decode(errors="replace")
            stat = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()
            home = b"FLWR_HOME=" in (Path(f"/proc/{pid}") / "environ").read_bytes()
            out.append(f"{pid} state={stat[0]} ppid={stat[1]} flwr_home={home}: {cmdline}")
        except OSError as err:
            out.append(f"{pid}: {err}")
    return out


def ignore_sigint() -> None:
    """What a non-interactive shell does to a background job (``cmd &`` in a script): SIGINT ignored, and
    the ignoring inherited across exec."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(tmp_path: Path, name: str, *overrides: str, sigint_ignored: bool = False) -> tuple[
    subprocess.Popen, Path, Path
]:
    # A short TMPDIR: Ray puts its sockets under it, and a Unix socket's path is limited to 107 bytes.
    scratch = Path(tempfile.mkdtemp(prefix=f"fp-{name}-", dir="/tmp"))
    out = tmp_path / name
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", f"hydra.run.dir={out}", *SMALL, *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignore_sigint if sigint_ignored else None,
    )
    return proc, out, scratch


def kill_all(scratch: Path) -> None:
    """Never leave a test's processes or files behind, whatever failed."""
    for pid in processes_with(scratch):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(scratch, ignore_errors=True)


def rows_written(out: Path) -> int:
    csv = out / "rounds.csv"
    return max(len(csv.read_text().splitlines()) - 1, 0) if csv.exists() else 0


@slow
@pytest.mark.parametrize(
    ("sig", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-inherited-ignored"],
)
def test_an_interrupted_run_stops_every_process_it_started_and_writes_no_more_rows(tmp_path, sig, sigint_ignored):
    proc, out, scratch = start(tmp_path, "run", "num_rounds=500", sigint_ignored=sigint_ignored)
    try:
        deadline = time.monotonic() + 240
        while rows_written(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rows_written(out) >= 2, proc.communicate(timeout=30)
        assert len(processes_with(scratch)) > 3  # the runner, flwr run, the SuperLink, the simulation, Ray ...
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=150)  # the clean-up may take its whole 10 s + 30 s budget under load
        assert proc.returncode == 128 + sig, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-2000:]
        name = signal.Signals(sig).name
        assert stderr.splitlines()[-1] == f"error: interrupted by {name}; the run's processes are stopped"
        written = rows_written(out)
        time.sleep(5)
        assert rows_written(out) == written  # nothing trains on after the interruption
        assert processes_with(scratch) == [], describe(processes_with(scratch))
        assert not list(scratch.glob("flwr-home-*"))  # the private Flower home is removed
    finally:
        kill_all(scratch)


@slow
def test_two_runs_started_at_once_both_complete(tmp_path):
    runs = [start(tmp_path, name, "num_rounds=3") for name in ("first", "second")]
    try:
        for proc, out, _ in runs:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
            assert [r["round"] for r in json.loads((out / "rounds.json").read_text())] == [0, 1, 2, 3]
    finally:
        for _, _, scratch in runs:
            kill_all(scratch)


FORKER = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
        os._exit(0)
    time.sleep(0.002)
"""


@slow
def test_stopping_a_run_leaves_no_process_even_one_that_ignores_sigterm_and_keeps_forking(tmp_path):
    """What a dying Ray or SuperLink can do: start processes while it is being stopped."""
    home = Path(tempfile.mkdtemp(prefix="fp-home-", dir="/tmp"))
    env = dict(os.environ, FLWR_HOME=str(home))
    forkers = [subprocess.Popen([sys.executable, "-c", FORKER], env=env, start_new_session=True) for _ in range(3)]
    try:
        time.sleep(1.0)
        assert len(run_processes(home)) > 3
        stop_processes(home, timeout=0.5)
        for forker in forkers:  # our own children: reap them, so they do not linger as zombies
            forker.wait(timeout=10)
        assert run_processes(home) == []
    finally:
        for pid in run_processes(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def completed_rows(tmp_path: Path, name: str, *overrides: str) -> list[dict]:
    """The rows of a run that must end with exit status 0."""
    proc, out, scratch = start(tmp_path, name, *overrides)
    try:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
        return json.loads((out / "rounds.json").read_text())
    finally:
        kill_all(scratch)


@slow
def test_a_run_killed_mid_run_resumes_to_the_results_of_one_never_stopped(tmp_path):
    """The server (and everything else) killed with SIGKILL after a few rounds; ``resume=`` continues from
    its last checkpoint and ends where the run that was never stopped ends (FedAvg: clients hold nothing)."""
    whole = completed_rows(tmp_path, "whole", "num_rounds=8")
    proc, killed, scratch = start(tmp_path, "killed", "num_rounds=8")
    try:
        deadline = time.monotonic() + 300
        while rows_written(killed) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rows_written(killed) >= 4 and (killed / "checkpoint.pt").is_file()
    finally:
        kill_all(scratch)  # SIGKILL: no clean-up of any kind
    assert rows_written(killed) < 9
    resumed = completed_rows(tmp_path, "resumed", "num_rounds=8", f"resume={killed}")
    keys = ("round", "test_accuracy", "test_loss", "bytes_up", "cum_bytes_down")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in whole]


@pytest.fixture
def sigint_restored():
    """The test process's own SIGINT handling back as it was, whatever the test did to it."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("inherited", [signal.default_int_handler, signal.SIG_IGN], ids=["default", "ignored"])
def test_an_interruption_ends_the_block_even_if_sigint_was_ignored_or_the_interrupt_swallowed(sigint_restored,
                                                                                                inherited):
    signal.signal(signal.SIGINT, inherited)
    swallowed = []
    with pytest.raises(Interrupted) as raised, interruptible():
        try:  # a library that catches KeyboardInterrupt and goes on (as Flower's log stream does)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt as err:
            swallowed.append(err)
    assert swallowed and raised.value.status == 130 and str(raised.value) == "interrupted by SIGINT"
    assert signal.getsignal(signal.SIGINT) is inherited  # what the process had before is back
