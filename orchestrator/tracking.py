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
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from etrm.metrics import METRICS
from orchestrator.provenance import code_version, package_versions
from orchestrator.records import DONE_STATUSES, STATUSES, TrialRecord, mlflow_metric_name

_RUN_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "stopped": "KILLED"}
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
        location = (artifact_root / name).as_uri() if artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    # -- finding runs ------------------------------------------------------------------------------

    def _search(self, role: str, extra: str = "") -> Iterator[Any]:
        query = f"tags.`etrm.sweep` = '{self.sweep}' and tags.`etrm.role` = '{role}'" + extra
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def parent_run_id(self) -> str | None:
        return next((r.info.run_id for r in self._search("sweep")), None)

    def trial_runs(self) -> dict[str, Any]:
        """trial_id -> MLflow run, for every trial this sweep has ever started."""
        return {r.data.tags["etrm.trial_id"]: r for r in self._search("trial")}

    def trial_statuses(self) -> dict[str, str]:
        return {tid: r.data.tags.get("etrm.status", "running") for tid, r in self.trial_runs().items()}

    def done_trial_ids(self) -> set[str]:
        return {tid for tid, status in self.trial_statuses().items() if status in DONE_STATUSES}

    # -- writing -----------------------------------------------------------------------------------

    def open_sweep(self, description: str = "") -> str:
        """The sweep's parent run (created on the first launch, reopened on later ones)."""
        run_id = self.parent_run_id()
        if run_id is None:
            tags = {"etrm.sweep": self.sweep, "etrm.role": "sweep", MLFLOW_RUN_NAME: self.sweep,
                    "mlflow.note.content": description}
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "etrm.code_version", code_version())
        return run_id

    def close_sweep(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def open_trial(self, parent_id: str, trial: Any, existing: dict[str, Any] | None = None) -> str:
        """Get or create the child run of a PlannedTrial; params and identity tags are written once."""
        existing = self.trial_runs() if existing is None else existing
        if trial.trial_id in existing:
            run_id = existing[trial.trial_id].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "etrm.status", "running")
            return run_id
        tags = {
            MLFLOW_PARENT_RUN_ID: parent_id,
            MLFLOW_RUN_NAME: f"{trial.cell_label} seed={trial.seed}",
            "etrm.sweep": self.sweep, "etrm.role": "trial", "etrm.status": "running",
            "etrm.trial_id": trial.trial_id, "etrm.cell_id": trial.cell_id, "etrm.cell": trial.cell_label,
            "etrm.seed": str(trial.seed), "etrm.variant": json.dumps(trial.variant, sort_keys=True),
            "etrm.config_hash": trial.config.config_hash(), "etrm.code_version": code_version(),
            **{f"etrm.version.{k}": v for k, v in package_versions().items()},
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

    def set_trial_status(self, run_id: str, status: str, message: str = "") -> None:
        assert status in STATUSES, status
        self.client.set_tag(run_id, "etrm.status", status)
        self.client.set_tag(run_id, "etrm.message", message[:5000])
        if status in _RUN_STATUS:
            self.client.set_terminated(run_id, status=_RUN_STATUS[status])

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def write_summary_run(self, parent_id: str, cell_id: str, label: str, variant: dict[str, Any],
                          metrics: dict[str, float]) -> str:
        """One run per cell holding aggregates (mean, CI, n), for MLflow's compare views; replaced on rerun."""
        for old in self._search("summary", f" and tags.`etrm.cell_id` = '{cell_id}'"):
            self.client.delete_run(old.info.run_id)
        tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: f"summary: {label}",
                "etrm.sweep": self.sweep, "etrm.role": "summary", "etrm.cell_id": cell_id, "etrm.cell": label,
                "etrm.variant": json.dumps(variant, sort_keys=True)}
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        params = [Param(k, str(v)) for k, v in variant.items()]
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=params[:100],
                              metrics=[Metric(mlflow_metric_name(k), float(v), now, 0) for k, v in metrics.items()])
        self.client.set_terminated(run_id)
        return run_id

    # -- reading for the comparison ----------------------------------------------------------------

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
                trial_id=trial_id, cell_id=tags["etrm.cell_id"], seed=int(tags["etrm.seed"]),
                variant=json.loads(tags["etrm.variant"]), status=tags.get("etrm.status", "running"),
                final={k: h[-1][1] for k, h in history.items() if h}, history=history,
                run_id=run.info.run_id,
            ))
        return out
