"""The plan: factorial cells minus exclusions, times seeds, with ids that survive relaunches and additions."""

from __future__ import annotations

import copy
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etrm.config import OBSERVABILITY_KEYS
from orchestrator.cli import app, render_plan
from orchestrator.plan import make_plan, planned_trial, short_names
from orchestrator.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))

SPEC = {
    "name": "plan-test",
    "base": {"data": {"grid_size": 6}, "model": {"hidden_size": 32, "encoder": {"type": "hybrid_standard"}},
             "train": {"steps": 10}},
    "axes": {
        "model.encoder.type": ["standard", "hybrid_standard", "hybrid_variational"],
        "model.encoder.kl_weight": [0.0, 1.0e-4],
        "model.encoder.final_norm": [True, False],
    },
    "seeds": [0, 1, 2],
    "exclude": [{"model.encoder.type": "standard", "model.encoder.kl_weight": 1.0e-4},
                {"model.encoder.type": "hybrid_standard", "model.encoder.kl_weight": 1.0e-4}],
    "contrast": {"axis": "model.encoder.final_norm", "treatment": True, "control": False},
}


def plan_of(**changes):
    return make_plan(parse_spec(copy.deepcopy(SPEC) | changes))


def ids(plan) -> dict[tuple, str]:
    """(variant, seed) -> trial id."""
    return {(tuple(t.variant.items()), t.seed): t.trial_id for t in plan.trials}


def test_factorial_minus_exclusions():
    plan = plan_of()
    variants = [t.variant for t in plan.trials[::3]]
    assert len(plan.cells) == 3 * 2 * 2 - 4 == len(variants) and plan.excluded_cells == 4
    assert len(plan.trials) == 8 * 3 and plan.num_trials == 24
    assert plan.summary() == "8 cells x 3 seeds = 24 trials (4 cells excluded)"
    expected = [dict(zip(SPEC["axes"], values)) for values in itertools.product(*SPEC["axes"].values())
                if not (values[0] != "hybrid_variational" and values[1] > 0)]
    assert variants == expected  # spec order: first axis slowest, seeds innermost
    assert all(t.config.model.encoder.type == t.variant["model.encoder.type"] for t in plan.trials)
    assert all(t.config.seed == t.seed for t in plan.trials)
    assert len({t.trial_id for t in plan.trials}) == 24


