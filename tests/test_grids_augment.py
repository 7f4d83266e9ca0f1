"""Tokenisation and augmentation: exact round trips on every grid shape, and the group table."""

import itertools

import numpy as np
import pytest

from etrm.augment import DIHEDRAL_INVERSE, Augmentation, dihedral
from etrm.grids import EOS, PAD, crop_sizes, decode_grid, decode_grids, encode_grid

G = 7


def all_shapes():
    return list(itertools.product(range(1, G + 1), repeat=2))


def test_encode_layout_matches_reference():
    grid = np.array([[0, 9, 3], [5, 0, 1]])
    t = encode_grid(grid, 4).reshape(4, 4)
    assert t.dtype == np.int64
    assert (t[:2, :3] == grid + 2).all()
    assert (t[2, :3] == EOS).all() and (t[:2, 3] == EOS).all()
    assert t[2, 3] == PAD and (t[3] == PAD).all()  # corner stays PAD, PAD elsewhere
    full = encode_grid(np.ones((4, 4), dtype=np.int64), 4)  # no room for EOS
    assert (full == 3).all()
    with pytest.raises(ValueError):
        encode_grid(np.zeros((5, 2), dtype=np.int64), 4)


@pytest.mark.parametrize("h,w", all_shapes())
def test_encode_decode_round_trip_every_shape(h, w):
    rng = np.random.default_rng(h * 100 + w)
    grid = rng.integers(0, 10, size=(h, w))
    tokens = encode_grid(grid, G)
    assert tokens.shape == (G * G,)
    out = decode_grid(tokens, G)
    assert out.shape == (h, w) and (out == grid).all()


def test_batched_crop_takes_largest_top_left_rectangle():
    tokens = np.stack([encode_grid(np.ones((h, w), dtype=np.int64), G) for h, w in all_shapes()])
    heights, widths = crop_sizes(tokens, G)
    assert list(zip(heights, widths)) == all_shapes()
    # a ragged prediction: rows of width 5, 5, 2 -> 2x5 (area 10) beats 3x2 (area 6)
    t = np.full((G, G), PAD)
    t[:2, :5] = 4
    t[2, :2] = 4
    assert decode_grid(t.reshape(-1), G).shape == (2, 5)
    garbage = np.full((1, G * G), EOS)
    assert decode_grids(garbage, G)[0].size == 0


@pytest.mark.parametrize("h,w", all_shapes())
def test_augmentation_inverts_on_every_shape(h, w):
    rng = np.random.default_rng(h * 31 + w)
    grid = rng.integers(0, 10, size=(h, w))
    for k in range(8):
        aug = Augmentation.random(rng, dihedral=k)
        out = aug.apply(grid)
        assert out.shape == ((w, h) if k in (1, 3, 6, 7) else (h, w))
        assert (aug.invert(out) == grid).all()
        assert ((out == 0) == (dihedral(grid, k) == 0)).all()  # colour 0 stays 0


def test_dihedral_group_table():
    g = np.arange(12).reshape(3, 4)
    same = lambda a, b: a.shape == b.shape and (a == b).all()  # noqa: E731
    assert same(dihedral(dihedral(g, 1), 1), dihedral(g, 2))  # rot90 ∘ rot90 = rot180
    assert same(dihedral(dihedral(g, 1), 2), dihedral(g, 3))  # rot90 ∘ rot180 = rot270
    assert same(dihedral(dihedral(g, 3), 1), g)  # rot270 undoes rot90
    assert same(dihedral(dihedral(g, 6), 2), dihedral(g, 7))  # rot180 ∘ transpose = anti-transpose
    assert same(dihedral(dihedral(g, 4), 5), dihedral(g, 2))  # flip ud ∘ flip lr = rot180
    assert same(dihedral(g, 1), np.array([[3, 7, 11], [2, 6, 10], [1, 5, 9], [0, 4, 8]]))  # counter-clockwise
    assert same(dihedral(g, 7), np.array([[11, 7, 3], [10, 6, 2], [9, 5, 1], [8, 4, 0]]))
    images = {dihedral(g, k).tobytes() + bytes(dihedral(g, k).shape) for k in range(8)}
    assert len(images) == 8  # eight distinct elements
    for k in range(8):
        assert same(dihedral(dihedral(g, k), DIHEDRAL_INVERSE[k]), g)
    assert DIHEDRAL_INVERSE[1] == 3 and DIHEDRAL_INVERSE[3] == 1


def test_colour_permutation_fixes_zero_and_maps_tokens():
    rng = np.random.default_rng(0)
    for _ in range(20):
        aug = Augmentation.random(rng)
        assert aug.colours[0] == 0 and sorted(aug.colours) == list(range(10))
        grid = rng.integers(0, 10, size=(3, 5))
        lut = aug.token_map()
        assert (lut[encode_grid(grid, G)] == encode_grid(np.asarray(aug.colours)[grid], G)).all()
    with pytest.raises(ValueError):
        Augmentation(0, (1, 0, 2, 3, 4, 5, 6, 7, 8, 9))
    assert Augmentation.identity().apply(np.eye(3, dtype=np.int64)).tolist() == np.eye(3).tolist()
