"""The sweep spec: a research question written as a grid of trials, checked before anything runs.

A spec names a base trial config, the axes to vary, the seeds, the cells to skip,
the contrast to measure and where to run and record it. `load_spec` checks all of
it up front -- every axis is a real trial-config key, every cell of the grid builds
a valid TrialConfig, the contrast can be paired seed by seed, the metrics exist --
so a sweep never dies an hour in on a typo. Each problem is one line that names
the field: `axes.model.encoder.typo: not a trial-config key`.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from etrm.config import OBSERVABILITY_KEYS, SEED_LIMIT, ConfigError, EncoderConfig, build_config, config_keys
from etrm.metrics import METRICS
from etrm.registry import ENCODERS
from etrm.strict_yaml import YamlError, read_yaml

# The primary metric, then what the final-norm question needs: the scale-free variance and collapse (the raw
# variance falls with the fix by construction) and the gradient explosions between log steps.
DEFAULT_METRICS = ("eval/exact_accuracy", "ARC/pass@1", "encoder_cross_sample_var_rel", "encoder_cross_sample_cosine",
                   "grad/max_norm", "grad/spike_steps")
MAX_TRIALS = 10_000  # trials of a grid, before exclusions: each is validated and planned before anything runs
MAX_SEEDS = 1000  # seeds per cell: far beyond what a paired comparison needs, small enough to plan in a blink


class SpecError(ValueError):
    """A sweep spec that does not validate; `str()` is one line per problem, naming the field path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Strict):
    """What one trial reserves on a Ray worker."""

    cpu: float = Field(1.0, gt=0, description="CPU cores reserved per trial (Ray logical CPUs).")
    gpu: float = Field(
        0.0, ge=0, description="GPUs per trial: 0, a fraction of one GPU (0 < gpu <= 1: trials share it) or a whole number."
    )
    custom: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Custom Ray resources per trial, e.g. {a100: 1} or {zone_b: 0.5}: trials run "
        "only on nodes started with them (`ray start --resources '{\"a100\": 1}'`, RAY_WORKER_RESOURCES in docker/.env)."
    )

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, v: float) -> float:
        if v > 1 and not v.is_integer():
            raise ValueError(f"{v:g} GPUs: give a fraction of one GPU (0 < gpu <= 1) or a whole number")
        return v

    @field_validator("custom")
    @classmethod
    def _not_builtin(cls, v: dict[str, float]) -> dict[str, float]:
        for name in v:
            if name.lower() in ("cpu", "gpu", "memory", "object_store_memory"):
                raise ValueError(f"{name}: a built-in Ray resource; set it with resources.cpu / resources.gpu")
        return v


class Contrast(Strict):
    """The question: two values of one axis, compared seed by seed within every combination of the other axes."""

    axis: str = Field(description="The axis under study, e.g. model.encoder.final_norm.")
    treatment: Any = Field(description="The value being tested (one of the axis values).")
    control: Any = Field(description="The value it is compared against (another of the axis values).")


class AdaptiveSeeds(Strict):
    """Seeds run in batches until the primary contrast is answered (orchestrator/adaptive.py)."""

    min: int = Field(ge=2, description="Seeds of the first batch (>= 2: a spread needs two).")
    max: int = Field(description="Most seeds the sweep may run (seeds 0 .. max-1).")
    step: int = Field(2, ge=1, description="Seeds added per batch.")
    half_width: float = Field(
        gt=0, description="Stop once the primary contrast's anytime-valid 95% interval is at most +-this wide, in the "
        "metric's own units (0.05 = 5 points of an accuracy); it also stops once the interval excludes 0."
    )

    @model_validator(mode="after")
    def _range(self) -> "AdaptiveSeeds":
        if self.max <= self.min:
            raise ValueError(f"max ({self.max}) must be above min ({self.min})")
        return self


# The null-control arm: the control cell again with this key set (a seeded 1e-6 jitter of the initial weights).
NULL_CONTROL_KEY, NULL_CONTROL_VALUE = "model.init_jitter", 1


