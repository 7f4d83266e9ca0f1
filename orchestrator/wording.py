"""The comparison in words: display units, one verdict sentence per contrast, and the rules that made
every number. compare.py computes; the renderers (report.py, plots.py) call this module, so a sentence or a
unit changes in one place and the numbers never depend on how they are said."""
from __future__ import annotations

import math
import re

from etrm.metrics import METRICS, is_fraction, is_variance
from etrm.status import EXCLUDED
from orchestrator import adaptive, power, stats
from orchestrator.compare import ALPHA, Cell, Comparison, ContrastResult
from orchestrator.spec import show_value


def format_value(metric: str, x: float | None, diff: bool = False) -> str:
    """One number in the metric's display unit: fractions as % (levels) or points (differences)."""
    if x is None or not math.isfinite(x):
        return "n/a" if x is None or math.isnan(x) else ("+inf" if x > 0 else "-inf")
    if is_fraction(metric):
        return f"{100 * x:+.1f}" if diff else f"{100 * x:.1f}%"
    return f"{x:+.3g}" if diff else f"{x:.4g}"


def format_interval(metric: str, ci: tuple[float, float] | None, diff: bool = False) -> str:
    if ci is None or not all(map(math.isfinite, ci)):
        return "n/a"
    lo, hi = (format_value(metric, x, diff).lstrip("+") for x in ci)
    return f"[{lo}, {hi}]"


def format_ratio(x: float | None, ci: tuple[float, float] | None) -> str:
    """A ratio with its bootstrap CI when there is one (None below stats.MIN_BOOTSTRAP_N)."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def p_text(r: ContrastResult) -> str:
    """The p-value a reader may quote: Holm-adjusted for the primary metric, raw and said so otherwise."""
    if r.method == "none":
        return "no test"
    if r.confirmatory:
        assert r.p_holm is not None, "compare() Holm-adjusts every tested primary contrast"
        return f"{_p(r.p_holm)} after Holm"
    return f"{_p(r.p)} uncorrected"


def _arm_notes(cell: Cell | None, label: str, metric: str) -> list[str]:
    """Diverged, excluded and value-less trials of one arm: shown in every verdict that they touch."""
    if cell is None:
        return [f"{label} has no trials"]
    notes, total = [], len(cell.status)
    summary = cell.metrics[metric]
    if summary.diverged_seeds:
        notes.append(f"{label} diverged in {len(summary.diverged_seeds)}/{total} seeds")
    excluded = [f"{len(cell.seeds(s))} {s}" for s in EXCLUDED if cell.seeds(s)]
    if excluded:
        notes.append(f"{label}: {' and '.join(excluded)} excluded")
    if summary.missing_seeds:
        notes.append(f"{label}: no {metric} value for seeds {summary.missing_seeds}")
    return notes


def _code_note(*arms: Cell | None) -> list[str]:
    """Runs of the two arms made by more than one version of the code: a difference may be the code's."""
    versions = sorted({v for cell in arms if cell for v in cell.code_versions})
    if len(versions) < 2:
        return []
    short = [re.sub(r"^([0-9a-f]{10})[0-9a-f]{30}", r"\1", v) or "unknown" for v in versions]  # git sha -> 10
    return [f"runs from {len(versions)} code versions ({', '.join(short)})"]


