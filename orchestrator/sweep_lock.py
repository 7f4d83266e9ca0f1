"""One driver per sweep: a lock kept in the sweep's own tracking store, which every driver of it reaches.

The lock is an MLflow experiment named `etrm-sweep lock: <experiment>/<sweep>`. The tracking database
keeps experiment names unique, so of two drivers creating it at once exactly one succeeds, whether the
store is the embedded SQLite file or a server that drivers on many machines share. Its tags name the
holder (host, pid, process start time, since) and a heartbeat the holder renews every HEARTBEAT_S.

A lock is stale when its holder is gone: on the holder's own host, when no process has its pid AND start
time (exact, as in local_ray.py); from another host, when its heartbeat is older than STALE_AFTER_S. A
stale lock is taken over by renaming it away by its id (so a taker never moves a lock created after it
looked) and creating the name again: creation stays the only way to hold the lock, and one taker wins.

Before that, and before Ray starts, a launch holds an flock on `<workspace>/locks/<sweep>.lock`: a second
driver in the same workspace is refused at once (two local Rays starting together can break both), and
the operating system frees it when its holder dies, so it is never stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0  # six missed heartbeats: the holder's machine (or its tracking link) is gone
_TAG = "etrm.lock."


class SweepLocked(RuntimeError):
    """Another live driver runs this sweep."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start time: a pid alone may be reused
    since: float
    heartbeat: float

    @classmethod
    def me(cls) -> "Holder":
        now, process = time.time(), psutil.Process()
        return cls(socket.gethostname(), process.pid, process.create_time(), now, now)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "Holder | None":
        try:
            return cls(tags[_TAG + "host"], int(tags[_TAG + "pid"]), float(tags[_TAG + "started"]),
                       float(tags[_TAG + "since"]), float(tags.get(_TAG + "heartbeat", tags[_TAG + "since"])))
        except (KeyError, ValueError):
            return None  # a lock created but not yet tagged: its creator is alive a moment ago

    def tags(self) -> dict[str, str]:
        return {_TAG + "host": self.host, _TAG + "pid": str(self.pid), _TAG + "started": repr(self.started),
                _TAG + "since": repr(self.since), _TAG + "heartbeat": repr(self.heartbeat)}

    def alive(self) -> bool:
        if self.host == socket.gethostname():
            try:
                return abs(psutil.Process(self.pid).create_time() - self.started) < 0.01
            except psutil.Error:
                return False
        return time.time() - self.heartbeat < STALE_AFTER_S

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"driver pid {self.pid} on host {self.host}, since {since}"


class WorkspaceLock:
    """An flock on a file naming its holder; held until release() or the holder's death."""

    def __init__(self, path: Path, sweep: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Ray's processes
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.read(self.fd, 4096)
            os.close(self.fd)
            try:
                holder = Holder(**json.loads(held))
            except (ValueError, TypeError):
                holder = None  # locked, its note not written yet
            raise SweepLocked(_refusal(sweep, holder)) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(Holder.me().__dict__).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing frees the flock; the file stays (deleting it would race a new holder)
            self.fd = -1


def _refusal(sweep: str, holder: Holder | None) -> str:
    return (f"sweep {sweep!r} is already running: "
            + (holder.describe() if holder else "a driver is starting it right now")
            + "; wait for it to end, or stop that driver (its trials resume on the next launch)")


def lock_name(experiment: str, sweep: str) -> str:
    return f"etrm-sweep lock: {experiment}/{sweep}"


class SweepLock:
    """Held from acquire() to release(); a daemon thread renews the heartbeat meanwhile."""

    def __init__(self, client, name: str, experiment_id: str, holder: Holder, took_over: Holder | None):
        self.client, self.name, self.experiment_id, self.holder = client, name, experiment_id, holder
        self.took_over = took_over  # the gone driver whose stale lock this one replaced, if any
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="etrm-sweep-lock", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, client, experiment: str, sweep: str, artifact_root: Path | None = None) -> "SweepLock":
        """Hold the sweep's lock, taking over a stale one; raises SweepLocked naming a live holder."""
        from mlflow.exceptions import MlflowException

        name = lock_name(experiment, sweep)
        location = (artifact_root / ".locks").as_uri() if artifact_root else None
        took_over = None
        for _ in range(3):  # a new lock, or a stale one renamed away then a new one (a racing taker may win)
            me = Holder.me()
            try:
                experiment_id = client.create_experiment(name, artifact_location=location,
                                                         tags={"etrm.role": "lock", **me.tags()})
                return cls(client, name, experiment_id, me, took_over)
            except MlflowException as err:
                if "already exists" not in str(err).lower() and err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(name)
            if found is None:
                continue  # released meanwhile
            holder = Holder.from_tags(found.tags)
            if holder is None or holder.alive():
                raise SweepLocked(_refusal(sweep, holder))
            _retire(client, found.experiment_id, name, "stale")
            took_over = holder
        raise SweepLocked(f"sweep {sweep!r}: could not take its lock {name!r} (other drivers kept taking it)")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.client.set_experiment_tag(self.experiment_id, _TAG + "heartbeat", repr(time.time()))
            except Exception:  # noqa: BLE001 - a tracking outage: the next beat tries again
                continue

    def release(self, wait: float = 10.0) -> None:
        """Retire the lock; with the tracking store unreachable, give up after `wait` seconds (the lock then
        goes stale, and the next driver takes it over)."""
        self._stop.set()
        releasing = threading.Thread(target=self._retire_if_ours, daemon=True)
        releasing.start()
        releasing.join(timeout=wait)

    def _retire_if_ours(self) -> None:
        try:
            found = self.client.get_experiment(self.experiment_id)
            if found.name == self.name and found.lifecycle_stage == "active":  # not taken over meanwhile
                _retire(self.client, self.experiment_id, self.name, "released")
        except Exception:  # noqa: BLE001 - unreachable now: the lock goes stale
            pass

    def __enter__(self) -> "SweepLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _retire(client, experiment_id: str, name: str, why: str) -> None:
    """Rename a lock away by id (a unique name, so the real name is free at once), then delete it."""
    from mlflow.exceptions import MlflowException

    try:
        client.rename_experiment(experiment_id, f"{name} ({why} {uuid.uuid4().hex[:12]})")
        client.delete_experiment(experiment_id)
    except MlflowException:
        pass  # another taker retired it first
