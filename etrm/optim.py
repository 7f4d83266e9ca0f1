"""Optimiser and learning-rate schedule.

AdamATan2 is TRM's optimiser; the paper uses a CUDA kernel, this is the same update in plain
PyTorch so it runs on any device. atan2 replaces Adam's m / (sqrt(v) + eps): it is bounded
and scale-invariant, so there is no epsilon to tune.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from etrm.config import TrainConfig


class AdamATan2(torch.optim.Optimizer):
    """p <- p·(1 - lr·wd) - lr/bc1 · atan2(m, sqrt(v / bc2)), with bc_i = 1 - beta_i^t."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                bc1 = 1 - beta1 ** state["step"]
                bc2 = 1 - beta2 ** state["step"]
                p.mul_(1 - lr * wd)
                p.add_(torch.atan2(m, (v / bc2).sqrt()), alpha=-lr / bc1)
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Two param groups, 'decoder' (lr) and 'encoder' (lr × encoder_lr_scale).

    Each group carries 'lr_scale'; the trainer sets group['lr'] = lr_at(step) × lr_scale
    (see `set_lr`). Frozen parameters (requires_grad False) are left out; empty groups too.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = []
    for name, scale in (("decoder", 1.0), ("encoder", cfg.encoder_lr_scale)):
        params = [p for n, p in named if n.startswith(name + ".")]
        if params:
            groups.append(dict(name=name, params=params, lr=cfg.lr * scale, lr_scale=scale))
    assert sum(len(g["params"]) for g in groups) == len(named), "parameters outside encoder/decoder"
    kwargs: dict[str, Any] = dict(betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam_atan2":
        return AdamATan2(groups, lr=cfg.lr, **kwargs)
    return torch.optim.AdamW(groups, lr=cfg.lr, **kwargs)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Base lr for optimiser step `step` (0-based): linear warm-up reaching cfg.lr at step
    warmup_steps - 1 (the first step is not wasted at lr 0), then constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a base lr to every group, times the group's lr_scale."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