def verdict(r: ContrastResult, comparison: Comparison) -> str:
    """One plain sentence: size with its 95% t CI, p (Holm for the primary metric, raw and marked
    exploratory otherwise), seeds that moved the better way, and failures."""
    cells = {c.cell_id: c for c in comparison.cells}
    m = r.metric
    head = f"[{r.context_label}] " if r.context_label else ""
    head += "" if r.confirmatory else "(exploratory) "
    notes = _arm_notes(cells.get(r.treatment_cell or ""), r.treatment_label, m)  # None: the arm has no trials
    notes += _arm_notes(cells.get(r.control_cell or ""), r.control_label, m)
    notes += _code_note(cells.get(r.treatment_cell or ""), cells.get(r.control_cell or ""))
    tail = "".join(f"; {n}" for n in notes)
    if r.method == "none":
        return (
            f"{head}{r.treatment_label} vs {r.control_label} on {m}: no test, too few usable seeds "
            f"({r.n_treatment} vs {r.n_control}){tail}"
        )
    unit = " points" if is_fraction(m) else ""
    ci = format_interval(m, r.ci_t, diff=True)
    if r.method == "paired sign-flip":
        n = len(r.paired_seeds)
        if r.direction:
            seeds = f"{r.n_higher if r.direction > 0 else r.n_lower}/{n} seeds improved"
        else:
            seeds = f"higher in {r.n_higher}/{n} seeds" if r.diff >= 0 else f"lower in {r.n_lower}/{n} seeds"
        floor = f"{n} pairs"
    else:
        prob = r.prob_higher if r.direction >= 0 else 1 - r.prob_higher
        what = "improvement" if r.direction else "treatment higher"
        unpaired = r.treatment_only_seeds + r.control_only_seeds
        seeds = f"P({what})={prob:.2f} (unpaired permutation test: seeds {sorted(unpaired)} lack a partner)"
        floor = f"{r.n_treatment} vs {r.n_control} seeds"
    if r.scale_ratio is not None:
        seeds += f", implied SD ratio {format_ratio(r.scale_ratio, r.scale_ratio_ci)}"
    p = p_text(r) + (f"; {floor} cannot give p below {r.min_p:.3g}" if r.min_p >= ALPHA else "")
    if r.ci_anytime is not None:  # adaptive seeds peeked: the anytime interval decides, the fixed-n p is context
        p = f"anytime-valid CI {format_interval(m, r.ci_anytime, diff=True)}, fixed-n {p}"
    tail = _null_clause(r) + tail
    if r.significant or (not r.confirmatory and r.diff != 0):
        verb = "raises" if r.diff > 0 else "lowers"
        size = format_value(m, abs(r.diff), diff=True).lstrip("+")
        return f"{head}{r.treatment_label} {verb} {m} by {size}{unit} {ci} vs {r.control_label}, {p}, {seeds}{tail}"
    outcome = f"not significant ({p})" if r.confirmatory else p
    return (
        f"{head}{r.treatment_label} vs {r.control_label} on {m}: {format_value(m, r.diff, diff=True)}{unit} {ci}, "
        f"{outcome}, {seeds}{tail}"
    )


def _null_clause(r: ContrastResult) -> str:
    """'; the null arm differs by SD Y: the effect is / is not distinguishable from the noise floor'."""
    a = r.null
    if a is None:
        return ""
    if a.n < 2 or a.n_vs_null < 2:
        return f"; null arm: too few seeds to measure the noise floor ({a.n} with the control)"
    m, unit = r.metric, " points" if is_fraction(r.metric) else ""
    spread = format_value(m, a.sd, diff=True).lstrip("+")
    head = f"; the null arm differs from the control by SD {spread}{unit} per seed"
    if a.sd > 0 and math.isfinite(r.diff):
        head += f" (the effect is {abs(r.diff) / a.sd:.3g} times that)"
    floor = stats.min_sign_flip_p(a.n_vs_null)
    if floor >= ALPHA:
        return f"{head}: {a.n_vs_null} seeds are too few to test the effect against it (p cannot go below {floor:.3g})"
    verb = "is" if a.distinguishable else "is not"
    return (f"{head}: the effect {verb} distinguishable from the noise floor "
            f"(treatment vs null arm {_p(a.p_vs_null)}, uncorrected)")


