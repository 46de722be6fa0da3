"""Objects of many overlapping tiles made into one set of objects: neither cut nor doubled.

Segment all on a tiled image (:mod:`~napari_focsam.core.cluster._scan`) decodes every tile on its own, so one
nucleus near a seam comes back several times: whole from each tile that holds it, and cut from
each tile whose inner edge crosses it. This module turns those candidates into one object each,
in four steps, never with a whole plane in memory (every test works on two masks' boxes):

1. **Whole candidates** (not touching an inner edge of their tile) go through a greedy mask
   non-maximum suppression across all tiles and levels (the rule of one image's
   :func:`~napari_focsam.core.automatic._segment_all.nms_masks`, here with a spatial index of the boxes so
   that the cost follows each object's neighbours, not the square of a scan's object count): a
   nucleus seen whole by two overlapping tiles is kept once, from the tile that scored it best.
2. **Cut candidates** (touching an inner edge) mostly belong to an object a neighbouring tile saw
   whole: one that lies at least half inside a kept whole object is dropped ("resolved in the
   neighbouring tile").
3. The cut candidates left are objects no tile saw whole. Two of them from different tiles of one
   level are pieces of one object when, inside the overlap of their two tile windows, their
   masks agree (IoU above :data:`STITCH_IOU`); such pieces are stitched into one mask (their
   union), so an object across a seam is one object, not two halves.
4. Overlaps: no pixel belongs to two objects. Best score first, an object keeps its pixels
   that no earlier object took; one left with fewer than ``min_area`` pixels or less than
   :data:`~napari_focsam.core.automatic._segment_all.MIN_KEPT_FRACTION` of its mask is dropped (the rule of
   one image's :func:`~napari_focsam.core.automatic._segment_all.paint_labels`). The result is disjoint, so
   any writer may paint it in any order.

Coordinates are full-resolution pixels; masks are bool crops at ``(y0, x0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..images import TileKey
from ._segment_all import MIN_KEPT_FRACTION

__all__ = ["STITCH_IOU", "ScanObject", "SeamStats", "disjoint_objects", "nms_objects", "resolve_seams",
           "stitch_pieces"]

#: Two cut pieces from neighbouring tiles are one object when their masks agree this well
#: (IoU) inside the overlap of the two tiles.
STITCH_IOU = 0.5
#: A cut piece lying at least this fraction inside a kept whole object is that object.
RESOLVED_FRACTION = 0.5


@dataclass
class ScanObject:
    """One candidate object of a tiled image, in full-resolution pixels.

    Attributes
    ----------
    score : float
        Predicted IoU x stability (higher is better).
    y0, x0 : int
        Top-left pixel of ``mask`` in the plane.
    mask : numpy.ndarray
        (h, w) bool crop of the object's full-resolution mask.
    tile : TileKey
        The tile (and level) it was decoded on.
    cut : bool
        Its mask touches an inner edge of that tile: the object may go on beyond it.
    """

    score: float
    y0: int
    x0: int
    mask: np.ndarray
    tile: TileKey
    cut: bool = False

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1), half-open."""
        return self.y0, self.y0 + self.mask.shape[0], self.x0, self.x0 + self.mask.shape[1]


