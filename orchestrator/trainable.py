"""The Ray Tune function trainable: one call runs one trial of the shared trainer on a worker.

It knows nothing of MLflow: everything the driver records arrives through
`tune.report` as `{"etrm": {...}}` events. Checkpoints go to the CheckpointStore
under the trial id, so a retry on another node, or a relaunch of the whole
sweep, resumes the trial where its last checkpoint left it.

The driver imports this module only to hand `run_trial` to Tune; torch and the
trainer are imported inside it, on the worker, so the driver never loads them.
"""

from __future__ import annotations

import errno
import traceback
from pathlib import Path
from typing import Any

import ray
from ray import tune

from etrm.config import TrialConfig, build_config
from etrm.status import TrialStatus
from orchestrator.checkpoints import CheckpointStore
from orchestrator.history import append_event

# Storage a trial cannot write: read-only, not permitted, full. Retrying on the same storage cannot help.
DETERMINISTIC_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR)


class TuneReporter:
    """The trainer's Reporter, forwarding to Ray Tune."""

    def __init__(self, store: CheckpointStore, trial_id: str, workdir: Path, score_metric: str | None):
        self.store, self.trial_id, self.workdir = store, trial_id, workdir
        self.score_metric = score_metric

    def report(self, event: dict[str, Any], keep: bool = True) -> None:
        """Searchers and schedulers read top-level `etrm/score` and `etrm/step`; the driver reads the event.
        The node id tells nodes apart even when they share an IP (Tune's own `node_ip` cannot). The event
        goes first to the trial's history beside its checkpoints, which outlives any tracking store."""
        if keep:
            append_event(self.workdir, event)
        result: dict[str, Any] = {"etrm": event | {"node_id": ray.get_runtime_context().get_node_id()},
                                  "etrm/step": event["step"]}
        if self.score_metric in event["metrics"]:
            result["etrm/score"] = event["metrics"][self.score_metric]
        tune.report(result)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.report({"event": "log", "step": step, "metrics": metrics})

    def checkpoint_saved(self, step: int, path: Path) -> None:
        self.store.publish(self.trial_id, self.workdir)

    def warn(self, message: str) -> None:
        self.report({"event": "warning", "step": 0, "message": message, "metrics": {}}, keep=False)


def trial_config(params: dict[str, Any]) -> TrialConfig:
    """Grid trials arrive resolved; searched ones arrive as a sample of dotted overrides on the base."""
    if "trial" in params:
        return TrialConfig.model_validate(params["trial"]["config"])
    return build_config(params["base"], {**params["sample"], "seed": params["seed"]})


def run_trial(params: dict[str, Any]) -> None:
    """One trial, on a Ray worker. Torch and the trainer load here, so the driver never imports them."""
    import torch

    from etrm.checkpoint import CheckpointMismatch
    from etrm.train import TrialInvalid, train

    cfg = trial_config(params)
    trial_id = cfg.config_hash()
    if cfg.train.threads is None:  # use what Ray reserved for the trial, not every core of the node
        torch.set_num_threads(max(1, int(params["cpus_per_trial"])))
    store = CheckpointStore(params["checkpoint_root"])
    reporter = TuneReporter(store, trial_id, Path("."), params.get("score_metric"))
    try:
        reporter.workdir = store.workdir(trial_id)
        result = train(cfg, reporter, reporter.workdir)
    except (TrialInvalid, CheckpointMismatch, OSError) as err:
        if isinstance(err, OSError) and err.errno not in DETERMINISTIC_ERRNOS:
            raise  # e.g. a network filesystem that hiccuped: a retry may get through
        # Not retried: the same config, data and storage fail the same way on every attempt. The trial ends
        # here as failed (a relaunch tries it again, once the config, data or storage is fixed).
        reporter.report({"event": "end", "step": 0, "status": TrialStatus.FAILED, "metrics": {},
                         "message": f"not retried, it would fail the same way: {type(err).__name__}: {err}",
                         "error": traceback.format_exc()}, keep=False)
        return
    reporter.report({"event": "end", "step": result.step, "status": result.status,
                     "message": result.message, "metrics": result.metrics})
