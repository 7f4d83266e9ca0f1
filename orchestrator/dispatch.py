"""Run a sweep on Ray Tune: one Tune trial per pending (cell, seed), tracked in MLflow by the driver.

`launch` is idempotent: trials already finished (or diverged) in MLflow are not
run again, interrupted ones resume from their last checkpoint, and new seeds or
axis values added to the spec run as new trials of the same sweep. `resume` is
`launch` with the spec the sweep was last launched with.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import ray
import yaml
from ray import tune
from ray.job_config import JobConfig
from ray.tune.logger import JsonLoggerCallback
from rich.console import Console

from etrm.config import build_config
from etrm.status import DONE, TrialStatus
from orchestrator import local_ray, reachability
from orchestrator.checkpoints import CheckpointStore
from orchestrator.history import rebuild_runs
from orchestrator.journal import TrackingJournal, replay
from orchestrator.plan import Plan, PlannedTrial, check_memory, make_plan, planned_trial
from orchestrator.progress import SweepProgress
from orchestrator.provenance import code_version, package_versions
from orchestrator.spec import SpecError, SweepSpec, base_for
from orchestrator.sweep_lock import SweepLock, WorkspaceLock
from orchestrator.trainable import run_trial
from orchestrator.versions import split_versions
from orchestrator.workspace import SweepContext, Workspace

if TYPE_CHECKING:  # MLflow loads in launch's background thread, while Ray starts
    from orchestrator.tracking import SweepStore

_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # MLflow's INFO lines (its store creating tables) would land in the launch's output between the progress lines.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Eval metrics arrive only on eval steps, so the score a searcher or ASHA reads is absent from most
    # results: Tune must not treat that as an error (ASHA itself skips such results).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # MLflow is the record. Tune's automatic TensorBoard logger would import torch into the driver just as
    # the first trials start (a second of a 2-core machine); launch asks for Tune's result.json alone.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune runs every trial in a worker with its own env vars, so the workers a local raylet prestarts for
    # the driver's job are never used; starting them competes with the first trials for the CPU.
    "RAY_prestart_worker_first_driver": "0",
}
for _var, _value in _ENV_DEFAULTS.items():
    os.environ.setdefault(_var, _value)
# The live table and MLflow say what happened to each trial; Ray's and MLflow's own chatter would bury it.
for _logger in ("ray", "ray.tune", "mlflow"):
    logging.getLogger(_logger).setLevel(logging.CRITICAL if _logger.startswith("ray") else logging.WARNING)


@dataclass
class SweepOutcome:
    planned: int     # trials the spec asks for
    unfinished: int  # of those, not finished or diverged after this launch (failed, interrupted, never started)
    dashboard_url: str | None
    local_ray: bool  # the launch started its own Ray, which stops with it (its dashboard too)


class TrackingCallback(tune.Callback):
    """Driver-side bridge from Ray Tune events to MLflow runs (through the journal, which never blocks)
    and the live progress view."""

    def __init__(self, journal: TrackingJournal, resolve, progress: SweepProgress):
        self.journal, self.resolve, self.progress = journal, resolve, progress
        self.opened: set[str] = set()         # trial ids whose run this launch opened
        self.final: dict[str, TrialStatus] = {}  # trial_id -> how it ended (the trainer's word, or ours)
        self.nodes: dict[str, str] = {}       # trial_id -> Ray node id of its latest attempt
        self.warnings: dict[str, int] = {}    # trial_id -> warnings recorded by this launch

    def __getstate__(self) -> dict:
        """Tune pickles its run config into tuner.pkl for `Tuner.restore`, which this tool never uses (a
        relaunch finds trials by id); the live MLflow client and console stay out of that file."""
        return {}

    def _trial(self, trial) -> PlannedTrial:
        planned = self.resolve(trial.config)
        if planned.trial_id not in self.opened:
            self.opened.add(planned.trial_id)
            self.journal.open(planned)
            if planned.trial_id not in self.progress.rows:
                self.progress.add(planned.trial_id, planned.cell_label + f" s{planned.seed}",
                                  planned.config.train.steps)
        return planned

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.update(self._trial(trial).trial_id, state=TrialStatus.RUNNING)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        planned = self._trial(trial)
        event = result.get("etrm")
        if not event:
            return
        tid = planned.trial_id
        if event["event"] == "warning":  # e.g. a corrupt checkpoint set aside: the trial goes on
            n = self.warnings[tid] = self.warnings.get(tid, 0) + 1
            self.journal.text(tid, event["message"], f"warnings/{time.strftime('%Y%m%d-%H%M%S')}-{n}.txt")
            self.progress.console.print(f"[yellow]{planned.cell_label} seed={planned.seed}: {event['message']}")
            return
        if "error" in event:  # a failure not worth retrying: its stack, as Ray's error file would give it
            self.journal.text(tid, event["error"], "errors/not-retried.txt")
        if self.nodes.get(tid) != event["node_id"]:  # a new node: the trial (re)started there
            self.nodes[tid] = event["node_id"]
            self.journal.node(tid, event["node_id"])
        self.journal.metrics(tid, event["step"], event["metrics"])
        status = TrialStatus(event["status"]) if event["event"] == "end" else None
        if status:
            self.final[tid] = status
            self.journal.status(tid, status, event["message"])
        self.progress.update(planned.trial_id, step=event["step"], metrics=event["metrics"], state=status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        planned = self._trial(trial)
        if planned.trial_id not in self.final and not self.journal.gave_up:  # no last word: a scheduler stopped it
            self.final[planned.trial_id] = TrialStatus.STOPPED
            self.journal.status(planned.trial_id, TrialStatus.STOPPED, "stopped early by the scheduler")
            self.progress.update(planned.trial_id, state=TrialStatus.STOPPED)

    def on_trial_recover(self, iteration, trials, trial, **info):
        planned = self._trial(trial)
        self._record_error(planned.trial_id, trial, final=False)
        self.progress.update(planned.trial_id, state=TrialStatus.RETRYING)

    def on_trial_error(self, iteration, trials, trial, **info):
        planned = self._trial(trial)
        self.final[planned.trial_id] = TrialStatus.FAILED
        self._record_error(planned.trial_id, trial, final=True)
        self.progress.update(planned.trial_id, state=TrialStatus.FAILED)

    def mark_interrupted(self) -> None:
        """After Tune stopped (Ctrl-C): trials it left without a last word were cut off, not still running."""
        for trial_id in self.opened - self.final.keys():
            self.final[trial_id] = TrialStatus.INTERRUPTED
            self.journal.status(trial_id, TrialStatus.INTERRUPTED, "the launch was interrupted while it ran; "
                                "`etrm-sweep resume` continues it from its last checkpoint")
            self.progress.update(trial_id, state=TrialStatus.INTERRUPTED)

    def _record_error(self, trial_id: str, trial, final: bool) -> None:
        text = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() \
            else "no error file was written by Ray"
        self.journal.text(trial_id, text, f"errors/attempt-{trial.num_failures}.txt")
        last_line = text.strip().splitlines()[-1] if text.strip() else "error"
        if final:
            self.journal.status(trial_id, TrialStatus.FAILED, last_line)
        else:
            self.journal.message(trial_id, f"retrying after: {last_line}")


class GiveUpStopper(tune.Stopper):
    """Stops every trial once the tracking store has been unreachable for tracking.give_up_after."""

    def __init__(self, journal: TrackingJournal):
        self.journal = journal

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.journal.gave_up

    def __getstate__(self) -> dict:  # pickled into tuner.pkl with the run config, like the callback
        return {}


def connect(address: str | None, workspace: Workspace, job: dict[str, str]) -> str | None:
    """Join the cluster at `address`, or (None) start a local Ray sized to this machine, on loopback with
    the workspace's token (see local_ray.py). `job` is the Ray job's metadata: the dashboard's job list
    shows its `job_name`. Returns the dashboard URL."""
    if ray.is_initialized():
        ray.shutdown()
    job_config = JobConfig(metadata=job)
    if address:
        local_ray.secure_cluster()
        ctx = ray.init(address=address, job_config=job_config, log_to_driver=False, logging_level="error")
    else:
        local_ray.secure_local(workspace.ray_token)
        ctx = ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=local_ray.dashboard_port(), job_config=job_config, log_to_driver=False,
                       logging_level="error")
    url = ctx.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url


def check_resources(spec: SweepSpec, cluster_resources: dict[str, float]) -> None:
    """At launch, once connected to Ray: refuse a per-trial request no node pool could ever satisfy."""
    problems = []
    have_gpu, have_cpu = cluster_resources.get("GPU", 0), cluster_resources.get("CPU", 0)
    if spec.resources.gpu > have_gpu:
        has = f"only {have_gpu:g}" if have_gpu else "none"
        problems.append(
            f"resources.gpu: each trial asks for {spec.resources.gpu:g} GPU but the cluster has {has}; "
            "connect to a GPU cluster (cluster.address) or set resources.gpu: 0"
        )
    if spec.resources.cpu > have_cpu:
        problems.append(f"resources.cpu: each trial asks for {spec.resources.cpu:g} CPUs but the cluster has {have_cpu:g}")
    for name, amount in spec.resources.custom.items():
        have = cluster_resources.get(name, 0)
        if amount > have:
            problems.append(f"resources.custom.{name}: each trial asks for {amount:g} but the cluster has "
                            + (f"only {have:g}" if have else "none (no node was started with it)"))
    if problems:
        raise SpecError("\n".join(problems))


@dataclass
class Search:
    """How Tune generates this launch's trials: the param space, the searcher, and how a Tune trial's
    params map back to the PlannedTrial the tracking and the progress view know it by."""

    space: dict[str, Any]
    searcher: Any | None
    num_samples: int     # Tune's num_samples: 1 for a grid (the grid lists the trials), else samples left
    resolve: Callable[[dict[str, Any]], PlannedTrial]
    total: int           # trials the spec asks for
    done: int            # of those, already finished or diverged
    to_run: list[PlannedTrial]  # known in advance for a grid; empty for a search

    @property
    def remaining(self) -> int:
        return self.total - self.done


def grid_search(trials: list[PlannedTrial], done: set[str]) -> Search:
    """The planned `trials` not yet done, as one Tune grid."""
    by_id = {t.trial_id: t for t in trials}
    pending = [t for t in trials if t.trial_id not in done]
    space = {"trial": tune.grid_search([{"trial_id": t.trial_id, "config": t.config.model_dump(mode="json")}
                                        for t in pending])}
    return Search(space, None, 1, lambda params: by_id[params["trial"]["trial_id"]], len(trials),
                  len(trials) - len(pending), pending)


def optuna_search(spec: SweepSpec, store: SweepStore) -> Search:
    """Optuna through Ray Tune; trials finished by earlier launches seed the study instead of rerunning."""
    from ray.tune.search.optuna import OptunaSearch

    optuna = spec.optuna
    assert optuna is not None and optuna.metric is not None  # resolve() chose the metric
    points, rewards = [], []
    current, _ = split_versions(make_plan(spec), store.records([optuna.metric]))
    for record in current:
        if record.status in DONE and optuna.metric in record.final:
            points.append({f"sample/{k}": record.variant[k] for k in optuna.space})  # Tune's flattened names
            rewards.append(record.final[optuna.metric])
    # The sampler's seed moves on with the study's size: the same seed would redraw the first points.
    _, mode = spec.primary_metric()
    searcher = OptunaSearch(metric="etrm/score", mode=mode, seed=spec.seeds[0] + len(points),
                            points_to_evaluate=points or None, evaluated_rewards=rewards or None)

    def resolve(params: dict[str, Any]) -> PlannedTrial:
        return planned_trial(spec, {k: params["sample"][k] for k in optuna.space}, spec.seeds[0])

    space = {"sample": {key: _tune_domain(dim) for key, dim in optuna.space.items()},
             "base": spec.base, "seed": spec.seeds[0]}
    done = min(len(points), optuna.num_samples)
    return Search(space, searcher, optuna.num_samples - done, resolve, optuna.num_samples, done, [])


def _tune_domain(dim):
    if dim.type == "categorical":
        return tune.choice(dim.choices)
    if dim.type == "int":
        return (tune.lograndint if dim.log else tune.randint)(dim.low, dim.high + 1)
    return (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)


def _scheduler(spec: SweepSpec, plan: Plan):
    """ASHA over optimiser steps: rungs at 1/16, 1/4 and all of the longest trial's steps."""
    if spec.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    _, mode = spec.primary_metric()
    max_steps = max((t.config.train.steps for t in plan.trials), default=build_config(base_for(spec.base, {})).train.steps)
    return ASHAScheduler(time_attr="etrm/step", metric="etrm/score", mode=mode, max_t=max_steps,
                         grace_period=max(1, max_steps // 16), reduction_factor=4,
                         stop_last_trials=False)  # a trial that reaches the end finishes on its own


def launch(spec: SweepSpec, spec_text: str, *, address: str | None = None, console: Console | None = None,
           workspace: Workspace | None = None) -> SweepOutcome:
    console = console or Console()
    ctx = SweepContext(spec, (workspace or Workspace.default()).create())
    address, _ = reachability.ray_address(spec, address)  # checked to answer by the CLI, before Ray was imported
    plan = make_plan(spec)
    if not address:
        check_memory(plan)  # a local Ray runs the trials here: each must fit this machine
    launched_before = ctx.spec_path.exists()
    if not address and (leftovers := local_ray.reap(ctx.workspace.local_ray)):
        console.print(f"Ended {len(leftovers)} processes left by the local Ray of an earlier launch that was killed.")
    local = WorkspaceLock(ctx.workspace.locks / f"{spec.name}.lock", spec.name)  # before Ray: refused at once
    if problem := CheckpointStore(ctx.checkpoint_root).check_writable():
        local.release()
        raise SpecError(f"{'cluster.storage' if spec.cluster.storage else 'workspace'}: {problem}")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # open MLflow while Ray starts: each takes seconds
            opening = pool.submit(_open_locked, ctx)
            if launched_before and not _left_to_run(spec, plan, (opened := opening.result())[0].done_trial_ids()):
                with opened[1]:  # a finished sweep needs no Ray
                    ctx.save_spec(spec_text)
                    console.print(f"[bold]{spec.name}[/]: all {plan.num_trials} trials are done; nothing to run")
                    return SweepOutcome(plan.num_trials, 0, None, local_ray=False)
            # The sweep's name names its Ray job in the dashboard; the MLflow parent run records the job's id
            # (waiting for MLflow's parent run before starting Ray would put seconds on every launch).
            dashboard = connect(address, ctx.workspace, {"job_name": spec.name, "etrm.sweep": spec.name,
                                                         "etrm.experiment": spec.tracking.experiment or spec.name})
            try:
                store, lock = opening.result()
            except BaseException:
                ray.shutdown()  # refused (a driver elsewhere runs the sweep) or no store: nothing ran
                raise
        with lock:
            if lock.took_over:
                console.print(f"Took over the lock of {lock.took_over.describe()}: that driver is gone.")
            return _launch_locked(ctx, spec_text, plan, store, address, dashboard, console)
    finally:
        local.release()


def _open_locked(ctx: SweepContext) -> tuple[SweepStore, SweepLock]:
    """The sweep's store and its one-driver lock (raises SweepLocked naming a live driver)."""
    store = ctx.store()
    return store, SweepLock.acquire(store.client, ctx.spec.tracking.experiment or ctx.spec.name, ctx.spec.name,
                                    None if ctx.tracking_uri.startswith("http") else ctx.workspace.artifact_root)


def _launch_locked(ctx: SweepContext, spec_text: str, plan: Plan, store: SweepStore, address: str | None,
                   dashboard: str | None, console: Console) -> SweepOutcome:
    spec = ctx.spec
    if not address:
        local_ray.record(ctx.workspace.local_ray)
    check_resources(spec, ray.cluster_resources())
    ctx.save_spec(spec_text)  # only a launch that passed every check replaces the spec `resume` reads
    parent = store.open_sweep(spec.description or "")
    journal_path = ctx.workspace.journal / f"{spec.name}.jsonl"
    if replayed := replay(store, parent, journal_path):
        console.print(f"Wrote {replayed} tracking record(s) an earlier launch journaled while the store was away.")
    for line in rebuild_runs(store, parent, plan, CheckpointStore(ctx.checkpoint_root)):
        console.print(line)
    done = store.done_trial_ids()
    _log_launch(store, parent, spec_text, plan, done)
    job = f"job {ray.get_runtime_context().get_job_id()}" + (
        "" if address else f"; it asks for the token in {ctx.workspace.ray_token}")
    console.print(f"[bold]{spec.name}[/]: {plan.summary()} · Ray dashboard {dashboard} ({job})",
                  soft_wrap=True)  # one line in a log
    if spec.search != "grid":
        search = optuna_search(spec, store)
        _fit(spec, ctx, store, parent, plan, search, console)
        total, unfinished = search.total, max(0, search.total - len(store.done_trial_ids()))
    else:
        if spec.adaptive is not None:
            needed = _adaptive_seeds(spec, ctx, store, parent, plan, done, console)
        else:
            needed = plan.trials
            _fit(spec, ctx, store, parent, plan, grid_search(needed, done), console)
        done = store.done_trial_ids()
        total, unfinished = len(needed), sum(t.trial_id not in done for t in needed)
    store.close_sweep(parent, "FAILED" if unfinished else "FINISHED")
    return SweepOutcome(total, unfinished, dashboard, local_ray=not address)


def _fit(spec: SweepSpec, ctx: SweepContext, store: SweepStore, parent: str, plan: Plan, search: Search,
         console: Console) -> None:
    """Run the search's trials on Ray Tune, with the live progress table, until every one has ended."""
    console.print(f"{search.total} trials, {search.done} already done, {search.remaining} to run")
    if not search.remaining:
        return
    metric, _ = spec.primary_metric()
    progress = SweepProgress(console, metric)
    for t in search.to_run:
        progress.add(t.trial_id, f"{t.cell_label} s{t.seed}", t.config.train.steps)
    journal = TrackingJournal(store, parent, ctx.workspace.journal / f"{spec.name}.jsonl", spec.tracking.give_up_after,
                              lambda text: console.print(f"[yellow]{text}"))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu, **spec.resources.custom}
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        param_space={**search.space, "checkpoint_root": ctx.checkpoint_root,
                     "cpus_per_trial": spec.resources.cpu, "score_metric": metric},
        tune_config=tune.TuneConfig(num_samples=search.num_samples, search_alg=search.searcher,
                                    scheduler=_scheduler(spec, plan), max_concurrent_trials=spec.max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=spec.cluster.storage or str(ctx.workspace.ray_results),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[tracking := TrackingCallback(journal, search.resolve, progress), JsonLoggerCallback()],
            stop=GiveUpStopper(journal), verbose=0),
    )
    with progress:
        try:
            tuner.fit()
        finally:
            tracking.mark_interrupted()
    console.print()
    journal.close()  # every record in the store, or TrackingUnavailable once one waited give_up_after


