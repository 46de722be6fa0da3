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

Into an input image (:func:`write_ome_labels_into`): where the image is an OME-Zarr (NGFF 0.4)
group, the labels may go into its ``labels/`` group as ``labels/NAME`` (listed in
``labels/.zattrs``, with ``image-label.source`` pointing back at the image and the image's
own pixel scale), so that napari and other NGFF tools show them with the image. The image's
arrays and metadata are never touched; an existing ``labels/NAME`` is replaced only when this
tool wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import json
import os
import re

import numpy as np

from ._mask_files import MASK_CHUNK, MASK_MARK, check_mask_path, replacing

__all__ = ["NGFF_VERSION", "check_labels_into", "is_ome_zarr", "write_labels_data", "write_ome_labels",
           "write_ome_labels_into"]

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
    shape = tuple(int(n) for n in shape)
    path = check_mask_path(path, len(shape))
    with replacing(path) as tmp:
        _write_group(tmp, shape, paint, np.dtype(dtype), name)
    return path


def _write_group(target: Path, shape: tuple[int, ...], paint: Callable[[Any], None], dtype: np.dtype, name: str,
                 base_scale: Sequence[float] = (1.0, 1.0), source: str | None = None) -> None:
    """The label group at ``target`` (a new folder): levels, pyramid and metadata."""
    import zarr

    shapes = _level_shapes(shape)
    axes = ([{"name": "z", "type": "space"}] if len(shape) == 3 else []) + \
        [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group = zarr.open_group(str(target), mode="w", zarr_format=2)
    chunks = ((1,) if len(shape) == 3 else ()) + tuple(min(MASK_CHUNK, n) for n in shape[-2:])
    levels = [group.create_array(str(k), shape=s, chunks=tuple(min(c, n) for c, n in zip(chunks, s)),
                                 dtype=dtype, fill_value=0) for k, s in enumerate(shapes)]
    paint(levels[0])
    for k in range(1, len(levels)):
        _downsample(levels[k - 1], levels[k])
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": ([1.0] if len(shape) == 3 else []) + [float(b) * 2 ** k for b in base_scale]}]}
        for k in range(len(levels))]
    label_meta: dict[str, Any] = {"version": NGFF_VERSION}
    if source is not None:
        label_meta["source"] = {"image": source}
    group.attrs.update({
        "multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
                         "type": "nearest"}],
        "image-label": label_meta,
        MASK_MARK: {"kind": "labels", "format": "ome-zarr"},
    })


def _image_meta(root: Path) -> tuple[dict, list[str], list[int], list[float]]:
    """(attrs, axis names, level-0 shape, level-0 scale) of an NGFF 0.4 image group, or ValueError."""
    if (root / "zarr.json").is_file():
        raise ValueError(f"{root} is a zarr v3 (NGFF 0.5) group: writing into its labels/ group is not "
                         "supported; write --out NAME.ome.zarr beside it")
    try:
        attrs = json.loads((root / ".zattrs").read_text(encoding="utf-8"))
        ms = attrs["multiscales"][0]
        level0 = ms["datasets"][0]
        meta = json.loads((root / level0["path"] / ".zarray").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"{root} is not an OME-Zarr (NGFF 0.4) image group with multiscales metadata: "
                         "--into-input-labels needs one as input") from None
    shape = [int(n) for n in meta["shape"]]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])] or \
        ["t", "c", "z", "y", "x"][-len(shape):]
    scale = [1.0] * len(shape)
    for t in level0.get("coordinateTransformations", []):
        if t.get("type") == "scale" and len(t.get("scale", [])) == len(shape):
            scale = [float(v) for v in t["scale"]]
    return attrs, axes, shape, scale


