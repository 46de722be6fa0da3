"""Commits by region: write an object into a labels array touching only its bounding boxes.

On a large image an object covers a tiny part of the plane, and the session hands its masks out
as :class:`~napari_focsam.core.prompting.MaskRegion` ``(y0, x0, crop)`` per slice. :func:`plan_paste_regions` and
:func:`plan_many_regions` are the region versions of :func:`~napari_focsam.core.editing._paste.plan_paste` and
:func:`~napari_focsam.core.editing._paste_many.plan_many`: they take ``{z: MaskRegion}`` per object, read the labels only
inside each box (any sliceable array: numpy, zarr, dask) and return integer index arrays in the
labels' full coordinates (for napari's ``Labels.data_setitem``: one undo step).
:func:`labels_max` finds the largest id block by block (memory: one block) for labels arrays
that are not in memory; :func:`merge_regions` is the union of regions of one slice.

>>> from .regions import region_from_plane
>>> m = np.zeros((6, 8), bool); m[2:4, 3:6] = True
>>> labels = np.zeros((6, 8), np.uint8); labels[2, 3] = 4
>>> paste = plan_paste_regions(labels, {0: region_from_plane(m)})
>>> (paste.label, paste.size)
(5, 5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ._paste import Paste, PasteError, label_limit
from ._paste_many import ManyPaste

if TYPE_CHECKING:  # pragma: no cover - .regions imports torch: the widget's GUI thread must not
    from ..prompting import MaskRegion

__all__ = [
    "LABELS_MAX_BLOCK",
    "MAX_COVERED",
    "labels_max",
    "merge_regions",
    "plan_many_regions",
    "plan_paste_regions",
    "region_box",
    "region_key",
    "union_bbox",
]

#: Pixels per block read by :func:`labels_max` from an array that is not a numpy array.
LABELS_MAX_BLOCK = 2048 * 2048

Bbox = tuple[int, int, int, int]  # (y0, y1, x0, x1), end exclusive


#: A new object of which more than this fraction lies on existing labels is not committed
#: (without overwrite): the rest would be fragments, e.g. a ring around a nucleus clicked again.
MAX_COVERED = 0.75


def region_box(region: "MaskRegion") -> Bbox | None:
    """(y0, y1, x0, x1) of a region's box (half-open), None when empty (as :func:`~napari_focsam.core.prompting.region_bbox`,
    without importing torch: this module serves the widget's GUI thread)."""
    h, w = region.crop.shape
    if h == 0 or w == 0:
        return None
    return int(region.y0), int(region.y0) + h, int(region.x0), int(region.x0) + w


def union_bbox(*boxes: Bbox | None) -> Bbox | None:
    """The smallest box holding every given (non-empty) box; None when there is none."""
    live = [b for b in boxes if b is not None and b[1] > b[0] and b[3] > b[2]]
    if not live:
        return None
    return (min(b[0] for b in live), max(b[1] for b in live), min(b[2] for b in live), max(b[3] for b in live))


def region_key(box: Bbox, ndim: int, z: int = 0) -> tuple:
    """The index of box ``(y0, y1, x0, x1)`` on slice ``z`` in an array of ``ndim`` spatial axes
    (2: (Y, X), 3: (Z, Y, X))."""
    y0, y1, x0, x1 = (int(v) for v in box)
    key = (slice(y0, y1), slice(x0, x1))
    return (int(z), *key) if ndim == 3 else key


def merge_regions(regions: Iterable["MaskRegion"]) -> "MaskRegion":
    """The union of several regions of one slice (on the box holding them all)."""
    from ..prompting import MaskRegion, empty_region  # torch: imported by then (regions come from a session)

    live = [r for r in regions if region_box(r) is not None]
    if not live:
        return empty_region()
    if len(live) == 1:
        return live[0]
    y0, y1, x0, x1 = union_bbox(*(region_box(r) for r in live))
    out = np.zeros((y1 - y0, x1 - x0), bool)
    for r in live:
        ry0, ry1, rx0, rx1 = region_box(r)
        out[ry0 - y0: ry1 - y0, rx0 - x0: rx1 - x0] |= r.crop
    return MaskRegion(y0, x0, out)