def noise(r: ContrastResult) -> str:
    """Pairing efficiency, the smallest detectable effect and the null arm, in plain words ('' without pairs)."""
    if r.method != "paired sign-flip":
        return ""
    m, unit = r.metric, " points" if is_fraction(r.metric) else ""
    head = f"[{r.context_label}] " if r.context_label else ""
    n = len(r.paired_seeds)
    vr, corr = r.variance_ratio, r.correlation
    if vr is None or not math.isfinite(vr):
        pairing = "pairing: no spread to measure"
    elif vr >= 1:
        pairing = (f"pairing did not help: the arms of a seed correlate r={corr:.2f}, and their paired difference varies "
                   f"{vr:.2g}x as much as the difference of two independent runs, so each seed pair is as noisy as "
                   "two unrelated runs")
    else:
        how = "helped" if vr < 0.5 else "helped a little"
        pairing = (f"pairing {how}: the arms of a seed correlate r={corr:.2f}, and their paired difference has {vr:.2g}x "
                   "the variance of the difference of two independent runs")
    if math.isinf(r.mde):
        mde = f"{n} pairs cannot reach p < {r.mde_alpha:.3g} with the exact test: no effect is detectable"
    elif math.isnan(r.mde):
        mde = "no smallest detectable effect (no spread)"
    else:
        size = format_value(m, r.mde, diff=True).lstrip("+")
        mde = f"{n} pairs detect a difference of {size}{unit} with 80% power (alpha {r.mde_alpha:.3g})"
    text = f"{head}{m}: {pairing}; {mde}"
    if r.null is not None and r.null.n >= 2:
        a = r.null
        text += (f"; null arm ({a.label}) - control: {format_value(m, a.diff, diff=True)}{unit} "
                 f"{format_interval(m, a.ci_t, diff=True)}, SD {format_value(m, a.sd, diff=True).lstrip('+')}{unit} "
                 f"over {a.n} seeds")
    return text


def describe_decision(decision: adaptive.Decision, spec) -> str:
    """What the adaptive-seeds rule saw at a look and what it does next, for the launch's output."""
    m, rule = spec.metrics[0], spec.adaptive
    seen = "; ".join(
        f"{format_interval(m, ci, diff=True)} ({why})" for ci, why in zip(decision.intervals, decision.reasons)
    )
    head = f"adaptive seeds: after {decision.n} seeds, {m} difference, anytime-valid 95% CI {seen or 'none'}"
    if decision.next_n is not None:
        return f"{head}: not yet answered (+-{rule.half_width:g} wanted); running seeds up to {decision.next_n}"
    if all(r in (adaptive.EXCLUDES_ZERO, adaptive.NARROW) for r in decision.reasons):
        return f"{head}: answered, stopping at {decision.n} of at most {rule.max} seeds"
    return f"{head}: stopping at the most seeds the spec allows ({rule.max}), not answered"


def power_lines(spec, plan, spread: tuple[float, str] | None, effect: float | None) -> list[str]:
    """`etrm-sweep plan`: what the planned seeds detect on the primary metric, and what a target effect needs."""
    m, unit = spec.metrics[0], " points" if is_fraction(spec.metrics[0]) else ""
    contrasts = sum(cell[spec.contrast.axis] == spec.contrast.treatment for cell in spec.cells())
    alpha = ALPHA / max(contrasts, 1)
    size = lambda x: format_value(m, x, diff=True).lstrip("+") + unit  # noqa: E731
    lines = [f"Power on {m} (the primary metric): paired t test, 80% power, alpha {alpha:.3g} "
             f"(0.05 over {contrasts} contrast{'s' * (contrasts != 1)}, Holm's first step)"]
    if spread is None:
        return lines + ["  no spread known yet: give --sd (a guess) or --pilot NAME (a recorded sweep), or rerun "
                        "`plan` once the sweep has finished seeds"]
    sd, source = spread
    lines.append(f"  SD of a seed's paired difference: {size(sd)} ({source})")
    counts = [spec.adaptive.min, spec.adaptive.max] if spec.adaptive else [len(spec.seeds)]
    for n in counts:
        mde = power.mde(sd, n, alpha)
        lines.append(f"  {n} seeds detect a difference of {size(mde)}" if math.isfinite(mde) else
                     f"  {n} seeds cannot reach p < {alpha:.3g} with the exact sign-flip test: no effect is detectable")
    for target in [effect] if effect is not None else [2 * sd, sd, sd / 2]:
        needed = power.seeds_needed(target, sd, alpha)
        lines.append(f"  a difference of {size(target)} needs "
                     + (f"{needed} seeds" if needed else f"more than {power.MAX_SEEDS} seeds"))
    return lines


