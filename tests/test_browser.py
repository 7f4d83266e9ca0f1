"""In a browser: a launched sweep as a user sees it in the MLflow UI that `etrm-sweep ui` starts.

A tiny real sweep, the real `etrm-sweep ui NAME` server on 127.0.0.1, headless Chromium (browser.py). The
MLflow UI is a React app: the test waits for it to render, expands the sweep's parent run, and checks the
trial run names; then the comparison report, as MLflow's artifact view shows it and as the file a reviewer
downloads.
Screenshots are kept in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import browser
from harness import CLI, run_cli, write_spec
from services import descendants, free_port, kill_pids, service_env, wait_until

pytestmark = pytest.mark.integration
NAME = "ui-sweep"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
RUN_NAMES = [f"final_norm={v} seed={s}" for v in ("true", "false") for s in (0, 1)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(workspace, the MLflow URL the launch printed) of a finished 2 x 2 sweep."""
    tmp = tmp_path_factory.mktemp("browser")
    ws = tmp / "ws"
    result = run_cli(["launch", str(write_spec(tmp, NAME))], ws)
    assert result.returncode == 0, result.stdout + result.stderr
    hint = re.search(r"open (http://127\.0\.0\.1:\d+/#/\S+)", result.stdout)
    assert hint, result.stdout
    return ws, hint.group(1)


@pytest.fixture(scope="module")
def ui(sweep, tmp_path_factory):
    """The server `etrm-sweep ui NAME --port P` starts, on a free port: its base URL."""
    ws, _ = sweep
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(CLI + ["ui", NAME, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=service_env(ETRM_SWEEP_HOME=str(ws)), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/health") is not None, 120, "etrm-sweep ui", proc, log)
        yield url
    finally:
        kill_pids(descendants(proc.pid))
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    page = browser.Browser(tmp_path_factory.mktemp("chromium"))
    yield page
    page.stop()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None


def _ids(url: str) -> tuple[str, str]:
    """(experiment id, the sweep's parent run id), asked of the server as any MLflow client would."""
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(NAME)
    parents = client.search_runs([experiment.experiment_id], "tags.`etrm.role` = 'sweep'")
    assert len(parents) == 1
    return experiment.experiment_id, parents[0].info.run_id


def _js(text: str) -> str:
    return json.dumps(text)


def test_runs_view_shows_the_sweep_and_its_trial_runs(sweep, ui, chromium):
    _, hint = sweep
    experiment_id, parent = _ids(ui)
    assert f"#/experiments/{experiment_id}/runs" in hint
    # the link the launch printed, on the port this test's server listens on
    chromium.goto(ui + hint[hint.index("/#/"):])
    parent_link = f"document.querySelector('a[href$=\"/runs/{parent}\"]')"
    chromium.wait_for(parent_link, what=f"the sweep's parent run {NAME!r} in the runs view")
    assert NAME in chromium.text()
    # trial and summary runs are nested under the parent: expand it as a user would
    chromium.evaluate(f"{parent_link}.closest('[role=gridcell]').querySelector('button').click()")
    for name in [*RUN_NAMES, "summary: final_norm=true", "summary: final_norm=false"]:
        chromium.wait_for(f"document.body.innerText.includes({_js(name)})", what=name)
    chromium.screenshot(ARTIFACTS / "browser-runs-view.png")


def test_report_artifact_shows_the_verdicts(sweep, ui, chromium, tmp_path):
    experiment_id, parent = _ids(ui)
    comparison = _get(f"{ui}/get-artifact?path=report/comparison.json&run_uuid={parent}")
    verdicts = json.loads(comparison)["verdicts"]
    assert len(verdicts) == 2 and all(verdicts)

    # in MLflow's artifact view: the report is rendered in a sandboxed iframe (a blob: URL)
    chromium.goto(f"{ui}/#/experiments/{experiment_id}/runs/{parent}/artifacts/report/report.html"
                  "?workflowType=machine_learning")
    for verdict in verdicts:
        chromium.wait_for(f"document.body.innerText.includes({_js(verdict)})", frame="blob:", what=verdict)
    assert chromium.text(frame="blob:").startswith("Sweep comparison")
    chromium.screenshot(ARTIFACTS / "browser-report-in-mlflow.png")

    # the report as a reviewer opens it: downloaded through the artifact API (served as an attachment)
    report = tmp_path / "report.html"
    report.write_bytes(_get(f"{ui}/get-artifact?path=report/report.html&run_uuid={parent}"))
    chromium.goto(report.as_uri())
    chromium.wait_for("document.querySelector('h1') && document.images.length > 0 && "
                      "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                      what="the report with its plots")
    text = chromium.text()
    for verdict in verdicts:
        assert verdict in text
    chromium.screenshot(ARTIFACTS / "browser-report.png")
    chromium.evaluate("document.querySelector('figure').scrollIntoView()")
    chromium.screenshot(ARTIFACTS / "browser-report-plots.png")
