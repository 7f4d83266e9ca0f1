"""End to end, what keeps a sweep's record whole: one driver at a time, versions, the saved spec.

The real CLI in a fresh workspace, a real local Ray and the real embedded MLflow store, checked
through what MLflow holds afterwards.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from harness import CLI, TINY_BASE, close_store, run_cli, store_for, trial_runs, write_spec
from services import descendants, kill_pids, service_env

pytestmark = pytest.mark.integration
SHORT = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 4, "eval_every": 4}}


def test_two_launches_of_one_sweep_at_once_one_runs_the_other_is_refused(tmp_path):
    """A fresh workspace: both drivers create the MLflow schema at once (no race), one takes the lock."""
    ws = tmp_path / "ws"
    spec = write_spec(tmp_path, "twice", base=SHORT)
    env = service_env(ETRM_SWEEP_HOME=str(ws), COLUMNS="200")
    drivers = [subprocess.Popen(CLI + ["launch", str(spec)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    try:
        outs = [d.communicate(timeout=400) for d in drivers]
    finally:
        for d in drivers:
            kill_pids(descendants(d.pid))
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], "\n".join(f"rc {d.returncode}:\n{o}\n{e[-3000:]}" for d, (o, e) in zip(drivers, outs))
    winner, loser = (drivers[0], drivers[1]) if drivers[0].returncode == 0 else (drivers[1], drivers[0])
    _, refusal = outs[drivers.index(loser)]
    assert refusal.startswith(f"error: sweep 'twice' is already running: driver pid {winner.pid} on host "), refusal
    assert len(refusal.strip().splitlines()) == 1 and "Traceback" not in refusal
    runs = trial_runs(ws, "twice")
    assert len(runs) == 4 and all(r.data.tags["etrm.status"] == "finished" for r in runs)
    client = store_for(ws, "twice").client
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/lm_loss")] == [2, 4]


def test_a_new_base_is_a_new_version_and_a_refused_launch_keeps_the_saved_spec(tmp_path):
    ws = tmp_path / "ws"
    first = run_cli(["launch", str(write_spec(tmp_path, "ver", base=SHORT))], ws)
    assert first.returncode == 0, first.stdout + first.stderr
    saved = (ws / "sweeps" / "ver.yaml").read_text()

    # refused once Ray reports its resources: `resume` must still find the spec that ran. It has trials
    # to run (a new base), so it starts Ray; a relaunch with nothing left to run never asks Ray for any.
    v2_base = {**SHORT, "train": {**SHORT["train"], "lr": 3e-3}}
    greedy = run_cli(["launch", str(write_spec(tmp_path, "ver", base=v2_base, resources={"cpu": 100}))], ws)
    assert greedy.returncode == 2 and "resources.cpu" in greedy.stderr, greedy.stdout + greedy.stderr
    assert (ws / "sweeps" / "ver.yaml").read_text() == saved

    second = run_cli(["launch", str(write_spec(tmp_path, "ver", base=v2_base))], ws)
    out = " ".join(second.stdout.split())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "lr: 0.003" in (ws / "sweeps" / "ver.yaml").read_text()  # the spec `resume` reads is the new one
    assert "4 already done" not in out and "0 already done" in out
    assert "4 trial run(s) of an earlier version of this sweep" in out, out
    store = store_for(ws, "ver")
    runs = store.trial_runs()
    assert len(runs) == 8
    current = {tid for tid, r in runs.items() if json.loads(r.data.params["train.lr"]) == 3e-3}
    assert len(current) == 4
    summaries = list(store._search("summary"))
    assert len(summaries) == 2  # the old version's summary runs are gone, the new cells' are there
    current_cells = {runs[tid].data.tags["etrm.cell_id"] for tid in current}
    assert {s.data.tags["etrm.cell_id"] for s in summaries} == current_cells

    # a current run made by other code: every verdict says so
    store.client.set_tag(runs[sorted(current)[0]].info.run_id, "etrm.code_version", "0" * 40)
    compared = run_cli(["compare", "ver"], ws)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    said = " ".join(compared.stdout.split())
    assert said.count("runs from 2 code versions (0000000000, ") == 2, said  # both metrics' verdicts

    status = run_cli(["status", "ver"], ws)  # the current version counted, the older one listed last
    assert status.returncode == 0 and "4 finished" in status.stdout.splitlines(), status.stdout + status.stderr
    assert "the last 4 row(s): trial runs of an earlier version of this sweep (another base or axes: 4 finished)" \
        in " ".join(status.stdout.split()), status.stdout
    resumed = run_cli(["resume", "ver"], ws)  # with the spec of the launch that ran: the new version, all done
    said = " ".join(resumed.stdout.split())
    assert resumed.returncode == 0 and "ver: all 4 trials are done; nothing to run" in said, said + resumed.stderr
    assert "4 trial run(s) of an earlier version of this sweep (another base or axes: 4 finished)" in said, said


def test_a_lost_tracking_store_is_rebuilt_from_trial_storage(tmp_path):
    """mlflow.db deleted after a finished sweep: the relaunch rebuilds every run with its whole curve and
    status from the trials' history files, runs nothing, and names the trial whose history is gone."""
    ws = tmp_path / "ws"
    spec = write_spec(tmp_path, "lost")
    first = run_cli(["launch", str(spec)], ws)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {tid: r.data.metrics for tid, r in store_for(ws, "lost").trial_runs().items()}
    (ws / "mlflow.db").unlink()
    close_store(ws)  # else the store read below is still the deleted one
    bare = sorted(before)[0]
    (ws / "checkpoints" / "lost" / bare / "history.jsonl").unlink()

    again = run_cli(["launch", str(spec)], ws)
    said = " ".join(again.stdout.split())
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Rebuilt 3 trial run(s) the tracking store lacked from their trial storage" in said, said
    assert f"trial {bare[:8]} (" in said and "has a checkpoint but no metric history" in said, said
    assert "4 trials, 3 already done, 1 to run" in said, said
    store = store_for(ws, "lost")
    runs = store.trial_runs()
    assert set(runs) == set(before)
    for tid, run in runs.items():
        assert run.data.tags["etrm.status"] == "finished" and run.info.status == "FINISHED"
        steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "train/lm_loss")]
        if tid == bare:  # resumed from its last checkpoint: only what it logged again
            assert steps == [8]
        else:
            assert steps == [2, 4, 6, 8]
            assert run.data.metrics == pytest.approx(before[tid])  # the same last values, every metric


