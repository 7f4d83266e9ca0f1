"""Where a sweep's local state lives when the spec names no cluster storage or tracking server.

Everything defaults to one folder, `.etrm-sweep/` under the working directory (or
$ETRM_SWEEP_HOME): the MLflow store and its artifacts, Ray Tune's experiment
folders, the trial checkpoints, and notes of the processes each launch's local
Ray started. Deleting that folder forgets every sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec
    from orchestrator.tracking import SweepStore


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def default(cls) -> "Workspace":
        return cls(Path(os.environ.get("ETRM_SWEEP_HOME", ".etrm-sweep")).expanduser().resolve())

    @property
    def database(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        """The embedded MLflow store: SQLite, written by the sweep driver alone (one writer, no locks)."""
        return f"sqlite:///{self.database}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def ray_results(self) -> Path:
        return self.root / "ray_results"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def local_ray(self) -> Path:
        """Notes of the processes each launch's local Ray started (see orchestrator/local_ray.py)."""
        return self.root / "local-ray"

    @property
    def ray_token(self) -> Path:
        """The token of the Ray that launches start here (0600): the dashboard asks for it."""
        return self.root / "ray-token"

    @property
    def journal(self) -> Path:
        """Tracking records a launch could not write yet (see orchestrator/journal.py)."""
        return self.root / "journal"

    @property
    def locks(self) -> Path:
        """One lock file per sweep, held by the driver running it (see orchestrator/sweep_lock.py)."""
        return self.root / "locks"

    def create(self) -> "Workspace":
        for path in (self.root, self.artifact_root, self.ray_results, self.checkpoints):
            path.mkdir(parents=True, exist_ok=True)
        return self


@dataclass
class SweepContext:
    """Everything a command needs to find a sweep's state."""

    spec: SweepSpec
    workspace: Workspace

    @property
    def tracking_uri(self) -> str:
        """The spec's `tracking.uri`, else MLflow's own MLFLOW_TRACKING_URI, else the embedded store."""
        return self.spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or self.workspace.tracking_uri

    @property
    def embedded(self) -> bool:
        return self.tracking_uri == self.workspace.tracking_uri

    @property
    def checkpoint_root(self) -> str:
        if self.spec.cluster.storage:
            return f"{self.spec.cluster.storage.rstrip('/')}/{self.spec.name}/checkpoints"
        return str(self.workspace.checkpoints / self.spec.name)

    def store(self) -> "SweepStore":
        from orchestrator.reachability import check_tracking
        from orchestrator.tracking import SweepStore  # MLflow is heavy: import it when a store is needed

        check_tracking(self.tracking_uri)  # a dead server: one line now, not MLflow's minutes of retries

        # A server stores artifacts itself; a database (the embedded one, or a sqlite/postgresql URI) has no
        # artifact store, and MLflow would default to ./mlruns of whatever directory a command runs in.
        server = self.tracking_uri.startswith(("http://", "https://"))
        if not server:  # two commands opening a fresh database at once must not race on its schema
            from orchestrator.tracking_db import ensure_schema

            ensure_schema(self.tracking_uri)
        return SweepStore(self.tracking_uri, self.spec.tracking.experiment or self.spec.name, self.spec.name,
                          artifact_root=None if server else self.workspace.artifact_root)

    @property
    def spec_path(self) -> Path:
        return self.workspace.root / "sweeps" / f"{self.spec.name}.yaml"

    def save_spec(self, text: str) -> None:
        """Keep the launched spec in the workspace, so `status`/`resume`/`compare NAME` can find the sweep."""
        self.spec_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec_path.write_text(text)

    @classmethod
    def for_name(cls, name: str, workspace: Workspace | None = None) -> "SweepContext":
        """The sweep as last launched from this workspace (its spec was saved at launch)."""
        from orchestrator.spec import check_slug, load_spec

        try:
            check_slug(name)
        except ValueError as err:
            raise LookupError(f"no sweep can be named {err}") from None
        workspace = workspace or Workspace.default()
        path = workspace.root / "sweeps" / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in (workspace.root / "sweeps").glob("*.yaml"))
            raise LookupError(f"no sweep named {name!r} was launched from {workspace.root}"
                              + (f" (known: {', '.join(known)})" if known else ""))
        return cls(load_spec(path), workspace)
