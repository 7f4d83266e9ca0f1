"""Adaptive seeds: the real stopping rule (orchestrator/adaptive.py) on thousands of simulated sweeps.

Each simulated sweep draws paired differences for up to `max` seeds and walks the rule's looks with the
functions `decide` composes (interval, stop_reason, stops), all sweeps at once. Bounds the rule must keep,
whatever the effect: coverage of the true difference by the interval it stops with >= 95%, and under a null
effect a false positive (an interval at stopping that excludes 0) in <= 5% of sweeps.
"""
import numpy as np
import pytest

from orchestrator import adaptive
from orchestrator.spec import AdaptiveSeeds

SWEEPS = 4000  # >= 2000 per case; the Monte Carlo SE of a 95% coverage is 0.0034
RULES = [AdaptiveSeeds(min=4, max=16, step=2, half_width=0.25), AdaptiveSeeds(min=2, max=12, step=1, half_width=0.1)]


def simulate(rule: AdaptiveSeeds, mu: float, draw, contexts: int = 1, seed: int = 0):
    """(lo, hi, n) at stopping for SWEEPS sweeps of `contexts` primary contrasts with true difference mu."""
    d = mu + draw(np.random.default_rng(seed), (SWEEPS, contexts, rule.max))
    lo, hi = np.full((2, SWEEPS, contexts), np.nan)
    n_stop = np.zeros(SWEEPS, int)
    for n in adaptive.looks(rule):
        low, high = adaptive.interval(d[..., :n], rule, contexts)
        now = (n_stop == 0) & adaptive.stops(adaptive.stop_reason(low, high, n, rule), n, rule)
        lo[now], hi[now], n_stop[now] = low[now], high[now], n
    assert (n_stop > 0).all()  # every sweep stopped, at the latest at max
    return lo, hi, n_stop


NORMAL = lambda rng, shape: rng.normal(0, 1, shape)  # noqa: E731
HEAVY = lambda rng, shape: rng.standard_t(3, shape) / np.sqrt(3)  # noqa: E731  (t3, unit variance: chaotic seeds)


@pytest.mark.parametrize("rule", RULES, ids=["4-16by2", "2-12by1"])
@pytest.mark.parametrize("draw", [NORMAL, HEAVY], ids=["normal", "t3"])
@pytest.mark.parametrize("contexts", [1, 3])
def test_coverage_and_false_positives_under_peeking(rule, draw, contexts):
    for mu in (0.0, 0.3, 1.0):
        lo, hi, n = simulate(rule, mu, draw, contexts)
        coverage = np.mean(((lo <= mu) & (mu <= hi)).all(axis=-1))  # every contrast at once
        assert coverage >= 0.95, (mu, coverage)
        if mu == 0:
            false_positive = np.mean(((lo > 0) | (hi < 0)).any(axis=-1))
            assert false_positive <= 0.05, false_positive


def test_the_rule_stops_early_on_a_clear_effect_and_runs_on_under_the_null():
    rule = RULES[0]
    _, _, n_big = simulate(rule, 3.0, NORMAL)
    _, _, n_null = simulate(rule, 0.0, NORMAL)
    assert np.median(n_big) <= 6 and np.mean(n_big == rule.max) < 0.01  # a 3-SD effect: clear within two looks
    assert np.mean(n_null == rule.max) > 0.9  # no effect and +-0.25 SD wanted: every look goes on
    # peeking with the plain fixed-n 95% t interval instead inflates the error: the reason for the spending
    naive = AdaptiveSeeds(min=4, max=16, step=2, half_width=0.25)
    d = np.random.default_rng(1).normal(0, 1, (SWEEPS, naive.max))
    from orchestrator.stats import t_half_width

    crossed = np.zeros(SWEEPS, bool)
    for k in adaptive.looks(naive):
        crossed |= np.abs(d[:, :k].mean(-1)) > t_half_width(d[:, :k])
    assert crossed.mean() > 0.1


def test_looks_levels_and_decide():
    rule = AdaptiveSeeds(min=3, max=10, step=3, half_width=0.1)
    assert adaptive.looks(rule) == [3, 6, 9, 10]
    assert adaptive.level(rule, contrasts=2) == pytest.approx(1 - 0.05 / 8)
    clear, vague = np.array([1.0, 1.1, 0.9]), np.array([1.0, -1.0, 0.5])
    first = adaptive.decide([clear, vague], 3, rule)
    assert first.reasons == [adaptive.EXCLUDES_ZERO, adaptive.GOING_ON] and first.next_n == 6
    assert adaptive.decide([clear, clear], 3, rule).next_n is None  # both answered: stop
    last = adaptive.decide([vague, vague], 10, rule)
    assert last.next_n is None and last.reasons == [adaptive.LAST_LOOK] * 2
    assert adaptive.decide([np.array([]), clear], 3, rule).reasons[0] == adaptive.GOING_ON  # no pairs yet
    lo, hi = adaptive.interval(clear, rule, 2)
    assert first.intervals[0] == pytest.approx((lo, hi))


def test_decide_sweep_reads_the_first_n_seeds_of_the_recorded_trials():
    """The launch's decision from TrialRecords as MLflow gives them: seeds beyond the look are ignored."""
    from orchestrator.records import TrialRecord
    from orchestrator.spec import parse_spec

    spec = parse_spec({"name": "a", "axes": {"model.encoder.final_norm": [True, False]},
                       "seeds": {"adaptive": {"min": 3, "max": 6, "step": 3, "half_width": 0.01}},
                       "contrast": {"axis": "model.encoder.final_norm", "treatment": True, "control": False},
                       "metrics": ["train/lm_loss"]})

    def record(fn: bool, seed: int, loss: float) -> TrialRecord:
        return TrialRecord(f"t{fn}{seed}", f"c{fn}", seed, {"model.encoder.final_norm": fn}, "finished",
                           {"train/lm_loss": loss}, {"train/lm_loss": [(1, loss)]}, f"r{fn}{seed}")

    clear = [record(True, s, 1.0 + 0.01 * s) for s in range(3)] + [record(False, s, 2.0) for s in range(3)]
    late = [record(True, 3, 9.0), record(False, 3, 0.0)]  # a seed past the look: must not count
    decision = adaptive.decide_sweep(spec, clear + late, 3)
    assert decision.reasons == [adaptive.EXCLUDES_ZERO] and decision.next_n is None
    lo, hi = adaptive.interval(np.array([-1.0, -0.99, -0.98]), spec.adaptive)
    assert decision.intervals == [pytest.approx((lo, hi))]
    vague = [record(True, s, 2.0 + (-1) ** s) for s in range(3)] + [record(False, s, 2.0) for s in range(3)]
    assert adaptive.decide_sweep(spec, vague, 3).next_n == 6
