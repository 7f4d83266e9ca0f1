"""Adaptive seeds: run seeds in batches and stop once the primary contrast is answered.

After each batch (a "look") the paired differences of the primary metric give, per contrast, a t interval
at the level an alpha-spending schedule allows: alpha is split evenly over every look the sweep could take
and every contrast of the primary metric (Bonferroni), so the intervals hold simultaneously, at every look,
with probability >= 95% for normal differences: peeking cannot inflate the error, whenever the sweep stops
(an anytime-valid guarantee over the planned looks). The sweep stops when every interval excludes 0 (the
sign is clear) or is narrower than +-half_width (the size is pinned down), or at the last look.

Nothing is remembered between launches: the decision is recomputed from the recorded trials, so a resumed
or relaunched sweep walks the same looks and reaches the same decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.stats import t_half_width

if TYPE_CHECKING:
    from orchestrator.spec import AdaptiveSeeds

ALPHA = 0.05  # as compare.ALPHA; not imported: the sweep driver reads this before any statistics load
EXCLUDES_ZERO, NARROW, LAST_LOOK, GOING_ON = "excludes 0", "narrow", "last look", "going on"


def looks(rule: AdaptiveSeeds) -> list[int]:
    """Seed counts after which the contrast is recomputed: min, min + step, ..., max (always the last)."""
    return sorted({*range(rule.min, rule.max, rule.step), rule.max})


def level(rule: AdaptiveSeeds, contrasts: int = 1) -> float:
    """Confidence level of each look's interval: 1 - alpha / (looks x contrasts)."""
    return 1 - ALPHA / (len(looks(rule)) * max(contrasts, 1))


def interval(d: np.ndarray, rule: AdaptiveSeeds, contrasts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The anytime-valid interval of the mean paired difference, along the last axis of `d` (any leading
    axes: many contrasts, or many simulated sweeps, at once)."""
    d = np.asarray(d, float)
    mean, half = d.mean(axis=-1), t_half_width(d, level(rule, contrasts))
    return mean - half, mean + half


def stop_reason(lo: np.ndarray, hi: np.ndarray, n: int, rule: AdaptiveSeeds) -> np.ndarray:
    """Per interval: EXCLUDES_ZERO, NARROW, LAST_LOOK (n reached max) or GOING_ON."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    reason = np.where((hi - lo) / 2 <= rule.half_width, NARROW, LAST_LOOK if n >= rule.max else GOING_ON)
    return np.where((lo > 0) | (hi < 0), EXCLUDES_ZERO, reason)


@dataclass
class Decision:
    n: int  # seeds so far (a look)
    reasons: list[str]  # one per contrast of the primary metric
    intervals: list[tuple[float, float]]
    next_n: int | None  # the next look's seed count; None: stop here


def decide(diffs: list[np.ndarray], n: int, rule: AdaptiveSeeds) -> Decision:
    """Stop when every contrast's interval is decided (excludes 0 or narrow) or n is the last look.
    `diffs`: per contrast of the primary metric, the paired differences over the first n seeds."""
    reasons, intervals = [], []
    for d in diffs:
        lo, hi = interval(d, rule, len(diffs)) if len(d) >= 2 else (np.array(np.nan), np.array(np.nan))
        reasons.append(str(stop_reason(lo, hi, n, rule)))
        intervals.append((float(lo), float(hi)))
    stop = bool(stops(np.array(reasons), n, rule))
    return Decision(n, reasons, intervals, None if stop else min(k for k in looks(rule) if k > n))


def stops(reasons: np.ndarray, n: int, rule: AdaptiveSeeds) -> np.ndarray:
    """Stop when every contrast (last axis of `reasons`) is answered, or at the last look."""
    return np.asarray(np.isin(reasons, (EXCLUDES_ZERO, NARROW)).all(axis=-1) | (n >= rule.max))


def decide_sweep(spec, records: list, n: int) -> Decision:
    """The decision at the look of n seeds, from the recorded trials of seeds 0 .. n-1: the primary metric's
    paired differences per contrast, as the comparison computes them (same selection rule, diverged trials
    with their last finite value)."""
    from orchestrator.compare import compare  # here, not at the top: compare imports this module

    c = spec.contrast
    comparison = compare([r for r in records if r.seed < n], axes=list(spec.axes),
                         contrast=(c.axis, c.treatment, c.control), metrics=[spec.metrics[0]])
    diffs = [comparison.paired_differences(r) for r in comparison.contrasts]  # none yet: undecided
    return decide(diffs, n, spec.adaptive)
