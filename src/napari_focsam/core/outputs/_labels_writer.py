"""Writing a labels image painted from many objects, object by object: memory follows the
objects, never the image (a batch on a 200000 x 200000 scan has no full-size array anywhere).

Each object is its 3D bool ``mask`` inside its bounding box at ``offset`` (z, y, x), with id
``index + 1`` (:class:`~napari_focsam.core.cluster._distributed.ObjectResult`). Overlaps: objects are painted from the
largest to the smallest, so where two overlap the smaller keeps the pixels (a large leak never
swallows a small cell) -- the rule of :func:`~napari_focsam.core.cluster._distributed.paint_objects`, which paints the same
labels in memory for small images.

Formats: ``*.ome.zarr`` (an NGFF label image with a pyramid, :mod:`~napari_focsam.core.outputs._ome_labels`), a zarr array (each object's box read, painted and written back; chunks that no object
touches are never written), a memory-mapped ``.npy``, a tiled TIFF (each tile painted from the
objects that touch it; empty tiles share one array) or a PNG (2D; the plane in memory). A TIFF
compresses every tile, the empty ones too: above :data:`MAX_TIFF_TILES` tiles the writer refuses
before any work and names ``.zarr`` as the format for that size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..images import TIFF_SUFFIXES
from ._mask_files import MASK_CHUNK, MASK_MARK, MASK_TILE, check_mask_path, replacing, write_mask
from ._ome_labels import is_ome_zarr, write_ome_labels

__all__ = ["MAX_PNG_PIXELS", "MAX_TIFF_TILES", "check_labels_output", "labels_dtype", "paint_objects_into",
           "write_labels_array", "write_object_labels"]

#: A TIFF labels image with more tiles than this is refused (zlib of every empty tile: minutes).
MAX_TIFF_TILES = 65_536
#: A PNG holds the whole plane in memory: refused above this many pixels.
MAX_PNG_PIXELS = 2**26


def labels_dtype(n_objects: int) -> np.dtype:
    """uint16 up to 65,535 objects, else uint32."""
    return np.dtype(np.uint16 if n_objects < 2**16 else np.uint32)


def check_labels_output(path: str | Path, shape: Sequence[int]) -> Path:
    """Check before any work that a labels image of ``shape`` can be written to ``path``.

    Raises
    ------
    ValueError
        Everything :func:`~napari_focsam.core.outputs.check_mask_path` refuses, a TIFF of more than
        :data:`MAX_TIFF_TILES` tiles or a PNG above :data:`MAX_PNG_PIXELS` pixels.
    """
    shape = tuple(int(n) for n in shape)
    path = check_mask_path(path, len(shape))
    suffix = path.suffix.lower()
    n_slices = shape[0] if len(shape) == 3 else 1
    h, w = shape[-2:]
    tiles = n_slices * -(-h // MASK_TILE) * -(-w // MASK_TILE)
    if suffix in TIFF_SUFFIXES and tiles > MAX_TIFF_TILES:
        raise ValueError(f"{path}: a TIFF of this size ({'x'.join(map(str, shape))}) has {tiles} tiles to "
                         "compress, empty ones included (many minutes): write .zarr, the format for masks of "
                         "this size (chunks no object touches are not even written)")
    if suffix == ".png" and h * w > MAX_PNG_PIXELS:
        raise ValueError(f"{path}: a PNG is made in memory and this plane has {h * w} pixels: write .zarr or .tif")
    return path


def _painted(objects: Sequence[Any]) -> list[Any]:
    """The objects with a mask, largest first (the smaller one keeps an overlap)."""
    return sorted((o for o in objects if o.mask is not None and o.mask.any()), key=lambda o: -int(o.mask.sum()))


def _box(obj: Any, shape3: tuple[int, int, int]) -> tuple[slice, slice, slice, np.ndarray] | None:
    """The object's box clipped to the (Z, Y, X) labels, and its mask clipped the same way."""
    lo = [max(0, int(v)) for v in obj.offset]
    hi = [min(n, int(v) + m) for v, m, n in zip(obj.offset, obj.mask.shape, shape3)]
    if any(b <= a for a, b in zip(lo, hi)):
        return None
    sub = obj.mask[tuple(slice(a - int(v), b - int(v)) for a, b, v in zip(lo, hi, obj.offset))]
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]), sub


