"""`etrm-sweep`: the command line of the sweep tool.

Mistakes in a spec or a config are the user's to fix, not bugs: they are printed
as `error: field.path: what is wrong`, one line each, with exit code 2 and no
traceback, and nothing is launched.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from etrm.config import ConfigError
from etrm.status import TrialStatus
from orchestrator.plan import Plan, check_memory, make_plan
from orchestrator.spec import SpecError, SweepSpec, load_spec, show_value
from orchestrator.sweep_lock import SweepLocked

app = typer.Typer(
    name="etrm-sweep",
    help="""Ablation sweeps of the ETRM trainer: a YAML spec becomes Ray Tune trials, recorded in MLflow and
    compared with paired statistics.

    A spec (see sweeps/demo.yaml) names a base trial config, axes to vary (dotted trial-config keys such as
    model.encoder.final_norm), seeds, cells to exclude and the contrast to measure. Check it with
    `etrm-sweep validate SPEC`, see its trials with `etrm-sweep plan SPEC`, and try one config alone with
    `etrm-sweep trial CONFIG.yaml`.""",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

SpecArg = Annotated[Path, typer.Argument(metavar="SPEC", help="A sweep spec YAML file, e.g. sweeps/demo.yaml.", show_default=False)]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn spec/config mistakes into `error: ...` lines and exit code 2 (no traceback, nothing launched)."""
    try:
        yield
    except (SpecError, ConfigError) as err:
        for line in str(err).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def trial(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", show_default=False,
                                           help="A trial config: the `base:` part of a spec, as its own file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", show_default=False,
                                            help="Override one key, value parsed as YAML: --set model.encoder.final_norm=false "
                                                 "--set train.lr=3e-4. Repeatable.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", metavar="OUT", show_default=False,
                                                  help="Also write the result (status, step, final metrics, config hash) as JSON.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(metavar="DIR", show_default=False,
                                                        help="Write checkpoints here; if it holds one, resume from it exactly.")] = None,
) -> None:
    """Train ONE trial here, without Ray or MLflow: the quickest way to try a config.

    Exit code 0 finished, 1 crashed, 2 bad config or checkpoint, 3 diverged (loss became NaN/Inf).
    """
    from etrm.config import load_config
    from etrm.memory import preflight

    with user_errors():  # a bad or impossible config is refused before torch loads (seconds on a busy machine)
        preflight(load_config(config, set_))
    from etrm.train import run_trial_cli  # imports torch and the trainer: only for this command

    raise typer.Exit(run_trial_cli(config, set_ or [], json_out, checkpoint_dir))


@app.command()
def validate(spec: SpecArg) -> None:
    """Check a spec completely, without running anything.

    Every axis must be a trial-config key, every cell of the grid a valid trial config, the contrast
    pairable, the metrics known; without a cluster address, every trial must fit this machine's memory.
    Prints `ok: N cells x M seeds = T trials`, or one `error:` line per problem naming the field, with
    exit code 2.
    """
    with user_errors():
        plan = make_plan(load_spec(spec))
        if not (plan.spec.cluster.address or os.environ.get("RAY_ADDRESS")):  # a local Ray: this machine's memory
            check_memory(plan)
    typer.echo(f"ok: {plan.summary()}")


