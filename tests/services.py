"""Real services for the integration tests: PostgreSQL, an MLflow server, Ray nodes.

Everything binds to 127.0.0.1. Every start_* returns a handle whose stop() ends every
process it started, by PID: a hard-killed Ray node leaves agents and workers behind
(re-parented to init), so Ray nodes are also found by their private --temp-dir.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def _session_ray_token() -> str:
    """One token for the Ray clusters this test session starts and the drivers that join them (a local
    launch uses its workspace's own token instead)."""
    folder = Path(tempfile.mkdtemp(prefix="etrm-ray-token-"))
    path = folder / "token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return str(path)


SERVICE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN_PATH": _session_ray_token(),
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def service_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **SERVICE_ENV, **extra}


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it, so parallel callers don't collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = f"exited {proc.returncode}" if proc is not None and proc.poll() is not None else f"not ready in {timeout}s"
    raise RuntimeError(f"{what}: {state}\n{tail}")


# ---------------------------------------------------------------- process bookkeeping

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        pid, ppid = int(text.split(" ", 1)[0]), int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    return children


def descendants(pid: int) -> set[int]:
    """pid and every process below it, as /proc shows them now."""
    children, found, todo = _children_map(), set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def session_members(sid: int) -> set[int]:
    """Processes of session sid (a Popen(start_new_session=True) child's pid), orphans included: a
    process whose parent died is re-parented to init but keeps its session."""
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command: state, ppid, pgrp, session
            found.add(int(stat.split("/")[2]))
    return found


