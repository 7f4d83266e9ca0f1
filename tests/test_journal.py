"""orchestrator/journal.py against a real MLflow server that is stopped and started again (no Ray).

Writes queued while the server is down return at once and wait on disk; once it is back they all
arrive, in order, once. Past give_up_after the journal says so, and a later `replay` writes it.
"""

from __future__ import annotations

import time

import pytest

from etrm.status import TrialStatus
from harness import spec_tree
from orchestrator.journal import TrackingJournal, TrackingUnavailable, replay
from orchestrator.plan import make_plan
from orchestrator.spec import parse_spec
from orchestrator.tracking import SweepStore
from services import start_mlflow

pytestmark = pytest.mark.integration


def test_writes_wait_out_an_outage_on_disk_and_arrive_once(tmp_path):
    db = f"sqlite:///{tmp_path / 'server.db'}"
    server = start_mlflow(db, tmp_path / "artifacts", tmp_path, timeout=300)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        store = SweepStore(server.url, "j", "j")
        parent = store.open_sweep()
        trial = make_plan(parse_spec(spec_tree("j"))).trials[0]
        path = tmp_path / "journal.jsonl"
        said: list[str] = []
        journal = TrackingJournal(store, parent, path, give_up_after=600, say=said.append)
        journal.open(trial)
        journal.metrics(trial.trial_id, 2, {"train/lm_loss": 1.0})
        journal.flush()
        assert path.read_text() == ""  # all written: nothing waits

        server.stop()
        started = time.monotonic()
        for step in (4, 6, 8):
            journal.metrics(trial.trial_id, step, {"train/lm_loss": 1.0 / step})
        journal.status(trial.trial_id, TrialStatus.FINISHED, "")
        assert time.monotonic() - started < 1.0  # the caller (Tune's loop) never waits on the server
        assert len(path.read_text().splitlines()) == 4
        time.sleep(5)
        assert journal.pending == 4 and not journal.gave_up

        server = start_mlflow(db, tmp_path / "artifacts", tmp_path, timeout=300, port=port)
        journal.close()
        run = store.trial_runs()[trial.trial_id]
        assert run.data.tags["etrm.status"] == "finished"
        steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "train/lm_loss")]
        assert sorted(steps) == [2, 4, 6, 8]
        assert path.read_text() == ""

        # past give_up_after: flush says so in one line, the journal keeps the writes for the next launch
        server.stop()
        late = TrackingJournal(store, parent, path, give_up_after=3, say=said.append)
        late.metrics(trial.trial_id, 10, {"train/lm_loss": 0.1})
        with pytest.raises(TrackingUnavailable, match=r"unreachable for \d+ s \(tracking.give_up_after: 3\)"):
            late.flush()
        assert late.gave_up and len(path.read_text().splitlines()) == 1

        # a later launch, against the store served again (elsewhere: the given-up writer keeps knocking there)
        server = start_mlflow(db, tmp_path / "artifacts", tmp_path, timeout=300)
        fresh = SweepStore(server.url, "j", "j")
        assert replay(fresh, fresh.open_sweep(), path) == 1 and not path.exists()
        steps = [m.step for m in fresh.client.get_metric_history(run.info.run_id, "train/lm_loss")]
        assert sorted(steps) == [2, 4, 6, 8, 10]
    finally:
        server.stop()
