"""Malformed specs are refused before anything runs: exit code 2, one line naming the field, no traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness import run_cli
from orchestrator.cli import app
from orchestrator.plan import make_plan
from orchestrator.spec import SpecError, check, load_spec, parse_spec, resolve

ROOT = Path(__file__).resolve().parent.parent

VALID = {
    "name": "spec-test",
    "base": {
        "data": {"source": "synthetic", "grid_size": 6},
        "model": {"hidden_size": 32, "num_heads": 4, "encoder": {"type": "hybrid_standard", "norm_style": "pre"}},
        "train": {"steps": 10},
    },
    "axes": {
        "model.encoder.final_norm": [True, False],
        "model.encoder.type": ["hybrid_standard", "hybrid_variational"],
        "model.encoder.kl_weight": [0.0, 1.0e-4],
    },
    "seeds": [0, 1, 2],
    "exclude": [{"model.encoder.type": "hybrid_standard", "model.encoder.kl_weight": 1.0e-4}],
    "contrast": {"axis": "model.encoder.final_norm", "treatment": True, "control": False},
    "metrics": ["eval/exact_accuracy", "ARC/pass@1", "encoder_cross_sample_var"],
    "resources": {"cpu": 1, "gpu": 0},
    "max_concurrent": 2,
    "max_failures": 2,
    "scheduler": "none",
    "search": "grid",
}

OPTUNA = {"optuna": {"num_samples": 4, "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}}


def edit(path: str, value=None, *, delete: bool = False):
    """A mutation of VALID: set (or delete) one entry, addressed by a /-separated path (axis keys contain dots)."""

    def apply(tree: dict) -> None:
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if delete:
            del node[leaf]
        else:
            node[leaf] = value

    return apply


def both(*mutations):
    def apply(tree: dict) -> None:
        for m in mutations:
            m(tree)

    return apply


def optuna_search(**changes):
    """Switch VALID to optuna search (dropping the grid-only parts), then apply `changes` to search.optuna."""
    search = copy.deepcopy(OPTUNA)
    search["optuna"].update(changes)
    return both(edit("axes", {}), edit("exclude", []), edit("contrast", delete=True), edit("seeds", [0]),
                edit("search", search))


# (case id, a mutation of VALID or raw YAML text, a substring the error must contain)
CASES = [
    ("malformed-yaml", "name: x\naxes: {model.encoder.type: [a, b\n", "not valid YAML (line"),
    ("duplicate-yaml-key", "name: x\nseeds: [0]\nseeds: [1]\n", "key 'seeds' appears twice"),
    ("date-like-value", "name: x\nseeds: [0]\nbase: {data: {source: 2024-01-01}}\n",
     "base.data.source: '2024-01-01' is neither synthetic"),
    ("top-level-not-mapping", "- name: x\n", "the top level must be a mapping"),
    ("unknown-top-level-key", edit("max_concurent", 2), "max_concurent: unknown key (did you mean max_concurrent?)"),
    ("unknown-nested-key", edit("resources/gpus", 1), "resources.gpus: unknown key"),
    ("missing-name", edit("name", delete=True), "name: Field required"),
    ("name-with-spaces", edit("name", "norm fix"), "name: 'norm fix': use up to 64 lowercase letters"),
    ("max-concurrent-wrong-type", edit("max_concurrent", "two"), "max_concurrent: Input should be a valid integer"),
    ("max-concurrent-zero", edit("max_concurrent", 0), "max_concurrent: Input should be greater than or equal to 1"),
    ("max-failures-negative", edit("max_failures", -1), "max_failures: Input should be greater than or equal to 0"),
    ("gpu-negative", edit("resources/gpu", -1), "resources.gpu: Input should be greater than or equal to 0"),
    ("gpu-fraction-above-one", edit("resources/gpu", 1.5), "resources.gpu: 1.5 GPUs"),
    ("cpu-zero", edit("resources/cpu", 0), "resources.cpu: Input should be greater than 0"),
    ("custom-resource-builtin", edit("resources/custom", {"GPU": 1}), "resources.custom: GPU: a built-in Ray resource"),
    ("custom-resource-zero", edit("resources/custom", {"a100": 0}), "resources.custom.a100: Input should be greater than 0"),
    ("axes-not-a-mapping", edit("axes", ["model.encoder.type"]), "axes: Input should be a valid dictionary"),
    ("axis-values-not-a-list", edit("axes/model.encoder.final_norm", True), "axes.model.encoder.final_norm: Input should be a valid list"),
    ("axis-key-not-config-key", edit("axes/model.encoder.typo", [1, 2]),
     "axes.model.encoder.typo: not a trial-config key (did you mean model.encoder.type?)"),
    ("axis-key-is-a-section", edit("axes/model.encoder", [1]), "axes.model.encoder: a config section, not a key"),
    ("seed-as-axis", edit("axes/seed", [0, 1]), "axes.seed: the seed is not an axis"),
    ("empty-axis", edit("axes/model.encoder.final_norm", []), "axes.model.encoder.final_norm: give at least one value"),
    ("duplicate-axis-value", edit("axes/model.encoder.kl_weight", [0.0, 1.0e-4, 0.0001]),
     "axes.model.encoder.kl_weight[2]: 0.0001 is listed twice"),
    ("axis-value-wrong-type", edit("axes/model.encoder.final_norm", [True, "maybe"]),
     "axes.model.encoder.final_norm[1]: Input should be a valid boolean"),
    ("axis-value-out-of-range", edit("axes/model.encoder.kl_weight", [0.0, -1.0]),
     "axes.model.encoder.kl_weight[1]: Input should be greater than or equal to 0"),
    ("unknown-encoder-axis-value", edit("axes/model.encoder.type", ["hybrid_standard", "transformer_xl"]),
     "axes.model.encoder.type[1]: unknown encoder type 'transformer_xl'"),
    ("cell-invalid-in-combination", edit("axes/model.num_heads", [4, 6]),
     "axes: cells {model.num_heads: 6} are not valid configs (model: hidden_size 32 is not divisible by num_heads 6)"),
    ("knob-the-encoder-ignores", both(edit("axes", {"model.encoder.final_norm": [True, False]}), edit("exclude", []),
                                      edit("base/model/encoder/type", "lpn_standard")),
     "axes.model.encoder.final_norm[1]: the lpn_standard encoder ignores final_norm (it has no set encoder)"),
    ("knob-ignored-by-one-encoder-of-an-axis", both(edit("axes/model.encoder.type", ["hybrid_standard", "lpn_variational"]),
                                                    edit("exclude", [{"model.encoder.type": "hybrid_standard",
                                                                      "model.encoder.kl_weight": 1.0e-4}])),
     "axes: cells {model.encoder.final_norm: false, model.encoder.type: lpn_variational} are not valid configs "
     "(model.encoder.final_norm: the lpn_variational encoder ignores final_norm"),
    ("knob-no-encoder-of-the-sweep-uses", both(edit("axes", {"train.lr": [1.0e-3, 2.0e-3]}), edit("exclude", []),
                                               edit("contrast", delete=True), edit("base/model/encoder/latent_dim", 64)),
     "base.model.encoder.latent_dim: no encoder of this sweep (hybrid_standard) uses latent_dim"),
    ("invalid-base-value", edit("base/train/lr", -1), "base.train.lr: Input should be greater than 0"),
    ("unknown-base-key", edit("base/model/encoder/typo", 1), "base.model.encoder.typo: unknown key"),
    ("seed-in-base", edit("base/seed", 3), "base.seed: set seeds with the top-level `seeds:` list"),
    ("cuda-without-gpu", edit("base/train/device", "cuda"), "resources.gpu: trials with train.device cuda need resources.gpu > 0"),
    ("missing-seeds", edit("seeds", delete=True), "seeds: Field required"),
    ("seeds-empty", edit("seeds", []), "seeds: give at least one seed"),
    ("seeds-duplicated", edit("seeds", [0, 1, 1]), "seeds: seed 1 appears more than once"),
    ("seeds-negative", edit("seeds", [0, -1]), "seeds[1]: Input should be greater than or equal to 0"),
    ("seeds-not-integers", edit("seeds", [0, 1.5]), "seeds[1]: Input should be a valid integer"),
    ("seed-count-zero", edit("seeds", {"count": 0}), "seeds: give a list of seeds, {count: N}"),
    ("adaptive-max-below-min", edit("seeds", {"adaptive": {"min": 4, "max": 4, "half_width": 0.05}}),
     "seeds.adaptive: max (4) must be above min (4)"),
    ("adaptive-min-one", edit("seeds", {"adaptive": {"min": 1, "max": 4, "half_width": 0.05}}),
     "seeds.adaptive.min: Input should be greater than or equal to 2"),
    ("adaptive-no-half-width", edit("seeds", {"adaptive": {"min": 2, "max": 4}}), "seeds.adaptive.half_width: Field required"),
    ("adaptive-unknown-key", edit("seeds", {"adaptive": {"min": 2, "max": 4, "half_width": 0.1, "mx": 3}}),
     "seeds.adaptive.mx: unknown key"),
    ("adaptive-top-level", edit("adaptive", {"min": 2, "max": 4, "half_width": 0.1}), "adaptive: not a key of its own"),
    ("adaptive-without-contrast", both(edit("seeds", {"adaptive": {"min": 2, "max": 4, "half_width": 0.1}}),
                                       edit("contrast", delete=True)), "seeds.adaptive: stops on the primary contrast"),
    ("null-control-without-contrast", both(edit("null_control", True), edit("contrast", delete=True)),
     "null_control: a null arm repeats the control of a contrast"),
    ("null-control-key-as-axis", both(edit("null_control", True), edit("axes/model.init_jitter", [1, 2])),
     "axes.model.init_jitter: null_control sets this key"),
    ("null-control-key-in-base", both(edit("null_control", True), edit("base/model/init_jitter", 3)),
     "base.model.init_jitter: null_control sets this key"),
    ("exclude-non-axis", edit("exclude", [{"model.hidden_size": 32}]), "exclude[0].model.hidden_size: not an axis"),
    ("exclude-value-not-an-axis-value", edit("exclude", [{"model.encoder.type": "standard"}]),
     "exclude[0].model.encoder.type: 'standard' is not one of the axis values"),
    ("exclude-empty-entry", edit("exclude", [{}]), "exclude[0]: empty"),
    ("exclude-removes-every-cell", edit("exclude", [{"model.encoder.kl_weight": 0.0}, {"model.encoder.kl_weight": 1.0e-4}]),
     "exclude: removes all 8 cells of the grid"),
    ("contrast-axis-not-an-axis", edit("contrast/axis", "model.encoder.norm_style"),
     "contrast.axis: model.encoder.norm_style is not an axis"),
    ("contrast-treatment-not-a-value", edit("contrast/treatment", "yes please"),
     "contrast.treatment: Input should be a valid boolean"),
    ("contrast-control-not-a-value", both(edit("contrast/axis", "model.encoder.type"), edit("contrast/treatment", "hybrid_standard"),
                                          edit("contrast/control", "standard")),
     "contrast.control: 'standard' is not one of the values of model.encoder.type"),
    ("contrast-same-arms", edit("contrast/control", True), "contrast: treatment and control are the same value"),
    ("contrast-unpaired-by-exclusion", edit("exclude", [{"model.encoder.final_norm": False, "model.encoder.kl_weight": 1.0e-4}]),
     "contrast: cells {model.encoder.final_norm: true, model.encoder.kl_weight: 0.0001} have no partner with "
     "model.encoder.final_norm: false (excluded)"),
    ("contrast-unknown-key", edit("contrast/axes", "model.encoder.type"), "contrast.axes: unknown key (did you mean axis?)"),
    ("unknown-metric", edit("metrics", ["eval/exact_accuracy", "eval/exact_acc"]),
     "metrics[1]: unknown metric 'eval/exact_acc' (did you mean eval/exact_accuracy?)"),
    ("no-metrics", edit("metrics", []), "metrics: name at least one metric"),
    ("asha-with-contrast", edit("scheduler", "asha"), "scheduler: asha stops trials early"),
    ("unknown-scheduler", edit("scheduler", "hyperband"), "scheduler: Input should be 'none' or 'asha'"),
    ("unknown-search", edit("search", "random"), "search: 'random': use `grid` or {optuna:"),
    ("optuna-without-space", both(optuna_search(), edit("search/optuna/space", delete=True)),
     "search.optuna.space: Field required"),
    ("optuna-empty-space", optuna_search(space={}), "search.optuna.space: give at least one dotted trial-config key"),
    ("optuna-space-unknown-key", optuna_search(space={"train.lrr": {"type": "float", "low": 0.1, "high": 1}}),
     "search.optuna.space.train.lrr: not a trial-config key (did you mean train.lr?)"),
    ("optuna-float-without-high", optuna_search(space={"train.lr": {"type": "float", "low": 0.1}}),
     "search.optuna.space.train.lr: float needs `low` and `high`"),
    ("optuna-invalid-choice", optuna_search(space={"model.encoder.type": {"type": "categorical", "choices": ["standard", "rnn"]}}),
     "search.optuna.space.model.encoder.type.choices: unknown encoder type 'rnn'"),
    ("optuna-with-axes", both(optuna_search(), edit("axes", {"train.lr": [0.1]})), "axes: optuna search samples"),
    ("optuna-with-several-seeds", both(optuna_search(), edit("seeds", [0, 1])), "seeds: optuna search runs each sample once"),
    ("optuna-unknown-metric", optuna_search(metric="ARC/pass@3"), "search.optuna.metric: unknown metric 'ARC/pass@3'"),
    ("tracking-unknown-key", edit("tracking", {"url": "http://x"}), "tracking.url: unknown key (did you mean uri?)"),
]


def write_case(tmp_path: Path, case) -> Path:
    path = tmp_path / "spec.yaml"
    if isinstance(case, str):
        path.write_text(case)
    else:
        tree = copy.deepcopy(VALID)
        case(tree)
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({c[2] for c in CASES}) == len(CASES)


def test_valid_spec_validates(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(write_case(tmp_path, lambda tree: None))])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: 6 cells x 3 seeds = 18 trials (2 cells excluded)"


@pytest.mark.parametrize("case, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_is_refused(tmp_path, case, expected):
    result = CliRunner().invoke(app, ["validate", str(write_case(tmp_path, case))])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a crash
    assert "Traceback" not in result.output
    assert result.stdout == ""  # nothing claims success
    errors = result.stderr.splitlines()
    assert len(errors) == 1, result.stderr  # one problem, one line
    assert errors[0].startswith("error: ") and expected in errors[0], result.stderr


def test_every_problem_is_reported_on_its_own_line():
    tree = copy.deepcopy(VALID)
    tree["axes"]["model.encoder.typo"] = [1]
    tree["axes"]["model.encoder.final_norm"] = [True, "maybe"]
    tree["metrics"] = ["nope/metric"]
    with pytest.raises(SpecError) as err:
        parse_spec(tree)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("axes.model.encoder.final_norm[1]: Input should be a valid boolean")
    assert lines[1].startswith("axes.model.encoder.typo: not a trial-config key")
    assert lines[2].startswith("metrics[0]: unknown metric 'nope/metric'")
    assert len(lines) == 3


def test_real_cli_refuses_a_malformed_spec(tmp_path):
    path = write_case(tmp_path, edit("axes/model.encoder.type", ["hybrid_standard", "transformer_xl"]))
    proc = run_cli(["validate", path])
    assert proc.returncode == 2
    assert "error: axes.model.encoder.type[1]: unknown encoder type 'transformer_xl'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_real_cli_refuses_a_missing_file(tmp_path):
    proc = run_cli(["validate", tmp_path / "nope.yaml"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"


def test_real_cli_plan_refuses_bad_yaml(tmp_path):
    path = write_case(tmp_path, "name: [unclosed\n")
    proc = run_cli(["plan", path], tmp_path / "ws")
    assert proc.returncode == 2
    assert "not valid YAML (line 2, column 1" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_teaches():
    proc = run_cli(["--help"])
    assert proc.returncode == 0
    for word in ("validate", "plan", "trial", "spec"):
        assert word in proc.stdout
    result = CliRunner().invoke(app, ["trial", "--help"], env={"COLUMNS": "200"})
    assert "--set" in result.stdout and "model.encoder.final_norm=false" in result.stdout


def test_values_take_the_type_of_their_config_key():
    """YAML reads `1e-4` as a string; the spec must still match it against kl_weight 0.0001 everywhere."""
    tree = copy.deepcopy(VALID)
    tree["axes"]["model.encoder.kl_weight"] = [0, "1e-4"]
    tree["exclude"] = [{"model.encoder.type": "hybrid_standard", "model.encoder.kl_weight": 0.0001}]
    spec = parse_spec(tree)
    assert spec.axes["model.encoder.kl_weight"] == [0.0, 0.0001]
    assert len(spec.cells()) == 6


def test_defaults_and_shorthands():
    tree = copy.deepcopy(VALID) | {"seeds": {"count": 5}}
    for key in ("metrics", "resources", "max_concurrent", "max_failures", "scheduler", "search"):
        del tree[key]
    spec = parse_spec(tree)
    assert spec.seeds == [0, 1, 2, 3, 4]
    assert spec.tracking.experiment == "spec-test"
    assert spec.metrics[0] == "eval/exact_accuracy"
    assert spec.primary_metric() == ("eval/exact_accuracy", "max")
    assert spec.search == "grid" and spec.scheduler == "none" and spec.max_concurrent is None
    assert parse_spec(spec.model_dump()) == spec  # a stored spec reads back unchanged


def test_adaptive_seeds_and_null_control():
    tree = copy.deepcopy(VALID) | {"seeds": {"adaptive": {"min": 3, "max": 9, "step": 3, "half_width": 0.05}},
                                   "null_control": True}
    spec = parse_spec(tree)
    assert spec.seeds == list(range(9)) and spec.adaptive.step == 3 and spec.null_control
    assert parse_spec(spec.model_dump()) == spec
    plan = make_plan(spec)
    null = [t for t in plan.trials if "model.init_jitter" in t.variant]
    controls = [c for c in spec.cells() if c["model.encoder.final_norm"] is False]
    assert len(null) == len(controls) * 9  # every control cell has its null arm, every seed
    assert all(t.config.model.init_jitter == 1 and t.variant["model.encoder.final_norm"] is False for t in null)
    assert "up to 9 seeds (adaptive: 3, then +3)" in plan.summary() and "null-control" in plan.summary()


def test_no_axes_is_one_cell_of_the_base_config():
    tree = {"name": "baseline", "seeds": [0, 1]}
    spec = parse_spec(tree)
    assert spec.cells() == [{}]


def test_optuna_defaults_to_the_primary_metric():
    tree = copy.deepcopy(VALID)
    optuna_search(mode="min")(tree)
    tree["metrics"] = ["train/lm_loss"]
    spec = parse_spec(tree)
    assert spec.search.optuna.metric == "train/lm_loss"
    assert spec.primary_metric() == ("train/lm_loss", "min")


def test_resolve_types_the_values_and_check_changes_nothing():
    """resolve() is the one step that normalises; the cross-field checks only read."""
    tree = copy.deepcopy(VALID)
    tree["axes"]["model.encoder.kl_weight"] = [0.0, "1e-4"]
    tree["exclude"] = [{"model.encoder.type": "hybrid_standard", "model.encoder.kl_weight": "1e-4"}]
    given = copy.deepcopy(tree)
    spec = parse_spec(tree)
    assert tree == given  # the caller's tree is not touched
    assert spec.axes["model.encoder.kl_weight"] == [0.0, 1.0e-4] and spec.exclude[0]["model.encoder.kl_weight"] == 1.0e-4
    assert spec.tracking.experiment == "spec-test" and resolve(spec) == spec  # resolving twice changes nothing

    dumped = spec.model_dump()
    assert check(spec) == [] and spec.model_dump() == dumped
    bad = spec.model_copy(update={"exclude": [{"model.encoder.type": "standard"}]})
    assert check(bad) == ["exclude[0].model.encoder.type: 'standard' is not one of the axis values "
                          "['hybrid_standard', 'hybrid_variational']"]
    assert bad.exclude == [{"model.encoder.type": "standard"}] and spec.model_dump() == dumped


def test_load_spec_reads_yaml(tmp_path):
    path = write_case(tmp_path, lambda tree: None)
    assert load_spec(path) == parse_spec(VALID)


def test_check_resources():
    from orchestrator.dispatch import check_resources  # at launch, against the cluster Ray reports

    gpu_spec = parse_spec(copy.deepcopy(VALID) | {"resources": {"cpu": 4, "gpu": 0.5}})
    check_resources(gpu_spec, {"CPU": 16.0, "GPU": 1.0, "memory": 1e10})
    with pytest.raises(SpecError, match=r"^resources\.gpu: each trial asks for 0\.5 GPU but the cluster has none"):
        check_resources(gpu_spec, {"CPU": 16.0})
    with pytest.raises(SpecError, match=r"^resources\.cpu: each trial asks for 4 CPUs but the cluster has 2"):
        check_resources(gpu_spec, {"CPU": 2.0, "GPU": 1.0})
    check_resources(parse_spec(VALID), {"CPU": 1.0})
    zoned = parse_spec(copy.deepcopy(VALID) | {"resources": {"cpu": 1, "custom": {"zone_b": 0.5}}})
    check_resources(zoned, {"CPU": 2.0, "zone_b": 1.0})
    with pytest.raises(SpecError, match=r"^resources\.custom\.zone_b: each trial asks for 0\.5 but the cluster has none"):
        check_resources(zoned, {"CPU": 2.0, "zone_a": 1.0})


def test_the_driver_checks_and_plans_a_spec_without_loading_heavy_modules():
    """Up to Tune's start, the sweep driver validates, plans and builds the grid with neither torch (the
    workers' business) nor the comparison's SciPy and matplotlib imported: on 2 cores each costs the
    first trial about half a second or more of start-up. MLflow loads in a thread meanwhile."""
    code = """
