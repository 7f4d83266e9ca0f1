"""compare() and the report on hand-built TrialRecords whose every statistic can be checked by hand."""
import csv
import dataclasses
import html
import io
import json
import math
import re

import numpy as np
import pytest
from rich.console import Console

from orchestrator import stats
from orchestrator.compare import cell_summary_metrics, compare
from orchestrator.records import TrialRecord
from orchestrator.report import cell_table, overview_table, print_report, to_csv, to_dict, to_json, to_markdown, write_report
from orchestrator.wording import format_value, rules, verdict, verdicts

FN, TYPE = "model.encoder.final_norm", "model.encoder.type"
ACC, LOSS, VAR = "eval/exact_accuracy", "train/lm_loss", "encoder_cross_sample_var"
METRICS = [ACC, LOSS, VAR]
CONTRAST = (FN, True, False)


def trial(variant: dict, seed: int, acc: list[float], loss: list[float], status: str = "finished") -> TrialRecord:
    """Metrics logged at steps 0, 10, 20, ...; `final` is the last logged value, NaN included."""
    history = {
        ACC: [(10 * i, a) for i, a in enumerate(acc)],
        LOSS: [(10 * i, v) for i, v in enumerate(loss)],
        VAR: [(10 * i, (0.1 if variant[FN] else 1.0) * (1 + 0.1 * seed)) for i in range(len(loss))],
    }
    cell_id = "cell-" + "-".join(str(v) for v in variant.values())
    return TrialRecord(
        trial_id=f"{cell_id}-s{seed}",
        cell_id=cell_id,
        seed=seed,
        variant=dict(variant),
        status=status,
        final={m: h[-1][1] for m, h in history.items()},
        history=history,
        run_id=f"run-{cell_id}-s{seed}",
    )


@pytest.fixture
def two_cells():
    """2 cells x 4 seeds: control seed 1 diverged (loss NaN), treatment seed 3 failed -> seed 3 unpaired."""
    t, c = {FN: True}, {FN: False}
    records = [trial(t, s, [0.1, 0.35 + 0.05 * s], [2.0, 1.0 - 0.1 * s]) for s in range(3)]
    records.append(trial(t, 3, [0.1], [2.0], status="failed"))
    records += [trial(c, s, [0.1, 0.3 + 0.05 * s], [2.0, 1.2 - 0.1 * s]) for s in (0, 2, 3)]
    records.append(trial(c, 1, [0.1, 0.2], [2.0, float("nan")], status="diverged"))
    return records


