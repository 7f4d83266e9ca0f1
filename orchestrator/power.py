"""How large an effect a sweep can detect, and how many seeds a target effect needs.

The paired t test's power from the seed-to-seed SD of the paired differences (noncentral t), floored by
the exact sign-flip test: with n pairs it cannot give p below 2/2^n, so no effect is detectable while that
floor is above alpha. The comparison's sign-flip test has about the t test's power from ~10 pairs and a
little less below, so the MDE here is a slight underestimate at few seeds.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as sps

from orchestrator.stats import min_sign_flip_p

POWER = 0.8
MAX_SEEDS = 10_000


def power(effect: float, sd: float, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """P(two-sided paired t test at `alpha` rejects) when the true mean difference is `effect`."""
    n = np.asarray(n, float)
    df, nc = n - 1, effect / sd * np.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    lower = np.nan_to_num(sps.nct.cdf(-crit, df, nc), nan=0.0)  # SciPy gives nan where it is ~0 (large nc)
    return sps.nct.sf(crit, df, nc) + lower


def mde(sd: float, n: int, alpha: float, target: float = POWER) -> float:
    """Smallest |effect| that n seed pairs detect with probability `target`: inf when the exact test's floor
    (2/2^n) is not below alpha, nan without a spread (n < 2 or an undefined SD)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if min_sign_flip_p(n) >= alpha:
        return math.inf
    if sd == 0:
        return 0.0
    # power grows with effect/sd; bracket between 0 and a size every n >= 2 reaches
    k = optimize.brentq(lambda k: power(k, 1.0, n, alpha) - target, 1e-9, 1e3)
    return float(k * sd)


def seeds_needed(effect: float, sd: float, alpha: float, target: float = POWER) -> int | None:
    """Fewest seed pairs that detect `effect` with probability `target` (None: more than MAX_SEEDS)."""
    if sd == 0:
        n = 2
    else:
        n_all = np.arange(2, MAX_SEEDS + 1)
        reach = power(abs(effect), sd, n_all, alpha) >= target
        if not reach.any():
            return None
        n = int(n_all[np.argmax(reach)])
    while min_sign_flip_p(n) >= alpha:  # the exact test's floor
        n += 1
    return n
