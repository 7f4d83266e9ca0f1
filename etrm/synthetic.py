"""Seeded ARC-like synthetic puzzles from six rule families.

A *rule instance* is a family plus its parameters (e.g. colour_map {3->5, 7->1}); a
puzzle is one rule instance with its own random input grids: `num_demos` demo pairs and
one test pair. Everything is a function of the seed.

Held-out puzzles. Every family has a list of partition *keys*; a seeded choice puts a
quarter of them (at least one) in the eval split, the rest in train, so eval puzzles use
rule instances never used by a training puzzle:
  colour_map       key = the set of changed colours (1..3 of 1..9; 129 keys)
  translate        key = the shift (dy, dx) in [-2, 2]² minus (0, 0) (24 keys), cyclic (wrap)
  fill             key = the fill colour (9 keys); the mode (enclosed | bbox) is drawn freely
  recolour_object  key = the new colour (9 keys); which object (largest | smallest) drawn freely
  dihedral         7 instances and gravity 4 instances are too few to hold out and still
                   learn: both splits use every instance, and "new" means a new puzzle with
                   new grids whose rule must still be identified from its demos.
Training augmentation conjugates rules (a rotated translate is another translate, a colour-
permuted fill another fill colour), so with `data.augment` the model can meet held-out
parameters in augmented form; the held-out split is on raw parameters, as in ARC.
"""

from itertools import combinations

import numpy as np
from scipy import ndimage

from etrm.augment import DIHEDRAL_INVERSE, dihedral

MIN_GRID = 3  # smallest synthetic grid side; grids are at most G-1 so the EOS row/column fits
EVAL_FRACTION = 0.25


class Family:
    """A rule family: partition keys, instance sampling, input generator and the rule itself."""

    name: str
    shared = False  # True: train and eval share every instance (too few to hold out)
    density = 0.5  # fraction of non-background cells in noise inputs

    def keys(self) -> list:
        raise NotImplementedError

    def instance(self, rng: np.random.Generator, key) -> tuple:
        """Full parameters of a rule instance with partition key `key`."""
        return key

    def palette(self, rng: np.random.Generator, params) -> list[int]:
        """The 1-3 foreground colours of one puzzle (ARC puzzles use few colours)."""
        colours = [c for c in range(1, 10) if c not in self.reserved(params)]
        return list(rng.choice(colours, size=int(rng.integers(1, 4)), replace=False))

    def reserved(self, params) -> set[int]:
        return set()

    def make_input(self, rng, h: int, w: int, params, palette) -> np.ndarray:
        grid = rng.choice(palette, size=(h, w))
        return np.where(rng.random((h, w)) < self.density, grid, 0)

    def apply(self, grid: np.ndarray, params) -> np.ndarray:
        raise NotImplementedError

    def describe(self, params) -> str:
        return f"{self.name}{params}"


class Dihedral(Family):
    name, shared = "dihedral", True

    def keys(self):
        return list(range(1, 8))  # the 7 non-identity elements

    def apply(self, grid, k):
        return dihedral(grid, k)


class ColourMap(Family):
    """1-3 colours are replaced by other colours (a partial, possibly non-injective map)."""

    name, density = "colour_map", 0.6

    def keys(self):
        return [s for k in (1, 2, 3) for s in combinations(range(1, 10), k)]

    def instance(self, rng, sources):
        mapping = list(range(10))
        for s in sources:
            mapping[s] = int(rng.choice([c for c in range(1, 10) if c != s]))
        return tuple(mapping)

    def palette(self, rng, mapping):
        sources = [c for c in range(10) if mapping[c] != c]
        others = [c for c in range(1, 10) if c not in sources]
        return sources + list(rng.choice(others, size=int(rng.integers(0, 3)), replace=False))

    def apply(self, grid, mapping):
        return np.asarray(mapping)[grid]

    def describe(self, mapping):
        return "colour_map{" + ",".join(f"{c}->{m}" for c, m in enumerate(mapping) if c != m) + "}"


class Translate(Family):
    """Cyclic shift by a fixed (dy, dx) within the grid (wrap, so nothing is lost)."""

    name, density = "translate", 0.3

    def keys(self):
        return [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]

    def apply(self, grid, shift):
        return np.roll(grid, shift, axis=(0, 1))


class Gravity(Family):
    """Every coloured cell falls (keeping order) to one side: 0 down, 1 up, 2 right, 3 left."""

    name, shared, density = "gravity", True, 0.3
    _TO_DOWN = (0, 5, 3, 1)  # dihedral element that turns direction d into "down"

    def keys(self):
        return [0, 1, 2, 3]

    def apply(self, grid, direction):
        k = self._TO_DOWN[direction]
        g = dihedral(grid, k)
        out = np.zeros_like(g)
        for j in range(g.shape[1]):
            cells = g[:, j][g[:, j] != 0]
            out[g.shape[0] - len(cells):, j] = cells
        return dihedral(out, DIHEDRAL_INVERSE[k])  # undo the turn


class ModeAndColour(Family):
    """A family whose held-out key is a target colour (1..9) and whose mode is drawn freely."""

    modes: tuple[str, str]

    def keys(self):
        return list(range(1, 10))

    def instance(self, rng, colour):
        return (str(rng.choice(list(self.modes))), colour)

    def reserved(self, params):
        return {params[1]}


