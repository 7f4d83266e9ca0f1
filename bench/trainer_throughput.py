"""Trainer throughput against the research code: training samples/s and peak RSS, side by side.

    ETRM_REFERENCE=../shared/reference/etrm .venv/bin/python bench/trainer_throughput.py [--rounds 3] [--compile on|off]
    .venv/bin/python bench/trainer_throughput.py --first-step    # time to the first step: eager, compiled cold / warm
    .venv/bin/python bench/trainer_throughput.py --scaling       # ours: samples/s and peak RSS vs batch and grid size

The baseline is the research code itself (ETRM_REFERENCE, default ../shared/reference/etrm next
to the repository): `models.recursive_reasoning.etrm.TRMWithEncoder` in `models.losses.ACTLossHead`,
built directly (its training script is CUDA-only). Both trainers get the same shape, dtype, thread
count and THE SAME batches (drawn once from our synthetic puzzles with a fixed seed). Every
measurement runs in its own process; research and ours alternate, in both orders, for several
rounds, so load from other processes hits both alike. Reported: median samples/s over the rounds
with min-max, median peak RSS of the timed steps, and our time to the first step (with compilation).

How the two loops differ (everything else is the same: one ACT step per optimiser step with the
carry persisting across steps, re-encoding every step, stable-max CE in float64, q-halt BCE with
weight 0.5, halt_max_steps 4 with exploration 0.1, global-norm clip 1.0):
  - optimiser: research torch AdamW (its AdamATan2 is a CUDA-only package); ours AdamATan2, our
    default, the same update TRM uses;
  - padding: research encodes all K demo slots on the whole padded canvas (2G² tokens each) and
    zeroes the padded slots after; ours gathers the real demos and runs the per-demo encoder on
    their non-PAD tokens only (PAD keys are masked in ours, so dropping them changes no output);
  - attention masks: research masks no PAD keys in the per-demo encoder; ours does;
  - SwiGLU width: research rounds to a multiple of 256, ours (hidden < 256) to a multiple of 8;
  - precision: research casts weights to bf16 (`forward_dtype`), ours uses autocast;
  - research computes encoder diagnostics with five `.item()` syncs and a per-puzzle loop every
    step, as its model does; ours syncs only on log steps (none in the timed steps here);
  - ours is compiled where our `train.compile: auto` compiles a long trial (float32 on a CPU;
    `--compile on|off` forces it): torch.compile of every transformer block, compiled during the
    untimed warm-up steps; the research model runs eagerly (its forward syncs mid-graph; its CUDA
    script compiles, unmeasured here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import record_function

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "cpu-small": {"hidden_size": 128, "grid_size": 10, "batch_size": 32},
    "cpu-medium": {"hidden_size": 256, "grid_size": 15, "batch_size": 16},
}
DTYPES = ("float32", "bfloat16")
IMPLS = ("research", "ours")
BENCH_TRIAL_STEPS = 10_000  # the configs' train.steps: a long trial, so train.compile: auto decides as for one (only steps are timed)
NUM_BATCHES = 16  # distinct batches, cycled; both trainers see the same sequence


@dataclass
class Trainer:
    step: Callable[[dict[str, torch.Tensor]], None]  # one optimiser step on a batch
    encoder: torch.nn.Module  # for bench/profile_trainer.py's ranges
    decoder: torch.nn.Module
    compiled: bool = False


def reference_path() -> Path:
    path = Path(os.environ.get("ETRM_REFERENCE", ROOT.parent / "shared" / "reference" / "etrm")).resolve()
    if not (path / "models" / "recursive_reasoning" / "etrm.py").exists():
        sys.exit(f"error: ETRM_REFERENCE: {path} does not hold the research code (models/recursive_reasoning/etrm.py)")
    return path


def config(shape: str, dtype: str, compile: bool | None = None, overrides: dict | None = None):
    from etrm.config import build_config

    s = SHAPES[shape] | (overrides or {})
    train = {"batch_size": s["batch_size"], "dtype": dtype, "threads": torch.get_num_threads(), "steps": BENCH_TRIAL_STEPS}
    if compile is not None:
        train["compile"] = compile
    return build_config({
        "data": {"grid_size": s["grid_size"], "max_demos": 4, "num_train_puzzles": 64, "num_eval_puzzles": 1},
        "model": {"hidden_size": s["hidden_size"], "num_heads": 4, "H_cycles": 3, "L_cycles": 4, "L_layers": 2,
                  "encoder": {"type": "standard", "num_layers": 2, "set_layers": 2, "norm_style": "post"}},
        "train": train,
    })


def batches(cfg) -> list[dict[str, torch.Tensor]]:
    """NUM_BATCHES batches of our synthetic puzzles, the same for every process (fixed seed)."""
    from etrm.data import TrainSampler, load_puzzles

    puzzles, _ = load_puzzles(cfg.data, cfg.seed)
    sampler = TrainSampler(puzzles, cfg.data, cfg.train.batch_size, cfg.seed)
    return [sampler.next_batch() for _ in range(NUM_BATCHES)]


def to_research(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our batch in the research code's keys: ignored labels are -100 (ours: PAD), the demo outputs
    are `demo_labels`, and rows with identical demos share a `puzzle_identifiers` value."""
    from etrm.grids import PAD

    _, ids = torch.unique(batch["demo_inputs"].flatten(1), dim=0, return_inverse=True)
    return {
        "inputs": batch["inputs"],
        "labels": torch.where(batch["labels"] == PAD, -100, batch["labels"]),
        "puzzle_identifiers": ids.to(torch.int32),
        "demo_inputs": batch["demo_inputs"],
        "demo_labels": batch["demo_outputs"],
        "demo_mask": batch["demo_mask"],
    }


