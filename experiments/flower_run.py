"""Run a Flower App with ``flwr run`` as a local simulation, judge how it ended, and clean up after it.

``flwr run`` against the ``local`` connection starts a SuperLink that keeps running after the run, on
fixed ports (39091, 39093) another run would attach to; this module gives each call its own
``FLWR_HOME`` and free ports, and stops every process of the run when the call ends, however it ends.
``flwr run --stream`` exits 0 even when the ServerApp failed (Flower 1.42), so the run's status is
read back from the SuperLink (``flwr ls --run-id``): a run that did not finish completed raises
``FlowerRunError`` with the SuperLink's one-line reason. Ctrl-C on ``flwr run`` exits 0 too and leaves
the run running; here SIGINT and SIGTERM stop it (``interruptible``). As a command, for any app (exit
status 1 and one line on failure, 128 + the signal and one line when interrupted)::

    python -m experiments.flower_run path/to/app --federation-config "num-supernodes=4" \
        --run-config 'num-server-rounds=5'
    python -m experiments.flower_run path/to/app --connection prod   # a deployment's SuperLink
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from ``/proc/<pid>/stat``; None once it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def run_processes(flwr_home: Path) -> list[int]:
    """Every process started for this FLWR_HOME, this one excepted: those that carry it in their environment
    (``flwr run``, the SuperLink, its SuperExec, the simulation, Ray's workers inherit it) and all their
    descendants (Ray's agents rewrite their environment, and the marker with it)."""
    marker = f"FLWR_HOME={flwr_home}".encode() + b"\0"
    marked, children = [], {}
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        stat = _stat(pid)
        if stat is None or stat[0] == "Z" or pid == os.getpid():
            continue
        children.setdefault(stat[1], []).append(pid)
        try:
            if marker in (proc / "environ").read_bytes() + b"\0":
                marked.append(pid)
        except OSError:
            continue
    # and our own descendants: with ``adopt_orphans`` a process whose parent died while it was being
    # started (a Ray agent whose raylet was killed) is re-parented to us, not to init
    found, stack = set(marked), [*marked, os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child != os.getpid():
                found.add(child)
                stack.append(child)
    return sorted(found)


def stop_processes(flwr_home: Path, timeout: float = 10.0, kill_timeout: float = 30.0) -> None:
    """Stop every process of this FLWR_HOME: SIGTERM, then SIGKILL for any still alive after ``timeout``
    (given up after ``kill_timeout`` more seconds only for a process the kernel cannot kill).

    Each phase looks at ``/proc`` again and again, signalling what it finds and every process found
    before that still lives (the same process: its start time is checked, not just its pid), until a look
    finds none left: a dying SuperLink or Ray can start processes while it is being stopped (a child can
    only be started by a live parent, which the look before would have found), and a Ray agent orphaned
    by its raylet is no longer anyone's descendant. SIGINT and SIGTERM wait until this is done, so a
    second Ctrl-C cannot cut the clean-up short.
    """
    known: dict[int, int] = {}  # pid -> start time, of every process of the run seen so far

    def alive() -> list[int]:
        for pid in run_processes(flwr_home):
            stat = _stat(pid)
            if stat is not None:
                known.setdefault(pid, stat[2])
        living = []
        for pid, started in list(known.items()):
            stat = _stat(pid)
            if stat is None or stat[0] == "Z" or stat[2] != started:
                del known[pid]
            else:
                living.append(pid)
        return living

    with signals_held():
        for sig, phase in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_timeout)):
            signalled: set[int] = set()
            deadline = time.monotonic() + phase
            while (pids := alive()) and time.monotonic() < deadline:
                for pid in pids:
                    if sig == signal.SIGKILL or pid not in signalled:  # SIGTERM once each: let them shut down
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                signalled.update(pids)
                time.sleep(0.05)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (blocked in the main thread) until the block ends, then arrive: a clean-up
    is never cut short, and the interruption is not lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def adopt_orphans() -> None:
    """Make this process a child subreaper (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): orphans among the
    processes it starts are re-parented to it, so ``run_processes`` still finds them as descendants."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by ``signum`` (SIGINT or SIGTERM); ``status`` is the exit status a shell
    gives a process that signal stops (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = 128 + signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


def interruption(err: KeyboardInterrupt) -> tuple[str, int]:
    """(one line, exit status) for an interruption: ``Interrupted``'s, or 130 for a bare KeyboardInterrupt."""
    if isinstance(err, Interrupted):
        return str(err), err.status
    return "interrupted by SIGINT", 128 + signal.SIGINT


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread, so ``finally`` blocks clean up.

    Installed whatever this process inherited: a shell starts a background job with SIGINT *ignored*
    (``cmd &`` in a script, as a shared CI machine does), Python then leaves it ignored, and Ctrl-C or
    ``kill -INT`` would be dropped: the run went on to its end and exited 0. The signal is also recorded,
    so an interruption that something swallowed on its way up (an exception raised inside a finalizer is
    only printed) is raised again when the block ends: a block that was interrupted never ends normally.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Interrupted(received[0])


class _FlowerRun:
    """One ``flwr run ... --stream``: its output copied to ours, the run id it prints, its status after."""

    def __init__(self, flwr: str, env: dict[str, str], cwd: Path, connection: list[str]) -> None:
        self.flwr, self.env, self.cwd, self.connection = flwr, env, cwd, connection
        self.proc: subprocess.Popen | None = None
        self.run_id: str | None = None

    def stream(self, arguments: list[str], timeout: float | None) -> None:
        command = [self.flwr, "run", *arguments[:1], *self.connection, *arguments[1:], "--stream"]
        self.proc = subprocess.Popen(
            command, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            sys.stdout.write(line)
            if self.run_id is None and (found := re.search(r"Successfully started run (\d+)", line)):
                self.run_id = found.group(1)
            if deadline is not None and time.monotonic() > deadline:
                raise FlowerRunError(f"the Flower run took longer than {timeout} s")
        self.proc.wait()
        if self.run_id is None:
            raise FlowerRunError(f"flwr run started no run (exit status {self.proc.returncode}); see its output above")

    def flwr_command(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.flwr, *arguments, "--format", "json"],
            env=self.env, cwd=self.cwd, capture_output=True, text=True, check=False,
        )

    def record(self) -> dict[str, Any]:
        """The run's record from the SuperLink (``flwr ls --run-id``)."""
        listed = self.flwr_command("ls", *self.connection, "--run-id", str(self.run_id))
        try:  # Flower may print a notice before the JSON
            return dict(json.loads(listed.stdout[listed.stdout.index("{"):])["runs"][0])
        except (ValueError, KeyError, IndexError):
            listing = " ".join((listed.stdout or listed.stderr).split())
            raise FlowerRunError(f"cannot read the status of run {self.run_id}: {listing}") from None

    def stop(self) -> None:
        """Stop the run on the SuperLink (``flwr stop``) and our ``flwr run``, if they were started; a
        second Ctrl-C waits until this is done."""
        with signals_held():
            if self.run_id is not None:
                self.flwr_command("stop", self.run_id, *self.connection)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def run_app(
    app_dir: Path,
    run_config: str | Path | None = None,
    federation_config: str | None = "num-supernodes=2",
    flwr: str | Path | None = None,
    timeout: float | None = None,
    connection: str | None = None,
) -> dict[str, Any]:
    """``flwr run app_dir --stream``; returns the run's record from ``flwr ls``. Raises ``FlowerRunError``
    unless the run finished completed, ``Interrupted`` on SIGINT or SIGTERM.

    ``run_config`` is what ``--run-config`` takes (a TOML file or ``key=value`` pairs); ``flwr`` the
    executable (default: the one beside this Python). Output streams to this process's stdout.

    Without ``connection`` the run is a local simulation with its own SuperLink on free ports and a
    private FLWR_HOME, so two calls at once never meet; whatever way the call ends (the run's end, an
    error, Ctrl-C or SIGTERM), every process started for it is stopped, the simulation and Ray's workers
    included, and the FLWR_HOME removed. With ``connection`` (a SuperLink connection in the user's Flower
    configuration: a deployment) the run goes to that SuperLink; an interrupted or timed-out call stops
    the run there (``flwr stop``), since ``flwr run`` alone would leave it running.
    """
    flwr = str(flwr or Path(sys.executable).parent / "flwr")
    arguments = [str(app_dir)]
    if federation_config:
        arguments += ["--federation-config", federation_config]
    if run_config:
        arguments += ["--run-config", str(run_config)]
    path = f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with interruptible():
        if connection is not None:
            run = _FlowerRun(flwr, dict(os.environ, PATH=path), app_dir, [connection])
            try:
                run.stream(arguments, timeout)
            except BaseException:
                run.stop()
                raise
            record = run.record()
        else:
            if sys.platform.startswith("linux"):
                adopt_orphans()
            with tempfile.TemporaryDirectory(prefix="flwr-home-") as home:
                env = dict(os.environ, FLWR_HOME=home, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PATH=path)
                env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
                env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
                run = _FlowerRun(flwr, env, app_dir, [])
                try:
                    run.stream(arguments, timeout)
                    record = run.record()
                finally:
                    stop_processes(Path(home))
    if record.get("status") != "finished:completed":
        details = " ".join(str(record.get("status-details") or "no details given").split())
        raise FlowerRunError(f"the Flower run {record.get('status')}: {details}")
    return record


def flwr_run(
    run_config: dict[str, Any],
    num_supernodes: int,
    cpus_per_client: int = 1,  # Flower 1.42 refuses a float here, 1.0 included
    gpus_per_client: float = 0.0,
    app_dir: Path = PROJECT_ROOT,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Run this repository's app with these run-config overrides; returns the result rows it wrote.

    ``run_config`` must hold an absolute ``output-dir``. Output streams to this process's stdout.
    """
    output_dir = Path(run_config["output-dir"])
    if not output_dir.is_absolute():
        raise ValueError(f"output-dir={str(output_dir)!r} must be absolute for a flwr run")
    output_dir.mkdir(parents=True, exist_ok=True)
    federation = (
        f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} "
        f"client-resources-num-gpus={gpus_per_client}"
    )
    with tempfile.TemporaryDirectory(prefix="flwr-run-config-") as folder:
        overrides = write_run_config(run_config, Path(folder) / "run-config.toml")
        run_app(app_dir, overrides, federation, timeout=timeout)
    rows_file = output_dir / "rounds.json"
    if not rows_file.exists():
        raise FlowerRunError(f"the Flower run wrote no results to {rows_file}; see its log above")
    rows = load_rows(output_dir)
    num_rounds = int(run_config.get("num-rounds", 0))
    if num_rounds and (not rows or rows[-1]["round"] != num_rounds):
        last = rows[-1]["round"] if rows else None
        raise FlowerRunError(f"the Flower run stopped at round {last} of {num_rounds}; see its log above")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flwr run, with the run's own status as the exit status")
    parser.add_argument("app_dir", type=Path)
    parser.add_argument("--run-config", default=None)
    parser.add_argument("--federation-config", default=None,
                        help="for the local simulation (default: num-supernodes=2); none with --connection")
    parser.add_argument("--connection", default=None,
                        help="a SuperLink connection of your Flower configuration (a deployment); "
                        "default: a local simulation of its own")
    parser.add_argument("--flwr", default=None, help="the flwr executable (default: beside this Python)")
    args = parser.parse_args(argv)
    federation = args.federation_config
    if federation is None and args.connection is None:
        federation = "num-supernodes=2"
    try:
        with interruptible():
            record = run_app(args.app_dir.resolve(), args.run_config, federation, args.flwr, connection=args.connection)
    except FlowerRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        line, status = interruption(err)
        stopped = "the run is stopped" if args.connection else "the run's processes are stopped"
        print(f"error: {line}; {stopped}", file=sys.stderr)
        return status
    print(f"run {record['run-id']} {record['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
