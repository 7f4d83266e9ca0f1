"""orchestrator/local_ray.py with real processes: a killed driver's orphans end, a live driver's stay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from orchestrator import local_ray
from services import alive, kill_pids

# A stand-in driver: starts a child that would outlive it, notes both, says the child's pid, then waits.
DRIVER = """
import subprocess, sys, time
from pathlib import Path
from orchestrator import local_ray
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
local_ray.record(Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(300)
"""


def start_driver(folder) -> tuple[subprocess.Popen, int]:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder)], stdout=subprocess.PIPE, text=True)
    return driver, int(driver.stdout.readline())


def test_reap_ends_what_a_killed_driver_left_and_spares_a_running_one(tmp_path):
    killed, orphan = start_driver(tmp_path)
    running, its_child = start_driver(tmp_path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        assert alive(orphan)  # a hard kill does not take the child with it

        assert local_ray.reap(tmp_path) == [orphan]
        deadline = time.monotonic() + 10
        while alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(orphan)
        assert alive(its_child) and alive(running.pid)  # its driver still runs: left alone
        assert [p.name.split("-")[0] for p in tmp_path.glob("*.json")] == [str(running.pid)]  # the dead one's note is gone
        assert local_ray.reap(tmp_path) == []  # nothing twice
    finally:
        kill_pids({killed.pid, orphan, running.pid, its_child})


def test_a_pid_now_held_by_another_program_is_left_alone(tmp_path):
    """The note's pids (a driver 1, this test's process) exist, but were started at other times: both were
    reused since, so the driver counts as gone and this process is spared."""
    started = psutil.Process().create_time()
    (tmp_path / "1-0.json").write_text(json.dumps({"driver": [1, 0.0], "processes": [[os.getpid(), started - 60]]}))
    assert local_ray.reap(tmp_path) == [] and not list(tmp_path.glob("*.json"))
