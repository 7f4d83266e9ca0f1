"""Voting, pass@k and the evaluation loop."""

from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from etrm.augment import Augmentation
from etrm.config import DataConfig, ModelConfig
from etrm.data import EvalRow, EvalSet, load_puzzles
from etrm.evaluate import arc_scores, evaluate, passed, record, vote
from etrm.grids import VOCAB_SIZE, encode_grid

A, B, C = np.array([[1]]), np.array([[2]]), np.array([[3, 3]])


def test_vote_counts_then_breaks_ties_by_mean_sigmoid_q():
    ranked = vote([(A, 0.0), (B, 5.0), (A, -1.0), (C, 9.0), (B, -3.0)])
    # A and B have 2 votes each; B's mean sigmoid(q) (0.99 + 0.05) / 2 = 0.52 beats A's 0.38
    assert [c.votes for c in ranked] == [2, 2, 1]
    assert ranked[0].grid is B and ranked[1].grid is A and ranked[2].grid is C
    assert ranked[0].confidence == pytest.approx((1 / (1 + np.exp(-5)) + 1 / (1 + np.exp(3))) / 2)
    assert passed(ranked, B, 1) and not passed(ranked, A, 1) and passed(ranked, A, 2)
    assert passed(ranked, C, 3) and not passed(ranked, C, 2)
    assert not passed(ranked, np.array([[3], [3]]), 5)  # same values, other shape


def test_pass_at_k_denominator_is_puzzles_evaluated():
    preds = {
        (0, 0): [(A, 0.0)],  # solved
        (1, 0): [(B, 0.0), (B, 0.0), (A, 1.0)],  # solved at pass@1
        (2, 0): [(C, 1.0), (A, 0.0)],  # label second: pass@2 only
    }
    labels = {(0, 0): A, (1, 0): B, (2, 0): A}
    scores = arc_scores(preds, labels)
    assert scores["ARC/pass@1"] == pytest.approx(2 / 3)
    assert scores["ARC/pass@2"] == pytest.approx(1.0)
    # a puzzle with two test pairs, one right, scores 1/2; puzzle 5 (not evaluated) is not counted
    preds2 = {(0, 0): [(A, 0.0)], (3, 0): [(A, 0.0)], (3, 1): [(A, 0.0)]}
    labels2 = {(0, 0): A, (3, 0): A, (3, 1): B, (5, 0): A}
    assert arc_scores(preds2, labels2)["ARC/pass@1"] == pytest.approx((1 + 0.5) / 2)


def test_predictions_on_augmented_variants_vote_for_the_original():
    G, label = 6, np.array([[1, 2, 0], [0, 3, 4]])
    rng = np.random.default_rng(0)
    augs = [Augmentation.random(rng, dihedral=k) for k in (1, 4, 7)]
    rows = [EvalRow(0, 0, a) for a in augs] + [EvalRow(0, 0, Augmentation.identity())]
    wrong = np.array([[9, 9, 9]])
    tokens = np.stack([encode_grid(a.apply(label), G) for a in augs] + [encode_grid(wrong, G)])
    preds = defaultdict(list)
    record(preds, rows, tokens, [0.0, 0.0, 0.0, 8.0], G)  # the wrong identity prediction is the most confident
    ranked = vote(preds[(0, 0)])
    assert ranked[0].votes == 3 and np.array_equal(ranked[0].grid, label)
    assert arc_scores(preds, {(0, 0): label})["ARC/pass@1"] == 1.0


class Oracle(nn.Module):
    """Predicts the batch's labels exactly (in the augmented frame), with the ETRM step API."""

    def initial_carry(self, batch):
        return {"data": batch}

    def forward(self, carry, batch):
        class Out:
            logits = nn.functional.one_hot(batch["labels"], VOCAB_SIZE).float()
            q_halt = torch.zeros(len(batch["labels"]))

        carry = type("Carry", (), {"data": batch})()
        return carry, Out()


def test_evaluate_scores_a_perfect_model_and_restores_train_mode():
    cfg = DataConfig(num_train_puzzles=6, num_eval_puzzles=5, eval_variants=3)
    _, evals = load_puzzles(cfg, 0)
    model = Oracle().train()
    m = evaluate(model, EvalSet(evals, cfg, seed=0, batch_size=4), "cpu", halt_max_steps=2)
    assert model.training
    assert m["eval/accuracy"] == m["eval/exact_accuracy"] == 1.0
    assert m["ARC/pass@1"] == m["ARC/pass@2"] == 1.0


def test_evaluate_runs_the_real_model():
    from etrm.model import ETRM

    cfg = DataConfig(grid_size=6, max_demos=2, num_train_puzzles=6, num_eval_puzzles=3, eval_variants=2)
    _, evals = load_puzzles(cfg, 0)
    mcfg = ModelConfig(hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, L_layers=1, halt_max_steps=2)
    torch.manual_seed(0)
    model = ETRM(mcfg, cfg.grid_size, cfg.max_demos)
    m = evaluate(model, EvalSet(evals, cfg, seed=0, batch_size=4), "cpu", halt_max_steps=mcfg.halt_max_steps)
    assert set(m) == {"eval/accuracy", "eval/exact_accuracy", "ARC/pass@1", "ARC/pass@2", "ARC/pass@5"}
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_more_than_eight_eval_variants_repeat_dihedrals_with_new_colours():
    """The research voted over up to 1000 augmentations per puzzle: past the 8 dihedral maps,
    variants reuse them with other colour permutations, still identity first and all distinct."""
    cfg = DataConfig(num_train_puzzles=6, num_eval_puzzles=2, eval_variants=20)
    _, evals = load_puzzles(cfg, 0)
    eval_set = EvalSet(evals, cfg, seed=0, batch_size=4)
    first = [r.aug for r in eval_set.rows if r.puzzle_idx == 0 and r.test_idx == 0]
    assert len(first) == 20 and first[0] == Augmentation.identity()
    assert sorted(a.dihedral for a in first[:8]) == list(range(8))
    assert len(set(first)) == 20