def verdicts(comparison: Comparison) -> list[str]:
    return [verdict(r, comparison) for r in comparison.contrasts]


def _directions(metrics: list[str]) -> str:
    """Which way each compared metric is better, as the metric table (etrm/metrics.py) says."""
    groups: dict[str | None, list[str]] = {"higher": [], "lower": [], None: []}
    for m in metrics:
        groups[METRICS[m].better if m in METRICS else None].append(m)
    names = (("higher", "Higher is better"), ("lower", "lower is better"),
             (None, "no better direction (tested two-sided, reported as higher/lower, never 'improved')"))
    text = "; ".join(f"{what}: {', '.join(groups[key])}" for key, what in names if groups[key])
    return text + " (the metric table, etrm/metrics.py). Fractions are shown in %, their differences in percentage points."


def rules(comparison: Comparison) -> dict[str, str]:
    """How every number was made, in words, for the report: each rule that decides what enters a number."""
    selection, metrics, contrast = comparison.selection, comparison.metrics, comparison.contrast
    n_contexts, family_size = comparison.n_contexts, comparison.family_size
    untested = n_contexts - family_size
    b = stats.MIN_BOOTSTRAP_N
    rules = {
        "selection": (
            "final: each trial contributes the last finite value it logged for each metric."
            if selection == "final"
            else f"best: each trial contributes every metric as logged at the step where its {metrics[0]} was best "
            "(earliest such step). Optimistic: the eval puzzles that choose the step are the puzzles scored "
            "(validation = test), so these numbers are biased upward."
        )
        + " The same rule for every variant.",
        "diverged": "Diverged trials (loss became non-finite) stay in every statistic with their last finite value "
        "under the selection rule, and are counted per cell and in the verdicts. Dropping them would compare "
        "survivors only and flatter the variant that diverges; a diverged run's last finite accuracy is an upper "
        "bound on what it delivers, so the rule favours the unstable variant, never the fix.",
        "excluded": "Failed (crashed), still-running, interrupted (Ctrl-C) and early-stopped (ASHA) trials are "
        "excluded from every statistic and counted per cell; a finished or diverged trial without a finite value "
        "of a metric is counted as 'no value' for it. "
        "Nothing is dropped silently.",
        "intervals": "95% CI (t): mean +- t(0.975, n-1) s/sqrt(n), exact for normal data; the verdicts quote it. "
        f"95% CI (bootstrap): expanded percentile bootstrap (Hesterberg 2015; {stats.N_BOOT} seeded resamples), "
        f"shown when n >= {b}, where it covered 94.9% in simulation (normal data; 92% at n=5, where plain "
        "percentile and BCa intervals cover 85%).",
        "directions": _directions(metrics),
    }
    if contrast is None:
        return rules
    axis, treatment, control = contrast
    exploratory = metrics[1:]
    rules |= {
        "contrast": f"{axis}={show_value(treatment)} (treatment) vs {axis}={show_value(control)} (control), within each of "
        f"the {n_contexts} combinations of the other axes; difference = treatment - control.",
        "test": "Paired by seed when every usable seed of one arm has its partner: exact two-sided sign-flip "
        f"permutation test on the per-seed differences (all 2^n sign patterns up to n={stats.MAX_EXACT_FLIPS}, "
        f"{stats.N_RANDOM_DRAWS} seeded random patterns beyond); effect size d_z = mean difference / SD of the "
        "differences; 'k/n seeds improved' counts pairs that moved the better way. When some seed lacks its "
        "partner: two-sided two-sample permutation test of the difference in means on all usable values (drops "
        "nothing, ignores the pairing): p = share of the C(n_t+n_c, n_t) relabelings of the pooled values whose "
        f"|mean_t - mean_c| reaches the observed one, all enumerated up to {stats.MAX_EXACT_RELABELINGS} "
        f"relabelings, else {stats.N_RANDOM_DRAWS} seeded random relabelings with p = (count+1)/(draws+1). It "
        "assumes no normality but tests exchangeable arms (same distribution), so a difference in spread alone "
        "can move it. Its interval is Welch's t interval (unequal variances, Welch-Satterthwaite df); effect size "
        "d_av = difference / sqrt((s_t^2 + s_c^2)/2), P(improvement) = share of (treatment, control) pairs "
        "where treatment is better, ties half.",
        "holm": f"Primary (confirmatory) metric: {metrics[0]}, the first metric listed. Holm-Bonferroni over "
        f"its tests, one per contrast (family size {family_size}"
        + (f": {untested} without enough data left out" if untested else "")
        + ")"
        + f"; significant means Holm-adjusted p < {ALPHA}."
        + (
            f" The other metrics ({', '.join(exploratory)}) are exploratory: their p-values "
            "are raw, not corrected for multiple testing; their verdicts are marked (exploratory) and never called "
            "significant or not significant."
            if exploratory
            else ""
        ),
        "power": "The exact tests have a floor: with n pairs the sign-flip test cannot give p below 2/2^n (5 "
        "pairs: 0.0625, 6: 0.031), the unpaired permutation test not below 1/C(n_t+n_c, n_t) (2/C when "
        f"n_t = n_c; 3 vs 3 seeds: 0.1). For the smallest paired p to survive Holm over a family of "
        f"{family_size} primary tests needs at least {stats.sign_flip_pairs_needed(ALPHA / max(family_size, 1))} pairs.",
        "noise": "Pairing: r is the Pearson correlation of the two arms' values across seeds; the variance ratio is "
        "var(treatment - control) / (var(treatment) + var(control)), the variance of the paired difference over that "
        "of the difference of two independent runs (1 - 2 cov / (var_t + var_c)): below 1 pairing by seed removed "
        "noise, about 1 or more it did not (the arms of a seed then behave as unrelated runs). Smallest detectable "
        "effect (MDE): the difference a two-sided paired t test finds with 80% power given the observed SD of the "
        "paired differences and n pairs, at alpha 0.05 / (family size) for the primary metric (Holm's first step) "
        "and 0.05 for the others; infinite while the exact test's floor 2/2^n is not below alpha. It is a slight "
        "underestimate for the sign-flip test at few seeds."
        + (" Null arm: the control cell run again with a seeded 1e-6 jitter of its initial weights "
           "(model.init_jitter); its difference from the control, seed by seed, is what no change does on this "
           "model. The effect is called distinguishable from this noise floor when the sign-flip test of treatment - "
           "null arm (same seeds) gives p < 0.05 (uncorrected)."
           if any(r.null is not None for r in comparison.contrasts) else ""),
        "ratios": "SD ratio: seed-to-seed SD of the treatment / of the control, with a percentile bootstrap CI "
        f"(pairs resampled together) when n >= {b}; approximate, it covers about 90% at 8-20 seeds in "
        "simulation. Variance metrics (" + (", ".join(m for m in metrics if is_variance(m)) or "none here")
        + ") also get the scale ratio "
        "sqrt(mean_t / mean_c): the ratio of standard deviations the metric itself measures.",
    }
    if comparison.adaptive is not None:
        a = comparison.adaptive
        looks = adaptive.looks(a)
        rules["adaptive"] = (
            f"Adaptive seeds: batches at {looks} seeds; after each, the primary metric's paired differences give a t "
            f"interval at level {adaptive.level(a, family_size):.4g} = 1 - 0.05 / ({len(looks)} looks x "
            f"{max(family_size, 1)} contrasts), so all intervals hold together at every look (alpha spent evenly, "
            "Bonferroni): stopping on them does not inflate the error. The sweep stops when every interval excludes 0 "
            f"or is at most +-{a.half_width:g} wide, or at {a.max} seeds. That anytime-valid interval decides "
            "significance; the fixed-n p-values are shown for context and are not valid after such peeking."
        )
    return rules
