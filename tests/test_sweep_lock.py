"""orchestrator/sweep_lock.py on a real MLflow store: one holder, stale locks taken over, races lost cleanly.

Real processes race on a fresh SQLite store (schema creation included, as two fresh launches do); a
holder on another host is judged by its heartbeat, one on this host by pid and start time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import sweep_lock
from orchestrator.sweep_lock import Holder, SweepLock, SweepLocked, lock_name
from orchestrator.tracking_db import ensure_schema

# Says "ready" once imported and waits for "go" on stdin, so that every contender opens the store as every
# command does (schema under its lock) at the same moment; then tries the lock, says what happened, holds.
CONTENDER = """
import sys, time
from mlflow.tracking import MlflowClient
from orchestrator.sweep_lock import SweepLock, SweepLocked
from orchestrator.tracking_db import ensure_schema
uri = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
ensure_schema(uri)
client = MlflowClient(uri)
try:
    lock = SweepLock.acquire(client, "exp", "sw")
except SweepLocked as err:
    print("refused:", err, flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def contenders(uri: str, count: int, hold: float) -> list[subprocess.Popen]:
    """Driver-like processes, started together; each races for the lock once `go` tells it to."""
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, uri, str(hold)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return procs


def go(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


@pytest.mark.slow  # fresh interpreters importing MLflow, a fresh store's schema
def test_of_drivers_racing_on_a_fresh_store_exactly_one_holds_the_lock(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = contenders(uri, 3, 300)
    go(procs)
    try:
        said = [p.stdout.readline().strip() for p in procs]  # each says one line, then holds or exits
    finally:
        for p in procs:
            p.kill()
    errors = [p.stderr.read() for p in procs]
    assert all(said) and not any("Traceback" in e for e in errors), errors  # no schema race, no traceback
    holders = [p.pid for p, s in zip(procs, said) if s == "held"]
    assert len(holders) == 1, said
    for s in said:
        if s != "held":
            assert s.startswith("refused: sweep 'sw' is already running: driver pid ") and \
                f"pid {holders[0]} on host " in s, s


@pytest.mark.slow  # fresh interpreters importing MLflow, a fresh store's schema
def test_the_lock_of_a_killed_driver_is_taken_over_and_a_live_one_is_not(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_schema(uri)
    client = MlflowClient(uri)
    [holder] = contenders(uri, 1, 300)
    go([holder])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepLocked, match=f"driver pid {holder.pid} on host"):
            SweepLock.acquire(client, "exp", "sw")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        lock = SweepLock.acquire(client, "exp", "sw")
    finally:
        holder.kill()
    assert lock.took_over is not None and lock.took_over.pid == holder.pid
    with pytest.raises(SweepLocked, match=f"driver pid {os.getpid()} on host"):
        SweepLock.acquire(client, "exp", "sw")
    lock.release()
    SweepLock.acquire(client, "exp", "sw").release()  # released: free at once
    names = [e.name for e in client.search_experiments()]
    assert lock_name("exp", "sw") not in names  # retired locks leave the experiment list


def test_a_holder_on_another_host_is_judged_by_its_heartbeat(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_schema(uri)
    client = MlflowClient(uri)
    now = time.time()
    elsewhere = Holder("another-host", os.getpid(), 1.0, now - 3600, now - 5)  # same pid: must not matter
    client.create_experiment(lock_name("exp", "sw"), tags=elsewhere.tags())
    with pytest.raises(SweepLocked, match="driver pid .* on host another-host"):
        SweepLock.acquire(client, "exp", "sw")

    found = client.get_experiment_by_name(lock_name("exp", "sw"))
    client.set_experiment_tag(found.experiment_id, "etrm.lock.heartbeat", repr(now - sweep_lock.STALE_AFTER_S - 1))
    lock = SweepLock.acquire(client, "exp", "sw")
    assert lock.took_over.host == "another-host"
    lock.release()