import sys
from orchestrator.dispatch import grid_search
from orchestrator.plan import make_plan
from orchestrator.spec import load_spec
for path in ("sweeps/demo.yaml", "sweeps/norm-fix.yaml", "sweeps/full-ablation.yaml"):
    spec = load_spec(path)
    grid_search(make_plan(spec).trials, set())
    spec.primary_metric()
print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "scipy", "matplotlib", "mlflow"}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_optuna_without_mode_follows_the_metrics_direction():
    """Issue 11: `mode` used to default to "max", so an Optuna spec on a loss maximised the loss."""
    for metric, mode in (("train/lm_loss", "min"), ("ARC/pass@1", "max")):
        tree = copy.deepcopy(VALID)
        optuna_search(metric=metric)(tree)
        spec = parse_spec(tree)
        assert spec.primary_metric() == (metric, mode)
        assert f"{mode}imising {metric}" in make_plan(spec).summary()  # what `validate` prints


def test_optuna_on_a_metric_without_a_direction_needs_a_mode():
    tree = copy.deepcopy(VALID)
    optuna_search(metric="encoder_cross_sample_var")(tree)
    with pytest.raises(SpecError, match=r"^search\.optuna\.mode: encoder_cross_sample_var has no better direction"):
        parse_spec(tree)
    tree["search"]["optuna"]["mode"] = "min"
    assert parse_spec(tree).primary_metric() == ("encoder_cross_sample_var", "min")


