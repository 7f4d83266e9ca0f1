"""ETRM decoder, ACT carry and optimiser behaviour on a tiny CPU model."""

import dataclasses
import math

import pytest
import torch

from etrm.config import TrainConfig, build_config
from etrm.grids import PAD
from etrm.model import ETRM
from etrm.optim import AdamATan2, build_optimizer, lr_at, set_lr
from etrm.registry import ENCODERS

G, K, B, D, T = 4, 3, 4, 32, 4


def tiny_model(encoder_type="standard", seed=0, **model) -> ETRM:
    torch.manual_seed(seed)
    encoder = {"type": encoder_type, "num_layers": 1, "output_tokens": T}
    if "set_layers" in ENCODERS[encoder_type].knobs:  # a knob its encoder ignores is refused
        encoder["set_layers"] = 1
    base = dict(hidden_size=D, num_heads=4, H_cycles=2, L_cycles=1, L_layers=1, halt_max_steps=3, encoder=encoder)
    return ETRM(build_config({"model": base | model}).model, G, K)


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def grids(*shape):
        tokens = torch.randint(2, 12, (*shape, G * G), generator=g)
        return tokens.masked_fill(torch.rand(*shape, G * G, generator=g) < 0.3, PAD)

    demo_mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True], [True, False, True]])
    return dict(inputs=grids(B), labels=grids(B), demo_inputs=grids(B, K), demo_outputs=grids(B, K), demo_mask=demo_mask)


def set_q_bias(model: ETRM, halt: float) -> None:
    with torch.no_grad():
        model.decoder.q_head.bias.fill_(halt)


@torch.no_grad()
def test_eval_runs_every_sample_for_halt_max_steps():
    model = tiny_model().eval()
    set_q_bias(model, 10.0)  # q_halt > 0 everywhere: training would halt at once, evaluation must not
    batch = random_batch(0)
    carry = model.initial_carry(batch)
    for step in range(1, 4):
        carry, out = model(carry, batch)
        assert (out.q_halt > 0).all()
        assert (carry.steps == step).all()
        assert carry.halted.tolist() == [step == 3] * B


@torch.no_grad()
def test_training_halts_on_q_halt_and_exploration_delays_it():
    model = tiny_model(halt_exploration_prob=0.0).train()
    batch = random_batch(0)
    set_q_bias(model, -10.0)
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any()
    set_q_bias(model, 10.0)
    carry, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all()
    model.halt_exploration_prob = 1.0  # every sample must run >= 2 steps
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any()
    set_q_bias(model, -10.0)
    for _ in range(2):
        carry, _ = model(carry, batch)
    assert carry.halted.all() and (carry.steps == 3).all()  # halt_max_steps always halts


@torch.no_grad()
def test_carry_replacement_keeps_running_rows_and_loads_halted_ones():
    model = tiny_model().eval()
    old, new = random_batch(0), random_batch(1)
    carry, _ = model(model.initial_carry(old), old)
    halted = torch.tensor([True, False, True, False])
    carry = dataclasses.replace(carry, halted=halted)

    next_carry, out = model(carry, new)
    for key in old:
        expect = torch.where(halted.view(-1, *[1] * (old[key].dim() - 1)), new[key], old[key])
        assert torch.equal(next_carry.data[key], expect), key
    assert next_carry.steps.tolist() == [1, 2, 1, 2]

    # Halted rows start from the initial latent states, exactly like a fresh carry ...
    _, fresh = model(model.initial_carry(new), new)
    torch.testing.assert_close(out.logits[halted], fresh.logits[halted], atol=1e-5, rtol=0)
    # ... and running rows continue from their own states.
    _, running = model(dataclasses.replace(carry, halted=torch.zeros(B, dtype=torch.bool)), new)
    torch.testing.assert_close(out.logits[~halted], running.logits[~halted], atol=1e-5, rtol=0)
    assert not torch.allclose(out.logits[~halted], fresh.logits[~halted], atol=1e-3)


def test_only_the_last_h_cycle_carries_gradient():
    model = tiny_model(H_cycles=3, L_cycles=2).train()
    grad_enabled = []
    model.decoder.blocks[0].register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    batch = random_batch(0)
    carry, out = model(model.initial_carry(batch), batch)
    assert len(grad_enabled) == 3 * (2 + 1)  # H_cycles × (L_cycles z_L updates + 1 z_H update)
    assert grad_enabled == [False] * 6 + [True] * 3
    assert out.logits.requires_grad
    assert not carry.z_H.requires_grad and not carry.z_L.requires_grad  # detached between ACT steps
    assert not any(b.requires_grad for b in model.decoder.buffers())  # z_H / z_L init are fixed
    assert {n for n, _ in model.decoder.named_buffers(recurse=False)} == {"H_init", "L_init"}


