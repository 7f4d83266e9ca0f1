"""The trainer: config errors, exact resume, divergence and crash faults, logged metrics, learning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from etrm.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, CheckpointMismatch, read_checkpoint
from etrm.config import COMPILE_AUTO_MIN_STEPS, build_config
from etrm.metrics import METRICS
from etrm.train import TrialCrashed, should_compile, train

ROOT = Path(__file__).resolve().parents[1]

# A trial that takes a few seconds on 2 cores but still exercises every moving part:
# a variational encoder and halting exploration (torch RNG), augmentation (sampler RNG), EMA, eval, checkpoints.
TINY = {
    "data": {"grid_size": 6, "max_demos": 3, "num_train_puzzles": 24, "num_eval_puzzles": 4, "eval_variants": 2},
    "model": {
        "hidden_size": 32,
        "num_heads": 2,
        "H_cycles": 2,
        "L_cycles": 1,
        "L_layers": 1,
        "halt_max_steps": 3,
        "halt_exploration_prob": 0.5,
        "encoder": {"type": "hybrid_variational", "kl_weight": 0.01, "num_layers": 1, "set_layers": 1, "output_tokens": 4},
    },
    "train": {"steps": 12, "batch_size": 8, "warmup_steps": 3, "log_every": 3, "eval_every": 6,
              "checkpoint_every": 4, "ema_decay": 0.9},
}


def tiny(**overrides) -> "TrialConfig":  # noqa: F821
    return build_config(TINY, overrides)


class Recorder:
    def __init__(self):
        self.logs: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[int] = []
        self.warnings: list[str] = []

    def warn(self, message):
        self.warnings.append(message)

    def log(self, step, metrics):
        self.logs.append((step, dict(metrics)))

    def checkpoint_saved(self, step, path):
        assert Path(path).exists()
        self.checkpoints.append(step)


def run_trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etrm.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("compile, steps, device, dtype, expected", [
    ("auto", COMPILE_AUTO_MIN_STEPS, "cpu", torch.float32, True),  # where compiling was measured to pay
    ("auto", COMPILE_AUTO_MIN_STEPS - 1, "cpu", torch.float32, False),  # too short to earn the compile time back
    ("auto", 10_000, "cpu", torch.bfloat16, False),  # emulated bf16: no gain measured
    ("auto", 10_000, "cuda", torch.float32, False),  # unmeasured
    (True, 3, "cpu", torch.bfloat16, True),  # an explicit setting is obeyed
    (False, 10_000, "cpu", torch.float32, False),
])
def test_compile_auto_compiles_only_where_it_was_measured_to_pay(compile, steps, device, dtype, expected):
    tc = build_config({"train": {"compile": compile, "steps": steps}}).train
    assert should_compile(tc, torch.device(device), dtype) is expected


def test_unknown_config_keys_are_rejected_by_the_cli(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"lrr": 0.1}, "model": {"encoder": {"finalnorm": True}}}))
    proc = run_trainer(str(cfg), "--set", "data.gridsize=5")
    assert proc.returncode == 2, proc.stderr
    for key in ("train.lrr", "model.encoder.finalnorm", "data.gridsize"):
        assert key in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow  # a fresh interpreter runs the trainer
def test_cli_runs_a_trial_and_writes_json(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "result.json"
    proc = run_trainer(str(cfg), "--set", "train.steps=6", "--json", str(out), "--checkpoint-dir", str(tmp_path / "ck"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "finished" and result["step"] == 6
    assert "ARC/pass@2" in result["metrics"] and "ARC/pass@2" in proc.stdout
    assert (tmp_path / "ck" / CHECKPOINT_NAME).exists()


def _final_state(checkpoint_dir: Path) -> dict:
    return read_checkpoint(checkpoint_dir / CHECKPOINT_NAME)


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow  # three runs of the trainer
def test_crash_and_resume_equals_a_straight_run(tmp_path):
    """A crash at step 10 resumes from the step-8 checkpoint and ends bit-identical to a run without it."""
    straight = train(tiny(), checkpoint_dir=tmp_path / "straight")

    crashing = tiny(**{"faults.raise_at_step": 10})
    with pytest.raises(TrialCrashed, match="step 10"):
        train(crashing, checkpoint_dir=tmp_path / "crashed")
    assert _final_state(tmp_path / "crashed")["step"] == 8
    rec = Recorder()
    resumed = train(crashing, rec, checkpoint_dir=tmp_path / "crashed")  # the orchestrator's retry

    assert resumed.status == straight.status == "finished" and resumed.step == straight.step == 12
    assert [s for s, _ in rec.logs] == [9, 12]  # continued where it stopped, nothing redone
    drop_perf = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert drop_perf(resumed.metrics) == drop_perf(straight.metrics)
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "crashed")
    for part in ("model", "optimizer", "ema", "sampler", "carry", "rng"):
        _assert_same_tensors(a[part], b[part], part)

    with pytest.raises(CheckpointMismatch, match="config hash"):
        train(tiny(**{"faults.raise_at_step": 10, "train.lr": 3e-4}), checkpoint_dir=tmp_path / "crashed")


@pytest.mark.slow  # two runs of the trainer
def test_reporting_and_checkpoint_frequencies_do_not_change_what_a_trial_computes(tmp_path):
    """Why the trial id leaves them out (etrm.config.OBSERVABILITY_KEYS): other log, eval and checkpoint
    steps train to the same weights bit for bit, and evaluate them the same at the end."""
    a = train(tiny(), checkpoint_dir=tmp_path / "a")
    watched = tiny(**{"train.log_every": 1, "train.eval_every": 5, "train.checkpoint_every": 7})
    b = train(watched, checkpoint_dir=tmp_path / "b")
    assert watched.config_hash() == tiny().config_hash()
    _assert_same_tensors(_final_state(tmp_path / "a")["model"], _final_state(tmp_path / "b")["model"], "model")
    evals = [{k: v for k, v in r.metrics.items() if k.startswith(("eval/", "ARC/"))} for r in (a, b)]
    assert evals[0] and evals[0] == evals[1]


def test_a_corrupt_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path):
    """Truncated latest checkpoint: named, set aside, the step-4 one resumes; both bad: a fresh start.
    Either way the trial ends exactly as a straight run does."""
    straight = train(tiny(), checkpoint_dir=tmp_path / "straight")
    crashing, ck = tiny(**{"faults.raise_at_step": 10}), tmp_path / "crashed"
    with pytest.raises(TrialCrashed):
        train(crashing, checkpoint_dir=ck)
    assert read_checkpoint(ck / PREVIOUS_NAME)["step"] == 4
    latest = ck / CHECKPOINT_NAME
    latest.write_bytes(latest.read_bytes()[:-100])
    rec = Recorder()
    resumed = train(crashing, rec, checkpoint_dir=ck)
    assert len(rec.warnings) == 1 and rec.warnings[0].startswith(f"{latest}: checksum mismatch"), rec.warnings
    aside = rec.warnings[0].split("set aside as ")[1]
    assert (ck / aside).exists() and aside.startswith("checkpoint.pt.corrupt-")
    assert [s for s, _ in rec.logs][0] == 6  # from step 4: log_every 3 logs step 6 next
    drop_perf = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert drop_perf(resumed.metrics) == drop_perf(straight.metrics)

    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):  # both bad now: nothing to resume
        (ck / name).write_bytes(b"not a checkpoint")
    rec = Recorder()
    again = train(crashing, rec, checkpoint_dir=ck)
    assert [w.split(":")[0] for w in rec.warnings[:2]] == [str(ck / CHECKPOINT_NAME), str(ck / PREVIOUS_NAME)]
    assert rec.warnings[2] == "no good checkpoint left: the trial starts again from step 0"
    assert rec.logs[0][0] < 4 and drop_perf(again.metrics) == drop_perf(straight.metrics)


def test_crash_fault_raises_without_a_checkpoint_dir():
    with pytest.raises(TrialCrashed, match="step 2"):
        train(tiny(**{"faults.raise_at_step": 2}))


def test_nan_loss_ends_the_trial_as_diverged_at_that_step(tmp_path):
    rec = Recorder()
    result = train(tiny(**{"faults.nan_loss_at_step": 5}), rec, checkpoint_dir=tmp_path)
    assert result.status == "diverged"
    assert result.step == 5 and "step 5" in result.message and "nan" in result.message
    assert result.metrics["diverged_at_step"] == 5
    assert rec.logs[-1][1]["diverged_at_step"] == 5
    assert rec.logs[-1][0] == 6  # detected at the next sync step (log_every 3)
    assert rec.checkpoints == [4]  # nothing written after the divergence
    assert _final_state(tmp_path)["step"] == 4


@pytest.fixture(scope="module")
def clipped_run():
    rec = Recorder()
    result = train(tiny(**{"train.grad_clip": 1e-3, "train.steps": 6}), rec)
    return rec, result


def test_grad_norm_is_logged_before_clipping(clipped_run):
    rec, _ = clipped_run
    for _, m in rec.logs:
        assert m["grad/total_norm"] > 1e-2  # far above the clip threshold: measured before clipping
        parts = m["grad/encoder_norm"] ** 2 + m["grad/decoder_norm"] ** 2
        assert m["grad/total_norm"] ** 2 == pytest.approx(parts, rel=1e-4)


def test_reporter_receives_the_documented_metric_names(clipped_run):
    rec, result = clipped_run
    logged = set().union(*(m for _, m in rec.logs))
    expected = set(METRICS) - {"diverged_at_step"}
    assert expected <= logged, expected - logged
    assert logged <= set(METRICS), logged - set(METRICS)  # nothing undocumented
    assert all(0 <= rec.logs[-1][1][k] <= 1 for k in ("train/accuracy", "eval/exact_accuracy", "ARC/pass@2"))
    assert result.metrics["train/steps"] >= 1


@pytest.mark.slow
@pytest.mark.heavy  # 1500 steps: about 4 minutes on 2 cores
def test_learns_a_rule_family_on_held_out_instances():
    """One synthetic rule family, new instances at eval: the demo encoder has to carry the rule."""
    cfg = build_config(LEARN)
    result = train(cfg)
    assert result.status == "finished"
    assert result.metrics["eval/exact_accuracy"] >= 0.9, result.metrics


# gravity: each held-out puzzle has new grids, and which of the four directions applies must be read
# from its demos (the family has too few instances to hold some out: see etrm/synthetic.py). On 3x3
# grids a hybrid encoder learns it, evaluated on the EMA weights (0.995) -- on about half of all seeds:
# over seeds 0-19 (1 thread, bench/RESULTS.md "Compiled and eager training learn alike") 9 eager and 10
# compiled trials reached 0.9 by step 1500; the rest sat on a plateau near 0.15 train exact accuracy (which
# 3000 steps did not leave, seeds 0 and 15). Any change in rounding re-draws that: threads, compiled kernels,
# 1e-6 of weight noise. So this test pins one trajectory that learns: seed 0, eager, 2 threads (0.938). On a
# CPU with other kernels (another ISA, another torch) the same trajectory may not be drawn: a failure here
# is a reason to look, not proof of a bug. colour_map, a per-cell lookup learned in context, stays near 10%
# exact for thousands of steps at this size.
LEARN = {
    "data": {"families": ["gravity"], "grid_size": 4, "max_demos": 3, "num_train_puzzles": 1000,
             "num_eval_puzzles": 64, "eval_variants": 1},
    "model": {"hidden_size": 64, "num_heads": 4, "H_cycles": 1, "L_cycles": 1, "L_layers": 2, "halt_max_steps": 1,
              "encoder": {"type": "hybrid_standard", "output_tokens": 8}},
    "train": {"steps": 1500, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "dtype": "float32",
              "ema_decay": 0.995, "log_every": 100, "eval_every": 1500, "threads": 2, "compile": False},
}
