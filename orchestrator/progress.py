"""Live terminal view of a sweep: one row per trial with its state, step and latest numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from etrm.status import ENDED, TrialStatus

_STYLE = {TrialStatus.PENDING: "dim", TrialStatus.RUNNING: "cyan", TrialStatus.FINISHED: "green",
          TrialStatus.DIVERGED: "yellow", TrialStatus.FAILED: "red", TrialStatus.RETRYING: "magenta",
          TrialStatus.STOPPED: "yellow"}


@dataclass
class _Row:
    label: str
    total_steps: int
    state: TrialStatus = TrialStatus.PENDING
    step: int = 0
    loss: float | None = None
    score: float | None = None
    attempts: int = 1


@dataclass
class SweepProgress:
    console: Console
    score_metric: str
    rows: dict[str, _Row] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _live: Live | None = None

    def add(self, trial_id: str, label: str, total_steps: int) -> None:
        self.rows[trial_id] = _Row(label, total_steps)

    def update(self, trial_id: str, *, state: TrialStatus | None = None, step: int | None = None,
               metrics: dict[str, float] | None = None) -> None:
        row = self.rows[trial_id]
        if state == TrialStatus.RETRYING:
            row.attempts += 1
        row.state = state or row.state
        row.step = step if step is not None else row.step
        metrics = metrics or {}
        row.loss = metrics.get("train/lm_loss", row.loss)
        row.score = metrics.get(self.score_metric, row.score)
        if self._live is not None:
            self._live.update(self.render())

    def render(self) -> Table:
        done = sum(r.state in ENDED for r in self.rows.values())
        table = Table(title=f"{done}/{len(self.rows)} trials done · {time.monotonic() - self.started:.0f}s",
                      title_justify="left")
        for col in ("trial", "state", "step", "train/lm_loss", self.score_metric):
            table.add_column(col, justify="left" if col in ("trial", "state") else "right")
        for trial_id, r in self.rows.items():
            state = r.state + (f" (attempt {r.attempts})" if r.attempts > 1 else "")
            table.add_row(f"{r.label} [dim]{trial_id[:8]}[/]", f"[{_STYLE.get(r.state, '')}]{state}[/]",
                          f"{r.step}/{r.total_steps}", _fmt(r.loss), _fmt(r.score))
        return table

    def __enter__(self) -> "SweepProgress":
        self._live = Live(self.render(), console=self.console, refresh_per_second=4,
                          transient=False, redirect_stderr=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        assert self._live is not None
        self._live.update(self.render())
        self._live.__exit__(*exc)
        self._live = None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