def test_output_shapes_and_q_head_init():
    model = tiny_model()
    batch = random_batch(0)
    _, out = model(model.initial_carry(batch), batch)
    assert out.logits.shape == (B, G * G, 12)
    assert out.context.shape == (B, T, D)
    assert out.q_halt.shape == out.q_continue.shape == out.kl.shape == out.output_scale.shape == (B,)
    torch.testing.assert_close(out.q_halt, torch.full((B,), -5.0))


def test_adam_atan2_matches_hand_computed_updates():
    p0 = [1.0, -2.0, 0.5]
    grads = [[0.3, -0.1, 0.0], [-0.2, 0.4, 1.0]]
    lr, wd, b1, b2 = 0.1, 0.01, 0.9, 0.95
    p = torch.tensor(p0, requires_grad=True)
    opt = AdamATan2([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    expected, m, v = list(p0), [0.0] * 3, [0.0] * 3
    for t, g in enumerate(grads, start=1):
        p.grad = torch.tensor(g)
        opt.step()
        for i in range(3):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            step = lr / (1 - b1**t) * math.atan2(m[i], math.sqrt(v[i] / (1 - b2**t)))
            expected[i] = expected[i] * (1 - lr * wd) - step
        torch.testing.assert_close(p.detach(), torch.tensor(expected))


@pytest.mark.parametrize("optimizer", ["adam_atan2", "adamw"])
def test_optimizer_groups_and_schedule(optimizer):
    model = tiny_model()
    cfg = TrainConfig(lr=1e-3, encoder_lr_scale=0.5, warmup_steps=4, optimizer=optimizer)
    opt = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["encoder"]["lr"] == pytest.approx(5e-4) and groups["decoder"]["lr"] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert [lr_at(s, cfg) for s in (0, 3, 100)] == pytest.approx([2.5e-4, 1e-3, 1e-3])
    set_lr(opt, lr_at(0, cfg))
    assert groups["encoder"]["lr"] == pytest.approx(1.25e-4)

    model.freeze_decoder()
    opt = build_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["encoder"]


def test_load_decoder_state_ignores_encoder_and_puzzle_embedding():
    source = tiny_model("standard")
    target = tiny_model("lpn_standard", seed=1)
    assert not torch.equal(target.decoder.H_init, source.decoder.H_init)
    encoder_before = {k: v.clone() for k, v in target.encoder.state_dict().items()}
    state = source.state_dict() | {"puzzle_emb.weights": torch.zeros(3, D)}
    target.load_decoder_state(state)
    for key, value in source.decoder.state_dict().items():
        assert torch.equal(target.decoder.state_dict()[key], value), key
    for key, value in target.encoder.state_dict().items():
        assert torch.equal(encoder_before[key], value), key
    target.load_decoder_state(source.decoder.state_dict())  # a decoder-only state dict works too
    with pytest.raises(RuntimeError):
        target.load_decoder_state({k: v for k, v in source.decoder.state_dict().items() if "lm_head" not in k})


def test_init_jitter_is_a_negligible_perturbation_on_its_own_random_stream():
    """The null-control arm: the same initial weights plus ~1e-6 noise, and every other random stream untouched."""
    plain = tiny_model()
    after_plain = torch.get_rng_state()
    jittered = tiny_model()
    jittered.jitter_(seed=0, jitter=1)
    assert torch.equal(torch.get_rng_state(), after_plain)  # the global stream (data, ACT exploration) is as before
    diffs = [(a - b).abs().max().item() for a, b in zip(jittered.parameters(), plain.parameters())]
    assert 1e-7 < max(diffs) < 1e-5 and min(diffs) > 0  # every parameter moved, by ~1e-6

    again, other = tiny_model(), tiny_model()
    again.jitter_(seed=0, jitter=1)
    other.jitter_(seed=0, jitter=2)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), jittered.parameters()))  # seeded
    assert not torch.equal(next(other.parameters()), next(jittered.parameters()))  # its own seed, its own noise
