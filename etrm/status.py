"""The states of a trial: one vocabulary for the trainer, the sweep driver, MLflow, the live view and
the comparison. Plain data (no torch), so the driver and the spec checker read it for free.

The trainer ends a trial FINISHED or DIVERGED (a crash raises instead, so Ray can retry it); the
driver adds the rest. The value is what MLflow's `etrm.status` tag holds.
"""

from __future__ import annotations

from enum import StrEnum


class TrialStatus(StrEnum):
    PENDING = "pending"    # planned, no MLflow run yet (never a tag value)
    RUNNING = "running"    # an MLflow run exists and has not ended (or its driver died)
    RETRYING = "retrying"  # the live view only: Ray restarts a crashed attempt (the tag stays running)
    FINISHED = "finished"
    DIVERGED = "diverged"  # the loss became NaN/Inf: a result, kept in the statistics
    FAILED = "failed"      # crashed more than max_failures times
    STOPPED = "stopped"    # cut early by the ASHA scheduler, on purpose
    INTERRUPTED = "interrupted"  # its launch was stopped (Ctrl-C) while it ran: `resume` continues it


# What the `etrm.status` tag may hold.
RECORDED = frozenset({TrialStatus.RUNNING, TrialStatus.FINISHED, TrialStatus.DIVERGED, TrialStatus.FAILED,
                      TrialStatus.STOPPED, TrialStatus.INTERRUPTED})
# Never rerun: a divergence is a result, not an accident; a trial ASHA stopped was stopped on purpose.
DONE = frozenset({TrialStatus.FINISHED, TrialStatus.DIVERGED, TrialStatus.STOPPED})
# In the statistics (a diverged trial with its last finite value). The rest of RECORDED is excluded and counted.
USABLE = frozenset({TrialStatus.FINISHED, TrialStatus.DIVERGED})
EXCLUDED = (TrialStatus.FAILED, TrialStatus.RUNNING, TrialStatus.INTERRUPTED, TrialStatus.STOPPED)  # in this order in every table
# Over, one way or another: the live view's "done" count.
ENDED = DONE | {TrialStatus.FAILED}
