"""Per-sample losses. Every function returns a (B,) tensor so the trainer can choose which
samples count (e.g. halted ones) and how to average, and so the KL weight means the same
thing at every batch size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from etrm.grids import PAD


def _masked_mean_nll(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood over each sample's non-PAD labels (EOS is a target)."""
    valid = labels != PAD
    nll = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    nll = torch.where(valid, nll, torch.zeros_like(nll))
    return (nll.sum(-1) / valid.sum(-1).clamp(min=1)).float()


def stablemax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """TRM's stable-max CE in float64: s(x) = 1/(1-x) for x < 0, x + 1 otherwise; p = s / sum(s).

    Grows linearly rather than exponentially, which keeps long recursive training stable.
    The negative branch is evaluated on x clamped to <= 0 so torch.where never sees an inf
    (whose gradient would be NaN even though the branch is not selected).
    """
    x = logits.double()
    s = torch.where(x < 0, 1.0 / (1.0 - x.clamp(max=0.0)), x + 1.0)
    log_probs = torch.log(s) - torch.log(s.sum(-1, keepdim=True))
    return _masked_mean_nll(log_probs, labels)


def softmax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain softmax CE with the same masking and per-sample averaging as the stable-max one."""
    return _masked_mean_nll(F.log_softmax(logits.float(), dim=-1), labels)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over the latent (last) dimension."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def q_halt_loss(q_halt: Tensor, seq_correct: Tensor) -> Tensor:
    """BCE-with-logits of the halt logit against 'every valid token of the sample is correct'."""
    return F.binary_cross_entropy_with_logits(q_halt.float(), seq_correct.float(), reduction="none")
