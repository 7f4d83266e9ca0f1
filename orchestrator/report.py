"""Render a Comparison: terminal (rich), Markdown, CSV, JSON and one self-contained HTML file.

Every table is built once (`cell_table`, `contrast_table`) and only dressed differently per format, so
the terminal, the Markdown and the HTML always show the same numbers.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from etrm.status import EXCLUDED, USABLE
from orchestrator.compare import Cell, Comparison, ContrastResult
from orchestrator.plots import PLOT_KINDS, plot_name, render_plots
from orchestrator.records import TrialRecord
from orchestrator.wording import format_interval, format_ratio, format_value, noise, rules, verdict, verdicts

TITLE = "Sweep comparison"
# terminal styles of verdicts
TONES = {"better": "green", "worse": "red", "changed": "yellow", "ns": "dim", "exploratory": "dim italic"}
NOT_CORRECTED = "exploratory, not corrected"  # the p (Holm) cell of a metric outside the Holm family


def _tone(r: ContrastResult) -> str:
    """Exploratory, or significant and better / worse, significant with no known direction, or not significant."""
    if not r.confirmatory:
        return "exploratory"
    if not r.significant:
        return "ns"
    return "changed" if not r.direction else "better" if r.diff * r.direction > 0 else "worse"


def _role(comparison: Comparison, metric: str) -> str:
    return "primary, Holm-corrected" if metric == comparison.primary else "exploratory, p not corrected"


def _verdict_groups(comparison: Comparison) -> list[tuple[str, list[tuple[ContrastResult, str]]]]:
    """The primary metric's verdicts, then the exploratory ones under their own heading: (result, sentence)."""
    groups = [
        (f"Verdicts: {comparison.primary} ({_role(comparison, comparison.primary)})",
         [(r, verdict(r, comparison)) for r in comparison.contrasts if r.confirmatory]),
        ("Exploratory verdicts (p not corrected for multiple testing)",
         [(r, verdict(r, comparison)) for r in comparison.contrasts if not r.confirmatory]),
    ]  # fmt: skip
    return [(title, results) for title, results in groups if results]


def _excluded(cell: Cell, metric: str) -> str:
    parts = [f"{len(cell.seeds(s))} {s}" for s in EXCLUDED if cell.seeds(s)]
    missing = cell.metrics[metric].missing_seeds
    return ", ".join(parts + ([f"{len(missing)} no value"] if missing else [])) or "-"


def cell_table(comparison: Comparison, metric: str) -> tuple[list[str], list[list[str]]]:
    headers = ["cell", "n", "mean", "sd", "95% CI (t)", "95% CI (bootstrap)", "diverged (in n)", "excluded"]
    rows = []
    for cell in comparison.cells:
        s = cell.metrics[metric]
        rows.append([
            cell.label, str(s.n), format_value(metric, s.mean), format_value(metric, s.sd),
            format_interval(metric, s.ci_t), format_interval(metric, s.ci_boot),
            f"{len(s.diverged_seeds)}/{len(cell.status)}", _excluded(cell, metric),
        ])  # fmt: skip
    return headers, rows


def overview_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Every metric's mean per cell side by side (e.g. the scale-free variance next to the max gradient norm and
    the spike count), each in its display unit; n is the trials that entered (finished or diverged)."""
    headers = ["cell", "n", *comparison.metrics]
    rows = []
    for cell in comparison.cells:
        n = sum(len(cell.seeds(s)) for s in USABLE)
        rows.append([cell.label, str(n), *(format_value(m, cell.metrics[m].mean) for m in comparison.metrics)])
    return headers, rows


def contrast_table(comparison: Comparison, metric: str) -> tuple[list[str], list[list[str]]]:
    headers = [
        "context", "test", "n (t/c)", "difference", "95% CI (t)", "95% CI (bootstrap)", "p", "p (Holm)",
        "effect size", "P(t > c)", "SD ratio t/c", "scale ratio",
    ]  # fmt: skip
    rows = []
    for r in comparison.contrasts:
        if r.metric != metric:
            continue
        rows.append([
            r.context_label or "-", r.method, f"{r.n_treatment}/{r.n_control}",
            format_value(metric, r.diff, diff=True), format_interval(metric, r.ci_t, diff=True),
            format_interval(metric, r.ci_boot, diff=True), format_value("", r.p),
            format_value("", r.p_holm) if r.confirmatory else NOT_CORRECTED,
            f"{r.effect_size_name} {format_value('', r.effect_size)}".strip(),
            format_value("", r.prob_higher), format_ratio(r.sd_ratio, r.sd_ratio_ci),
            format_ratio(r.scale_ratio, r.scale_ratio_ci) if r.scale_ratio is not None else "-",
        ])  # fmt: skip
    return headers, rows


def noise_table(comparison: Comparison, metric: str) -> tuple[list[str], list[list[str]]]:
    """Per paired contrast: did pairing help, what could this sweep detect, and the null arm's spread."""
    headers = ["context", "pairing r", "var paired/unpaired", "MDE (80% power)", "null - control", "null SD",
               "p (t vs null)"]
    if comparison.adaptive is not None:
        headers.append("anytime-valid CI")
    rows = []
    for r in comparison.contrasts:
        if r.metric != metric or r.correlation is None:
            continue
        a = r.null
        row = [
            r.context_label or "-", format_value("", r.correlation), format_value("", r.variance_ratio),
            format_value(metric, r.mde, diff=True).lstrip("+"),
            format_value(metric, a.diff, diff=True) if a else "-",
            format_value(metric, a.sd, diff=True).lstrip("+") if a else "-",
            format_value("", a.p_vs_null) if a else "-",
        ]  # fmt: skip
        if comparison.adaptive is not None:
            row.append(format_interval(metric, r.ci_anytime, diff=True) if r.ci_anytime else "-")
        rows.append(row)
    return headers, rows