def research_trainer(cfg, dtype: str):
    """The research model and loss head at our config's shape -> step(batch) (one optimiser step)."""
    sys.path.insert(0, str(reference_path()))
    from models.losses import ACTLossHead
    from models.recursive_reasoning.etrm import TRMWithEncoder

    m, e, G = cfg.model, cfg.model.encoder, cfg.data.grid_size
    model = TRMWithEncoder(dict(
        batch_size=cfg.train.batch_size, seq_len=G * G, vocab_size=12,
        encoder_type=e.type, encoder_num_layers=e.num_layers, encoder_set_layers=e.set_layers,
        encoder_norm_style=e.norm_style, H_cycles=m.H_cycles, L_cycles=m.L_cycles, L_layers=m.L_layers,
        hidden_size=m.hidden_size, expansion=m.expansion, num_heads=m.num_heads, pos_encodings="rope",
        rope_theta=m.rope_theta, halt_max_steps=m.halt_max_steps, halt_exploration_prob=m.halt_exploration_prob,
        forward_dtype=dtype, puzzle_emb_len=e.output_tokens,
    ))
    head = ACTLossHead(model, loss_type="stablemax_cross_entropy")
    head.train()
    tc = cfg.train
    optimizer = torch.optim.AdamW(head.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    carry = None

    def step(batch):
        nonlocal carry
        batch = to_research(batch)
        if carry is None:
            carry = head.initial_carry(batch)
        carry, loss, _, _, _ = head(carry=carry, batch=batch, return_keys=[])  # loss inside: profiled in "forward"
        with record_function("backward"):
            ((1 / tc.batch_size) * loss).backward()  # as its train_batch_encoder does
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(head.parameters(), tc.grad_clip)
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad()

    return Trainer(step, model.encoder, model.inner)


def our_trainer(cfg):
    """Our trainer's step between two log steps (the body of etrm.train.train's loop)."""
    from etrm.diagnostics import GradSpikes, HaltedMeans
    from etrm.train import forward_and_loss, setup

    s = setup(cfg)
    trainable = [p for p in s.model.parameters() if p.requires_grad]
    halted_means, grad_spikes = HaltedMeans(s.device), GradSpikes(cfg.train.grad_clip, s.device)
    carry = None

    def step(batch):
        nonlocal carry
        if carry is None:
            carry = s.model.initial_carry(batch)
        carry, _, loss, per_row = forward_and_loss(s, cfg, carry, batch)
        with record_function("backward"):
            loss.backward()
        with record_function("clip"):
            grad_spikes.add(torch.nn.utils.clip_grad_norm_(trainable, cfg.train.grad_clip))
        with record_function("optimizer"):
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
        halted_means.add(per_row, carry.halted)

    return Trainer(step, s.model.encoder, s.model.decoder, s.compiled)


def peak_rss_mib() -> float:
    """VmHWM: the process's peak resident memory since the last reset_peak_rss()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def run_one(impl: str, shape: str, dtype: str, seconds: float, warmup: int, min_steps: int, compile: bool | None,
            overrides: dict | None = None) -> dict:
    cfg = config(shape, dtype, compile, overrides)
    data = batches(cfg)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    trainer = research_trainer(cfg, dtype) if impl == "research" else our_trainer(cfg)
    step = trainer.step
    step(data[0])
    first_step_s = time.perf_counter() - t0
    for i in range(1, warmup):
        step(data[i % NUM_BATCHES])
    startup_rss = peak_rss_mib()
    reset_peak_rss()
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while steps < min_steps or time.perf_counter() - start < seconds:
        step(data[(warmup + steps) % NUM_BATCHES])
        steps += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "impl": impl, "shape": shape, "dtype": dtype, "compile": trainer.compiled,
        "samples_per_s": steps * cfg.train.batch_size / elapsed, "ms_per_step": 1000 * elapsed / steps,
        "cpu_s_per_step": cpu / steps,
        "steps": steps, "first_step_s": first_step_s, "peak_rss_mib": peak_rss_mib(),
        "startup_peak_rss_mib": startup_rss, "threads": torch.get_num_threads(),
        "real_demos": float(torch.stack([b["demo_mask"].sum(-1).float().mean() for b in data]).mean()),
        "real_tokens": real_token_share(data),
    }


def real_token_share(data: list[dict[str, torch.Tensor]]) -> float:
    """Share of the real demos' tokens that are not PAD: what the per-demo encoder costs ours."""
    from etrm.grids import PAD

    kept = total = 0
    for b in data:
        grids = torch.cat((b["demo_inputs"], b["demo_outputs"]), dim=-1)[b["demo_mask"]]
        kept, total = kept + int((grids != PAD).sum()), total + grids.numel()
    return kept / total


def spawn(*args: str, env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--one", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        sys.exit(f"error: {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    keep = ("Model name", "CPU(s):", "Thread(s) per core", "Flags")
    lines = [ln for ln in lscpu if ln.startswith(keep)]
    return "\n".join(ln if not ln.startswith("Flags") else
                     "Flags (some): " + " ".join(f for f in ln.split() if f.startswith(("avx512", "amx", "avx2", "fma")))
                     for ln in lines)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (research/ours) per shape and dtype")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement, after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, the first one included "
                        "(compilation happens in the first)")
    parser.add_argument("--min-steps", type=int, default=3, help="timed steps at least, however long they take")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads in every process")
    parser.add_argument("--compile", choices=("default", "on", "off"), default="default",
                        help="our train.compile: the config default, or forced")
    parser.add_argument("--first-step", action="store_true",
                        help="instead: time to the first step, research and ours eager / compiled with a cold and a "
                             "warm inductor cache (float32 unless --dtypes)")
    parser.add_argument("--scaling", action="store_true",
                        help="instead: ours at hidden 128 over batch sizes and grid sizes (float32 unless --dtypes)")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "SHAPE", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    compile = {"default": None, "on": True, "off": False}[args.compile]
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(*args.one, args.seconds, args.warmup, args.min_steps, compile,
                                 json.loads(args.overrides))))
        return

    reference_path()
    timing = ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--min-steps", str(args.min_steps),
              "--threads", str(args.threads)]
    opts = timing + ["--compile", args.compile]
    if args.first_step or args.scaling:
        if args.dtypes == list(DTYPES):
            args.dtypes = ["float32"]
        report = first_step(args, timing) if args.first_step else scaling(args, opts)
        if args.out:
            Path(args.out).write_text(report)
        print(report)
        return

    rows, loads = [], [f"start: {load()}"]
    for r in range(args.rounds):
        for shape in args.shapes:
            for dtype in args.dtypes:
                for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
                    row = spawn(impl, shape, dtype, *opts) | {"round": r, "load": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"round {r} {shape:10s} {dtype:8s} {impl:8s} {row['samples_per_s']:7.1f} samples/s "
                          f"{row['cpu_s_per_step']:6.2f} CPU s/step {row['peak_rss_mib']:6.0f} MiB  "
                          f"first step {row['first_step_s']:5.1f} s  load {load()}",
                          flush=True)
        loads.append(f"after round {r}: {load()}")

    report = render(rows, args, loads)
    if args.out:
        Path(args.out).write_text(report)
    print(report)


