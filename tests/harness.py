"""What the CLI-level tests share: the installed `etrm-sweep`, a tiny trial config that trains in
seconds, a spec writer, and the sweep's MLflow store as a test reads it.

Plain functions, imported by the tests that need them; pytest fixtures live in conftest.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from services import service_env

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "etrm-sweep")]  # the venv running the tests, wherever it is

TINY_BASE = {
    "data": {"source": "synthetic", "grid_size": 5, "max_demos": 2, "families": ["colour_map"],
             "num_train_puzzles": 16, "num_eval_puzzles": 4, "eval_variants": 1},
    "model": {"hidden_size": 16, "num_heads": 2, "H_cycles": 1, "L_cycles": 1, "L_layers": 1,
              "halt_max_steps": 2, "encoder": {"type": "hybrid_standard", "num_layers": 1, "set_layers": 1,
                                               "output_tokens": 4}},
    "train": {"steps": 8, "batch_size": 4, "log_every": 2, "eval_every": 8, "checkpoint_every": 4},
}


def spec_tree(name: str, **overrides) -> dict:
    """A two-cell (final_norm on/off) two-seed spec over TINY_BASE."""
    spec = {
        "name": name,
        "description": "e2e test sweep",
        "base": TINY_BASE,
        "axes": {"model.encoder.final_norm": [True, False]},
        "seeds": [0, 1],
        "contrast": {"axis": "model.encoder.final_norm", "treatment": True, "control": False},
        "metrics": ["eval/exact_accuracy", "train/lm_loss"],
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
        "max_failures": 1,
    }
    return spec | overrides


def write_spec(tmp_path: Path, name: str, **overrides) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec_tree(name, **overrides), sort_keys=False))
    return path


def run_cli(args: list[str | Path], workspace: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`etrm-sweep ARGS` as a user runs it, in the repository root, with its state in `workspace`."""
    env = service_env(COLUMNS="160", **({"ETRM_SWEEP_HOME": str(workspace)} if workspace else {}))
    return subprocess.run(CLI + [str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def store_for(workspace: Path, name: str):
    from orchestrator.tracking import SweepStore  # MLflow: only for the tests that read a store

    return SweepStore(f"sqlite:///{workspace / 'mlflow.db'}", name, name)


def close_store(workspace: Path) -> None:
    """Close this process's connections to the workspace's store. MLflow keeps one engine per database URI
    for the life of the process, its pooled connections open on the file: after a test deletes mlflow.db
    they would go on reading the deleted file, not the one a later launch creates at the same path."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if engine := SqlAlchemyStore._engine_map.get(f"sqlite:///{workspace / 'mlflow.db'}"):
        engine.dispose()


def trial_runs(workspace: Path, name: str) -> list:
    return list(store_for(workspace, name).trial_runs().values())