@app.command("plan")
def plan_command(
    spec: SpecArg,
    sd: Annotated[float | None, typer.Option("--sd", metavar="SD", show_default=False, min=0,
                                             help="Seed-to-seed SD of the primary metric's paired difference, in the "
                                                  "metric's own units (0.18 = 18 points of an accuracy): a guess.")] = None,
    pilot: Annotated[str | None, typer.Option("--pilot", metavar="NAME", show_default=False,
                                              help="Take the SD from this recorded sweep (a pilot); default: the "
                                                   "spec's own sweep, once it has paired seeds.")] = None,
    effect: Annotated[float | None, typer.Option("--effect", metavar="E", show_default=False,
                                                 help="Also print the seeds needed to detect a difference of E "
                                                      "(metric units) with 80% power.")] = None,
) -> None:
    """Show the trials a spec asks for: one row per cell, its seeds, trial ids and what has finished,
    and what the planned seeds can detect.

    Trial ids are hashes of the resolved trial config (seed included, logging and checkpoint frequencies
    and threads left out), so relaunching a sweep, or
    adding seeds or axis values, keeps the ids of trials already planned: only the new ones run.
    With a spread (--sd, --pilot, or the sweep's own finished seeds) it prints the smallest effect the
    planned seeds detect with 80% power on the primary metric, and the seeds a target effect needs.
    """
    with sweep_errors():
        sweep = load_spec(spec)
        plan = make_plan(sweep)
        spread = (sd, "--sd") if sd is not None else _recorded_spread(sweep, pilot)
    console = Console()
    console.print(render_plan(plan, _finished_trial_ids(sweep)))
    if sweep.contrast is not None:
        from orchestrator.wording import power_lines  # SciPy: only for this part

        for line in power_lines(sweep, plan, spread, effect):
            console.print(line)


def _recorded_spread(spec: SweepSpec, pilot: str | None) -> tuple[float, str] | None:
    """The largest SD of the primary metric's paired differences over the contrasts of a recorded sweep
    (--pilot NAME, else this spec's own), with where it came from; None before it has two pairs."""
    from orchestrator.workspace import SweepContext, Workspace

    ctx = SweepContext.for_name(pilot) if pilot else SweepContext(spec, Workspace.default())
    source = ctx.spec
    if source.contrast is None or source.search != "grid":
        raise LookupError(f"sweep {source.name!r} has no contrast to take a spread from")
    if ctx.embedded and not ctx.workspace.database.exists():
        return None
    store = ctx.store()
    if store.parent_run_id() is None:
        return None
    from orchestrator.compare import compare

    metric, c = spec.metrics[0], source.contrast
    comparison = compare(store.records([metric]), axes=list(source.axes), contrast=(c.axis, c.treatment, c.control),
                         metrics=[metric])
    diffs = [d for d in map(comparison.paired_differences, comparison.contrasts) if len(d) >= 2]
    if not diffs:
        return None
    worst = max(diffs, key=lambda d: d.std(ddof=1))
    return float(worst.std(ddof=1)), f"sweep {source.name}, {len(worst)} pairs"


def _finished_trial_ids(spec: SweepSpec) -> set[str]:
    """Trial ids already done (finished or diverged) in the sweep's tracking store; none if never launched."""
    from orchestrator.workspace import SweepContext, Workspace

    ctx = SweepContext(spec, Workspace.default())
    if ctx.embedded and not ctx.workspace.database.exists():
        return set()  # never launched here: don't create a store just to read nothing from it
    return ctx.store().done_trial_ids()


def render_plan(plan: Plan, finished: set[str]) -> Group:
    spec = plan.spec
    head = Text.assemble((spec.name, "bold"), f": {spec.description}" if spec.description else "")
    lines = [head]
    if spec.contrast:
        c = spec.contrast
        lines.append(Text(f"contrast: {c.axis} = {show_value(c.treatment)} vs {show_value(c.control)}, paired by seed"))
    if spec.search != "grid":
        table = Table("key", "distribution", title=plan.summary())
        for key, dist in spec.search.optuna.space.items():
            shape = dist.choices if dist.type == "categorical" else f"[{dist.low}, {dist.high}]" + (" log" if dist.log else "")
            table.add_row(key, f"{dist.type} {shape}")
        return Group(*lines, table)

    table = Table("cell", "seeds", "trials", "state", title=plan.summary())
    done = 0
    for trials in plan.cells.values():
        ids = Text(" ").join(Text(t.trial_id[:8], style="green" if t.trial_id in finished else "dim") for t in trials)
        n = sum(t.trial_id in finished for t in trials)
        done += n
        state = TrialStatus.FINISHED if n == len(trials) else TrialStatus.PENDING if n == 0 else f"{n}/{len(trials)} finished"
        table.add_row(trials[0].cell_label, " ".join(str(t.seed) for t in trials), ids, state)
    return Group(*lines, table, Text(f"{done} of {len(plan.trials)} trials finished, {len(plan.trials) - done} pending"))


