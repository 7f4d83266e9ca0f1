"""The tensors behind the metric names of etrm.metrics, computed on the device.

Everything here returns device tensors: the trainer syncs to the host once per log
step, never in between.
"""

from __future__ import annotations

import torch

from etrm.metrics import METRICS

# Train metrics averaged over the samples that halted in the log window, as TRM reports them.
HALTED_METRICS = tuple(name for name, m in METRICS.items() if m.halted)


class HaltedMeans:
    """Sums per-sample values over halted samples on the device; divides at the log step.

    Samples halt in waves (every halt_max_steps steps at first), so one step may have none
    halted: averaging over the whole log window avoids empty (NaN) train metrics.
    """

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(HALTED_METRICS) + 1, device=device, dtype=torch.float64)

    def add(self, per_sample: dict[str, torch.Tensor], halted: torch.Tensor) -> None:
        values = [per_sample[k].detach().double() for k in HALTED_METRICS] + [torch.ones_like(halted, dtype=torch.float64)]
        self.sums += torch.stack(values) @ halted.double()

    def pop(self) -> dict[str, torch.Tensor]:
        """Means since the last pop; empty if no sample halted in the window."""
        sums, count = self.sums[:-1], self.sums[-1]
        self.sums = torch.zeros_like(self.sums)
        means = sums / count.clamp_min(1)
        return {"_count": count} | dict(zip(HALTED_METRICS, means))


@torch.no_grad()
def encoder_diagnostics(context: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scale and spread of the encoder's context tokens (B, T, D), computed in fp32."""
    c = context.detach().float()
    return {
        "encoder_output_mean": c.mean(),
        "encoder_output_std": c.std(),
        "encoder_output_norm": c.norm(dim=-1).mean(),
        "encoder_cross_sample_var": c.var(dim=0, unbiased=False).mean() if c.shape[0] > 1 else c.new_zeros(()),
        "encoder_token_std": c.std(dim=1, unbiased=False).mean(),
    }


@torch.no_grad()
def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the existing gradients of `params` (0 if none have one)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
