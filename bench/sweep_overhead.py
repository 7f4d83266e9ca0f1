"""Sweep overhead: 8 trials of fixed, known work at concurrency 2, through the real `etrm-sweep launch`.

    .venv/bin/python bench/sweep_overhead.py [--steps N]

Three measurements, side by side in one run on this machine:
  work       one trial alone, in a plain subprocess (no Ray, no MLflow): w seconds
  pair       two trials at once, in two plain subprocesses: the hardware's own cost of running two
             (shared caches and memory bandwidth), which no orchestrator can remove
  sweep      `etrm-sweep launch` of 8 such trials (same config, 8 seeds), max_concurrent 2
Reported: wall time of the sweep over the ideal 8·w/2 (target <= 1.15), over the hardware-bound
ideal 4·pair, and the time from `launch` to the first trial running (target <= 10 s), read from
the MLflow runs' start times (the driver opens a trial's run when Tune starts its actor). Also the
time to the first training result in MLflow (the first log step: the worker has imported torch,
built its data and model and trained `log_every` steps). Trials use one thread each, as the
demo's do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BASE = {
    "data": {"source": "synthetic", "grid_size": 6, "num_train_puzzles": 200, "num_eval_puzzles": 8,
             "eval_variants": 1},
    "model": {"hidden_size": 32, "num_heads": 4, "H_cycles": 2, "L_cycles": 2, "L_layers": 1,
              "halt_max_steps": 4, "encoder": {"type": "hybrid_standard", "num_layers": 1, "set_layers": 2}},
    "train": {"steps": 150, "batch_size": 16, "log_every": 10, "eval_every": 150, "checkpoint_every": 50,
              "threads": 1},
}
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}


def trial_seconds(config: Path, copies: int) -> float:
    """Wall time of `copies` plain trials started together (no Ray, no MLflow)."""
    start = time.perf_counter()
    procs = [subprocess.Popen([str(BIN / "python"), "-m", "etrm.train", str(config), "--set", f"seed={i}"],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(copies)]
    assert all(p.wait() == 0 for p in procs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=BASE["train"]["steps"])
    args = parser.parse_args()
    BASE["train"]["steps"] = BASE["train"]["eval_every"] = args.steps

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "trial.yaml"
        config.write_text(yaml.safe_dump(BASE))
        work = trial_seconds(config, 1)
        pair = trial_seconds(config, 2)

        spec = tmp / "overhead.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "overhead", "base": BASE, "seeds": {"count": 8}, "metrics": ["train/lm_loss"],
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2,
        }))
        start_wall = time.time()
        launch = subprocess.run([str(BIN / "etrm-sweep"), "launch", str(spec)], cwd=tmp,
                                env={**ENV, "ETRM_SWEEP_HOME": str(tmp / "ws")}, capture_output=True, text=True)
        end_wall = time.time()
        assert launch.returncode == 0, launch.stdout + launch.stderr

        from etrm.status import TrialStatus
        from orchestrator.tracking import SweepStore

        store = SweepStore(f"sqlite:///{tmp / 'ws' / 'mlflow.db'}", "overhead", "overhead")
        client, runs = store.client, list(store.trial_runs().values())
        assert len(runs) == 8 and set(store.trial_statuses().values()) == {TrialStatus.FINISHED}
        first_start = min(r.info.start_time for r in runs) / 1000 - start_wall
        first_result = min(client.get_metric_history(r.info.run_id, "train/lm_loss")[0].timestamp
                           for r in runs) / 1000 - start_wall
        last_end = max(r.info.end_time for r in runs) / 1000 - start_wall

    ideal, hw_ideal = 8 * work / 2, 4 * pair
    result = {
        "trial_alone_s": round(work, 2), "two_trials_at_once_s": round(pair, 2),
        "ideal_s": round(ideal, 1), "hardware_bound_ideal_s": round(hw_ideal, 1),
        "launch_to_first_trial_s": round(first_start, 2),
        f"launch_to_first_result_s (step {BASE['train']['log_every']})": round(first_result, 2),
        "launch_to_last_trial_done_s": round(last_end, 1),
        "launch_wall_s_incl_startup_and_report": round(end_wall - start_wall, 1),
        "overhead_ratio_vs_ideal": round(last_end / ideal, 3),
        "overhead_ratio_vs_hardware_bound": round(last_end / hw_ideal, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