# -- running and reading sweeps ----------------------------------------------------------------------

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="A sweep's `name:` as launched from this workspace.",
                                        show_default=False)]
AddressOpt = Annotated[str | None, typer.Option("--address", metavar="HOST:PORT", show_default=False,
                                                help="Ray cluster to run on (overrides cluster.address and "
                                                     "RAY_ADDRESS); default: a local Ray sized to this machine.")]


@contextmanager
def sweep_errors() -> Iterator[None]:
    """user_errors, plus an unknown sweep name and a sweep another driver runs."""
    with user_errors():
        try:
            yield
        except (LookupError, SweepLocked) as err:
            typer.echo(f"error: {err.args[0]}", err=True)
            raise typer.Exit(2) from None


def _run(ctx, spec_text: str, address: str | None) -> None:
    from orchestrator.reachability import check_services

    check_services(ctx.spec, address, ctx.tracking_uri)  # before Ray is even imported: a dead address fails in seconds
    from orchestrator.dispatch import launch as launch_sweep
    from orchestrator.journal import TrackingUnavailable

    console = Console()
    try:
        outcome = launch_sweep(ctx.spec, spec_text, address=address, console=console, workspace=ctx.workspace)
    except TrackingUnavailable as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    from orchestrator.sweep_report import report_sweep  # statistics and plots: not before the trials start

    store = ctx.store()
    report_sweep(ctx.spec, store, console)
    console.print(f"MLflow: {_mlflow_hint(ctx, store)}")
    if outcome.dashboard_url:
        console.print(f"Ray dashboard: {outcome.dashboard_url}"
                      + (" (while the trials ran: this launch's local Ray stops with it)" if outcome.local_ray else ""))
    if outcome.unfinished:
        console.print(f"[red]{outcome.unfinished} of {outcome.planned} trial(s) did not finish[/]: "
                      f"`etrm-sweep status {ctx.spec.name}` shows them, `etrm-sweep resume {ctx.spec.name}` retries them.")
        raise typer.Exit(1)


def _mlflow_hint(ctx, store) -> str:
    # The runs view in MLflow's "Model training" mode: MLflow 3 opens an experiment on its GenAI traces page
    experiment = f"#/experiments/{store.experiment_id}/runs?workflowType=machine_learning"
    if ctx.tracking_uri.startswith("http"):
        return f"{ctx.tracking_uri.rstrip('/')}/{experiment}"
    return f"run `etrm-sweep ui` and open http://127.0.0.1:5000/{experiment}"


@app.command()
def launch(spec: SpecArg, address: AddressOpt = None) -> None:
    """Run every trial of a spec that has not finished yet, then compare the variants.

    One Ray Tune trial per (cell, seed), with the spec's resources and concurrency; each trial is an MLflow
    child run of the sweep's parent run. Trials already finished (or diverged) are skipped, interrupted ones
    resume from their last checkpoint, new seeds or axis values run as new trials of the same sweep.
    Exit code 0 when every trial is done, 1 when some failed, 2 for a bad spec (nothing launched).
    """
    from orchestrator.workspace import SweepContext, Workspace

    with sweep_errors():
        sweep = load_spec(spec)
        make_plan(sweep)
        _run(SweepContext(sweep, Workspace.default()), spec.read_text(), address)


@app.command()
def resume(name: NameArg, address: AddressOpt = None) -> None:
    """Finish a sweep with the spec it was last launched with (after Ctrl-C, a crash or a killed driver)."""
    from orchestrator.workspace import SweepContext

    with sweep_errors():
        ctx = SweepContext.for_name(name)
        _run(ctx, ctx.spec_path.read_text(), address)


