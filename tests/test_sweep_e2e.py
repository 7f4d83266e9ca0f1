"""End to end: the real CLI, a real local Ray, the real embedded MLflow store, the real trainer.

Each test launches `etrm-sweep` as a user would (a subprocess in a fresh
workspace) and then checks what MLflow holds, never what the driver printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import CLI, TINY_BASE, run_cli, store_for, trial_runs, write_spec
from services import alive, descendants, kill_pids, service_env

pytestmark = pytest.mark.integration


def test_tiny_sweep_records_every_trial_once_and_relaunch_runs_nothing(tmp_path):
    ws = tmp_path / "ws"
    spec = write_spec(tmp_path, "tiny")
    first = run_cli(["launch", str(spec)], ws)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Ray dashboard: http://127.0.0.1:" in first.stdout and "MLflow: run `etrm-sweep ui`" in first.stdout

    runs = trial_runs(ws, "tiny")
    assert len(runs) == 4
    store = store_for(ws, "tiny")
    for run in runs:
        tags = run.data.tags
        assert tags["etrm.status"] == "finished"
        assert run.info.status == "FINISHED"
        for key in ("etrm.sweep", "etrm.cell_id", "etrm.seed", "etrm.variant", "etrm.config_hash",
                    "etrm.code_version", "etrm.version.torch", "etrm.version.ray", "etrm.trial_id"):
            assert tags.get(key), key
        assert tags["mlflow.parentRunId"] == store.parent_run_id()
        assert run.data.params["model.encoder.final_norm"] in ("True", "False")
        history = store.client.get_metric_history(run.info.run_id, "train/lm_loss")
        assert [m.step for m in history] == [2, 4, 6, 8]
        assert "eval/exact_accuracy" in run.data.metrics
    pairs = {(json.loads(r.data.tags["etrm.variant"])["model.encoder.final_norm"], r.data.tags["etrm.seed"])
             for r in runs}
    assert pairs == {(True, "0"), (True, "1"), (False, "0"), (False, "1")}

    again = run_cli(["launch", str(spec)], ws)  # and `resume`: nothing to run, so no Ray is started
    resumed = run_cli(["resume", "tiny"], ws)
    for out in (again, resumed):
        assert out.returncode == 0, out.stdout + out.stderr
        assert "tiny: all 4 trials are done; nothing to run" in out.stdout, out.stdout
        assert "Ray dashboard" not in out.stdout and "eval/exact_accuracy" in out.stdout  # no Ray; the comparison
    assert not list((ws / "local-ray").glob("*.json"))  # the first launch's note was reaped; no Ray, no new note
    assert len(trial_runs(ws, "tiny")) == 4

    # adding a seed runs only the two new trials, in the same sweep
    bigger = write_spec(tmp_path, "tiny", seeds=[0, 1, 2])
    third = run_cli(["launch", str(bigger)], ws)
    assert third.returncode == 0, third.stdout + third.stderr
    runs = trial_runs(ws, "tiny")
    assert len(runs) == 6 and all(r.data.tags["etrm.status"] == "finished" for r in runs)


@pytest.mark.parametrize("how", ["SIGKILL", "Ctrl-C"])
def test_driver_killed_mid_sweep_then_resume_finishes_every_trial_once(tmp_path, how):
    """SIGKILL: the driver dies without a word, and its local Ray's agents outlive it until `resume`
    ends them. Ctrl-C: SIGINT to the terminal's whole process group (the driver and every child that
    shares it), and the driver exits 1 naming `resume`."""
    ws = tmp_path / "ws"
    steps_per_trial = 100
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": steps_per_trial, "checkpoint_every": 10,
                                   "eval_every": steps_per_trial}}
    spec = write_spec(tmp_path, "killed", base=base, max_concurrent=1)
    env = service_env(ETRM_SWEEP_HOME=str(ws))
    driver = subprocess.Popen(CLI + ["launch", str(spec)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    store, pids = None, set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill once one trial finished and a running one has a checkpoint
            time.sleep(0.5)
            # The driver creates the store before any trial runs: only open it once checkpoints exist,
            # so this test never races the driver's schema creation.
            if len(list((ws / "checkpoints" / "killed").glob("*/checkpoint.pt"))) < 2:
                continue
            store = store or store_for(ws, "killed")
            statuses = store.trial_statuses()
            if "finished" in statuses.values() and any(
                    status == "running" and (ws / "checkpoints" / "killed" / tid / "checkpoint.pt").exists()
                    for tid, status in statuses.items()):
                break
        else:
            pytest.fail("the sweep never reached a finished trial and a running one with a checkpoint")
        pids = descendants(driver.pid)
        if how == "SIGKILL":
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(30)
        else:
            os.killpg(driver.pid, signal.SIGINT)
            out, _ = driver.communicate(timeout=120)
            assert driver.returncode == 1, out
            said = " ".join(out.split())  # rich wraps lines at the terminal's width
        before = {tid: r for tid, r in store.trial_runs().items()}
        finished_before = {tid for tid, r in before.items() if r.data.tags["etrm.status"] == "finished"}
        # Ctrl-C: the driver marks the runs it cut off; SIGKILL: nobody can, they read running until resume
        cut_off = "interrupted" if how == "Ctrl-C" else "running"
        interrupted = {tid for tid, r in before.items() if r.data.tags["etrm.status"] == cut_off}
        assert finished_before and interrupted
        assert finished_before | interrupted == set(before), {r.data.tags["etrm.status"] for r in before.values()}
        if how == "Ctrl-C":  # the count includes trials that never started (no MLflow run yet)
            assert all(before[tid].info.status == "KILLED" for tid in interrupted)
            assert f"{4 - len(finished_before)} of 4 trial(s) did not finish" in said, out
            assert "etrm-sweep resume killed" in said, out

        resumed = run_cli(["resume", "killed"], ws)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        if how == "SIGKILL":
            # Ray's fate sharing ends the killed driver's GCS, raylet and workers, but (Ray 2.60) not its dashboard
            # and runtime-env agents, ~200 MB: resume ends what is left (local_ray.reap, tested alone in
            # test_local_ray.py) before it starts its own Ray. Nothing of the killed launch outlives the resume.
            assert not {pid for pid in pids if alive(pid)}, resumed.stdout
            # the killed driver's sweep lock is stale (no process has its pid and start time): taken over
            assert f"Took over the lock of driver pid {driver.pid} on host " in " ".join(resumed.stdout.split())
    finally:
        kill_pids(descendants(driver.pid) | pids)
    after = store_for(ws, "killed").trial_runs()
    assert len(after) == 4 and all(r.data.tags["etrm.status"] == "finished" for r in after.values())
    for tid in finished_before:  # not rerun: the run was not reopened
        assert after[tid].info.end_time == before[tid].info.end_time
    client = store.client
    for tid, run in after.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/lm_loss")]
        assert steps == list(range(2, steps_per_trial + 1, 2)), (tid, steps)  # every step once, none lost, none twice
    for tid in interrupted:  # resumed from its checkpoint, not from scratch
        ckpt = ws / "checkpoints" / "killed" / tid / "checkpoint.pt"
        assert ckpt.exists()


def test_diverged_and_crashed_trials_are_recorded_and_the_rest_finish(tmp_path):
    ws = tmp_path / "ws"
    spec = write_spec(tmp_path, "faults", axes={"faults.nan_loss_at_step": [None, 3], "faults.raise_at_step": [None, 5]},
                      seeds=[0], contrast=None, max_failures=0)
    result = run_cli(["launch", str(spec)], ws)
    assert result.returncode == 1, result.stdout + result.stderr  # incomplete, and it says so
    assert "1 of 4 trial(s) did not finish" in result.stdout

    def by_faults():
        return {tuple(json.loads(r.data.tags["etrm.variant"]).values()): r for r in trial_runs(ws, "faults")}

    runs = by_faults()
    assert len(runs) == 4
    assert runs[(None, None)].data.tags["etrm.status"] == "finished"
    diverged = runs[(3, None)]
    assert diverged.data.tags["etrm.status"] == "diverged"
    assert "step 3" in diverged.data.tags["etrm.message"]
    assert runs[(3, 5)].data.tags["etrm.status"] == "diverged"  # it diverges before it would crash
    crashed = runs[(None, 5)]
    assert crashed.data.tags["etrm.status"] == "failed" and crashed.info.status == "FAILED"
    client = store_for(ws, "faults").client
    errors = [a.path for a in client.list_artifacts(crashed.info.run_id, "errors")]
    assert errors == ["errors/attempt-1.txt"]
    text = Path(client.download_artifacts(crashed.info.run_id, errors[0], str(tmp_path))).read_text()
    assert "File \"" in text and "TrialCrashed: faults.raise_at_step: simulated crash at step 5" in text  # the stack, as Ray saw it

    # Relaunch: the failed trial runs again (from its step-4 checkpoint) and finishes in the same run;
    # finished and diverged trials are not touched.
    again = run_cli(["launch", str(spec)], ws)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 already done" in again.stdout
    after = by_faults()
    assert {k: r.info.run_id for k, r in after.items()} == {k: r.info.run_id for k, r in runs.items()}
    assert after[(None, 5)].data.tags["etrm.status"] == "finished"
    assert after[(3, None)].info.end_time == diverged.info.end_time
    steps = [m.step for m in client.get_metric_history(crashed.info.run_id, "train/lm_loss")]
    assert steps == [2, 4, 6, 8]