def first_step(args, timing: list[str]) -> str:
    """Seconds from building the trainer to the end of its first step (data excluded), in fresh processes;
    a cold inductor cache is an empty TORCHINDUCTOR_CACHE_DIR, the warm one the same directory once more."""
    import tempfile

    lines = [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; command: "
             f"`.venv/bin/python bench/trainer_throughput.py {' '.join(sys.argv[1:])}`; {args.threads} torch threads; "
             f"load average before: {load()}", "",
             "| shape | dtype | research (eager) | ours eager | ours compiled, cold cache | ours compiled, warm cache "
             "| ours compiled samples/s after warm-up (eager) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for shape in args.shapes:
        for dtype in args.dtypes:
            with tempfile.TemporaryDirectory() as cache:
                env = {"TORCHINDUCTOR_CACHE_DIR": cache}
                research = spawn("research", shape, dtype, *timing, "--compile", "off", env=env)
                eager = spawn("ours", shape, dtype, *timing, "--compile", "off", env=env)
                cold = spawn("ours", shape, dtype, *timing, "--compile", "on", env=env)
                warm = spawn("ours", shape, dtype, *timing, "--compile", "on", env=env)
            print(f"{shape} {dtype}: research {research['first_step_s']:.1f} s, eager {eager['first_step_s']:.1f} s, "
                  f"cold {cold['first_step_s']:.1f} s, warm {warm['first_step_s']:.1f} s", flush=True)
            lines.append(f"| {shape} | {dtype} | {research['first_step_s']:.1f} s | {eager['first_step_s']:.1f} s "
                         f"| {cold['first_step_s']:.1f} s | {warm['first_step_s']:.1f} s "
                         f"| {warm['samples_per_s']:.1f} ({eager['samples_per_s']:.1f}) |")
    return "\n".join(lines) + "\n"


SCALING_BATCHES = (8, 16, 32, 64)  # at grid 10
SCALING_GRIDS = (5, 10, 15, 20)  # at batch 16


def scaling(args, opts: list[str]) -> str:
    """Ours at hidden 128 (cpu-small's model) over batch size and grid size: what a trial of that size costs."""
    lines = [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; command: "
             f"`.venv/bin/python bench/trainer_throughput.py {' '.join(sys.argv[1:])}`; {args.threads} torch threads; "
             f"load average before: {load()}", "",
             "| dtype | batch | grid | samples/s | s per step | peak RSS MiB (timed steps) | first step s | compiled |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    cases = [(b, 10) for b in SCALING_BATCHES] + [(16, g) for g in SCALING_GRIDS if g != 10]
    for dtype in args.dtypes:
        for batch, grid in cases:
            row = spawn("ours", "cpu-small", dtype, *opts, "--overrides",
                        json.dumps({"batch_size": batch, "grid_size": grid}))
            print(f"{dtype} batch {batch} grid {grid}: {row['samples_per_s']:.1f} samples/s, "
                  f"{row['peak_rss_mib']:.0f} MiB", flush=True)
            lines.append(f"| {dtype} | {batch} | {grid} | {row['samples_per_s']:.1f} | {row['ms_per_step'] / 1000:.2f} "
                         f"| {row['peak_rss_mib']:.0f} | {row['first_step_s']:.1f} | {row['compile']} |")
    return "\n".join(lines) + "\n"


def render(rows: list[dict], args, loads: list[str]) -> str:
    def pick(impl, shape, dtype):
        return [r for r in rows if (r["impl"], r["shape"], r["dtype"]) == (impl, shape, dtype)]

    def num(x: float) -> str:
        return f"{x:.2f}" if x < 1 else f"{x:.1f}"

    def cell(rs):
        sps = sorted(r["samples_per_s"] for r in rs)
        return (f"{num(statistics.median(sps))} ({num(sps[0])}-{num(sps[-1])})",
                f"{statistics.median(r['peak_rss_mib'] for r in rs):.0f}")

    lines = [
        "| shape | dtype | research samples/s (min-max) | ours samples/s (min-max) "
        "| **ours / research** (median of per-round ratios, min-max) | research / ours CPU s per step (median) "
        "| research peak RSS MiB | ours peak RSS MiB | ours compiled | ours first step s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for shape in args.shapes:
        for dtype in args.dtypes:
            res, ours = pick("research", shape, dtype), pick("ours", shape, dtype)
            if not res or not ours:
                continue
            pairs = list(zip(sorted(res, key=lambda x: x["round"]), sorted(ours, key=lambda x: x["round"])))
            ratios = sorted(o["samples_per_s"] / r["samples_per_s"] for r, o in pairs)
            cpu = statistics.median(r["cpu_s_per_step"] for r in res) / statistics.median(o["cpu_s_per_step"] for o in ours)
            (rs, rm), (os_, om) = cell(res), cell(ours)
            first = ", ".join(f"{o['first_step_s']:.1f}" for o in sorted(ours, key=lambda x: x["round"]))
            lines.append(f"| {shape} | {dtype} | {rs} | {os_} | **{statistics.median(ratios):.2f}×** "
                         f"({ratios[0]:.2f}-{ratios[-1]:.2f}) | {cpu:.2f}× | {rm} | {om} | {ours[0]['compile']} | {first} |")
    head = [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; command: "
        f"`.venv/bin/python bench/trainer_throughput.py {' '.join(sys.argv[1:])}`",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {rows[0]['threads']} torch threads in every "
        f"process; {args.rounds} alternating rounds, {args.seconds:g} s timed (at least {args.min_steps} steps) after "
        f"{args.warmup} warm-up steps, "
        "each measurement its own process",
        f"- load average (1/5/15 min): {'; '.join(loads)}",
        "- the same " + str(NUM_BATCHES) + " batches for both trainers; per row, real demos of 4 slots and the share of "
        "their tokens that are not PAD: " + "; ".join(
            f"{r['shape']} {r['real_demos']:.2f}, {100 * r['real_tokens']:.0f}%"
            for r in {r["shape"]: r for r in rows}.values()),
        "- shapes: H_cycles 3, L_cycles 4, L_layers 2, 4 heads, expansion 4, standard encoder (2 layers, "
        "2 post-norm set layers), 16 context tokens; "
        + "; ".join(f"{k}: hidden {v['hidden_size']}, grid {v['grid_size']}, batch {v['batch_size']}" for k, v in SHAPES.items()),
        "",
        "```",
        machine(),
        "```",
        "",
    ]
    return "\n".join(head + lines) + "\n"


if __name__ == "__main__":
    main()
