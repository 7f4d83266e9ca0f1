"""Grids <-> token sequences (reference §2).

Vocabulary of 12: 0 = PAD, 1 = EOS, colour c -> token c + 2. A h×w grid sits in the
top-left of a G×G canvas, flattened row-major; an EOS row lies directly below it and
an EOS column directly right of it (where they fit), so the model can mark the size of
the grid it predicts. The corner cell stays PAD.
"""

import numpy as np

PAD, EOS = 0, 1
COLOUR_OFFSET = 2
VOCAB_SIZE = 12


def encode_grid(grid: np.ndarray, G: int) -> np.ndarray:
    """A colour grid (h, w) with h, w <= G -> int64 tokens (G*G,)."""
    h, w = grid.shape
    if h > G or w > G:
        raise ValueError(f"grid of {h}x{w} does not fit in {G}x{G}")
    out = np.full((G, G), PAD, dtype=np.int64)
    out[:h, :w] = grid + COLOUR_OFFSET
    out[h:h + 1, :w] = EOS  # empty slice when h == G
    out[:h, w:w + 1] = EOS
    return out.reshape(-1)


def crop_sizes(tokens: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, G*G) tokens -> heights, widths (N,) of the largest top-left all-colour rectangle.

    Same rule as TRM's evaluator crop: scan rows, the width is the shortest colour run
    from column 0 so far, keep the first (rows × width) maximum.
    """
    valid = (tokens >= COLOUR_OFFSET) & (tokens < VOCAB_SIZE)
    runs = np.cumprod(valid.reshape(-1, G, G), axis=2).sum(axis=2)  # colour run per row
    widths = np.minimum.accumulate(runs, axis=1)
    area = widths * np.arange(1, G + 1)
    best = area.argmax(axis=1)  # first maximum
    rows = np.arange(len(tokens))
    heights = np.where(area[rows, best] > 0, best + 1, 0)
    return heights, widths[rows, best]


def decode_grids(tokens: np.ndarray, G: int) -> list[np.ndarray]:
    """(N, G*G) predicted tokens -> N cropped colour grids (possibly 0×0)."""
    tokens = np.asarray(tokens)
    heights, widths = crop_sizes(tokens, G)
    grids = tokens.reshape(-1, G, G) - COLOUR_OFFSET
    return [grids[i, :h, :w].astype(np.int64) for i, (h, w) in enumerate(zip(heights, widths))]


def decode_grid(tokens: np.ndarray, G: int) -> np.ndarray:
    """(G*G,) predicted tokens -> the cropped colour grid."""
    return decode_grids(np.asarray(tokens).reshape(1, -1), G)[0]
