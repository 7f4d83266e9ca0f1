"""A sweep tracked in MLflow on a real PostgreSQL, as the compose stack runs it.

Four trials run at once on a local Ray while the driver logs every step through an `mlflow
server` backed by PostgreSQL (schema made by orchestrator.tracking_db first, as in compose); the
comparison report reaches the server's artifact store through its proxy. The same database is also
a valid `tracking.uri` on its own (postgresql+psycopg2://, no server in between).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness import CLI, TINY_BASE
from orchestrator.spec import parse_spec
from orchestrator.tracking_db import ensure_schema
from orchestrator.workspace import SweepContext, Workspace
from services import descendants, kill_pids, service_env, start_mlflow, start_postgres

pytestmark = pytest.mark.integration

STEPS, LOG_EVERY, EVAL_EVERY = 12, 2, 6


@pytest.fixture(scope="module")
def postgres():
    pg = start_postgres()
    yield pg
    pg.stop()


@pytest.fixture
def server(postgres, tmp_path):
    srv = start_mlflow(postgres.url(), tmp_path / "artifacts", tmp_path)
    yield srv
    srv.stop()


@pytest.mark.heavy  # a sweep through a PostgreSQL-backed server, about a minute; test_postgres_tracking.py stays in CI
def test_concurrent_sweep_through_a_postgres_backed_server_loses_nothing(server, tmp_path):
    train = {**TINY_BASE["train"], "steps": STEPS, "log_every": LOG_EVERY, "eval_every": EVAL_EVERY,
             "checkpoint_every": STEPS, "threads": 1}
    spec = {
        "name": "pg-sweep", "base": {**TINY_BASE, "train": train},
        "axes": {"model.encoder.final_norm": [True, False]}, "seeds": [0, 1],
        "contrast": {"axis": "model.encoder.final_norm", "treatment": True, "control": False},
        "metrics": ["eval/exact_accuracy", "train/lm_loss"],
        "resources": {"cpu": 0.5}, "max_concurrent": 4, "max_failures": 0,
        "tracking": {"uri": server.url},
    }
    path = tmp_path / "pg-sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    driver = subprocess.Popen(CLI + ["launch", str(path)], env=service_env(ETRM_SWEEP_HOME=str(tmp_path / "ws")),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:  # the driver's local Ray is its own child: on a timeout, end it by PID with the driver
        output, _ = driver.communicate(timeout=240)
    finally:
        kill_pids(descendants(driver.pid))
    assert driver.returncode == 0, output
    # A log, not a terminal: one line per trial event, and none of MLflow's own "View run" lines.
    assert "View run" not in output and "View experiment" not in output, output
    lines = output.splitlines()
    for event in ("started", "finished"):
        assert sum(line[9:].startswith(f"{event} ") for line in lines) == 4, output
    assert any(line[9:].startswith("sweep ") and "4/4 trials done (4 finished)" in line for line in lines), output

    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("pg-sweep")
    trials = client.search_runs([exp.experiment_id], "tags.`etrm.role` = 'trial'")
    assert len(trials) == 4
    log_steps, eval_steps = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for run in trials:
        assert run.data.tags["etrm.status"] == "finished" and run.info.status == "FINISHED"
        for key in run.data.metrics:  # every metric the trainer logged, at every step it logged it
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == (eval_steps if key.startswith(("eval/", "ARC/")) else log_steps), (key, steps)
        assert {"train/lm_loss", "eval/exact_accuracy", "grad/total_norm"} <= set(run.data.metrics)
    seeds = {(json.loads(r.data.tags["etrm.variant"])["model.encoder.final_norm"], r.data.tags["etrm.seed"])
             for r in trials}
    assert seeds == {(True, "0"), (True, "1"), (False, "0"), (False, "1")}

    # The comparison report is an artifact of the parent run, stored on the server's side.
    parent = client.search_runs([exp.experiment_id], "tags.`etrm.role` = 'sweep'")[0]
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/cells.csv", "report/comparison.json"} <= report
    stored = list((tmp_path / "artifacts").rglob("report.md"))
    assert len(stored) == 1 and "final_norm" in stored[0].read_text()


def test_tracking_uri_may_name_the_postgres_database_itself(postgres, tmp_path):
    """postgresql+psycopg2:// (psycopg2 is the driver installed): the store the sweep driver opens."""
    uri = postgres.create_database("direct")
    ensure_schema(uri)
    spec = parse_spec({"name": "direct", "base": TINY_BASE, "seeds": [0], "tracking": {"uri": uri}})
    store = SweepContext(spec, Workspace(tmp_path / "ws").create()).store()
    parent = store.open_sweep()
    store.log_metrics(parent, 1, {"train/lm_loss": 0.5, "ARC/pass@1": 0.25})
    store.log_text(parent, "# report\n", "report/report.md")

    again = SweepContext(spec, Workspace(tmp_path / "ws")).store()  # a later command finds the same run
    assert again.parent_run_id() == parent
    history = again.client.get_metric_history(parent, "ARC/pass_at_1")
    assert [(m.step, m.value) for m in history] == [(1, 0.25)]
    assert [a.path for a in again.client.list_artifacts(parent, "report")] == ["report/report.md"]
    # a database has no artifact store: artifacts go to the workspace, not to ./mlruns of the current directory
    assert len(list((tmp_path / "ws" / "mlartifacts").rglob("report.md"))) == 1
