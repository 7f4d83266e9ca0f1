"""MLflow tracking on a real PostgreSQL through a real `mlflow server`, as the compose stack runs it."""
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from services import service_env, start_mlflow, start_postgres

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres():
    pg = start_postgres()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    srv = start_mlflow(postgres.url(), tmp / "artifacts", tmp)
    srv.artifacts_dir = tmp / "artifacts"
    yield srv
    srv.stop()


def test_concurrent_runs_lose_no_metric(server):
    client = MlflowClient(server.url)
    exp = client.create_experiment("concurrent")
    steps, barrier = 40, threading.Barrier(4)

    def trial(i: int) -> str:
        run = client.create_run(exp, run_name=f"trial-{i}")
        rid = run.info.run_id
        barrier.wait()  # all four write at once
        for step in range(steps):
            client.log_metric(rid, "loss", 1.0 / (step + 1) + i, step=step)
            client.log_batch(rid, metrics=[Metric("acc", step / steps + i, 0, step),
                                           Metric("lr", 1e-3 * i, 0, step)])
        client.set_terminated(rid)
        return rid

    with ThreadPoolExecutor(4) as pool:
        run_ids = list(pool.map(trial, range(4)))

    assert len(set(run_ids)) == 4
    for i, rid in enumerate(run_ids):
        for key in ("loss", "acc", "lr"):
            history = client.get_metric_history(rid, key)
            assert sorted(m.step for m in history) == list(range(steps)), (rid, key)
        loss = {m.step: m.value for m in client.get_metric_history(rid, "loss")}
        assert loss[steps - 1] == pytest.approx(1.0 / steps + i)
        assert client.get_run(rid).info.status == "FINISHED"
    found = client.search_runs([exp], max_results=10)
    assert {r.info.run_id for r in found} == set(run_ids)


def test_artifacts_go_through_the_server_proxy(server, tmp_path):
    client = MlflowClient(server.url)
    run = client.create_run(client.create_experiment("artifacts"))
    report = tmp_path / "report.md"
    report.write_text("# comparison\npaired difference 0.031 [0.012, 0.050]\n")
    client.log_artifact(run.info.run_id, str(report), artifact_path="reports")

    # the client only knows the server: the URI is the proxy's, the bytes land on the server's side
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list(server.artifacts_dir.rglob("report.md"))
    assert len(stored) == 1 and stored[0].read_text() == report.read_text()
    assert [f.path for f in client.list_artifacts(run.info.run_id, "reports")] == ["reports/report.md"]
    back = client.download_artifacts(run.info.run_id, "reports/report.md", str(tmp_path / "back"))
    assert Path(back).read_text() == report.read_text()


def test_ensure_schema_is_safe_when_processes_race(postgres):
    """Without the advisory lock, MLflow's table creation fails in all but one of these processes."""
    uri = postgres.create_database("race_schema")
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator.tracking_db", uri], cwd=ROOT,
                              env=service_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(4)]
    outputs = [(p.wait(timeout=120), p.stdout.read().decode()[-2000:]) for p in procs]
    for code, output in outputs:
        assert code == 0, output


def test_two_servers_start_at_once_on_a_fresh_database(postgres, tmp_path):
    uri = postgres.create_database("race_servers")
    servers, errors = [], []

    def start(i):
        try:
            servers.append(start_mlflow(uri, tmp_path / "artifacts", tmp_path))
        except Exception as e:  # reported below with the server's log
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        a, b = (MlflowClient(s.url) for s in servers)
        exp = a.create_experiment("shared")
        assert b.get_experiment(exp).name == "shared"  # one database behind both
    finally:
        for s in servers:
            s.stop()
