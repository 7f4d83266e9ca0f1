"""The encoder and gradient diagnostics measure what etrm/metrics.py says they measure."""

from __future__ import annotations

import contextlib

import pytest
import torch

from etrm.diagnostics import GradSpikes, encoder_diagnostics
from etrm.metrics import METRICS, SPIKE_FACTOR, SPIKE_MEDIAN_WINDOW, SPIKE_MIN_HISTORY

SCALE_FREE = ("encoder_cross_sample_var_rel", "encoder_cross_sample_cosine", "encoder_token_spread_rel")


def _context(seed: int = 0, B: int = 12, T: int = 5, D: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, T, D, generator=g)  # what every sample's context has in common
    return shared + 0.5 * torch.randn(B, T, D, generator=g)


def test_scale_free_metrics_ignore_the_scale_and_raw_ones_carry_it():
    """What the final norm does to a context: rescale it. Only the raw statistics may follow."""
    c = _context()
    small, big = encoder_diagnostics(c), encoder_diagnostics(8 * c)
    for name in SCALE_FREE:
        assert METRICS[name].unit == "1"
        assert float(big[name]) == pytest.approx(float(small[name]), rel=1e-5), name
    assert float(big["encoder_cross_sample_var"]) == pytest.approx(64 * float(small["encoder_cross_sample_var"]), rel=1e-5)
    for name in ("encoder_token_std", "encoder_token_spread", "encoder_output_norm"):
        assert float(big[name]) == pytest.approx(8 * float(small[name]), rel=1e-5), name


def test_each_encoder_metric_is_the_documented_formula():
    c = _context()
    d = {k: float(v) for k, v in encoder_diagnostics(c).items()}
    B = c.shape[0]
    # the research's definitions (reference etrm.py): variance and std over the batch
    assert d["encoder_cross_sample_var"] == pytest.approx(float(((c - c.mean(0, keepdim=True)) ** 2).mean()), rel=1e-6)
    assert d["encoder_token_std"] == pytest.approx(float(c.std(dim=0).mean()), rel=1e-6)
    # the spread over a sample's own T tokens (what encoder_token_std meant here before)
    assert d["encoder_token_spread"] == pytest.approx(float(c.std(dim=1, unbiased=False).mean()), rel=1e-6)
    assert d["encoder_cross_sample_var_rel"] == pytest.approx(d["encoder_cross_sample_var"] / float(c.pow(2).mean()), rel=1e-6)
    flat = c.flatten(1)
    cos = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
    assert d["encoder_cross_sample_cosine"] == pytest.approx(float((cos.sum() - cos.diagonal().sum()) / (B * (B - 1))), rel=1e-5)
    per_sample = (c.var(dim=1, unbiased=False).mean(-1) / c.pow(2).mean((1, 2))).sqrt().mean()
    assert d["encoder_token_spread_rel"] == pytest.approx(float(per_sample), rel=1e-6)


def test_collapse_reads_as_collapse():
    one = _context(B=1).expand(6, -1, -1)  # every sample gets the same context
    d = encoder_diagnostics(one)
    assert float(d["encoder_cross_sample_var_rel"]) == pytest.approx(0, abs=1e-6)
    assert float(d["encoder_cross_sample_cosine"]) == pytest.approx(1, abs=1e-5)
    tokens_alike = torch.randn(6, 1, 16).expand(-1, 5, -1)  # each sample's T tokens are one token
    assert float(encoder_diagnostics(tokens_alike)["encoder_token_spread_rel"]) == pytest.approx(0, abs=1e-6)
    independent = encoder_diagnostics(torch.randn(64, 5, 16, generator=torch.Generator().manual_seed(1)))
    assert abs(float(independent["encoder_cross_sample_cosine"])) < 0.05
    assert float(independent["encoder_cross_sample_var_rel"]) > 0.9


@contextlib.contextmanager
def no_host_reads():
    """Every way a tensor's value reaches Python raises: the code inside must stay on the device."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor's value was read on the host")

    try:
        for n in names:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_grad_spikes_count_on_the_device_per_window():
    spikes = GradSpikes(clip=1.0, device=torch.device("cpu"))
    steady, spike = 0.5, 0.5 * SPIKE_FACTOR * 1.01
    early = [10.0] + [steady] * (SPIKE_MIN_HISTORY - 1)  # a huge first norm: too early to call a spike
    window_1 = early + [steady] * 5 + [spike] + [steady] * 3 + [2.0 * SPIKE_FACTOR]  # 2 spikes, 3 above clip
    window_2 = [steady] * 4 + [0.5 * SPIKE_FACTOR * 0.99]  # just under the spike threshold
    with no_host_reads():
        for norm in window_1:
            spikes.add(torch.tensor(norm))
        first = spikes.pop()
        for norm in window_2:
            spikes.add(torch.tensor(norm))
        second = spikes.pop()
    assert {k: float(v) for k, v in first.items()} == {
        "grad/max_norm": 10.0, "grad/clipped_steps": 3, "grad/spike_steps": 2}  # fmt: skip
    assert {k: float(v) for k, v in second.items()} == {
        "grad/max_norm": pytest.approx(0.5 * SPIKE_FACTOR * 0.99), "grad/clipped_steps": 1, "grad/spike_steps": 0}  # fmt: skip
    assert set(first) <= set(METRICS)


def test_grad_spike_median_forgets_beyond_its_window_and_resumes_exactly():
    a = GradSpikes(clip=100.0, device=torch.device("cpu"))
    for _ in range(SPIKE_MEDIAN_WINDOW):
        a.add(torch.tensor(10.0))
    for _ in range(SPIKE_MEDIAN_WINDOW):  # the old level leaves the window: the median is now 1
        a.add(torch.tensor(1.0))
    a.pop()
    b = GradSpikes(clip=100.0, device=torch.device("cpu"))
    b.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in a.state_dict().items()})
    for s in (a, b):
        s.add(torch.tensor(3.5))  # a spike against the median of the last window (1), not of all steps (5.5)
    assert float(a.pop()["grad/spike_steps"]) == float(b.pop()["grad/spike_steps"]) == 1