def test_bad_checkpoints_bad_data_and_unwritable_storage_each_end_the_way_they_should(tmp_path):
    """Unwritable storage: refused before Ray starts. Bad data: failed once, not retried. A truncated
    checkpoint: named, set aside, and the trial resumes from the one before, its curve complete."""
    ws = tmp_path / "ws"
    (tmp_path / "a-file").write_text("")
    nowhere = run_cli(["launch", str(write_spec(tmp_path, "faulty", base=SHORT,
                                                 cluster={"storage": str(tmp_path / "a-file" / "store")}))], ws)
    assert nowhere.returncode == 2 and "Traceback" not in nowhere.stderr, nowhere.stdout + nowhere.stderr
    assert nowhere.stderr.startswith(f"error: cluster.storage: cannot write checkpoints to {tmp_path / 'a-file'}")
    assert not (ws / "sweeps" / "faulty.yaml").exists()

    too_big = tmp_path / "too-big"  # one ARC task whose grids exceed grid_size: every attempt fails in setup
    too_big.mkdir()
    pair = {"input": [[1] * 9] * 9, "output": [[2] * 9] * 9}
    (too_big / "task.json").write_text(json.dumps({"train": [pair, pair], "test": [pair]}))
    base = {**SHORT, "train": {**SHORT["train"], "steps": 12, "checkpoint_every": 4, "eval_every": 12},
            "faults": {"raise_at_step": 10}}
    spec = dict(base=base, axes={"data.source": ["synthetic", str(too_big)]}, seeds=[0], contrast=None)
    first = run_cli(["launch", str(write_spec(tmp_path, "faulty", max_failures=0, **spec))], ws)
    assert first.returncode == 1, first.stdout + first.stderr
    store = store_for(ws, "faulty")
    by_source = {json.loads(r.data.tags["etrm.variant"])["data.source"]: r for r in store.trial_runs().values()}
    crashed = by_source["synthetic"]
    assert crashed.data.tags["etrm.status"] == "failed"
    folder = ws / "checkpoints" / "faulty" / crashed.data.tags["etrm.trial_id"]
    latest = folder / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:-200])  # truncated: the step-8 checkpoint is bad, step 4 is good

    second = run_cli(["launch", str(write_spec(tmp_path, "faulty", max_failures=2, **spec))], ws)
    said = " ".join(second.stdout.split())
    assert second.returncode == 1 and "1 of 2 trial(s) did not finish" in said, second.stdout + second.stderr
    assert f"{latest}: checksum mismatch" in said and "set aside as checkpoint.pt.corrupt-" in said, said
    assert len(list(folder.glob("checkpoint.pt.corrupt-*"))) == 1
    runs = {json.loads(r.data.tags["etrm.variant"])["data.source"]: r for r in store.trial_runs().values()}
    resumed = runs["synthetic"]
    assert resumed.data.tags["etrm.status"] == "finished"
    steps = [m.step for m in store.client.get_metric_history(resumed.info.run_id, "train/lm_loss")]
    assert steps == [2, 4, 6, 8, 10, 12]  # 6 and 8 logged by both attempts, recorded once
    warnings = [a.path for a in store.client.list_artifacts(resumed.info.run_id, "warnings")]
    assert len(warnings) == 1

    bad = runs[str(too_big)]
    assert bad.data.tags["etrm.status"] == "failed"
    assert bad.data.tags["etrm.message"].startswith(  # the data's own one-line ConfigError, kept whole
        f"not retried, it would fail the same way: TrialInvalid: ConfigError: data.source: {too_big}: "
        "0 train / 0 eval tasks fit grid_size 5"), bad.data.tags["etrm.message"]
    errors = [a.path for a in store.client.list_artifacts(bad.info.run_id, "errors")]
    assert errors == ["errors/not-retried.txt"]  # one attempt per launch, no Ray retry (max_failures: 2)
