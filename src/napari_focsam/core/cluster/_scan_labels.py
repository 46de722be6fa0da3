"""The labels of a whole scan written chunk by chunk, from objects that never meet in one array.

:mod:`~napari_focsam.core.cluster._scan` gives disjoint objects (bool crops in full-resolution pixels, best score
first, id = position + 1). An OME-Zarr output is painted one chunk at a time: the objects are
binned by the chunks their boxes touch, each chunk is assembled in memory from its objects and
written once (a chunk no object touches is never written); then the pyramid is made level by
level (:mod:`~napari_focsam.core.outputs._ome_labels`). Other formats go through :func:`~napari_focsam.core.outputs.write_object_labels`
(object by object). Memory: one chunk plus the objects' crops, whatever the scan size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..automatic import ScanObject
from ..outputs import is_ome_zarr, labels_dtype, write_object_labels, write_ome_labels, write_ome_labels_into
from ._distributed import ObjectResult

__all__ = ["paint_by_chunk", "write_scan_labels", "write_scan_labels_into"]


def paint_by_chunk(arr: Any, objects: Sequence[ScanObject]) -> int:
    """Paint disjoint ``objects`` (id = position + 1) into the zero-filled (Y, X) zarr array
    ``arr``, one chunk at a time; returns the number of chunks written."""
    H, W = arr.shape
    cy, cx = arr.chunks
    bins: dict[tuple[int, int], list[int]] = {}
    for k, o in enumerate(objects):
        y0, y1, x0, x1 = o.box
        for i in range(max(0, y0) // cy, (min(H, y1) - 1) // cy + 1):
            for j in range(max(0, x0) // cx, (min(W, x1) - 1) // cx + 1):
                bins.setdefault((i, j), []).append(k)
    dtype = arr.dtype
    for (i, j), ks in sorted(bins.items()):
        ya, xa = i * cy, j * cx
        block = np.zeros((min(cy, H - ya), min(cx, W - xa)), dtype)
        for k in ks:
            o = objects[k]
            y0, y1, x0, x1 = o.box
            by0, by1 = max(y0, ya), min(y1, ya + block.shape[0])
            bx0, bx1 = max(x0, xa), min(x1, xa + block.shape[1])
            if by1 <= by0 or bx1 <= bx0:
                continue
            m = o.mask[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
            block[by0 - ya:by1 - ya, bx0 - xa:bx1 - xa][m] = k + 1
        arr[ya:ya + block.shape[0], xa:xa + block.shape[1]] = block
    return len(bins)


def write_scan_labels(path: str | Path, shape: Sequence[int], objects: Sequence[ScanObject]) -> int:
    """Write the (Y, X) labels of disjoint ``objects`` (id = position + 1) to ``path``.

    Parameters
    ----------
    path : str or Path
        ``*.ome.zarr`` (an NGFF label image, chunk by chunk), ``.zarr``, ``.npy``, ``.tif`` or
        ``.png`` (see :func:`~napari_focsam.core.outputs.check_labels_output`).
    shape : (Y, X)
    objects : sequence of ScanObject

    Returns
    -------
    int
        The number of objects written.
    """
    shape = tuple(int(n) for n in shape)
    if is_ome_zarr(path):
        write_ome_labels(path, shape, lambda arr: paint_by_chunk(arr, objects), dtype=labels_dtype(len(objects)))
        return len(objects)
    results = [ObjectResult(k, (0, o.y0, o.x0), o.mask[None]) for k, o in enumerate(objects)]
    return write_object_labels(path, shape, results)


def write_scan_labels_into(image_path: str | Path, name: str, shape: Sequence[int],
                           objects: Sequence[ScanObject]) -> Path:
    """Write the labels of ``objects`` as ``labels/NAME`` of the input OME-Zarr image group
    (:func:`~napari_focsam.core.outputs.write_ome_labels_into`; the image itself is never touched)."""
    return write_ome_labels_into(image_path, name, shape, lambda arr: paint_by_chunk(arr, objects),
                                 dtype=labels_dtype(len(objects)))