def _noise_lines(comparison: Comparison) -> list[str]:
    """The primary metric's noise sentences (pairing, MDE, null arm); the other metrics' are in the tables."""
    return [text for r in comparison.contrasts if r.confirmatory and (text := noise(r))]


NOISE_TITLE = "Noise: did pairing help, what could these seeds detect, the null arm"


def _header(comparison: Comparison) -> str:
    c = comparison.contrast
    what = f"contrast {c[0]}: {c[1]!r} (treatment) vs {c[2]!r} (control)" if c else "no contrast"
    return f"axes {', '.join(comparison.axes)}; {what}; selection '{comparison.selection}'; seed {comparison.seed}"


def print_report(comparison: Comparison, console: Console) -> None:
    console.rule(f"[bold]{TITLE}")
    console.print(_header(comparison))
    for metric in comparison.metrics:
        tables = {"cells": cell_table(comparison, metric), "contrasts": contrast_table(comparison, metric),
                  "noise": noise_table(comparison, metric)}
        for title, (headers, rows) in tables.items():
            if not rows:
                continue
            role = f" ({_role(comparison, metric)})" if title != "cells" else ""
            table = Table(title=f"{metric}: {title}{role}", title_justify="left")
            for h in headers:
                table.add_column(h, overflow="fold")
            for row in rows:
                table.add_row(*row)
            console.print(table)
    table = Table(title="all metrics: mean over seeds per cell", title_justify="left")
    headers, rows = overview_table(comparison)
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for title, results in _verdict_groups(comparison):
        console.rule(title)
        for r, sentence in results:
            console.print(Text(sentence, style=TONES[_tone(r)]))
    if lines := _noise_lines(comparison):
        console.rule(NOISE_TITLE)
        for line in lines:
            console.print(line)
    console.rule("how the numbers were made")
    for key, text in rules(comparison).items():
        console.print(Text.assemble((key, "bold"), f": {text}"))


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, row)) + " |" for row in rows])


def to_markdown(comparison: Comparison) -> str:
    out = [f"# {TITLE}", "", _header(comparison), ""]
    out += ["## All metrics: mean over seeds per cell", "", _md_table(*overview_table(comparison)), ""]
    for title, results in _verdict_groups(comparison):
        out += [f"## {title}", "", *(f"- {sentence}" for _, sentence in results), ""]
    if lines := _noise_lines(comparison):
        out += [f"## {NOISE_TITLE}", "", *(f"- {line}" for line in lines), ""]
    out += ["## How the numbers were made", "", *(f"- **{k}**: {v}" for k, v in rules(comparison).items()), ""]
    for metric in comparison.metrics:
        out += [f"## {metric}", "", "### Cells", "", _md_table(*cell_table(comparison, metric)), ""]
        headers, rows = contrast_table(comparison, metric)
        if rows:
            title = f"### Contrasts (treatment - control; {_role(comparison, metric)})"
            out += [title, "", _md_table(headers, rows), ""]
        headers, rows = noise_table(comparison, metric)
        if rows:
            out += ["### Noise", "", _md_table(headers, rows), ""]
    return "\n".join(out)