def write_object_labels(path: str | Path, shape: Sequence[int], objects: Sequence[Any]) -> int:
    """Write the labels image of ``objects`` (id = ``index + 1``) to ``path``.

    Parameters
    ----------
    path : str or Path
        ``.zarr``, ``.npy``, ``.tif``/``.tiff`` or ``.png`` (2D).
    shape : (Y, X) or (Z, Y, X)
        The image's shape.
    objects : sequence
        Items with ``index``, ``offset`` (z, y, x) and ``mask`` ((dz, dy, dx) bool or None),
        e.g. :class:`~napari_focsam.core.cluster._distributed.ObjectResult`.

    Returns
    -------
    int
        The number of objects painted.
    """
    shape = tuple(int(n) for n in shape)
    path = check_labels_output(path, shape)
    suffix = path.suffix.lower()
    shape3 = shape if len(shape) == 3 else (1, *shape)
    dtype = labels_dtype(max((o.index for o in objects), default=-1) + 1)
    painted = _painted(objects)
    if is_ome_zarr(path):  # an NGFF label image: level 0 painted as below, then its pyramid
        write_ome_labels(path, shape, lambda arr: paint_objects_into(arr, painted), dtype=dtype)
        return len(painted)
    with replacing(path) as tmp:
        if suffix in (".zarr", ".npy"):
            if suffix == ".zarr":
                import zarr

                chunks = ((1,) if len(shape) == 3 else ()) + tuple(min(MASK_CHUNK, n) for n in shape[-2:])
                arr = zarr.create_array(str(tmp), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                        attributes={MASK_MARK: {"kind": "labels"}})
            else:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            paint_objects_into(arr, painted)
            if suffix == ".npy":
                arr.flush()
                del arr
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            tile = tuple(min(MASK_TILE, -(-n // 16) * 16) for n in shape3[1:])
            tifffile.imwrite(tmp, _label_tiles(painted, shape3, tile, dtype), shape=shape, dtype=dtype,
                             tile=tile, compression="zlib")
        else:
            full = np.zeros(shape, dtype)
            paint_objects_into(full, painted)
            from PIL import Image

            Image.fromarray(full).save(tmp, format="PNG")
    return len(painted)


def paint_objects_into(arr: Any, objects: Sequence[Any]) -> int:
    """Paint ``objects`` (id = ``index + 1``, the largest first so the smaller keeps an overlap)
    into the zero-filled (Y, X) or (Z, Y, X) array ``arr`` (numpy, zarr or a memory map), one
    object's box at a time; returns the number painted."""
    painted = _painted(objects)
    shape3 = tuple(arr.shape) if len(arr.shape) == 3 else (1, *arr.shape)
    for obj in painted:
        box = _box(obj, shape3)
        if box is not None:
            zs, ys, xs, sub = box
            window, sub = ((zs, ys, xs), sub) if len(arr.shape) == 3 else ((ys, xs), sub[0])
            block = np.asarray(arr[window])
            block[sub] = obj.index + 1
            arr[window] = block
    return len(painted)


def write_labels_array(path: str | Path, labels: np.ndarray) -> None:
    """Write a labels array that is in memory (segment-all of one slice): any format of
    :func:`~napari_focsam.core.outputs.write_mask`, and ``*.ome.zarr`` as an NGFF label image."""
    if not is_ome_zarr(path):
        write_mask(path, labels)
        return

    def paint(arr: Any) -> None:
        step = MASK_CHUNK
        for y in range(0, labels.shape[-2], step):
            arr[..., y:y + step, :] = labels[..., y:y + step, :]

    write_ome_labels(path, labels.shape, paint, dtype=labels.dtype)


def _label_tiles(painted: list[Any], shape3: tuple[int, int, int], tile: tuple[int, int],
                 dtype: np.dtype) -> Iterator[np.ndarray]:
    """Every tile of every page in tifffile's order (row by row), painted from the objects that
    touch it, in paint order; tiles no object touches share one empty array."""
    th, tw = tile
    index: dict[tuple[int, int, int], list[Any]] = {}
    for obj in painted:
        box = _box(obj, shape3)
        if box is None:
            continue
        zs, ys, xs, sub = box
        for z in range(zs.start, zs.stop):
            for ty in range(ys.start // th, (ys.stop - 1) // th + 1):
                for tx in range(xs.start // tw, (xs.stop - 1) // tw + 1):
                    index.setdefault((z, ty, tx), []).append((zs, ys, xs, sub, obj.index + 1))
    empty = np.zeros(tile, dtype)
    Z, H, W = shape3
    for z in range(Z):
        for ty in range(-(-H // th)):
            for tx in range(-(-W // tw)):
                items = index.get((z, ty, tx))
                if not items:
                    yield empty
                    continue
                out = np.zeros(tile, dtype)
                y0, x0 = ty * th, tx * tw
                for zs, ys, xs, sub, value in items:
                    ya, yb = max(ys.start, y0), min(ys.stop, y0 + th)
                    xa, xb = max(xs.start, x0), min(xs.stop, x0 + tw)
                    if yb <= ya or xb <= xa:
                        continue
                    m = sub[z - zs.start, ya - ys.start:yb - ys.start, xa - xs.start:xb - xs.start]
                    out[ya - y0:yb - y0, xa - x0:xb - x0][m] = value
                yield out
