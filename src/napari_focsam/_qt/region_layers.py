"""Labels layers written by region: the preview and the output on large images.

The preview layer's array is made once per image; each answer writes only the box that holds
the old and the new mask of a slice (:func:`write_regions`), so a click on a 8192x8192 image
costs the object's box, not a full-size array. The widget keeps what it shows as
``{z: MaskRegion}`` (:class:`~napari_focsam.core.prompting._regions.MaskRegion`, from the session's
``obj.mask_region(z)``), and commits from those regions
(:func:`~napari_focsam.core.editing._paste_regions.plan_paste_regions`).

Arrays of our labels layers (:func:`new_labels_array`): numpy up to :data:`NUMPY_MAX_PIXELS`
pixels; above, an in-memory zarr array in (1, 2048, 2048) chunks that stores only the chunks
holding a label (empty chunks are not stored), so a (20, 8192, 8192) output costs its labelled
chunks (8 MiB each) plus the slice napari displays, not 2.7 GB. Output layers with planes above
4096x4096 pixels are uint16 (:func:`output_dtype`: napari's display buffers of a uint32 plane
are four times larger; 65535 ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..core.editing import labels_max, merge_regions, region_box, region_key, split_objects, union_bbox

if TYPE_CHECKING:  # pragma: no cover - core.regions imports torch (kept off the GUI thread's imports)
    from ..core.prompting import MaskRegion

__all__ = ["CHUNK_SIDE", "NUMPY_MAX_PIXELS", "UINT32_MAX_PLANE_PIXELS", "NextLabel", "full_mask", "merge_by_slice",
           "new_labels_array", "output_dtype", "split_hint", "write_regions"]

#: Our labels layers hold at most this many pixels in a numpy array (one 8192x8192 plane).
NUMPY_MAX_PIXELS = 8192 * 8192
#: Side of the (1, side, side) chunks of a zarr-backed labels layer.
CHUNK_SIDE = 2048
#: A new output layer is uint32 up to this many pixels per plane, else uint16: napari shows a
#: uint32 labels plane of 8192x8192 with ~1.1 GB of display buffers, a uint16 one with ~0.27 GB
#: (measured: napari 0.9.2, Xvfb/llvmpipe).
UINT32_MAX_PLANE_PIXELS = 4096 * 4096


def output_dtype(shape: Sequence[int]) -> np.dtype:
    """The dtype of a new output labels layer of ``shape`` (see :data:`UINT32_MAX_PLANE_PIXELS`)."""
    h, w = (int(s) for s in tuple(shape)[-2:])
    return np.dtype(np.uint32 if h * w <= UINT32_MAX_PLANE_PIXELS else np.uint16)


def new_labels_array(shape: Sequence[int], dtype: Any, numpy_max: int = NUMPY_MAX_PIXELS) -> Any:
    """A zero labels array of ``shape``: numpy when it has at most ``numpy_max`` pixels, else an
    in-memory zarr array that stores only non-empty chunks (see the module docs)."""
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape, dtype=np.int64)) <= numpy_max:
        return np.zeros(shape, dtype)
    import zarr

    chunks = (*(1,) * (len(shape) - 2), min(shape[-2], CHUNK_SIDE), min(shape[-1], CHUNK_SIDE))
    return zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=np.dtype(dtype),
                             fill_value=0, compressors=None, config={"write_empty_chunks": False})


def write_regions(data: Any, shown: Mapping[int, "MaskRegion"], new: Mapping[int, "MaskRegion"], is_3d: bool,
                  replace: bool = False, value: int = 1) -> dict[int, "MaskRegion"]:
    """Write ``new`` ({z: region}) into the labels array ``data``, touching only boxes.

    Each slice of ``new`` rewrites the box holding its old (``shown``) and its new region; with
    ``replace``, every shown slice that ``new`` lacks is erased (its box only).

    Returns
    -------
    dict
        What ``data`` shows now, ``{z: MaskRegion}`` (empty slices dropped).
    """
    out = dict(shown)
    zs = set(new) | (set(shown) if replace else set())
    ndim = 3 if is_3d else 2
    for z in sorted(zs):
        old, reg = shown.get(z), new.get(z)
        new_box = None if reg is None else region_box(reg)
        box = union_bbox(None if old is None else region_box(old), new_box)
        if box is not None:
            y0, y1, x0, x1 = box
            block = np.zeros((y1 - y0, x1 - x0), np.dtype(data.dtype))
            if new_box is not None:
                ry0, ry1, rx0, rx1 = new_box
                block[ry0 - y0: ry1 - y0, rx0 - x0: rx1 - x0] = np.where(reg.crop, value, 0)
            data[region_key(box, ndim, z)] = block
        if new_box is None:
            out.pop(z, None)
        else:
            out[z] = reg
    return out


def full_mask(regions: Mapping[int, "MaskRegion"], spatial: Sequence[int], is_3d: bool) -> np.ndarray:
    """The regions as one full bool array ((Y, X) or (Z, Y, X)); allocates it (scripts, tests)."""
    out = np.zeros(tuple(spatial), bool)
    for z, r in regions.items():
        box = region_box(r)
        if box is not None:
            out[region_key(box, 3 if is_3d else 2, z)] |= r.crop
    return out


def merge_by_slice(objects: Sequence[Mapping[int, "MaskRegion"]]) -> dict[int, "MaskRegion"]:
    """The union of several objects' regions, slice by slice."""
    per: dict[int, list["MaskRegion"]] = {}
    for obj in objects:
        for z, r in obj.items():
            per.setdefault(int(z), []).append(r)
    return {z: merge_regions(rs) for z, rs in per.items()}


