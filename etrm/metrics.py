"""Metric names: the one place they are documented.

Names follow the research code (etrm-reference.md §9) so runs can be compared with
TRM/ETRM logs. This module is plain data, so the sweep driver, the spec checker and
the docs read it without loading torch; etrm.diagnostics computes the tensors.
"""

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
