"""The demo's two arms at one seed: what the final norm does to the raw and the scale-free encoder metrics,
the gradient spikes the log windows count, and what each trial costs in CPU time.

    .venv/bin/python bench/demo_arms.py [--seed 0]

Trains sweeps/demo.yaml's two cells (final_norm true / false) at `--seed`, plus the previous demo loop
(H_cycles = L_cycles = halt_max_steps = 1, 540 steps, fix on) as a CPU-time baseline, each in its own
process, all at once. CPU seconds, not wall seconds: on a shared machine the wall clock measures the
neighbours; the demo's wall time on an idle 2-core machine is about the sum of its trials' CPU seconds / 2
(two one-thread trials at a time). Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["eval/exact_accuracy", "train/steps", "encoder_output_scale", "encoder_cross_sample_var",
        "encoder_cross_sample_var_rel", "encoder_cross_sample_cosine", "encoder_token_spread_rel"]
PREVIOUS_LOOP = {"model.H_cycles": 1, "model.L_cycles": 1, "model.halt_max_steps": 1, "train.steps": 540,
                 "train.eval_every": 270, "train.checkpoint_every": 270}

CHILD = """
import json, sys, time
from etrm.config import TrialConfig
from etrm.train import train
cfg = TrialConfig.model_validate_json(sys.argv[1])
logs = []
class Reporter:
    def log(self, step, metrics): logs.append(metrics)
    def checkpoint_saved(self, step, path): pass
cpu = time.process_time()
result = train(cfg, Reporter())
windows = {k: [m[k] for m in logs if k in m] for k in ("grad/max_norm", "grad/spike_steps", "grad/clipped_steps")}
print(json.dumps({"cpu_s": time.process_time() - cpu, "metrics": result.metrics, "max_norm": max(windows["grad/max_norm"]),
                  "spikes": sum(windows["grad/spike_steps"]), "clipped": sum(windows["grad/clipped_steps"]),
                  "log_steps": len(logs)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from etrm.config import build_config
    from orchestrator.plan import make_plan
    from orchestrator.spec import base_for, load_spec

    spec = load_spec(ROOT / "sweeps" / "demo.yaml")
    runs = {f"final_norm={str(t.variant['model.encoder.final_norm']).lower()}": t.config
            for t in make_plan(spec).trials if t.seed == args.seed}
    runs["previous demo loop (H=L=halt=1, 540 steps), final_norm=true"] = build_config(
        base_for(spec.base, {}), PREVIOUS_LOOP | {"model.encoder.final_norm": True, "seed": args.seed})
    load_before = os.getloadavg()[0]
    procs = {name: subprocess.Popen([sys.executable, "-c", CHILD, cfg.model_dump_json()], cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True) for name, cfg in runs.items()}
    results = {name: json.loads(p.communicate()[0].strip().splitlines()[-1]) for name, p in procs.items()}
    print(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; seed {args.seed}; "
          f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"- command: `.venv/bin/python bench/demo_arms.py --seed {args.seed}`\n")
    print("| run | CPU s | " + " | ".join(KEYS) + " | grad/max_norm (whole run) | grad/spike_steps (sum) "
          "| grad/clipped_steps (sum) |")
    print("|---|" + "---:|" * (len(KEYS) + 4))
    for name, r in results.items():
        values = [f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "-" for k in KEYS]
        print(f"| {name} | {r['cpu_s']:.0f} | " + " | ".join(values)
              + f" | {r['max_norm']:.3g} | {r['spikes']:.0f} | {r['clipped']:.0f} |")


if __name__ == "__main__":
    main()
