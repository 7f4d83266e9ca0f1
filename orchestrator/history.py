"""Each trial's metric history, kept with its checkpoints, so the record outlives the tracking store.

The trainable appends every event it reports (a step's metrics, the trial's end) to `history.jsonl` in
the trial's checkpoint folder before reporting it: append-only, one short line per logged step. Whatever
keeps a trial's checkpoints (a workspace folder, NFS, an object store, where it is published with each
checkpoint) keeps its history. A launch whose tracking store lacks a trial's run (the store was lost, or
emptied) rebuilds it from there, every metric point and, if the trial ended, its status; `rebuild_runs`
says what it could not rebuild.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etrm.status import DONE, TrialStatus
from orchestrator.checkpoints import CheckpointStore
from orchestrator.plan import Plan

HISTORY_NAME = "history.jsonl"


def append_event(workdir: Path, event: dict[str, Any]) -> None:
    """One line per event; flushed, so a killed worker loses at most the line it was writing."""
    with open(workdir / HISTORY_NAME, "a") as f:
        f.write(json.dumps(event, separators=(",", ":")) + "\n")


@dataclass
class TrialHistory:
    points: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics logged at it
    end: dict[str, Any] | None = None  # the trial's last word: status, message, step

    @classmethod
    def parse(cls, text: str) -> "TrialHistory":
        """A retried or resumed attempt logs again the steps after its checkpoint: later lines win
        (a resumed trial repeats them exactly). A torn last line (a killed worker) is skipped."""
        history = cls()
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("metrics"):
                history.points.setdefault(event["step"], {}).update(event["metrics"])
            if event["event"] == "end":
                history.end = event
        return history


def rebuild_runs(store, parent_id: str, plan: Plan, storage: CheckpointStore) -> list[str]:
    """Rebuild, from trial storage, the runs of planned trials the tracking store lacks; returns what to tell
    the user: what was rebuilt, and what could not be. The trials of a grid are planned; those an Optuna
    search drew are not, and are not rebuilt (the study reruns what it lacks)."""
    runs = store.trial_runs()
    rebuilt, points, lines = 0, 0, []
    for trial in plan.trials:
        if trial.trial_id in runs:
            continue
        text = storage.read_text(trial.trial_id, HISTORY_NAME)
        if text is None:
            if storage.has_checkpoint(trial.trial_id):
                lines.append(f"trial {trial.trial_id[:8]} ({trial.cell_label} seed={trial.seed}) has a checkpoint "
                             f"but no metric history in {storage.root}: its run will hold only the steps it "
                             "logs from now on")
            continue
        history = TrialHistory.parse(text)
        run_id = store.open_trial(parent_id, trial, runs)
        for step in sorted(history.points):
            store.log_metrics(run_id, step, history.points[step])
        if history.end and history.end["status"] in DONE:
            store.set_trial_status(run_id, TrialStatus(history.end["status"]), history.end.get("message", ""))
        else:
            store.set_trial_status(run_id, TrialStatus.RUNNING, "rebuilt from trial storage; resumes on this launch")
        rebuilt, points = rebuilt + 1, points + sum(len(m) for m in history.points.values())
    if rebuilt:
        lines.insert(0, f"Rebuilt {rebuilt} trial run(s) the tracking store lacked from their trial storage "
                        f"({points} metric points, statuses); not rebuilt: Ray's error reports of failed "
                        "attempts and the node tags")
    return lines
