"""Adaptive seeds end to end: the real CLI, a local Ray, the embedded MLflow store, the real trainer.

A large effect (learning rate 0.02 against 1e-6: the loss barely moves in the control) is answered
before the spec's most seeds and the sweep stops there; a null one (two 1e-6 jitters of the same initial weights) never is,
and the sweep runs to `max`. A relaunch recomputes every look from MLflow and decides alike.
"""
from __future__ import annotations

import copy
import json
import re

import pytest

from harness import TINY_BASE, run_cli, trial_runs, write_spec

pytestmark = pytest.mark.integration

BASE = copy.deepcopy(TINY_BASE)
BASE["train"].update(steps=32, batch_size=16, log_every=8, eval_every=32, checkpoint_every=32, warmup_steps=0,
                     threads=1)
RULE = {"adaptive": {"min": 3, "max": 5, "step": 1, "half_width": 1e-9}}  # only a clear sign can stop it early


def seeds_run(ws, name) -> dict[int, int]:
    runs = trial_runs(ws, name)
    counts: dict[int, int] = {}
    for run in runs:
        seed = int(run.data.tags["etrm.seed"])
        counts[seed] = counts.get(seed, 0) + 1
    return counts


def said(result) -> str:
    """What a command printed, with rich's line wrapping undone (it wraps at the terminal's width)."""
    return " ".join(result.stdout.split())


def test_a_large_effect_stops_before_max_and_a_relaunch_decides_alike(tmp_path):
    ws, name = tmp_path / "ws", "adaptive-large"
    spec = write_spec(tmp_path, name, base=BASE, axes={"train.lr": [0.02, 1.0e-6]}, seeds=RULE,
                      contrast={"axis": "train.lr", "treatment": 0.02, "control": 1.0e-6},
                      metrics=["train/lm_loss"], null_control=True)
    first = run_cli(["launch", str(spec)], ws)
    assert first.returncode == 0, first.stdout + first.stderr
    stop = re.search(r"\(excludes 0\): answered, stopping at (\d) of at most 5 seeds", said(first))
    assert stop and int(stop.group(1)) < 5, said(first)  # answered before the spec's most seeds
    n = int(stop.group(1))
    assert seeds_run(ws, name) == {seed: 3 for seed in range(n)}  # treatment, control and null arm; no more seeds

    out = tmp_path / "comparison.json"
    assert run_cli(["compare", name, "--json", str(out)], ws).returncode == 0
    contrast = json.loads(out.read_text())["contrasts"][0]
    assert contrast["ci_anytime"][1] < 0 and contrast["significant"]  # the loss drops, after peeking too
    assert contrast["null"]["n"] == n and contrast["null"]["sd"] < 1e-3 < -contrast["diff"]
    assert "anytime-valid CI" in contrast["verdict"] and "pairing" in contrast["noise"]
    assert "Noise: did pairing help" in said(first)

    again = run_cli(["launch", str(spec)], ws)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{3 * n} trials, {3 * n} already done, 0 to run" in said(again)
    assert f"answered, stopping at {n} of at most 5 seeds" in said(again)
    assert seeds_run(ws, name) == {seed: 3 for seed in range(n)}


@pytest.mark.heavy  # every seed up to max: about a minute more than the large effect, which CI keeps
def test_a_null_effect_runs_to_max(tmp_path):
    ws, name = tmp_path / "ws", "adaptive-null"
    spec = write_spec(tmp_path, name, base=BASE | {"train": BASE["train"] | {"lr": 0.02}},
                      axes={"model.init_jitter": [2, 1]}, seeds=RULE,
                      contrast={"axis": "model.init_jitter", "treatment": 2, "control": 1}, metrics=["train/lm_loss"])
    result = run_cli(["launch", str(spec)], ws)
    assert result.returncode == 0, result.stdout + result.stderr
    for n in (3, 4):
        assert f"after {n} seeds" in said(result) and f"running seeds up to {n + 1}" in said(result)
    assert "stopping at the most seeds the spec allows (5), not answered" in said(result)
    assert seeds_run(ws, name) == {s: 2 for s in range(5)}