def test_trial_ids_are_stable_across_processes():
    here = [t.trial_id for t in plan_of().trials]
    assert here == [t.trial_id for t in plan_of().trials]
    code = ("import json, sys; from orchestrator.plan import make_plan; from orchestrator.spec import parse_spec; "
            "print(json.dumps([t.trial_id for t in make_plan(parse_spec(json.loads(sys.argv[1]))).trials]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(SPEC)], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == here


def test_trial_id_is_the_config_hash():
    trial = plan_of().trials[0]
    assert trial.trial_id == trial.config.config_hash()


def test_how_often_a_trial_reports_is_not_part_of_its_id():
    """Logging, eval and checkpoint frequencies and CPU threads change what is seen of a trial, not what it
    computes: changing them reruns nothing (test_train holds that the weights do not move)."""
    base = copy.deepcopy(SPEC["base"])
    base["train"] |= {"log_every": 1, "eval_every": 5, "checkpoint_every": 2, "threads": 1}
    watched = plan_of(base=base)
    assert ids(watched) == ids(plan_of()) and list(watched.cells) == list(plan_of().cells)
    assert watched.trials[0].config.train.log_every == 1  # still in the config every run records
    assert ids(plan_of(base=copy.deepcopy(SPEC["base"]) | {"train": {"steps": 11}})) != ids(plan_of())


@pytest.mark.parametrize("key", OBSERVABILITY_KEYS)
def test_an_observability_key_is_not_an_axis(key):
    with pytest.raises(SpecError, match=rf"^axes\.{re.escape(key)}: changes how a trial is watched, not what it computes"):
        plan_of(axes={key: [1, 2]}, contrast=None, exclude=[])


def test_adding_a_seed_keeps_old_ids():
    old, new = ids(plan_of()), ids(plan_of(seeds=[0, 1, 2, 3]))
    assert len(new) == len(old) + 8
    assert {k: new[k] for k in old} == old


def test_adding_an_axis_value_keeps_old_ids():
    axes = copy.deepcopy(SPEC["axes"])
    axes["model.encoder.kl_weight"].append(1.0e-3)
    exclude = SPEC["exclude"] + [{"model.encoder.type": t, "model.encoder.kl_weight": 1.0e-3}
                                 for t in ("standard", "hybrid_standard")]  # deterministic: they ignore kl_weight
    old, new = ids(plan_of()), ids(plan_of(axes=axes, exclude=exclude))
    assert len(new) == len(old) + 1 * 2 * 3  # hybrid_variational x final_norm x seed
    assert {k: new[k] for k in old} == old


def test_adding_an_axis_at_its_base_value_keeps_old_ids():
    """A new axis whose first value is what the base already had resolves old trials to the same configs."""
    axes = copy.deepcopy(SPEC["axes"]) | {"train.lr": [1.0e-3, 3.0e-4]}  # 1e-3 is the trainer default
    old = plan_of()
    new = plan_of(axes=axes)
    assert len(new.trials) == 2 * len(old.trials)
    kept = {t.trial_id for t in new.trials if t.variant["train.lr"] == 1.0e-3}
    assert kept == {t.trial_id for t in old.trials}


def test_cell_ids_do_not_depend_on_seeds():
    plan = plan_of()
    for cell_id, trials in plan.cells.items():
        assert [t.seed for t in trials] == [0, 1, 2]
        assert {t.cell_id for t in trials} == {cell_id}
        assert len({t.trial_id for t in trials}) == 3
    more = plan_of(seeds=[5, 0, 7])
    assert list(more.cells) == list(plan.cells)
    assert len(set(plan.cells)) == 8
    assert not set(plan.cells) & {t.trial_id for t in plan.trials}


def test_arms_pair_by_seed():
    """Every treatment trial has a control trial with the same seed and otherwise the same variant."""
    plan = plan_of()
    by_key = {(tuple(sorted(t.variant.items())), t.seed): t for t in plan.trials}
    treated = [t for t in plan.trials if t.variant["model.encoder.final_norm"] is True]
    assert len(treated) == len(plan.trials) // 2
    for t in treated:
        partner = by_key[(tuple(sorted((t.variant | {"model.encoder.final_norm": False}).items())), t.seed)]
        assert partner.config.model.encoder.final_norm is False
        assert partner.config.model_dump(exclude={"model"}) == t.config.model_dump(exclude={"model"})


def test_pending_skips_finished_trials_in_plan_order():
    plan = plan_of()
    finished = {plan.trials[1].trial_id, plan.trials[5].trial_id, "not-a-trial-of-this-plan"}
    pending = plan.pending(finished)
    assert [t.trial_id for t in pending] == [t.trial_id for t in plan.trials if t.trial_id not in finished]
    assert len(pending) == 22
    assert plan.pending({t.trial_id for t in plan.trials}) == []


def test_labels_are_short_and_unique():
    assert short_names(["model.encoder.type", "model.encoder.num_layers", "model.L_layers", "data.x.num_layers"]) == {
        "model.encoder.type": "type", "model.encoder.num_layers": "encoder.num_layers", "model.L_layers": "L_layers",
        "data.x.num_layers": "x.num_layers"}
    labels = [trials[0].cell_label for trials in plan_of().cells.values()]
    assert labels[0] == "type=standard kl_weight=0.0 final_norm=true"
    assert len(set(labels)) == len(labels)
    assert make_plan(parse_spec({"name": "base-only", "seeds": [0, 1]})).trials[0].cell_label == "base"


def test_render_plan_marks_finished_trials():
    from rich.console import Console

    plan = plan_of()
    cell = list(plan.cells.values())[0]
    console = Console(width=200, record=True)
    console.print(render_plan(plan, {cell[0].trial_id, *(t.trial_id for t in list(plan.cells.values())[1])}))
    text = console.export_text()
    assert "8 cells x 3 seeds = 24 trials" in text
    assert "1/3 finished" in text and "4 of 24 trials finished, 20 pending" in text
    assert cell[0].trial_id[:8] in text
    assert text.count("finished") == 3  # 1/3 finished, finished, the footer


def test_optuna_plan_describes_the_search():
    spec = parse_spec({"name": "tune", "seeds": [3], "metrics": ["ARC/pass@1"],
                       "search": {"optuna": {"num_samples": 12, "space": {
                           "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
                           "model.encoder.type": {"type": "categorical", "choices": ["standard", "hybrid_standard"]}}}}})
    plan = make_plan(spec)
    assert plan.trials == [] and plan.num_trials == 12
    assert plan.summary() == "optuna samples 12 trials over train.lr, model.encoder.type (seed 3, maximising ARC/pass@1)"
    sample = planned_trial(spec, {"train.lr": 0.002, "model.encoder.type": "standard"}, 3)
    assert sample.config.train.lr == 0.002 and sample.config.seed == 3
    assert sample.trial_id == planned_trial(spec, {"model.encoder.type": "standard", "train.lr": 0.002}, 3).trial_id


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweeps_validate(path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    plan = make_plan(load_spec(path))
    assert result.stdout.startswith(f"ok: {len(plan.cells)} cells x {len(plan.spec.seeds)} seeds = {len(plan.trials)} trials")
    assert plan.spec.contrast is not None and plan.spec.contrast.axis == "model.encoder.final_norm"


def test_shipped_sweeps_are_the_intended_experiments():
    assert {p.name for p in SWEEPS} >= {"demo.yaml", "norm-fix.yaml", "full-ablation.yaml"}
    demo = make_plan(load_spec(ROOT / "sweeps" / "demo.yaml"))
    assert len(demo.spec.seeds) >= 3 and demo.spec.max_concurrent == 2 and demo.spec.resources.gpu == 0
    assert all(t.config.model.encoder.type == "hybrid_standard" and t.config.model.encoder.norm_style == "pre"
               and t.config.data.source == "synthetic" for t in demo.trials)
    assert len(demo.trials) == 18  # 6 seeds (the fewest for which the exact paired test reaches p < 0.05) x 3 arms
    null = [t for t in demo.trials if t.config.model.init_jitter is not None]
    assert len(null) == 6 and all(not t.config.model.encoder.final_norm for t in null)  # the control, jittered
    m = demo.trials[0].config.model  # the real loop: recursion and ACT, not one pass
    assert m.H_cycles >= 2 and m.L_cycles >= 2 and m.halt_max_steps >= 2 and m.halt_exploration_prob > 0
    # the scale-free variance and the gradient spikes are compared, next to the raw variance
    assert {"encoder_cross_sample_var_rel", "grad/max_norm", "grad/spike_steps"} <= set(demo.spec.metrics)
    for plan in (demo, make_plan(load_spec(ROOT / "sweeps" / "norm-fix.yaml"))):
        assert "encoder_cross_sample_var" not in plan.spec.metrics[:3]  # raw: falls with the fix by construction

    norm_fix = make_plan(load_spec(ROOT / "sweeps" / "norm-fix.yaml"))
    beta = 1.0e-4 / 32  # the research's kl_weight on a KL over its local batch of 128 / 4 GPUs, per sample
    arms = {(t.config.model.encoder.type, t.config.model.encoder.kl_weight, t.config.model.encoder.norm_style)
            for t in norm_fix.trials}
    assert arms == {(e, kl, style) for e, kl in (("hybrid_standard", 0.0), ("hybrid_variational", 0.0),
                                                 ("hybrid_variational", beta)) for style in ("post", "pre")}
    assert len(norm_fix.trials) == 3 * 2 * (2 + 1) * 5  # each experiment x block: fix, no fix, null arm of no fix
    c = next(t.config for t in norm_fix.trials if t.config.model.encoder.type == "hybrid_variational")
    assert (c.model.hidden_size, c.model.num_heads, c.model.H_cycles, c.model.L_cycles, c.model.halt_max_steps,
            c.model.encoder.num_layers, c.model.encoder.set_layers, c.model.encoder.latent_dim, c.data.grid_size,
            c.data.source, c.train.batch_size, c.train.lr, c.decoder.freeze, norm_fix.spec.resources.gpu) == (
        512, 8, 3, 4, 16, 4, 1, 512, 30, "arc-agi-1", 128, 3e-4, True, 1)

    full = make_plan(load_spec(ROOT / "sweeps" / "full-ablation.yaml"))
    assert all(t.config.model.encoder.kl_weight == 0 or t.config.model.encoder.type == "hybrid_variational"
               for t in full.trials)
    assert set(full.spec.axes) >= {"model.encoder.type", "model.encoder.kl_weight", "model.encoder.num_layers",
                                   "model.encoder.norm_style", "model.encoder.final_norm"}


def test_an_unset_key_added_later_keeps_every_existing_trial_id():
    """model.init_jitter (the null-control arm) came after sweeps were recorded: unset, it is not hashed, so
    these ids, computed before it existed, still hold; set, it makes a new trial."""
    from etrm.config import build_config

    config = build_config({})
    assert (config.config_hash(), config.config_hash(without=("seed",))) == ("7c8a47a7255021da", "877df24ac9d17155")
    assert build_config({"model": {"init_jitter": 1}}).config_hash() != config.config_hash()
