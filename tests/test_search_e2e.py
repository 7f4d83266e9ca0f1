"""Optuna search and the ASHA scheduler, through the real CLI, real Ray Tune, real Optuna and MLflow."""

from __future__ import annotations

import pytest

from harness import TINY_BASE, run_cli, trial_runs, write_spec

pytestmark = pytest.mark.integration


def test_optuna_samples_the_space_and_a_relaunch_resumes_the_study(tmp_path):
    ws = tmp_path / "ws"
    search = {"optuna": {"num_samples": 3, "metric": "train/lm_loss", "mode": "min",
                         "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}}
    spec = write_spec(tmp_path, "searched", axes={}, seeds=[0], contrast=None, search=search,
                      metrics=["train/lm_loss"])
    first = run_cli(["launch", str(spec)], ws)
    assert first.returncode == 0, first.stdout + first.stderr
    runs = trial_runs(ws, "searched")
    assert len(runs) == 3 and all(r.data.tags["etrm.status"] == "finished" for r in runs)
    lrs = {float(r.data.params["train.lr"]) for r in runs}
    assert len(lrs) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert all(r.data.metrics["train/lm_loss"] > 0 for r in runs)

    # Asking for more samples feeds the finished trials to Optuna and runs only the new ones.
    search["optuna"]["num_samples"] = 4
    more = write_spec(tmp_path, "searched", axes={}, seeds=[0], contrast=None, search=search,
                      metrics=["train/lm_loss"])
    second = run_cli(["launch", str(more)], ws)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 already done" in second.stdout
    runs = trial_runs(ws, "searched")
    assert len(runs) == 4 and len({r.data.params["train.lr"] for r in runs}) == 4


def test_asha_stops_weak_trials_and_records_them_as_stopped(tmp_path):
    ws = tmp_path / "ws"
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 40, "log_every": 1, "eval_every": 40,
                                   "checkpoint_every": 40, "warmup_steps": 0}}
    # Two good learning rates run first (max_concurrent 1), then two that barely move the loss:
    # ASHA, ranking by train/lm_loss (lower is better), must cut those at a rung.
    spec = write_spec(tmp_path, "asha", base=base, axes={"train.lr": [3.0e-3, 2.0e-3, 1.0e-7, 2.0e-7]},
                      seeds=[0], contrast=None, scheduler="asha", metrics=["train/lm_loss"], max_concurrent=1)
    result = run_cli(["launch", str(spec)], ws)
    assert result.returncode == 0, result.stdout + result.stderr
    status = {float(r.data.params["train.lr"]): r.data.tags["etrm.status"] for r in trial_runs(ws, "asha")}
    assert status[3.0e-3] == "finished"
    assert "stopped" in (status[1.0e-7], status[2.0e-7])
    assert set(status.values()) <= {"finished", "stopped"}