class Distribution(Strict):
    """Where Optuna may sample one trial-config key."""

    type: Literal["float", "int", "categorical"] = Field(description="float and int take low/high(/log); categorical takes choices.")
    low: int | float | None = Field(None, description="Lower bound (inclusive).")
    high: int | float | None = Field(None, description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    choices: list[Any] | None = Field(None, description="The values a categorical key may take.")

    @model_validator(mode="after")
    def _shape(self) -> "Distribution":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("categorical takes `choices` only, not low/high/log")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs `low` and `high`")
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not `choices` (use type: categorical)")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("int needs whole-number low and high")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        return self


class Optuna(Strict):
    """Optuna (TPE) search through Ray Tune: each trial is a point sampled from `space`, run with the one seed."""

    num_samples: int = Field(ge=1, description="Trials to sample.")
    metric: str | None = Field(None, description="Metric to optimise (default: the first of `metrics`).")
    mode: Literal["max", "min"] | None = Field(
        None, description="Maximise or minimise the metric (default: its better direction in etrm.metrics.METRICS; "
        "required for a metric that has none)."
    )
    space: dict[str, Distribution] = Field(description="Dotted trial-config key -> its distribution.")

    @field_validator("space")
    @classmethod
    def _not_empty(cls, v: dict[str, Distribution]) -> dict[str, Distribution]:
        if not v:
            raise ValueError("give at least one dotted trial-config key to sample")
        return v


class OptunaSearch(Strict):
    optuna: Optuna = Field(description="Optuna settings.")


def check_slug(name: str) -> str:
    """A name that becomes a folder (sweep name, MLflow experiment): a slug, so it can never reach outside the
    workspace (no '/', no '..', not absolute). Raises ValueError naming the problem."""
    if not (isinstance(name, str) and len(name) <= 64 and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name)):
        raise ValueError(f"{name!r}: use up to 64 lowercase letters, digits, '-' and '_' (it names folders)")
    return name


class Tracking(Strict):
    """Where the sweep is recorded (MLflow)."""

    uri: str | None = Field(
        None, description="MLflow tracking URI: a server (http://host:5000) or its database "
        "(postgresql+psycopg2://user:password@host:5432/db, sqlite:///path/mlflow.db); "
        "null = $MLFLOW_TRACKING_URI if set, else the embedded local store under .etrm-sweep/ "
        "(open it with `etrm-sweep ui`)."
    )
    experiment: str | None = Field(
        None, description="MLflow experiment name ([a-z0-9_-], it names the artifact folder); defaults to the sweep name."
    )
    give_up_after: float = Field(
        600.0, gt=0, description="Seconds a launch keeps its trials running while the tracking store cannot be "
        "written (their records wait in a journal in the workspace); then it stops them and says how to resume."
    )

    @field_validator("experiment")
    @classmethod
    def _slug(cls, v: str | None) -> str | None:
        return None if v is None else check_slug(v)


class Cluster(Strict):
    """Where trials run (Ray)."""

    address: str | None = Field(
        None, description="Ray cluster address (`auto`, `ray://head:10001`, `head:6379`); null = a local Ray sized to this machine."
    )
    storage: str | None = Field(
        None, description="Path or URI (s3://, gs://) every node can reach, for checkpoints and Ray results; "
        "null = .etrm-sweep/ on this machine."
    )


