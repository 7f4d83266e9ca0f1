"""Demonstration encoders: a puzzle's demo pairs -> T context tokens for the decoder.

They replace TRM's per-puzzle embedding table, so a puzzle never seen in training can still
be told apart. Every encoder maps demo_inputs / demo_outputs (B, K, G²) and demo_mask (B, K)
to an `EncoderOutput`. Padding costs no compute: only the real demos are gathered into a
flat batch, encoded, and scattered back (`encode_valid_demos`), and inside each demo only its
non-PAD tokens go through the blocks (`DemoPairEncoder`). etrm/registry.py names
each of them (reference §4) for the config and the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etrm.config import ModelConfig
from etrm.grids import PAD, VOCAB_SIZE
from etrm.layers import Embedding, Linear, Packed, RotaryEmbedding, TransformerBlock, rms_norm, trunc_normal_
from etrm.losses import kl_divergence

LOGVAR_CLAMP = 10.0


@dataclass
class EncoderOutput:
    context: Tensor  # (B, T, D) tokens prepended to the decoder input
    kl: Tensor  # (B,) KL per sample; zeros for deterministic encoders
    output_scale: Tensor  # (B,) RMS of the context per sample: compares encoders without a final norm


def encoder_output(context: Tensor, kl: Tensor | None = None) -> EncoderOutput:
    scale = context.detach().float().pow(2).mean(dim=(1, 2)).sqrt()
    if kl is None:
        kl = torch.zeros(context.shape[0], device=context.device)
    return EncoderOutput(context, kl, scale)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, K, ...) over the K entries where mask (B, K) is True."""
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def reparameterise(mu: Tensor, logvar: Tensor, training: bool) -> Tensor:
    """z = mu + sigma·eps while training; the mean at evaluation, so evaluation is deterministic."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if training else mu


class GaussianHead(nn.Module):
    """mu and logvar projections (with bias). `zero_logvar`: logvar starts at exactly 0 (unit
    variance), as in the research's hybrid_variational; otherwise both are LeCun-initialised (its LPN)."""

    def __init__(self, hidden_size: int, latent_dim: int, zero_logvar: bool):
        super().__init__()
        self.mu = Linear(hidden_size, latent_dim, bias=True)
        self.logvar = Linear(hidden_size, latent_dim, bias=True)
        if zero_logvar:
            nn.init.zeros_(self.logvar.weight)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.logvar(h).clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP)


