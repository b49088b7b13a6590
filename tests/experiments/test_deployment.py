"""A real deployment on loopback: a SuperLink and SuperNodes as separate processes (free ports, a
temporary Flower home), ``flwr run`` against it, every process stopped by its Flower home even when the
test fails. Plain, then with TLS and SuperNode authentication (certificates and node keys made here; a
node whose key is not registered is refused). The commands are the ones docs/deployment.md gives."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments.flower_run import free_port, stop_processes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
RUN = "num-clients=3 num-rounds=1 model='mlp' fraction-fit=1.0 min-fit-clients=3"


class Deployment:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fp-deploy-", dir="/tmp"))
        self.home = self.root / "flwr-home"
        self.home.mkdir()
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}

    def sh(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True, check=True)

    def spawn(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (the process writes it while it runs)
        self.processes[name] = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=log, stderr=log)
        return self.processes[name]

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def superlink(self, *security: str) -> None:
        self.spawn("superlink", str(BIN / "flower-superlink"), *security, "--host", "127.0.0.1", "--port",
                   str(self.port), "--database", str(self.root / "state.db"))
        deadline = time.monotonic() + 180  # minutes, not seconds, on cores shared with other work
        while "Uvicorn running" not in self.log("superlink"):
            assert time.monotonic() < deadline and self.processes["superlink"].poll() is None, self.log("superlink")
            time.sleep(0.5)

    def connection(self, *lines: str) -> None:
        body = "\n".join([f'address = "{self.address}"', *lines])
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "here"\n\n[superlink.here]\n{body}\n')

    def supernode(self, name: str, partition: int, *security: str) -> subprocess.Popen:
        return self.spawn(name, str(BIN / "flower-supernode"), *security, "--superlink", self.address,
                          "--node-config", f"partition-id={partition} num-partitions=3", "--port", str(free_port()))

    def run(self, output: Path) -> list[dict]:
        result = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "here", "--stream", "--run-config", f"{RUN} output-dir='{output}'"],
            cwd=self.root, env=self.env, capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return json.loads((output / "rounds.json").read_text())

    def close(self) -> None:
        stop_processes(self.home)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def deployment():
    d = Deployment()
    try:
        yield d
    finally:
        d.close()


def test_fedavg_over_a_superlink_and_three_supernodes(deployment, tmp_path):
    deployment.superlink("--insecure")
    deployment.connection("insecure = true")
    for i in range(3):
        deployment.supernode(f"node{i}", i, "--insecure")
    rows = deployment.run(tmp_path / "out")
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["accepted"] == 3 and rows[1]["failures"] == 0
    assert rows[1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.3


def test_tls_and_supernode_authentication_refuse_an_unregistered_node(deployment, tmp_path):
    d = deployment
    d.sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "1", "-subj", "/CN=flwr-privacy test CA")
    d.sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1")
    (d.root / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    d.sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    for i in range(4):
        d.sh("ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", f"node{i}")
    d.superlink("--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "server.pem", "--ssl-keyfile", "server.key",
                "--enable-supernode-auth")
    d.connection(f'root-certificates = "{d.root / "ca.crt"}"')
    for i in range(3):  # node3's key is never registered
        registered = d.sh(str(BIN / "flwr"), "supernode", "register", f"node{i}.pub", "here")
        assert "registered successfully" in registered.stdout
    tls = ("--root-certificates", "ca.crt")
    for i in range(4):
        d.supernode(f"node{i}", i % 3, *tls, "--auth-supernode-private-key", f"node{i}")
    rows = d.run(tmp_path / "out")
    assert rows[1]["accepted"] == 3 and rows[1]["failures"] == 0
    assert rows[1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.3
    intruder = d.processes["node3"]
    intruder.wait(timeout=120)
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in d.log("node3")
    listed = d.sh(str(BIN / "flwr"), "supernode", "ls", "here", "--format", "json").stdout
    assert len(json.loads(listed[listed.index("{"):])["nodes"]) == 3


def test_a_supernode_killed_mid_run_is_a_recorded_failure_and_the_run_completes(deployment, tmp_path):
    d = deployment
    d.superlink("--insecure")
    d.connection("insecure = true")
    for i in range(3):
        d.supernode(f"node{i}", i, "--insecure")
    output = tmp_path / "out"
    run = subprocess.Popen(
        [str(BIN / "flwr"), "run", str(ROOT), "here", "--stream", "--run-config",
         f"num-clients=3 num-rounds=3 model='mlp' fraction-fit=1.0 min-fit-clients=2 output-dir='{output}'"],
        cwd=d.root, env=d.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 600
    while not (output / "rounds.csv").is_file() or len((output / "rounds.csv").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.5)
    d.processes["node2"].kill()  # round 1 is done: node 2 disappears without a word
    out, _ = run.communicate(timeout=900)
    assert run.returncode == 0, out[-3000:]
    rows = json.loads((output / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3], out[-3000:]
    assert rows[1]["accepted"] == 3
    assert sum(r["failures"] for r in rows[2:]) >= 1  # the lost node's reply, recorded as a failure
    assert all(r["accepted"] >= 2 for r in rows[2:])
    assert rows[-1]["test_accuracy"] > rows[1]["test_accuracy"]


def test_a_superlink_restarted_with_its_database_keeps_its_supernodes_and_runs(deployment, tmp_path):
    """SIGKILL mid-run (a crash), then the same command again at once: the nodes reconnect by themselves
    (they retry with backoff, unlimited by default) under the same ids, the interrupted run is still
    listed, and the next run completes on them without any node restarted."""
    d = deployment
    d.superlink("--insecure")
    d.connection("insecure = true")
    for i in range(3):
        d.supernode(f"node{i}", i, "--insecure")

    def listed(*what: str) -> dict:
        out = d.sh(str(BIN / "flwr"), *what, "here", "--format", "json").stdout
        return json.loads(out[out.index("{"):])

    interrupted = subprocess.Popen(
        [str(BIN / "flwr"), "run", str(ROOT), "here", "--stream", "--run-config",
         f"{RUN} output-dir='{tmp_path / 'first'}'"],
        cwd=d.root, env=d.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 300
    while not (started := re.search(r"Started task \d+ of run (\d+)", d.log("superlink"))):
        assert time.monotonic() < deadline and interrupted.poll() is None  # the ServerApp has its task: mid-run
        time.sleep(0.5)
    run_id = started.group(1)
    nodes = sorted(n["node-id"] for n in listed("supernode", "ls")["nodes"])
    d.processes["superlink"].kill()
    d.processes["superlink"].wait(timeout=30)
    d.superlink("--insecure")  # the same --database and port
    interrupted.communicate(timeout=120)  # its log stream broke with the old SuperLink
    assert run_id in [r["run-id"] for r in listed("ls")["runs"]]
    assert sorted(n["node-id"] for n in listed("supernode", "ls")["nodes"]) == nodes
    rows = d.run(tmp_path / "next")
    assert rows[1]["accepted"] == 3 and rows[1]["failures"] == 0
    assert all(d.processes[f"node{i}"].poll() is None for i in range(3))  # the same node processes served it


def test_a_deployment_run_exits_1_with_the_reason_when_it_fails_and_130_when_interrupted_stopping_it(
    deployment, tmp_path
):
    """``flwr run`` exits 0 either way (Flower 1.42) and leaves an interrupted run running on the SuperLink;
    ``python -m experiments.flower_run --connection`` exits 1 with the SuperLink's reason, and on Ctrl-C
    stops the run there and exits 130, one line each."""
    d = deployment
    d.superlink("--insecure")
    d.connection("insecure = true")
    for i in range(3):
        d.supernode(f"node{i}", i, "--insecure")
    wrapper = [sys.executable, "-m", "experiments.flower_run", str(ROOT), "--connection", "here", "--run-config"]
    failed = subprocess.run([*wrapper, f"{RUN} lr=-1.0 output-dir='{tmp_path / 'failed'}'"], cwd=ROOT, env=d.env,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert failed.stderr.splitlines()[-1].startswith("error: the Flower run finished:failed:"), failed.stderr
    assert "lr" in failed.stderr.splitlines()[-1] and "Traceback" not in failed.stderr

    output = tmp_path / "interrupted"
    long_run = RUN.replace("num-rounds=1", "num-rounds=500")
    run = subprocess.Popen([*wrapper, f"{long_run} output-dir='{output}'"], cwd=ROOT, env=d.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (output / "rounds.csv").is_file() or len((output / "rounds.csv").read_text().splitlines()) < 3:
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130, out[-2000:] + err[-2000:]
    assert err.splitlines()[-1] == "error: interrupted by SIGINT; the run is stopped" and "Traceback" not in err
    run_id = re.search(r"Successfully started run (\d+)", out).group(1)
    listed = d.sh(str(BIN / "flwr"), "ls", "here", "--run-id", run_id, "--format", "json").stdout
    assert json.loads(listed[listed.index("{"):])["runs"][0]["status"] == "finished:stopped"
