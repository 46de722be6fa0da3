"""Encoder tiles of a large image: the grid of one pyramid level, tile choice and the inner-edge test.

A plane whose long side is above :data:`~napari_focsam.core.images._volume` 's tiling threshold is
not squeezed onto the encoder's 1024 x 1024 canvas; it is covered by tiles of ``tile_size`` x
``tile_size`` pixels of one pyramid level, each fed to the encoder 1:1 (no resizing) and each with
its own embedding. Neighbouring tiles overlap by ``halo`` pixels.

Why these numbers (defaults ``tile_size=1024``, ``halo=256``):

- 1024 is the encoder's input size: a tile is encoded at its own pixel size, so a nucleus of 40
  pixels stays 40 pixels (2.5 embedding tokens of 16 pixels) as in SAM's training images, instead of
  shrinking to 4 pixels on a squeezed 8k x 10k canvas.
- With a stride of ``tile_size - halo`` any interval of length <= ``halo`` lies wholly inside at
  least one tile (take the last tile starting at or before it: the interval ends before that tile's
  start + stride + halo = its end). So any object up to 256 level pixels across fits in one tile,
  and any click is at least ``halo / 2`` = 128 pixels away from the inner edges of the best tile
  for it. Larger objects go to a coarser level (2x, 4x, ...) where they are again small.
- The overlap costs (1024 / 768)^2 = 1.78x the tiles of a cut without overlap when a whole plane
  is precomputed; interactively only the tiles under the clicks are encoded.

Coordinates in this module are pixels of the grid's level, windows half-open ``(y0, y1, x0, x1)``.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

__all__ = [
    "DEFAULT_HALO",
    "DEFAULT_TILE_SIZE",
    "EDGE_MARGIN",
    "MAX_TILE_SIZE",
    "MIN_TILE_SIZE",
    "TileGrid",
    "TileKey",
    "check_tiling",
]

#: Tile side in level pixels (the encoder's input size: tiles are encoded 1:1).
DEFAULT_TILE_SIZE = 1024
#: Overlap of neighbouring tiles: objects up to this size lie wholly in one tile.
DEFAULT_HALO = 256
#: Accepted tile sizes (multiples of 16, the encoder's token size).
MIN_TILE_SIZE = 256
MAX_TILE_SIZE = 4096
#: A mask whose bounding box comes within this many level pixels of an inner tile edge (an edge
#: that is not the image border) "touches" it: half an embedding token (16 px), the precision of
#: the decoder's 256 x 256 logits upsampled 4x.
EDGE_MARGIN = 8


class TileKey(NamedTuple):
    """One tile: pyramid ``level`` (0 = full resolution), row ``iy`` and column ``ix`` of its grid."""

    level: int
    iy: int
    ix: int


def check_tiling(tile_size: int, halo: int) -> tuple[int, int]:
    """``(tile_size, halo)`` as ints, or ValueError naming the valid range.

    tile_size: a multiple of 16 within [256, 4096] (the encoder's canvas is 1024: larger tiles are
    shrunk to fit it, so only sizes <= 1024 keep the pixels 1:1); halo: 0 <= halo < tile_size / 2.
    """
    t, h = as_int(tile_size, "tile_size"), as_int(halo, "halo")
    if not MIN_TILE_SIZE <= t <= MAX_TILE_SIZE or t % 16:
        raise ValueError(f"tile_size {tile_size} makes no sense: use a multiple of 16 within "
                         f"[{MIN_TILE_SIZE}, {MAX_TILE_SIZE}] (default {DEFAULT_TILE_SIZE})")
    if not 0 <= h < t / 2:
        raise ValueError(f"halo {halo} makes no sense for tile_size {t}: use 0 <= halo < {t // 2} "
                         f"(default {DEFAULT_HALO})")
    return t, h


def as_int(value, name: str) -> int:
    """``value`` as an int (ints and integral floats), else ValueError."""
    try:
        if isinstance(value, (bool, str, bytes)) or float(value) != int(value):
            raise TypeError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def axis_starts(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the tiles along an axis of ``n`` pixels (the last one clamped to the end)."""
    if n <= tile:
        return [0]
    count = math.ceil((n - tile) / stride) + 1
    return [min(i * stride, n - tile) for i in range(count)]