def test_asha_refuses_a_primary_metric_without_a_direction():
    """Issue 11: ASHA on a metric with no known direction was silently maximised."""
    tree = copy.deepcopy(VALID)
    both(edit("contrast", delete=True), edit("scheduler", "asha"), edit("metrics", ["encoder_cross_sample_var"]))(tree)
    with pytest.raises(SpecError, match=r"^scheduler: asha ranks trials by encoder_cross_sample_var, which has no better"):
        parse_spec(tree)
    tree["metrics"] = ["train/lm_loss", "encoder_cross_sample_var"]
    assert parse_spec(tree).primary_metric() == ("train/lm_loss", "min")


def test_a_base_knob_reaches_only_the_cells_whose_encoder_uses_it():
    """The base is shared: latent_dim set there shapes the variational cells and leaves the others at the default
    (so they are not one model under two names); the same value as an axis would be refused for them."""
    tree = copy.deepcopy(VALID)
    tree["base"]["model"]["encoder"]["latent_dim"] = 64
    tree["axes"]["model.encoder.type"] = ["hybrid_standard", "hybrid_variational", "lpn_standard"]
    del tree["contrast"]  # lpn_standard has one arm only
    tree["exclude"] += [{"model.encoder.type": "lpn_standard", "model.encoder.final_norm": False},
                        {"model.encoder.type": "lpn_standard", "model.encoder.kl_weight": 1.0e-4}]
    plan = make_plan(parse_spec(tree))
    latent = {(t.variant["model.encoder.type"], t.config.model.encoder.latent_dim) for t in plan.trials}
    assert latent == {("hybrid_standard", 32), ("hybrid_variational", 64), ("lpn_standard", 32)}
