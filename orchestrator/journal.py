"""Tracking writes that never stall training: a write-ahead journal and one writer thread.

Ray Tune calls the driver's callbacks on its own loop, so a callback that waits on an unreachable
tracking server stalls every trial on its reserved resources. The callback therefore only hands its
writes to this journal, which appends each one to `<workspace>/journal/<sweep>.jsonl` and queues it; one
thread applies them in order, retrying through an outage. The file is emptied whenever everything in it
is applied, so what it holds is exactly what the tracking store may still lack: a driver killed during an
outage loses nothing, and the next launch of the sweep applies it first (`replay`). Every write is
idempotent (runs are found by tag, a metric step already logged is skipped, tags and artifacts are
overwritten), so applying one twice is harmless.

A write that has waited longer than `tracking.give_up_after` seconds turns `gave_up` on: the launch then
stops its trials (each keeps its checkpoints), says so in one line, and leaves the journal for the next.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from etrm.config import TrialConfig
from etrm.status import TrialStatus
from orchestrator.plan import PlannedTrial

# MLflow's answers to a write it will never accept: skipped with a note, never retried.
_REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
            "BAD_REQUEST", "PERMISSION_DENIED"}


class TrackingUnavailable(RuntimeError):
    """The tracking store could not be written for longer than the spec allows."""


class TrackingJournal:
    def __init__(self, store, parent_id: str, path: Path, give_up_after: float, say: Callable[[str], None]):
        self.store, self.parent_id, self.path, self.give_up_after, self.say = store, parent_id, path, give_up_after, say
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a")
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._waiting_since: float | None = None  # when the write being applied was queued
        self._run_ids: dict[str, str] = {}
        self._existing: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._write, name="etrm-tracking-journal", daemon=True)
        self._thread.start()

    # -- what the driver's callback records (never blocks on the tracking store) -----------------------

    def open(self, trial: PlannedTrial) -> None:
        self._put("open", {**asdict(trial), "config": trial.config.model_dump(mode="json")})

    def metrics(self, trial_id: str, step: int, metrics: dict[str, float]) -> None:
        self._put("metrics", trial_id, step, metrics)

    def status(self, trial_id: str, status: TrialStatus, message: str) -> None:
        self._put("status", trial_id, str(status), message)

    def message(self, trial_id: str, message: str) -> None:
        self._put("message", trial_id, message)

    def node(self, trial_id: str, node_id: str) -> None:
        self._put("node", trial_id, node_id)

    def text(self, trial_id: str, text: str, path: str) -> None:
        self._put("text", trial_id, text, path)

    def _put(self, *op: Any) -> None:
        line = json.dumps(op)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()  # in the OS's hands: survives this process being killed
            self._pending += 1
        self._queue.put((op, time.monotonic()))

    # -- the writer --------------------------------------------------------------------------------

    @property
    def stalled_for(self) -> float:
        """Seconds the write now being applied has waited (0 when none is stuck)."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def gave_up(self) -> bool:
        return self.stalled_for > self.give_up_after

    @property
    def pending(self) -> int:
        return self._pending

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            op, queued = item
            self._waiting_since = queued
            self._apply_until_done(op)
            self._waiting_since = None
            with self._lock:
                self._pending -= 1
                if self._pending == 0:  # everything journaled is in the store now
                    self._file.truncate(0)
                    self._file.seek(0)

    def _apply_until_done(self, op: list) -> None:
        failing_since, delay = None, 1.0
        while True:
            try:
                apply(self.store, self.parent_id, op, self._run_ids, self._existing_runs)
            except Exception as err:  # noqa: BLE001 - whatever the client raises while the server is away
                if getattr(err, "error_code", None) in _REFUSED:
                    self.say(f"tracking refused a write ({op[0]} of trial {str(op[1])[:8]}): {err}; skipped")
                    return
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.say(f"tracking store unreachable ({type(err).__name__}); trials go on, their records wait "
                             f"in {self.path} (giving up after {self.give_up_after:.0f} s)")
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if failing_since is not None:
                self.say(f"tracking store back after {time.monotonic() - failing_since:.0f} s: writing "
                         f"{self._pending} journaled record(s)")
            return

    def _existing_runs(self) -> dict[str, Any]:
        if self._existing is None:
            self._existing = self.store.trial_runs()
        return self._existing

    def flush(self) -> None:
        """Wait until every write is in the store; raises TrackingUnavailable once one waited give_up_after."""
        while self._pending and not self.gave_up:
            time.sleep(0.05)
        if self._pending:
            raise self.unavailable()

    def close(self) -> None:
        """flush(), then end the writer thread."""
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._file.close()

    def unavailable(self) -> TrackingUnavailable:
        return TrackingUnavailable(
            f"tracking store {self.store.uri} unreachable for {self.stalled_for:.0f} s (tracking.give_up_after: "
            f"{self.give_up_after:.0f}): trials stopped, checkpoints kept; {self._pending} record(s) wait in "
            f"{self.path}, and `etrm-sweep resume {self.store.sweep}` writes them and continues")


def apply(store, parent_id: str, op: list, run_ids: dict[str, str], existing: Callable[[], dict[str, Any]]) -> None:
    """One journaled write, against the store (idempotent)."""
    kind, first, *rest = op
    if kind == "open":
        trial = PlannedTrial(**{**first, "config": TrialConfig.model_validate(first["config"])})
        run_ids[trial.trial_id] = store.open_trial(parent_id, trial, existing())
        return
    run_id = run_ids.get(first) or _found(existing(), first)
    if run_id is None:
        return  # its run was never opened (a journal cut short before its first line): nothing to attach to
    if kind == "metrics":
        store.log_metrics(run_id, *rest)
    elif kind == "status":
        store.set_trial_status(run_id, TrialStatus(rest[0]), rest[1])
    elif kind == "message":
        store.set_message(run_id, *rest)
    elif kind == "node":
        store.set_node(run_id, *rest)
    elif kind == "text":
        store.log_text(run_id, *rest)


def _found(runs: dict[str, Any], trial_id: str) -> str | None:
    run = runs.get(trial_id)
    return run.info.run_id if run is not None else None


def replay(store, parent_id: str, path: Path) -> int:
    """Apply the journal an earlier launch left (it ended during an outage, or was killed); returns how many."""
    if not path.exists():
        return 0
    ops = []
    for line in path.read_text().splitlines():
        try:
            ops.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill mid-write
    run_ids: dict[str, str] = {}
    runs = store.trial_runs()
    for op in ops:
        apply(store, parent_id, op, run_ids, lambda: runs)
    path.unlink()
    return len(ops)