def labels_max(labels: Any, block: int = LABELS_MAX_BLOCK) -> int:
    """The largest value of a labels array (0 when empty), reading at most ``block`` pixels at once
    from an array that is not a numpy array (zarr, dask)."""
    if isinstance(labels, np.ndarray):
        return int(labels.max()) if labels.size else 0
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) < 2 or 0 in shape:
        return 0
    lead, (h, w) = shape[:-2], shape[-2:]
    rows = max(1, block // w)
    best = 0
    for idx in np.ndindex(*lead) if lead else [()]:
        for y in range(0, h, rows):
            part = np.asarray(labels[(*idx, slice(y, min(y + rows, h)), slice(None))])
            if part.size:
                best = max(best, int(part.max()))
    return best


def _live(regions: Mapping[int, "MaskRegion"], shape: tuple[int, ...]) -> list[tuple[int, "MaskRegion"]]:
    """The non-empty regions, checked against the labels' ``shape``."""
    if len(shape) not in (2, 3):
        raise PasteError("shape", f"labels of shape {shape}: expected (Y, X) or (Z, Y, X)")
    h, w = shape[-2:]
    out = []
    for z, r in sorted(regions.items()):
        box = region_box(r)
        if box is None or not r.crop.any():
            continue
        y0, y1, x0, x1 = box
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
            raise PasteError("shape", f"the object's box {box} lies outside the {h}x{w} labels plane")
        if (len(shape) == 3 and not 0 <= int(z) < shape[0]) or (len(shape) == 2 and int(z) != 0):
            raise PasteError("shape", f"slice {z} is outside the labels of shape {shape}")
        out.append((int(z), r))
    return out


def _writable(labels: Any, z: int, r: "MaskRegion", overwrite: bool) -> tuple[np.ndarray, ...]:
    """Index arrays (labels' coordinates) of the region's pixels that a commit writes."""
    crop = np.asarray(r.crop, bool)
    if not overwrite:
        crop = crop & (np.asarray(labels[region_key(region_box(r), len(labels.shape), z)]) == 0)
    ys, xs = np.nonzero(crop)
    ys, xs = ys.astype(np.intp) + r.y0, xs.astype(np.intp) + r.x0
    return (np.full(ys.shape, z, np.intp), ys, xs) if len(labels.shape) == 3 else (ys, xs)


def _concat(parts: list[tuple[np.ndarray, ...]], ndim: int) -> tuple[np.ndarray, ...]:
    if not parts:
        return tuple(np.zeros(0, np.intp) for _ in range(ndim))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(ndim))


def plan_paste_regions(labels: Any, regions: Mapping[int, "MaskRegion"], *, overwrite: bool = False,
                       max_label: int | None = None, max_covered: float | None = None) -> Paste:
    """Which pixels of ``labels`` a commit of one object writes, reading only the object's boxes.

    Parameters
    ----------
    labels : array-like
        (Y, X) or (Z, Y, X) integer labels (numpy, zarr, dask: anything sliceable); not modified.
    regions : mapping of int to MaskRegion
        The object, ``{z: region}`` (z = 0 for a 2D image).
    overwrite : bool
        False: only background (0) pixels are written.
    max_label : int, optional
        The largest id in ``labels`` when the caller knows it (else :func:`labels_max`).
    max_covered : float, optional
        Without ``overwrite``: refuse an object of which more than this fraction lies on existing
        labels (what is left would be fragments around them, e.g. a ring around a labelled
        nucleus clicked again). None: only a fully covered object is refused.

    Returns
    -------
    Paste
        Index arrays in ``labels``' coordinates and the new id.

    Raises
    ------
    PasteError
        As :func:`~napari_focsam.core.editing._paste.plan_paste`: ``empty``, ``shape``, ``full``, ``occupied``; and
        ``covered`` (more than ``max_covered`` of the object is labelled already).
    """
    shape = tuple(int(s) for s in labels.shape)
    live = _live(regions, shape)
    if not live:
        raise PasteError("empty", "the object is empty")
    new_id = (labels_max(labels) if max_label is None else int(max_label)) + 1
    if new_id > label_limit(labels.dtype):
        raise PasteError("full", f"no free id left in a {np.dtype(labels.dtype)} labels array")
    index = _concat([_writable(labels, z, r, overwrite) for z, r in live], len(shape))
    if not index[0].size:
        raise PasteError("occupied", "the object lies entirely on existing labels")
    if not overwrite and max_covered is not None:
        total = sum(int(np.count_nonzero(r.crop)) for _, r in live)
        covered = 1.0 - index[0].size / max(total, 1)
        if covered > max_covered:
            raise PasteError("covered", f"{covered:.0%} of the object lies on existing labels")
    return Paste(index, new_id)


def plan_many_regions(labels: Any, objects: Sequence[Mapping[int, "MaskRegion"]], *, overwrite: bool = False,
                      max_label: int | None = None) -> ManyPaste:
    """New ids for several objects (each ``{z: MaskRegion}``, in order), reading only their boxes.

    Where objects overlap, the earlier one keeps the pixel; an object left with no pixel gets no
    id. PasteError as :func:`plan_paste_regions`.
    """
    shape = tuple(int(s) for s in labels.shape)
    lives = [_live(obj, shape) for obj in objects]
    if not any(lives):
        raise PasteError("empty", "no object to write")
    base = labels_max(labels) if max_label is None else int(max_label)
    parts, owners = [], []
    for k, live in enumerate(lives, start=1):
        for z, r in live:
            index = _writable(labels, z, r, overwrite)
            parts.append(index)
            owners.append(np.full(index[0].size, k, np.int64))
    index = _concat(parts, len(shape))
    if not index[0].size:
        raise PasteError("occupied", "the objects lie entirely on existing labels")
    owner = np.concatenate(owners)
    # a pixel claimed by several objects goes to the earliest (np.unique keeps the first occurrence)
    _, first = np.unique(np.ravel_multi_index(index, shape), return_index=True)
    first.sort()
    index, owner = tuple(a[first] for a in index), owner[first]
    used = np.unique(owner)
    if base + used.size > label_limit(labels.dtype):
        raise PasteError("full", f"no room for {used.size} new ids in a {np.dtype(labels.dtype)} labels array")
    remap = np.zeros(len(objects) + 1, np.int64)
    remap[used] = base + 1 + np.arange(used.size)
    dtype = labels.dtype if np.issubdtype(labels.dtype, np.integer) else np.int64
    return ManyPaste(index, remap[owner].astype(dtype), tuple(int(base + 1 + k) for k in range(used.size)))
