"""Labels as an OME-Zarr (NGFF 0.4) label image: a pyramid that napari's OME-Zarr reader and
other NGFF tools open as labels.

Layout of ``labels.ome.zarr`` (zarr format 2, the format NGFF 0.4 specifies)::

    .zattrs   multiscales (axes z/y/x or y/x, one scale transform per level), image-label
              (version 0.4), and this tool's mark (only such a group is ever replaced)
    0/        full resolution, chunks of (1,) 1024 x 1024
    1/ ...    each level 2x coarser in y and x (nearest: a label id is never averaged), down
              to a plane of at most 1024 pixels a side (at most 8 levels)

Level 0 is painted object by object or copied block by block, and each coarser level is made
from the one before chunk by chunk: memory is one chunk plus one object's box, whatever the
scan size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .io import MASK_CHUNK, MASK_MARK, check_mask_path, replacing

__all__ = ["NGFF_VERSION", "is_ome_zarr", "write_ome_labels"]

NGFF_VERSION = "0.4"
_MAX_LEVELS = 8


def is_ome_zarr(path: str | Path) -> bool:
    """True for an output named ``*.ome.zarr``."""
    return Path(path).name.lower().endswith(".ome.zarr")


def _level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    out = [shape]
    while len(out) < _MAX_LEVELS and max(out[-1][-2:]) > MASK_CHUNK:
        prev = out[-1]
        out.append(prev[:-2] + tuple(-(-n // 2) for n in prev[-2:]))
    return out


def write_ome_labels(path: str | Path, shape: Sequence[int], paint: Callable[[Any], None], *,
                     dtype: np.dtype | type, name: str = "labels") -> Path:
    """Write an NGFF 0.4 label image of ``shape`` whose full-resolution level ``paint(array)`` fills.

    Parameters
    ----------
    path : str or Path
        ``*.ome.zarr``; an existing one is replaced only when this tool wrote it.
    shape : (Y, X) or (Z, Y, X)
    paint : callable
        ``paint(level0)`` writes the labels into the (empty, zero-filled) zarr array ``level0``
        region by region.
    dtype : numpy dtype
        Of the labels (uint16 or uint32).
    name : str
        The multiscale's name.

    Returns
    -------
    Path
        ``path``.
    """
    import zarr

    shape = tuple(int(n) for n in shape)
    path = check_mask_path(path, len(shape))
    dtype = np.dtype(dtype)
    shapes = _level_shapes(shape)
    axes = ([{"name": "z", "type": "space"}] if len(shape) == 3 else []) + \
        [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    with replacing(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        chunks = ((1,) if len(shape) == 3 else ()) + tuple(min(MASK_CHUNK, n) for n in shape[-2:])
        levels = [group.create_array(str(k), shape=s, chunks=tuple(min(c, n) for c, n in zip(chunks, s)),
                                     dtype=dtype, fill_value=0) for k, s in enumerate(shapes)]
        paint(levels[0])
        for k in range(1, len(levels)):
            _downsample(levels[k - 1], levels[k])
        datasets = [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": ([1.0] if len(shape) == 3 else []) + [float(2 ** k)] * 2}]}
            for k in range(len(levels))]
        group.attrs.update({
            "multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
                             "type": "nearest"}],
            "image-label": {"version": NGFF_VERSION},
            MASK_MARK: {"kind": "labels", "format": "ome-zarr"},
        })
    return path


def _downsample(src: Any, dst: Any) -> None:
    """``dst`` = every second pixel of ``src`` in y and x (nearest), one output chunk at a time."""
    cy, cx = dst.chunks[-2:]
    head = src.shape[:-2]
    for idx in np.ndindex(*head):
        for y in range(0, dst.shape[-2], cy):
            for x in range(0, dst.shape[-1], cx):
                ys, xs = slice(2 * y, 2 * min(y + cy, dst.shape[-2]), 2), slice(2 * x, 2 * min(x + cx, dst.shape[-1]), 2)
                block = np.asarray(src[(*idx, ys, xs)])
                if block.any():
                    dst[(*idx, slice(y, y + block.shape[0]), slice(x, x + block.shape[1]))] = block
