"""Parity with the ETRM research code (MIT, github.com/bdsaglam/etrm @ 109b0706), found through
the ETRM_REFERENCE variable (scripts/test points it at ../shared/reference/etrm).

Each test builds a research module and ours at the same shape, copies the research weights into
ours, runs both on the same inputs (with padded demo slots) and compares outputs and gradients:
max abs difference <= 1e-5 in float32. Where ours differs on purpose, the test says so and checks
the matching form:
- PAD tokens inside a demo grid are masked as attention keys here, not in the research grid
  encoders: demo grids here have no PAD (padded demo *slots* are still all PAD).
- padded demo slots are skipped here, encoded and then zeroed there: the same result.
- the KL is per sample here (β per sample); the research averages it over the local batch (and
  lpn_variational over the local batch's real demos) and its trainer divides the summed loss by
  the batch: research loss / B == our loss with β = research kl_weight / B.
- logvar is clamped to [-10, 10] in both variational encoders here (the research clamps only in
  hybrid_variational): the same wherever |logvar| <= 10, as in these tests.
The no-fix arm is the research's DemoSetEncoder before its fix (`_without_final_norm`).
With compiled blocks (the ACT test's `compiled` case) the bound is a noise floor measured alongside:
what moving every research weight by one float32 ulp does (`nudged`).
Gradients are compared as absolute differences, relative to the gradient's size where it exceeds 1
(`grad_error`).
Run with -s to see every measured difference.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from etrm.augment import Augmentation
from etrm.config import build_config
from etrm.data import EvalRow
from etrm.evaluate import arc_scores, record
from etrm.grids import PAD, encode_grid
from etrm.losses import stablemax_cross_entropy
from etrm.model import ETRM, decoder_state_from_research
from etrm.registry import ENCODERS, encoder_class
from etrm.train import forward_and_loss

pytestmark = [pytest.mark.parity, pytest.mark.slow]  # minutes on 2 cores: the slow tier

TOL = 1e-5
KL_WEIGHT = 1e-3  # the KL's weight in the encoder tests' loss (research runs: 1e-4)
# expansion 6 at hidden 64 gives a SwiGLU width of 256 under both width rules (the research
# rounds to a multiple of 256 at every size, we to a multiple of 8 below hidden 256)
G, K, B, D, HEADS, EXPANSION, T = 3, 3, 4, 64, 4, 6.0, 4
DEMO_MASK = torch.tensor([[True, True, True], [True, True, False], [True, False, False], [True, False, True]])
NORM_CASES = [(style, fix) for style in ("pre", "post") for fix in (True, False)]


def _reference() -> Path:
    root = os.environ.get("ETRM_REFERENCE")
    if not root or not (Path(root) / "models" / "encoders").is_dir():
        pytest.fail(
            f"ETRM_REFERENCE={root!r} is not the ETRM research code: set it to a clone of "
            "github.com/bdsaglam/etrm at 109b0706aa4e9134fbe7369a8e2e8fea54fbfbe9 (scripts/test uses "
            "../shared/reference/etrm)",
            pytrace=False,
        )
    return Path(root).resolve()


@pytest.fixture(scope="module")
def research():
    """The research package `models`, imported from ETRM_REFERENCE."""
    root = str(_reference())
    if root not in sys.path:
        sys.path.insert(0, root)
    import models.encoders
    import models.losses
    import models.recursive_reasoning.etrm

    return types.SimpleNamespace(
        encoders=models.encoders, losses=models.losses, etrm=models.recursive_reasoning.etrm, root=root
    )


# ---------------------------------------------------------------------------------------------
# research names -> ours


RENAMES = [  # applied in order to every research encoder parameter name (the decoder's: etrm.model)
    (r"(^|\.)grid_encoder\.", r"\1demo_encoder."),
    (r"input_embed\.embedding_weight$", "embed_in.weight"),
    (r"output_embed\.embedding_weight$", "embed_out.weight"),
    (r"demo_encoder\.layers\.", "demo_encoder.blocks."),
    (r"self_attn\.qkv_proj", "attn.qkv"),
    (r"self_attn\.o_proj", "attn.out"),
    (r"(blocks\.\d+)\.qkv_proj", r"\1.attn.qkv"),  # LPN blocks have no self_attn level
    (r"(blocks\.\d+)\.o_proj", r"\1.attn.out"),
    (r"(set_encoder\.layers\.\d+)\.o_proj", r"\1.attn.out"),
    (r"gate_up_proj", "gate_up"),
    (r"down_proj", "down"),
    (r"pool_proj", "proj"),
    (r"cls_token", "cls"),
    (r"query_tokens", "queries"),
    (r"(^|\.)mu_proj", r"\1latent.mu"),
    (r"(^|\.)logvar_proj", r"\1latent.logvar"),
    (r"(^|\.)(decode_proj|output_proj)", r"\1decode"),
]


def to_ours(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Research parameters (or their gradients) under our names and shapes. The set encoder's
    separate q/k/v projections become our fused qkv; the CLS token loses its (1, 1) lead; the
    decoder's go through etrm.model.decoder_state_from_research (what loads a TRM checkpoint)."""
    decoder = decoder_state_from_research(tensors)
    out = {f"decoder.{name}": value for name, value in decoder.items()}
    qkv = {}
    for name, value in tensors.items():
        if name.startswith("inner."):
            continue
        if m := re.match(r"(.*set_encoder\.layers\.\d+)\.([qkv])_proj\.weight$", name):
            qkv.setdefault(m[1], {})[m[2]] = value
            continue
        for pattern, repl in RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = value.reshape(-1) if name.endswith(".cls") else value
    for layer, parts in qkv.items():
        out[f"{layer}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def transplant(theirs: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy every research parameter and persistent buffer into ours; every one of ours must be set."""
    state = to_ours(dict(theirs.state_dict()))
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)