def _adaptive_seeds(spec: SweepSpec, ctx: SweepContext, store: SweepStore, parent: str, plan: Plan,
                    done: set[str], console: Console) -> list[PlannedTrial]:
    """Seed batches until the primary contrast is answered (orchestrator/adaptive.py). Every look is recomputed
    from MLflow, so a relaunch walks the batches already done without running them and decides alike.
    Returns the trials of the seeds it ran to: those the sweep needed."""
    rule = spec.adaptive
    assert rule is not None  # launch calls this for adaptive specs only
    n = rule.min
    while True:
        trials = [t for t in plan.trials if t.seed < n]  # adaptive seeds are 0 .. max-1
        console.print(f"adaptive seeds: the batch up to {n} of at most {rule.max} seeds")
        _fit(spec, ctx, store, parent, plan, grid_search(trials, done), console)
        done = store.done_trial_ids()
        if any(t.trial_id not in done for t in trials):
            console.print("adaptive seeds: a trial of this batch did not finish; no more seeds until it does")
            return trials
        from orchestrator.adaptive import decide_sweep  # statistics: only once trials have run
        from orchestrator.wording import describe_decision

        decision = decide_sweep(spec, store.records([spec.metrics[0]]), n)
        console.print(describe_decision(decision, spec))
        if decision.next_n is None:
            return trials
        n = decision.next_n


def _left_to_run(spec: SweepSpec, plan: Plan, done: set[str]) -> bool:
    if spec.search == "grid":
        return bool(plan.pending(done))
    return len(done) < spec.search.optuna.num_samples


def _log_launch(store: SweepStore, parent: str, spec_text: str, plan: Plan, done: set[str]) -> None:
    """Spec, plan and environment of this launch, as artifacts of the sweep's parent run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    store.log_text(parent, spec_text, f"launches/{stamp}/spec.yaml")
    rows = [{"trial_id": t.trial_id, "cell_id": t.cell_id, "cell": t.cell_label, "seed": t.seed,
             "variant": t.variant, "already_done": t.trial_id in done} for t in plan.trials]
    store.log_text(parent, json.dumps(rows, indent=2), f"launches/{stamp}/plan.json")
    job_id = ray.get_runtime_context().get_job_id()
    store.set_ray_job(parent, job_id)  # the latest launch's; each launch's is in its folder
    env = {"code_version": code_version(), "packages": package_versions(), "ray_job_id": job_id,
           "ray_resources": ray.cluster_resources()}
    store.log_text(parent, yaml.safe_dump(env, sort_keys=False), f"launches/{stamp}/environment.yaml")
