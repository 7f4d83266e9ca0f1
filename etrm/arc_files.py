"""Which files of an ARC `data.source` path hold the tasks, and which of them evaluate.

Torch-free, so that validating a config (here, or in the sweep driver) checks that a path
holds ARC tasks before a trial starts, with the same rule the loader (etrm.data) reads by:

- a kaggle `*_challenges.json` file (its `*_solutions.json` beside it);
- a folder with `training/` and `evaluation/` sub-folders of one JSON per task: that split;
- a folder with several kaggle pairs, one named "evaluation": that pair evaluates;
- a folder with kaggle pairs, or else one JSON per task: split later by a seeded hash.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

CHALLENGES = "_challenges.json"


@dataclass(frozen=True)
class Layout:
    train: tuple[Path, ...]  # kaggle challenge files or one-task JSON files
    eval: tuple[Path, ...] | None  # None: the source brings no split of its own


def solutions_of(challenges: Path) -> Path:
    return challenges.with_name(challenges.name.removesuffix(CHALLENGES) + "_solutions.json")


def layout(path: Path) -> Layout:
    """The task files under `path`, or ValueError saying why it holds no ARC tasks."""
    path = path.expanduser()
    stamp = path.stat().st_mtime_ns if path.exists() else 0
    return _layout(path, stamp)


@functools.lru_cache(maxsize=64)
def _layout(path: Path, stamp: int) -> Layout:  # stamp: a folder changed since is read again
    if not path.exists():
        raise ValueError(f"{str(path)!r} is neither synthetic, arc-agi-1, arc-agi-2 nor an existing path")
    if path.is_file():
        return Layout(_checked_pairs([path]), None)
    if (path / "training").is_dir() and (path / "evaluation").is_dir():
        return Layout(_task_files(path / "training"), _task_files(path / "evaluation"))
    pairs = sorted(path.glob("*" + CHALLENGES))
    if len(pairs) > 1 and any("evaluation" in p.name for p in pairs):
        return Layout(_checked_pairs([p for p in pairs if "evaluation" not in p.name]),
                      _checked_pairs([p for p in pairs if "evaluation" in p.name]))
    if pairs:
        return Layout(_checked_pairs(pairs), None)
    return Layout(_task_files(path), None)


def _checked_pairs(challenges: list[Path]) -> tuple[Path, ...]:
    for c in challenges:
        if not c.name.endswith(CHALLENGES):
            raise ValueError(f"{c}: a task file must be a kaggle *{CHALLENGES} (or give a folder of task JSON files)")
        if not solutions_of(c).is_file():
            raise ValueError(f"{c}: its solutions file {solutions_of(c).name} is missing")
    return tuple(challenges)


def _task_files(folder: Path) -> tuple[Path, ...]:
    files = tuple(sorted(folder.glob("*.json")))
    if not files:
        raise ValueError(f"{folder}: no ARC tasks (no *{CHALLENGES} and no *.json task files)")
    return files
