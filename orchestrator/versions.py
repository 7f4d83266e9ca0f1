"""Sweep versions: which recorded trials the current spec asks for, and which an earlier spec made.

A trial's id hashes its resolved config, so a change of `base` (or of an axis that every trial carries)
gives trials new ids: a new version of the sweep. Adding seeds or axis values keeps the ids of the
trials already run, so that stays the same version. `status`, `compare` and `resume` work on the trials
of the current version; runs of older versions stay in MLflow untouched, are counted, and are never
pooled with the current ones.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from orchestrator.plan import Plan, planned_trial
from orchestrator.records import TrialRecord


def split_versions(plan: Plan, records: list[TrialRecord]) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """(current, older): the records this spec asks for, seen through the spec's own cells and axes, and the rest.

    A grid trial belongs to the current version when the plan holds its id; its cell and variant are then
    the plan's (an axis dropped from the spec, or one added with the base's value, keeps its trials). A
    searched trial belongs when its sampled keys are the search space's and, over the spec's base, give
    its id back.
    """
    spec, current, older = plan.spec, [], []
    if spec.search == "grid":
        planned = {t.trial_id: t for t in plan.trials}
        for r in records:
            t = planned.get(r.trial_id)
            if t is None:
                older.append(r)
            else:
                current.append(dataclasses.replace(r, cell_id=t.cell_id, variant=dict(t.variant)))
        return current, older
    space = list(spec.search.optuna.space)
    for r in records:
        same = set(r.variant) == set(space) and \
            planned_trial(spec, {k: r.variant[k] for k in space}, r.seed).trial_id == r.trial_id
        (current if same else older).append(r)
    return current, older


def older_note(older: list[TrialRecord]) -> str | None:
    """One line on the runs of earlier versions, or None when there are none."""
    if not older:
        return None
    statuses = Counter(r.status for r in older)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    return (f"{len(older)} trial run(s) of an earlier version of this sweep (another base or axes: "
            f"{detail}) are kept in MLflow but not shown or compared; they are the runs whose "
            "etrm.trial_id this spec no longer plans")
