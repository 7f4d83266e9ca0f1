"""The progress view: plain event lines when stdout is not a terminal, the live table when it is."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from orchestrator.progress import SweepProgress

SCORE = "eval/exact_accuracy"


def _run_two_trials(console: Console, summary_every: float = 60.0) -> SweepProgress:
    """Trial a (100 steps, log every 10, eval at 50 and 100) finishes; trial b diverges at step 30."""
    progress = SweepProgress(console, SCORE, summary_every=summary_every)
    progress.add("a" * 16, "final_norm=true s0", 100)
    progress.add("b" * 16, "final_norm=false s0", 100)
    with progress:
        progress.update("a" * 16, state="running")
        progress.update("b" * 16, state="running")
        for step in range(10, 101, 10):
            metrics = {"train/lm_loss": 2.0 - step / 100}
            if step % 50 == 0:
                metrics[SCORE] = step / 200
            progress.update("a" * 16, step=step, metrics=metrics)  # the trainer's last log, then its end event
            if step == 100:
                progress.update("a" * 16, step=step, metrics=metrics, state="finished")
            if step <= 30:
                progress.update("b" * 16, step=step, metrics={"train/lm_loss": float("nan") if step == 30 else 1.5},
                                state="diverged" if step == 30 else None)
        time.sleep(3 * summary_every if summary_every < 1 else 0)
    return progress


def test_without_a_terminal_every_trial_event_is_one_line():
    out = io.StringIO()
    console = Console(file=out, width=60)  # not a TTY (and narrow: lines must not wrap)
    assert not console.is_terminal
    _run_two_trials(console, summary_every=0.1)
    lines = out.getvalue().splitlines()
    events = [line.split()[1] for line in lines]
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), lines
    assert not any("┏" in line or "━" in line for line in lines)  # no table drawn into the log

    a = [line for line in lines if "final_norm=true s0 aaaaaaaa" in line]
    assert [line.split()[1] for line in a] == ["started", "step", "step", "step", "step", "finished"], a
    # every 100/5 = 20 steps, with the latest primary metric once an eval step has reported it
    assert "20/100 steps  train/lm_loss 1.8  eval/exact_accuracy -" in a[1]
    assert "60/100 steps  train/lm_loss 1.4  eval/exact_accuracy 0.25" in a[3]
    assert "finished  final_norm=true s0 aaaaaaaa  100/100 steps  train/lm_loss 1  eval/exact_accuracy 0.5" in a[5]
    assert re.search(r"\d+ s$", a[5])  # how long the trial took

    b = [line for line in lines if "final_norm=false s0 bbbbbbbb" in line]
    assert [line.split()[1] for line in b] == ["started", "step", "diverged"], b
    assert "30/100 steps  train/lm_loss nan" in b[2]

    # a summary line every summary_every seconds while it runs, and a last one at the end
    summaries = [line for line in lines if line.split()[1] == "sweep"]
    assert len(summaries) >= 2 and events[-1] == "sweep"
    assert "2/2 trials done (1 finished, 1 diverged) · 0 running · 0 pending" in summaries[-1]


def test_summary_line_counts_states_while_trials_run():
    out = io.StringIO()
    progress = SweepProgress(Console(file=out), SCORE, summary_every=0.05)
    for i in range(4):
        progress.add(f"{i}" * 16, f"cell s{i}", 10)
    with progress:
        progress.update("0" * 16, state="running")
        progress.update("1" * 16, state="running")
        progress.update("1" * 16, state="retrying")
        progress.update("2" * 16, state="running")
        progress.update("2" * 16, state="failed")
        time.sleep(0.3)
        mid = [line for line in out.getvalue().splitlines() if line.split()[1] == "sweep"]
    assert mid and "1/4 trials done (1 failed) · 2 running · 1 pending" in mid[-1], mid
    retry = [line for line in out.getvalue().splitlines() if line.split()[1] == "retrying"]
    assert retry == [retry[0]] and "cell s1 11111111 (attempt 2) from its last checkpoint" in retry[0]


def test_on_a_terminal_the_live_table_and_no_event_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    progress = _run_two_trials(console)
    text = out.getvalue()
    assert "2/2 trials done" in text and "┏" in text
    assert not re.search(r"^\d\d:\d\d:\d\d (started|step|finished)", text, re.M)
    assert progress.rows["a" * 16].state == "finished" and progress.rows["b" * 16].state == "diverged"