def pids_mentioning(text: str) -> set[int]:
    """Processes whose command line contains text (e.g. a Ray node's private temp dir)."""
    found = set()
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if text in Path(cmdline).read_bytes().decode(errors="replace"):
                found.add(int(cmdline.split("/")[2]))
        except OSError:
            continue
    found.discard(os.getpid())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_pids(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL what is left; reap our own children."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if not any(alive(p) for p in pids):
                return
            time.sleep(0.1)


# ---------------------------------------------------------------- PostgreSQL

def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql/*/bin: apt-get install postgresql")
    return found[-1]


@dataclass
class Postgres:
    """A throwaway PostgreSQL server; url() names a database on it."""
    port: int
    data_dir: Path
    user: str
    password: str
    run_as: str | None

    def url(self, database: str = "mlflow") -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._psql(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return self.url(name)

    def _psql(self, sql: str) -> None:
        subprocess.run(
            [_pg_bin("psql"), "-h", str(self.data_dir), "-p", str(self.port), "-U", "postgres",
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
            check=True, user=self.run_as, capture_output=True, text=True)

    def stop(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                       user=self.run_as, capture_output=True)
        if pid is not None:
            kill_pids(descendants(pid))
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres(database: str = "mlflow", user: str = "mlflow", password: str = "mlflow-test") -> Postgres:
    """initdb + pg_ctl in a fresh /tmp dir, TCP on 127.0.0.1 only (password auth), socket in the data dir.

    As root the server runs as the `postgres` user (PostgreSQL refuses root); the data dir lives
    directly under /tmp because pytest's tmp dirs are 0700 root-only.
    """
    run_as = "postgres" if os.geteuid() == 0 else None
    data_dir = Path(tempfile.mkdtemp(prefix="etrm-pg-"))
    if run_as:
        shutil.chown(data_dir, run_as, run_as)
    port = free_port()
    pg = Postgres(port, data_dir, user, password, run_as)
    try:
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(data_dir), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, user=run_as, capture_output=True, text=True)
        options = f"-h 127.0.0.1 -p {port} -k {data_dir} -c fsync=off -c synchronous_commit=off -c max_connections=200"
        subprocess.run(
            [_pg_bin("pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"), "-o", options,
             "-w", "-t", "60", "start"],
            check=True, user=run_as, capture_output=True, text=True)
        pg._psql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
        pg.create_database(database)
    except subprocess.CalledProcessError as e:
        log = data_dir / "server.log"
        pg.stop()
        raise RuntimeError(f"PostgreSQL failed: {e.cmd}\n{e.stdout}\n{e.stderr}\n"
                           f"{log.read_text() if log.exists() else ''}") from e
    return pg


# ---------------------------------------------------------------- MLflow server

@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        kill_pids(descendants(self.proc.pid))
        self.proc.wait(timeout=10)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_mlflow(backend_store_uri: str, artifacts_dir: Path, log_dir: Path,
                 ensure_schema: bool = True, timeout: float = 120, port: int | None = None) -> MlflowServer:
    """`mlflow server` on 127.0.0.1 (one worker, artifacts proxied to artifacts_dir), waited on /health.

    ensure_schema runs orchestrator.tracking_db first, as the compose stack does, so that several
    servers may start against one fresh database at once. `port` restarts a stopped server where its
    clients still look for it.
    """
    port = port or free_port()
    log = Path(log_dir) / f"mlflow-{port}.log"
    server = [
        str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts_dir),
        "--serve-artifacts",
    ]
    if ensure_schema:
        prepare = [str(VENV_BIN / "python"), "-m", "orchestrator.tracking_db", backend_store_uri]
        # one process tree whose root we own: sh runs the schema step, then becomes the server
        cmd = ["sh", "-c", f"{shlex.join(prepare)} && exec {shlex.join(server)}"]
    else:
        cmd = server
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=service_env(),
                                cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    handle = MlflowServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_until(lambda: _http_ok(f"{handle.url}/health"), timeout, "mlflow server", proc, log)
    except BaseException:
        handle.stop()
        raise
    return handle


# ---------------------------------------------------------------- Ray nodes

@dataclass
class RayNode:
    """One `ray start --block` process with its own --temp-dir; pids is every process seen for it.

    Ray swaps --node-ip-address 127.0.0.1 for the host's own address (a multi-node Ray refuses the
    loopback-only switch that a local launch uses), so these nodes listen there, with token auth on
    (SERVICE_ENV): the tests' traffic still never leaves this machine.
    """
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    head_address: str
    pids: set[int] = field(default_factory=set)

    def processes(self) -> set[int]:
        self.pids |= {p for p in descendants(self.proc.pid) if alive(p)} | pids_mentioning(str(self.temp_dir))
        return {p for p in self.pids if alive(p)}

    def stop(self) -> None:
        kill_pids(self.processes())
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class RayCluster:
    head: RayNode
    workers: list[RayNode]

    @property
    def address(self) -> str:
        return self.head.head_address

    def add_worker(self, resources: dict[str, float] | None = None, num_cpus: int = 1,
                   timeout: float = 90) -> RayNode:
        node = _start_node(["--address", self.address], resources, num_cpus, extra_env={})
        self.workers.append(node)
        try:
            _wait_nodes(self.address, 1 + len(self.workers), timeout, node)
        except BaseException:
            self.stop()
            raise
        return node

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.stop()


def kill_node(node: RayNode) -> None:
    """Hard failure: SIGKILL every process of the node at once (raylet, agents, workers, ray start)."""
    pids = node.processes()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_pids(pids, grace=0)


def _start_node(role_args: list[str], resources: dict[str, float] | None, num_cpus: int,
                extra_env: dict[str, str]) -> RayNode:
    temp_dir = Path(tempfile.mkdtemp(prefix="etrm-ray-", dir="/tmp"))  # short: Ray's socket paths
    log = temp_dir / "ray-start.log"
    cmd = [
        str(VENV_BIN / "ray"), "start", *role_args, "--block", "--node-ip-address", "127.0.0.1",
        "--num-cpus", str(num_cpus), "--num-gpus", "0", "--resources", json.dumps(resources or {}),
        "--temp-dir", str(temp_dir), "--disable-usage-stats",
        "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
        "--dashboard-port", str(free_port()),  # even without a dashboard, Ray binds its port: 8265 may be taken
        "--object-store-memory", str(200 * 1024**2),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=service_env(**extra_env),
                                start_new_session=True)
    address = role_args[1] if role_args[0] == "--address" else ""
    return RayNode(proc, temp_dir, log, address, {proc.pid})


_NODE_PROBE = """
import sys, time, ray
address, count, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ray.init(address=address, log_to_driver=False)
while sum(n["Alive"] for n in ray.nodes()) < count and time.monotonic() < deadline:
    time.sleep(0.5)
print(sum(n["Alive"] for n in ray.nodes()))
"""


def live_nodes(address: str, at_least: int = 0, timeout: float = 0) -> int:
    """Alive nodes as the GCS reports them, asked by a short-lived driver (the test process stays clean)."""
    out = subprocess.run([sys.executable, "-c", _NODE_PROBE, address, str(at_least), str(timeout)],
                         capture_output=True, text=True, env=service_env(), timeout=timeout + 60)
    if out.returncode != 0:
        raise RuntimeError(f"ray probe of {address} failed:\n{out.stderr[-3000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def _wait_nodes(address: str, count: int, timeout: float, node: RayNode) -> None:
    wait_until(lambda: live_nodes(address, count, timeout) >= count, timeout + 60,
               f"ray node joining {address}", node.proc, node.log)


def start_ray_cluster(workers: list[dict[str, float]] | None = None, head_resources: dict[str, float] | None = None,
                      head_cpus: int = 1, worker_cpus: int = 1, timeout: float = 90) -> RayCluster:
    """A Ray head plus one worker node per resources dict, each a separate `ray start` on loopback."""
    port = free_port()
    head_args = ["--head", "--port", str(port), "--include-dashboard", "false"]
    head = _start_node(head_args, head_resources, head_cpus, extra_env={})
    head.head_address = f"127.0.0.1:{port}"
    cluster = RayCluster(head, [])
    try:
        _wait_nodes(head.head_address, 1, timeout, head)
        for resources in workers or []:
            cluster.add_worker(resources, worker_cpus, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
