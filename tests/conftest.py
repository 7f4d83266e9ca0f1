"""Shared fixtures. Helpers that tests call directly live in harness.py (the CLI, a tiny config, spec
writing) and services.py (real Ray, MLflow servers, PostgreSQL)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from orchestrator.workspace import Workspace

_names = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the fast tier's two pytest workers, one per core
        import torch

        torch.set_num_threads(1)  # two workers with two torch threads each would contend for two cores


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A fresh embedded workspace, made the default one ($ETRM_SWEEP_HOME) for the test."""
    monkeypatch.setenv("ETRM_SWEEP_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Workspace.default().create()


@pytest.fixture(scope="session")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the session: creating its schema takes seconds, an experiment does not."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(sqlite_uri: str, tmp_path: Path):
    """A SweepStore of a sweep of its own (own experiment, own name) in the session's SQLite store."""
    from orchestrator.tracking import SweepStore

    name = f"sweep-{next(_names)}"
    return SweepStore(sqlite_uri, name, name, artifact_root=tmp_path / "artifacts")
