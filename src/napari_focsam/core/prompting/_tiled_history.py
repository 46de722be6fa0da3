"""One object's clicks on one slice of a tiled image, with object-adaptive scale.

:class:`TiledHistory` is the click history of one object on one slice of a large image (the
tiled counterpart of the predictor's :class:`~napari_focsam.core.prompting.InteractiveObject`, with the same
interface as far as :class:`~napari_focsam.core.session._session.SegmentedObject` uses it). Clicks and boxes are kept in
full-resolution pixels; the decoder runs on one tile of one pyramid level at a time (the
object's *placement*), with the clicks replayed in that tile's coordinates.

Object-adaptive scale, after every click (and box):

1. Placement: the object starts at level 0 in the tile that holds its clicks (and box) best,
   i.e. farthest from the tile's inner edges (at least ``halo / 2`` = 128 pixels with the default
   tiling); it keeps its tile while the clicks fit in it. A click outside the tile moves it to the
   best tile of the same level that holds all clicks, or to the first coarser level where one does.
2. When the mask reaches an inner edge of its tile (within :data:`~napari_focsam.core.images.EDGE_MARGIN` pixels of
   an edge that is not the image border), the object may continue beyond it: it moves to a tile
   of the same level that holds the mask's box with room to spare (not visited yet for this
   click), else to the next coarser level (2x, 4x, ...: the image's own pyramid levels where it
   has them), in the tile that holds the mask and the clicks best; all its clicks are replayed
   there (the refiner runs again at the refine click, on that tile).
   A mask more than ``halo`` (256) level pixels across goes to the first coarser level where it
   is at most that: there it is sure to fit in a tile, and it is decoded at the scale of the
   tiles' guarantee (measured with ``benchmarks/bench_large_images.py --zoom 4 8``: nuclei of
   200 to 800 pixels gave a mean IoU of 0.935 at the finest level that held them, 0.960 so).
3. It stops when the mask neither touches an inner edge nor is too large, or when one tile
   covers the image.

So small objects are segmented at full resolution in a tile where they are whole (never on a
shrunken whole image), and large ones at the finest level where they are at most ``halo`` pixels
across (never cut at a tile edge). The mask comes back at full resolution as a :class:`~napari_focsam.core.prompting.MaskRegion`: the
tile's logits are post-processed as a plain image's, then upsampled by the level's factor, only
around the object. Undo returns to the placement the object had before the click.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..embeddings import TiledEmbeddingStore
from ..images import EDGE_MARGIN, TileKey
from ._boxes import Box, checked_box
from ._clicks import Click
from ._predictor import FocSAMPredictor, InteractiveObject, tensor_bytes
from ._prompts import PlanePrompts
from ._regions import MaskRegion, empty_region, region_to_plane, tile_logits_values, values_bbox, values_to_region

__all__ = ["MAX_MOVES", "TileObject", "TiledHistory", "box_at_level", "next_placement"]

#: At most this many moves (same-level tiles or levels) after one click.
MAX_MOVES = 12


def box_at_level(store: TiledEmbeddingStore, bbox: Sequence[int], from_level: int, to_level: int,
                 grow: float = 0.0) -> tuple[int, int, int, int]:
    """A half-open box of ``from_level`` pixels as a box of ``to_level`` pixels, grown by ``grow``
    pixels there and clipped to that level."""
    r = store.factor(from_level) / store.factor(to_level)
    H, W = store.grid(to_level).shape
    y0, y1, x0, x1 = bbox
    return (max(0, math.floor(y0 * r - grow)), min(H, math.ceil(y1 * r + grow)),
            max(0, math.floor(x0 * r - grow)), min(W, math.ceil(x1 * r + grow)))


def union_box(a, b):
    """The box holding boxes ``a`` and ``b`` (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def next_placement(store: TiledEmbeddingStore, key: TileKey, bbox: Sequence[int],
                   need: Callable[[int], tuple[int, int, int, int] | None], visited: set,
                   max_extent: float | None = None) -> TileKey | None:
    """Where an object whose mask has level box ``bbox`` in tile ``key`` goes next; None: it stays.

    It stays when one tile covers the image, or when the mask does not reach an inner edge of
    ``key`` and is at most ``max_extent`` level pixels across (default: the tiling's halo; None:
    no limit). A mask that reaches an inner edge goes to the best tile of the same level not in
    ``visited`` that holds its box grown by 2 x :data:`~napari_focsam.core.images.EDGE_MARGIN` and ``need(level)``
    (the prompts' box at that level, or None). Else, and for a mask larger than ``max_extent``,
    the object goes to the best tile of the first coarser level that holds the mask's box (grown
    by the margin) and the prompts, where the mask is at most ``max_extent`` across; the top
    level's single tile at last.
    """
    grid = store.grid(key.level)
    if grid.single:
        return None
    level = key.level
    limit = store.halo if max_extent is None else max_extent
    extent = max(bbox[1] - bbox[0], bbox[3] - bbox[2])
    too_big = limit is not None and limit > 0 and extent > limit and level < store.top_level
    if not too_big:
        if not grid.touches_inner_edge(key, bbox):
            return None
        want = union_box(box_at_level(store, bbox, level, level, 2 * EDGE_MARGIN), need(level))
        same = [k for k in grid.tiles_for_box(want) if k not in visited]
        if same:
            return same[0]
    if level >= store.top_level:
        return None
    for lv in range(level + 1, store.top_level + 1):
        r = store.factor(level) / store.factor(lv)
        if too_big and extent * r > limit and lv < store.top_level:
            continue
        want = union_box(box_at_level(store, bbox, level, lv, EDGE_MARGIN), need(lv))
        best = store.grid(lv).tiles_for_box(want)
        if best:
            return best[0]
    return TileKey(store.top_level, 0, 0)


@dataclass
class TileObject:
    """A placement: the tile and the predictor's click history on it."""

    key: TileKey
    obj: InteractiveObject


class TiledHistory:
    """The clicks of one object on slice ``z`` of a tiled image (see the module docs).

    Parameters
    ----------
    store : TiledEmbeddingStore
        Gives the tiles' embeddings (computed on demand).
    predictor : FocSAMPredictor
        Runs the decoder steps.
    z : int
        The slice.
    """

    offset = 0.0  # tiled propagations carry no level

    def __init__(self, store: TiledEmbeddingStore, predictor: FocSAMPredictor, z: int) -> None:
        self.store = store
        self.predictor = predictor
        self.z = int(z)
        self.original_size: tuple[int, int] = tuple(store.volume.plane_shape)
        self.box: Box | None = None
        self._clicks: list[Click] = []
        self._steps: list[TileObject] = []  # the placement holding the state after click i
        self._base: TileObject | None = None  # the placement of the box step
        self._region: tuple[int | None, MaskRegion] | None = None
        #: the placements the last click went through (first to last), for logs and benchmarks
        self.last_moves: list[TileKey] = []

    def __repr__(self) -> str:
        cur = self.current
        return f"TiledHistory(z={self.z}, clicks={len(self._clicks)}, tile={cur.key if cur else None})"

    def __len__(self) -> int:
        return len(self._clicks)

    # -- state
    @property
    def current(self) -> TileObject | None:
        return self._steps[-1] if self._steps else self._base

    @property
    def canvas_scale(self) -> float | None:
        """Encoder canvas pixels per full-resolution pixel where the object is decoded now
        (1 in a 1024-pixel tile of level 0; None before the first prompt)."""
        cur = self.current
        if cur is None:
            return None
        return cur.obj.input_size[0] / cur.obj.original_size[0] / self._factor(cur.key.level)

    @property
    def score(self) -> float | None:
        """The decoder's score of the current placement's last click (see ``StepResult.score``)."""
        cur = self.current
        return cur.obj.score if cur is not None else None

    @property
    def tile(self) -> TileKey | None:
        """The current placement (tile and level), None before the first prompt."""
        cur = self.current
        return cur.key if cur is not None else None

    @property
    def clicks(self) -> list[Click]:
        """The clicks, in full-resolution pixels."""
        return list(self._clicks)


    @property
    def prompts(self) -> PlanePrompts:
        """The clicks and the box (image pixels) as one value."""
        return PlanePrompts(tuple(self.clicks), self.box)
    @property
    def logits(self) -> torch.Tensor | None:
        """(1, 1, 256, 256) logits of the current state, in its tile's frame (None if none)."""
        cur = self.current
        return cur.obj.logits if cur is not None else None

    @property
    def token(self) -> int | None:
        cur = self.current
        return cur.obj.token if cur is not None else None

    @property
    def blank(self) -> bool:
        cur = self.current
        return bool(cur.obj.blank) if cur is not None else False

    @property
    def region(self) -> MaskRegion:
        """The current mask as a full-resolution :class:`MaskRegion` (cached per state)."""
        cur = self.current
        if cur is None:
            return empty_region()
        token = cur.obj.token
        if self._region is None or self._region[0] != token:
            self._region = (token, self._region_of(cur))
        return self._region[1]

    @property
    def mask(self) -> np.ndarray:
        """The current mask as a (H, W) bool plane (read-only; materialised on each call)."""
        return region_to_plane(self.region, self.original_size)

    def nbytes(self) -> int:
        objs = {id(t.obj): t.obj for t in [*self._steps, *([self._base] if self._base else [])]}
        region = self._region[1].crop if self._region is not None else None
        return sum(o.nbytes() for o in objs.values()) + tensor_bytes(region)

    # -- geometry
    def _factor(self, level: int) -> float:
        return self.store.factor(level)

    def _to_level(self, y: float, x: float, level: int) -> tuple[float, float]:
        """Full-resolution (y, x) (pixel centres at integers) -> continuous level coordinates."""
        f = self._factor(level)
        return (y + 0.5) / f - 0.5, (x + 0.5) / f - 0.5

    def _need_box(self, clicks: Sequence[Click], box: Box | None, level: int) -> tuple[int, int, int, int] | None:
        """Level-pixel box (half-open) of the pixels the clicks and the box fall on."""
        ys, xs = [], []
        for c in clicks:
            y, x = self._to_level(c.y, c.x, level)
            ys.append(y)
            xs.append(x)
        if box is not None:
            for y, x in ((box.y0, box.x0), (box.y1, box.x1)):
                ly, lx = self._to_level(y, x, level)
                ys.append(ly)
                xs.append(lx)
        if not ys:
            return None
        H, W = self.store.grid(level).shape
        return (max(0, math.floor(min(ys) + 0.5)), min(H, math.floor(max(ys) + 0.5) + 1),
                max(0, math.floor(min(xs) + 0.5)), min(W, math.floor(max(xs) + 0.5) + 1))

    def _place(self, clicks: Sequence[Click], box: Box | None, level: int) -> TileKey:
        """The best tile holding the clicks and the box, at ``level`` or the first coarser level."""
        for lv in range(level, self.store.top_level + 1):
            need = self._need_box(clicks, box, lv)
            grid = self.store.grid(lv)
            best = grid.tiles_for_box(need) if need is not None else []
            if best:
                return best[0]
        return TileKey(self.store.top_level, 0, 0)

    def _fits(self, key: TileKey, clicks: Sequence[Click], box: Box | None) -> bool:
        need = self._need_box(clicks, box, key.level)
        return need is None or self.store.grid(key.level).contains(key, need)

    def first_tile(self, box: Box) -> TileKey:
        """The tile a new box will be decoded in first."""
        return self._place(self._clicks, box, 0)

    def next_tile(self, click: Click) -> TileKey:
        """The tile the next ``click`` will be decoded in first (to encode it before the click)."""
        cur = self.current
        clicks = [*self._clicks, click]
        if cur is not None and self._fits(cur.key, clicks, self.box):
            return cur.key
        return self._place(clicks, self.box, cur.key.level if cur is not None else 0)

    # -- decoding
    def _tile_prompts(self, key: TileKey, clicks: Sequence[Click],
                      box: Box | None) -> tuple[list[Click], Box | None, tuple[int, int]]:
        ty0, ty1, tx0, tx1 = self.store.grid(key.level).window(key)
        h, w = ty1 - ty0, tx1 - tx0
        out = []
        for c in clicks:
            y, x = self._to_level(c.y, c.x, key.level)
            # inside by placement; clamped against float rounding at the tile's border
            out.append(Click(min(max(y - ty0, 0.0), h - 1e-3), min(max(x - tx0, 0.0), w - 1e-3), c.is_positive))
        tbox = None
        if box is not None:
            a = self._to_level(box.y0, box.x0, key.level)
            b = self._to_level(box.y1, box.x1, key.level)
            tbox = checked_box((a[0] - ty0, a[1] - tx0, b[0] - ty0, b[1] - tx0), (h, w))
        return out, tbox, (h, w)

    def _replay(self, key: TileKey, clicks: Sequence[Click], box: Box | None) -> InteractiveObject:
        tclicks, tbox, hw = self._tile_prompts(key, clicks, box)
        store, z = self.store, self.z
        obj = InteractiveObject(self.predictor, lambda: store.get_tile(z, key), original_size=hw)
        if tbox is not None:
            obj.set_box(tbox)
        for c in tclicks:
            obj.add(c)
        return obj

    def _values(self, t: TileObject):
        logits = t.obj.logits
        if logits is None:
            return None
        return tile_logits_values(logits, t.obj.input_size, t.obj.original_size)

    def _level_bbox(self, t: TileObject) -> tuple[int, int, int, int] | None:
        got = self._values(t)
        if got is None:
            return None
        bbox = values_bbox(*got)
        if bbox is None:
            return None
        ty0, _, tx0, _ = self.store.grid(t.key.level).window(t.key)
        return bbox[0] + ty0, bbox[1] + ty0, bbox[2] + tx0, bbox[3] + tx0

    def _region_of(self, t: TileObject) -> MaskRegion:
        got = self._values(t)
        if got is None:
            return empty_region()
        ty0, _, tx0, _ = self.store.grid(t.key.level).window(t.key)
        return values_to_region(*got, (ty0, tx0), self._factor(t.key.level), self.original_size)

    def _settle(self, t: TileObject, clicks: Sequence[Click], box: Box | None) -> TileObject:
        """Move ``t`` while its mask reaches an inner tile edge (see the module docs)."""
        visited = {t.key}
        self.last_moves = [t.key]
        for _ in range(MAX_MOVES):
            bbox = self._level_bbox(t)
            if bbox is None:
                return t
            key = next_placement(self.store, t.key, bbox, lambda lv: self._need_box(clicks, box, lv), visited)
            if key is None:
                return t
            visited.add(key)
            self.last_moves.append(key)
            t = TileObject(key, self._replay(key, clicks, box))
        return t

    # -- editing (the InteractiveObject interface used by the session)
    def add(self, click: Click) -> None:
        """Add a click (full-resolution pixels), decode, and move the object if needed."""
        clicks = [*self._clicks, click]
        cur = self.current
        if cur is not None and self._fits(cur.key, clicks, self.box):
            n = len(cur.obj)
            try:
                cur.obj.add(self._tile_prompts(cur.key, [click], None)[0][0])
                t = self._settle(cur, clicks, self.box)
            except BaseException:
                cur.obj.truncate(n)
                raise
        else:
            key = self._place(clicks, self.box, cur.key.level if cur is not None else 0)
            t = self._settle(TileObject(key, self._replay(key, clicks, self.box)), clicks, self.box)
        self._clicks.append(click)
        self._steps.append(t)

    def set_box(self, box: Sequence[float] | None) -> np.ndarray:
        """Start from a box (y0, x0, y1, x1) in full-resolution pixels (None removes it); the
        clicks are replayed on top of it. Returns the new mask plane."""
        new = checked_box(box, self.original_size) if box is not None else None
        clicks = list(self._clicks)
        old = (self.box, self._clicks, self._steps, self._base)
        self.box, self._clicks, self._steps, self._base = new, [], [], None
        try:
            if new is not None:
                key = self._place([], new, 0)
                self._base = self._settle(TileObject(key, self._replay(key, [], new)), [], new)
            for c in clicks:
                self.add(c)
        except BaseException:
            self.box, self._clicks, self._steps, self._base = old
            raise
        return self.mask

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` clicks (the placement returns to what it was after click ``n``)."""
        n = max(0, int(n))
        del self._clicks[n:]
        del self._steps[n:]
        cur = self.current
        if cur is not None:
            cur.obj.truncate(n)

    def undo(self) -> np.ndarray:
        if self._clicks:
            self.truncate(len(self._clicks) - 1)
        return self.mask

    def reset(self) -> None:
        self.box, self._clicks, self._steps, self._base, self._region = None, [], [], None, None
