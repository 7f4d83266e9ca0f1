"""The tensors behind the metric names of etrm.metrics, computed on the device.

Everything here returns device tensors: the trainer reads their values once per log
step, never in between.
"""

from __future__ import annotations

from typing import Any

import torch

from etrm.metrics import METRICS, SPIKE_FACTOR, SPIKE_MEDIAN_WINDOW, SPIKE_MIN_HISTORY

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
    """Scale, spread and collapse of the encoder's context tokens (B, T, D), computed in fp32.

    The raw statistics carry the context's scale, which the final norm pins to RMS 1 while a pre-norm
    set encoder without it drifts far above: they fall with the fix by construction. The `_rel` ones
    divide the scale out, and the cosine never had it, so those answer 'does the fix change how the
    encoder varies', not 'does it make the numbers smaller'.
    """
    c = context.detach().float()
    B = c.shape[0]
    tiny = torch.finfo(c.dtype).tiny
    zero = c.new_zeros(())
    cross_var = c.var(dim=0, unbiased=False).mean() if B > 1 else zero
    per_sample_ms = c.pow(2).mean(dim=(1, 2))  # (B,)
    token_var = c.var(dim=1, unbiased=False).mean(dim=-1)  # (B,): spread over T, mean over D
    unit = torch.nn.functional.normalize(c.flatten(1), dim=1)  # (B, T*D)
    total = unit.sum(dim=0)
    return {
        "encoder_output_mean": c.mean(),
        "encoder_output_std": c.std(),
        "encoder_output_norm": c.norm(dim=-1).mean(),
        "encoder_cross_sample_var": cross_var,
        "encoder_cross_sample_var_rel": cross_var / c.pow(2).mean().clamp_min(tiny),
        # mean over the B(B-1) ordered pairs i != j of cos(c_i, c_j) = (|sum_i u_i|^2 - B) / (B(B-1))
        "encoder_cross_sample_cosine": (total @ total - B) / (B * (B - 1)) if B > 1 else zero,
        "encoder_token_std": c.std(dim=0).mean() if B > 1 else zero,
        "encoder_token_spread": c.std(dim=1, unbiased=False).mean(),
        "encoder_token_spread_rel": (token_var / per_sample_ms.clamp_min(tiny)).sqrt().mean(),
    }


class GradSpikes:
    """Gradient explosions between log steps: the one norm a log step shows misses almost all of them.

    Per log window, on the device (no host sync; the trainer reads it at the log step): the max global
    gradient norm before clipping, the steps whose norm exceeded the clip threshold, and the steps whose
    norm exceeded SPIKE_FACTOR × the median of the previous SPIKE_MEDIAN_WINDOW steps' norms (counted once
    SPIKE_MIN_HISTORY steps are known; etrm.metrics defines them). The norm history is part of a
    checkpoint, so a resumed trial counts exactly what a straight run counts.
    """

    def __init__(self, clip: float, device: torch.device):
        self.clip = clip
        self.history = torch.zeros(SPIKE_MEDIAN_WINDOW, device=device)
        self.seen = 0  # steps recorded so far: a host-side count, known without asking the device
        self._new_window()

    def _new_window(self) -> None:
        device = self.history.device
        self.max_norm = torch.zeros((), device=device)
        self.clipped = torch.zeros((), dtype=torch.long, device=device)
        self.spikes = torch.zeros((), dtype=torch.long, device=device)

    @torch.no_grad()
    def add(self, total_norm: torch.Tensor) -> None:
        norm = total_norm.detach().float()
        self.max_norm = torch.maximum(self.max_norm, norm)
        self.clipped += norm > self.clip
        known = min(self.seen, SPIKE_MEDIAN_WINDOW)
        if known >= SPIKE_MIN_HISTORY:
            self.spikes += norm > SPIKE_FACTOR * self.history[:known].median()
        self.history[self.seen % SPIKE_MEDIAN_WINDOW] = norm
        self.seen += 1

    def pop(self) -> dict[str, torch.Tensor]:
        """The window's numbers (device tensors), and a fresh window."""
        out = {"grad/max_norm": self.max_norm, "grad/clipped_steps": self.clipped, "grad/spike_steps": self.spikes}
        self._new_window()
        return out

    def state_dict(self) -> dict[str, Any]:  # {"history": Tensor, "seen": int}
        return {"history": self.history, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state["history"].to(self.history.device)
        self.seen = int(state["seen"])


@torch.no_grad()
def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the existing gradients of `params` (0 if none have one)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
