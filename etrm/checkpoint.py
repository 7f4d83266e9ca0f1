"""Trial checkpoints that resume EXACTLY: a resumed trial equals one run straight through (on CPU).

That needs more than weights: the optimiser moments, the EMA, every RNG, the data sampler's
position and the ACT carry (samples mid-recursion). Everything is stored as tensors and plain
containers so `torch.load(weights_only=True)` can read it: a checkpoint never runs code.
A checkpoint only resumes the config that wrote it (checked by config hash).
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from etrm.config import TrialConfig
from etrm.model import Carry

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a different config; resuming it would silently mix two trials."""


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # the legacy tuple form
    assert isinstance(keys, np.ndarray)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])


def _carry_to_dict(carry: Carry) -> dict[str, Any]:
    return {f.name: getattr(carry, f.name) for f in dataclasses.fields(carry)}


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def save_checkpoint(
    path: Path,
    *,
    cfg: TrialConfig,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    sampler: Any,
    grad_spikes: Any,
    carry: Carry,
    metrics: dict[str, float],
) -> None:
    """Write atomically (temp file, fsync, rename): a crash mid-write leaves the previous checkpoint intact."""
    state = {
        "config_hash": cfg.config_hash(),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "sampler": sampler.state_dict(),
        "grad_spikes": grad_spikes.state_dict(),  # the norm history behind the running median
        "carry": _carry_to_dict(carry),
        "rng": _rng_state(),
        "metrics": metrics,  # the last logged values, so a trial resumed at its end still reports them
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    *,
    cfg: TrialConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    sampler: Any,
    grad_spikes: Any,
    device: torch.device,
) -> tuple[int, Carry, dict[str, float]]:
    """Restore everything `save_checkpoint` wrote, in place; return (step, carry, last metrics)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config_hash"] != cfg.config_hash():
        raise CheckpointMismatch(
            f"{path} was written by a trial with config hash {state['config_hash']}, but this trial's config "
            f"hashes to {cfg.config_hash()}; a checkpoint resumes only the config that wrote it "
            "(use a fresh checkpoint directory)"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    sampler.load_state_dict(state["sampler"])
    if "grad_spikes" in state:  # older checkpoints lack it: the running median then starts afresh
        grad_spikes.load_state_dict(state["grad_spikes"])
    _set_rng_state(state["rng"])
    carry = Carry(**_to_device(state["carry"], device))
    return state["step"], carry, state["metrics"]


def load_decoder_weights(path: str | Path, model: nn.Module) -> None:
    """Frozen-decoder mode: take the decoder from a trial checkpoint or a bare (decoder) state dict."""
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    if isinstance(state.get("model"), dict):  # a trial checkpoint
        state = state["model"]
    model.load_decoder_state(state)
