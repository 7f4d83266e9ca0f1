"""A tracking outage never stalls training and loses nothing: a real MLflow server stopped mid-sweep.

Short outage: the trials keep training while the server is down (their histories in trial storage
grow), the driver's records wait in its journal, and everything reaches the server once it is back.
Long outage: after `tracking.give_up_after` the launch stops its trials and says so in one line; the
journal stays, and `resume` against the restarted server writes it and finishes the sweep.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from harness import CLI, TINY_BASE, run_cli, write_spec
from orchestrator.tracking import SweepStore
from services import descendants, kill_pids, service_env, start_mlflow

# Three launches and three MLflow server starts, about 3 minutes: heavy tier. test_journal.py holds the same
# guarantee (writes wait out a real server's outage on disk and arrive once) in CI.
pytestmark = [pytest.mark.integration, pytest.mark.heavy]
STEPS = 120
BASE = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": STEPS, "log_every": 2, "eval_every": STEPS,
                               "checkpoint_every": 10, "threads": 1}}


def history_lines(ws: Path, name: str) -> int:
    return sum(len(p.read_text().splitlines()) for p in (ws / "checkpoints" / name).glob("*/history.jsonl"))


def wait_for(what, ready, timeout: float, driver: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert driver.poll() is None, f"the driver ended while waiting for {what}: {driver.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.5)


def assert_complete(url: str, name: str) -> None:
    store = SweepStore(url, name, name)
    runs = store.trial_runs()
    assert len(runs) == 2 and all(r.data.tags["etrm.status"] == "finished" for r in runs.values())
    for run in runs.values():  # every point once: nothing lost in the outage, nothing logged twice
        steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "train/lm_loss")]
        assert steps == list(range(2, STEPS + 1, 2))


def test_training_goes_on_through_a_tracking_outage_and_nothing_is_lost(tmp_path):
    server = start_mlflow(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path, timeout=300)
    port = int(server.url.rsplit(":", 1)[1])
    ws = tmp_path / "ws"
    env = service_env(ETRM_SWEEP_HOME=str(ws), COLUMNS="200")
    drivers = []
    try:
        # -- a short outage: the sweep rides it out ----------------------------------------------------
        spec = write_spec(tmp_path, "short", base=BASE, seeds=[0], tracking={"uri": server.url})
        driver = subprocess.Popen(CLI + ["launch", str(spec)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        drivers.append(driver)
        wait_for("training", lambda: history_lines(ws, "short") >= 4, 300, driver)
        server.stop()
        down = history_lines(ws, "short")
        wait_for("training during the outage", lambda: history_lines(ws, "short") >= down + 10, 120, driver)
        journal = ws / "journal" / "short.jsonl"
        assert journal.exists() and journal.read_text().strip()  # what waits for the server, on disk
        server = start_mlflow(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path, timeout=300, port=port)
        out, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, out
        assert_complete(server.url, "short")
        assert not journal.read_text()  # all written

        # -- a long outage: the launch gives up in one line, resume finishes it ------------------------
        spec = write_spec(tmp_path, "long", base=BASE, seeds=[0],
                          tracking={"uri": server.url, "give_up_after": 15})
        driver = subprocess.Popen(CLI + ["launch", str(spec)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        drivers.append(driver)
        wait_for("training", lambda: history_lines(ws, "long") >= 4, 300, driver)
        server.stop()
        stopped_at = time.monotonic()
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 1, out + err
        assert time.monotonic() - stopped_at < 120, "gave up long after give_up_after"
        assert err.startswith("error: tracking store http://127.0.0.1:") and len(err.strip().splitlines()) == 1, err
        assert "(tracking.give_up_after: 15)" in err and "`etrm-sweep resume long`" in err, err
        waiting = ws / "journal" / "long.jsonl"
        assert waiting.read_text().strip()

        server = start_mlflow(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path, timeout=300, port=port)
        resumed = run_cli(["resume", "long"], ws, timeout=600)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        said = " ".join(resumed.stdout.split())
        assert "tracking record(s) an earlier launch journaled while the store was away" in said, said
        assert_complete(server.url, "long")
    finally:
        for d in drivers:
            kill_pids(descendants(d.pid))
        server.stop()
