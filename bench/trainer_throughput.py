"""Trainer throughput: training samples/s (steady state) and peak RSS, side by side.

    .venv/bin/python bench/trainer_throughput.py [--out bench/RESULTS.md] [--seconds 20]

Two CPU shapes, each in float32 and bfloat16 autocast, plus a "research-style" baseline.
The published research code cannot be run here (CUDA-only, not obtainable offline), so the
baseline is OUR trainer with the research code's two documented inefficiencies that can be
reproduced without adding options to the product:
  - padded demo slots are encoded: 10 demo slots, ~3.5 real demos, and every slot marked
    valid (the research encoder ran all K = 10 slots; reference §4 says ~70% wasted compute);
  - one host sync per step (`loss.item()`, as its per-step logging did).
Every variant runs in its own subprocess, so peak RSS is that variant's own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

SHAPES = {
    "cpu-small": {"hidden_size": 128, "grid_size": 10, "batch_size": 32},
    "cpu-medium": {"hidden_size": 256, "grid_size": 15, "batch_size": 16},
}
SLOTS = 10  # ARC's demo slots; the synthetic puzzles bring 4 demos (3 in leave-one-out queries)
VARIANTS = {  # name -> (dtype, research-style)
    "ours float32": ("float32", False),
    "ours bfloat16": ("bfloat16", False),
    "research-style float32": ("float32", True),
    "research-style bfloat16": ("bfloat16", True),  # the research code's own default dtype
}


def config(shape: str, dtype: str):
    from etrm.config import build_config

    s = SHAPES[shape]
    return build_config({
        "data": {"grid_size": s["grid_size"], "max_demos": 4, "num_train_puzzles": 64, "num_eval_puzzles": 1},
        "model": {"hidden_size": s["hidden_size"], "num_heads": 4, "H_cycles": 3, "L_cycles": 4, "L_layers": 2,
                  "encoder": {"type": "standard", "num_layers": 2}},
        "train": {"batch_size": s["batch_size"], "dtype": dtype},
    })


def pad_slots(batch: dict[str, torch.Tensor], all_valid: bool) -> dict[str, torch.Tensor]:
    """Widen the demo axis to SLOTS with empty (all-PAD) grids; research-style marks them valid."""
    B, K, G2 = batch["demo_inputs"].shape
    out = dict(batch)
    for key in ("demo_inputs", "demo_outputs"):
        out[key] = torch.cat([batch[key], batch[key].new_zeros(B, SLOTS - K, G2)], dim=1)
    if all_valid:
        out["demo_mask"] = torch.ones(B, SLOTS, dtype=torch.bool)
    else:
        out["demo_mask"] = torch.cat([batch["demo_mask"], torch.zeros(B, SLOTS - K, dtype=torch.bool)], dim=1)
    return out


def run_one(shape: str, variant: str, seconds: float, warmup: int) -> dict:
    from etrm.model import ETRM
    from etrm.optim import build_optimizer
    from etrm.train import forward_and_loss, setup

    dtype, research = VARIANTS[variant]
    cfg = config(shape, dtype)
    s = setup(cfg)
    s.model = ETRM(cfg.model, cfg.data.grid_size, SLOTS)  # the same model, built for 10 demo slots
    s.optimizer = build_optimizer(s.model, cfg.train)
    real_demos = float(s.next_batch()["demo_mask"].sum(-1).float().mean())

    def step(carry):
        batch = pad_slots(s.next_batch(), all_valid=research)
        carry = carry or s.model.initial_carry(batch)
        carry, _, loss, _ = forward_and_loss(s, cfg, carry, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.train.grad_clip)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        if research:
            loss.item()
        return carry

    carry = None
    for _ in range(warmup):
        carry = step(carry)
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        carry = step(carry)
        steps += 1
    elapsed = time.perf_counter() - start
    return {
        "shape": shape,
        "variant": variant,
        "samples_per_s": steps * cfg.train.batch_size / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "steps": steps,
        "real_demos": real_demos,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:15]
    return "\n".join(lscpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per variant, after warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.seconds, args.warmup)))
        return

    rows = []
    load_before = os.getloadavg()
    for shape in SHAPES:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--one", shape, variant, "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
            row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(f"{shape:11s} {variant:24s} {row['samples_per_s']:8.1f} samples/s  {row['peak_rss_mib']:6.0f} MiB", flush=True)
            rows.append(row)

    lines = [
        "# Trainer throughput",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `.venv/bin/python bench/trainer_throughput.py {' '.join(sys.argv[1:])}`",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} torch threads",
        f"- load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
        "(other processes on the machine slow every variant alike, roughly)",
        "- shapes: H_cycles 3, L_cycles 4, L_layers 2, standard encoder with 2 layers, 4 heads; "
        + "; ".join(f"{k}: hidden {v['hidden_size']}, grid {v['grid_size']}, batch {v['batch_size']}" for k, v in SHAPES.items()),
        f"- demos: {SLOTS} demo slots, synthetic puzzles with 4 demos (3 in leave-one-out queries)",
        "",
        "```",
        machine(),
        "```",
        "",
        "| shape | variant | samples/s | ms/step | steps timed | real demos/row | peak RSS MiB | vs research-style, same dtype |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        dtype = VARIANTS[row["variant"]][0]
        ref = next(r for r in rows if r["shape"] == row["shape"] and r["variant"] == f"research-style {dtype}")
        lines.append(
            f"| {row['shape']} | {row['variant']} | {row['samples_per_s']:.1f} | {row['ms_per_step']:.0f} | {row['steps']} "
            f"| {row['real_demos']:.2f} | {row['peak_rss_mib']:.0f} | {row['samples_per_s'] / ref['samples_per_s']:.2f}× |"
        )
    lines += [
        "",
        "What the baseline is: the published research code could not be run here (it needs CUDA and",
        "is not available offline), so `research-style` is OUR trainer with two of its documented",
        "inefficiencies reproduced: every one of the 10 demo slots is encoded (padded slots marked",
        "valid), and `loss.item()` syncs the host every step. On a CPU the per-step sync costs almost",
        "nothing, so the gap is the padded-slot encoding; other research-code costs (e.g. ~40% no-op",
        "steps from counting groups, reference §6) change the step count, not samples/s, and are not",
        "included. `ours` at 10 slots skips the padded ones and costs the same as 4 slots.",
    ]
    report = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)


if __name__ == "__main__":
    main()
