"""train.compile: the compiled transformer blocks give the eager model's outputs and gradients,
and a trial with compile on trains and evaluates (evaluation eagerly)."""

from __future__ import annotations

import copy

import pytest
import torch

from etrm.config import build_config
from etrm.train import setup, train

# inductor compiles C++: about a minute of CPU per test, ten and more on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(1800)]

TINY = {
    "data": {"grid_size": 4, "max_demos": 3, "num_train_puzzles": 8, "num_eval_puzzles": 1, "eval_variants": 1},
    "model": {"hidden_size": 32, "num_heads": 2, "H_cycles": 2, "L_cycles": 1, "L_layers": 1, "halt_max_steps": 2,
              "encoder": {"num_layers": 1, "set_layers": 1, "output_tokens": 4}},
    "train": {"batch_size": 4, "threads": 1},
}


def run_steps(model, batches, dtype):
    """Two ACT steps from a fresh carry -> [(logits, q_halt)] per step and the gradients after both."""
    torch.manual_seed(1)  # the halting exploration draws random numbers: the same ones for both models
    outs, carry = [], model.initial_carry(batches[0])
    for batch in batches:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            carry, out = model(carry, batch)
        (out.logits.float().square().mean() + out.q_halt.square().mean()).backward()
        outs.append((out.logits.detach().float(), out.q_halt.detach()))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return outs, grads


def assert_near(actual, expected, dtype, what, bf16_tol=2e-2):
    """float32: equal within 1e-5. bf16: compiled kernels keep float32 where eager rounds to bf16, so
    single elements may differ by a few bf16 steps; the relative L2 error must stay at bf16 rounding
    (single small gradients gather it over the whole backward: bf16 compares the gradients as one vector)."""
    if dtype == "float32":
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")
    else:
        err = (actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12)
        assert err < bf16_tol, f"{what}: relative L2 error {err:.3g}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_blocks_match_eager(dtype):
    cfg = build_config(TINY, {"train.dtype": dtype})
    s = setup(cfg)
    eager = s.model
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks()
    batches = [s.next_batch(), s.next_batch()]
    batches[1]["demo_mask"][:, 1:] = False  # another number of real demos: the per-demo encoder goes dynamic
    (e_outs, e_grads), (c_outs, c_grads) = (run_steps(m, batches, s.dtype) for m in (eager, compiled))
    for (e_logits, e_q), (c_logits, c_q) in zip(e_outs, c_outs):
        assert_near(c_logits, e_logits, dtype, "logits")
        assert_near(c_q, e_q, dtype, "q_halt")
    assert e_grads.keys() == c_grads.keys() and len(e_grads) > 10
    if dtype == "float32":
        for name, g in e_grads.items():
            assert_near(c_grads[name], g, dtype, name)
    else:
        flat = [torch.cat([g[n].flatten().float() for n in sorted(e_grads)]) for g in (c_grads, e_grads)]
        assert_near(*flat, dtype, "all gradients", bf16_tol=5e-2)


def test_trial_with_compile_trains_and_evaluates():
    cfg = build_config(TINY, {"train.compile": True, "train.steps": 3, "train.eval_every": 3, "train.log_every": 3})
    result = train(cfg)
    assert result.status == "finished" and result.step == 3
    assert torch.isfinite(torch.tensor(result.metrics["train/lm_loss"]))
    assert "eval/exact_accuracy" in result.metrics
