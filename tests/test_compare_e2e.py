"""End to end: `etrm-sweep compare` on a real sweep, partly finished and then finished.

One module-scoped sweep serves every test (a real launch costs a Ray start): 2 variants x 3 seeds in which
one trial crashes and is not retried, so the first launch leaves the sweep partly finished; a relaunch then
finishes it. `compare` runs after each stage; the tests check its JSON and what it left in MLflow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import ViewType

from etrm.train import CRASH_MARKER
from harness import TINY_BASE, run_cli, store_for, trial_runs, write_spec
from orchestrator.plan import make_plan
from orchestrator.records import mlflow_metric_name
from orchestrator.spec import load_spec

pytestmark = pytest.mark.integration
NAME = "cmp"
METRICS = ["eval/exact_accuracy", "ARC/pass@1", "train/lm_loss"]  # pass@1: stored as ARC/pass_at_1
SEEDS = [0, 1, 2]
CRASHING_SEED = 1  # of the treatment cell, final_norm=true
SUMMARY_KEYS = ("mean", "ci_low", "ci_high", "n")


@dataclass
class Stage:
    """What one `compare` printed and left behind."""

    json: dict
    html: str
    summaries: dict[str, dict[str, float]]  # cell_id -> metrics of its active summary run


@dataclass
class Sweep:
    ws: Path
    partial: Stage
    finished: Stage
    crashed_trial: str


def summary_runs(ws: Path, view: int = ViewType.ACTIVE_ONLY) -> list:
    store = store_for(ws, NAME)
    query = f"tags.`etrm.sweep` = '{NAME}' and tags.`etrm.role` = 'summary'"
    return store.client.search_runs([store.experiment_id], query, run_view_type=view)


def run_compare(ws: Path, out: Path) -> Stage:
    result = run_cli(["compare", NAME, "--json", str(out / "cmp.json"), "--html", str(out / "cmp.html")], ws)
    assert result.returncode == 0, result.stdout + result.stderr
    return Stage(
        json=json.loads((out / "cmp.json").read_text()),
        html=(out / "cmp.html").read_text(),
        summaries={r.data.tags["etrm.cell_id"]: r.data.metrics for r in summary_runs(ws)},
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    tmp = tmp_path_factory.mktemp("compare")
    ws = tmp / "ws"
    # Every trial would crash at step 5, but the crash fault fires once per checkpoint dir: marking all
    # dirs but one as already fired leaves exactly one crashing trial; max_failures 0 leaves it failed.
    base = {**TINY_BASE, "faults": {"raise_at_step": 5}}
    spec_path = write_spec(tmp, NAME, base=base, seeds=SEEDS, metrics=METRICS, max_failures=0)
    crashed = None
    for t in make_plan(load_spec(spec_path)).trials:
        if t.variant["model.encoder.final_norm"] is True and t.seed == CRASHING_SEED:
            crashed = t.trial_id
            continue
        (ws / "checkpoints" / NAME / t.trial_id).mkdir(parents=True)
        (ws / "checkpoints" / NAME / t.trial_id / CRASH_MARKER).touch()

    first = run_cli(["launch", str(spec_path)], ws)
    assert first.returncode == 1, first.stdout + first.stderr  # one trial did not finish
    (tmp / "partial").mkdir()
    partial = run_compare(ws, tmp / "partial")

    again = run_cli(["launch", str(spec_path)], ws)  # the crashed trial resumes from its checkpoint
    assert again.returncode == 0, again.stdout + again.stderr
    (tmp / "finished").mkdir()
    finished = run_compare(ws, tmp / "finished")  # the relaunch reported this finished sweep already
    return Sweep(ws, partial, finished, crashed)


def _cells(stage: Stage) -> dict[str, dict]:
    """`final_norm=true` -> cell, from the JSON."""
    return {c["label"]: c for c in stage.json["cells"]}


def test_partly_finished_sweep_is_compared_and_the_failed_trial_counted(sweep):
    cells = _cells(sweep.partial)
    assert set(cells) == {"final_norm=true", "final_norm=false"}
    treated, control = cells["final_norm=true"], cells["final_norm=false"]
    assert treated["status"] == {"0": "finished", "1": "failed", "2": "finished"}
    assert control["status"] == {str(s): "finished" for s in SEEDS}
    for metric in METRICS:
        assert treated["metrics"][metric]["n"] == 2 and sorted(treated["metrics"][metric]["values"]) == ["0", "2"]
        assert control["metrics"][metric]["n"] == 3

    contrasts = sweep.partial.json["contrasts"]
    assert [c["metric"] for c in contrasts] == METRICS
    for c in contrasts:  # seed 1 of the control lost its partner: unpaired, nothing dropped
        assert c["method"] == "unpaired permutation"
        assert (c["n_treatment"], c["n_control"], c["control_only_seeds"]) == (2, 3, [1])
        assert "final_norm=true: 1 failed excluded" in c["verdict"]
    assert sweep.partial.json["verdicts"] == [c["verdict"] for c in contrasts]
    assert "final_norm=true: 1 failed excluded" in sweep.partial.html
    assert sweep.partial.summaries[treated["cell_id"]]["eval/exact_accuracy/n"] == 2


def test_finished_sweep_json_has_every_cell_contrast_and_verdict(sweep):
    runs = trial_runs(sweep.ws, NAME)
    assert len(runs) == 6 and all(r.data.tags["etrm.status"] == "finished" for r in runs)
    crashed = next(r for r in runs if r.data.tags["etrm.trial_id"] == sweep.crashed_trial)
    client = store_for(sweep.ws, NAME).client  # the crash is on record in the run that later finished
    assert [a.path for a in client.list_artifacts(crashed.info.run_id, "errors")] == ["errors/attempt-1.txt"]

    data = sweep.finished.json
    cells = _cells(sweep.finished)
    assert set(cells) == {"final_norm=true", "final_norm=false"}
    run_ids = {r.data.tags["etrm.trial_id"]: r.info.run_id for r in runs}
    assert {rid for c in cells.values() for rid in c["run_ids"].values()} == set(run_ids.values())
    for cell in cells.values():
        assert cell["status"] == {str(s): "finished" for s in SEEDS}
        assert set(cell["metrics"]) == set(METRICS)
        assert all(cell["metrics"][m]["n"] == 3 for m in METRICS)

    assert data["metrics"] == METRICS and data["family_size"] == 1
    assert data["contrast"] == ["model.encoder.final_norm", True, False]
    contrasts = data["contrasts"]
    assert [(c["metric"], c["confirmatory"]) for c in contrasts] == [(m, m == METRICS[0]) for m in METRICS]
    for c in contrasts:
        assert c["method"] == "paired sign-flip" and c["paired_seeds"] == SEEDS
        assert c["treatment_label"] == "final_norm=true" and c["control_label"] == "final_norm=false"
        assert c["verdict"] and "failed" not in c["verdict"]
    assert data["verdicts"] == [c["verdict"] for c in contrasts]
    assert contrasts[0]["p_holm"] is not None and contrasts[0]["significant"] is False  # 3 pairs: p >= 0.25
    for verdict in data["verdicts"]:
        assert verdict in sweep.finished.html


def test_parent_run_holds_the_report_artifacts(sweep, tmp_path):
    store = store_for(sweep.ws, NAME)
    parent = store.parent_run_id()
    files = {Path(a.path).name for a in store.client.list_artifacts(parent, "report")}
    assert {"report.html", "report.md", "cells.csv", "comparison.json"} <= files
    pngs = {f for f in files if f.endswith(".png")}
    assert {f"{kind}_eval_exact_accuracy.png" for kind in ("curves", "paired")} <= pngs
    assert "curves_ARC_pass_1.png" in pngs

    local = Path(store.client.download_artifacts(parent, "report", str(tmp_path)))
    assert json.loads((local / "comparison.json").read_text()) == sweep.finished.json  # what compare printed
    html = (local / "report.html").read_text()
    assert all(v in html for v in sweep.finished.json["verdicts"])
    assert "data:image/png;base64," in html
    rows = (local / "cells.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(METRICS)  # header, one row per cell per metric


def test_one_summary_run_per_cell_with_mlflow_safe_aggregates(sweep):
    parent = store_for(sweep.ws, NAME).parent_run_id()
    runs = summary_runs(sweep.ws)
    assert len(runs) == 2  # written four times (each launch reports too): replaced, not duplicated
    assert len(summary_runs(sweep.ws, ViewType.ALL)) > 2  # the replaced ones are deleted, not kept active
    cells = {c["cell_id"]: c for c in sweep.finished.json["cells"]}
    assert {r.data.tags["etrm.cell_id"] for r in runs} == set(cells)
    for run in runs:
        cell = cells[run.data.tags["etrm.cell_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["mlflow.runName"] == f"summary: {cell['label']}"
        assert run.data.params == {"model.encoder.final_norm": str(cell["variant"]["model.encoder.final_norm"])}
        expected = {}
        for metric, s in cell["metrics"].items():
            for key, value in zip(SUMMARY_KEYS, (s["mean"], *s["ci_t"], s["n"])):
                if value is not None:  # None: not finite, not logged
                    expected[f"{mlflow_metric_name(metric)}/{key}"] = value
        assert set(expected) >= {f"{mlflow_metric_name(m)}/{k}" for m in METRICS for k in ("mean", "n")}
        assert "ARC/pass_at_1/mean" in expected
        assert run.data.metrics.keys() == expected.keys()
        assert all(math.isclose(run.data.metrics[k], v, rel_tol=1e-12, abs_tol=1e-12) for k, v in expected.items())
