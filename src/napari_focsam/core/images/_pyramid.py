"""Image pyramids and lazy reads: the level logic behind :class:`~napari_focsam.core.images.ImageVolume`.

An image may come with its own pyramid: a napari multiscale layer's ``data`` (a list of
arrays, finest first), an OME-Zarr / NGFF group whose ``multiscales`` metadata lists its
levels, or one plain array (one level). :func:`as_levels` turns each of these into a list of
array-likes, finest first; :func:`level_factors` checks that they form a pyramid (same axes,
same z and channel extent, one whole downsampling factor per level shared by y and x, finer
levels first) and gives each level's factor (level-0 pixels per level pixel).

Coarser levels than the pyramid stores ("virtual" levels, each 2x coarser than the one
before) are computed on demand by :func:`read_virtual_region`: the corresponding region of
the coarsest stored level is read band by band and block-averaged, so that memory stays
bounded by the output region plus one band of :data:`VIRTUAL_BAND_PIXELS` source pixels.

Every read goes through :func:`read_block`, which turns any failure of the storage (a zarr
store that disappeared, a damaged chunk, a vanished file) into an :class:`ImageReadError`: one
line naming the store and the region, never a ``KeyError`` traceback from zarr.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from typing import Any, Sequence

import numpy as np

__all__ = [
    "INVENTORY_MAX_FILES",
    "MAX_VIRTUAL_SIDE",
    "TILING_MIN_SIDE",
    "VIRTUAL_BAND_PIXELS",
    "AxisView",
    "ImageReadError",
    "as_levels",
    "block_mean",
    "chunk_file_inventory",
    "chunk_shape",
    "level_factors",
    "ngff_view_of",
    "read_block",
    "read_virtual_region",
    "store_location",
    "stored_chunk_files",
    "to_dtype",
]

log = logging.getLogger(__name__)

#: Planes whose long side is above this many pixels are tiled (see ImageVolume.is_large);
#: planes up to it keep the single-canvas path (resized to 1024 for the encoder).
TILING_MIN_SIDE = 1536
#: Virtual levels are offered down to the first one whose long side is at most this.
MAX_VIRTUAL_SIDE = 256
#: A virtual-level read holds at most this many source pixels (times channels) at once.
VIRTUAL_BAND_PIXELS = 4 * 1024 * 1024


class ImageReadError(OSError):
    """Reading (part of) an image failed: the store is gone or damaged. One-line message."""


# ----------------------------------------------------------------------------- where the data lives

def store_location(arr: Any) -> str | None:
    """The local folder of a zarr array (``store root / array path``), or None if not on disk.

    Works for zarr 3 (``LocalStore.root``) and zarr 2 (``DirectoryStore.path``) arrays and for
    wrappers that forward ``store``/``path`` (e.g. :class:`AxisView`, test spies).
    """
    named = getattr(arr, "location", None)
    if isinstance(named, str):
        return named
    src = getattr(arr, "source_array", None)
    if src is not None:
        return store_location(src)
    store = getattr(arr, "store", None)
    if store is None:
        return None
    root = getattr(store, "root", None)
    if root is None:
        root = getattr(store, "path", None)
    if root is None or not isinstance(root, (str, os.PathLike)):
        return None
    sub = getattr(arr, "path", "") or ""
    sub = sub if isinstance(sub, str) else ""
    return os.path.join(os.fspath(root), sub) if sub else os.fspath(root)


def chunk_shape(arr: Any) -> tuple[int, ...] | None:
    """The chunk shape of a zarr or dask array (the first chunk of each axis), None if unknown."""
    src = getattr(arr, "source_array", None)
    if src is not None and hasattr(arr, "view_chunks"):
        return arr.view_chunks()
    chunks = getattr(arr, "chunks", None)
    if chunks is None:
        return None
    try:
        out = tuple(int(c[0]) if isinstance(c, (tuple, list)) else int(c) for c in chunks)
    except (TypeError, ValueError, IndexError):
        return None
    return out if len(out) == len(arr.shape) else None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stored_chunk_files(arr: Any, index: Any) -> list[str] | None:
    """The files of a local zarr array's stored chunks (shards) that ``arr[index]`` touches.

    None when unknown (not a local zarr array, or an index other than ints and slices). Uses
    the array's own chunk-key encoding (zarr 2 and 3), so any layout zarr writes is named right.
    """
    loc = store_location(arr)
    encode = getattr(getattr(arr, "metadata", None), "encode_chunk_key", None)
    grid = getattr(arr, "shards", None) or getattr(arr, "chunks", None)
    if loc is None or encode is None or grid is None or getattr(arr, "source_array", None) is not None:
        return None
    key = index if isinstance(index, tuple) else (index,)
    shape = tuple(int(n) for n in arr.shape)
    if len(key) > len(shape) or any(not isinstance(k, (slice, int, np.integer)) for k in key):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    axes = []
    for k, n, c in zip(key, shape, grid):
        if isinstance(k, slice):
            a, b, step = k.indices(n)
            if step != 1 or b <= a:
                return None if step != 1 else []
        else:
            a = int(k) % n
            b = a + 1
        axes.append(range(a // int(c), (b - 1) // int(c) + 1))
    try:
        return [os.path.join(loc, encode(tuple(coords))) for coords in itertools.product(*axes)]
    except Exception:
        return None


#: At most this many chunk files are listed by :func:`chunk_file_inventory`.
INVENTORY_MAX_FILES = 200_000
_METADATA_FILES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def chunk_file_inventory(arr: Any, limit: int | None = None) -> list[str]:
    """The chunk files a local zarr array has now (at most ``limit``, default
    :data:`INVENTORY_MAX_FILES`), to notice later that one has gone; [] when not a local zarr
    array. One directory listing per folder of the store, no file is opened."""
    loc = store_location(arr)
    if loc is None or getattr(getattr(arr, "metadata", None), "encode_chunk_key", None) is None:
        return []
    limit = INVENTORY_MAX_FILES if limit is None else limit
    out: list[str] = []
    for root, dirs, files in os.walk(loc):
        if root != loc:
            dirs[:] = [d for d in dirs if not os.path.isfile(os.path.join(root, d, "zarr.json"))]
        else:  # arrays nested in this folder (a group's levels) are not this array's chunks
            dirs[:] = [d for d in dirs if not any(os.path.isfile(os.path.join(root, d, m)) for m in
                                                   ("zarr.json", ".zarray", ".zgroup"))]
        out.extend(os.path.join(root, f) for f in files if f not in _METADATA_FILES)
        if len(out) >= limit:
            return out[:limit]
    return out


def read_block(arr: Any, index: tuple, what: str, seen: set[str] | None = None) -> np.ndarray:
    """``arr[index]`` as a numpy array, with storage failures as one-line :class:`ImageReadError`.

    Parameters
    ----------
    arr : array-like
        numpy, dask, zarr or any array-like.
    index : tuple
        The index (ints and slices).
    what : str
        The region in words for the message, e.g. ``"slice 3, rows 0:1024, columns 0:1024"``.
    seen : set of str or None
        The chunk files of a local zarr array seen so far (listed by
        :func:`chunk_file_inventory` before the first read, updated here): a chunk file that was
        there before and is gone now is an error (zarr itself would read it as the fill value,
        as it does every chunk never written).

    Raises
    ------
    ImageReadError
        When the read fails in the storage (missing or damaged files, a codec error), when
        the zarr store's folder is gone after the read (zarr then returns its fill value
        silently: an absent store reads as an empty image), or when a chunk file seen before
        has disappeared.
    """
    loc = store_location(arr)
    files = stored_chunk_files(arr, index) if seen is not None else None
    present = {f for f in files if os.path.exists(f)} if files else set()
    if files:
        gone = [f for f in files if f in seen and f not in present]
        if gone:
            raise ImageReadError(f"cannot read {what}: the chunk file {gone[0]} has disappeared since it was "
                                 "last seen (the zarr store changed while in use)")
    try:
        out = arr[index]
        if hasattr(out, "compute"):
            out = out.compute()
        out = np.asarray(out)
    except MemoryError:
        raise
    except Exception as exc:
        if loc is None and isinstance(exc, (IndexError, TypeError)):  # a bad index, not the storage
            raise
        where = loc or f"the {type(arr).__module__.split('.')[0]} array"
        raise ImageReadError(f"cannot read {what} of {where}: {_describe(exc)}") from None
    # a zarr store reads its chunk files one by one (a vanished folder reads as fill values);
    # a TIFF file is read through its open handle, so only zarr folders are checked
    if loc is not None and os.path.splitext(loc)[1].lower() not in (".tif", ".tiff") and not os.path.isdir(loc):
        raise ImageReadError(f"cannot read {what}: the zarr store {loc} has disappeared "
                             "(moved or deleted while in use)")
    if present:
        seen.update(present)
    if files and seen is not None:
        never = [f for f in files if f not in present and f not in seen]
        key = f"missing-chunks-warned:{loc}"
        if never and key not in seen:
            seen.add(key)  # once per store and volume: a sparse store would repeat it on every read
            log.warning("%s: %d chunk file(s) of %s were never written (e.g. %s): zarr reads them as its "
                        "fill value; if the data is incomplete, a click there segments an empty block",
                        loc, len(never), what, os.path.relpath(never[0], loc) if loc else never[0])
    return out


# ----------------------------------------------------------------------------- levels

def _is_zarr_group(obj: Any) -> bool:
    return type(obj).__module__.startswith("zarr") and not hasattr(obj, "shape") and hasattr(obj, "attrs")


def _multiscales(attrs: Any) -> list | None:
    try:
        meta = dict(attrs)
    except Exception:
        return None
    if "ome" in meta and isinstance(meta["ome"], dict):  # NGFF 0.5 (zarr v3)
        meta = meta["ome"]
    ms = meta.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def as_levels(data: Any) -> tuple[list[Any], str | None]:
    """The levels of an image, finest first, and where they come from (for messages).

    Parameters
    ----------
    data : array-like, list/tuple of array-likes, or zarr group
        One array (one level); a napari multiscale layer's ``data`` (finest first: arrays of
        different shapes; a list of one array or of arrays of one shape stays a stack of slices,
        as :func:`numpy.asarray` makes it); or a zarr
        group with OME-Zarr / NGFF ``multiscales`` metadata (its first multiscale's datasets, in
        the order the metadata lists them). NGFF ``t`` and ``c`` axes are handled by
        :class:`AxisView`: a ``t`` or ``c`` axis of length 1 is dropped, a ``c`` axis of 2-4
        channels becomes the last axis.

    Returns
    -------
    levels : list of array-like
    origin : str or None
        The zarr group's location, when known.

    Raises
    ------
    ValueError
        An empty list, a zarr group without ``multiscales`` metadata, a listed dataset that is
        missing, or NGFF axes that cannot be mapped to (Z, Y, X[, C]).
    """
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("an empty list of pyramid levels: give at least one array")
        arrays = all(hasattr(a, "shape") and hasattr(a, "dtype") and not np.isscalar(a) for a in data)
        # one array, or arrays of one shape, in a list are a stack of slices (np.asarray), not levels
        if arrays and len(data) > 1 and len({tuple(a.shape) for a in data}) > 1:
            return list(data), None
        return [data], None
    if _is_zarr_group(data):
        loc = store_location(data) or "the zarr group"
        ms = _multiscales(data.attrs)
        if ms is None:
            names = sorted(getattr(data, "array_keys", lambda: [])())
            hint = f" (it holds the arrays {', '.join(names[:5])})" if names else ""
            raise ValueError(f"{loc} is a zarr group without OME-Zarr 'multiscales' metadata: "
                             f"name the array inside it{hint}")
        first = ms[0]
        datasets = first.get("datasets") or []
        paths = [d.get("path") for d in datasets if isinstance(d, dict)]
        if not paths or any(not isinstance(p, str) for p in paths):
            raise ValueError(f"{loc}: the 'multiscales' metadata lists no dataset paths")
        levels = []
        for p in paths:
            try:
                level = data[p]
            except Exception:
                raise ValueError(f"{loc}: pyramid level {p!r} listed in 'multiscales' is missing") from None
            if not hasattr(level, "shape") or not hasattr(level, "dtype"):
                raise ValueError(f"{loc}: pyramid level {p!r} listed in 'multiscales' is a group, not an array")
            levels.append(level)
        axes = _axis_names(first.get("axes"), levels[0].ndim)
        if axes is not None:
            levels = [_axes_view(lv, axes, loc) for lv in levels]
        return levels, loc
    return [data], None


def ngff_view_of(arr: Any, path: str | os.PathLike) -> Any:
    """An array opened from inside an OME-Zarr group (``image.ome.zarr/0``), with the group's
    NGFF axes applied as in :func:`as_levels` (``t``/``c`` of length 1 dropped, ``c`` moved
    last); any other array as it is."""
    import zarr

    p = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(p)
    try:
        group = zarr.open_group(parent, mode="r")
    except Exception:
        return arr
    ms = _multiscales(group.attrs)
    if ms is None:
        return arr
    for d in ms[0].get("datasets") or []:
        if isinstance(d, dict) and d.get("path") == name:
            axes = _axis_names(ms[0].get("axes"), len(arr.shape))
            return arr if axes is None else _axes_view(arr, axes, p)
    return arr


def _axis_names(axes: Any, ndim: int) -> list[str] | None:
    if not isinstance(axes, list) or len(axes) != ndim:
        return None
    names = [(a.get("name") if isinstance(a, dict) else a) for a in axes]
    return [str(n).lower() for n in names] if all(isinstance(n, str) for n in names) else None


def _axes_view(arr: Any, axes: list[str], loc: str) -> Any:
    keep, fixed, channel = [], {}, None
    for i, name in enumerate(axes):
        n = int(arr.shape[i])
        if name in ("t", "time"):
            if n != 1:
                raise ValueError(f"{loc}: the pyramid has {n} time points; napari-focsam takes one "
                                 "(open the array of one time point instead)")
            fixed[i] = 0
        elif name in ("c", "channel"):
            if n == 1:
                fixed[i] = 0
            else:
                channel = i
        else:
            keep.append(i)
    if channel is not None:
        keep.append(channel)
    if not fixed and keep == list(range(len(axes))):
        return arr
    return AxisView(arr, fixed, keep)


class AxisView:
    """A lazy view of an array with some axes fixed to one index and the others reordered.

    Parameters
    ----------
    arr : array-like
        The source (zarr, dask, numpy).
    fixed : dict of int to int
        Source axis -> the index taken on it (the axis disappears).
    order : list of int
        The source axes the view shows, in the view's order.
    location : str or None
        The file or folder the data comes from, for error messages (see :func:`store_location`).
    """

    def __init__(self, arr: Any, fixed: dict[int, int], order: list[int], location: str | None = None) -> None:
        self.source_array = arr
        if location is not None:
            self.location = location
        self.fixed = dict(fixed)
        self.order = list(order)
        self.shape = tuple(int(arr.shape[i]) for i in self.order)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    def view_chunks(self) -> tuple[int, ...] | None:
        c = chunk_shape(self.source_array)
        return None if c is None else tuple(c[i] for i in self.order)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        src: list[Any] = [slice(None)] * len(self.source_array.shape)
        for ax, v in self.fixed.items():
            src[ax] = v
        for view_ax, src_ax in enumerate(self.order):
            src[src_ax] = key[view_ax]
        out = self.source_array[tuple(src)]
        if hasattr(out, "compute"):
            out = out.compute()
        out = np.asarray(out)
        # the remaining axes are the sliced ones, in source order; put them in view order
        remaining = sorted(a for a, k in zip(self.order, key) if not isinstance(k, (int, np.integer)))
        wanted = [a for a, k in zip(self.order, key) if not isinstance(k, (int, np.integer))]
        if remaining != wanted:
            out = np.transpose(out, [remaining.index(a) for a in wanted])
        return out


def level_factors(shapes: Sequence[tuple[int, ...]], *, is_3d: bool, has_channels: bool) -> list[int]:
    """Check that ``shapes`` (finest first) form a pyramid; return each level's factor.

    Parameters
    ----------
    shapes : sequence of tuple of int
        The array shape of each level, e.g. ``[(20, 8192, 8192), (20, 4096, 4096)]``.
    is_3d, has_channels : bool
        The layout of level 0 (a leading z axis, a trailing channel axis).

    Returns
    -------
    list of int
        Level-0 pixels per level pixel, ``[1, f1, f2, ...]``, strictly increasing. A level of
        factor ``f`` has ``H0 / f`` rows (rounded either way) and ``W0 / f`` columns.

    Raises
    ------
    ValueError
        One line naming the level and the shapes: a different number of axes, z extent or
        channel count than level 0, a level larger than the one before, or y and x shrinking by
        different or non-whole factors.
    """
    base = tuple(int(s) for s in shapes[0])
    ys = -3 if has_channels else -2
    H0, W0 = base[ys], base[ys + 1]
    factors = [1]
    for k, shape in enumerate(shapes[1:], start=1):
        shape = tuple(int(s) for s in shape)
        head = f"pyramid level {k} has shape {shape}, level 0 {base}"
        if len(shape) != len(base):
            raise ValueError(f"{head}: different numbers of axes")
        if is_3d and shape[0] != base[0]:
            raise ValueError(f"{head}: the levels must have the same number of slices ({base[0]}); a pyramid "
                             "that also shrinks z can be used one level at a time (open that level's array)")
        if has_channels and shape[-1] != base[-1]:
            raise ValueError(f"{head}: the levels must have the same number of channels ({base[-1]})")
        H, W = shape[ys], shape[ys + 1]
        if H < 1 or W < 1:
            raise ValueError(f"{head}: an empty level")
        fy, fx = H0 / H, W0 / W
        f = int(round(H0 / H if H0 >= W0 else W0 / W))
        ok = f >= 2 and all(math.floor(n0 / f) - 1 <= n <= math.ceil(n0 / f) + 1 for n0, n in ((H0, H), (W0, W)))
        if not ok:
            raise ValueError(f"{head}: y shrinks by {fy:.3g} and x by {fx:.3g}; every level must shrink "
                             "y and x by the same whole factor (2, 4, ...)")
        if f <= factors[-1]:
            prev = tuple(int(s) for s in shapes[k - 1])
            raise ValueError(f"{head}: it is not coarser than level {k - 1} {prev}; give the levels "
                             "finest first, each coarser than the one before")
        factors.append(f)
    return factors


# ----------------------------------------------------------------------------- virtual levels

def block_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over ``r x r`` blocks of a (h, w) or (h, w, C) array; edge blocks average what they hold.

    Returns float64, shape ``(ceil(h / r), ceil(w / r)[, C])``.
    """
    if r == 1:
        return a.astype(np.float64)
    h, w = a.shape[:2]
    rows, cols = np.arange(0, h, r), np.arange(0, w, r)
    s = np.add.reduceat(a, rows, axis=0, dtype=np.float64)
    s = np.add.reduceat(s, cols, axis=1, dtype=np.float64)
    nr = np.minimum(rows + r, h) - rows
    nc = np.minimum(cols + r, w) - cols
    counts = np.outer(nr, nc).astype(np.float64)
    if a.ndim == 3:
        counts = counts[..., None]
    return s / counts


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Block means back to the source dtype (rounded for integers, >= 0.5 for booleans)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def read_virtual_region(arr: Any, z: int | None, ys: tuple[int, int], xs: tuple[int, int], r: int,
                        src_shape: tuple[int, int], *, has_channels: bool, what: str,
                        seen: set[str] | None = None) -> np.ndarray:
    """A region of a level ``r`` times coarser than ``arr``, by block means of ``arr``'s region.

    Parameters
    ----------
    arr : array-like
        The stored source level, ``(Y, X)``, ``(Y, X, C)``, ``(Z, Y, X)`` or ``(Z, Y, X, C)``.
    z : int or None
        The slice (None for 2D data).
    ys, xs : (int, int)
        Rows and columns of the region in the coarse level's pixels (already clipped).
    r : int
        Source pixels per coarse pixel.
    src_shape : (int, int)
        The source level's plane shape.
    has_channels : bool
        Whether the data ends with a channel axis.
    what : str
        The region in words, for error messages.
    seen : set of str or None
        Passed to :func:`read_block`.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` or ``(h, w, C)`` float64 block means.

    Notes
    -----
    Memory: the output (``h * w * C`` float64) plus one band of at most
    :data:`VIRTUAL_BAND_PIXELS` source pixels (times C, in the source dtype; a band is at
    least ``r`` source rows, at most half the plane's rows, so no read covers a whole slice).
    Bands are aligned to the source chunks where possible so that each chunk is decoded once.
    """
    Hs, Ws = src_shape
    sy0, sy1 = ys[0] * r, min(ys[1] * r, Hs)
    sx0, sx1 = xs[0] * r, min(xs[1] * r, Ws)
    C = int(arr.shape[-1]) if has_channels else 1
    width = max(1, (sx1 - sx0) * C)
    band = max(r, (VIRTUAL_BAND_PIXELS // width) // r * r)
    band = min(band, max(r, (Hs // 2) // r * r))  # never the whole plane in one read
    chunks = chunk_shape(arr)
    if chunks is not None:
        ch = chunks[-3 if has_channels else -2]
        step = ch * r // math.gcd(ch, r)
        if band >= step:
            band = band // step * step
    parts = []
    head = () if z is None else (z,)
    for y in range(sy0, sy1, band):
        yb = min(y + band, sy1)
        block = read_block(arr, (*head, slice(y, yb), slice(sx0, sx1)), what, seen)
        parts.append(block_mean(block, r))
        del block
    return np.concatenate(parts, axis=0)
