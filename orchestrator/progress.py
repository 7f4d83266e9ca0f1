"""A sweep's progress as a person follows it: a live table on a terminal, plain lines anywhere else.

On a terminal the table (one row per trial: state, step, latest numbers) redraws in place. Written
to a file, a pipe, CI or nohup, a redrawn table shows nothing until the end, so there each trial
event is one timestamped line instead (started; every `every` steps with the primary metric;
finished, diverged, failed, stopped or retrying), and a summary line every `summary_every` seconds
says the sweep is alive even while no trial reports.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from etrm.status import ENDED, TrialStatus

_STYLE = {TrialStatus.PENDING: "dim", TrialStatus.RUNNING: "cyan", TrialStatus.FINISHED: "green",
          TrialStatus.DIVERGED: "yellow", TrialStatus.FAILED: "red", TrialStatus.RETRYING: "magenta",
          TrialStatus.STOPPED: "yellow", TrialStatus.INTERRUPTED: "magenta"}
_LINES_PER_TRIAL = 5  # step lines a trial prints in line mode, unless `every` says otherwise


@dataclass
class _Row:
    label: str
    total_steps: int
    state: TrialStatus = TrialStatus.PENDING
    step: int = 0
    loss: float | None = None
    score: float | None = None
    attempts: int = 1
    started: float | None = None


@dataclass
class SweepProgress:
    console: Console
    score_metric: str
    every: int | None = None      # line mode: a step line every N steps (None: total steps / 5)
    summary_every: float = 60.0   # line mode: a summary line every this many seconds
    rows: dict[str, _Row] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _live: Live | None = None
    _ticker: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, trial_id: str, label: str, total_steps: int) -> None:
        self.rows[trial_id] = _Row(label, total_steps)

    def update(self, trial_id: str, *, state: TrialStatus | None = None, step: int | None = None,
               metrics: dict[str, float] | None = None) -> None:
        with self._lock:
            row = self.rows[trial_id]
            before_state, before_step = row.state, row.step
            if state == TrialStatus.RETRYING:
                row.attempts += 1
            row.state = TrialStatus(state) if state else row.state
            row.step = step if step is not None else row.step
            metrics = metrics or {}
            row.loss = metrics.get("train/lm_loss", row.loss)
            row.score = metrics.get(self.score_metric, row.score)
            if self._live is not None:
                self._live.update(self.render())
            elif self._ticker is not None:
                self._log_event(trial_id, row, before_state, before_step)

    # -- terminal: the live table ----------------------------------------------------------------

    def render(self) -> Table:
        table = Table(title=f"{self._done()}/{len(self.rows)} trials done · {self._elapsed()}",
                      title_justify="left")
        for col in ("trial", "state", "step", "train/lm_loss", self.score_metric):
            table.add_column(col, justify="left" if col in ("trial", "state") else "right")
        for trial_id, r in self.rows.items():
            state = r.state + (f" (attempt {r.attempts})" if r.attempts > 1 else "")
            table.add_row(f"{r.label} [dim]{trial_id[:8]}[/]", f"[{_STYLE.get(r.state, '')}]{state}[/]",
                          f"{r.step}/{r.total_steps}", _fmt(r.loss), _fmt(r.score))
        return table

    # -- anything else: one line per event -------------------------------------------------------

    def _log_event(self, trial_id: str, row: _Row, before_state: TrialStatus, before_step: int) -> None:
        name = f"{row.label} {trial_id[:8]}"
        attempt = f" (attempt {row.attempts})" if row.attempts > 1 else ""
        numbers = f"{row.step}/{row.total_steps} steps  train/lm_loss {_fmt(row.loss)}  {self.score_metric} {_fmt(row.score)}"
        running = TrialStatus.RUNNING
        if row.state == running and before_state != running:
            row.started = time.monotonic()
            self._line("started", f"{name}{attempt}")
        if row.state in ENDED and before_state not in ENDED:
            took = f"  {time.monotonic() - row.started:.0f} s" if row.started is not None else ""
            self._line(row.state, f"{name}  {numbers}{took}")
        elif row.state == TrialStatus.RETRYING and before_state != TrialStatus.RETRYING:
            self._line("retrying", f"{name}{attempt} from its last checkpoint")
        elif (row.state == running and row.step < row.total_steps  # the last step: its end line follows
              and row.step // self._every(row) > before_step // self._every(row)):
            self._line("step", f"{name}  {numbers}")

    def _every(self, row: _Row) -> int:
        return self.every or max(1, row.total_steps // _LINES_PER_TRIAL)

    def summary(self) -> str:
        counts = Counter(r.state for r in self.rows.values())
        ended = ", ".join(f"{counts[s]} {s}" for s in TrialStatus if s in ENDED and counts[s])
        running = counts[TrialStatus.RUNNING] + counts[TrialStatus.RETRYING]
        return (f"{self._done()}/{len(self.rows)} trials done{f' ({ended})' if ended else ''} · "
                f"{running} running · {counts[TrialStatus.PENDING]} pending · {self._elapsed()}")

    def _line(self, event: str, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {event:<9} {text}", markup=False, highlight=False,
                           soft_wrap=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.summary_every):
            with self._lock:
                self._line("sweep", self.summary())

    # -- both ------------------------------------------------------------------------------------

    def __enter__(self) -> "SweepProgress":
        if self.console.is_terminal:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4,
                              transient=False, redirect_stderr=False)
            self._live.__enter__()
        else:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="sweep-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None
        elif self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
            self._line("sweep", self.summary())

    def _done(self) -> int:
        return sum(r.state in ENDED for r in self.rows.values())

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f} s"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