def check_labels_into(image_path: str | Path, name: str, plane_shape: Sequence[int]) -> tuple[Path, list[float]]:
    """Check, before any work, that labels ``name`` of a (Y, X) plane can go into the image's ``labels/``.

    Parameters
    ----------
    image_path : str or Path
        An OME-Zarr (NGFF 0.4, zarr v2) image group whose spatial axes are y and x (a channel
        axis is allowed; t and z only of size 1).
    name : str
        The label image's name (letters, digits, ``.``, ``_``, ``-``; not starting with ``.``).
    plane_shape : (H, W)
        The labels' shape: the image's y and x extent.

    Returns
    -------
    (Path, list of float)
        ``labels/NAME`` and the image's (y, x) pixel scale.

    Raises
    ------
    ValueError
        Not such a group, a name that is taken by labels this tool did not write, a bad name,
        a shape that is not the image's, or a read-only folder.
    """
    root = Path(image_path)
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", str(name)):
        raise ValueError(f"label name {name!r}: use letters, digits, '.', '_' and '-' (not starting with '.')")
    _, axes, shape, scale = _image_meta(root)
    sizes = dict(zip(axes, shape))
    if "y" not in sizes or "x" not in sizes or any(sizes[a] != 1 for a in axes if a not in ("y", "x", "c")):
        raise ValueError(f"{root} has axes {''.join(axes)} of shape {shape}: labels go into an image of one "
                         "(y, x) plane (channels allowed); write --out NAME.ome.zarr instead")
    if (sizes["y"], sizes["x"]) != tuple(int(n) for n in plane_shape):
        raise ValueError(f"{root} is {sizes['y']}x{sizes['x']} pixels but the labels are "
                         f"{'x'.join(map(str, plane_shape))}: segment level 0 of that image")
    target = root / "labels" / name
    if target.exists():
        try:
            mark = json.loads((target / ".zattrs").read_text(encoding="utf-8")).get(MASK_MARK)
        except (OSError, ValueError, AttributeError):
            mark = None
        if not isinstance(mark, dict):
            raise ValueError(f"{target} exists and was not written by napari-focsam: choose another "
                             "--into-input-labels name")
    folder = target.parent if target.parent.is_dir() else root
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write labels into {root}: the folder {folder} is read-only")
    return target, [scale[axes.index("y")], scale[axes.index("x")]]


def write_ome_labels_into(image_path: str | Path, name: str, shape: Sequence[int], paint: Callable[[Any], None], *,
                          dtype: np.dtype | type) -> Path:
    """Write a (Y, X) label image as ``labels/NAME`` of an OME-Zarr image group (see the module docs).

    Parameters
    ----------
    image_path : str or Path
        The input image group (checked by :func:`check_labels_into`).
    name : str
        The label image's name.
    shape : (Y, X)
    paint : callable
        ``paint(level0)`` fills the zero-filled (Y, X) zarr array region by region.
    dtype : numpy dtype

    Returns
    -------
    Path
        ``image_path/labels/NAME``.
    """
    import zarr

    shape = tuple(int(n) for n in shape)
    target, scale = check_labels_into(image_path, name, shape)
    labels_dir = target.parent
    if not labels_dir.is_dir():
        zarr.open_group(str(labels_dir), mode="w", zarr_format=2)
    with replacing(target) as tmp:
        _write_group(tmp, shape, paint, np.dtype(dtype), name, scale, source="../../")
    group = zarr.open_group(str(labels_dir), mode="r+", zarr_format=2)
    names = list(group.attrs.get("labels", []))
    if name not in names:
        group.attrs["labels"] = names + [name]
    return target


def write_labels_data(path: str | Path, data: Any, *, name: str = "labels") -> Path:
    """Save a labels array (a napari labels layer's ``data``: numpy, dask or zarr) as an
    OME-Zarr label image, copied band by band (a lazy array is never loaded whole).

    Parameters
    ----------
    path : str or Path
        ``*.ome.zarr`` (replaced only when this tool wrote it).
    data : array-like
        (Y, X) or (Z, Y, X) non-negative integers (ids); stored as uint16, or uint32 beyond 65,535.
    name : str
        The multiscale's name (e.g. the layer's name).

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        Not ``*.ome.zarr``, not 2D/3D integer labels, a negative id or one beyond uint32.
    """
    if not is_ome_zarr(path):
        raise ValueError(f"{path}: name the labels output *.ome.zarr")
    shape = tuple(int(n) for n in data.shape)
    dtype = np.dtype(data.dtype)
    if len(shape) not in (2, 3) or dtype.kind not in "biu":
        raise ValueError(f"labels of shape {shape} and type {dtype}: expected (Y, X) or (Z, Y, X) integer ids")
    step = MASK_CHUNK
    lo, hi = 0, 0
    for y in range(0, shape[-2], step):
        band = np.asarray(data[..., y:y + step, :])
        if band.size:
            lo, hi = min(lo, int(band.min())), max(hi, int(band.max()))
    if lo < 0 or hi >= 2**32:
        raise ValueError(f"label ids must be within 0..{2**32 - 1}, these are within {lo}..{hi}")
    out = np.dtype(np.uint16 if hi < 2**16 else np.uint32)

    def paint(arr: Any) -> None:
        for y in range(0, shape[-2], step):
            arr[..., y:y + step, :] = np.asarray(data[..., y:y + step, :]).astype(out)

    return write_ome_labels(path, shape, paint, dtype=out, name=name)


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
