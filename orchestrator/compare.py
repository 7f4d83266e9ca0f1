"""Group trials into cells, pair them by seed, and answer 'does the treatment help, by how much, how sure?'.

A cell is one combination of the sweep's axes (everything but the seed). A contrast compares the cell
with axis=treatment against the cell with axis=control for every combination of the other axes, per
metric. The first metric listed is the primary (confirmatory) one: Holm corrects across its contrasts only,
so a small sweep can still answer its one question; the other metrics are exploratory, reported with raw
p-values. This module only computes; wording.py says what the numbers mean (verdicts, the rules that
made them, display units), and the renderers call it.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from etrm.metrics import direction, is_variance
from etrm.status import RECORDED, USABLE, TrialStatus
from orchestrator import adaptive, power, stats
from orchestrator.plan import short_names
from orchestrator.records import TrialRecord, mlflow_metric_name
from orchestrator.spec import NULL_CONTROL_KEY, AdaptiveSeeds, show_value

DEFAULT_METRICS = [
    "eval/exact_accuracy",
    "ARC/pass@1",
    "ARC/pass@2",
    "train/lm_loss",
    "encoder_cross_sample_var",
    "encoder_output_norm",
    "grad/total_norm",
]
SELECTIONS = ("final", "best")
ALPHA = 0.05



@dataclass
class MetricSummary:
    """One metric in one cell: what entered, and the mean with its uncertainty."""

    metric: str
    n: int
    mean: float
    sd: float
    ci_t: tuple[float, float]
    ci_boot: tuple[float, float] | None  # None below stats.MIN_BOOTSTRAP_N
    values: dict[int, float]  # seed -> selected value (finished and diverged trials)
    diverged_seeds: list[int]  # seeds in `values` whose trial diverged
    missing_seeds: list[int]  # finished/diverged trials that logged no finite value of this metric


@dataclass
class Cell:
    cell_id: str
    label: str  # "final_norm=true, type=standard"
    variant: dict[str, Any]
    status: dict[int, TrialStatus]  # seed -> trial status, every trial of the cell
    run_ids: dict[int, str]  # seed -> MLflow run id: every number traces back to runs
    metrics: dict[str, MetricSummary]
    code_versions: list[str] = field(default_factory=list)  # of the cell's trials, sorted; "" = unknown

    def seeds(self, status: TrialStatus) -> list[int]:
        return sorted(s for s, st in self.status.items() if st == status)


@dataclass
class NullArm:
    """The control run again with a 1e-6 jitter of its initial weights (an A/A arm): what no change at all does
    to a paired difference on this model, the noise floor the effect is read against."""

    cell: str
    label: str
    n: int  # seeds with a null and a control value
    diff: float  # mean of null - control (about 0 by construction)
    sd: float  # SD of null - control across seeds: the spread of a paired difference under no effect
    ci_t: tuple[float, float]
    n_vs_null: int  # seeds with treatment, null and control values
    p_vs_null: float  # sign-flip test of treatment - null: is the effect more than the null arm's jitter?

    @property
    def distinguishable(self) -> bool:
        return self.p_vs_null < ALPHA


@dataclass
class ContrastResult:
    """Treatment vs control on one metric, within one combination of the other axes."""

    context: dict[str, Any]
    context_label: str
    metric: str
    direction: int
    treatment_cell: str | None
    control_cell: str | None
    treatment_label: str
    control_label: str
    confirmatory: bool  # the primary metric (in the Holm family); False: exploratory, p not corrected
    method: str  # "paired sign-flip" | "unpaired permutation" | "none"
    paired_seeds: list[int]
    treatment_only_seeds: list[int]
    control_only_seeds: list[int]
    n_treatment: int
    n_control: int
    diff: float  # treatment - control (mean of paired differences, or difference of means)
    ci_t: tuple[float, float]
    ci_boot: tuple[float, float] | None
    p: float
    min_p: float  # smallest p the test could give with this n
    p_holm: float | None  # None: not in the family (exploratory metric, or no test possible)
    effect_size: float
    effect_size_name: str  # "d_z" (paired) | "d_av" (unpaired)
    prob_higher: float  # P(treatment > control) + ties/2
    n_higher: int | None  # paired only: seeds where treatment > control
    n_lower: int | None
    sd_ratio: float  # SD across seeds, treatment / control
    sd_ratio_ci: tuple[float, float] | None
    scale_ratio: float | None  # variance metrics: sqrt(mean_t / mean_c)
    scale_ratio_ci: tuple[float, float] | None
    correlation: float | None = None  # paired: Pearson r of the arms across seeds
    variance_ratio: float | None = None  # paired: var(t - c) / (var(t) + var(c)); < 1: pairing helped
    mde: float = math.nan  # smallest |difference| this test detects with 80% power at its alpha; inf: none can
    mde_alpha: float = ALPHA  # that alpha: ALPHA / family size for the primary metric (Holm's first step)
    null: NullArm | None = None  # with a null-control arm (spec null_control)
    ci_anytime: tuple[float, float] | None = None  # adaptive seeds, primary metric: the interval valid after peeking

    @property
    def significant(self) -> bool:
        """Holm-adjusted p < ALPHA; after adaptive seeds (which peeked), the anytime interval excludes 0."""
        if self.ci_anytime is not None:
            return self.ci_anytime[0] > 0 or self.ci_anytime[1] < 0
        return self.p_holm is not None and self.p_holm < ALPHA


@dataclass
class Comparison:
    axes: list[str]
    contrast: tuple[str, Any, Any] | None  # (axis, treatment, control)
    metrics: list[str]
    selection: str
    seed: int
    cells: list[Cell]
    contrasts: list[ContrastResult]
    family_size: int  # tests in the Holm family: the primary metric's contrasts that could be tested
    adaptive: AdaptiveSeeds | None = None  # the seeds were added in batches under this stopping rule

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def n_contexts(self) -> int:
        """Combinations of the other axes the contrast is made within."""
        return len(self.contrasts) // len(self.metrics)

    def cell(self, cell_id: str) -> Cell:
        return {c.cell_id: c for c in self.cells}[cell_id]

    def paired_differences(self, r: ContrastResult) -> np.ndarray:
        """treatment - control per paired seed ([] when the contrast is not paired)."""
        if r.method != "paired sign-flip":
            return np.array([])
        t, c = _paired(r, {c.cell_id: c for c in self.cells})
        return t - c

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-safe: non-finite floats become None, seed keys become strings."""
        d = asdict(self) | {"adaptive": self.adaptive.model_dump() if self.adaptive else None}
        for c, out in zip(self.contrasts, d["contrasts"]):
            out["significant"] = c.significant
            if c.null is not None:
                out["null"]["distinguishable"] = c.null.distinguishable
        return _jsonable(d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# --- what a trial contributes -----------------------------------------------------------------------


def _last_finite(points: list[tuple[int, float]], up_to: float = math.inf) -> float | None:
    for step, value in reversed(points):
        if step <= up_to and math.isfinite(value):
            return float(value)
    return None


def _best_step(record: TrialRecord, metric: str) -> int | None:
    """Earliest step at which `metric` reached its best finite value (the early-stopping choice)."""
    points = [(s, v) for s, v in record.history.get(metric, []) if math.isfinite(v)]
    if not points:
        return None
    sign = direction(metric)
    return min(points, key=lambda sv: (-sign * sv[1], sv[0]))[0]


def _selected_value(record: TrialRecord, metric: str, selection: str, validation_metric: str) -> float | None:
    """The one number a trial contributes to `metric` under the selection rule, or None."""
    if selection == "final":
        value = record.final.get(metric)
        if value is not None and math.isfinite(value):
            return float(value)
        return _last_finite(record.history.get(metric, []))
    step = _best_step(record, validation_metric)
    return None if step is None else _last_finite(record.history.get(metric, []), up_to=step)


# --- cells --------------------------------------------------------------------------------------------


def _label(variant: dict[str, Any], names: dict[str, str]) -> str:
    return ", ".join(f"{names[a]}={show_value(v)}" for a, v in variant.items()) or "all trials"


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """Independent stream per (cell or contrast, metric): results do not depend on iteration order."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _summarise(
    metric: str, values: dict[int, float], diverged: list[int], missing: list[int], rng: np.random.Generator
) -> MetricSummary:
    x = np.array([values[s] for s in sorted(values)])
    return MetricSummary(
        metric=metric,
        n=len(x),
        mean=float(x.mean()) if len(x) else math.nan,
        sd=float(x.std(ddof=1)) if len(x) > 1 else math.nan,
        ci_t=stats.t_interval(x),
        ci_boot=stats.bootstrap_mean_interval(x, rng),
        values=dict(sorted(values.items())),
        diverged_seeds=sorted(s for s in diverged if s in values),
        missing_seeds=sorted(missing),
    )


def _cells(records, axes, metrics, selection, seed) -> list[Cell]:
    names = short_names(axes)
    groups: dict[tuple, list[TrialRecord]] = {}
    for r in records:
        if r.status not in RECORDED:
            raise ValueError(f"trial {r.trial_id}: unknown status {r.status!r}; known: {sorted(RECORDED)}")
        missing_axes = [a for a in axes if a not in r.variant]
        if missing_axes:
            raise ValueError(f"trial {r.trial_id}: variant lacks axes {missing_axes}")
        groups.setdefault((*(r.variant[a] for a in axes), r.variant.get(NULL_CONTROL_KEY)), []).append(r)
    if any(key[-1] is not None for key in groups):
        names = short_names([*axes, NULL_CONTROL_KEY])

    cells = []
    for key, group in groups.items():
        variant = dict(zip(axes, key)) | ({NULL_CONTROL_KEY: key[-1]} if key[-1] is not None else {})
        group.sort(key=lambda r: r.seed)
        cell_ids, seeds = {r.cell_id for r in group}, [r.seed for r in group]
        if len(cell_ids) > 1 or len(set(seeds)) < len(seeds):
            raise ValueError(
                f"cell {_label(variant, names)} holds cells {sorted(cell_ids)} and seeds {seeds}: "
                "`axes` must list every axis of the sweep, one trial per seed per cell"
            )
        cell_id = group[0].cell_id
        usable = [r for r in group if r.status in USABLE]
        diverged = [r.seed for r in usable if r.status == TrialStatus.DIVERGED]
        summaries = {}
        for m in metrics:
            picked = {r.seed: _selected_value(r, m, selection, metrics[0]) for r in usable}
            values = {s: v for s, v in picked.items() if v is not None}
            missing = [s for s, v in picked.items() if v is None]
            summaries[m] = _summarise(m, values, diverged, missing, _rng(seed, cell_id, m))
        cells.append(
            Cell(
                cell_id=cell_id,
                label=_label(variant, names),
                variant=variant,
                status={r.seed: r.status for r in group},
                run_ids={r.seed: r.run_id for r in group},
                metrics=summaries,
                code_versions=sorted({r.code_version for r in group}),
            )
        )
    return cells


# --- contrasts ----------------------------------------------------------------------------------------


def _contrast(
    metric: str, t_cell: Cell | None, c_cell: Cell | None, rng: np.random.Generator, **labels: Any
) -> ContrastResult:
    """Paired by seed when every usable seed has its partner; an unpaired permutation test (Welch CI) on all
    values when some do not (drops no value); no test below two values per arm."""
    vt = t_cell.metrics[metric].values if t_cell else {}
    vc = c_cell.metrics[metric].values if c_cell else {}
    paired = sorted(vt.keys() & vc.keys())
    t_only, c_only = sorted(vt.keys() - vc.keys()), sorted(vc.keys() - vt.keys())
    common: dict[str, Any] = dict(
        metric=metric,
        direction=direction(metric),
        treatment_cell=t_cell.cell_id if t_cell else None,
        control_cell=c_cell.cell_id if c_cell else None,
        paired_seeds=paired,
        treatment_only_seeds=t_only,
        control_only_seeds=c_only,
        n_treatment=len(vt),
        n_control=len(vc),
        **labels,
    )
    is_paired = not t_only and not c_only and len(paired) >= 2
    t = np.array([vt[s] for s in (paired if is_paired else sorted(vt))])
    c = np.array([vc[s] for s in (paired if is_paired else sorted(vc))])
    tested: dict[str, Any]
    if is_paired:
        d = t - c
        tested = dict(
            method="paired sign-flip",
            diff=float(d.mean()),
            ci_t=stats.t_interval(d),
            ci_boot=stats.bootstrap_mean_interval(d, rng),
            p=stats.sign_flip_test(d, rng),
            min_p=stats.min_sign_flip_p(len(d)),
            effect_size=stats.d_z(d),
            effect_size_name="d_z",
            n_higher=int(np.sum(d > 0)),
            n_lower=int(np.sum(d < 0)),
        )
    elif len(t) >= 2 and len(c) >= 2:
        tested = dict(
            method="unpaired permutation",
            diff=float(t.mean() - c.mean()),
            ci_t=stats.welch_interval(t, c),
            ci_boot=stats.bootstrap_diff_interval(t, c, rng),
            p=stats.two_sample_permutation_test(t, c, rng),
            min_p=stats.min_permutation_p(len(t), len(c)),
            effect_size=stats.d_av(t, c),
            effect_size_name="d_av",
            n_higher=None,
            n_lower=None,
        )
    else:
        nan = math.nan
        return ContrastResult(
            **common, method="none", diff=nan, ci_t=stats.NAN_INTERVAL, ci_boot=None, p=nan, min_p=nan,
            p_holm=None, effect_size=nan, effect_size_name="", prob_higher=nan, n_higher=None, n_lower=None,
            sd_ratio=nan, sd_ratio_ci=None, scale_ratio=None, scale_ratio_ci=None,
        )  # fmt: skip
    sd_ratio, sd_ratio_ci = stats.bootstrap_ratio(t, c, stats.sd, rng, paired=is_paired)
    scale_ratio, scale_ratio_ci = (None, None)
    if is_variance(metric):
        scale_ratio, scale_ratio_ci = stats.bootstrap_ratio(t, c, stats.root_mean, rng, paired=is_paired)
    return ContrastResult(
        **common,
        **tested,
        p_holm=None,
        prob_higher=stats.prob_higher(t, c, paired=is_paired),
        sd_ratio=sd_ratio,
        sd_ratio_ci=sd_ratio_ci,
        scale_ratio=scale_ratio,
        scale_ratio_ci=scale_ratio_ci,
    )


def _contrasts(cells: list[Cell], axes: list[str], contrast: tuple[str, Any, Any], metrics: list[str], seed: int):
    """One contrast per context (values of the other axes) that has a trial in either arm. An arm without
    trials (a sweep interrupted before any ran; the spec has checked that both values are on the axis) is
    tested as empty: no test, and the verdict says the arm has no trials."""
    axis, treatment, control = contrast
    names = short_names(axes)
    others = [a for a in axes if a != axis]
    arms: dict[tuple, dict[str, Cell]] = {}
    for cell in cells:
        arm = "t" if cell.variant[axis] == treatment else "c" if cell.variant[axis] == control else None
        if arm and NULL_CONTROL_KEY in cell.variant:
            arm = "n" if arm == "c" else None
        if arm:
            arms.setdefault(tuple(cell.variant[a] for a in others), {})[arm] = cell
    results = []
    for key, pair in arms.items():
        context = dict(zip(others, key))
        context_label = _label(context, names) if others else ""
        for m in metrics:
            result = _contrast(
                m, pair.get("t"), pair.get("c"), _rng(seed, context_label, m),
                confirmatory=m == metrics[0], context=context, context_label=context_label,
                treatment_label=f"{names[axis]}={show_value(treatment)}",
                control_label=f"{names[axis]}={show_value(control)}",
            )  # fmt: skip
            if "n" in pair and "c" in pair:
                result.null = _null_arm(m, pair.get("t"), pair["c"], pair["n"], _rng(seed, context_label, m, "null"))
            results.append(result)
    return results


def _null_arm(metric: str, t_cell: Cell | None, c_cell: Cell, n_cell: Cell, rng: np.random.Generator) -> NullArm:
    vt = t_cell.metrics[metric].values if t_cell else {}
    vc, vn = c_cell.metrics[metric].values, n_cell.metrics[metric].values
    seeds = sorted(vn.keys() & vc.keys())
    d = np.array([vn[s] - vc[s] for s in seeds])
    both = sorted(vt.keys() & vn.keys() & vc.keys())
    vs_null = np.array([vt[s] - vn[s] for s in both])
    return NullArm(
        cell=n_cell.cell_id, label=n_cell.label, n=len(d), diff=float(d.mean()) if len(d) else math.nan,
        sd=float(d.std(ddof=1)) if len(d) > 1 else math.nan, ci_t=stats.t_interval(d), n_vs_null=len(both),
        p_vs_null=stats.sign_flip_test(vs_null, rng) if len(both) >= 2 else math.nan,
    )  # fmt: skip


def _paired(r: ContrastResult, cells: dict[str, Cell]) -> tuple[np.ndarray, np.ndarray]:
    """(treatment, control) values of a paired contrast, seed by seed."""
    assert r.treatment_cell is not None and r.control_cell is not None  # a paired contrast has both arms
    vt, vc = (cells[cid].metrics[r.metric].values for cid in (r.treatment_cell, r.control_cell))
    return np.array([vt[s] for s in r.paired_seeds]), np.array([vc[s] for s in r.paired_seeds])


def _noise(r: ContrastResult, cells: dict[str, Cell], family_size: int, rule: AdaptiveSeeds | None) -> None:
    """Pairing efficiency, the MDE at the test's alpha, and (adaptive seeds) the anytime interval, in place."""
    if r.method != "paired sign-flip":
        return
    t, c = _paired(r, cells)
    r.correlation, r.variance_ratio = stats.pairing(t, c)
    r.mde_alpha = ALPHA / max(family_size, 1) if r.confirmatory else ALPHA
    r.mde = power.mde(float(np.std(t - c, ddof=1)), len(t), r.mde_alpha)
    if rule is not None and r.confirmatory:
        lo, hi = adaptive.interval(t - c, rule, family_size)
        r.ci_anytime = (float(lo), float(hi))


# --- entry points -------------------------------------------------------------------------------------


def compare(
    records: list[TrialRecord],
    *,
    axes: list[str],
    contrast: tuple[str, Any, Any] | None,
    metrics: list[str],
    selection: str = "final",
    seed: int = 0,
    adaptive_seeds: AdaptiveSeeds | None = None,
) -> Comparison:
    """Cells and contrasts with every statistic, Holm across the contrasts of the primary metric
    (metrics[0]). `contrast` is (axis, treatment value, control value); wording.py puts it in words."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    if len(set(metrics)) < len(metrics):
        raise ValueError(f"metrics must not repeat a metric: {metrics}")
    if selection == "best" and direction(metrics[0]) == 0:
        raise ValueError(f"selection=best picks the step by metrics[0], whose direction is unknown: {metrics[0]}")
    if contrast is not None and contrast[0] not in axes:
        raise ValueError(f"contrast axis {contrast[0]!r} is not one of the axes {axes}")
    cells = _cells(records, axes, metrics, selection, seed)
    contrasts = _contrasts(cells, axes, contrast, metrics, seed) if contrast else []
    family = [c for c in contrasts if c.confirmatory and math.isfinite(c.p)]
    for c, p in zip(family, stats.holm(np.array([c.p for c in family]))):
        c.p_holm = float(p)
    by_id = {c.cell_id: c for c in cells}
    for c in contrasts:
        _noise(c, by_id, len(family), adaptive_seeds)
    return Comparison(
        axes=list(axes),
        contrast=tuple(contrast) if contrast else None,
        metrics=list(metrics),
        selection=selection,
        seed=seed,
        cells=cells,
        contrasts=contrasts,
        family_size=len(family),
        adaptive=adaptive_seeds,
    )


def cell_summary_metrics(comparison: Comparison, cell_id: str) -> dict[str, float]:
    """The cell's aggregate as MLflow metrics (`<metric>/mean`, `/ci_low`, `/ci_high`, `/n`, t CI), names
    made MLflow-safe; non-finite numbers (e.g. the CI of a single seed) are left out rather than logged."""
    out = {}
    for m, s in comparison.cell(cell_id).metrics.items():
        name = mlflow_metric_name(m)
        for key, value in (("mean", s.mean), ("ci_low", s.ci_t[0]), ("ci_high", s.ci_t[1]), ("n", s.n)):
            if math.isfinite(value):
                out[f"{name}/{key}"] = float(value)
    return out
