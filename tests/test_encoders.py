"""Demonstration encoders: gradients reach every parameter, the final-norm switch does what
the reference says, padded demo slots cost nothing and change nothing, latent_dim is honoured."""

import pytest
import torch

from etrm.config import ConfigError, build_config
from etrm.encoders import DemoPairEncoder, DemoSetEncoder
from etrm.grids import PAD
from etrm.layers import rms_norm
from etrm.losses import q_halt_loss, stablemax_cross_entropy
from etrm.model import ETRM
from etrm.optim import build_optimizer
from etrm.registry import ENCODERS, encoder_class

G, K, B, D, T = 4, 3, 5, 32, 4
VARIATIONAL = ("hybrid_variational", "lpn_variational")


def tiny_config(encoder_type: str, **encoder):
    encoder = {"type": encoder_type, "num_layers": 1, "set_layers": 2, "output_tokens": T, **encoder}
    model = dict(hidden_size=D, num_heads=4, H_cycles=2, L_cycles=1, L_layers=1, halt_max_steps=2, encoder=encoder)
    return build_config({"data": {"grid_size": G, "max_demos": K}, "model": model})


def random_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random colour tokens with PAD holes, and demo slots 1.. padded out for some samples."""
    g = torch.Generator().manual_seed(seed)

    def grids(*shape):
        tokens = torch.randint(2, 12, (*shape, G * G), generator=g)
        return tokens.masked_fill(torch.rand(*shape, G * G, generator=g) < 0.3, PAD)

    demo_mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]] * 2)[:B]
    labels = grids(B)
    return dict(inputs=grids(B), labels=labels, demo_inputs=grids(B, K), demo_outputs=grids(B, K), demo_mask=demo_mask)


def test_every_registered_name_is_a_config_value_and_builds_its_own_module():
    classes = {name: encoder_class(name) for name in ENCODERS}
    assert all(issubclass(c, torch.nn.Module) for c in classes.values())
    assert len(set(classes.values())) == len(classes)
    for name in ENCODERS:
        assert isinstance(ETRM(tiny_config(name).model, G, K).encoder, classes[name])
    with pytest.raises(ConfigError, match=r"unknown encoder type 'transformer_xl'; known: \['hybrid_standard'"):
        build_config({"model": {"encoder": {"type": "transformer_xl"}}})


@pytest.mark.parametrize("encoder_type", sorted(ENCODERS))
def test_every_encoder_parameter_learns(encoder_type):
    torch.manual_seed(0)
    kl_weight = 0.1 if encoder_type in VARIATIONAL else 0.0
    cfg = tiny_config(encoder_type, kl_weight=kl_weight)
    model = ETRM(cfg.model, G, K)
    opt = build_optimizer(model, cfg.train)
    batch = random_batch()
    carry, out = model(model.initial_carry(batch), batch)
    assert out.context.shape == (B, T, D)
    correct = (out.logits.argmax(-1) == carry.data["labels"]).all(-1)
    loss = stablemax_cross_entropy(out.logits, carry.data["labels"]) + 0.5 * q_halt_loss(out.q_halt, correct)
    (loss + kl_weight * out.kl).mean().backward()
    if kl_weight:
        assert (out.kl > 0).all()
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    opt.step()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
        assert not torch.equal(p, before[name]), f"{name} did not move"


def set_encoder(norm_style: str, final_norm: bool) -> DemoSetEncoder:
    return DemoSetEncoder(D, 4, 4.0, num_layers=3, num_tokens=T, norm_style=norm_style, final_norm=final_norm)


def set_inputs():
    g = torch.Generator().manual_seed(1)
    demos = torch.randn(B, K, D, generator=g)
    return demos, random_batch()["demo_mask"]


def test_final_norm_makes_pre_norm_output_unit_rms():
    torch.manual_seed(0)
    enc = set_encoder("pre", final_norm=True)
    with torch.no_grad():
        enc.queries.mul_(4.0)  # a residual stream well away from unit scale
    rms = enc(*set_inputs()).pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)


def test_pre_norm_output_scale_drifts_without_final_norm():
    torch.manual_seed(0)
    with_norm, without = set_encoder("pre", True), set_encoder("pre", False)
    with torch.no_grad():
        with_norm.queries.mul_(4.0)
    without.load_state_dict(with_norm.state_dict())
    rms = without(*set_inputs()).pow(2).mean(-1).sqrt()
    assert ((rms - 1).abs() > 0.05).all(), rms
    assert not torch.allclose(with_norm(*set_inputs()), without(*set_inputs()), atol=1e-2)


def test_final_norm_is_a_no_op_with_post_norm():
    torch.manual_seed(0)
    with_norm, without = set_encoder("post", True), set_encoder("post", False)
    without.load_state_dict(with_norm.state_dict())
    torch.testing.assert_close(with_norm(*set_inputs()), without(*set_inputs()), atol=1e-4, rtol=0)


@pytest.mark.parametrize("encoder_type", sorted(ENCODERS))
def test_padded_slots_and_pad_tokens_do_not_change_the_context(encoder_type):
    torch.manual_seed(0)
    encoder = encoder_class(encoder_type)(tiny_config(encoder_type).model, G).eval()
    batch = random_batch()
    args = (batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    reference = encoder(*args).context

    garbage = [x.clone() for x in args[:2]]
    for x in garbage:
        x[~batch["demo_mask"]] = torch.randint(0, 12, (int((~batch["demo_mask"]).sum()), G * G))
    torch.testing.assert_close(encoder(*garbage, batch["demo_mask"]).context, reference, atol=1e-6, rtol=0)

    # PAD is masked inside attention, not only at pooling: its embedding cannot matter.
    with torch.no_grad():
        encoder.demo_encoder.embed_in.weight[PAD] += 5.0
        encoder.demo_encoder.embed_out.weight[PAD] -= 5.0
    torch.testing.assert_close(encoder(*args).context, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoder_type", sorted(ENCODERS))
def test_padded_slots_are_not_encoded(encoder_type):
    encoder = encoder_class(encoder_type)(tiny_config(encoder_type).model, G)
    rows = []
    encoder.demo_encoder.register_forward_hook(lambda mod, args, out: rows.append((args[0].shape[0], out.shape[0])))
    batch = random_batch()
    encoder(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    n_real = int(batch["demo_mask"].sum())
    assert n_real < B * K
    assert rows == [(n_real, n_real)]


def dense_demo_encoding(enc, inputs, outputs):
    """What DemoPairEncoder computes, written the plain way: every token through every block on the
    padded canvas, PAD masked as attention keys, the readout over non-PAD tokens."""
    x = torch.cat((enc.embed_in(inputs), enc.embed_out(outputs)), dim=1) * enc.scale
    keep = torch.cat((inputs, outputs), dim=1) != PAD
    if enc.readout == "cls":
        x = torch.cat((enc.cls.expand(x.shape[0], 1, -1), x), dim=1)
        keep = torch.cat((keep.new_ones(keep.shape[0], 1), keep), dim=1)
    for block in enc.blocks:
        x = block(x, enc.rope(), keep)
    if enc.readout == "cls":
        return rms_norm(x[:, 0])
    return enc.proj((x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))


@pytest.mark.parametrize("readout", ["pool", "cls"])
@pytest.mark.parametrize("norm_style", ["pre", "post"])
def test_dropping_pad_tokens_gives_the_padded_canvas_result(readout, norm_style):
    """The per-demo encoder runs its blocks on the non-PAD tokens only (layers.Packed); outputs and
    gradients must be those of the whole padded canvas with PAD masked."""
    torch.manual_seed(0)
    cfg = tiny_config("standard" if readout == "pool" else "hybrid_standard", norm_style=norm_style).model
    enc = DemoPairEncoder(cfg, G, readout)
    batch = random_batch()
    inputs, outputs = batch["demo_inputs"].flatten(0, 1), batch["demo_outputs"].flatten(0, 1)
    inputs[0, 5:] = PAD  # rows of very different lengths, one almost empty
    assert (inputs != PAD).sum() + (outputs != PAD).sum() < 0.8 * 2 * inputs.numel()
    results = []
    for forward in (enc, lambda i, o: dense_demo_encoding(enc, i, o)):
        enc.zero_grad()
        out = forward(inputs, outputs)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}))
    (packed, packed_grads), (dense, dense_grads) = results
    torch.testing.assert_close(packed, dense, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == dense_grads.keys()
    for name, grad in dense_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("encoder_type", VARIATIONAL)
def test_latent_dim_is_honoured(encoder_type):
    encoder = encoder_class(encoder_type)(tiny_config(encoder_type, latent_dim=7).model, G)
    latents = []
    encoder.latent.register_forward_hook(lambda mod, args, out: latents.append(out))
    batch = random_batch()
    out = encoder(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    mu, logvar = latents[0]
    assert mu.shape[-1] == logvar.shape[-1] == 7
    assert encoder.decode.in_features == 7
    assert out.context.shape == (B, T, D) and out.kl.shape == (B,)


@pytest.mark.parametrize("encoder_type", VARIATIONAL)
def test_variational_encoders_sample_in_training_only(encoder_type):
    torch.manual_seed(0)
    encoder = encoder_class(encoder_type)(tiny_config(encoder_type).model, G)
    batch = random_batch()
    args = (batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    assert not torch.allclose(encoder(*args).context, encoder(*args).context)
    encoder.eval()
    torch.testing.assert_close(encoder(*args).context, encoder(*args).context, atol=0, rtol=0)


def test_output_scale_is_the_context_rms():
    encoder = encoder_class("lpn_standard")(tiny_config("lpn_standard").model, G)
    batch = random_batch()
    out = encoder(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    torch.testing.assert_close(out.output_scale, out.context.detach().pow(2).mean((1, 2)).sqrt())
    torch.testing.assert_close(out.kl, torch.zeros(B))


# Every EncoderConfig knob but `type`, with a value other than its default.
OTHER_VALUE = {"num_layers": 2, "set_layers": 3, "norm_style": "post", "final_norm": False, "kl_weight": 0.1,
               "latent_dim": 8, "output_tokens": T + 2}


def _unchecked(encoder_type: str, **knobs):
    """A model config whose encoder knobs skip validation, to see what a module does with any of them."""
    from etrm.config import EncoderConfig

    cfg = tiny_config(encoder_type)
    fields = cfg.model.encoder.model_dump() | knobs
    return cfg.model.model_copy(update={"encoder": EncoderConfig.model_construct(**fields)})


def _encode(encoder_type: str, **knobs):
    torch.manual_seed(0)
    cfg = _unchecked(encoder_type, **knobs)
    encoder = encoder_class(encoder_type)(cfg, G).eval()
    batch = random_batch()
    with torch.no_grad():
        out = encoder(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    # kl_weight acts in the loss: through the encoder's KL, which is zero for a deterministic encoder
    used_kl = cfg.encoder.kl_weight * out.kl
    return {k: v.shape for k, v in encoder.state_dict().items()}, out.context, used_kl


def test_other_value_covers_every_knob():
    from etrm.config import EncoderConfig

    assert set(OTHER_VALUE) == set(EncoderConfig.model_fields) - {"type"}


@pytest.mark.parametrize("encoder_type", sorted(ENCODERS))
def test_the_knob_table_says_which_knobs_change_the_model(encoder_type):
    """The registry's knobs are what validation refuses by: a knob it calls unused must leave the module, its
    output and its loss exactly as they are, and a knob it calls used must change one of them."""
    shapes, context, kl = _encode(encoder_type)
    for knob, value in OTHER_VALUE.items():
        other_shapes, other_context, other_kl = _encode(encoder_type, **{knob: value})
        same = (shapes == other_shapes and context.shape == other_context.shape and torch.equal(context, other_context)
                and torch.equal(kl, other_kl))
        assert same == (knob not in ENCODERS[encoder_type].knobs), f"{encoder_type}: {knob}"


@pytest.mark.parametrize("encoder_type, knob", [
    ("lpn_standard", "final_norm"), ("lpn_variational", "norm_style"), ("lpn_standard", "set_layers"),
    ("standard", "kl_weight"), ("hybrid_standard", "latent_dim"), ("lpn_standard", "kl_weight"),
])  # fmt: skip
def test_a_knob_the_encoder_ignores_is_refused_in_one_line(encoder_type, knob):
    from etrm.config import ConfigError, EncoderConfig

    with pytest.raises(ConfigError) as err:
        tiny_config(encoder_type, **{knob: OTHER_VALUE[knob]})
    assert str(err.value).startswith(f"model.encoder.{knob}: the {encoder_type} encoder ignores {knob}")
    assert "\n" not in str(err.value)
    tiny_config(encoder_type, **{knob: EncoderConfig.model_fields[knob].default})  # its default says nothing: allowed