class DemoPairEncoder(nn.Module):
    """One (input, output) demo pair -> one vector, over 2G² tokens (separate input/output
    embeddings scaled by sqrt(D), RoPE positions 0..2G²-1, PAD masked as attention keys).

    readout 'pool' (`standard`): blocks in the set encoder's `norm_style`, mean over non-PAD
    tokens, linear.
    readout 'cls' (`hybrid_*`, `lpn_*`, LPN style): pre-norm blocks over a CLS token (std 0.02,
    put in front after the scaling and left unrotated) and the grid tokens; RMS norm of the CLS state.

    PAD tokens are masked keys that no readout reads, so they are dropped before the blocks
    (layers.Packed): the cost follows the grids' real sizes, not the padded canvas.
    """

    def __init__(self, cfg: ModelConfig, grid_size: int, readout: str):
        super().__init__()
        assert readout in ("pool", "cls"), readout
        D = cfg.hidden_size
        self.readout = readout
        self.scale = math.sqrt(D)
        self.embed_in = Embedding(VOCAB_SIZE, D)
        self.embed_out = Embedding(VOCAB_SIZE, D)
        has_cls = readout == "cls"
        self.rope = RotaryEmbedding(D // cfg.num_heads, 2 * grid_size**2, cfg.rope_theta, unrotated=int(has_cls))
        norm_style = "pre" if has_cls else cfg.encoder.norm_style
        self.blocks = nn.ModuleList(
            TransformerBlock(D, cfg.num_heads, cfg.expansion, norm_style) for _ in range(cfg.encoder.num_layers)
        )
        if has_cls:
            self.cls = nn.Parameter(trunc_normal_(torch.empty(D), std=0.02))
        else:
            self.proj = Linear(D, D, bias=False)

    def kept_tokens(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        """(n, L) bool: the tokens the blocks see (the CLS token and every non-PAD cell)."""
        keep = torch.cat((inputs, outputs), dim=1) != PAD
        if self.readout == "cls":
            keep = torch.cat((keep.new_ones(keep.shape[0], 1), keep), dim=1)
        return keep

    def forward(self, inputs: Tensor, outputs: Tensor, num_kept: int | None = None) -> Tensor:
        """(n, G²) demo inputs and outputs -> (n, D). `num_kept`, the number of kept tokens when
        the caller already has it on the host, spares a host sync."""
        packed = Packed.of(self.kept_tokens(inputs, outputs), num_kept)
        # One table for both grids (outputs' ids shifted past the inputs'), scaled once, CLS last.
        ids = torch.cat((inputs, outputs + VOCAB_SIZE), dim=1)
        table = torch.cat((self.embed_in.weight, self.embed_out.weight)) * self.scale
        if self.readout == "cls":
            ids = torch.cat((ids.new_full((ids.shape[0], 1), 2 * VOCAB_SIZE), ids), dim=1)
            table = torch.cat((table, self.cls[None]))
        x = F.embedding(ids.flatten()[packed.index], table)
        rope = tuple(t[packed.positions()] for t in self.rope())
        for t in (x, *rope, packed.index, packed.key_mask):  # compiled blocks: sized for any step's demos at once
            torch._dynamo.maybe_mark_dynamic(t, 0)
        for block in self.blocks:
            x = block(x, rope, packed=packed)
        if self.readout == "cls":
            counts = packed.key_mask.sum(1)
            return rms_norm(x[counts.cumsum(0) - counts])  # each demo's first kept token is its CLS
        return self.proj(masked_mean(packed.pad(x), packed.key_mask))  # the dense sum's order: same rounding


def encode_valid_demos(
    encoder: DemoPairEncoder, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor
) -> Tensor:
    """Encode only the real demos; padded slots come back as zero vectors (B, K, D).

    The gather needs the numbers of real demos and of their tokens on the host: one sync per
    step, the price of not spending most of the encoder's compute on padding.
    """
    B, K, _ = demo_inputs.shape
    inputs, outputs, real = demo_inputs.flatten(0, 1), demo_outputs.flatten(0, 1), demo_mask.flatten()
    kept = encoder.kept_tokens(inputs, outputs) & real[:, None]
    num_demos, num_kept = torch.stack((real.sum(), kept.sum())).tolist()  # the step's one host sync
    idx = torch.nonzero_static(real, size=num_demos).squeeze(1)
    vecs = encoder(inputs[idx], outputs[idx], num_kept)
    return vecs.new_zeros(B * K, vecs.shape[-1]).index_copy(0, idx, vecs).view(B, K, -1)


class DemoSetEncoder(nn.Module):
    """T learnable queries (std 0.02) cross-attend to the demo vectors (padded demos masked), each
    layer followed by a SwiGLU, pre- or post-norm; then the switchable final RMS norm (the fix).

    With pre-norm the residual stream's scale drifts with depth unless `final_norm`; with
    post-norm every layer already ends in an RMS norm, so `final_norm` is a no-op.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        expansion: float,
        num_layers: int,
        num_tokens: int,
        norm_style: str,
        final_norm: bool,
    ):
        super().__init__()
        self.final_norm = final_norm
        self.queries = nn.Parameter(trunc_normal_(torch.empty(num_tokens, hidden_size), std=0.02))
        self.layers = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, expansion, norm_style) for _ in range(num_layers)
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DemoSetEncoder:
        e = cfg.encoder
        return cls(
            cfg.hidden_size, cfg.num_heads, cfg.expansion, e.set_layers, e.output_tokens, e.norm_style, e.final_norm
        )

    def forward(self, demos: Tensor, demo_mask: Tensor) -> Tensor:
        # A sample with no real demo attends to its (zero) slots rather than to nothing (NaN).
        key_mask = demo_mask | ~demo_mask.any(dim=1, keepdim=True)
        q = self.queries.expand(demos.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, key_mask=key_mask, kv=demos)
        return rms_norm(q) if self.final_norm else q


class StandardEncoder(nn.Module):
    """Per-demo pooled encoder -> DemoSetEncoder."""

    readout = "pool"

    def __init__(self, cfg: ModelConfig, grid_size: int):
        super().__init__()
        self.demo_encoder = DemoPairEncoder(cfg, grid_size, self.readout)
        self.set_encoder = DemoSetEncoder.from_config(cfg)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> EncoderOutput:
        demos = encode_valid_demos(self.demo_encoder, demo_inputs, demo_outputs, demo_mask)
        return encoder_output(self.set_encoder(demos, demo_mask))


class HybridStandardEncoder(StandardEncoder):
    """Per-demo CLS encoder (pre-norm) -> DemoSetEncoder."""

    readout = "cls"


class HybridVariationalEncoder(nn.Module):
    """Per-demo CLS encoder -> DemoSetEncoder -> mean over T -> rms -> Gaussian latent -> T×D.

    The decode projection is not normalised (reference §4), hence `output_scale`.
    """

    def __init__(self, cfg: ModelConfig, grid_size: int):
        super().__init__()
        self.shape = (cfg.encoder.output_tokens, cfg.hidden_size)
        self.demo_encoder = DemoPairEncoder(cfg, grid_size, "cls")
        self.set_encoder = DemoSetEncoder.from_config(cfg)
        self.latent = GaussianHead(cfg.hidden_size, cfg.encoder.latent_dim, zero_logvar=True)
        self.decode = Linear(cfg.encoder.latent_dim, math.prod(self.shape), bias=False)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> EncoderOutput:
        demos = encode_valid_demos(self.demo_encoder, demo_inputs, demo_outputs, demo_mask)
        h = rms_norm(self.set_encoder(demos, demo_mask).mean(dim=1))
        mu, logvar = self.latent(h)
        z = reparameterise(mu, logvar, self.training)
        return encoder_output(self.decode(z).view(-1, *self.shape), kl_divergence(mu, logvar))


class LPNStandardEncoder(nn.Module):
    """Per-demo CLS encoder -> mean over real demos -> linear to T×D (no set encoder, no norm)."""

    def __init__(self, cfg: ModelConfig, grid_size: int):
        super().__init__()
        self.shape = (cfg.encoder.output_tokens, cfg.hidden_size)
        self.demo_encoder = DemoPairEncoder(cfg, grid_size, "cls")
        self.decode = Linear(cfg.hidden_size, math.prod(self.shape), bias=False)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> EncoderOutput:
        demos = encode_valid_demos(self.demo_encoder, demo_inputs, demo_outputs, demo_mask)
        return encoder_output(self.decode(masked_mean(demos, demo_mask)).view(-1, *self.shape))


class LPNVariationalEncoder(nn.Module):
    """Per-demo CLS encoder -> per-demo Gaussian latent, sampled per demo -> mean over real
    demos -> linear to T×D. The KL is the mean over the sample's real demos."""

    def __init__(self, cfg: ModelConfig, grid_size: int):
        super().__init__()
        self.shape = (cfg.encoder.output_tokens, cfg.hidden_size)
        self.demo_encoder = DemoPairEncoder(cfg, grid_size, "cls")
        self.latent = GaussianHead(cfg.hidden_size, cfg.encoder.latent_dim, zero_logvar=False)
        self.decode = Linear(cfg.encoder.latent_dim, math.prod(self.shape), bias=False)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> EncoderOutput:
        demos = encode_valid_demos(self.demo_encoder, demo_inputs, demo_outputs, demo_mask)
        mu, logvar = self.latent(demos)  # (B, K, latent); padded slots are masked out below
        z = masked_mean(reparameterise(mu, logvar, self.training), demo_mask)
        kl = masked_mean(kl_divergence(mu, logvar), demo_mask)
        return encoder_output(self.decode(z).view(-1, *self.shape), kl)

