"""The two rules that keep the layers apart (design.md): the trainer (etrm/) imports no Ray or MLflow,
so it runs alone and on any worker; the sweep driver (orchestrator/) never imports torch, which loads
only inside the Ray worker that runs a trial (orchestrator/trainable.run_trial)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAINER, DRIVER = sorted((ROOT / "etrm").glob("*.py")), sorted((ROOT / "orchestrator").glob("*.py"))


def imported(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level package, line, at module level) for every import statement of a file, however nested."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(name.split(".")[0], node.lineno, id(node) in top) for name in names]
    return found


def test_the_trainer_never_imports_ray_or_mlflow():
    offending = [f"{p.name}:{line} {pkg}" for p in TRAINER for pkg, line, _ in imported(p) if pkg in ("ray", "mlflow")]
    assert not offending, offending


def test_the_driver_imports_torch_only_inside_the_trial_function():
    at_module_level = [f"{p.name}:{line}" for p in DRIVER for pkg, line, top in imported(p) if pkg == "torch" and top]
    assert not at_module_level, at_module_level
    inside = [(p.name, line) for p in DRIVER for pkg, line, _ in imported(p) if pkg == "torch"]
    source = (ROOT / "orchestrator" / "trainable.py").read_text().splitlines()
    run_trial = next(i for i, text in enumerate(source, 1) if text.startswith("def run_trial("))
    assert [name for name, _ in inside] == ["trainable.py"] and inside[0][1] > run_trial, inside


@pytest.mark.slow  # a fresh interpreter imports every driver module (Ray Tune, MLflow)
def test_importing_every_driver_module_loads_no_torch():
    """What the static check cannot see: a dependency (Ray Tune, MLflow) that pulls torch in."""
    names = [f"orchestrator.{p.stem}" for p in DRIVER if p.stem != "__init__"]
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
