"""ETRM: a demonstration encoder in front of TRM's recursive decoder, with ACT halting.

One call of `ETRM.forward` is ONE ACT step over a persistent carry (truncated BPTT): rows
that halted at the previous step are replaced by the rows of the new batch, the demos of
every row are (re-)encoded, the two latent states are refined H_cycles × (L_cycles + 1)
times (only the last H cycle with gradient), and the halting decision is made. The forward
pass has no host syncs besides the encoder's demo gather, and no branching on tensor values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from etrm.grids import VOCAB_SIZE
from etrm.layers import Embedding, Linear, RotaryEmbedding, TransformerBlock, trunc_normal_
from etrm.registry import encoder_class

if TYPE_CHECKING:
    from etrm.config import ModelConfig

Batch = dict[str, Tensor]
INIT_JITTER = 1e-6  # model.init_jitter's scale: far below any effect, above float32 round-off of small weights


@dataclass
class Carry:
    z_H: Tensor  # (B, T + G², D) float32, detached
    z_L: Tensor  # (B, T + G², D)
    steps: Tensor  # (B,) int32: ACT steps taken by the row's current sample
    halted: Tensor  # (B,) bool: replaced by a new batch row at the next step
    data: Batch  # the rows being worked on (same keys as the batch)


@dataclass
class StepOutput:
    logits: Tensor  # (B, G², V) for carry.data["labels"] of the returned carry
    q_halt: Tensor  # (B,) float32
    q_continue: Tensor  # (B,) float32
    context: Tensor  # (B, T, D)
    kl: Tensor  # (B,)
    output_scale: Tensor  # (B,)


class TRMDecoder(nn.Module):
    """TRM's reasoning core: one stack of post-norm blocks reused for both latent states."""

    def __init__(self, cfg: ModelConfig, grid_size: int):
        super().__init__()
        D, T = cfg.hidden_size, cfg.encoder.output_tokens
        self.num_context = T
        self.H_cycles, self.L_cycles = cfg.H_cycles, cfg.L_cycles
        self.embed_scale = math.sqrt(D)
        self.embed = Embedding(VOCAB_SIZE, D)
        self.rope = RotaryEmbedding(D // cfg.num_heads, T + grid_size**2, cfg.rope_theta)
        self.blocks = nn.ModuleList(
            TransformerBlock(D, cfg.num_heads, cfg.expansion, "post") for _ in range(cfg.L_layers)
        )
        self.lm_head = Linear(D, VOCAB_SIZE, bias=False)
        self.q_head = Linear(D, 2, bias=True)
        with torch.no_grad():  # halting starts "almost never" and learns from there
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        # Fixed (not trained) initial latent states, saved with the model so a loaded decoder reuses them.
        self.register_buffer("H_init", trunc_normal_(torch.empty(D), std=1.0))
        self.register_buffer("L_init", trunc_normal_(torch.empty(D), std=1.0))

    def reason(self, z: Tensor, injection: Tensor) -> Tensor:
        z = z + injection
        for block in self.blocks:
            z = block(z, self.rope())
        return z

    def forward(
        self, context: Tensor, inputs: Tensor, z_H: Tensor, z_L: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One ACT step of recursion -> (z_H, z_L, logits (B, G², V), q (B, 2) float32)."""
        tokens = self.embed(inputs)
        x = torch.cat((context.to(tokens.dtype), tokens), dim=1) * self.embed_scale
        with torch.no_grad():
            for _ in range(self.H_cycles - 1):
                for _ in range(self.L_cycles):
                    z_L = self.reason(z_L, z_H + x)
                z_H = self.reason(z_H, z_L)
        for _ in range(self.L_cycles):
            z_L = self.reason(z_L, z_H + x)
        z_H = self.reason(z_H, z_L)
        logits = self.lm_head(z_H[:, self.num_context :])
        q = self.q_head(z_H[:, 0]).float()
        return z_H, z_L, logits, q


class ETRM(nn.Module):
    def __init__(self, cfg: ModelConfig, grid_size: int, max_demos: int):
        super().__init__()
        self.seq_len = cfg.encoder.output_tokens + grid_size**2
        self.hidden_size = cfg.hidden_size
        self.max_demos = max_demos
        self.halt_max_steps = cfg.halt_max_steps
        self.halt_exploration_prob = cfg.halt_exploration_prob
        self.encoder = encoder_class(cfg.encoder.type)(cfg, grid_size)
        self.decoder = TRMDecoder(cfg, grid_size)

    def initial_carry(self, batch: Batch) -> Carry:
        """A carry whose rows are all 'halted', so that the first step loads the whole batch."""
        B, K = batch["demo_mask"].shape
        assert K == self.max_demos, f"batch has {K} demo slots, the model was built for {self.max_demos}"
        device = batch["inputs"].device
        z = torch.zeros(B, self.seq_len, self.hidden_size, device=device)
        return Carry(
            z_H=z,
            z_L=z.clone(),
            steps=torch.zeros(B, dtype=torch.int32, device=device),
            halted=torch.ones(B, dtype=torch.bool, device=device),
            data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: Carry, batch: Batch) -> tuple[Carry, StepOutput]:
        """One ACT step. Train: halt at q_halt > 0 or halt_max_steps (with exploration);
        eval (not self.training): every sample runs exactly halt_max_steps."""
        new = carry.halted
        data = {k: torch.where(new.view(-1, *[1] * (v.dim() - 1)), v, carry.data[k]) for k, v in batch.items()}
        z_H = torch.where(new[:, None, None], self.decoder.H_init, carry.z_H)
        z_L = torch.where(new[:, None, None], self.decoder.L_init, carry.z_L)
        steps = torch.where(new, 0, carry.steps) + 1

        enc = self.encoder(data["demo_inputs"], data["demo_outputs"], data["demo_mask"])
        z_H, z_L, logits, q = self.decoder(enc.context, data["inputs"], z_H, z_L)
        q_halt, q_continue = q.unbind(-1)

        with torch.no_grad():
            halted = steps >= self.halt_max_steps
            if self.training and self.halt_max_steps > 1:
                halted = halted | (q_halt > 0)
                # Exploration: some samples must run a random minimum number of steps in [2, max].
                explore = torch.rand_like(q_halt) < self.halt_exploration_prob
                min_steps = torch.randint_like(steps, 2, self.halt_max_steps + 1) * explore
                halted = halted & (steps >= min_steps)

        out = StepOutput(logits, q_halt, q_continue, enc.context, enc.kl, enc.output_scale)
        return Carry(z_H.detach(), z_L.detach(), steps, halted, data), out

    def load_decoder_state(self, state_dict: dict[str, Tensor]) -> None:
        """Load decoder weights from a full model state dict, a decoder-only one, or a TRM / ETRM
        research checkpoint (names `inner.*`, as the research's frozen-decoder runs loaded TRM's).

        Encoder keys and TRM puzzle-embedding keys are ignored (ETRM has no puzzle table);
        anything else must match exactly, so a wrong checkpoint fails loudly.
        """
        prefix = "decoder."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        elif any(_research_name(k) for k in state_dict):
            state_dict = decoder_state_from_research(state_dict)
        self.decoder.load_state_dict({k: v for k, v in state_dict.items() if "puzzle_emb" not in k})

    def compile_blocks(self) -> None:
        """torch.compile (inductor) every transformer block, where the step's time goes.

        Block by block rather than the whole step: the decoder applies its blocks 30 times
        per step (H_cycles x (L_cycles + 1) x L_layers), and one compiled block serves them all,
        so compilation takes about a minute on a CPU rather than many. The number of real demos
        varies per step, so the per-demo encoder's blocks are recompiled once with a dynamic
        batch size. Outputs equal the eager ones up to float rounding (tests/test_compile.py; against
        the research code, tests/test_parity.py).
        """
        for module in self.modules():
            if isinstance(module, TransformerBlock):
                module.compile()

    @torch.no_grad()
    def jitter_(self, seed: int, jitter: int, scale: float = INIT_JITTER) -> None:
        """Add scale * N(0, 1) to every parameter: a null-control arm, the same trial perturbed negligibly. The
        noise comes from its own generator (seeded by the trial seed and the jitter seed), so initialisation,
        data order and every other random stream stay exactly those of the unjittered trial."""
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, jitter]).generate_state(1)[0]))
        for p in self.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p))

    def freeze_decoder(self) -> None:
        """Train the encoder only (build the optimiser after this: frozen parameters are left out)."""
        self.decoder.requires_grad_(False)


# TRM's and the ETRM research code's names for the decoder's tensors -> ours
_RESEARCH_RENAMES = (
    ("embed_tokens.embedding_weight", "embed.weight"),
    ("L_level.layers.", "blocks."),
    ("self_attn.qkv_proj.", "attn.qkv."),
    ("self_attn.o_proj.", "attn.out."),
    ("mlp.gate_up_proj.", "mlp.gate_up."),
    ("mlp.down_proj.", "mlp.down."),
)


def _research_name(key: str) -> str | None:
    """'inner.X' (also under TRM's '_orig_mod.model.' wrappers) -> 'X'; None for other keys."""
    key = key.removeprefix("_orig_mod.").removeprefix("model.")
    return key.removeprefix("inner.") if key.startswith("inner.") else None


def decoder_state_from_research(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The decoder tensors of a TRM / ETRM research state dict under our names (same layout:
    one fused qkv, SwiGLU gate_up); its encoder and loss-head keys are left out."""
    out = {}
    for key, value in state_dict.items():
        if (name := _research_name(key)) is not None:
            for old, new in _RESEARCH_RENAMES:
                name = name.replace(old, new)
            out[name] = value
    return out
