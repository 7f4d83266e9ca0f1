"""Evaluation: run every augmented variant, undo the augmentation, vote, score pass@k (reference §8).

Voting is pure and rebuilt at every call (no state survives between evaluations). The ARC
score is the mean over the puzzles actually evaluated, each puzzle scoring the mean over
its test pairs (the research code divided by 400 whatever was evaluated).
"""

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from etrm.data import EvalRow, EvalSet
from etrm.grids import PAD, decode_grids

PASS_AT = (1, 2, 5)


@dataclass
class Candidate:
    grid: np.ndarray
    votes: int
    confidence: float  # mean sigmoid(q_halt) of the predictions that voted for it


def _key(grid: np.ndarray) -> tuple:
    return grid.shape, grid.astype(np.int64).tobytes()


def vote(predictions: list[tuple[np.ndarray, float]]) -> list[Candidate]:
    """(grid, q_halt logit) predictions for one test pair -> candidates, best first:
    most votes, ties broken by the higher mean sigmoid(q_halt)."""
    groups: dict[tuple, list] = {}
    for grid, q in predictions:
        groups.setdefault(_key(grid), [grid, []])[1].append(1.0 / (1.0 + math.exp(-q)))
    cands = [Candidate(g, len(qs), sum(qs) / len(qs)) for g, qs in groups.values()]
    return sorted(cands, key=lambda c: (-c.votes, -c.confidence))


def passed(candidates: list[Candidate], label: np.ndarray, k: int) -> bool:
    """Is the label among the top k candidates?"""
    return any(c.grid.shape == label.shape and (c.grid == label).all() for c in candidates[:k])


def arc_scores(predictions: dict[tuple[int, int], list[tuple[np.ndarray, float]]],
               labels: dict[tuple[int, int], np.ndarray], ks=PASS_AT) -> dict[str, float]:
    """predictions[(puzzle, test)] = [(grid in the original frame, q_halt)] -> {ARC/pass@k}.

    A puzzle scores the mean over its test pairs; the result is the mean over the puzzles
    that appear in `predictions`."""
    per_puzzle: dict[int, list] = defaultdict(list)
    for (p, t), preds in predictions.items():
        ranked = vote(preds)
        per_puzzle[p].append([passed(ranked, labels[(p, t)], k) for k in ks])
    if not per_puzzle:
        return {f"ARC/pass@{k}": 0.0 for k in ks}
    scores = np.mean([np.mean(tests, axis=0) for tests in per_puzzle.values()], axis=0)
    return {f"ARC/pass@{k}": float(s) for k, s in zip(ks, scores)}


def record(predictions: dict, rows: list[EvalRow], tokens: np.ndarray, q_halt: list[float], grid_size: int) -> None:
    """Crop each row's predicted tokens, map the grid back to the puzzle's original frame
    (undo the row's augmentation) and file it under its (puzzle, test pair)."""
    for row, grid, q in zip(rows, decode_grids(tokens, grid_size), q_halt):
        predictions[(row.puzzle_idx, row.test_idx)].append((row.aug.invert(grid), q))


def evaluate(model: torch.nn.Module, eval_set: EvalSet, device: torch.device | str,
             autocast_dtype: torch.dtype | None = None, *, halt_max_steps: int) -> dict[str, float]:
    """Run the model for halt_max_steps ACT steps on every eval row and score it.

    eval/accuracy and eval/exact_accuracy are over all rows (every augmented variant), on
    non-PAD label tokens, like the train metrics; ARC/pass@k vote over the variants."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    predictions: dict[tuple[int, int], list] = defaultdict(list)
    correct = counted = exact = rows_seen = 0
    try:
        with torch.inference_mode(), autocast:
            for batch, rows in eval_set:
                batch = {k: v.to(device) for k, v in batch.items()}
                carry = model.initial_carry(batch)
                for _ in range(halt_max_steps):
                    carry, out = model(carry, batch)
                pred = out.logits.argmax(-1)
                labels = carry.data["labels"]  # the rows the logits belong to (all loaded at step 1)
                mask = labels != PAD
                hits = (pred == labels) & mask
                correct += int(hits.sum())
                counted += int(mask.sum())
                exact += int((hits.sum(-1) == mask.sum(-1)).sum())
                rows_seen += len(rows)
                record(predictions, rows, pred.cpu().numpy(), out.q_halt.float().cpu().tolist(), eval_set.grid_size)
    finally:
        model.train(was_training)
    labels = {(p, t): eval_set.puzzles[p].test[t][1] for p, t in predictions}
    return {
        "eval/accuracy": correct / max(counted, 1),
        "eval/exact_accuracy": exact / max(rows_seen, 1),
        **arc_scores(predictions, labels),
    }
