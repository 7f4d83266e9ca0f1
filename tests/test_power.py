"""Smallest detectable effect and seeds needed (orchestrator/power.py), checked against simulation, the
textbook sample size, and the exact test's floor; pairing efficiency (stats.pairing) against NumPy."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator import power, stats


def test_power_matches_a_simulated_paired_t_test():
    rng = np.random.default_rng(0)
    for n, effect in ((8, 0.8), (12, 0.5)):
        d = rng.normal(effect, 1.0, (20_000, n))
        rejected = sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
        assert power.power(effect, 1.0, n, 0.05) == pytest.approx(rejected.mean(), abs=0.01)


def test_mde_and_seeds_needed():
    mde = power.mde(2.0, 10, 0.05)
    assert power.power(mde, 2.0, 10, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert power.mde(1.0, 10, 0.05) == pytest.approx(mde / 2)  # in units of the SD
    assert power.seeds_needed(0.5, 1.0, 0.05) == 34  # d_z = 0.5, 80% power, two-sided 0.05 (G*Power: 34)
    assert power.seeds_needed(0.25, 1.0, 0.05) > 4 * 30
    # the exact sign-flip test cannot give p < 0.05 with 5 pairs (floor 2/32): nothing is detectable
    assert math.isinf(power.mde(1.0, 5, 0.05)) and math.isfinite(power.mde(1.0, 6, 0.05))
    assert power.seeds_needed(10.0, 1.0, 0.05) == 6  # the t test would need 3: the floor decides
    assert power.seeds_needed(10.0, 1.0, 0.05 / 3) == 7  # Holm's first step over 3 contrasts
    assert math.isnan(power.mde(1.0, 1, 0.05))


def test_pairing_efficiency():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 1, 30)
    t, c = seed_effect + rng.normal(0, 0.3, 30), seed_effect + rng.normal(0, 0.3, 30)
    r, ratio = stats.pairing(t, c)
    assert r == pytest.approx(np.corrcoef(t, c)[0, 1])
    assert ratio == pytest.approx(np.var(t - c, ddof=1) / (np.var(t, ddof=1) + np.var(c, ddof=1)))
    assert ratio < 0.2  # seeds move both arms: pairing removes most of the noise
    r, ratio = stats.pairing(rng.normal(0, 1, 200), rng.normal(0, 1, 200))
    assert abs(r) < 0.3 and ratio == pytest.approx(1.0, abs=0.3)  # independent arms: pairing buys nothing
