"""Trial checkpoints that resume EXACTLY: a resumed trial equals one run straight through (on CPU).

That needs more than weights: the optimiser moments, the EMA, every RNG, the data sampler's
position and the ACT carry (samples mid-recursion). Everything is stored as tensors and plain
containers so `torch.load(weights_only=True)` can read it: a checkpoint never runs code.
A checkpoint only resumes the config that wrote it (checked by config hash).

Each file carries the SHA-256 of its payload (`ETRMCKPT1`, the hex digest, then the torch file), so a
truncated or flipped file is caught before it is read. The previous checkpoint is kept beside the latest
(`checkpoint.prev.pt`): `resumable` sets a bad one aside and falls back to the other, or to a fresh start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from etrm.config import TrialConfig
from etrm.model import Carry

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
_MAGIC = b"ETRMCKPT1\n"


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a different config; resuming it would silently mix two trials."""


class CheckpointCorrupt(ValueError):
    """The file is not the checkpoint that was written (truncated, altered, or not a checkpoint)."""


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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():  # keep the one before: a checkpoint found bad later still leaves one to resume
        os.replace(path, path.with_name(PREVIOUS_NAME))
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state in a checkpoint file, its checksum verified; raises CheckpointCorrupt naming the file."""
    data = Path(path).read_bytes()
    head = len(_MAGIC) + 65
    if not data.startswith(_MAGIC) or len(data) < head:
        raise CheckpointCorrupt(f"{path}: not an etrm checkpoint (no checksum header)")
    digest, payload = data[len(_MAGIC):head - 1].decode(errors="replace"), memoryview(data)[head:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointCorrupt(f"{path}: checksum mismatch ({len(payload)} payload bytes; truncated or altered)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - intact bytes that torch cannot read are still a bad checkpoint
        raise CheckpointCorrupt(f"{path}: unreadable ({err})") from None


def resumable(checkpoint_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest good checkpoint in checkpoint_dir and its state (None: start fresh), and a note per bad one,
    each set aside as `<name>.corrupt-<time>` so that no later attempt trips on it again."""
    notes: list[str] = []
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = checkpoint_dir / name
        if not path.exists():
            continue
        try:
            return path, read_checkpoint(path), notes
        except CheckpointCorrupt as err:
            aside = path.with_name(f"{name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            notes.append(f"{err}; set aside as {aside.name}")
    if notes:
        notes.append("no good checkpoint left: the trial starts again from step 0")
    return None, None, notes


def load_checkpoint(
    state: dict[str, Any],
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
    """Restore everything `save_checkpoint` wrote (read from `path`), in place; return (step, carry, last metrics)."""
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
    path = Path(path).expanduser()
    with open(path, "rb") as f:
        is_trial_checkpoint = f.read(len(_MAGIC)) == _MAGIC
    state = read_checkpoint(path) if is_trial_checkpoint else torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state.get("model"), dict):  # a trial checkpoint
        state = state["model"]
    model.load_decoder_state(state)
