"""The pre-flight memory estimate (etrm/memory.py): exact parameter counts, the right knob blamed, refusals
before anything is built, and an allocator failure that the estimate let through is still one line."""

from __future__ import annotations

import copy
import resource
import subprocess
import sys

import pytest
import torch
import yaml

from etrm import memory
from etrm.config import build_config
from etrm.grids import VOCAB_SIZE
from etrm.model import ETRM
from etrm.registry import ENCODERS
from harness import CLI, ROOT, TINY_BASE
from orchestrator.plan import check_memory, make_plan
from orchestrator.spec import SpecError, parse_spec
from services import service_env

SHAPES = [(64, 4, 8, 16, 2), (32, 2, 5, 4, 1), (256, 8, 10, 3, 3)]  # hidden, heads, grid, output tokens, layers


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_parameter_count_is_exact(encoder):
    assert memory.VOCAB_SIZE == VOCAB_SIZE
    for hidden, heads, grid, tokens, layers in SHAPES:
        knobs = {"output_tokens": tokens, "num_layers": layers, "set_layers": layers + 1, "latent_dim": 24}
        used = {k: v for k, v in knobs.items() if k in ENCODERS[encoder].knobs}  # others are refused
        cfg = build_config({"data": {"grid_size": grid},
                            "model": {"hidden_size": hidden, "num_heads": heads, "L_layers": layers, "expansion": 3.0,
                                      "encoder": {"type": encoder, **used}}})
        with torch.device("meta"):  # shapes only: counting needs no memory and no initialisation
            model = ETRM(cfg.model, grid, cfg.data.max_demos)
        assert memory.encoder_params(cfg.model, grid) == sum(p.numel() for p in model.encoder.parameters())
        assert memory.decoder_params(cfg.model) == sum(p.numel() for p in model.decoder.parameters())
        assert memory.estimate(cfg).parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("override, culprit", [
    ({"train": {"batch_size": 10**7}}, "train.batch_size"),
    ({"data": {"num_train_puzzles": 10**9}}, "data.num_train_puzzles"),
    ({"data": {"num_eval_puzzles": 10**9}}, "data.num_eval_puzzles"),
    ({"model": {"hidden_size": 10**6}}, "model.hidden_size"),
    ({"model": {"encoder": {"output_tokens": 10**6}}}, "model.encoder.output_tokens"),
])
def test_an_impossible_config_is_refused_naming_its_knob(override, culprit):
    cfg = build_config(override)
    why = memory.problem(cfg, (64 << 30, "a 64 GiB machine"))
    assert why is not None and why.startswith(f"{culprit}: this trial needs ~")
    assert "but a 64 GiB machine is 64 GiB; lower " + culprit in why
    assert memory.problem(build_config({}), (64 << 30, "a 64 GiB machine")) is None


def test_the_estimate_grows_with_what_drives_it():
    base = memory.estimate(build_config({}))
    assert memory.estimate(build_config({"train": {"batch_size": 64}})).activation_bytes > 3 * base.activation_bytes
    assert memory.estimate(build_config({"data": {"num_train_puzzles": 4000}})).data_bytes > 9 * base.data_bytes
    ema = memory.estimate(build_config({"train": {"ema_decay": 0.99}}))
    assert ema.parameter_bytes == base.parameter_bytes * 6 // 5  # one more float per parameter


def test_on_a_gpu_the_host_holds_only_data_and_runtime():
    cfg = build_config({"train": {"batch_size": 4096}})
    est = memory.estimate(cfg)
    small_host = (est.total - est.device_bytes + (1 << 20), "the host")
    assert memory.problem(cfg, small_host) is not None  # on the CPU it cannot fit
    assert memory.problem(cfg, small_host, on_gpu=True) is None  # its model on a GPU, unknown: fine so far
    assert "on the GPU" in memory.problem(cfg, small_host, on_gpu=True, gpu_limit=(1 << 30, "a 1 GiB GPU"))


def test_the_trainer_refuses_before_building_anything():
    from etrm.train import TrialInvalid, train  # a bad config: not worth a retry

    with pytest.raises(TrialInvalid, match=r"train\.batch_size: this trial needs"):
        train(build_config({**TINY_BASE, "train": {**TINY_BASE["train"], "batch_size": 10**7}}))


def test_a_grid_blames_the_axis_value_that_cannot_fit():
    spec = {"name": "big", "seeds": [0], "base": copy.deepcopy(TINY_BASE),
            "axes": {"train.batch_size": [4, 8, 10**6], "model.encoder.final_norm": [True, False]}}
    plan = make_plan(parse_spec(spec))
    with pytest.raises(SpecError, match=r"^axes\.train\.batch_size\[2\]: 2 of 6 cells cannot fit \(batch_size=1000000 "):
        check_memory(plan, (8 << 30, "an 8 GiB machine"))
    check_memory(make_plan(parse_spec(spec | {"axes": {"train.batch_size": [4, 8]}})), (8 << 30, "an 8 GiB machine"))


def test_the_address_space_limit_is_a_limit():
    code = "from etrm.memory import host_limit; print(host_limit())"

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, preexec_fn=limited)
    assert out.stdout.strip() == f"({3 << 30}, 'the address-space limit (ulimit -v)')"


@pytest.mark.slow  # the trainer CLI allocates until the address space runs out
def test_an_allocator_failure_is_one_line(tmp_path):
    """A config the estimate lets through (its RSS fits) but whose tensors do not fit the address space the
    process has left: the allocator fails mid-training, and `trial` says so in one line, exit 2."""
    tree = copy.deepcopy(TINY_BASE)
    tree["train"].update(batch_size=2048, steps=2)
    tree["data"].update(num_train_puzzles=64)
    est = memory.estimate(build_config(tree))
    limit = est.total + (est.total // 4)  # above the estimate, below what torch's address space needs on top
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(CLI + ["trial", str(path)], cwd=ROOT, env=service_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=limited)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory ("), proc.stderr
    assert "lower train.batch_size" in lines[0]