def to_csv(comparison: Comparison) -> str:
    """One row per cell per metric, raw numbers (no rounding) for anyone who wants to recompute."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([
        "cell_id", *comparison.axes, "metric", "selection", "n", "mean", "sd", "ci_low", "ci_high",
        "boot_low", "boot_high", "trials", "diverged_in_n", *EXCLUDED, "no_value", "values", "run_ids",
    ])  # fmt: skip
    for cell in comparison.cells:
        for metric, s in cell.metrics.items():
            boot = s.ci_boot or ("", "")
            writer.writerow([
                cell.cell_id, *cell.variant.values(), metric, comparison.selection, s.n, s.mean, s.sd, *s.ci_t,
                *boot, len(cell.status), len(s.diverged_seeds), *(len(cell.seeds(st)) for st in EXCLUDED),
                len(s.missing_seeds), json.dumps(s.values), json.dumps(cell.run_ids),
            ])  # fmt: skip
    return buffer.getvalue()


def to_dict(comparison: Comparison) -> dict:
    """comparison.json: every number (Comparison.to_dict) with its words: a verdict per contrast, the rules."""
    d = comparison.to_dict()
    sentences = verdicts(comparison)
    for out, sentence, r in zip(d["contrasts"], sentences, comparison.contrasts):
        out["verdict"], out["noise"] = sentence, noise(r)
    return d | {"verdicts": sentences, "rules": rules(comparison)}


def to_json(comparison: Comparison) -> str:
    return json.dumps(to_dict(comparison), indent=2, allow_nan=False)


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
li.better { color: #0a6b1f; } li.worse { color: #a4161a; } li.changed { color: #8a5a00; } li.ns { color: #555; }
li.exploratory { color: #555; font-style: italic; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 12px; } img { max-width: 100%; }
"""


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(comparison: Comparison, plots: dict[str, tuple[bytes, str]]) -> str:
    e = html.escape
    parts = [f"<h1>{TITLE}</h1><p>{e(_header(comparison))}</p>"]
    parts.append(f"<h2>All metrics: mean over seeds per cell</h2>{_html_table(*overview_table(comparison))}")
    for title, results in _verdict_groups(comparison):
        items = "".join(f'<li class="{_tone(r)}">{e(sentence)}</li>' for r, sentence in results)
        parts.append(f"<h2>{e(title)}</h2><ul>{items}</ul>")
    if lines := _noise_lines(comparison):
        parts.append(f"<h2>{e(NOISE_TITLE)}</h2><ul>{''.join(f'<li>{e(line)}</li>' for line in lines)}</ul>")
    said = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in rules(comparison).items())
    parts.append(f"<h2>How the numbers were made</h2><ul>{said}</ul>")
    for metric in comparison.metrics:
        parts.append(f"<h2>{e(metric)}</h2><h3>Cells</h3>{_html_table(*cell_table(comparison, metric))}")
        headers, rows = contrast_table(comparison, metric)
        if rows:
            role = e(_role(comparison, metric))
            parts.append(f"<h3>Contrasts (treatment - control; {role})</h3>{_html_table(headers, rows)}")
        headers, rows = noise_table(comparison, metric)
        if rows:
            parts.append(f"<h3>Noise</h3>{_html_table(headers, rows)}")
        for name in (plot_name(kind, metric) for kind in PLOT_KINDS):
            if name in plots:
                data, caption = plots[name]
                src = "data:image/png;base64," + base64.b64encode(data).decode()
                parts.append(f'<figure><img alt="{e(name)}" src="{src}"><figcaption>{e(caption)}</figcaption></figure>')
    body = "\n".join(parts)
    head = f'<meta charset="utf-8"><title>{TITLE}</title><style>{CSS}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


def to_html(comparison: Comparison, records: list[TrialRecord]) -> str:
    """One file a reviewer can open anywhere (MLflow artifact view included): plots embedded as base64 PNG."""
    return _html(comparison, render_plots(comparison, records))


def write_report(comparison: Comparison, records: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
    """Write report.html, report.md, cells.csv, comparison.json and the PNGs; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = render_plots(comparison, records)
    texts = {
        "report.html": _html(comparison, plots),
        "report.md": to_markdown(comparison),
        "cells.csv": to_csv(comparison),
        "comparison.json": to_json(comparison),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = out_dir / name
        paths[name].write_text(text, encoding="utf-8")
    for name, (data, _) in plots.items():
        paths[name] = out_dir / name
        paths[name].write_bytes(data)
    return paths
