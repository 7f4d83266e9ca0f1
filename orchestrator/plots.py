"""The report's figures, as PNG bytes: learning curves per variant and paired per-seed dots per contrast.

Built on matplotlib.figure.Figure with the Agg canvas, never pyplot: no global state, safe off the main
thread and without a display.
"""
from __future__ import annotations

import io
import math
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from etrm.status import USABLE, TrialStatus
from orchestrator.compare import Cell, Comparison
from orchestrator.records import TrialRecord
from orchestrator.wording import is_fraction, p_text

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
BETTER, WORSE, NEUTRAL = "#2ca02c", "#d62728", "#7f7f7f"
CURVES_CAPTION = (
    "Line: mean over seeds (finished and diverged trials); band: min-max over seeds; "
    "x: last finite value of a diverged trial."
)
PAIRED_CAPTION = (
    "One line per seed joins its control and treatment values (the selected value per trial); "
    "green: treatment better, red: worse, grey: tie or no known direction; x: diverged trial."
)


PLOT_KINDS = ("curves", "paired")


def plot_name(kind: str, metric: str) -> str:
    """File name of one figure: `curves_eval_exact_accuracy.png`."""
    return f"{kind}_{re.sub(r'[^A-Za-z0-9]+', '_', metric).strip('_')}.png"


def _facets(comparison: Comparison) -> list[tuple[str, list[tuple[str, Cell]]]]:
    """One panel per combination of the non-contrast axes (control then treatment), or one for all cells."""
    if comparison.contrast is None:
        return [("", [(c.label, c) for c in comparison.cells])]
    facets: dict[str, list[tuple[str, str | None]]] = {}
    for r in comparison.contrasts:
        facets.setdefault(r.context_label, [(r.control_label, r.control_cell), (r.treatment_label, r.treatment_cell)])
    return [(title, [(label, comparison.cell(cid)) for label, cid in arms if cid]) for title, arms in facets.items()]


def _grid(n: int) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _style_y(ax, metric: str, values: np.ndarray) -> None:
    """Fractions as %, and a log axis when a positive metric spans two orders of magnitude."""
    if is_fraction(metric):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif len(values) and values.min() > 0 and values.max() > 100 * values.min():
        ax.set_yscale("log")
    ax.set_ylabel(metric)


def learning_curves(comparison: Comparison, records: list[TrialRecord], metric: str) -> Figure | None:
    """Mean and min-max band over seeds of `metric` against step, one line per variant; None without history."""
    by_trial = {(r.cell_id, r.seed): r for r in records}
    facets = _facets(comparison)
    fig, axes = _grid(len(facets))
    plotted = False
    for ax, (title, arms) in zip(axes, facets):
        shown = []
        for colour, (label, cell) in zip(COLOURS, arms):
            runs = [by_trial[(cell.cell_id, s)] for s, st in cell.status.items() if st in USABLE]
            curves = [np.array([(s, v) for s, v in r.history.get(metric, []) if math.isfinite(v)]) for r in runs]
            kept = [(r, c) for r, c in zip(runs, curves) if len(c)]
            if not kept:
                continue
            steps = np.unique(np.concatenate([c[:, 0] for _, c in kept]))
            table = np.full((len(kept), len(steps)), np.nan)
            for row, (_, c) in zip(table, kept):
                row[np.searchsorted(steps, c[:, 0])] = c[:, 1]
            ax.plot(steps, np.nanmean(table, axis=0), color=colour, label=f"{label} (n={len(kept)})",
                    marker="o" if len(steps) == 1 else None)  # one step (eval at the end only): a line is invisible
            ax.fill_between(steps, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color=colour, alpha=0.2)
            for r, c in kept:
                if r.status == TrialStatus.DIVERGED:
                    ax.plot(*c[-1], "x", color=colour, markersize=9, mew=2)
            shown.append(table[np.isfinite(table)])
        if shown:
            plotted = True
            _style_y(ax, metric, np.concatenate(shown))
            ax.legend(fontsize=8)
        ax.set_title(title or metric, fontsize=10)
        ax.set_xlabel("step")
    return fig if plotted else None


def paired_dots(comparison: Comparison, metric: str) -> Figure | None:
    """Control vs treatment per seed, lines joining each seed's pair; None when there is no contrast."""
    results = [r for r in comparison.contrasts if r.metric == metric and r.n_treatment + r.n_control]
    if not results:
        return None
    fig, axes = _grid(len(results))
    for ax, r in zip(axes, results):
        arms = [comparison.cell(cid).metrics[metric] if cid else None for cid in (r.control_cell, r.treatment_cell)]
        values = [a.values if a else {} for a in arms]
        diverged = [set(a.diverged_seeds) if a else set() for a in arms]
        for seed in sorted(values[0].keys() | values[1].keys()):
            if seed in values[0] and seed in values[1]:
                d = values[1][seed] - values[0][seed]
                colour = NEUTRAL if d == 0 or not r.direction else BETTER if d * r.direction > 0 else WORSE
                ax.plot([0, 1], [values[0][seed], values[1][seed]], color=colour, alpha=0.7)
            for x in (0, 1):
                if seed in values[x]:
                    marker = "x" if seed in diverged[x] else "o"
                    ax.plot(x, values[x][seed], marker, color="black", markersize=6)
        ax.set_xticks([0, 1], [r.control_label, r.treatment_label])
        ax.set_xlim(-0.4, 1.4)
        _style_y(ax, metric, np.array([v for vs in values for v in vs.values()]))
        role = "" if r.confirmatory else " (exploratory)"
        ax.set_title(f"{r.context_label + ': ' if r.context_label else ''}{r.method}, {p_text(r)}{role}", fontsize=10)
    return fig


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def render_plots(comparison: Comparison, records: list[TrialRecord]) -> dict[str, tuple[bytes, str]]:
    """File name -> (PNG bytes, caption), for every requested metric that has data to draw."""
    out: dict[str, tuple[bytes, str]] = {}
    for metric in comparison.metrics:
        figures = [
            (plot_name("curves", metric), learning_curves(comparison, records, metric), CURVES_CAPTION),
            (plot_name("paired", metric), paired_dots(comparison, metric), PAIRED_CAPTION),
        ]
        out |= {name: (png(fig), caption) for name, fig, caption in figures if fig is not None}
    return out