def research_grads(theirs: torch.nn.Module) -> dict[str, torch.Tensor]:
    return to_ours({n: p.grad for n, p in theirs.named_parameters() if p.grad is not None})


def our_grads(ours: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}


def grad_error(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Max over parameters of the max abs gradient difference, divided by that gradient's largest
    entry where it exceeds 1: float32 resolves a gradient of 90 (the CLS token's, in
    hybrid_variational's ACT steps) to ~5e-6, so an absolute 1e-5 cannot hold there for any two
    implementations that sum in different orders. Returns (that, the plain max abs difference);
    both sides must have the same gradients."""
    assert ref.keys() == other.keys(), sorted(ref.keys() ^ other.keys())
    diffs = {n: (ref[n] - other[n]).abs().max().item() for n in ref}
    return max(diffs[n] / max(1.0, ref[n].abs().max().item()) for n in ref), max(diffs.values())


@torch.no_grad()
def nudged(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with every weight moved one float32 ulp up or down (random signs, fixed seed): the
    float32 noise floor of a computation, since fused or reordered kernels differ from eager by
    rounding of that size, which the recursion then amplifies."""
    copy_ = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(7)
    for p in copy_.parameters():
        towards = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -torch.inf, torch.inf)
        p.copy_(torch.nextafter(p, towards))
    return copy_


def _without_final_norm(set_encoder: torch.nn.Module) -> None:
    """Make a research DemoSetEncoder what it was before its fix: the same layers, no final norm."""

    def forward(demo_encodings, demo_mask):
        context = set_encoder.query_tokens.unsqueeze(0).expand(demo_encodings.shape[0], -1, -1)
        bias = torch.zeros(demo_mask.shape, dtype=context.dtype).masked_fill(~demo_mask, float("-inf"))
        for layer in set_encoder.layers:
            context = layer(context, demo_encodings, bias[:, None, None, :])
        return context

    set_encoder.forward = forward


# ---------------------------------------------------------------------------------------------
# configs and inputs


def our_config(encoder_type: str, norm_style: str = "pre", final_norm: bool = True, **model):
    knobs = dict(num_layers=2, set_layers=2, norm_style=norm_style, final_norm=final_norm, latent_dim=D, output_tokens=T)
    encoder = {"type": encoder_type, **{k: v for k, v in knobs.items() if k in ENCODERS[encoder_type].knobs}}
    model = dict(hidden_size=D, num_heads=HEADS, expansion=EXPANSION, encoder=encoder, **model)
    return build_config({"data": {"grid_size": G, "max_demos": K}, "model": model})


def research_encoder(research, encoder_type: str, norm_style: str, final_norm: bool):
    cfg = research.encoders.DemoEncoderConfig(
        encoder_type=encoder_type, hidden_size=D, num_heads=HEADS, num_layers=2, output_tokens=T, seq_len=G * G,
        expansion=EXPANSION, forward_dtype="float32", set_encoder_layers=2, norm_style=norm_style,
    )
    enc = research.encoders.create_encoder(cfg)
    if not final_norm and hasattr(enc, "set_encoder"):
        _without_final_norm(enc.set_encoder)
    return enc


def demo_batch(seed: int) -> dict[str, torch.Tensor]:
    """Colour/EOS tokens (no PAD inside a grid: see the module docstring); padded slots all PAD."""
    g = torch.Generator().manual_seed(seed)
    grids = lambda *shape: torch.randint(1, 12, (*shape, G * G), generator=g)  # noqa: E731
    slots = DEMO_MASK[..., None]
    inputs, labels = grids(B), grids(B)
    labels[0, :2] = PAD  # PAD labels are ignored by the loss
    return dict(inputs=inputs, labels=labels, demo_inputs=grids(B, K) * slots, demo_outputs=grids(B, K) * slots,
                demo_mask=DEMO_MASK.clone())


def research_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same rows in the research's keys: demo outputs are `demo_labels`, ignored labels are -100."""
    return dict(inputs=batch["inputs"], labels=batch["labels"].masked_fill(batch["labels"] == PAD, -100),
                demo_inputs=batch["demo_inputs"], demo_labels=batch["demo_outputs"], demo_mask=batch["demo_mask"],
                puzzle_identifiers=torch.arange(B))


def kl_in_research_form(encoder_type: str, kl: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
    """Our per-sample KL, reduced the way the research reduces its own."""
    if encoder_type == "lpn_variational":  # mean over the local batch's real demos
        n = demo_mask.sum(1).to(kl.dtype)
        return (kl * n).sum() / n.sum()
    return kl.mean()  # mean over the local batch


# ---------------------------------------------------------------------------------------------
# encoders


ENCODER_CASES = [(t, s, f) for t in ENCODERS for s, f in NORM_CASES]


@pytest.mark.parametrize("encoder_type,norm_style,final_norm", ENCODER_CASES)
def test_encoder_matches_research(research, encoder_type, norm_style, final_norm):
    torch.manual_seed(0)
    theirs = research_encoder(research, encoder_type, norm_style, final_norm).train()
    ours = encoder_class(encoder_type)(our_config(encoder_type, norm_style, final_norm).model, G).train()
    transplant(theirs, ours)
    batch = demo_batch(1)
    probe = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))  # a loss that sees every output

    torch.manual_seed(3)  # the variational encoders draw the same noise on both sides
    ref = theirs(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"], return_full_output=True)
    torch.manual_seed(3)
    out = ours(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    loss_ref = (ref.context * probe).mean()
    loss_ours = (out.context * probe).mean()
    if ref.kl_loss is not None:
        kl_ours = kl_in_research_form(encoder_type, out.kl, batch["demo_mask"])
        assert abs(kl_ours.item() - ref.kl_loss.item()) <= TOL * max(1.0, abs(ref.kl_loss.item()))
        loss_ref, loss_ours = loss_ref + KL_WEIGHT * ref.kl_loss, loss_ours + KL_WEIGHT * kl_ours
    loss_ref.backward()
    loss_ours.backward()

    out_diff = (ref.context - out.context).abs().max().item()
    grad_diff, grad_abs = grad_error(research_grads(theirs), our_grads(ours))
    grad_max = max(p.grad.abs().max().item() for p in ours.parameters())
    print(f"\nparity {encoder_type:18} norm_style={norm_style:4} final_norm={final_norm!s:5} "
          f"output {out_diff:.1e}  grads {grad_diff:.1e} (abs {grad_abs:.1e}, max |grad| {grad_max:.2f})  "
          f"output rms {ref.context.pow(2).mean().sqrt():.2f}")
    assert out_diff <= TOL and grad_diff <= TOL


# ---------------------------------------------------------------------------------------------
# decoder over several ACT steps, and the loss


def research_model(research, encoder_type: str, halt_max_steps: int, exploration: float):
    return research.etrm.TRMWithEncoder(dict(
        batch_size=B, seq_len=G * G, vocab_size=12, encoder_type=encoder_type, encoder_num_layers=2,
        encoder_set_layers=2, encoder_norm_style="pre", H_cycles=2, L_cycles=2, L_layers=2, hidden_size=D,
        expansion=EXPANSION, num_heads=HEADS, pos_encodings="rope", halt_max_steps=halt_max_steps,
        halt_exploration_prob=exploration, forward_dtype="float32", puzzle_emb_len=T,
    ))


COMPILED_FLOOR_FACTOR = 5  # compiled vs research: at most this many times the one-ulp noise floor (measured: <= 1.5x)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("encoder_type", ["standard", "hybrid_variational"])
def test_act_training_steps_match_research(research, encoder_type, compiled):
    """Six ACT training steps over a persistent carry: new rows replace halted ones, the q head
    halts some (its weights are randomised so that both signs occur), exploration forces others
    on; logits, q, halting, the loss and every gradient match at every step.

    Eager, every difference is <= 1e-5. With compiled blocks (train.compile) inductor fuses and
    reorders sums, and the recursion amplifies the rounding (to ~1e-3 by the fifth step of
    hybrid_variational): there each difference, its largest over the steps, must stay within
    COMPILED_FLOOR_FACTOR x what moving every research weight by one float32 ulp does over the
    same steps (measured alongside; or 1e-5 where that is smaller). Halting must match exactly."""
    kl_weight, steps, halt_max = 1e-4, 6, 3  # the research's kl_weight
    torch.manual_seed(0)
    theirs = research_model(research, encoder_type, halt_max, exploration=0.5)
    with torch.no_grad():
        theirs.inner.q_head.weight.normal_(0, 0.5)
        theirs.inner.q_head.bias.zero_()
    head = research.losses.ACTLossHead(theirs, loss_type="stablemax_cross_entropy", kl_weight=kl_weight).train()
    # our β is per sample: the research's kl_weight on a batch-mean KL, summed loss / B (module docstring)
    cfg = our_config(encoder_type, H_cycles=2, L_cycles=2, L_layers=2, halt_max_steps=halt_max,
                     halt_exploration_prob=0.5)
    if "kl_weight" in ENCODERS[encoder_type].knobs:
        cfg.model.encoder.kl_weight = kl_weight / B
    ours = ETRM(cfg.model, G, K).train()
    transplant(theirs, ours)
    frozen = ETRM(cfg.model, G, K)  # loads the research model's state dict as a frozen decoder would
    frozen.load_decoder_state(head.state_dict())
    assert all(torch.equal(v, frozen.decoder.state_dict()[k]) for k, v in ours.decoder.state_dict().items())
    if compiled:
        ours.compile_blocks()
    setup = types.SimpleNamespace(model=ours, autocast=contextlib.nullcontext)
    floor_head = nudged(head) if compiled else None  # the research once more, one ulp away

    def research_step(head, carry, batch, step):
        torch.manual_seed(100 + step)  # encoder noise, exploration draws: the same stream on every side
        carry, loss, _, out, _ = head(return_keys=["logits", "q_halt_logits"], carry=carry, batch=research_batch(batch))
        (loss / B).backward()
        return carry, {"logits": out["logits"], "q_halt": out["q_halt_logits"], "z_H": carry.inner_carry.z_H,
                       "loss": loss.detach() / B, "grads": research_grads(head.model)}

    def differences(ref, other):
        diffs = {k: (ref[k] - other[k]).abs().max().item() for k in ("logits", "q_halt", "z_H", "loss")}
        diffs["grads"], _ = grad_error(ref["grads"], other["grads"])
        return diffs

    batch = demo_batch(10)
    carry_ref, carry = head.initial_carry(batch=research_batch(batch)), ours.initial_carry(batch)
    carry_floor = carry_ref
    halted_any = explored_any = False
    measured, floor = defaultdict(list), defaultdict(list)
    for step in range(steps):
        batch = demo_batch(10 + step)
        carry_ref, ref = research_step(head, carry_ref, batch, step)
        torch.manual_seed(100 + step)
        carry, out, loss, _ = forward_and_loss(setup, cfg, carry, batch)
        loss.backward()

        assert torch.equal(carry_ref.halted, carry.halted) and torch.equal(carry_ref.steps, carry.steps)
        halted_any |= bool((carry.halted & (carry.steps < halt_max)).any())
        explored_any |= bool((~carry.halted & (out.q_halt > 0)).any())
        diffs = differences(ref, {"logits": out.logits, "q_halt": out.q_halt, "z_H": carry.z_H,
                                  "loss": loss.detach(), "grads": our_grads(ours)})
        line = f"\nparity decoder+{encoder_type} {'compiled' if compiled else 'eager'} step {step}: "
        line += "  ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        if floor_head is not None:
            carry_floor, nudged_ref = research_step(floor_head, carry_floor, batch, step)
            assert torch.equal(carry_ref.halted, carry_floor.halted)
            for k, v in differences(ref, nudged_ref).items():
                floor[k].append(v)
            line += "  | one-ulp floor " + "  ".join(f"{k} {v[-1]:.1e}" for k, v in floor.items())
            floor_head.model.zero_grad()
        print(line + f"  halted {carry.halted.tolist()}")
        for k, v in diffs.items():
            measured[k].append(v)
        if not compiled:
            assert max(diffs.values()) <= TOL, diffs
        theirs.zero_grad()
        ours.zero_grad()
    assert halted_any and explored_any, "the steps did not exercise q-halting and exploration"
    for k, values in measured.items() if compiled else ():
        bound = COMPILED_FLOOR_FACTOR * max(max(floor[k]), TOL)
        assert max(values) <= bound, f"{k}: {max(values):.2e} > {bound:.2e} (floor {floor[k]})"


def test_stablemax_loss_matches_research(research):
    """Per sample: the research's summed token losses over its valid count (its lm_loss sums these)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, G * G, 12, generator=g) * 5).requires_grad_()
    labels = demo_batch(0)["labels"]
    ref_labels = research_batch(demo_batch(0))["labels"]
    mask = ref_labels != -100
    ref = research.losses.stablemax_cross_entropy(logits, ref_labels, valid_mask=mask).sum(-1) / mask.sum(-1)
    ours = stablemax_cross_entropy(logits, labels)
    grad_ref, = torch.autograd.grad(ref.sum(), logits)
    grad_ours, = torch.autograd.grad(ours.sum(), logits)
    out_diff, grad_diff = (ref - ours).abs().max().item(), (grad_ref - grad_ours).abs().max().item()
    print(f"\nparity stablemax: loss {out_diff:.1e}  grads {grad_diff:.1e}")
    assert out_diff <= TOL and grad_diff <= TOL


# ---------------------------------------------------------------------------------------------
# the evaluator


def _research_arc_module(research, tmp_path: Path):
    """Import the research evaluator. It needs two modules of the TRM repository that the ETRM copy
    does not carry (dataset.build_arc_dataset, dataset.common); they are given here, built on our own
    augmentation: a puzzle variant's name is "<puzzle>|<augmentation index>"."""
    augs = [Augmentation.identity(), Augmentation(1, (0, 3, 1, 2, 4, 5, 6, 7, 8, 9)), Augmentation(6, tuple(range(10)))]
    build = types.ModuleType("dataset.build_arc_dataset")
    build.arc_grid_to_np = lambda grid: np.asarray(grid, dtype=np.uint8)
    build.grid_hash = lambda grid: hash((grid.shape, np.asarray(grid, dtype=np.uint8).tobytes()))

    def inverse_aug(name):
        puzzle, index = name.split("|")
        return puzzle, augs[int(index)].invert

    build.inverse_aug = inverse_aug
    common = types.ModuleType("dataset.common")
    common.PuzzleDatasetMetadata = object
    sys.modules.update({"dataset": types.ModuleType("dataset"), "dataset.build_arc_dataset": build,
                        "dataset.common": common})
    import evaluators.arc

    return evaluators.arc, augs


def test_evaluator_matches_research(research, tmp_path):
    """The same predictions (30×30 token grids, as the research crop assumes) through both
    evaluators: crop, undo the augmentation, vote (ties by mean sigmoid(q_halt)), pass@k; one
    puzzle gets no predictions at all, and both divide by the puzzles actually evaluated."""
    import torch.distributed as dist

    arc, augs = _research_arc_module(research, tmp_path)
    rng = np.random.default_rng(0)
    grid = lambda: rng.integers(0, 10, size=tuple(rng.integers(1, 5, size=2)))  # noqa: E731
    puzzles = {f"p{i}": {"test": [{"input": grid().tolist(), "output": grid().tolist()} for _ in range(1 + i % 2)]}
               for i in range(4)}
    evaluated = ["p0", "p1", "p2"]  # p3 is not evaluated
    names = [f"{p}|{a}" for p in evaluated for a in range(len(augs))]
    (tmp_path / "identifiers.json").write_text(json.dumps(names))
    (tmp_path / "test_puzzles.json").write_text(json.dumps(puzzles))

    rows, tokens, inputs, q, ids = [], [], [], [], []
    for ident, name in enumerate(names):
        p, a = name.split("|")
        aug = augs[int(a)]
        for t, pair in enumerate(puzzles[p]["test"]):
            label = np.asarray(pair["output"])
            for _ in range(3):  # three predictions per variant: right, wrong or a repeat
                guess = label if rng.random() < 0.4 else grid()
                tokens.append(encode_grid(aug.apply(guess), 30))
                inputs.append(encode_grid(aug.apply(np.asarray(pair["input"])), 30))
                q.append(float(rng.normal()))
                ids.append(ident)
                rows.append(EvalRow(puzzle_idx=int(p[1:]), test_idx=t, aug=aug))

    evaluator = arc.ARC(str(tmp_path), types.SimpleNamespace(blank_identifier_id=-1), pass_Ks=(1, 2, 5))
    evaluator.begin_eval()
    evaluator.update_batch({"inputs": torch.tensor(np.stack(inputs)), "puzzle_identifiers": torch.tensor(ids)},
                           {"preds": torch.tensor(np.stack(tokens)), "q_halt_logits": torch.tensor(q)})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ref = evaluator.result(None, rank=0, world_size=1)
    finally:
        dist.destroy_process_group()

    predictions = defaultdict(list)
    record(predictions, rows, np.stack(tokens), q, 30)
    labels = {(int(p[1:]), t): np.asarray(pair["output"]) for p in puzzles for t, pair in enumerate(puzzles[p]["test"])}
    ours = arc_scores(predictions, labels)
    print(f"\nparity evaluator: research {ref}  ours {ours}")
    assert ours == pytest.approx(ref, abs=1e-12)
    assert 0 < ours["ARC/pass@1"] < ours["ARC/pass@5"] <= 1  # the case is not trivial


# ---------------------------------------------------------------------------------------------
# initialisation


def _std(t: torch.Tensor) -> float:
    return t.detach().float().std().item()


def test_inits_match_research_in_distribution(research):
    """Measured std of every kind of init, ours next to the research's, over enough draws that the
    sampling error is ~1%: set-encoder queries 0.02, CLS 0.02, LeCun linear 1/sqrt(fan_in),
    embeddings 1/sqrt(D), initial states 1; all truncated at 2 std and corrected so that the
    actual std is the nominal one (torch's own trunc_normal_ would give 0.88 x nominal)."""
    draws = 48
    torch.manual_seed(0)
    cfg = our_config("hybrid_standard", L_layers=1)
    theirs = [research_encoder(research, "hybrid_standard", "pre", True) for _ in range(draws)]
    ours = [ETRM(cfg.model, G, K) for _ in range(draws)]
    kinds = {  # what: (ours, research, nominal std), each over all draws
        "set-encoder queries": (lambda m: m.encoder.set_encoder.queries,
                                lambda r: r.set_encoder.query_tokens, 0.02),
        "CLS token": (lambda m: m.encoder.demo_encoder.cls, lambda r: r.grid_encoder.cls_token, 0.02),
        "linear (LeCun)": (lambda m: m.encoder.set_encoder.layers[0].mlp.gate_up.weight,
                           lambda r: r.set_encoder.layers[0].mlp.gate_up_proj.weight, D**-0.5),
        "embedding": (lambda m: m.encoder.demo_encoder.embed_in.weight,
                      lambda r: r.grid_encoder.input_embed.embedding_weight, D**-0.5),
        "decoder H_init": (lambda m: m.decoder.H_init, None, 1.0),
    }
    for what, (mine, ref, nominal) in kinds.items():
        measured = _std(torch.cat([mine(m).flatten() for m in ours]))
        line = f"init std {what:20} nominal {nominal:.4f}  ours {measured:.4f}"
        if ref is not None:
            measured_ref = _std(torch.cat([ref(r).flatten() for r in theirs]))
            line += f"  research {measured_ref:.4f}"
            assert abs(measured_ref - nominal) < 0.03 * nominal, line
        print("\n" + line)
        assert abs(measured - nominal) < 0.03 * nominal, line
    q_head = ours[0].decoder.q_head
    assert q_head.weight.abs().max() == 0 and (q_head.bias == -5).all()