class TileGrid:
    """Overlapping tiles over one level of a plane.

    Parameters
    ----------
    plane_shape : (H, W)
        The plane's size at this level, in level pixels.
    tile_size : int
        Tile side (default 1024); a plane side shorter than it gives one tile of that side.
    halo : int
        Overlap of neighbouring tiles (default 256); stride = ``tile_size - halo``.
    level : int
        The pyramid level the grid belongs to (stored in its :class:`TileKey` s).

    Raises
    ------
    ValueError
        For a tile size or halo that makes no sense (see :func:`check_tiling`) or an empty plane.
    """

    def __init__(self, plane_shape: Sequence[int], tile_size: int = DEFAULT_TILE_SIZE,
                 halo: int = DEFAULT_HALO, level: int = 0) -> None:
        self.tile_size, self.halo = check_tiling(tile_size, halo)
        H, W = (int(s) for s in plane_shape)
        if H < 1 or W < 1:
            raise ValueError(f"a tile grid needs a non-empty plane, got {tuple(plane_shape)}")
        self.shape = (H, W)
        self.level = int(level)
        self.stride = self.tile_size - self.halo
        self.y_starts = axis_starts(H, self.tile_size, self.stride)
        self.x_starts = axis_starts(W, self.tile_size, self.stride)

    def __repr__(self) -> str:
        return (f"TileGrid(level={self.level}, shape={self.shape}, tile={self.tile_size}, halo={self.halo}, "
                f"tiles={self.n_rows}x{self.n_cols})")

    @property
    def n_rows(self) -> int:
        return len(self.y_starts)

    @property
    def n_cols(self) -> int:
        return len(self.x_starts)

    @property
    def n_tiles(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def single(self) -> bool:
        """True when one tile covers the whole plane."""
        return self.n_tiles == 1

    def keys(self) -> list[TileKey]:
        """All tiles, row by row."""
        return [TileKey(self.level, iy, ix) for iy in range(self.n_rows) for ix in range(self.n_cols)]

    def index(self, key: TileKey) -> int:
        """Position of ``key`` in :meth:`keys`."""
        self.check_key(key)
        return key.iy * self.n_cols + key.ix

    def check_key(self, key: TileKey) -> TileKey:
        if (not isinstance(key, tuple) or len(key) != 3 or key[0] != self.level
                or not (0 <= key[1] < self.n_rows and 0 <= key[2] < self.n_cols)):
            raise ValueError(f"{key!r} is not a tile of level {self.level} ({self.n_rows} x {self.n_cols} tiles)")
        return TileKey(*key)

    def window(self, key: TileKey) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``key`` in level pixels (half-open)."""
        key = self.check_key(key)
        H, W = self.shape
        y0, x0 = self.y_starts[key.iy], self.x_starts[key.ix]
        return y0, min(y0 + self.tile_size, H), x0, min(x0 + self.tile_size, W)

    # -- geometry
    def edge_distances(self, key: TileKey, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Distances from ``box`` (y0, y1, x0, x1) to the top, bottom, left and right edges of the
        tile; ``inf`` for an edge on the image border (an object may touch it). Negative when the
        box crosses that edge."""
        ty0, ty1, tx0, tx1 = self.window(key)
        y0, y1, x0, x1 = (float(v) for v in box)
        H, W = self.shape
        inf = math.inf
        return (y0 - ty0 if ty0 > 0 else inf, ty1 - y1 if ty1 < H else inf,
                x0 - tx0 if tx0 > 0 else inf, tx1 - x1 if tx1 < W else inf)

    def inner_margin(self, key: TileKey, box: Sequence[float]) -> float:
        """Smallest distance from ``box`` to an inner edge of tile ``key`` (``inf``: none; negative:
        the box sticks out of the tile through an inner edge)."""
        ty0, ty1, tx0, tx1 = self.window(key)
        y0, y1, x0, x1 = box
        if y0 < ty0 or y1 > ty1 or x0 < tx0 or x1 > tx1:  # out through a border is also out
            d = min(y0 - ty0, ty1 - y1, x0 - tx0, tx1 - x1)
            return min(float(d), min(self.edge_distances(key, box)))
        return min(self.edge_distances(key, box))

    def contains(self, key: TileKey, box: Sequence[float]) -> bool:
        """Whether ``box`` (y0, y1, x0, x1) lies wholly inside tile ``key``."""
        ty0, ty1, tx0, tx1 = self.window(key)
        y0, y1, x0, x1 = box
        return ty0 <= y0 and y1 <= ty1 and tx0 <= x0 and x1 <= tx1

    def touches_inner_edge(self, key: TileKey, mask_bbox: Sequence[float], margin: float = EDGE_MARGIN) -> bool:
        """Whether a mask with bounding box ``mask_bbox`` (y0, y1, x0, x1; in level pixels, half-open)
        reaches within ``margin`` pixels of an edge of tile ``key`` that is not the image border,
        i.e. whether the object may continue beyond the tile."""
        return self.inner_margin(key, mask_bbox) < margin

    def overlapping(self, box: Sequence[float]) -> list[TileKey]:
        """Tiles that intersect ``box`` (y0, y1, x0, x1), row by row."""
        y0, y1, x0, x1 = box
        out = []
        for iy, ty0 in enumerate(self.y_starts):
            if ty0 >= y1 or ty0 + self.tile_size <= y0:
                continue
            for ix, tx0 in enumerate(self.x_starts):
                if tx0 < x1 and tx0 + self.tile_size > x0:
                    out.append(TileKey(self.level, iy, ix))
        return out

    def tiles_for_box(self, box: Sequence[float]) -> list[TileKey]:
        """Tiles that wholly contain ``box`` (y0, y1, x0, x1), best first (largest distance from the
        box to an inner edge); empty when no tile holds it."""
        cands = [k for k in self.overlapping(box) if self.contains(k, box)]
        return sorted(cands, key=lambda k: (-self.inner_margin(k, box), k))

    def tile_for_points(self, points: Iterable[Sequence[float]]) -> TileKey | None:
        """The tile that holds all ``points`` ((y, x) pairs, level pixels) best: the one where they
        are farthest from an inner edge; None when no single tile holds them all."""
        pts = [(float(p[0]), float(p[1])) for p in points]
        if not pts:
            raise ValueError("tile_for_points needs at least one point")
        ys = [p[0] for p in pts]
        xs = [p[1] for p in pts]
        # a point is the pixel [y, y + 1): the box of pixels the points fall on
        box = (math.floor(min(ys)), math.floor(max(ys)) + 1, math.floor(min(xs)), math.floor(max(xs)) + 1)
        box = (max(0, box[0]), min(self.shape[0], box[1]), max(0, box[2]), min(self.shape[1], box[3]))
        best = self.tiles_for_box(box)
        return best[0] if best else None
