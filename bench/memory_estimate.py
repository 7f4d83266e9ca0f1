"""How close is etrm/memory.py's estimate to what a trial really uses?

Each config trains a few steps (with an evaluation and a checkpoint) in a fresh process, which
reports its peak resident memory (ru_maxrss); the estimate is computed from the config alone.

    .venv/bin/python bench/memory_estimate.py        # results: bench/RESULTS.md, "Memory estimate"
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from etrm.config import build_config
from etrm.memory import estimate

STEPS = 4
CONFIGS = {
    "default (hidden 64, batch 16, grid 8)": {},
    "batch 128": {"train": {"batch_size": 128}},
    "hidden 256, batch 32": {"model": {"hidden_size": 256, "num_heads": 8}, "train": {"batch_size": 32}},
    "grid 16, batch 32, 8 demos": {"data": {"grid_size": 16, "max_demos": 8}, "train": {"batch_size": 32}},
    "output_tokens 256": {"model": {"encoder": {"output_tokens": 256}}},
    "30,000 synthetic puzzles": {"data": {"num_train_puzzles": 30000}},
    "lpn_variational, EMA": {"model": {"encoder": {"type": "lpn_variational"}}, "train": {"ema_decay": 0.999}},
}
CHILD = """
import json, resource, sys
from pathlib import Path
from etrm.config import build_config
tree, workdir = json.loads(sys.argv[1]), sys.argv[2]
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from etrm.train import train
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
train(build_config(tree), checkpoint_dir=Path(workdir))
print(json.dumps({"imports": imported * 1024, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> None:
    print("| config | estimate (MiB) | peak RSS (MiB) | estimate / peak |\n|---|---:|---:|---:|")
    for name, tree in CONFIGS.items():
        tree = json.loads(json.dumps(tree))
        tree.setdefault("train", {}).update(steps=STEPS, eval_every=STEPS, checkpoint_every=STEPS, log_every=1,
                                            device="cpu", dtype="float32", threads=1)
        est = estimate(build_config(tree))
        with tempfile.TemporaryDirectory() as workdir:
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(tree), workdir], capture_output=True,
                                 text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {est.total / 2**20:.0f} | {measured['peak'] / 2**20:.0f} | {est.total / measured['peak']:.2f} |"
              f"  <!-- imports {measured['imports'] / 2**20:.0f} MiB; params {est.parameter_bytes / 2**20:.0f}, "
              f"activations {est.activation_bytes / 2**20:.0f}, data {est.data_bytes / 2**20:.0f} MiB -->", flush=True)


if __name__ == "__main__":
    main()
