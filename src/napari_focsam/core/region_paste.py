"""Objects as regions: a mask kept as its bounding box, and commits that touch only that box.

On a large image (a 2048x2048 camera frame, a stitched 10k x 10k scan) an object covers a tiny
part of the plane. :class:`MaskRegion` keeps one slice of an object as ``(z, y0, x0, crop)``: the
full-resolution offset of its bounding box and the bool crop inside it, so the widget's preview
and commit read and write only that box, never a full-size array per click.

:func:`plan_paste_regions` and :func:`plan_many_regions` are the region versions of
:func:`.labels.plan_paste` and :func:`.multi_prompts.plan_many`: they read the labels only
inside each object's box (any array that supports slicing: numpy, zarr, dask) and return
integer index arrays in the labels' full coordinates. :func:`labels_max` finds the largest id
block by block (memory: one block), for labels arrays that are not in memory.

>>> m = np.zeros((6, 8), bool); m[2:4, 3:6] = True
>>> r = crop_region(m)
>>> (r.y0, r.x0, r.crop.shape, r.bbox)
(2, 3, (2, 3), (2, 4, 3, 6))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .labels import Paste, PasteError, label_limit
from .multi_prompts import ManyPaste

__all__ = [
    "LABELS_MAX_BLOCK",
    "MaskRegion",
    "crop_region",
    "labels_max",
    "object_region",
    "plan_many_regions",
    "merge_regions",
    "plan_paste_regions",
    "region_key",
    "union_bbox",
]

#: Pixels per block read by :func:`labels_max` from an array that is not in memory.
LABELS_MAX_BLOCK = 2048 * 2048

Bbox = tuple[int, int, int, int]  # (y0, y1, x0, x1), end exclusive


@dataclass(frozen=True)
class MaskRegion:
    """One slice of an object as its bounding box.

    Attributes
    ----------
    z : int
        The slice (0 for a 2D image).
    y0, x0 : int
        Full-resolution offset of the box's top-left pixel.
    crop : numpy.ndarray
        (h, w) bool, the object inside the box; (0, 0) for an empty mask.
    """

    z: int
    y0: int
    x0: int
    crop: np.ndarray

    @property
    def empty(self) -> bool:
        """True when the object has no pixel on this slice."""
        return self.crop.size == 0 or not bool(self.crop.any())

    @property
    def bbox(self) -> Bbox:
        """(y0, y1, x0, x1) of the box, end exclusive."""
        h, w = self.crop.shape
        return self.y0, self.y0 + h, self.x0, self.x0 + w

    @property
    def n_pixels(self) -> int:
        return int(np.count_nonzero(self.crop))

    def full(self, plane_shape: tuple[int, int]) -> np.ndarray:
        """The mask as a full (Y, X) bool plane (allocates the plane: for small images and tests)."""
        out = np.zeros(plane_shape, bool)
        if self.crop.size:
            y0, y1, x0, x1 = self.bbox
            out[y0:y1, x0:x1] = self.crop
        return out


def crop_region(mask: np.ndarray, z: int = 0) -> MaskRegion:
    """The bounding box of a full (Y, X) bool ``mask`` as a :class:`MaskRegion` (a copy of the box)."""
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return MaskRegion(int(z), 0, 0, np.zeros((0, 0), bool))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    band = mask[y0:y1]
    cols = np.flatnonzero(band.any(axis=0))
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return MaskRegion(int(z), y0, x0, band[:, x0:x1].copy())


def object_region(obj: Any, z: int = 0) -> MaskRegion:
    """Slice ``z`` of a session object as a :class:`MaskRegion`.

    Uses ``obj.mask_region(z) -> (y0, x0, crop)`` when the object has it (tiled sessions keep
    masks as regions), else crops ``obj.mask(z)`` to its bounding box.
    """
    get = getattr(obj, "mask_region", None)
    if callable(get):
        y0, x0, crop = get(z)
        crop = np.asarray(crop, bool)
        if crop.size and not crop.all():  # trim the margin a region may carry
            inner = crop_region(crop, z)
            if inner.empty:
                return inner
            return MaskRegion(int(z), int(y0) + inner.y0, int(x0) + inner.x0, inner.crop)
        return MaskRegion(int(z), int(y0), int(x0), crop)
    return crop_region(obj.mask(z), z)


def union_bbox(*boxes: Bbox | None) -> Bbox | None:
    """The smallest box holding every given (non-empty) box; None when there is none."""
    live = [b for b in boxes if b is not None and b[1] > b[0] and b[3] > b[2]]
    if not live:
        return None
    return (min(b[0] for b in live), max(b[1] for b in live), min(b[2] for b in live), max(b[3] for b in live))


def merge_regions(regions: Iterable[MaskRegion], z: int | None = None) -> MaskRegion:
    """The union of several regions of one slice (the box holding them all)."""
    regions = [r for r in regions if not r.empty]
    if not regions:
        return MaskRegion(0 if z is None else int(z), 0, 0, np.zeros((0, 0), bool))
    if len(regions) == 1:
        return regions[0]
    y0, y1, x0, x1 = union_bbox(*(r.bbox for r in regions))
    out = np.zeros((y1 - y0, x1 - x0), bool)
    for r in regions:
        ry0, ry1, rx0, rx1 = r.bbox
        out[ry0 - y0: ry1 - y0, rx0 - x0: rx1 - x0] |= r.crop
    return MaskRegion(regions[0].z if z is None else int(z), y0, x0, out)


def labels_max(labels: Any, block: int = LABELS_MAX_BLOCK) -> int:
    """The largest value of a labels array (0 when empty), reading at most ``block`` pixels at once
    from an array that is not a numpy array (zarr, dask)."""
    if isinstance(labels, np.ndarray):
        return int(labels.max()) if labels.size else 0
    shape = tuple(int(s) for s in labels.shape)
    if not shape or 0 in shape:
        return 0
    lead, (h, w) = shape[:-2], shape[-2:]
    rows = max(1, block // max(w, 1))
    best = 0
    for idx in np.ndindex(*lead) if lead else [()]:
        for y in range(0, h, rows):
            part = np.asarray(labels[(*idx, slice(y, min(y + rows, h)), slice(None))])
            if part.size:
                best = max(best, int(part.max()))
    return best


def _check_region(region: MaskRegion, shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3):
        raise PasteError("shape", f"labels of shape {shape}: expected (Y, X) or (Z, Y, X)")
    h, w = shape[-2:]
    y0, y1, x0, x1 = region.bbox
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        raise PasteError("shape", f"the object's box {region.bbox} lies outside the {h}x{w} labels plane")
    if len(shape) == 3 and not 0 <= region.z < shape[0]:
        raise PasteError("shape", f"slice {region.z} is outside the labels stack of {shape[0]} slices")


def region_key(region: MaskRegion | Bbox, ndim: int, z: int = 0) -> tuple:
    """The index of a region's box (or of a ``(y0, y1, x0, x1)`` box on slice ``z``) in an array
    of ``ndim`` spatial axes (2: (Y, X), 3: (Z, Y, X))."""
    if isinstance(region, MaskRegion):
        z, box = region.z, region.bbox
    else:
        box = region
    y0, y1, x0, x1 = box
    key = (slice(y0, y1), slice(x0, x1))
    return (int(z), *key) if ndim == 3 else key


def _block(labels: Any, region: MaskRegion) -> np.ndarray:
    """The labels inside ``region``'s box (read from ``labels``)."""
    return np.asarray(labels[region_key(region, len(labels.shape))])


