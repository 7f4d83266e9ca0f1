"""The comparison of a recorded sweep: read every trial from MLflow, compute, publish back to MLflow.

It never uses the driver's memory, so it works on any finished or partly
finished sweep, and every number it shows traces back to MLflow runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

from orchestrator.compare import Comparison, cell_summary_metrics, compare
from orchestrator.plan import make_plan
from orchestrator.report import print_report, to_html, to_json, write_report
from orchestrator.tracking import SweepStore
from orchestrator.versions import older_note, split_versions


def report_sweep(spec, store: SweepStore, console: Console, json_out: Path | None = None,
                 html_out: Path | None = None) -> Comparison:
    parent = store.parent_run_id()
    if parent is None:
        raise LookupError(f"sweep {spec.name!r} has no runs in {store.uri}: launch it first")
    records, older = split_versions(make_plan(spec), store.records())
    axes = list(spec.axes) if spec.search == "grid" else list(spec.search.optuna.space)
    contrast = (spec.contrast.axis, spec.contrast.treatment, spec.contrast.control) if spec.contrast else None
    comparison = compare(records, axes=axes, contrast=contrast, metrics=spec.metrics, adaptive_seeds=spec.adaptive)
    print_report(comparison, console)
    if note := older_note(older):
        console.print(note)

    with tempfile.TemporaryDirectory() as tmp:
        write_report(comparison, records, Path(tmp))
        store.log_artifacts(parent, Path(tmp), "report")
    store.delete_summary_runs(keep={cell.cell_id for cell in comparison.cells})  # cells of older versions
    for cell in comparison.cells:
        store.write_summary_run(parent, cell.cell_id, cell.label, cell.variant,
                                cell_summary_metrics(comparison, cell.cell_id))
    if json_out:
        json_out.write_text(to_json(comparison))
    if html_out:
        html_out.write_text(to_html(comparison, records))
    return comparison