@dataclass
class SeamStats:
    """What :func:`resolve_seams` did: ``candidates`` in, ``duplicates`` removed by the NMS
    across tiles, ``resolved`` cut pieces dropped for a whole object of a neighbouring tile,
    ``stitched`` objects made of several cut pieces (from ``pieces`` pieces), ``dropped`` by the
    overlap rule, ``objects`` out."""

    candidates: int = 0
    duplicates: int = 0
    resolved: int = 0
    stitched: int = 0
    pieces: int = 0
    dropped: int = 0
    objects: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _overlap(a: ScanObject, b: ScanObject, window: tuple[int, int, int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """The two masks over the intersection of their boxes (and of ``window``), None if empty."""
    ay0, ay1, ax0, ax1 = a.box
    by0, by1, bx0, bx1 = b.box
    y0, y1, x0, x1 = max(ay0, by0), min(ay1, by1), max(ax0, bx0), min(ax1, bx1)
    if window is not None:
        y0, y1, x0, x1 = max(y0, window[0]), min(y1, window[1]), max(x0, window[2]), min(x1, window[3])
    if y1 <= y0 or x1 <= x0:
        return None
    return (a.mask[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0], b.mask[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0])


def _intersects(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


class _BoxIndex:
    """Objects binned by a coarse grid of their boxes: who may overlap a given box."""

    def __init__(self, cell: int = 512) -> None:
        self.cell = cell
        self.bins: dict[tuple[int, int], list[int]] = {}
        self.items: list[ScanObject] = []

    def _cells(self, box: tuple[int, int, int, int]):
        c = self.cell
        for i in range(box[0] // c, (box[1] - 1) // c + 1):
            for j in range(box[2] // c, (box[3] - 1) // c + 1):
                yield i, j

    def add(self, obj: ScanObject) -> None:
        self.items.append(obj)
        for key in self._cells(obj.box):
            self.bins.setdefault(key, []).append(len(self.items) - 1)

    def near(self, box: tuple[int, int, int, int]) -> list[ScanObject]:
        seen = sorted({k for key in self._cells(box) for k in self.bins.get(key, ())})
        return [self.items[k] for k in seen if _intersects(self.items[k].box, box)]


def nms_objects(objects: Sequence[ScanObject], thresh: float) -> list[ScanObject]:
    """Greedy mask NMS: best score first; an object whose mask IoU with a kept one exceeds
    ``thresh`` is dropped. Returns the kept objects, best first."""
    kept: list[ScanObject] = []
    index = _BoxIndex()
    for obj in sorted(objects, key=lambda o: -o.score):
        area = obj.area
        clash = False
        for other in index.near(obj.box):
            got = _overlap(obj, other)
            if got is None:
                continue
            inter = int(np.count_nonzero(got[0] & got[1]))
            if inter and inter / (area + other.area - inter) > thresh:
                clash = True
                break
        if not clash:
            kept.append(obj)
            index.add(obj)
    return kept


def stitch_pieces(pieces: Sequence[ScanObject], window_of: Callable[[TileKey], tuple[int, int, int, int]]
                  ) -> list[list[ScanObject]]:
    """Group cut pieces that are one object: pieces of different tiles of one level whose masks
    agree (IoU > :data:`STITCH_IOU`) inside the overlap of the two tiles' windows
    (``window_of(key)`` = (y0, y1, x0, x1) in full-resolution pixels). Returns the groups
    (connected components of that relation), each in input order."""
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = _BoxIndex()
    position = {}
    for i, p in enumerate(pieces):
        for q in index.near(p.box):
            j = position[id(q)]
            if q.tile == p.tile or q.tile.level != p.tile.level:
                continue
            wa, wb = window_of(p.tile), window_of(q.tile)
            window = (max(wa[0], wb[0]), min(wa[1], wb[1]), max(wa[2], wb[2]), min(wa[3], wb[3]))
            got = _overlap(p, q, window)
            if got is None:
                continue
            inter = np.count_nonzero(got[0] & got[1])
            union = np.count_nonzero(got[0] | got[1])
            if union and inter / union > STITCH_IOU:
                parent[root(i)] = root(j)
        index.add(p)
        position[id(p)] = i
    groups: dict[int, list[ScanObject]] = {}
    for i, p in enumerate(pieces):
        groups.setdefault(root(i), []).append(p)
    return list(groups.values())


def _union(group: Sequence[ScanObject]) -> ScanObject:
    """One object whose mask is the union of the group's masks (score: the best of them)."""
    if len(group) == 1:
        return group[0]
    y0 = min(p.y0 for p in group)
    x0 = min(p.x0 for p in group)
    y1 = max(p.box[1] for p in group)
    x1 = max(p.box[3] for p in group)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for p in group:
        mask[p.y0 - y0:p.box[1] - y0, p.x0 - x0:p.box[3] - x0] |= p.mask
    best = max(group, key=lambda p: p.score)
    return ScanObject(best.score, y0, x0, mask, best.tile, cut=False)


def disjoint_objects(objects: Sequence[ScanObject], min_area: int) -> tuple[list[ScanObject], int]:
    """The objects made disjoint, best score first (see the module docs, step 4); returns
    ``(kept, dropped)``: kept objects' masks hold only their own pixels, cropped to them."""
    kept: list[ScanObject] = []
    index = _BoxIndex()
    dropped = 0
    for obj in sorted(objects, key=lambda o: -o.score):
        free = obj.mask.copy()
        for other in index.near(obj.box):
            got = _overlap(obj, other)
            if got is None:
                continue
            y0, x0 = max(obj.y0, other.y0) - obj.y0, max(obj.x0, other.x0) - obj.x0
            h, w = got[0].shape
            free[y0:y0 + h, x0:x0 + w] &= ~got[1]
        n_free = int(np.count_nonzero(free))
        if n_free < max(min_area, 1) or n_free < MIN_KEPT_FRACTION * obj.area:
            dropped += 1
            continue
        rows = np.flatnonzero(free.any(axis=1))
        cols = np.flatnonzero(free.any(axis=0))
        out = ScanObject(obj.score, obj.y0 + int(rows[0]), obj.x0 + int(cols[0]),
                         free[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], obj.tile, obj.cut)
        kept.append(out)
        index.add(out)
    return kept, dropped


def resolve_seams(objects: Sequence[ScanObject], window_of: Callable[[TileKey], tuple[int, int, int, int]],
                  nms_iou_thresh: float, min_area: int) -> tuple[list[ScanObject], SeamStats]:
    """One disjoint set of objects from the candidates of many tiles (see the module docs).

    Parameters
    ----------
    objects : sequence of ScanObject
        Candidates of every tile of every level, full-resolution pixels.
    window_of : callable
        ``window_of(key)`` -> (y0, y1, x0, x1) of a tile in full-resolution pixels.
    nms_iou_thresh : float
        Of two whole candidates with a mask IoU above this, the lower-scoring one is dropped.
    min_area : int
        Objects left with fewer pixels after overlaps are resolved are dropped.

    Returns
    -------
    (list of ScanObject, SeamStats)
        Disjoint objects, best score first; what each step did.
    """
    stats = SeamStats(candidates=len(objects))
    whole = [o for o in objects if not o.cut]
    cut = [o for o in objects if o.cut]
    kept = nms_objects(whole, nms_iou_thresh)
    stats.duplicates = len(whole) - len(kept)
    index = _BoxIndex()
    for o in kept:
        index.add(o)
    open_pieces = []
    for p in cut:
        inside = 0
        for o in index.near(p.box):
            got = _overlap(p, o)
            if got is not None:
                inside += int(np.count_nonzero(got[0] & got[1]))
        if inside >= RESOLVED_FRACTION * p.area:
            stats.resolved += 1
        else:
            open_pieces.append(p)
    for group in stitch_pieces(open_pieces, window_of):
        if len(group) > 1:
            stats.stitched += 1
            stats.pieces += len(group)
        kept.append(_union(group))
    final, stats.dropped = disjoint_objects(kept, min_area)
    stats.objects = len(final)
    return final, stats
