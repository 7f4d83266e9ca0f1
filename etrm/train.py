"""Train one ETRM trial: TrialConfig in, metrics and checkpoints out.

    python -m etrm.train CONFIG.yaml [--set train.lr=3e-4 ...] [--json OUT.json] [--checkpoint-dir DIR]

The trainer knows nothing of Ray or MLflow: it reports through a two-method `Reporter`.
Values leave the device (.item()) only on "sync steps" (every log_every / eval_every /
checkpoint_every step and the last step); in between, metrics stay on the device. The one
other host sync is the encoder's demo gather, once per step (encoders.encode_valid_demos).
A NaN/Inf loss is therefore DETECTED at the next sync step but REPORTED with the exact step
where it first happened (a device-side tracker records it); the trial then ends with status
"diverged", without writing a checkpoint of the diverged weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from etrm import memory
from etrm.checkpoint import CHECKPOINT_NAME, CheckpointMismatch, load_checkpoint, load_decoder_weights, resumable, save_checkpoint
from etrm.config import COMPILE_AUTO_MIN_STEPS, ConfigError, TrainConfig, TrialConfig, load_config
from etrm.data import EvalSet, TrainSampler, load_puzzles
from etrm.diagnostics import GradSpikes, HaltedMeans, encoder_diagnostics, grad_norm
from etrm.evaluate import evaluate
from etrm.grids import PAD
from etrm.losses import q_halt_loss, softmax_cross_entropy, stablemax_cross_entropy
from etrm.metrics import METRICS
from etrm.model import ETRM, Batch, Carry, StepOutput
from etrm.optim import build_optimizer, lr_at, set_lr
from etrm.status import TrialStatus

LM_LOSSES = {"stablemax": stablemax_cross_entropy, "softmax": softmax_cross_entropy}
CRASH_MARKER = "crash-fault-fired"


class TrialCrashed(RuntimeError):
    """The trial failed for a reason a retry from the last checkpoint may fix (Ray retries it)."""


class TrialInvalid(ValueError):
    """The trial cannot run as configured (bad config or data): every retry would fail the same way."""


class Reporter(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def checkpoint_saved(self, step: int, path: Path) -> None: ...
    def warn(self, message: str) -> None: ...


class SilentReporter:
    """The reporter of a trial nobody watches (tests, notebooks): it drops everything."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def checkpoint_saved(self, step: int, path: Path) -> None:
        return None

    def warn(self, message: str) -> None:
        return None


@dataclass
class TrialResult:
    status: TrialStatus  # FINISHED or DIVERGED: a crash raises TrialCrashed instead, so Ray can retry it
    step: int  # last completed optimiser step (the diverged step for a divergence)
    metrics: dict[str, float]  # final metrics, including the last evaluation
    message: str = ""


