"""The plan: the trials a spec asks for, each with an id that survives relaunches.

A trial's id is the hash of its resolved TrialConfig, seed included (reporting and
checkpoint frequencies and CPU threads left out: etrm.config.OBSERVABILITY_KEYS), so the
same trial gets the same id whenever it is planned: relaunching a sweep, or adding seeds
or axis values to it, leaves the ids of existing trials unchanged and only the new
ones run. A cell's id hashes the same config without the seed, so it is shared by
all of the cell's seeds and does not change when seeds are added.

With `search: {optuna: ...}` there is no grid to plan: Ray Tune's OptunaSearch
draws `num_samples` configs at launch, and the plan only describes that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etrm import memory
from etrm.config import TrialConfig, build_config
from orchestrator.spec import NULL_CONTROL_KEY, NULL_CONTROL_VALUE, SpecError, SweepSpec, base_for, show_value


@dataclass(frozen=True)
class PlannedTrial:
    trial_id: str  # config_hash() of the resolved config, seed included
    cell_id: str  # hash of the resolved config without the seed
    cell_label: str  # `final_norm=true type=hybrid_standard`, for people
    seed: int
    variant: dict[str, Any]  # axis key -> value (no seed): what the comparison groups by
    config: TrialConfig


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    trials: list[PlannedTrial]  # cells in spec order, seeds in spec order within a cell; empty for optuna
    excluded_cells: int

    @property
    def cells(self) -> dict[str, list[PlannedTrial]]:
        """cell_id -> the cell's trials, one per seed."""
        cells: dict[str, list[PlannedTrial]] = {}
        for trial in self.trials:
            cells.setdefault(trial.cell_id, []).append(trial)
        return cells

    @property
    def num_trials(self) -> int:
        return len(self.trials) if self.spec.search == "grid" else self.spec.search.optuna.num_samples

    def pending(self, finished_ids: set[str]) -> list[PlannedTrial]:
        """The trials still to run (in plan order) once `finished_ids` are done."""
        return [t for t in self.trials if t.trial_id not in finished_ids]

    def summary(self) -> str:
        """`4 cells x 3 seeds = 12 trials`, or what optuna will sample."""
        if self.spec.search != "grid":
            opt = self.spec.search.optuna
            metric, mode = self.spec.primary_metric()
            return (f"optuna samples {opt.num_samples} trials over {', '.join(opt.space)} "
                    f"(seed {self.spec.seeds[0]}, {mode}imising {metric})")
        rule = self.spec.adaptive
        seeds = f"up to {rule.max} seeds (adaptive: {rule.min}, then +{rule.step})" if rule else f"{len(self.spec.seeds)} seeds"
        text = f"{len(self.cells)} cells x {seeds} = {'up to ' if rule else ''}{len(self.trials)} trials"
        notes = [f"{self.excluded_cells} cells excluded"] * bool(self.excluded_cells)
        notes += [f"{self.null_cells} null-control cell{'s' * (self.null_cells != 1)}"] * bool(self.null_cells)
        return text + (f" ({', '.join(notes)})" if notes else "")

    @property
    def null_cells(self) -> int:
        return sum(NULL_CONTROL_KEY in trials[0].variant for trials in self.cells.values())


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with (final_norm, encoder.num_layers)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        names[key] = suffix
    return names


def planned_trial(spec: SweepSpec, variant: dict[str, Any], seed: int) -> PlannedTrial:
    """The trial that runs `variant` (axis or sampled key -> value) over the spec's base with `seed`."""
    config = build_config(base_for(spec.base, variant), variant | {"seed": seed})
    names = short_names(list(variant))
    label = " ".join(f"{names[k]}={show_value(v)}" for k, v in variant.items()) or "base"
    return PlannedTrial(config.config_hash(), config.config_hash(without=("seed",)), label, seed, dict(variant), config)


def variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """The spec's cells, each control cell followed by its null-control arm when the spec asks for one."""
    out, c = [], spec.contrast
    for cell in spec.cells():
        out.append(cell)
        if spec.null_control and c is not None and cell[c.axis] == c.control:
            out.append(cell | {NULL_CONTROL_KEY: NULL_CONTROL_VALUE})
    return out


def make_plan(spec: SweepSpec) -> Plan:
    if spec.search != "grid":
        return Plan(spec, [], 0)
    trials = [planned_trial(spec, variant, seed) for variant in variants(spec) for seed in spec.seeds]
    return Plan(spec, trials, spec.grid_size() - len(spec.cells()))


def check_memory(plan: Plan, limit: tuple[int, str] | None = None) -> None:
    """Refuse a grid whose trials cannot fit the memory of the machine they will run on (a local Ray:
    this one; a GPU's memory is checked by the trainer, which knows the device); trials on a cluster are
    checked on their node, by the trainer, before they build anything."""
    spec = plan.spec
    failing = {}
    for trials in plan.cells.values():
        config = trials[0].config
        on_gpu = config.train.device == "cuda" or (config.train.device == "auto" and spec.resources.gpu > 0)
        if (why := memory.problem(config, limit, on_gpu=on_gpu)) is not None:  # on a GPU: the host's share only
            failing[trials[0].cell_label] = (trials[0], why)
    if not failing:
        return
    label, (trial, why) = next(iter(failing.items()))
    key, _, rest = why.partition(": ")
    where = f"axes.{key}[{spec.axes[key].index(trial.variant[key])}]" if key in trial.variant else f"base.{key}"
    raise SpecError(f"{where}: {len(failing)} of {len(plan.cells)} cells cannot fit ({label}: {rest})")