class Fill(ModeAndColour):
    """Background cells enclosed by shapes (mode enclosed) or inside the bounding box of all
    shapes (mode bbox) become a fixed colour."""

    name = "fill"
    modes = ("enclosed", "bbox")

    def make_input(self, rng, h, w, params, palette):
        grid = np.zeros((h, w), dtype=np.int64)
        if params[0] == "bbox":
            for _ in range(int(rng.integers(2, 5))):
                grid[rng.integers(h), rng.integers(w)] = rng.choice(palette)
            return grid
        for _ in range(int(rng.integers(1, 3))):  # hollow rectangles, at least 3x3
            rh, rw = rng.integers(3, h + 1), rng.integers(3, w + 1)
            y, x = rng.integers(h - rh + 1), rng.integers(w - rw + 1)
            box = grid[y:y + rh, x:x + rw]
            c = rng.choice(palette)
            box[[0, -1], :] = c
            box[:, [0, -1]] = c
        return grid

    def apply(self, grid, params):
        mode, colour = params
        shapes = grid != 0
        if mode == "enclosed":
            inside = ndimage.binary_fill_holes(shapes) & ~shapes
        else:
            inside = np.zeros_like(shapes)
            if shapes.any():
                ys, xs = np.nonzero(shapes)
                inside[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
                inside &= ~shapes
        return np.where(inside, colour, grid)


class RecolourObject(ModeAndColour):
    """The largest (or smallest) object, a 4-connected shape, takes a fixed colour."""

    name = "recolour_object"
    modes = ("largest", "smallest")

    def make_input(self, rng, h, w, params, palette):
        grid = np.zeros((h, w), dtype=np.int64)
        for _ in range(int(rng.integers(2, 5))):  # solid rectangles kept apart by a margin
            rh, rw = rng.integers(1, h // 2 + 2), rng.integers(1, w // 2 + 2)
            y, x = rng.integers(h - rh + 1), rng.integers(w - rw + 1)
            if not grid[max(y - 1, 0):y + rh + 1, max(x - 1, 0):x + rw + 1].any():
                grid[y:y + rh, x:x + rw] = rng.choice(palette)
        return grid

    def apply(self, grid, params):
        which, colour = params
        labels, n = ndimage.label(grid != 0)
        if n < 2:
            return grid
        sizes = np.bincount(labels.ravel())[1:]
        target = sizes.max() if which == "largest" else sizes.min()
        if (sizes == target).sum() != 1:  # ambiguous: no well-defined object
            return grid
        return np.where(labels == 1 + int(np.argmax(sizes == target)), colour, grid)


FAMILIES: dict[str, Family] = {f.name: f for f in (Dihedral(), ColourMap(), Translate(), Gravity(), Fill(), RecolourObject())}


def split_keys(family: Family, seed: int) -> dict[str, list]:
    """The seeded train/eval partition of a family's keys (both get all keys if shared)."""
    keys = family.keys()
    if family.shared:
        return {"train": keys, "eval": keys}
    rng = np.random.default_rng([seed, list(FAMILIES).index(family.name), 7])
    n_eval = min(len(keys) - 1, max(1, round(EVAL_FRACTION * len(keys))))
    held = set(rng.choice(len(keys), size=n_eval, replace=False).tolist())
    return {"train": [k for i, k in enumerate(keys) if i not in held], "eval": [k for i, k in enumerate(keys) if i in held]}


def _random_pair(family, rng, params, palette, grid_size, max_tries=200):
    """One (input, output) pair whose output fits and differs from the input (so the rule shows)."""
    hi = grid_size - 1
    lo = min(MIN_GRID, hi)
    for _ in range(max_tries):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        x = family.make_input(rng, h, w, params, palette).astype(np.int64)
        y = family.apply(x, params).astype(np.int64)
        if max(y.shape) <= hi and (y.shape != x.shape or (y != x).any()):
            return x, y
    raise ValueError(f"could not make a {family.name} pair with grid_size {grid_size}; use grid_size >= 4")


def make_puzzle(family: Family, rng: np.random.Generator, key, num_demos: int, grid_size: int):
    """(rule description, demo pairs, [test pair]) for a new instance with partition key `key`.

    The test input only uses colours seen in demo inputs, so the rule is identifiable."""
    params = family.instance(rng, key)
    palette = family.palette(rng, params)
    demos = [_random_pair(family, rng, params, palette, grid_size) for _ in range(num_demos)]
    seen = set(np.unique(np.concatenate([x.ravel() for x, _ in demos])).tolist())
    for _ in range(200):
        test = _random_pair(family, rng, params, palette, grid_size)
        if set(np.unique(test[0]).tolist()) <= seen:
            return family.describe(params), demos, [test]
    raise ValueError(f"could not make a {family.name} test pair from the demos' colours")


def generate(families: list[str], num_puzzles: int, split: str, num_demos: int, grid_size: int, seed: int):
    """`num_puzzles` puzzles of the given split, families in turn: [(family, rule, demos, tests)]."""
    if grid_size < 4:
        raise ValueError(f"synthetic puzzles need grid_size >= 4, got {grid_size}")
    rng = np.random.default_rng([seed, {"train": 0, "eval": 1}[split]])
    keys = {f: split_keys(FAMILIES[f], seed)[split] for f in families}
    out = []
    for i in range(num_puzzles):
        name = families[i % len(families)]
        key = keys[name][int(rng.integers(len(keys[name])))]
        out.append((name, *make_puzzle(FAMILIES[name], rng, key, num_demos, grid_size)))
    return out