def split_hint(clicks: Sequence[tuple[int, float, float, bool]], regions: Mapping[int, "MaskRegion"]) -> list[int]:
    """:func:`~napari_focsam.core.editing._predict_queue.split_objects` on regions: the slices where positive
    clicks landed on separate pieces of the object (clicks outside a box hit background)."""
    crops, shifted = {}, []
    for z, r in regions.items():
        box = region_box(r)
        if box is None:
            continue
        crops[z] = r.crop
        y0, y1, x0, x1 = box
        shifted += [(cz, y - y0, x - x0, p) for cz, y, x, p in clicks
                    if cz == z and y0 - 0.5 <= y < y1 - 0.5 and x0 - 0.5 <= x < x1 - 0.5]
    return split_objects(shifted, crops)


class NextLabel:
    """The next free id of a labels layer, without rereading a large array at every commit.

    A numpy array is read each time (its maximum is cheap). For other arrays (zarr) the largest
    id is read once, block by block, then kept up to date by :meth:`wrote`, and read again after a
    paint stroke or new data; an undo does not lower it (an upper bound: an undone id is not
    reused, and a (20, 8192, 8192) layer is not reread at every commit).
    """

    def __init__(self) -> None:
        self._layer: Any = None
        self._max: int | None = None
        self._known = 0  # the largest id when it was last asked for

    def _watch(self, layer: Any) -> None:
        if layer is self._layer:
            return
        self.forget()
        self._layer = layer
        for ev in (layer.events.data, layer.events.paint):
            ev.connect(self._invalidate)

    def _invalidate(self, event=None) -> None:
        self._max = None

    def forget(self) -> None:
        layer, self._layer, self._max = self._layer, None, None
        if layer is not None:
            for ev in (layer.events.data, layer.events.paint):
                try:
                    ev.disconnect(self._invalidate)
                except (TypeError, ValueError, RuntimeError):
                    pass

    def max_label(self, layer: Any) -> int:
        """The largest id in ``layer.data``."""
        if isinstance(layer.data, np.ndarray):
            return labels_max(layer.data)
        self._watch(layer)
        if self._max is None:
            self._max = labels_max(layer.data)
        self._known = self._max
        return self._max

    def wrote(self, layer: Any, largest: int) -> None:
        """We wrote ids up to ``largest`` into ``layer`` right after :meth:`max_label` (call it after
        the write: the layer's paint event made the count unknown)."""
        if layer is self._layer:
            self._max = max(int(largest), self._known)
