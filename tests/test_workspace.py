"""Where a sweep's state lives: the spec's tracking URI, else MLflow's own variable, else the embedded store."""

from pathlib import Path

from orchestrator.spec import parse_spec
from orchestrator.workspace import SweepContext, Workspace

SPEC = {"name": "where", "seeds": [0], "metrics": ["train/lm_loss"]}


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ctx = SweepContext(parse_spec(SPEC), ws)
    assert ctx.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and ctx.embedded

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert ctx.tracking_uri == "http://mlflow:5000" and not ctx.embedded

    named = SweepContext(parse_spec({**SPEC, "tracking": {"uri": "sqlite:////elsewhere/db"}}), ws)
    assert named.tracking_uri == "sqlite:////elsewhere/db"


def test_checkpoints_live_under_cluster_storage_when_given(tmp_path):
    local = SweepContext(parse_spec(SPEC), Workspace(tmp_path))
    assert Path(local.checkpoint_root) == tmp_path / "checkpoints" / "where"
    shared = SweepContext(parse_spec({**SPEC, "cluster": {"storage": "s3://bucket/etrm/"}}), Workspace(tmp_path))
    assert shared.checkpoint_root == "s3://bucket/etrm/where/checkpoints"