@app.command()
def status(name: NameArg) -> None:
    """Show every trial of a sweep: the planned ones not started yet, then every trial MLflow records
    (an Optuna sample, or a trial of an earlier version of the spec, included), with state, last step,
    primary metric and message."""
    from orchestrator.workspace import SweepContext

    with sweep_errors():
        ctx = SweepContext.for_name(name)
        plan = make_plan(ctx.spec)
        metric, _ = ctx.spec.primary_metric()
        rows = ctx.store().status_rows(plan.trials, metric)
    table = Table("cell", "seed", "trial", "status", "step", metric, "message", title=f"{name}: {plan.summary()}")
    for row in rows:
        table.add_row(row.cell, str(row.seed), row.trial_id[:8], row.status, "-" if row.step is None else str(row.step),
                      "-" if row.value is None else f"{row.value:.4g}", row.message[:60])
    # a grid's rows past its plan are runs of an earlier version: listed, never counted with the current ones
    current, older = (rows[:len(plan.trials)], rows[len(plan.trials):]) if ctx.spec.search == "grid" else (rows, [])
    console = Console()
    console.print(table)
    console.print(_counts(current) or "no trials")
    if older:
        console.print(f"the last {len(older)} row(s): trial runs of an earlier version of this sweep (another base or "
                      f"axes: {_counts(older)}), kept in MLflow; `etrm-sweep compare` and `resume` leave them out")


def _counts(rows: list) -> str:
    """'3 finished, 1 running': how many of `rows` are in each state."""
    return ", ".join(f"{n} {s}" for s, n in sorted(Counter(r.status for r in rows).items()))


@app.command()
def compare(
    name: NameArg,
    json_out: Annotated[Path | None, typer.Option("--json", metavar="OUT.json", show_default=False,
                                                  help="Also write the full comparison as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", metavar="OUT.html", show_default=False,
                                                  help="Also write the HTML report (plots embedded).")] = None,
) -> None:
    """Compare the variants of a sweep from what MLflow holds (works on partly finished sweeps).

    Per cell: n, mean, SD, 95% CIs, failed/diverged counts. Per contrast: paired differences by seed, a
    sign-flip permutation test (exact up to 16 pairs), effect size, Holm across contrasts, a verdict in words. The report (HTML, Markdown,
    CSV, JSON) is attached to the sweep's parent run, with one summary run per cell.
    """
    from orchestrator.workspace import SweepContext

    with sweep_errors():
        ctx = SweepContext.for_name(name)  # a bad name is refused before the report's heavy imports
        from orchestrator.sweep_report import report_sweep

        report_sweep(ctx.spec, ctx.store(), Console(), json_out, html_out)


@app.command()
def ui(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", show_default=False,
                                               help="Open this sweep's store (default: the workspace's embedded store).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 against the sweep's store and print its URL (Ctrl-C stops it)."""
    import signal
    import subprocess
    import sys

    from orchestrator.workspace import SweepContext, Workspace

    with sweep_errors():
        workspace = Workspace.default()
        uri = SweepContext.for_name(name).tracking_uri if name else workspace.tracking_uri
    if uri.startswith("http"):
        typer.echo(f"this sweep is tracked by a server already: {uri}")
        return
    workspace.create()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", uri,
               "--artifacts-destination", str(workspace.artifact_root)]
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}  (store {uri}; Ctrl-C stops it)")
    # The server and its workers get a process group of their own, which this command ends on SIGTERM, SIGINT
    # or SIGHUP: a `kill` of this command (or a closed terminal) leaves no MLflow server behind.
    server = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        _end_group(server)
    raise typer.Exit(code)


def _end_group(process, grace: float = 10.0) -> None:
    """SIGTERM to the process group of `process`, then SIGKILL to what is left after `grace` seconds."""
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the group would live on as its zombie
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