class SweepSpec(Strict):
    """One sweep: base config × axes × seeds, minus exclusions, with the contrast it measures."""

    name: str = Field(max_length=64, description="Sweep identity ([a-z0-9_-]): names the MLflow experiment and run folders.")
    description: str = Field("", description="The question the sweep answers, in a sentence.")
    base: dict[str, Any] = Field(
        default_factory=dict, description="A trial config (as in `etrm-sweep trial`); keys it leaves out take the trainer defaults."
    )
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted trial-config key -> values to try; the grid is their full factorial "
        "(no axes: one cell, the base config)."
    )
    seeds: list[Annotated[StrictInt, Field(ge=0, lt=SEED_LIMIT)]] = Field(
        description="Seeds every cell runs with, e.g. [0, 1, 2] or {count: 5} (= 0..4), or {adaptive: {min, max, "
        "step, half_width}} (batches of seeds 0, 1, ... until the primary contrast is answered). Cells share "
        "seeds, so the arms of a contrast are paired seed by seed."
    )
    adaptive: AdaptiveSeeds | None = Field(
        None, description="Set by `seeds: {adaptive: {...}}` (not a key of its own): how seeds are added in batches."
    )
    null_control: bool = Field(
        False, description="Also run the control cell of every contrast again with a seeded 1e-6 jitter of its initial "
        "weights (model.init_jitter): an A/A arm whose difference from the control is the seed-to-seed noise floor "
        "that the effect is compared against."
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="Cells to skip: each entry maps axis keys to values, and drops every cell "
        "that matches all of them, e.g. {model.encoder.type: standard, model.encoder.kl_weight: 1.0e-4}."
    )
    contrast: Contrast | None = Field(None, description="The comparison to report (treatment vs control of one axis).")
    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Metrics the comparison reports (names from etrm.metrics.METRICS); the first is the primary one.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per-trial reservation.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials running at once; null = as many as resources allow.")
    max_failures: int = Field(2, ge=0, description="Times a crashed trial is retried, resuming from its last checkpoint.")
    scheduler: Literal["none", "asha"] = Field(
        "none", description="`none`: every trial runs to the end. `asha`: stop weak trials early, ranked by the primary "
        "metric (see primary_metric); refused with a contrast, whose arms must run alike."
    )
    search: Annotated[
        Annotated[Literal["grid"], Tag("<grid>")] | Annotated[OptunaSearch, Tag("<optuna>")],
        Discriminator(lambda v: "<grid>" if isinstance(v, str) else "<optuna>"),
    ] = Field("grid", description="`grid`: every cell × seed. {optuna: {...}}: sample a space instead of a grid.")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow location.")
    cluster: Cluster = Field(default_factory=Cluster, description="Ray location.")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        return check_slug(v)

    @model_validator(mode="before")
    @classmethod
    def _adaptive_seeds(cls, data: Any) -> Any:
        """`seeds: {adaptive: {...}}` -> adaptive (the rule) and seeds (0 .. max-1, the most it may run)."""
        if not isinstance(data, dict):
            return data
        seeds = data.get("seeds")
        if data.get("adaptive") is not None and not isinstance(seeds, list):
            raise ValueError("adaptive: not a key of its own; write seeds: {adaptive: {min, max, step, half_width}}")
        if isinstance(seeds, dict) and set(seeds) == {"adaptive"}:
            rule = seeds["adaptive"]
            top = rule.get("max") if isinstance(rule, dict) else None
            count = top if isinstance(top, int) and not isinstance(top, bool) and top >= 1 else 1
            return {**data, "seeds": list(range(count)), "adaptive": rule}
        return data

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, dict):
            count = v.get("count")
            if set(v) != {"count"} or not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SEEDS:
                raise ValueError(f"give a list of seeds, {{count: N}} with a whole number 1 <= N <= {MAX_SEEDS}, or "
                                 "{adaptive: {...}}" + (f" (got {count!r})" if set(v) == {"count"} else ""))
            return list(range(count))
        if isinstance(v, list) and len(v) > MAX_SEEDS:
            raise ValueError(f"{len(v)} seeds; at most {MAX_SEEDS} (every cell runs every seed)")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        seen: set[int] = set()
        for s in v:
            if s in seen:
                raise ValueError(f"seed {s} appears more than once")
            seen.add(s)
        return v

    @field_validator("search", mode="before")
    @classmethod
    def _search_word(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "grid":
            raise ValueError(f"{v!r}: use `grid` or {{optuna: {{num_samples, metric, mode, space}}}}")
        return v

    @property
    def optuna(self) -> Optuna | None:
        """The Optuna settings, or None for a grid search."""
        return self.search.optuna if isinstance(self.search, OptunaSearch) else None

    def cells(self) -> list[dict[str, Any]]:
        """The grid: every combination of axis values (in spec order), minus excluded ones; [{}] without axes."""
        combos = (dict(zip(self.axes, values)) for values in itertools.product(*self.axes.values()))
        return [c for c in combos if not any(_matches(c, entry) for entry in self.exclude)]

    def grid_size(self) -> int:
        """Cells before exclusions."""
        return math.prod(len(values) for values in self.axes.values())

    def primary_metric(self) -> tuple[str, Literal["max", "min"] | None]:
        """(metric, mode) that Optuna and ASHA optimise: Optuna's metric and mode, else the first of `metrics`;
        a mode left unset is the metric's better direction (etrm.metrics.METRICS). None only for a grid
        without ASHA, where nothing optimises: validation refuses Optuna and ASHA without a mode."""
        opt = self.optuna
        if opt is None or opt.metric is None:  # resolve() gives Optuna a metric; a spec before it may lack one
            return self.metrics[0], METRICS[self.metrics[0]].mode
        return opt.metric, opt.mode or METRICS[opt.metric].mode


def _matches(cell: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(cell[key] == value for key, value in entry.items())


def show_value(value: Any) -> str:
    """As YAML writes it: true, 0.0001, hybrid_standard, [0.9, 0.95]."""
    return value if isinstance(value, str) else json.dumps(value)


def show_cell(cell: dict[str, Any]) -> str:
    """A cell as a YAML flow mapping, ready to paste under `exclude:`."""
    return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in cell.items()) + "}"


def _common(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The axis values all `cells` share: the smallest description of a group of failing cells."""
    return {k: v for k, v in cells[0].items() if all(c[k] == v for c in cells)}


# ---- resolving: values as the trial config holds them, defaults filled in ----


def resolve(spec: SweepSpec) -> SweepSpec:
    """A copy of `spec` with axis, exclude and contrast values as their config keys hold them (YAML's `1e-4`
    is a string; kl_weight wants 0.0001), the experiment named and Optuna's metric chosen. A value that does
    not fit its key is left as written, for check() to name."""
    def typed(key: str, value: Any) -> Any:
        try:
            return _typed(key, value) if key in config_keys() else value
        except ValueError:
            return value

    update: dict[str, Any] = {
        "axes": {key: [typed(key, v) for v in values] for key, values in spec.axes.items()},
        "exclude": [{key: typed(key, v) for key, v in entry.items()} for entry in spec.exclude],
        "tracking": spec.tracking.model_copy(update={"experiment": spec.tracking.experiment or spec.name}),
    }
    if (c := spec.contrast) is not None:
        update["contrast"] = c.model_copy(update={"treatment": typed(c.axis, c.treatment), "control": typed(c.axis, c.control)})
    if (opt := spec.optuna) is not None and opt.metric is None and spec.metrics:
        update["search"] = OptunaSearch(optuna=opt.model_copy(update={"metric": spec.metrics[0]}))
    return spec.model_copy(update=update)


# ---- cross-field checks: each returns one line per problem, naming the field; none changes the spec ----


def check(spec: SweepSpec) -> list[str]:
    """Every cross-field problem of a resolved spec (the schema has checked each field alone)."""
    problems = _base_problems(spec) + _scheduler_problems(spec) + _noise_problems(spec)
    if spec.optuna is None:
        problems += _axes_problems(spec)
        if not problems:
            problems += _exclude_problems(spec)
        if not problems:
            problems += _contrast_problems(spec)
        if not problems:
            problems += _cell_problems(spec)
    else:
        problems += _optuna_problems(spec)
    problems += _metric_problems(spec) or _direction_problems(spec)
    return list(dict.fromkeys(problems))


@functools.cache
def _adapter(key: str) -> TypeAdapter:
    field = config_keys()[key]
    # the FieldInfo carries the constraints (ge=0, ...); a type built at run time, which mypy cannot follow
    return TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]


def _typed(key: str, value: Any) -> Any:
    """`value` as the config field `key` holds it (YAML's `1e-4` is a string; kl_weight wants 0.0001)."""
    try:
        return _adapter(key).validate_python(value)
    except ValidationError as err:
        raise ValueError("; ".join(e["msg"] for e in err.errors())) from None


def _key_problem(key: str) -> str | None:
    """Why `key` cannot be varied, or None if it is a trial-config leaf key."""
    keys = config_keys()
    if key == "seed":
        return "the seed is not an axis: list seeds under `seeds:` (cells share them, so arms pair by seed)"
    if key in OBSERVABILITY_KEYS:
        return "changes how a trial is watched, not what it computes, so the trial id ignores it; set it in `base:`"
    if key in keys:
        return None
    inside = [k for k in keys if k.startswith(key + ".")]
    if inside:
        return f"a config section, not a key; name one of its keys, e.g. {inside[0]}"
    close = difflib.get_close_matches(key, list(keys), n=1)
    return "not a trial-config key" + (f" (did you mean {close[0]}?)" if close else "")


def _encoder_type(base: dict[str, Any], variant: dict[str, Any]) -> Any:
    encoder = base.get("model", {}).get("encoder", {}) if isinstance(base.get("model"), dict) else {}
    encoder = encoder if isinstance(encoder, dict) else {}
    return variant.get("model.encoder.type", encoder.get("type", EncoderConfig.model_fields["type"].default))


def base_for(base: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """The base as one cell sees it: without the encoder knobs that cell's encoder ignores. A base is shared by
    every cell, so it may set latent_dim for the variational cells of a type axis; axis values are never
    dropped, so a cell whose own value its encoder ignores is still refused (one model under two names)."""
    kind = _encoder_type(base, variant)
    encoder = base.get("model", {}).get("encoder") if isinstance(base.get("model"), dict) else None
    if kind not in ENCODERS or not isinstance(encoder, dict):
        return base
    ignored = set(EncoderConfig.model_fields) - {"type", *ENCODERS[kind].knobs}
    kept = {k: v for k, v in encoder.items() if k not in ignored}
    return base | {"model": base["model"] | {"encoder": kept}}


def _base_problems(spec: SweepSpec) -> list[str]:
    if "seed" in spec.base:
        return ["base.seed: set seeds with the top-level `seeds:` list"]
    try:
        build_config(base_for(spec.base, {}))
    except ConfigError as err:
        return [f"base.{line}" for line in str(err).splitlines()]
    return _unused_base_knob_problems(spec)


def _unused_base_knob_problems(spec: SweepSpec) -> list[str]:
    """A base encoder knob, set away from its default, that no encoder of the sweep uses would change nothing."""
    encoder = spec.base.get("model", {}).get("encoder", {})
    if spec.optuna is None:
        varied = spec.axes.get("model.encoder.type")
    else:
        varied = getattr(spec.optuna.space.get("model.encoder.type"), "choices", None)
    types = set(varied) if varied else {_encoder_type(spec.base, {})}
    problems = []
    for knob, value in encoder.items():
        if knob == "type" or knob not in EncoderConfig.model_fields:
            continue
        if any(t not in ENCODERS or knob in ENCODERS[t].knobs for t in types):
            continue
        try:
            unchanged = _typed(f"model.encoder.{knob}", value) == EncoderConfig.model_fields[knob].default
        except ValueError:
            continue  # not a valid value: building the config says so
        if not unchanged:
            problems.append(f"base.model.encoder.{knob}: no encoder of this sweep ({', '.join(sorted(map(str, types)))}) "
                            f"uses {knob}; leave it unset")
    return problems


def _axes_problems(spec: SweepSpec) -> list[str]:
    problems = []
    for key, values in spec.axes.items():
        if (why := _key_problem(key)) is not None:
            problems.append(f"axes.{key}: {why}")
            continue
        if not values:
            problems.append(f"axes.{key}: give at least one value")
        if len(values) > MAX_TRIALS:
            problems.append(f"axes.{key}: {len(values)} values; a grid has at most {MAX_TRIALS} trials")
            continue
        seen = set()  # a linear check: values resolved to their key's type, compared as JSON
        for i, value in enumerate(values):
            try:
                _typed(key, value)
            except ValueError as err:
                problems.append(f"axes.{key}[{i}]: {err}")
                continue
            if (as_json := json.dumps(value, sort_keys=True)) in seen:
                problems.append(f"axes.{key}[{i}]: {value!r} is listed twice")
            seen.add(as_json)
    if not problems and (trials := spec.grid_size() * len(spec.seeds)) > MAX_TRIALS:
        problems.append(f"axes: {spec.grid_size():,} cells x {len(spec.seeds)} seeds = {trials:,} trials; "
                        f"a grid has at most {MAX_TRIALS:,} (split the question into several sweeps)")
    return problems


def _exclude_problems(spec: SweepSpec) -> list[str]:
    problems = []
    for i, entry in enumerate(spec.exclude):
        if not entry:
            problems.append(f"exclude[{i}]: empty; map axis keys to the values to skip")
        for key, value in entry.items():
            where = f"exclude[{i}].{key}"
            if key not in spec.axes:
                problems.append(f"{where}: not an axis (exclusions select cells by axis values)")
                continue
            try:
                _typed(key, value)
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
            if value not in spec.axes[key]:
                problems.append(f"{where}: {value!r} is not one of the axis values {spec.axes[key]}")
    if not problems and not spec.cells():
        problems.append(f"exclude: removes all {spec.grid_size()} cells of the grid")
    return problems


def _contrast_problems(spec: SweepSpec) -> list[str]:
    c = spec.contrast
    if c is None:
        return []
    if c.axis not in spec.axes:
        return [f"contrast.axis: {c.axis} is not an axis (axes: {', '.join(spec.axes) or 'none'})"]
    values = spec.axes[c.axis]
    problems = []
    for arm in ("treatment", "control"):
        try:
            _typed(c.axis, getattr(c, arm))
        except ValueError as err:
            problems.append(f"contrast.{arm}: {err}")
            continue
        if getattr(c, arm) not in values:
            problems.append(f"contrast.{arm}: {getattr(c, arm)!r} is not one of the values of {c.axis}: {values}")
    if not problems and c.treatment == c.control:
        problems.append("contrast: treatment and control are the same value")
    if problems:
        return problems
    cells = spec.cells()
    for arm, other in ((c.treatment, c.control), (c.control, c.treatment)):
        unpaired = [cell for cell in cells if cell[c.axis] == arm and cell | {c.axis: other} not in cells]
        if unpaired:
            problems.append(
                f"contrast: cells {show_cell(_common(unpaired))} have no partner with {c.axis}: {show_value(other)} "
                "(excluded); exclude both arms or neither, so every comparison is paired"
            )
    return problems


def _noise_problems(spec: SweepSpec) -> list[str]:
    """A null arm and adaptive seeds both serve the contrast, so they need one; the null arm owns its key."""
    problems = []
    if spec.adaptive is not None:
        if spec.contrast is None:
            problems.append("seeds.adaptive: stops on the primary contrast's interval; give a `contrast`")
        if spec.seeds != list(range(spec.adaptive.max)):  # a stored spec (model_dump) reads back; nothing else
            problems.append("adaptive: not a key of its own; write seeds: {adaptive: {min, max, step, half_width}} "
                            "(it runs seeds 0 .. max-1)")
    if spec.null_control:
        if spec.contrast is None:
            problems.append("null_control: a null arm repeats the control of a contrast; give a `contrast`")
        section, key = NULL_CONTROL_KEY.split(".")
        if NULL_CONTROL_KEY in spec.axes:
            problems.append(f"axes.{NULL_CONTROL_KEY}: null_control sets this key for the null arm; drop the axis")
        if isinstance(spec.base.get(section), dict) and spec.base[section].get(key) is not None:
            problems.append(f"base.{NULL_CONTROL_KEY}: null_control sets this key for the null arm; leave it unset")
    return problems


def _scheduler_problems(spec: SweepSpec) -> list[str]:
    if spec.scheduler == "asha" and spec.contrast is not None:
        return [
            "scheduler: asha stops trials early on an interim metric, so in an ablation one arm of the contrast would be "
            "cut short on some seeds and not on others, biasing the paired comparison; use `scheduler: none`"
        ]
    return []


def _direction_problems(spec: SweepSpec) -> list[str]:
    """Optuna and ASHA need to know which way the metric they rank trials by is better (after _metric_problems)."""
    if (opt := spec.optuna) is not None:
        if opt.metric is None:  # no metrics at all: _metric_problems said so
            return []
        if opt.mode is None and METRICS[opt.metric].mode is None:
            return [f"search.optuna.mode: {opt.metric} has no better direction (etrm.metrics.METRICS); "
                    "set mode: max or mode: min"]
        return []
    if spec.scheduler == "asha" and METRICS[spec.metrics[0]].mode is None:
        return [f"scheduler: asha ranks trials by {spec.metrics[0]}, which has no better direction (etrm.metrics.METRICS); "
                "list a metric with one first in `metrics` (an accuracy or a loss)"]
    return []


def _cell_problems(spec: SweepSpec) -> list[str]:
    """Build every cell's config: a value can be valid alone and invalid in combination."""
    problems: list[str] = []
    seen: dict[str, dict[str, Any]] = {}  # config hash -> the first cell that gave it
    failing: dict[str, list[dict[str, Any]]] = {}  # config error line -> the cells that raise it
    for cell in spec.cells():
        try:
            config = build_config(base_for(spec.base, cell), cell)
        except ConfigError as err:
            for line in str(err).splitlines():
                failing.setdefault(line, []).append(cell)
            continue
        digest = config.config_hash()
        if digest in seen:
            problems.append(f"axes: cells {show_cell(seen[digest])} and {show_cell(cell)} give the same trial config")
        seen[digest] = cell
        if config.train.device == "cuda" and spec.resources.gpu == 0:
            problems.append("resources.gpu: trials with train.device cuda need resources.gpu > 0 (Ray hides GPUs from them)")
    return [_blame(spec, line, cells) for line, cells in failing.items()] + problems


def _blame(spec: SweepSpec, line: str, cells: list[dict[str, Any]]) -> str:
    """Pin a config error on the axis value that caused it when every cell with that value fails, or else
    (a value that fails only with some others, e.g. final_norm: false with an encoder that has no set
    encoder) on what the failing cells share, to be changed or excluded."""
    path, _, msg = line.partition(": ")
    for key, value in cells[0].items():
        if path == key or path.startswith(key + "."):
            if all(c in cells for c in spec.cells() if c[key] == value):
                return f"axes.{key}[{spec.axes[key].index(value)}]: {msg}"
            break
    return f"axes: cells {show_cell(_common(cells))} are not valid configs ({line}); change the values or exclude them"


def _optuna_problems(spec: SweepSpec) -> list[str]:
    opt = spec.optuna
    assert opt is not None
    problems = []
    if spec.axes:
        problems.append("axes: optuna search samples `search.optuna.space` instead of a grid; move the axes there or use `search: grid`")
    if spec.exclude:
        problems.append("exclude: only a grid search has cells to exclude")
    if spec.contrast is not None:
        problems.append("contrast: a contrast pairs cells of a grid; use `search: grid`")
    if len(spec.seeds) != 1:
        problems.append("seeds: optuna search runs each sample once; give one seed")
    for key, dist in opt.space.items():
        where = f"search.optuna.space.{key}"
        if (why := _key_problem(key)) is not None:
            problems.append(f"{where}: {why}")
            continue
        probes = {"choices": dist.choices or []} if dist.type == "categorical" else {"low": [dist.low], "high": [dist.high]}
        for name, values in probes.items():
            for value in values:
                try:
                    build_config(base_for(spec.base, {key: value}), {key: value})
                except ConfigError as err:
                    problems += [f"{where}.{name}: {line.partition(': ')[2]}" for line in str(err).splitlines()]
    return problems


def _metric_problems(spec: SweepSpec) -> list[str]:
    def unknown(where: str, name: str) -> str:
        close = difflib.get_close_matches(name, list(METRICS), n=1)
        return f"{where}: unknown metric {name!r}" + (f" (did you mean {close[0]}?)" if close else " (see etrm.metrics.METRICS)")

    problems = []
    if not spec.metrics:
        problems.append("metrics: name at least one metric to compare")
    for i, name in enumerate(spec.metrics):
        if name not in METRICS:
            problems.append(unknown(f"metrics[{i}]", name))
        elif name in spec.metrics[:i]:
            problems.append(f"metrics[{i}]: {name} is listed twice")
    if (opt := spec.optuna) is not None and opt.metric is not None and opt.metric not in METRICS:
        problems.append(unknown("search.optuna.metric", opt.metric))
    return problems


# ---- loading ----


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(loc: list[str | int]) -> list[str]:
    """The keys allowed where an unknown key `loc` was found (for a did-you-mean)."""
    models: list[type[BaseModel]] = [SweepSpec]
    for part in loc[:-1]:
        fields = [m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields]
        if fields:  # else a dict key or list index: the same models hold its value's keys
            models = _models_in(fields[0].annotation)
    return [name for m in models for name in m.model_fields]


def format_spec_error(err: ValidationError) -> str:
    """One line per problem: `field.path[i]: message` (union tags such as `<optuna>` are not part of the path)."""
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("<") and p.endswith(">"))]
        if loc[:1] == ["adaptive"]:
            loc = ["seeds", *loc]  # written as seeds: {adaptive: ...}
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1)
            msg = "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


def parse_spec(tree: dict[str, Any]) -> SweepSpec:
    """Validate a spec already read from YAML (or built in code), resolved, or raise SpecError: the schema
    first (each field alone), then the cross-field checks on the resolved values."""
    try:
        spec = resolve(SweepSpec.model_validate(tree))
    except ValidationError as err:
        raise SpecError(format_spec_error(err)) from None
    if problems := check(spec):
        raise SpecError("\n".join(problems))
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and fully validate a YAML sweep spec, or raise SpecError."""
    path = Path(path)
    try:
        tree = read_yaml(path)
    except YamlError as err:
        raise SpecError(str(err)) from None
    if not isinstance(tree, dict):
        raise SpecError(f"{path}: the top level must be a mapping (name:, base:, axes:, seeds:, ...)")
    return parse_spec(tree)
