"""orchestrator.stats against scipy, brute force, a hand-worked Holm example, and simulated sweeps."""
import itertools

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator import stats

X = np.array([0.61, 0.55, 0.70, 0.58, 0.66, 0.52, 0.63])
Y = np.array([0.41, 0.52, 0.38, 0.47, 0.60])


def test_t_interval_matches_scipy():
    expected = sps.t.interval(0.95, len(X) - 1, loc=X.mean(), scale=sps.sem(X))
    assert stats.t_interval(X) == pytest.approx(expected, rel=1e-12)
    assert all(np.isnan(stats.t_interval(X[:1])))


def test_welch_interval_matches_scipy():
    res = sps.ttest_ind(X, Y, equal_var=False)
    assert stats.welch_df(X, Y) == pytest.approx(res.df, rel=1e-10)
    assert stats.welch_interval(X, Y) == pytest.approx(tuple(res.confidence_interval(0.95)), rel=1e-10)
    assert stats.welch_interval(np.full(3, 0.5), np.full(4, 0.25)) == (0.25, 0.25)  # no spread: a point


def _brute_force_permutation_p(t, c):
    """Every split of the pooled values into len(t) and len(c), in plain Python."""
    pooled, nt = list(t) + list(c), len(t)
    observed = abs(np.mean(t) - np.mean(c))
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), nt):
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += abs(np.mean(a) - np.mean(b)) >= observed - 1e-12
        total += 1
    return hits / total


def _abs_mean_diff(x, y, axis):
    return np.abs(np.mean(x, axis=axis) - np.mean(y, axis=axis))


@pytest.mark.parametrize(
    "t, c",
    [(X, Y), (X[:4], Y[:4]), (np.array([0.35, 0.4, 0.45]), np.array([0.3, 0.2, 0.4, 0.45])), (np.ones(3), np.ones(4))],
)
def test_permutation_exact_matches_brute_force_and_scipy(t, c):
    p = stats.two_sample_permutation_test(t, c, np.random.default_rng(0))
    assert p == pytest.approx(_brute_force_permutation_p(t, c))
    assert stats.two_sample_permutation_test(t + 1e6, c + 1e6, np.random.default_rng(0)) == pytest.approx(p)  # shift-invariant
    # two-sided as |difference| >= observed: scipy's one-sided test of that statistic
    ref = sps.permutation_test(
        (t, c), _abs_mean_diff, permutation_type="independent", alternative="greater", n_resamples=np.inf,
        vectorized=True,
    )  # fmt: skip
    assert p == pytest.approx(ref.pvalue)
    if len(t) == len(c):  # equal arms: the null is symmetric, so scipy's doubled two-sided p agrees too
        ref = sps.permutation_test((t, c), lambda x, y: np.mean(x) - np.mean(y), n_resamples=np.inf)
        assert p == pytest.approx(min(1.0, ref.pvalue))


def test_permutation_monte_carlo_close_to_exact_beyond_20000_splits():
    rng = np.random.default_rng(4)
    t, c = rng.normal(0.5, 1.0, 9), rng.normal(0.0, 1.0, 9)  # C(18, 9) = 48620 splits: Monte Carlo
    exact = sps.permutation_test(
        (t, c), _abs_mean_diff, alternative="greater", n_resamples=np.inf, vectorized=True
    ).pvalue
    p = stats.two_sample_permutation_test(t, c, np.random.default_rng(1))
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / stats.N_RANDOM_DRAWS) + 1e-4
    assert p * (stats.N_RANDOM_DRAWS + 1) == pytest.approx(round(p * (stats.N_RANDOM_DRAWS + 1)))  # (count+1)/(N+1)
    assert p == stats.two_sample_permutation_test(t, c, np.random.default_rng(1))  # seeded: reproducible


def test_min_permutation_p_and_no_welch_optimism():
    rng = np.random.default_rng(0)
    assert stats.min_permutation_p(3, 4) == pytest.approx(1 / 35)
    assert stats.two_sample_permutation_test(np.array([10.0, 11, 12]), np.array([1.0, 2, 3, 4]), rng) == pytest.approx(1 / 35)
    assert stats.min_permutation_p(3, 3) == pytest.approx(0.1)  # the split and its mirror
    assert stats.min_permutation_p(9, 9) == 1 / (stats.N_RANDOM_DRAWS + 1)
    # three tight seeds vs two: Welch claims p < 0.001, the five values can support no less than 1/C(5, 3)
    t, c = np.array([0.50, 0.51, 0.52]), np.array([0.30, 0.31])
    assert sps.ttest_ind(t, c, equal_var=False).pvalue < 0.001
    assert stats.two_sample_permutation_test(t, c, rng) == pytest.approx(0.1) == stats.min_permutation_p(3, 2)


