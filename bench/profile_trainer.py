"""Where a training step's time goes: torch profiler on the research trainer and ours, by phase and op kind.

    .venv/bin/python bench/profile_trainer.py [--steps 3] [--threads 1] [--out bench/profile.md]

Uses the two trainers of bench/trainer_throughput.py (same shapes, batches, dtypes). Each profile
runs in its own process after warm-up (so ours is profiled compiled when train.compile is on).
Phases are profiler ranges around the encoder's and decoder's forward, backward, clip and the
optimiser step (the rest of the step is the loss, carry and halting); op kinds sum the ops' self CPU time by name.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainer_throughput as tt  # noqa: E402

PHASES = ("encoder forward", "decoder forward", "backward", "clip", "optimizer")
# op kind -> substrings of profiler op names (first match wins; the rest is "other")
KINDS = {
    "compiled kernels (fused by inductor)": ("cpp_fused", "graph_", "CompiledFunction", "Torch-Compiled"),
    "attention (SDPA)": ("scaled_dot_product", "flash_attention", "_efficient_attention", "attention_math"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "aten::linear", "mkl_"),
    "dtype casts and copies": ("aten::_to_copy", "aten::copy_", "aten::to", "aten::clone", "aten::contiguous"),
    "host syncs (nonzero, item)": ("aten::nonzero", "aten::item", "_local_scalar_dense", "aten::unique"),
    "norms / reductions": ("aten::mean", "aten::rsqrt", "aten::pow", "aten::sum", "aten::norm", "linalg_vector_norm",
                           "aten::square", "aten::std", "aten::var"),
    "optimiser foreach / elementwise": ("_foreach", "aten::atan2", "aten::lerp", "aten::addcmul"),
    "log / division (stable-max)": ("aten::log", "aten::reciprocal", "aten::div", "aten::gather"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::silu", "aten::where", "aten::cat", "aten::neg",
                    "aten::clamp", "aten::masked_fill", "aten::embedding", "aten::index", "aten::fill_", "aten::zero_",
                    "aten::empty", "aten::ones", "aten::zeros", "aten::rsub", "aten::lt", "aten::ge", "aten::gt",
                    "aten::eq", "aten::ne", "aten::bitwise", "aten::logical", "aten::exp", "aten::argmax",
                    "aten::max", "aten::sigmoid", "aten::binary_cross", "aten::threshold", "aten::rand",
                    "aten::uniform", "aten::random", "aten::expand", "aten::view", "aten::reshape", "aten::split",
                    "aten::chunk", "aten::slice", "aten::select", "aten::transpose", "aten::permute", "aten::unbind",
                    "aten::unsqueeze", "aten::squeeze", "aten::flatten", "aten::unflatten", "aten::detach",
                    "aten::t", "aten::as_strided", "aten::stack", "aten::narrow", "aten::resize", "aten::new_",
                    "aten::empty_like", "aten::zeros_like", "aten::ones_like", "aten::full", "aten::scalar_tensor",
                    "aten::sqrt", "aten::abs", "aten::_softmax", "aten::softmax", "aten::sort"),
}


def kind_of(name: str) -> str:
    for kind, keys in KINDS.items():
        if any(k in name for k in keys):
            return kind
    return "other"


def wrap(module: torch.nn.Module, label: str) -> None:
    forward = module.forward

    def labelled(*args, **kwargs):
        with record_function(label):
            return forward(*args, **kwargs)

    module.forward = labelled


def profile_one(impl: str, shape: str, dtype: str, steps: int, warmup: int, compile: bool | None) -> dict:
    cfg = tt.config(shape, dtype, compile)
    data = tt.batches(cfg)
    torch.manual_seed(0)
    trainer = tt.research_trainer(cfg, dtype) if impl == "research" else tt.our_trainer(cfg)
    wrap(trainer.encoder, "encoder forward")
    wrap(trainer.decoder, "decoder forward")
    for i in range(warmup):
        trainer.step(data[i % tt.NUM_BATCHES])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            trainer.step(data[(warmup + i) % tt.NUM_BATCHES])
    events = prof.key_averages()
    phases = {p: 0.0 for p in PHASES}
    kinds: dict[str, float] = {}
    total = 0.0
    for e in events:
        if e.key in phases:
            phases[e.key] += e.cpu_time_total / 1e3 / steps
        elif not e.key.startswith(("ProfilerStep", "##")) and e.key not in PHASES:
            kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + e.self_cpu_time_total / 1e3 / steps
            total += e.self_cpu_time_total / 1e3 / steps
    top = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps) for e in events if e.key not in PHASES),
                 key=lambda x: -x[1])[:12]
    return {"impl": impl, "shape": shape, "dtype": dtype, "ms_per_step": total, "phases": phases,
            "kinds": kinds, "top": top, "compile": trainer.compiled}


def render(results: list[dict], threads: int, steps: int) -> str:
    kinds = list(KINDS) + ["other"]
    lines = [
        f"Self CPU time per step in ms (torch profiler, {threads} thread(s), {steps} profiled steps after warm-up; "
        "the profiler adds its own overhead per op, so totals are above the benchmark's).",
        "",
        "| shape | dtype | trainer | total | " + " | ".join(PHASES) + " |",
        "|---|---|---|---:|" + "---:|" * len(PHASES),
    ]
    for r in results:
        name = r["impl"] + (" (compiled)" if r["compile"] else "")
        lines.append(f"| {r['shape']} | {r['dtype']} | {name} | {r['ms_per_step']:.0f} | "
                     + " | ".join(f"{r['phases'][p]:.0f}" for p in PHASES) + " |")
    lines += ["", "By op kind (self CPU ms per step; the phases above are inclusive and overlap these):", "",
              "| shape | dtype | trainer | " + " | ".join(kinds) + " |", "|---|---|---|" + "---:|" * len(kinds)]
    for r in results:
        name = r["impl"] + (" (compiled)" if r["compile"] else "")
        lines.append(f"| {r['shape']} | {r['dtype']} | {name} | "
                     + " | ".join(f"{r['kinds'].get(k, 0):.0f}" for k in kinds) + " |")
    lines += ["", "Top ops by self CPU time (ms per step):", ""]
    for r in results:
        name = r["impl"] + (" (compiled)" if r["compile"] else "")
        lines.append(f"- {r['shape']} {r['dtype']} {name}: " + ", ".join(f"`{k}` {v:.0f}" for k, v in r["top"][:8]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown breakdown here")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    parser.add_argument("--shapes", nargs="+", default=list(tt.SHAPES), choices=list(tt.SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(tt.DTYPES), choices=list(tt.DTYPES))
    parser.add_argument("--compile", choices=("default", "on", "off"), default="default",
                        help="our train.compile: the config default, or forced")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "SHAPE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        compile = {"default": None, "on": True, "off": False}[args.compile]
        print(json.dumps(profile_one(*args.one, args.steps, args.warmup, compile)))
        return
    results = []
    for shape in args.shapes:
        for dtype in args.dtypes:
            for impl in tt.IMPLS:
                cmd = [sys.executable, __file__, "--one", impl, shape, dtype, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--threads", str(args.threads), "--compile", args.compile]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"error: {impl} {shape} {dtype}:\n{out.stderr[-3000:]}")
                results.append(json.loads(out.stdout.splitlines()[-1]))
                print(f"{shape} {dtype} {impl}: {results[-1]['ms_per_step']:.0f} ms/step", flush=True)
    report = render(results, args.threads, args.steps)
    if args.out:
        Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
