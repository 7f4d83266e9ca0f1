"""Metric names (the one place they are documented) and the tensors behind them.

Names follow the research code (etrm-reference.md §9) so runs can be compared with
TRM/ETRM logs. Everything here returns device tensors: the trainer syncs to the host
once per log step, never in between.
"""

from __future__ import annotations

import torch

METRICS: dict[str, str] = {
    # Training: averaged over the samples that HALTED during the log window (as TRM does), so an
    # ACT sample is counted once, with its final answer, and the numbers are comparable with TRM's.
    "train/lm_loss": "LM loss (stable-max or softmax CE, mean over non-PAD tokens) per halted sample.",
    "train/q_halt_loss": "Halting-head BCE (q_halt vs 'every token correct') per halted sample.",
    "train/kl_loss": "KL(q(z|demos) || N(0, I)) per halted sample; 0 for deterministic encoders.",
    "train/accuracy": "Token accuracy of halted samples (PAD ignored, EOS counts).",
    "train/exact_accuracy": "Fraction of halted samples whose every token is correct.",
    "train/q_halt_accuracy": "Fraction of halted samples where (q_halt > 0) agrees with exact correctness.",
    "train/steps": "Mean ACT steps taken by the halted samples.",
    "train/lr": "Base learning rate at this step (encoder groups use lr × train.encoder_lr_scale).",
    "grad/total_norm": "Global gradient norm BEFORE clipping (so it can exceed train.grad_clip).",
    "grad/encoder_norm": "Gradient norm of the encoder parameters, before clipping.",
    "grad/decoder_norm": "Gradient norm of the decoder parameters, before clipping (0 when frozen).",
    # Encoder diagnostics on the context c (B, T, D) of the current batch at the log step.
    "encoder_output_mean": "Mean of the context tokens' entries.",
    "encoder_output_std": "Std of the context tokens' entries.",
    "encoder_output_norm": "Mean L2 norm of a context token.",
    "encoder_cross_sample_var": "Variance across the batch, averaged over T and D (high = unstable encoder).",
    "encoder_token_std": "Std across the T context tokens, averaged over samples and D (0 = tokens collapsed).",
    "encoder_output_scale": "RMS of the context per sample, mean over the batch; hybrid_variational's output "
    "is not normalised, so read its cross-sample variance against this.",
    # Evaluation on held-out puzzles (voting over augmented variants, full halt_max_steps).
    "eval/accuracy": "Token accuracy over every eval row (all augmented variants, before voting), PAD ignored.",
    "eval/exact_accuracy": "Fraction of eval rows (all augmented variants, before voting) solved exactly.",
    "ARC/pass@1": "Mean over the puzzles evaluated of the fraction of test pairs whose top voted answer is right.",
    "ARC/pass@2": "As pass@1, with the right answer among the top 2 voted.",
    "ARC/pass@5": "As pass@1, with the right answer among the top 5 voted.",
    "perf/samples_per_s": "Training batch rows processed per second over the log window (eval excluded).",
    "diverged_at_step": "Step at which the training loss became NaN/Inf (logged only for diverged trials).",
}

HALTED_METRICS = (
    "train/lm_loss",
    "train/q_halt_loss",
    "train/kl_loss",
    "train/accuracy",
    "train/exact_accuracy",
    "train/q_halt_accuracy",
    "train/steps",
)


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