@pytest.mark.parametrize("d", [X - X.mean() + 0.02, np.array([0.3, -0.1, 0.25, 0.4, 0.05, 0.2]), np.zeros(5)])
def test_sign_flip_exact_matches_brute_force_and_scipy(d):
    rng = np.random.default_rng(0)
    flips = [abs(np.dot(s, d)) for s in itertools.product([-1, 1], repeat=len(d))]
    brute = np.mean(np.array(flips) >= abs(d.sum()) - 1e-12)
    assert stats.sign_flip_test(d, rng) == pytest.approx(brute)
    ref = sps.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert stats.sign_flip_test(d, rng) == pytest.approx(min(1.0, ref.pvalue))


def test_sign_flip_monte_carlo_close_to_exact_beyond_16_pairs():
    d = np.random.default_rng(3).normal(0.35, 1.0, 18)  # 2^18 patterns: still enumerable here
    exact = np.mean(np.abs(stats._all_sign_patterns.__wrapped__(18) @ d) >= abs(d.sum()) - 1e-9)
    p = stats.sign_flip_test(d, np.random.default_rng(1))
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / stats.N_RANDOM_DRAWS) + 1e-4
    assert p == stats.sign_flip_test(d, np.random.default_rng(1))  # seeded: reproducible


def test_min_sign_flip_p():
    assert stats.min_sign_flip_p(5) == 0.0625
    assert stats.sign_flip_test(np.arange(1.0, 6.0), np.random.default_rng(0)) == 0.0625


def test_holm_hand_computed():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.06
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.5*2 = 1.0 caps at 1, and 0.9 must not drop below the smaller p's adjusted value
    assert stats.holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])


def test_effect_sizes_and_prob_higher():
    d = np.array([1.0, 2.0, 3.0])
    assert stats.d_z(d) == pytest.approx(2.0)
    assert stats.d_z(np.ones(3)) == np.inf
    assert stats.d_av(X, Y) == pytest.approx((X.mean() - Y.mean()) / np.sqrt((X.var(ddof=1) + Y.var(ddof=1)) / 2))
    u = sps.mannwhitneyu(X, Y).statistic
    assert stats.prob_higher(X, Y, paired=False) == pytest.approx(u / (len(X) * len(Y)))
    assert stats.prob_higher(np.array([1.0, 2, 3]), np.array([0.0, 2, 4]), paired=True) == pytest.approx(0.5)


def test_bootstrap_ratio_point_and_interval():
    rng = np.random.default_rng(0)
    t, c = rng.normal(0, 2, 12), rng.normal(0, 1, 12)
    ratio, ci = stats.bootstrap_ratio(t, c, stats.sd, rng, paired=True)
    assert ratio == pytest.approx(t.std(ddof=1) / c.std(ddof=1))
    assert ci[0] < ratio < ci[1]
    assert stats.bootstrap_ratio(t[:3], c[:3], stats.sd, rng, paired=True)[1] is None


def _paired_sweeps(rng, sweeps, seeds, delta):
    """Control and treatment share a seed effect (same init and data order), as in a real sweep."""
    seed_effect = rng.normal(0, 1.0, (sweeps, seeds))
    control = seed_effect + rng.normal(0, 0.5, (sweeps, seeds))
    treatment = seed_effect + delta + rng.normal(0, 0.5, (sweeps, seeds))
    return treatment - control


def test_simulated_coverage_and_type_one_error():
    rng = np.random.default_rng(2024)
    sweeps, delta = 2000, 0.4
    d = _paired_sweeps(rng, sweeps, 5, delta)
    cover = np.mean([lo <= delta <= hi for lo, hi in map(stats.t_interval, d)])
    assert 0.93 <= cover <= 0.97

    # The bootstrap CI is shown from MIN_BOOTSTRAP_N pairs on; check its coverage there.
    d = _paired_sweeps(rng, 1500, stats.MIN_BOOTSTRAP_N, delta)
    cover = np.mean([lo <= delta <= hi for lo, hi in (stats.bootstrap_mean_interval(x, rng) for x in d)])
    assert 0.93 <= cover <= 0.97

    null = _paired_sweeps(rng, sweeps, 8, 0.0)
    reject = np.mean([stats.sign_flip_test(x, rng) < 0.05 for x in null])
    assert 0.03 <= reject <= 0.06  # exact level at 8 pairs is 12/256 = 0.047
    power = np.mean([stats.sign_flip_test(x, rng) < 0.05 for x in null + 1.0])
    assert power > 0.8

    # unpaired, 4 vs 5 seeds from one distribution: exact level 6/126 = 0.048 (p moves in steps of 1/126)
    null = rng.normal(0, 1, (sweeps, 9))
    reject = np.mean([stats.two_sample_permutation_test(x[:4], x[4:], rng) < 0.05 for x in null])
    assert 0.03 <= reject <= 0.065
