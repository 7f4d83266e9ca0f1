"""MLflow: one experiment per spec, one parent run per sweep, one child run per trial.

The sweep driver is the only writer (trials report to Ray Tune; a Tune callback
in the driver writes here), so the embedded SQLite store never sees concurrent
writers and workers never need to reach MLflow. Runs are found by tags, never
remembered in memory: relaunching a sweep reopens the same runs, so an
interrupted sweep never produces duplicate runs, and a metric step already
logged is not logged twice.

Tags (all runs): `etrm.sweep`, `etrm.role` (sweep | trial | summary).
Trial runs add: `etrm.trial_id`, `etrm.cell_id`, `etrm.cell`, `etrm.seed`,
`etrm.variant` (JSON), `etrm.config_hash`, `etrm.code_version`,
`etrm.version.<package>`, `etrm.status` (running | finished | diverged | failed
| stopped), `etrm.message`, `etrm.node_id` (the Ray node of the latest attempt).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from etrm.metrics import METRICS
from etrm.status import DONE, RECORDED, TrialStatus
from orchestrator.provenance import code_version, package_versions
from orchestrator.records import TrialRecord, mlflow_metric_name


class Tag:
    """The names of the tags runs are found and read by."""

    SWEEP = "etrm.sweep"
    ROLE = "etrm.role"  # a Role
    TRIAL_ID = "etrm.trial_id"
    CELL_ID = "etrm.cell_id"
    CELL = "etrm.cell"  # the cell's label, for people
    SEED = "etrm.seed"
    VARIANT = "etrm.variant"  # JSON: axis key -> value
    CONFIG_HASH = "etrm.config_hash"
    CODE_VERSION = "etrm.code_version"
    VERSION = "etrm.version."  # + a package name
    STATUS = "etrm.status"  # a TrialStatus in RECORDED
    MESSAGE = "etrm.message"
    NODE_ID = "etrm.node_id"
    RAY_JOB_ID = "etrm.ray_job_id"  # sweep runs: the Ray job of the latest launch


class Role(StrEnum):
    SWEEP = "sweep"
    TRIAL = "trial"
    SUMMARY = "summary"


# With an http tracking URI, MLflow prints "View run ... at: URL" lines to stdout whenever a run ends: they
# would bury a launch's own progress lines. `etrm-sweep ui` and the launch's last lines say where MLflow is.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

_RUN_STATUS = {TrialStatus.FINISHED: "FINISHED", TrialStatus.DIVERGED: "FAILED", TrialStatus.FAILED: "FAILED",
               TrialStatus.STOPPED: "KILLED", TrialStatus.INTERRUPTED: "KILLED"}
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call
_OUR_NAME = {mlflow_metric_name(name): name for name in METRICS}  # MLflow refuses '@': ARC/pass@1 is stored as ARC/pass_at_1


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class StatusRow:
    """One line of `etrm-sweep status`."""

    trial_id: str
    cell: str
    seed: int
    status: TrialStatus
    step: int | None  # last step logged
    value: float | None  # latest value of the metric asked for
    message: str


class SweepStore:
    """Reads and writes one sweep's runs in one MLflow experiment."""

    def __init__(self, uri: str, experiment: str, sweep: str, artifact_root: Path | None = None):
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.sweep = uri, sweep
        self.experiment_id = self._experiment(experiment, artifact_root)
        self._last_step: dict[tuple[str, str], int] = {}
        self._new_runs: set[str] = set()  # created by this process: nothing logged yet, nothing to look up

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if artifact_root:  # the spec checks names; this holds even for a store opened some other way
            folder = (artifact_root / name).resolve()
            if not folder.is_relative_to(artifact_root.resolve()):
                raise ValueError(f"experiment name {name!r} would put artifacts outside {artifact_root}")
            location = folder.as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    # -- finding runs ------------------------------------------------------------------------------

    def _search(self, role: Role, extra: str = "") -> Iterator[Any]:
        query = f"tags.`{Tag.SWEEP}` = '{self.sweep}' and tags.`{Tag.ROLE}` = '{role}'" + extra
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def parent_run_id(self) -> str | None:
        return next((r.info.run_id for r in self._search(Role.SWEEP)), None)

    def trial_runs(self) -> dict[str, Any]:
        """trial_id -> MLflow run, for every trial this sweep has ever started."""
        return {r.data.tags[Tag.TRIAL_ID]: r for r in self._search(Role.TRIAL)}

    def trial_statuses(self) -> dict[str, TrialStatus]:
        return {tid: status_of(r) for tid, r in self.trial_runs().items()}

    def done_trial_ids(self) -> set[str]:
        return {tid for tid, status in self.trial_statuses().items() if status in DONE}

    # -- writing -----------------------------------------------------------------------------------

    def open_sweep(self, description: str = "") -> str:
        """The sweep's parent run (created on the first launch, reopened on later ones)."""
        run_id = self.parent_run_id()
        if run_id is None:
            tags = {Tag.SWEEP: self.sweep, Tag.ROLE: Role.SWEEP, MLFLOW_RUN_NAME: self.sweep,
                    "mlflow.note.content": description}
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, Tag.CODE_VERSION, code_version())
        return run_id

    def close_sweep(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def open_trial(self, parent_id: str, trial: Any, existing: dict[str, Any] | None = None) -> str:
        """Get or create the child run of a PlannedTrial; params and identity tags are written once."""
        existing = self.trial_runs() if existing is None else existing
        if trial.trial_id in existing:
            run_id = existing[trial.trial_id].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, Tag.STATUS, TrialStatus.RUNNING)
            return run_id
        tags = {
            MLFLOW_PARENT_RUN_ID: parent_id,
            MLFLOW_RUN_NAME: f"{trial.cell_label} seed={trial.seed}",
            Tag.SWEEP: self.sweep, Tag.ROLE: Role.TRIAL, Tag.STATUS: TrialStatus.RUNNING,
            Tag.TRIAL_ID: trial.trial_id, Tag.CELL_ID: trial.cell_id, Tag.CELL: trial.cell_label,
            Tag.SEED: str(trial.seed), Tag.VARIANT: json.dumps(trial.variant, sort_keys=True),
            Tag.CONFIG_HASH: trial.config.config_hash(), Tag.CODE_VERSION: code_version(),
            **{f"{Tag.VERSION}{k}": v for k, v in package_versions().items()},
        }
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        self._new_runs.add(run_id)
        params = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v))
                  for k, v in flatten(trial.config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        self.client.log_dict(run_id, trial.config.model_dump(mode="json"), "trial_config.json")
        return run_id

    def log_metrics(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Log one step's metrics, skipping any (metric, step) this run already holds (a resumed trial)."""
        now = int(time.time() * 1000)
        fresh = []
        for key, value in metrics.items():
            key = mlflow_metric_name(key)
            if step > self._last_logged(run_id, key):
                fresh.append(Metric(key, float(value), now, step))
                self._last_step[(run_id, key)] = step
        for i in range(0, len(fresh), _BATCH):
            self.client.log_batch(run_id, metrics=fresh[i:i + _BATCH])

    def _last_logged(self, run_id: str, key: str) -> int:
        if (run_id, key) not in self._last_step:
            if run_id in self._new_runs:
                return -1
            history = self.client.get_metric_history(run_id, key)
            self._last_step[(run_id, key)] = max((m.step for m in history), default=-1)
        return self._last_step[(run_id, key)]

    def set_trial_status(self, run_id: str, status: TrialStatus, message: str = "") -> None:
        if status not in RECORDED:
            raise ValueError(f"{status!r} is not a status a trial run records; known: {sorted(RECORDED)}")
        self.client.set_tag(run_id, Tag.STATUS, status)
        self.set_message(run_id, message)
        if status in _RUN_STATUS:
            self.client.set_terminated(run_id, status=_RUN_STATUS[status])

    def set_message(self, run_id: str, message: str) -> None:
        self.client.set_tag(run_id, Tag.MESSAGE, message[:5000])

    def set_ray_job(self, run_id: str, job_id: str) -> None:
        self.client.set_tag(run_id, Tag.RAY_JOB_ID, job_id)

    def set_node(self, run_id: str, node_id: str) -> None:
        self.client.set_tag(run_id, Tag.NODE_ID, node_id)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def delete_summary_runs(self, keep: set[str]) -> None:
        """Delete the summary runs of cells not in `keep` (cells of an earlier version of the sweep)."""
        for old in self._search(Role.SUMMARY):
            if old.data.tags.get(Tag.CELL_ID) not in keep:
                self.client.delete_run(old.info.run_id)

    def write_summary_run(self, parent_id: str, cell_id: str, label: str, variant: dict[str, Any],
                          metrics: dict[str, float]) -> str:
        """One run per cell holding aggregates (mean, CI, n), for MLflow's compare views; replaced on rerun."""
        for old in self._search(Role.SUMMARY, f" and tags.`{Tag.CELL_ID}` = '{cell_id}'"):
            self.client.delete_run(old.info.run_id)
        tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: f"summary: {label}",
                Tag.SWEEP: self.sweep, Tag.ROLE: Role.SUMMARY, Tag.CELL_ID: cell_id, Tag.CELL: label,
                Tag.VARIANT: json.dumps(variant, sort_keys=True)}
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        params = [Param(k, str(v)) for k, v in variant.items()]
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=params[:100],
                              metrics=[Metric(mlflow_metric_name(k), float(v), now, 0) for k, v in metrics.items()])
        self.client.set_terminated(run_id)
        return run_id

    # -- reading ------------------------------------------------------------------------------------

    def status_rows(self, planned: Iterable[Any], metric: str) -> list[StatusRow]:
        """Every trial of the sweep: the PlannedTrials in plan order (pending when never started), then every
        other trial run it holds (Optuna's samples, trials of an earlier version of the spec) by start time."""
        runs = self.trial_runs()
        rows = []
        for t in planned:
            run = runs.pop(t.trial_id, None)
            rows.append(self._status_row(run, metric) if run else
                        StatusRow(t.trial_id, t.cell_label, t.seed, TrialStatus.PENDING, None, None, ""))
        return rows + [self._status_row(r, metric) for r in sorted(runs.values(), key=lambda r: r.info.start_time)]

    def _status_row(self, run: Any, metric: str) -> StatusRow:
        tags = run.data.tags
        # train/lr is logged at every log step, whatever else the window held
        history = self.client.get_metric_history(run.info.run_id, "train/lr")
        return StatusRow(tags[Tag.TRIAL_ID], tags.get(Tag.CELL, "?"), int(tags[Tag.SEED]), status_of(run),
                         max((m.step for m in history), default=None),
                         run.data.metrics.get(mlflow_metric_name(metric)), tags.get(Tag.MESSAGE, ""))


    def records(self, metrics: Iterable[str] | None = None) -> list[TrialRecord]:
        """Every trial of the sweep with its final metrics and histories, straight from MLflow."""
        out = []
        for trial_id, run in sorted(self.trial_runs().items()):
            tags = run.data.tags
            stored = list(run.data.metrics) if metrics is None else \
                [mlflow_metric_name(k) for k in metrics if mlflow_metric_name(k) in run.data.metrics]
            history = {_OUR_NAME.get(k, k): sorted((m.step, m.value)
                                                   for m in self.client.get_metric_history(run.info.run_id, k))
                       for k in stored}
            out.append(TrialRecord(
                trial_id=trial_id, cell_id=tags[Tag.CELL_ID], seed=int(tags[Tag.SEED]),
                variant=json.loads(tags[Tag.VARIANT]), status=status_of(run),
                final={k: h[-1][1] for k, h in history.items() if h}, history=history,
                run_id=run.info.run_id, code_version=tags.get(Tag.CODE_VERSION, ""),
            ))
        return out


def status_of(run: Any) -> TrialStatus:
    """A trial run's status; a run without the tag was opened by a driver that died before writing it."""
    value = run.data.tags.get(Tag.STATUS, TrialStatus.RUNNING)
    try:
        return TrialStatus(value)
    except ValueError:
        raise ValueError(f"run {run.info.run_id}: unknown {Tag.STATUS} {value!r}; known: {sorted(RECORDED)}") from None