def test_cells_counts_and_diverged_rule(two_cells):
    comp = compare(two_cells, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    treat, ctrl = (comp.cell(f"cell-{v}") for v in (True, False))
    assert [c.cell_id for c in comp.cells] == ["cell-True", "cell-False"]
    assert treat.seeds("failed") == [3] and treat.metrics[ACC].n == 3
    assert ctrl.seeds("diverged") == [1] and ctrl.metrics[ACC].n == 4
    assert ctrl.metrics[ACC].diverged_seeds == [1]
    # the diverged trial enters with its last finite value: accuracy 0.2, loss 2.0 (the NaN is skipped)
    assert ctrl.metrics[ACC].values[1] == 0.2 and ctrl.metrics[LOSS].values[1] == 2.0
    acc = np.array([0.35, 0.4, 0.45])
    assert treat.metrics[ACC].mean == pytest.approx(acc.mean())
    assert treat.metrics[ACC].ci_t == pytest.approx(stats.t_interval(acc))
    assert treat.metrics[ACC].ci_boot is None  # n=3 < MIN_BOOTSTRAP_N
    assert treat.run_ids[3] == "run-cell-True-s3"


def test_incomplete_pair_uses_permutation_test_and_verdict_counts_failures(two_cells):
    comp = compare(two_cells, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    assert len(comp.contrasts) == len(METRICS)  # one context x every metric
    r = next(r for r in comp.contrasts if r.metric == ACC)
    assert r.method == "unpaired permutation" and r.control_only_seeds == [3] and r.paired_seeds == [0, 1, 2]
    t, c = np.array([0.35, 0.4, 0.45]), np.array([0.3, 0.2, 0.4, 0.45])
    assert r.diff == pytest.approx(0.0625)
    # |mean_t - mean_c| = |7 s - 2.55 * 3| / 12 for a 3-value sum s: >= 0.0625 when s >= 1.2 or s <= 0.9857,
    # which 17 of the C(7, 3) = 35 splits reach (Welch's t would say p = 0.37)
    assert r.p == pytest.approx(17 / 35) and r.min_p == pytest.approx(1 / 35)
    assert r.ci_t == pytest.approx(stats.welch_interval(t, c))
    assert comp.family_size == 1 and r.p_holm == pytest.approx(r.p)  # a family of one: Holm changes nothing
    assert "final_norm=false diverged in 1/4 seeds" in verdict(r, comp)
    assert "final_norm=true: 1 failed excluded" in verdict(r, comp)
    assert "unpaired permutation test: seeds [3] lack a partner" in verdict(r, comp)
    assert "not significant (p=0.49 after Holm)" in verdict(r, comp)
    loss = next(r for r in comp.contrasts if r.metric == LOSS)
    assert loss.method == "unpaired permutation" and loss.p_holm is None and not loss.significant
    assert verdict(loss, comp).startswith("(exploratory) final_norm=true lowers train/lm_loss by 0.375 [")
    assert "uncorrected" in verdict(loss, comp) and "significant" not in verdict(loss, comp)
    var = next(r for r in comp.contrasts if r.metric == VAR)
    assert var.scale_ratio == pytest.approx(np.sqrt(np.mean([0.1, 0.11, 0.12]) / np.mean([1.0, 1.1, 1.2, 1.3])))
    assert "improved" not in verdict(var, comp)  # unknown direction: never 'improved'


def _holm_sweep() -> list[TrialRecord]:
    """Three encoder types x final_norm x 6 seeds. Accuracy gains, in 1/64 units per seed, are
    a: 1..6 (exact p = 2/64), b: -1,2..6 (4/64), c: -3,1,2,4,5,6 (10/64); loss drops by (seed+1)/64 in
    every type, so each loss contrast has the smallest p of all (2/64)."""
    gains = {"a": [1, 2, 3, 4, 5, 6], "b": [-1, 2, 3, 4, 5, 6], "c": [-3, 1, 2, 4, 5, 6]}
    records = []
    for kind, ks in gains.items():
        for s, k in enumerate(ks):
            records.append(trial({FN: True, TYPE: kind}, s, [0.25 + k / 64], [1.0 - (s + 1) / 64]))
            records.append(trial({FN: False, TYPE: kind}, s, [0.25], [1.0]))
    return records


def test_holm_family_is_the_primary_metrics_contrasts():
    comp = compare(_holm_sweep(), axes=[FN, TYPE], contrast=CONTRAST, metrics=[ACC, LOSS])
    acc = {r.context[TYPE]: r for r in comp.contrasts if r.metric == ACC}
    assert {k: r.p for k, r in acc.items()} == pytest.approx({"a": 2 / 64, "b": 4 / 64, "c": 10 / 64})
    # Holm over the 3 accuracy tests: 3 x 2/64 = 0.09375, 2 x 4/64 = 0.125, 1 x 10/64 = 0.15625 (already
    # monotone). Were the 3 loss tests in the family, a's would be 6 x 2/64 = 0.1875.
    assert {k: r.p_holm for k, r in acc.items()} == pytest.approx({"a": 0.09375, "b": 0.125, "c": 0.15625})
    assert comp.family_size == 3 and all(r.confirmatory for r in acc.values())
    assert "not significant (p=0.094 after Holm)" in verdict(acc["a"], comp)
    for loss in (r for r in comp.contrasts if r.metric == LOSS):
        assert not loss.confirmatory and loss.p == pytest.approx(2 / 64) and loss.p_holm is None
        assert not loss.significant  # raw p < 0.05, but exploratory
        assert f"(exploratory) final_norm=true lowers {LOSS} by " in verdict(loss, comp)
        assert "p=0.031 uncorrected, 6/6 seeds improved" in verdict(loss, comp) and "significant" not in verdict(loss, comp)
    assert rules(comp)["holm"].startswith(f"Primary (confirmatory) metric: {ACC}, the first metric listed. ")
    assert "one per contrast (family size 3)" in rules(comp)["holm"] and f"({LOSS}) are exploratory" in rules(comp)["holm"]
    md = to_markdown(comp)
    assert md.index(f"## Verdicts: {ACC} (primary, Holm-corrected)") < md.index("## Exploratory verdicts")
    assert md.count("| exploratory, not corrected |") == 3  # the loss table's p (Holm) column

    # the order of `metrics` decides: loss first makes it the family, accuracy exploratory
    swapped = compare(_holm_sweep(), axes=[FN, TYPE], contrast=CONTRAST, metrics=[LOSS, ACC])
    assert [r.p_holm for r in swapped.contrasts if r.metric == LOSS] == pytest.approx([0.09375] * 3)
    assert all(r.p_holm is None for r in swapped.contrasts if r.metric == ACC)


def _grid(seeds: int, effect: float) -> list[TrialRecord]:
    """Two encoder types x final_norm, all finished; the fix adds `effect` accuracy in every seed."""
    rng = np.random.default_rng(5)
    records = []
    for kind in ("standard", "hybrid"):
        for s in range(seeds):
            base, noise = 0.3 + 0.02 * s, rng.normal(0, 0.01, 2)
            for fn, bonus in ((True, effect), (False, 0.0)):
                acc = base + bonus + noise[int(fn)]
                records.append(trial({FN: fn, TYPE: kind}, s, [0.1, acc - 0.05, acc], [2.0, 1.5, 1.0 - bonus]))
    return records


def test_paired_contrast_significant_and_not():
    comp = compare(_grid(8, 0.125), axes=[FN, TYPE], contrast=CONTRAST, metrics=[ACC, LOSS])
    assert len(comp.cells) == 4 and len(comp.contrasts) == 4
    r = next(r for r in comp.contrasts if r.metric == ACC and r.context == {TYPE: "standard"})
    assert r.method == "paired sign-flip" and r.paired_seeds == list(range(8))
    assert r.p == pytest.approx(2 / 256) and r.p_holm == pytest.approx(2 * 2 / 256)  # family: 2 accuracy tests
    assert r.n_higher == 8 and r.prob_higher == 1.0
    assert verdict(r, comp).startswith("[type=standard] final_norm=true raises eval/exact_accuracy by 12.")
    assert " points [" in verdict(r, comp) and "after Holm, 8/8 seeds improved" in verdict(r, comp)
    loss = next(r for r in comp.contrasts if r.metric == LOSS and r.context == {TYPE: "hybrid"})
    assert verdict(loss, comp).startswith("[type=hybrid] (exploratory) final_norm=true lowers train/lm_loss by 0.125 [")
    assert "p=0.0078 uncorrected, 8/8 seeds improved" in verdict(loss, comp) and "significant" not in verdict(loss, comp)

    few = compare(_grid(4, 0.125), axes=[FN, TYPE], contrast=CONTRAST, metrics=[ACC])
    r = few.contrasts[0]
    assert r.p == 0.125 and "not significant" in verdict(r, few)
    assert "4 pairs cannot give p below 0.125" in verdict(r, few)


def test_an_arm_without_trials_is_reported_not_an_error():
    """A sweep interrupted before any control trial ran: the contrast is there, untested, and says why."""
    treated_only = [r for r in _grid(3, 0.1) if r.variant[FN]]
    comp = compare(treated_only, axes=[FN, TYPE], contrast=CONTRAST, metrics=[ACC])
    assert len(comp.cells) == 2 and len(comp.contrasts) == 2 and comp.family_size == 0
    for r in comp.contrasts:
        assert r.method == "none" and (r.n_treatment, r.n_control) == (3, 0) and r.control_cell is None
        assert "no test" in verdict(r, comp) and "final_norm=false has no trials" in verdict(r, comp)


def test_best_selection_uses_step_of_best_validation():
    rec = trial({FN: True}, 0, [0.1, 0.6, 0.4], [2.0, 1.5, 1.0])
    comp = compare([rec], axes=[FN], contrast=None, metrics=[ACC, LOSS], selection="best")
    m = comp.cells[0].metrics
    assert m[ACC].values == {0: 0.6} and m[LOSS].values == {0: 1.5}
    assert "optimistic" in rules(comp)["selection"].lower()
    assert compare([rec], axes=[FN], contrast=None, metrics=[ACC]).cells[0].metrics[ACC].values == {0: 0.4}


def test_invalid_input_is_named():
    recs = _grid(2, 0.1)
    with pytest.raises(ValueError, match="every axis"):
        compare(recs, axes=[FN], contrast=CONTRAST, metrics=[ACC])  # the type axis left out: seeds repeat
    with pytest.raises(ValueError, match="repeat"):
        compare(recs, axes=[FN, TYPE], contrast=CONTRAST, metrics=[ACC, LOSS, ACC])  # would double the family
    with pytest.raises(ValueError, match="selection"):
        compare(recs, axes=[FN, TYPE], contrast=None, metrics=[ACC], selection="last")


def test_json_round_trip_and_summary_metrics(two_cells):
    comp = compare(two_cells, axes=[FN], contrast=CONTRAST, metrics=METRICS + ["ARC/pass@1"])
    data = to_dict(comp)
    assert json.loads(to_json(comp)) == data  # strict JSON: NaN became null
    assert "verdict" not in json.dumps(comp.to_dict())  # the numbers alone; words come from wording.py
    assert len(data["cells"]) == 2 and len(data["contrasts"]) == 4 and data["verdicts"] == verdicts(comp)
    assert set(data["rules"]) >= {"selection", "diverged", "excluded", "test", "holm", "intervals"}
    summary = cell_summary_metrics(comp, "cell-False")
    assert summary[f"{ACC}/n"] == 4 and summary[f"{ACC}/mean"] == pytest.approx(0.3375)
    assert summary["ARC/pass_at_1/n"] == 0 and "ARC/pass_at_1/mean" not in summary
    assert all(re.fullmatch(r"[/\w.\- :]+", k) for k in summary)


def test_renderers_and_write_report(two_cells, tmp_path):
    comp = compare(two_cells, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    rows = list(csv.DictReader(io.StringIO(to_csv(comp))))
    assert len(rows) == 2 * len(METRICS)
    row = next(r for r in rows if r["cell_id"] == "cell-False" and r["metric"] == ACC)
    assert (row["n"], row["diverged_in_n"], row["failed"]) == ("4", "1", "0")
    assert verdicts(comp)[0] in to_markdown(comp)
    console = Console(record=True, width=300)
    print_report(comp, console)
    assert verdicts(comp)[0] in console.export_text()

    paths = write_report(comp, two_cells, tmp_path)
    expected = {"report.html", "report.md", "cells.csv", "comparison.json", "curves_eval_exact_accuracy.png",
                "paired_eval_exact_accuracy.png", "curves_encoder_cross_sample_var.png"}  # fmt: skip
    assert expected <= set(paths) and all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    assert all(p.read_bytes().startswith(b"\x89PNG") for n, p in paths.items() if n.endswith(".png"))
    page = paths["report.html"].read_text()
    assert html.escape(verdicts(comp)[0]) in page
    assert page.count("data:image/png;base64,") == sum(n.endswith(".png") for n in paths)
    assert "<script" not in page and "src=\"http" not in page  # self-contained
    assert json.loads(paths["comparison.json"].read_text()) == to_dict(comp)
    assert not any(math.isnan(float(r["mean"])) for r in rows)


def test_learning_curve_of_a_metric_logged_once_is_visible():
    """Eval only at the last step is common (eval_every = steps): one point per variant, drawn as a marker."""
    from orchestrator.plots import learning_curves

    records = [trial({FN: fn}, s, [0.2 + 0.1 * s], [1.0]) for fn in (True, False) for s in range(2)]
    comp = compare(records, axes=[FN], contrast=CONTRAST, metrics=[ACC])
    lines = [line for line in learning_curves(comp, records, ACC).axes[0].lines if "n=2" in line.get_label()]
    assert len(lines) == 2 and all(line.get_marker() == "o" for line in lines)


def test_stopped_trials_are_excluded_and_counted_in_the_cell_table_and_csv(two_cells):
    """ASHA's stopped trials leave the statistics, as failed and running ones do, and are counted as such."""
    records = two_cells + [trial({FN: True}, 4, [0.1], [2.0], status="stopped"),
                           trial({FN: False}, 4, [0.1], [2.0], status="running")]
    comp = compare(records, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    treat = comp.cell("cell-True")
    assert treat.seeds("stopped") == [4] and treat.metrics[ACC].n == 3
    headers, rows = cell_table(comp, ACC)
    excluded = dict(zip([r[0] for r in rows], [r[headers.index("excluded")] for r in rows]))
    assert excluded == {"final_norm=true": "1 failed, 1 stopped", "final_norm=false": "1 running"}
    table = list(csv.DictReader(io.StringIO(to_csv(comp))))
    got = {(r["cell_id"], r["metric"]): (r["failed"], r["running"], r["stopped"], r["trials"]) for r in table}
    assert got[("cell-True", ACC)] == ("1", "0", "1", "5")
    assert got[("cell-False", ACC)] == ("0", "1", "0", "5")


def test_overview_puts_every_metric_of_a_cell_side_by_side(two_cells):
    """The scale-free variance, the max gradient norm and the spike count are read together, per cell."""
    comp = compare(two_cells, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    headers, rows = overview_table(comp)
    assert headers == ["cell", "n", *METRICS]
    by_label = {row[0]: row for row in rows}
    for cell in comp.cells:
        row = by_label[cell.label]
        assert row[2:] == [format_value(m, cell.metrics[m].mean) for m in METRICS]
        assert row[2].endswith("%")  # an accuracy, in its display unit
    console = Console(record=True, width=300)
    print_report(comp, console)
    assert "all metrics: mean over seeds per cell" in console.export_text()
    assert "| " + " | ".join(rows[0]) + " |" in to_markdown(comp)


def test_runs_of_different_code_versions_are_flagged_in_every_verdict_they_touch(two_cells):
    same = compare(two_cells, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    assert not any("code versions" in v for v in verdicts(same))
    sha_a, sha_b = "a" * 40, "b" * 39 + "c"
    mixed = [dataclasses.replace(r, code_version=sha_b + "-dirty" if r.seed == 0 and r.variant[FN] else sha_a)
             for r in two_cells]
    comp = compare(mixed, axes=[FN], contrast=CONTRAST, metrics=METRICS)
    assert comp.cell("cell-True").code_versions == [sha_a, sha_b + "-dirty"]
    assert all(f"runs from 2 code versions ({'a' * 10}, {'b' * 10}-dirty)" in v for v in verdicts(comp)), verdicts(comp)


NULL = "model.init_jitter"


def _null_sweep(t_acc: list[float], c_acc: list[float], n_acc: list[float]) -> list[TrialRecord]:
    """final_norm true / false plus the null arm (the control again with init_jitter=1), one value per seed."""
    arms = (({FN: True}, t_acc), ({FN: False}, c_acc), ({FN: False, NULL: 1}, n_acc))
    return [trial(variant, s, [a], [1.0 - a]) for variant, accs in arms for s, a in enumerate(accs)]


# the arms of a seed move apart independently: the chaotic regime of issue 10
T_IND = [0.55, 0.20, 0.45, 0.30, 0.60, 0.25, 0.50, 0.35]
C_IND = [0.25, 0.50, 0.30, 0.45, 0.20, 0.55, 0.35, 0.40]
N_IND = [0.40, 0.30, 0.55, 0.20, 0.45, 0.35, 0.25, 0.50]


def test_null_arm_pairing_and_mde_when_pairing_does_not_help():
    from orchestrator import power
    from orchestrator.wording import noise

    comp = compare(_null_sweep(T_IND, C_IND, N_IND), axes=[FN], contrast=CONTRAST, metrics=[ACC, LOSS])
    assert len(comp.cells) == 3 and len(comp.contrasts) == 2 and comp.family_size == 1  # the null arm: no contrast
    null_cell = next(c for c in comp.cells if NULL in c.variant)
    assert null_cell.label == "final_norm=false, init_jitter=1"
    r = next(r for r in comp.contrasts if r.metric == ACC)
    t, c, n = map(np.array, (T_IND, C_IND, N_IND))
    assert r.null.cell == null_cell.cell_id and r.null.n == 8 and r.null.n_vs_null == 8
    assert r.null.diff == pytest.approx(np.mean(n - c)) and r.null.sd == pytest.approx(np.std(n - c, ddof=1))
    assert r.null.p_vs_null == pytest.approx(stats.sign_flip_test(t - n, np.random.default_rng(0)))
    assert (r.correlation, r.variance_ratio) == pytest.approx(stats.pairing(t, c))
    assert r.correlation < 0 and r.variance_ratio > 1
    assert r.mde == pytest.approx(power.mde(np.std(t - c, ddof=1), 8, 0.05)) and r.mde_alpha == 0.05

    said = verdict(r, comp)
    sd = f"{100 * r.null.sd:.1f}"
    ratio = f"{abs(r.diff) / r.null.sd:.3g}"
    assert f"the null arm differs from the control by SD {sd} points per seed (the effect is {ratio} times that): " \
           "the effect is not distinguishable from the noise floor" in said
    few = compare(_null_sweep(T_IND[:3], C_IND[:3], N_IND[:3]), axes=[FN], contrast=CONTRAST, metrics=[ACC])
    assert "3 seeds are too few to test the effect against it (p cannot go below 0.25)" in verdict(few.contrasts[0], few)
    words = noise(r)
    assert words.startswith("eval/exact_accuracy: pairing did not help: the arms of a seed correlate r=-")
    assert f"8 pairs detect a difference of {100 * r.mde:.1f} points with 80% power" in words
    assert "null arm (final_norm=false, init_jitter=1) - control" in words

    data = to_dict(comp)
    out = data["contrasts"][0]
    assert out["null"]["sd"] == pytest.approx(r.null.sd) and out["null"]["distinguishable"] is False
    assert out["correlation"] == pytest.approx(r.correlation) and out["noise"] == words
    assert "null arm" in data["rules"]["noise"].lower()
    console = Console(record=True, width=2000)
    print_report(comp, console)
    text = console.export_text()
    assert "Noise: did pairing help" in text and words in text and "null SD" in text
    assert "null SD" in to_markdown(comp) and words in to_markdown(comp)


def test_null_arm_when_pairing_helps_and_the_effect_stands_out():
    from orchestrator.wording import noise

    offset = [0.1 * k for k in (3, 1, 4, 1, 5, 9, 2, 6)]  # seeds differ a lot, arms of a seed move together
    wobble = [0.004, -0.003, 0.002, -0.001, 0.003, -0.004, 0.001, -0.002]
    c = [o + w for o, w in zip(offset, wobble)]
    n = [o - w for o, w in zip(offset, wobble)]
    t = [o + 0.05 + w / 2 for o, w in zip(offset, wobble)]
    comp = compare(_null_sweep(t, c, n), axes=[FN], contrast=CONTRAST, metrics=[ACC])
    r = comp.contrasts[0]
    assert r.variance_ratio < 0.01 and r.correlation > 0.99
    assert r.null.p_vs_null == pytest.approx(2 / 256) and r.null.distinguishable
    assert "the effect is distinguishable from the noise floor" in verdict(r, comp)
    assert noise(r).startswith("eval/exact_accuracy: pairing helped: ")


def test_adaptive_seeds_quote_the_anytime_interval():
    from orchestrator import adaptive
    from orchestrator.spec import AdaptiveSeeds

    rule = AdaptiveSeeds(min=4, max=8, step=2, half_width=0.01)
    records = _grid(8, 0.125)
    comp = compare(records, axes=[FN, TYPE], contrast=CONTRAST, metrics=[ACC], adaptive_seeds=rule)
    r = next(r for r in comp.contrasts if r.context == {TYPE: "standard"})
    t, c = (np.array(list(comp.cell(cid).metrics[ACC].values.values())) for cid in (r.treatment_cell, r.control_cell))
    assert r.ci_anytime == pytest.approx(tuple(adaptive.interval(t - c, rule, 2)))
    assert r.ci_anytime[0] < r.ci_t[0] and r.significant  # wider than the fixed-n interval, still above 0
    assert "anytime-valid CI [" in verdict(r, comp) and "adaptive" in rules(comp)
    assert to_dict(comp)["adaptive"]["half_width"] == 0.01
