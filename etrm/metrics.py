"""Every metric a trial logs, in one table: its name, which way is better, its unit, its kind, whether
it is averaged over halted samples, and what it means.

The trainer logs these names; the spec checker, the comparison (directions, display units, which
metrics are variances), the plots, the Optuna searcher and ASHA (which way to optimise) all read this
table, and README's metric table is generated from it. Names follow the research code (etrm-reference.md
§9) so runs compare with TRM/ETRM logs. Plain data, no torch: the sweep driver reads it without loading
torch; etrm.diagnostics computes the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Better = Literal["higher", "lower"] | None

# grad/spike_steps: a step whose gradient norm exceeds SPIKE_FACTOR × the median norm of the previous
# SPIKE_MEDIAN_WINDOW steps, counted once SPIKE_MIN_HISTORY steps are known (etrm.diagnostics.GradSpikes).
SPIKE_FACTOR = 3.0
SPIKE_MEDIAN_WINDOW = 100
SPIKE_MIN_HISTORY = 10


@dataclass(frozen=True)
class Metric:
    name: str
    better: Better  # None: no better direction; compared two-sided, never called "improved", not optimisable
    unit: str  # "fraction" is shown in %, its differences in points; "1": scale-free; "scale": the context's units
    kind: str  # what sort of number: loss, accuracy, variance (the comparison adds the SD ratio it implies), ...
    halted: bool  # averaged over the samples that halted in the log window (as TRM reports train metrics)
    description: str

    @property
    def direction(self) -> int:
        """+1 higher is better, -1 lower is better, 0 neither."""
        return {"higher": 1, "lower": -1, None: 0}[self.better]

    @property
    def mode(self) -> Literal["max", "min"] | None:
        """What an optimiser (Optuna, ASHA) does with it; None: it has no better direction to optimise."""
        return {"higher": "max", "lower": "min", None: None}[self.better]


_TABLE = [
    # Training: averaged over the samples that HALTED during the log window (as TRM does), so an ACT sample is
    # counted once, with its final answer, and the numbers are comparable with TRM's.
    Metric("train/lm_loss", "lower", "nats", "loss", True,
           "LM loss (stable-max or softmax CE, mean over non-PAD tokens) per halted sample."),
    Metric("train/q_halt_loss", "lower", "nats", "loss", True,
           "Halting-head BCE (q_halt vs 'every token correct') per halted sample."),
    Metric("train/kl_loss", None, "nats", "loss", True,
           "KL(q(z|demos) || N(0, I)) per halted sample; 0 for deterministic encoders. A regulariser's size, "
           "not a quality: no better direction."),
    Metric("train/accuracy", "higher", "fraction", "accuracy", True,
           "Token accuracy of halted samples (PAD ignored, EOS counts)."),
    Metric("train/exact_accuracy", "higher", "fraction", "accuracy", True,
           "Fraction of halted samples whose every token is correct."),
    Metric("train/q_halt_accuracy", "higher", "fraction", "accuracy", True,
           "Fraction of halted samples where (q_halt > 0) agrees with exact correctness."),
    Metric("train/steps", None, "ACT steps", "count", True, "Mean ACT steps taken by the halted samples."),
    Metric("train/lr", None, "lr", "schedule", False,
           "Base learning rate at this step (encoder groups use lr × train.encoder_lr_scale)."),
    Metric("grad/total_norm", None, "grad norm", "norm", False,
           "Global gradient norm BEFORE clipping (so it can exceed train.grad_clip)."),
    Metric("grad/encoder_norm", None, "grad norm", "norm", False,
           "Gradient norm of the encoder parameters, before clipping."),
    Metric("grad/decoder_norm", None, "grad norm", "norm", False,
           "Gradient norm of the decoder parameters, before clipping (0 when frozen)."),
    # Gradient explosions over the whole log window, not only at the log step (etrm.diagnostics.GradSpikes).
    Metric("grad/max_norm", None, "grad norm", "norm", False,
           "Largest global gradient norm (before clipping) of any step in the log window."),
    Metric("grad/clipped_steps", None, "steps", "count", False,
           "Steps in the log window whose gradient norm exceeded train.grad_clip (and were clipped)."),
    Metric("grad/spike_steps", "lower", "steps", "count", False,
           f"Steps in the log window whose gradient norm (before clipping) exceeded {SPIKE_FACTOR:g}× the median norm "
           f"of the previous {SPIKE_MEDIAN_WINDOW} steps (counted once {SPIKE_MIN_HISTORY} steps are known)."),
    # Encoder diagnostics on the context c (B, T, D) of the current batch at the log step.
    Metric("encoder_output_mean", None, "scale", "level", False, "Mean of the context tokens' entries."),
    Metric("encoder_output_std", None, "scale", "spread", False, "Std of the context tokens' entries."),
    Metric("encoder_output_norm", None, "scale", "norm", False, "Mean L2 norm of a context token."),
    Metric("encoder_output_scale", None, "scale", "norm", False,
           "RMS of the context per sample, mean over the batch: the scale the raw statistics carry (1 with the "
           "final norm; a pre-norm set encoder without it, and hybrid_variational's unnormalised output, drift)."),
    Metric("encoder_cross_sample_var", None, "scale²", "variance", False,
           "Variance across the batch, averaged over T and D (the research's). Raw: it moves with scale², so it "
           "falls with the final norm by construction; compare encoder_cross_sample_var_rel."),
    Metric("encoder_cross_sample_var_rel", None, "1", "variance", False,
           "encoder_cross_sample_var / mean square of the context: the share of the context's energy that differs "
           "between samples (0 = every sample gets the same context, 1 = nothing shared). Scale-free: the "
           "comparison's 'variance'."),
    Metric("encoder_cross_sample_cosine", None, "1", "similarity", False,
           "Mean cosine similarity between two samples' whole contexts (T×D flattened), over all pairs in the batch "
           "(1 = collapse: every sample points the same way). Scale-free."),
    Metric("encoder_token_std", None, "scale", "spread", False,
           "Std across the batch, averaged over T and D (the research's context.std(dim=0)). Raw: moves with scale."),
    Metric("encoder_token_spread", None, "scale", "spread", False,
           "Std across a sample's T context tokens, averaged over samples and D (0 = the T tokens are identical). "
           "Raw: moves with scale."),
    Metric("encoder_token_spread_rel", None, "1", "spread", False,
           "Per sample, the spread across its T tokens over its RMS (sqrt of variance over T / mean square), mean "
           "over the batch (0 = the T tokens collapsed to one). Scale-free."),
    # Evaluation on held-out puzzles (voting over augmented variants, full halt_max_steps).
    Metric("eval/accuracy", "higher", "fraction", "accuracy", False,
           "Token accuracy over every eval row (all augmented variants, before voting), PAD ignored."),
    Metric("eval/exact_accuracy", "higher", "fraction", "accuracy", False,
           "Fraction of eval rows (all augmented variants, before voting) solved exactly."),
    Metric("ARC/pass@1", "higher", "fraction", "accuracy", False,
           "Mean over the puzzles evaluated of the fraction of test pairs whose top voted answer is right."),
    Metric("ARC/pass@2", "higher", "fraction", "accuracy", False, "As pass@1, with the right answer among the top 2 voted."),
    Metric("ARC/pass@5", "higher", "fraction", "accuracy", False, "As pass@1, with the right answer among the top 5 voted."),
    Metric("perf/samples_per_s", "higher", "rows/s", "rate", False,
           "Training batch rows processed per second over the log window (eval excluded)."),
    Metric("diverged_at_step", None, "step", "step", False,
           "Step at which the training loss became NaN/Inf (logged only for diverged trials)."),
]
METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}


def metric(name: str) -> Metric | None:
    """The table's entry for `name`, or None for a name the trainer does not log."""
    return METRICS.get(name)


def direction(name: str) -> int:
    """+1 higher is better, -1 lower is better, 0 neither or not a known metric."""
    m = METRICS.get(name)
    return m.direction if m else 0


def is_fraction(name: str) -> bool:
    """Shown in %, its differences in percentage points."""
    m = METRICS.get(name)
    return m is not None and m.unit == "fraction"


def is_variance(name: str) -> bool:
    """A variance: the comparison also reports the ratio of standard deviations it implies."""
    m = METRICS.get(name)
    return m is not None and m.kind == "variance"
