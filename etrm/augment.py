"""Dihedral × colour-permutation augmentation (reference §7).

One Augmentation is applied with the same map to every demo and query of a puzzle, so
the puzzle's rule is transformed consistently; predictions made on an augmented puzzle
are mapped back with `invert` before voting.
"""

from dataclasses import dataclass

import numpy as np

from etrm.grids import COLOUR_OFFSET, EOS, PAD

# 0 identity, 1 rot90 (counter-clockwise), 2 rot180, 3 rot270, 4 flip left-right,
# 5 flip up-down, 6 transpose, 7 anti-transpose (reflection in the anti-diagonal).
_DIHEDRAL = (
    lambda g: g,
    lambda g: np.rot90(g, 1),
    lambda g: np.rot90(g, 2),
    lambda g: np.rot90(g, 3),
    np.fliplr,
    np.flipud,
    np.transpose,
    lambda g: np.rot90(g, 2).T,
)
DIHEDRAL_NAMES = ("identity", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti_transpose")
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Element k of the dihedral group applied to a 2-D grid (a fresh contiguous array)."""
    return np.ascontiguousarray(_DIHEDRAL[k](grid))


@dataclass(frozen=True)
class Augmentation:
    dihedral: int  # 0..7, see DIHEDRAL_NAMES
    colours: tuple[int, ...]  # colour c -> colours[c]; a permutation of 0..9 with colours[0] == 0

    def __post_init__(self):
        if not 0 <= self.dihedral < 8:
            raise ValueError(f"dihedral must be 0..7, got {self.dihedral}")
        if sorted(self.colours) != list(range(10)) or self.colours[0] != 0:
            raise ValueError(f"colours must permute 1..9 and keep 0 fixed, got {self.colours}")

    @classmethod
    def identity(cls) -> "Augmentation":
        return cls(0, tuple(range(10)))

    @classmethod
    def random(cls, rng: np.random.Generator, dihedral: int | None = None) -> "Augmentation":
        """A uniform dihedral (unless given) and a uniform permutation of colours 1..9."""
        k = int(rng.integers(8)) if dihedral is None else dihedral
        return cls(k, (0, *(int(c) for c in rng.permutation(9) + 1)))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return dihedral(np.asarray(self.colours)[grid], self.dihedral)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        back = np.argsort(self.colours)  # inverse permutation
        return back[dihedral(grid, DIHEDRAL_INVERSE[self.dihedral])]

    def token_map(self) -> np.ndarray:
        """The colour permutation as a lookup table on tokens (PAD and EOS fixed)."""
        return np.array([PAD, EOS, *(c + COLOUR_OFFSET for c in self.colours)], dtype=np.int64)
