"""Transformer building blocks shared by the TRM decoder and the demo encoders.

TRM conventions: RMS norm without a learnable gain (computed in fp32), no biases,
LeCun-normal init, rotary positions, SwiGLU MLP. Attention is PyTorch SDPA.
Every random init is `trunc_normal_`, whose std is the std the parameter really gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etrm.memory import swiglu_width  # the MLP width: the memory estimate needs it without torch

RMS_EPS = 1e-5
# std of a standard normal truncated to [-2, 2]: sqrt(1 - 2·2·φ(2) / (2Φ(2) - 1)) ≈ 0.880
_TRUNC2_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


def trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """Normal init truncated at ±2 sigma, widened so that the values' std really is `std`.

    torch's trunc_normal_(std=s) cuts the tails off a normal of std s, which leaves 0.88·s;
    TRM and ETRM (JAX-style init) correct for that, and so do we: inits match theirs in distribution.
    """
    s = std / _TRUNC2_STD
    return nn.init.trunc_normal_(tensor, std=s, a=-2 * s, b=2 * s)


def rms_norm(x: Tensor, eps: float = RMS_EPS) -> Tensor:
    """RMS norm with no gain, in fp32 so that bf16 activations do not lose the scale."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear with LeCun init (truncated normal, std 1/sqrt(fan_in)) as in TRM; biases start at 0."""

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, std=1.0 / math.sqrt(self.in_features))
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    """Token embedding with std 1/sqrt(dim) (truncated normal): scaled by sqrt(dim) at use, it has unit scale."""

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, std=1.0 / math.sqrt(self.embedding_dim))


class RotaryEmbedding(nn.Module):
    """1-D rotary position tables for `max_len` positions (buffers, not saved in checkpoints).

    `unrotated` leading slots get the identity rotation (cos 1, sin 0) and the positions
    0..max_len-1 follow them: a CLS token in front of a grid leaves the grid's positions as they are.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float, unrotated: int = 0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        freqs = torch.cat((freqs.new_zeros(unrotated, freqs.shape[1]), freqs))
        emb = torch.cat((freqs, freqs), dim=-1)  # (unrotated + L, head_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries/keys (..., hd) by their positions' cos/sin tables (broadcast to x); in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


@dataclass
class Packed:
    """n sequences of length L held as the flat batch (N, D) of their N kept tokens.

    The per-demo encoder's grids are half PAD on average, and a PAD token is a masked key that
    no output reads: dropping it changes nothing but the cost. Everything per token (projections,
    SwiGLU, norms, rotary) runs on the kept tokens only; attention needs the sequences, so
    q/k/v are scattered into (n, L) around it (zeros at dropped tokens, masked as keys) and its
    output gathered back.
    """

    index: Tensor  # (N,) ascending positions of the kept tokens in the flattened (n * L)
    key_mask: Tensor  # (n, L) bool: True at kept tokens

    @classmethod
    def of(cls, keep: Tensor, num_kept: int | None = None) -> Packed:
        """Pack the True tokens of `keep` (n, L). With `num_kept` (their count, known on the host)
        the index is found without a host sync."""
        flat = keep.flatten()
        index = flat.nonzero() if num_kept is None else torch.nonzero_static(flat, size=num_kept)
        return cls(index.squeeze(1), keep)

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) -> (n, L, ...), zeros at the dropped tokens."""
        n, L = self.key_mask.shape
        return x.new_zeros(n * L, *x.shape[1:]).index_copy(0, self.index, x).unflatten(0, (n, L))

    def unpad(self, x: Tensor) -> Tensor:
        """(n, L, ...) -> (N, ...): the kept tokens."""
        return x.flatten(0, 1).index_select(0, self.index)

    def positions(self) -> Tensor:
        """(N,) each kept token's position in its sequence."""
        return self.index % self.key_mask.shape[1]


class Attention(nn.Module):
    """Multi-head attention with one fused qkv projection and no biases.

    Self-attention by default; pass `kv` for cross-attention (queries from `x`, keys and
    values from `kv`, through the same fused weight). `key_mask` (B, Lk) bool is True for keys
    that may be attended to, so PAD tokens and padded demo slots are masked inside attention.
    With `packed`, x is (N, D) (see Packed) and `rope` holds each token's own cos/sin (N, hd).
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
        packed: Packed | None = None,
    ) -> Tensor:
        if packed is not None:
            return self._packed(x, rope, packed)
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

    def _packed(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, packed: Packed) -> Tensor:
        N, D = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(1)  # (N, H, hd) each
        if rope is not None:
            cos, sin = (t.unsqueeze(1) for t in rope)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = packed.pad(torch.stack((q, k, v), dim=1)).permute(2, 0, 3, 1, 4)  # (n, H, L, hd) each
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=packed.key_mask[:, None, None, :])
        return self.out(packed.unpad(y.transpose(1, 2)).reshape(N, D))


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
    cross-attention onto `kv`, as in the DemoSetEncoder; pre-norm normalises the queries' stream
    only, never `kv` (the demo vectors come in at whatever scale their encoder gives them).
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
        packed: Packed | None = None,
    ) -> Tensor:
        if self.norm_style == "post":
            x = rms_norm(x + self.attn(x, rope, key_mask, kv, packed))
            return rms_norm(x + self.mlp(x))
        x = x + self.attn(rms_norm(x), rope, key_mask, kv, packed)
        return x + self.mlp(rms_norm(x))