def _global_index(region: MaskRegion, ys: np.ndarray, xs: np.ndarray, ndim: int) -> tuple[np.ndarray, ...]:
    ys = ys.astype(np.intp) + region.y0
    xs = xs.astype(np.intp) + region.x0
    if ndim == 3:
        return np.full(ys.shape, region.z, np.intp), ys, xs
    return ys, xs


def _concat(parts: list[tuple[np.ndarray, ...]], ndim: int) -> tuple[np.ndarray, ...]:
    if not parts:
        return tuple(np.zeros(0, np.intp) for _ in range(ndim))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(ndim))


def plan_paste_regions(labels: Any, regions: Iterable[MaskRegion], *, overwrite: bool = False,
                       max_label: int | None = None) -> Paste:
    """Which pixels of ``labels`` a commit of one object writes, reading only the object's boxes.

    Parameters
    ----------
    labels : array-like
        (Y, X) or (Z, Y, X) integer labels (numpy, zarr, dask: anything sliceable); not modified.
    regions : iterable of MaskRegion
        The object, one region per slice (several regions of one slice are merged).
    overwrite : bool
        False: only background (0) pixels are written.
    max_label : int, optional
        The largest id in ``labels`` when the caller knows it (else :func:`labels_max`).

    Returns
    -------
    Paste
        Index arrays in ``labels``' coordinates and the new id.

    Raises
    ------
    PasteError
        As :func:`.labels.plan_paste`: ``empty``, ``shape``, ``full``, ``occupied``.
    """
    regions = [r for r in regions if not r.empty]
    shape = tuple(int(s) for s in labels.shape)
    for r in regions:
        _check_region(r, shape)
    if not regions:
        raise PasteError("empty", "the object is empty")
    new_id = (labels_max(labels) if max_label is None else int(max_label)) + 1
    if new_id > label_limit(labels.dtype):
        raise PasteError("full", f"no free id left in a {np.dtype(labels.dtype)} labels array")
    parts = []
    for r in regions:
        block = _block(labels, r)
        write = r.crop if overwrite else (r.crop & (block == 0))
        ys, xs = np.nonzero(write)
        if ys.size:
            parts.append(_global_index(r, ys, xs, len(shape)))
    index = _concat(parts, len(shape))
    if not index[0].size:
        raise PasteError("occupied", "the object lies entirely on existing labels")
    if len(regions) > 1:  # two regions of one slice may overlap: each pixel once
        flat = np.ravel_multi_index(index, shape)
        _, first = np.unique(flat, return_index=True)
        index = tuple(a[np.sort(first)] for a in index)
    return Paste(index, new_id)


def plan_many_regions(labels: Any, objects: Sequence[Sequence[MaskRegion]], *, overwrite: bool = False,
                      max_label: int | None = None) -> ManyPaste:
    """New ids for several objects (each a list of regions), reading only their boxes.

    Where objects overlap, the earlier one keeps the pixel; an object left with no pixel gets no
    id. PasteError as :func:`plan_paste_regions`.
    """
    shape = tuple(int(s) for s in labels.shape)
    objects = [[r for r in obj if not r.empty] for obj in objects]
    for obj in objects:
        for r in obj:
            _check_region(r, shape)
    if not any(objects):
        raise PasteError("empty", "no object to write")
    base = labels_max(labels) if max_label is None else int(max_label)
    parts, owners = [], []
    for k, obj in enumerate(objects, start=1):
        for r in obj:
            block = _block(labels, r)
            write = r.crop if overwrite else (r.crop & (block == 0))
            ys, xs = np.nonzero(write)
            if ys.size:
                parts.append(_global_index(r, ys, xs, len(shape)))
                owners.append(np.full(ys.size, k, np.int64))
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
