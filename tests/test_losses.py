"""Losses against float64 closed forms computed independently in numpy."""

import numpy as np
import torch
import torch.nn.functional as F

from etrm.grids import EOS, PAD
from etrm.losses import kl_divergence, q_halt_loss, softmax_cross_entropy, stablemax_cross_entropy

V = 12


def logits_and_labels(seed=0, B=4, L=9):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(B, L, V))
    labels = rng.integers(0, V, size=(B, L))
    labels[:, 0] = PAD
    labels[:, 1] = EOS
    labels[-1] = PAD  # a sample with nothing to predict
    return logits, labels


def numpy_stablemax_ce(logits, labels):
    with np.errstate(divide="ignore"):
        s = np.where(logits < 0, 1.0 / (1.0 - logits), logits + 1.0)
    p = s / s.sum(-1, keepdims=True)
    out = []
    for b in range(labels.shape[0]):
        valid = labels[b] != PAD
        nll = [-np.log(p[b, i, labels[b, i]]) for i in np.flatnonzero(valid)]
        out.append(np.mean(nll) if nll else 0.0)
    return np.array(out)


def test_stablemax_matches_closed_form():
    logits, labels = logits_and_labels()
    got = stablemax_cross_entropy(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert got.shape == (4,)
    np.testing.assert_allclose(got.double().numpy(), numpy_stablemax_ce(logits.astype(np.float32), labels), rtol=1e-6)
    assert got[-1] == 0  # all-PAD sample: no NaN


def test_pad_ignored_eos_counted():
    logits, labels = logits_and_labels()
    base = stablemax_cross_entropy(torch.tensor(logits), torch.tensor(labels))
    moved = logits.copy()
    moved[:, 0] += np.random.default_rng(1).normal(size=(4, V)) * 5  # position 0 is PAD everywhere
    torch.testing.assert_close(stablemax_cross_entropy(torch.tensor(moved), torch.tensor(labels)), base)
    moved = logits.copy()
    moved[0, 1, EOS] -= 5.0  # position 1 is EOS in sample 0
    changed = stablemax_cross_entropy(torch.tensor(moved), torch.tensor(labels))
    assert changed[0] > base[0] and torch.equal(changed[1:], base[1:])


def test_stablemax_gradient_is_finite_at_the_branch_point():
    logits = torch.tensor([[[0.0, 1.0, -1.0, 2.0]]], requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([[1]])).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_softmax_matches_torch_cross_entropy():
    logits, labels = logits_and_labels()
    logits, labels = torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)
    got = softmax_cross_entropy(logits, labels)
    for b in range(3):  # torch's mean over zero targets is NaN, so leave out the all-PAD sample
        torch.testing.assert_close(got[b], F.cross_entropy(logits[b], labels[b], ignore_index=PAD))
    assert got[-1] == 0


def test_kl_matches_closed_form():
    rng = np.random.default_rng(2)
    mu, logvar = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    sigma = np.exp(0.5 * logvar)
    # KL(N(mu, sigma²) || N(0, 1)) per dimension = log(1/sigma) + (sigma² + mu²)/2 - 1/2
    expected = (np.log(1 / sigma) + (sigma**2 + mu**2) / 2 - 0.5).sum(-1)
    got = kl_divergence(torch.tensor(mu), torch.tensor(logvar))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert torch.equal(kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))


def test_q_halt_loss_is_bce():
    q = np.array([-3.0, 0.5, 2.0, -0.1])
    y = np.array([True, False, True, False])
    p = 1 / (1 + np.exp(-q))
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(q_halt_loss(torch.tensor(q), torch.tensor(y)).numpy(), expected, rtol=1e-6)