# ---------------------------------------------------------------------------------------------
# device, precision, seeding


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def bf16_is_native(device: torch.device) -> bool:
    """CUDA with bf16 units, or a CPU with AVX512-BF16 / AMX (elsewhere bf16 is emulated, i.e. slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16_is_native(device) else torch.float32
    return getattr(torch, name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ---------------------------------------------------------------------------------------------
# the pieces of a trial, and one training step


@dataclass
class Setup:
    """Everything a trial builds from its config before the first step."""

    device: torch.device
    dtype: torch.dtype
    model: ETRM
    optimizer: torch.optim.Optimizer
    ema: ETRM | None
    sampler: TrainSampler
    eval_set: EvalSet
    compiled: bool  # train.compile, resolved

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def next_batch(self) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in self.sampler.next_batch().items()}


def setup(cfg: TrialConfig) -> Setup:
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    gpu = (torch.cuda.get_device_properties(device).total_memory, "the GPU's memory") if device.type == "cuda" else None
    if (why := memory.problem(cfg, on_gpu=gpu is not None, gpu_limit=gpu)) is not None:  # before building anything
        raise ConfigError(why)
    seed_everything(cfg.seed)
    train_puzzles, eval_puzzles = load_puzzles(cfg.data, cfg.seed)
    sampler = TrainSampler(train_puzzles, cfg.data, tc.batch_size, cfg.seed)
    eval_set = EvalSet(eval_puzzles, cfg.data, cfg.seed, tc.batch_size)
    model = ETRM(cfg.model, cfg.data.grid_size, cfg.data.max_demos)
    if cfg.model.init_jitter is not None:
        model.jitter_(cfg.seed, cfg.model.init_jitter)
    model = model.to(device)
    if cfg.decoder.checkpoint:
        load_decoder_weights(cfg.decoder.checkpoint, model)
    if cfg.decoder.freeze:
        model.freeze_decoder()
    optimizer = build_optimizer(model, tc)  # after freezing: frozen parameters are left out
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay else None
    dtype = pick_dtype(tc.dtype, device)
    compiled = should_compile(tc, device, dtype)
    if compiled:
        model.compile_blocks()  # after the EMA copy: evaluation stays eager
    return Setup(device, dtype, model, optimizer, ema, sampler, eval_set, compiled)


def should_compile(tc: TrainConfig, device: torch.device, dtype: torch.dtype) -> bool:
    """train.compile, with auto resolved where it was measured to pay (bench/RESULTS.md): float32 on a
    CPU, long enough trials. In emulated bf16 the matmuls take the time and compiling gained nothing;
    on CUDA it is unmeasured."""
    if tc.compile != "auto":
        return tc.compile
    return device.type == "cpu" and dtype == torch.float32 and tc.steps >= COMPILE_AUTO_MIN_STEPS


def forward_and_loss(
    s: Setup, cfg: TrialConfig, carry: Carry, batch: Batch
) -> tuple[Carry, StepOutput, torch.Tensor, dict[str, torch.Tensor]]:
    """One ACT step: (new carry, outputs, loss averaged over ALL rows, per-row values for the metrics)."""
    with s.autocast():
        carry, out = s.model(carry, batch)
    labels = carry.data["labels"]
    valid = labels != PAD
    correct = (out.logits.argmax(-1) == labels) & valid
    seq_correct = correct.sum(-1) == valid.sum(-1)
    lm = LM_LOSSES[cfg.train.loss](out.logits, labels)
    q_halt = q_halt_loss(out.q_halt, seq_correct)
    loss = (lm + cfg.train.q_halt_weight * q_halt + cfg.model.encoder.kl_weight * out.kl).mean()
    per_row = {
        "train/lm_loss": lm,
        "train/q_halt_loss": q_halt,
        "train/kl_loss": out.kl,
        "train/accuracy": correct.sum(-1) / valid.sum(-1).clamp_min(1),
        "train/exact_accuracy": seq_correct,
        "train/q_halt_accuracy": (out.q_halt > 0) == seq_correct,
        "train/steps": carry.steps,
    }
    return carry, out, loss, per_row


def run_eval(s: Setup, cfg: TrialConfig) -> dict[str, float]:
    """Evaluate the EMA weights when there are any (that is what EMA is for), else the live ones."""
    model = s.ema if s.ema is not None else s.model
    dtype = s.dtype if s.dtype != torch.float32 else None
    with torch.compiler.set_stance("force_eager"):  # compiling for a few eval batches would not pay
        return evaluate(model, s.eval_set, s.device, dtype, halt_max_steps=cfg.model.halt_max_steps)


def _crash_fault(checkpoint_dir: Path | None, step: int) -> None:
    """faults.raise_at_step: crash once. A marker in the checkpoint dir records that it fired, so the
    orchestrator's retry (same config, resumed from the last checkpoint) gets past it, as it would
    past a real transient crash. Without a checkpoint dir it fires every time."""
    if checkpoint_dir is not None:
        marker = checkpoint_dir / CRASH_MARKER
        if marker.exists():
            return
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()
    raise TrialCrashed(f"faults.raise_at_step: simulated crash at step {step}")


# ---------------------------------------------------------------------------------------------
# the training loop


def train(cfg: TrialConfig, reporter: Reporter | None = None, checkpoint_dir: Path | None = None) -> TrialResult:
    """Run (or resume, if checkpoint_dir holds a checkpoint) one trial to cfg.train.steps."""
    reporter = reporter or SilentReporter()
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    tc = cfg.train
    try:
        s = setup(cfg)
    except (ValueError, FileNotFoundError) as err:  # the config or its data: the same on every attempt
        raise TrialInvalid(f"{type(err).__name__}: {err}") from err
    model, optimizer = s.model, s.optimizer
    trainable = [p for p in model.parameters() if p.requires_grad]
    ema_pairs = (list(s.ema.parameters()), list(model.parameters())) if s.ema is not None else None

    step, carry = 0, None
    last: dict[str, float] = {}
    grad_spikes = GradSpikes(tc.grad_clip, s.device)
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint_dir is not None and checkpoint_dir.exists():
        found, state, notes = resumable(checkpoint_dir)
        for note in notes:
            reporter.warn(note)
        if state is not None and found is not None:  # resumable() gives both or neither
            step, carry, last = load_checkpoint(state, found, cfg=cfg, model=model, optimizer=optimizer,
                                                ema=s.ema, sampler=s.sampler, grad_spikes=grad_spikes,
                                                device=s.device)

    halted_means = HaltedMeans(s.device)
    bad_step = torch.zeros((), dtype=torch.long, device=s.device)  # first step with a non-finite loss; 0 = none
    bad_loss = torch.zeros((), device=s.device)
    model.train()
    timer, timed_steps = time.perf_counter(), 0
    while step < tc.steps:
        step += 1
        if cfg.faults.raise_at_step == step:
            _crash_fault(checkpoint_dir, step)
        batch = s.next_batch()
        if carry is None:
            carry = model.initial_carry(batch)
        lr = lr_at(step - 1, tc)
        set_lr(optimizer, lr)

        carry, out, loss, per_row = forward_and_loss(s, cfg, carry, batch)
        if cfg.faults.nan_loss_at_step == step:
            loss = loss * float("nan")
        newly_bad = (bad_step == 0) & ~torch.isfinite(loss)
        bad_step = torch.where(newly_bad, step, bad_step)
        bad_loss = torch.where(newly_bad, loss.detach().float(), bad_loss)
        loss.backward()

        sync = step == tc.steps or any(step % n == 0 for n in (tc.log_every, tc.eval_every, tc.checkpoint_every))
        if sync:  # per-part norms only when they are logged; all norms are taken BEFORE clipping
            part_norms = {"grad/encoder_norm": grad_norm(list(model.encoder.parameters())),
                          "grad/decoder_norm": grad_norm(list(model.decoder.parameters()))}
        total_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
        grad_spikes.add(total_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema_pairs is not None and tc.ema_decay is not None:
            torch._foreach_lerp_(ema_pairs[0], ema_pairs[1], 1 - tc.ema_decay)
        halted_means.add(per_row, carry.halted)
        timed_steps += 1
        if not sync:
            continue

        # ---- sync step: the only place values leave the device ----
        elapsed = time.perf_counter() - timer
        window = halted_means.pop()
        metrics = {k: v for k, v in window.items() if k != "_count"} if window["_count"] > 0 else {}
        metrics |= encoder_diagnostics(out.context) | grad_spikes.pop()
        metrics |= part_norms | {"grad/total_norm": total_norm, "encoder_output_scale": out.output_scale.float().mean()}
        metrics = {k: float(v) for k, v in metrics.items()} | {"train/lr": lr}
        metrics["perf/samples_per_s"] = timed_steps * tc.batch_size / elapsed

        if int(bad_step):
            at = int(bad_step)
            metrics["diverged_at_step"] = at
            reporter.log(step, metrics)
            message = f"loss became {float(bad_loss)} at step {at}"
            return TrialResult(TrialStatus.DIVERGED, at, last | metrics, message)

        if step % tc.eval_every == 0 or step == tc.steps:
            metrics |= run_eval(s, cfg)
        reporter.log(step, metrics)
        last |= metrics
        if ckpt_path is not None and (step % tc.checkpoint_every == 0 or step == tc.steps):
            save_checkpoint(ckpt_path, cfg=cfg, step=step, model=model, optimizer=optimizer, ema=s.ema,
                            sampler=s.sampler, grad_spikes=grad_spikes, carry=carry, metrics=last)
            reporter.checkpoint_saved(step, ckpt_path)
        timer, timed_steps = time.perf_counter(), 0

    return TrialResult(TrialStatus.FINISHED, step, last)


# ---------------------------------------------------------------------------------------------
# command line (shared with `etrm-sweep trial`)


class ProgressReporter:
    """A rich progress bar fed by the trainer's log calls."""

    def __init__(self, progress, task):
        self.progress, self.task, self.shown = progress, task, {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, label in (("train/lm_loss", "loss"), ("eval/exact_accuracy", "eval exact")):
            if key in metrics:
                self.shown[label] = f"{label} {metrics[key]:.4g}"
        self.progress.update(self.task, completed=step, info="  ".join(self.shown.values()))

    def checkpoint_saved(self, step: int, path: Path) -> None:
        """A checkpoint changes nothing on the progress bar."""

    def warn(self, message: str) -> None:
        self.progress.console.print(f"warning: {message}")


def is_out_of_memory(err: BaseException) -> bool:
    """An allocator failure (CPU or GPU), as opposed to a bug that happens to raise RuntimeError."""
    text = str(err)
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text \
        or "not enough memory" in text or "out of memory" in text


def run_trial_cli(config_path: str | Path, overrides: list[str], json_out: str | Path | None,
                  checkpoint_dir: str | Path | None) -> int:
    """Exit code: 0 finished, 1 crashed, 2 bad config or checkpoint, 3 diverged."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    err = Console(stderr=True)
    try:
        cfg = load_config(config_path, overrides)
        memory.preflight(cfg)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"config error: {line}", file=sys.stderr)
        return 2

    columns = (TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:  # gone when done: errors stay one line
            task = progress.add_task("train", total=cfg.train.steps, info="")
            result = train(cfg, ProgressReporter(progress, task), Path(checkpoint_dir) if checkpoint_dir else None)
    except (CheckpointMismatch, ConfigError, TrialInvalid) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        print(f"error: out of memory ({' '.join(str(e).split())[:160]}); the estimate for this config was "
              f"{memory.estimate(cfg).describe()}: lower train.batch_size or the model size", file=sys.stderr)
        return 2
    except TrialCrashed as e:
        print(f"crashed: {e}", file=sys.stderr)
        return 1

    table = Table(title=f"{result.status} at step {result.step}" + (f": {result.message}" if result.message else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in METRICS:
        if name in result.metrics:
            table.add_row(name, f"{result.metrics[name]:.6g}")
    Console().print(table)
    if json_out:
        Path(json_out).write_text(json.dumps(asdict(result) | {"config_hash": cfg.config_hash()}, indent=2))
    return 0 if result.status == TrialStatus.FINISHED else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etrm.train", description="Train one ETRM trial.")
    parser.add_argument("config", help="trial config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--json", dest="json_out", help="write the TrialResult as JSON here")
    parser.add_argument("--checkpoint-dir", help="checkpoint here; resume from it if it holds one")
    args = parser.parse_args(argv)
    return run_trial_cli(args.config, args.overrides, args.json_out, args.checkpoint_dir)


if __name__ == "__main__":
    sys.exit(main())
