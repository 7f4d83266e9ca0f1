"""The driver's record of a sweep, without Ray running: SweepStore on a real SQLite MLflow store, the
Tune callback fed the events Tune would send, Optuna re-seeded from the store, and the `status` and
`plan` commands reading a sweep as a launch left it."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from etrm.status import TrialStatus
from harness import spec_tree
from orchestrator.cli import app
from orchestrator.dispatch import TrackingCallback, grid_search, optuna_search
from orchestrator.journal import TrackingJournal
from orchestrator.plan import make_plan, planned_trial
from orchestrator.progress import SweepProgress
from orchestrator.spec import parse_spec
from orchestrator.tracking import Role, Tag
from orchestrator.workspace import SweepContext

OPTUNA = {"optuna": {"num_samples": 5, "metric": "train/lm_loss", "mode": "min",
                     "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}}


@dataclass
class TuneTrial:
    """What the callback reads of a ray.tune Trial."""

    config: dict
    error_file: str | None = None
    num_failures: int = 0


def steps(store, run_id: str, key: str = "train/lm_loss") -> list[int]:
    return sorted(m.step for m in store.client.get_metric_history(run_id, key))


def log_event(step: int, node: str = "node-a", **metrics: float) -> dict:
    return {"etrm": {"event": "log", "step": step, "metrics": metrics or {"train/lm_loss": 1.0 / step},
                     "node_id": node}}


def end_event(step: int, status: str, message: str = "") -> dict:
    return {"etrm": {"event": "end", "step": step, "status": status, "message": message,
                     "metrics": {"train/lm_loss": 0.5}, "node_id": "node-a"}}


def callback_for(store, parent: str, resolve, progress, journal: Path) -> TrackingCallback:
    return TrackingCallback(TrackingJournal(store, parent, journal, 600, lambda text: None), resolve, progress)


def written(callback: TrackingCallback) -> TrackingCallback:
    """The callback's MLflow writes are applied by the journal's thread: wait for them."""
    callback.journal.flush()
    return callback


def run_of(store, trial_id: str) -> str:
    return store.trial_runs()[trial_id].info.run_id


@pytest.fixture
def grid(store, tmp_path):
    """A launched two-cell, two-seed grid: the parent run, the callback and one Tune trial per planned trial."""
    plan = make_plan(parse_spec(spec_tree(store.sweep)))
    search = grid_search(plan.trials, set())
    parent = store.open_sweep("unit")
    progress = SweepProgress(Console(file=io.StringIO()), "eval/exact_accuracy")
    callback = callback_for(store, parent, search.resolve, progress, tmp_path / "journal.jsonl")
    trials = [TuneTrial({"trial": params}) for params in search.space["trial"]["grid_search"]]
    return plan, callback, trials


def test_a_trial_run_goes_running_then_ends_with_the_trainers_word(grid, store):
    plan, callback, (trial, *_) = grid
    planned = plan.trials[0]
    callback.on_trial_start(0, [], trial)
    written(callback)
    run = store.trial_runs()[planned.trial_id]
    tags = run.data.tags
    assert tags[Tag.STATUS] == TrialStatus.RUNNING and tags[Tag.ROLE] == Role.TRIAL
    assert (tags[Tag.CELL_ID], tags[Tag.SEED], tags[Tag.CELL]) == (planned.cell_id, "0", planned.cell_label)
    assert tags["mlflow.parentRunId"] == store.parent_run_id()
    assert callback.progress.rows[planned.trial_id].state == TrialStatus.RUNNING

    callback.on_trial_result(0, [], trial, log_event(2))
    callback.on_trial_result(0, [], trial, end_event(8, "finished"))
    written(callback)
    run = store.client.get_run(run.info.run_id)
    assert run.data.tags[Tag.STATUS] == "finished" and run.info.status == "FINISHED"
    assert run.data.tags[Tag.NODE_ID] == "node-a"
    assert callback.progress.rows[planned.trial_id].state == TrialStatus.FINISHED
    assert store.done_trial_ids() == {planned.trial_id}


def test_a_metric_step_is_logged_once_even_across_driver_restarts(grid, store, tmp_path):
    plan, callback, (trial, *_) = grid
    for step in (2, 4, 4, 2):  # a retried attempt replays steps since its checkpoint
        callback.on_trial_result(0, [], trial, log_event(step))
    run_id = run_of(written(callback).journal.store, plan.trials[0].trial_id)
    assert steps(store, run_id) == [2, 4]

    # A new driver (the old one was killed) knows nothing in memory: it reads the steps from MLflow.
    from orchestrator.tracking import SweepStore

    again = SweepStore(store.uri, store.sweep, store.sweep)
    relaunched = callback_for(again, again.open_sweep(), callback.resolve, callback.progress, tmp_path / "j2.jsonl")
    for step in (4, 6):
        relaunched.on_trial_result(0, [], trial, log_event(step, node="node-b"))
    assert run_of(written(relaunched).journal.store, plan.trials[0].trial_id) == run_id  # found by its tag
    assert steps(store, run_id) == [2, 4, 6]
    assert store.client.get_run(run_id).data.tags[Tag.NODE_ID] == "node-b"
    assert len(store.trial_runs()) == 1


def test_stopped_failed_and_diverged_trials_are_recorded_as_such(grid, store, tmp_path):
    plan, callback, (finished, stopped, crashed, diverged) = grid
    ids = [t.trial_id for t in plan.trials]
    callback.on_trial_result(0, [], finished, end_event(8, "finished"))
    callback.on_trial_complete(0, [], finished)  # after the trainer's word: no change

    callback.on_trial_result(0, [], stopped, log_event(2))
    callback.on_trial_complete(0, [], stopped)  # no word from the trainer: ASHA cut it

    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\nTrialCrashed: simulated crash at step 5\n")
    crashed.error_file, crashed.num_failures = str(error), 1
    callback.on_trial_recover(0, [], crashed)
    written(callback)
    run = store.trial_runs()[ids[2]]
    assert run.data.tags[Tag.STATUS] == "running"
    assert run.data.tags[Tag.MESSAGE] == "retrying after: TrialCrashed: simulated crash at step 5"
    assert callback.progress.rows[ids[2]].state == TrialStatus.RETRYING
    crashed.num_failures = 2
    callback.on_trial_error(0, [], crashed)

    callback.on_trial_result(0, [], diverged, end_event(3, "diverged", "loss became nan at step 3"))
    written(callback)

    runs = store.trial_runs()
    got = {tid: (runs[tid].data.tags[Tag.STATUS], runs[tid].info.status) for tid in ids}
    assert got == {ids[0]: ("finished", "FINISHED"), ids[1]: ("stopped", "KILLED"),
                   ids[2]: ("failed", "FAILED"), ids[3]: ("diverged", "FAILED")}
    assert runs[ids[1]].data.tags[Tag.MESSAGE] == "stopped early by the scheduler"
    assert runs[ids[3]].data.tags[Tag.MESSAGE] == "loss became nan at step 3"
    artifacts = [a.path for a in store.client.list_artifacts(runs[ids[2]].info.run_id, "errors")]
    assert artifacts == ["errors/attempt-1.txt", "errors/attempt-2.txt"]
    assert store.done_trial_ids() == {ids[0], ids[1], ids[3]}  # a failed trial runs again next launch
    assert [callback.progress.rows[t].state for t in ids] == ["finished", "stopped", "failed", "diverged"]

    store.open_trial(store.parent_run_id(), plan.trials[2])  # relaunched: running again, in the same run
    assert store.trial_statuses()[ids[2]] == TrialStatus.RUNNING


def test_a_status_no_trial_records_is_refused(store):
    plan = make_plan(parse_spec(spec_tree(store.sweep)))
    run_id = store.open_trial(store.open_sweep(), plan.trials[0])
    for bad in ("pending", "retrying", "done"):
        with pytest.raises(ValueError, match="not a status a trial run records"):
            store.set_trial_status(run_id, bad)
    assert store.trial_statuses() == {plan.trials[0].trial_id: TrialStatus.RUNNING}


def _optuna_sweep(store, lrs_and_status):
    spec = parse_spec(spec_tree(store.sweep, axes={}, seeds=[3], contrast=None, search=OPTUNA,
                                metrics=["train/lm_loss"]))
    parent = store.open_sweep()
    for lr, status in lrs_and_status:
        trial = planned_trial(spec, {"train.lr": lr}, 3)
        run_id = store.open_trial(parent, trial)
        store.log_metrics(run_id, 8, {"train/lm_loss": lr * 100})
        store.set_trial_status(run_id, status)
    return spec


def test_optuna_is_reseeded_with_the_trials_done_and_not_the_rest(store):
    spec = _optuna_sweep(store, [(1e-3, "finished"), (2e-3, "stopped"), (3e-3, "failed")])
    search = optuna_search(spec, store)
    assert (search.total, search.done, search.num_samples) == (5, 2, 3)
    points = sorted(zip((p["sample/train.lr"] for p in search.searcher._points_to_evaluate),
                        search.searcher._evaluated_rewards))
    assert points == [(1e-3, pytest.approx(0.1)), (2e-3, pytest.approx(0.2))]
    assert search.searcher._seed == 3 + 2  # a fresh seed, or the sampler would redraw the first points


def _launched(workspace, sqlite_uri: str, tree: dict) -> SweepContext:
    """A sweep as `launch` leaves it before Ray runs: its spec saved in the workspace, its parent run open
    (in the session's store: a store of its own would cost seconds of schema creation)."""
    tree = tree | {"tracking": {"uri": sqlite_uri}}
    ctx = SweepContext(parse_spec(tree), workspace)
    ctx.save_spec(yaml.safe_dump(tree))
    ctx.store().open_sweep()
    return ctx


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_status_shows_every_planned_trial_with_what_mlflow_holds(workspace, sqlite_uri):
    ctx = _launched(workspace, sqlite_uri, spec_tree("status-grid"))
    store, plan = ctx.store(), make_plan(ctx.spec)
    first = store.open_trial(store.parent_run_id(), plan.trials[0])
    store.log_metrics(first, 4, {"train/lr": 1e-3, "eval/exact_accuracy": 0.25})
    store.set_trial_status(first, TrialStatus.FINISHED)
    second = store.open_trial(store.parent_run_id(), plan.trials[1])
    store.log_metrics(second, 2, {"train/lr": 1e-3})
    out = _cli("status", "status-grid")
    rows = [line for line in out.splitlines() if re.search(r"[0-9a-f]{8}", line)]
    assert len(rows) == 4
    assert re.search(rf"final_norm=true\s*│\s*0\s*│\s*{plan.trials[0].trial_id[:8]}\s*│\s*finished\s*│\s*4\s*│\s*0\.25", rows[0])
    assert re.search(r"│\s*running\s*│\s*2\s*│\s*-", rows[1])
    assert all(re.search(r"│\s*pending\s*│\s*-\s*│\s*-", row) for row in rows[2:])
    assert "1 finished, 2 pending, 1 running" in out


def test_status_counts_the_current_version_and_lists_an_earlier_one_last(workspace, sqlite_uri):
    tree = spec_tree("status-versions")
    ctx = _launched(workspace, sqlite_uri, tree)
    store, plan = ctx.store(), make_plan(ctx.spec)
    old_base = {**tree["base"], "train": {**tree["base"]["train"], "lr": 3e-3}}
    older = make_plan(parse_spec(tree | {"base": old_base})).trials[0]  # another base: another trial id
    for trial in (plan.trials[0], older):
        store.set_trial_status(store.open_trial(store.parent_run_id(), trial), TrialStatus.FINISHED)
    out = _cli("status", "status-versions")
    rows = [line for line in out.splitlines() if re.search(r"[0-9a-f]{8}", line)]
    assert len(rows) == 5 and older.trial_id[:8] in rows[-1]
    assert "1 finished, 3 pending" in out.splitlines(), out
    assert "the last 1 row(s): trial runs of an earlier version of this sweep (another base or axes: 1 finished)" \
        in " ".join(out.split()), out


def test_status_shows_the_trials_of_an_optuna_sweep(workspace, sqlite_uri):
    tree = spec_tree("status-optuna", axes={}, seeds=[3], contrast=None, search=OPTUNA, metrics=["train/lm_loss"])
    ctx = _launched(workspace, sqlite_uri, tree)
    store = ctx.store()
    for lr, status in ((1e-3, TrialStatus.FINISHED), (2e-3, TrialStatus.STOPPED)):
        run_id = store.open_trial(store.parent_run_id(), planned_trial(ctx.spec, {"train.lr": lr}, 3))
        store.log_metrics(run_id, 8, {"train/lr": lr, "train/lm_loss": 0.5})
        store.set_trial_status(run_id, status)
    out = _cli("status", "status-optuna")
    assert re.search(r"lr=0\.001\s*│\s*3\s*│\s*[0-9a-f]{8}\s*│\s*finished\s*│\s*8\s*│\s*0\.5", out), out
    assert re.search(r"lr=0\.002\s*│\s*3\s*│\s*[0-9a-f]{8}\s*│\s*stopped\s*│\s*8", out), out
    assert "1 finished, 1 stopped" in out


def test_plan_marks_the_trials_a_launch_finished(workspace, sqlite_uri, tmp_path):
    tree = spec_tree("plan-launched") | {"tracking": {"uri": sqlite_uri}}
    ctx = _launched(workspace, sqlite_uri, tree)
    store, plan = ctx.store(), make_plan(ctx.spec)
    for trial, status in zip(plan.trials[:3], (TrialStatus.FINISHED, TrialStatus.FAILED, TrialStatus.DIVERGED)):
        store.set_trial_status(store.open_trial(store.parent_run_id(), trial), status)
    path = tmp_path / "plan-launched.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = _cli("plan", str(path))
    assert re.search(r"final_norm=true\s*│\s*0 1\s*│.*│\s*1/2 finished", out), out  # the failed one reruns
    assert re.search(r"final_norm=false\s*│\s*0 1\s*│.*│\s*1/2 finished", out), out  # diverged: done
    assert "2 of 4 trials finished, 2 pending" in out
