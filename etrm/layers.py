"""Transformer building blocks shared by the TRM decoder and the demo encoders.

TRM conventions: RMS norm without a learnable gain (computed in fp32), no biases,
LeCun-normal init, rotary positions, SwiGLU MLP. Attention is PyTorch SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etrm.memory import swiglu_width  # the MLP width: the memory estimate needs it without torch

RMS_EPS = 1e-5


def rms_norm(x: Tensor, eps: float = RMS_EPS) -> Tensor:
    """RMS norm with no gain, in fp32 so that bf16 activations do not lose the scale."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear with LeCun init (normal, std 1/sqrt(fan_in), truncated at 2 std) as in TRM; biases start at 0."""

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.in_features)
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    """Token embedding with std 1/sqrt(dim) (truncated at 2 std): scaled by sqrt(dim) at use, it has unit scale."""

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.embedding_dim)
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)


class RotaryEmbedding(nn.Module):
    """1-D rotary position tables for `max_len` positions (buffers, not saved in checkpoints)."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, head_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, hd) queries/keys by their position; computed in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    L = x.shape[-2]
    return (x.float() * cos[:L] + rotated * sin[:L]).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with one fused qkv projection and no biases.

    Self-attention by default; pass `kv` for cross-attention (queries from `x`, keys and
    values from `kv`, through the same fused weight). `key_mask` (B, Lk) bool is True for keys
    that may be attended to, so PAD tokens and padded demo slots are masked inside attention.
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = Linear(hidden_size, hidden_size, bias=False)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        key_mask: Tensor | None = None,
        kv: Tensor | None = None,
    ) -> Tensor:
        B, L, D = x.shape
        if kv is None:
            q, k, v = self.qkv(x).split(D, dim=-1)
        else:
            w_q, w_kv = self.qkv.weight.split((D, 2 * D), dim=0)
            q = F.linear(x, w_q)
            k, v = F.linear(kv, w_kv).split(D, dim=-1)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inner = swiglu_width(hidden_size, expansion)
        self.gate_up = Linear(hidden_size, 2 * inner, bias=False)
        self.down = Linear(inner, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Attention + SwiGLU. 'post' (TRM): x = rms(x + f(x)); 'pre': x = x + f(rms(x)).

    Pre-norm leaves the residual stream unnormalised, so its scale grows with depth; that is
    what the DemoSetEncoder's switchable final norm is about. With `kv` the attention is
    cross-attention onto `kv` (normalised too in pre-norm), as in the DemoSetEncoder.
    """

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, norm_style: str = "post"):
        super().__init__()
        assert norm_style in ("pre", "post"), norm_style
        self.norm_style = norm_style
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        key_mask: Tensor | None = None,
        kv: Tensor | None = None,
    ) -> Tensor:
        if self.norm_style == "post":
            x = rms_norm(x + self.attn(x, rope, key_mask, kv))
            return rms_norm(x + self.mlp(x))
        x = x + self.attn(rms_norm(x), rope, key_mask, None if kv is None else rms_norm(kv))
        return x + self.mlp(rms_norm(x))
