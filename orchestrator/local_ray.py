"""Processes a hard-killed launch leaves behind, ended by the next launch.

A local Ray started by `ray.init` mostly dies with its driver, but not all of it: after a
SIGKILL (or a closed terminal) its dashboard and runtime-env agents stay, about 200 MB.
So every launch that starts a local Ray notes its own pid and the processes below it, and
the next launch ends the noted processes of drivers that are gone. A process is matched by
pid AND start time, so a pid the system has since given to another program is left alone.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

import psutil


def record(folder: Path) -> Path:
    """Note this driver and every process below it (call it right after starting a local Ray)."""
    folder.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    note = {"driver": [me.pid, me.create_time()],
            "processes": [[p.pid, p.create_time()] for p in me.children(recursive=True)]}
    path = folder / f"{me.pid}-{me.create_time():.0f}.json"  # a pid alone may be reused
    partial = path.with_suffix(".partial")  # a driver killed mid-write leaves no half note for reap to read
    partial.write_text(json.dumps(note))
    partial.replace(path)
    return path


def reap(folder: Path, grace: float = 5.0) -> list[int]:
    """End the noted processes of every driver that no longer runs; returns their pids."""
    ended = []
    for path in sorted(folder.glob("*.json")):
        note = json.loads(path.read_text())
        if _same_process(*note["driver"]):
            continue  # that launch is still running
        left = [p for p in (_same_process(pid, started) for pid, started in note["processes"]) if p]
        for process in left:
            with suppress(psutil.NoSuchProcess):
                process.terminate()
        _, survivors = psutil.wait_procs(left, timeout=grace)
        for process in survivors:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(survivors, timeout=grace)
        ended += [p.pid for p in left]
        path.unlink()
    return ended


def _same_process(pid: int, started: float) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        return process if abs(process.create_time() - started) < 0.01 else None
    except psutil.Error:  # gone, or not ours to see
        return None
