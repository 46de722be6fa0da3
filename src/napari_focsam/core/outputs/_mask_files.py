"""Writing masks: lossless formats only, replaced atomically, large ones region by region.

Masks are written losslessly only: :data:`MASK_FORMATS` lists the suffixes and how many axes
each holds; :func:`check_mask_path` refuses anything else before any work is done. Every mask
is written to a hidden temporary file (or folder) next to the output and renamed over it only
once complete, so a failed or interrupted run never leaves a half-written mask nor destroys the
one that was there. Masks of large images are written region by region
(:func:`write_mask_regions`): a chunked zarr array, a tiled TIFF or a memory-mapped ``.npy``,
without a full-size array in memory.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np


__all__ = [
    "LOSSY_SUFFIXES",
    "MASK_CHUNK",
    "MASK_FORMATS",
    "MASK_WRITERS",
    "MaskFormat",
    "MASK_MARK",
    "MASK_TILE",
    "check_mask_path",
    "formats_help",
    "replacing",
    "sweep_stale_partials",
    "write_mask",
    "write_mask_regions",
]

#: Chunk side of zarr masks and tile side of tiled TIFF masks written by region.
MASK_CHUNK = 1024
MASK_TILE = 256
#: Suffixes of lossy formats, refused for masks (a lossy mask has wrong pixels).
LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".jp2", ".j2k", ".jxl", ".heic", ".avif"})


def check_mask_path(path: str | Path, ndim: int = 2) -> Path:
    """Check, before any work, that a mask of ``ndim`` axes can be written to ``path``.

    Parameters
    ----------
    path : str or Path
        The output file: ``.tif``/``.tiff``/``.npy`` (any mask) or ``.png`` (2D only).
    ndim : int
        2 for a (Y, X) mask, 3 for a (Z, Y, X) mask.

    Returns
    -------
    Path
        ``path`` as a Path.

    Raises
    ------
    ValueError
        A lossy or unknown format, a format that cannot hold ``ndim`` axes, a folder that does
        not exist or is read-only, a path that is a folder, a path inside a zarr store, or an
        existing ``.zarr`` folder that is not a mask this tool wrote (a group, an image, a cache).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    store = _zarr_store_above(path)
    if store is not None:
        raise ValueError(f"cannot write {path}: it lies inside the zarr store {store}, which this "
                         "tool never changes; choose a path outside it")
    if suffix == ".zarr" and path.exists():
        if not path.is_dir():
            raise ValueError(f"cannot write {path}: it exists and is not a folder")
        kind, attrs = _zarr_node(path)
        if kind is None:
            raise ValueError(f"cannot write {path}: the folder exists and is not a zarr array "
                             "(remove it or choose another name)")
        if not isinstance(attrs.get(MASK_MARK), dict):
            what = "a zarr group (an image, a cache or a dataset)" if kind == "group" else \
                "a zarr array this tool did not write"
            raise ValueError(f"cannot write {path}: it is {what}; only a mask written earlier by "
                             "napari-focsam is ever replaced: choose another name")
    elif path.is_dir():
        raise ValueError(f"{path} is a directory: give a file name for the mask")
    allowed = ", ".join(s for s, n in MASK_FORMATS.items() if n >= ndim)
    if suffix in LOSSY_SUFFIXES:
        raise ValueError(f"{path}: {suffix} is a lossy format and would change the mask's pixels; "
                         f"use {allowed}")
    if suffix not in MASK_FORMATS:
        what = f"unknown mask format {suffix!r}" if suffix else "no file suffix"
        raise ValueError(f"{path}: {what}; use {allowed}")
    if MASK_FORMATS[suffix] < ndim:
        raise ValueError(f"{path}: {suffix} holds 2D masks only, and this mask is {ndim}D; use {allowed}")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise ValueError(f"cannot write {path}: the folder {folder} {what}")
    mode = folder.stat().st_mode
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the folder {folder} is read-only")
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {path}: the file exists and is read-only")
    return path


#: The attribute that marks a zarr array as a mask written by this tool (the only kind of
#: existing zarr folder an output may replace).
MASK_MARK = "napari_focsam"
_ZARR_FILES = ("zarr.json", ".zarray", ".zgroup")


def _read_small_json(path: Path) -> dict:
    """A JSON object from a metadata file of at most 1 MiB; {} for anything else."""
    import json

    try:
        if path.stat().st_size > 2**20:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _zarr_node(folder: Path) -> tuple[str | None, dict]:
    """What a folder is as zarr ('array', 'group' or None) and its attributes (v2 and v3)."""
    if (folder / "zarr.json").is_file():
        meta = _read_small_json(folder / "zarr.json")
        attrs = meta.get("attributes")
        return (meta.get("node_type") if meta.get("node_type") in ("array", "group") else "group",
                attrs if isinstance(attrs, dict) else {})
    if (folder / ".zarray").is_file() or (folder / ".zgroup").is_file():
        kind = "array" if (folder / ".zarray").is_file() else "group"
        return kind, _read_small_json(folder / ".zattrs")
    return None, {}


def _zarr_store_above(path: Path) -> Path | None:
    """The nearest folder above ``path`` that is a zarr array or group, if any."""
    try:
        parent = path.absolute().parent.resolve()
    except OSError:
        return None
    for folder in (parent, *parent.parents):
        if any((folder / name).is_file() for name in _ZARR_FILES):
            return folder
    return None


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed over ``path`` on success only.

    On an exception the temporary file or folder is removed and ``path`` is left as it was.
    A folder (``.zarr``) that exists is moved aside, replaced, then removed.
    """
    path = Path(path)
    tag = f"{socket.gethostname()}-{os.getpid()}"
    sweep_stale_partials(path)
    tmp = path.with_name(f".{path.name}.partial-{tag}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old-{tag}")
            _remove(old)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except OSError:
                os.rename(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def sweep_stale_partials(path: str | Path) -> list[Path]:
    """Remove the temporary files and folders that runs killed while writing ``path`` left
    beside it (``.<name>.partial-<host>-<pid>``, ``.<name>.old-<host>-<pid>``): only those of
    this host whose process is gone. Returns what was removed."""
    path = Path(path)
    host = socket.gethostname()
    removed = []
    for kind in ("partial", "old"):
        for p in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
            owner = p.name.rsplit(f".{kind}-", 1)[1]
            owner_host, _, pid = owner.rpartition("-")
            if owner_host not in ("", host) or not pid.isdigit() or _alive(int(pid)):
                continue
            _remove(p)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        try:
            p.unlink()
        except OSError:
            pass


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a mask or label array losslessly (see :func:`check_mask_path`).

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (zlib-compressed TIFF), ``.npy`` or ``.png`` (2D only).
    mask : numpy.ndarray
        (Y, X) or (Z, Y, X) integer array.
    """
    path = check_mask_path(path, mask.ndim)
    fmt = MASK_WRITERS[path.suffix.lower()]
    if fmt.whole is None:  # written region by region anyway (a folder of chunks)
        write_mask_regions(path, mask.shape, lambda z: (0, 0, mask[z] if mask.ndim == 3 else mask),
                           dtype=mask.dtype)
        return
    with replacing(path) as tmp:
        fmt.whole(tmp, mask)


#: ``region_of(z)`` -> ``(y0, x0, crop)`` (a :class:`~napari_focsam.core.prompting.MaskRegion` or a tuple) or None.
RegionSource = Callable[[int], "tuple[int, int, np.ndarray] | None"]


def write_mask_regions(path: str | Path, shape: Sequence[int], region_of: RegionSource, *,
                       dtype: np.dtype | type = np.uint8, value: int = 1) -> int:
    """Write a mask given as one region per slice, without a full-size array in memory.

    Parameters
    ----------
    path : str or Path
        ``.zarr`` (a zarr array, chunks of one slice x :data:`MASK_CHUNK`\ :sup:`2`),
        ``.tif``/``.tiff`` (tiled, :data:`MASK_TILE`\ :sup:`2` zlib tiles, one page per slice),
        ``.npy`` (written through a memory map) or ``.png`` (2D; made in memory).
    shape : (Y, X) or (Z, Y, X)
        The mask's shape.
    region_of : callable
        ``region_of(z)`` -> ``(y0, x0, crop)``: the bool (or integer) crop of slice ``z`` with its
        top-left full-resolution pixel, or None / an empty crop for an empty slice (z = 0 for 2D).
    dtype : numpy dtype
        The mask's dtype (uint8 by default).
    value : int
        The value written where a bool crop is True (integer crops are written as they are).

    Returns
    -------
    int
        The number of non-zero pixels written.

    Notes
    -----
    Memory: one slice's crop plus one chunk (zarr), one tile (TIFF) or the pages the operating
    system keeps of the memory map (npy); a PNG holds the whole (Y, X) plane.
    """
    shape = tuple(int(n) for n in shape)
    path = check_mask_path(path, len(shape))
    suffix = path.suffix.lower()
    dtype = np.dtype(dtype)
    crops = _CropReader(region_of, shape[-2:], dtype, value)
    with replacing(path) as tmp:
        MASK_WRITERS[suffix].regions(tmp, shape, crops, dtype)
    return crops.nonzero


class _CropReader:
    """Each slice's crop, clipped to the plane, as (window, block) in the mask's dtype."""

    def __init__(self, region_of: RegionSource, plane: tuple[int, int], dtype: np.dtype, value: int) -> None:
        self.region_of, self.plane, self.dtype, self.value = region_of, plane, dtype, value
        self.nonzero = 0
        self._last: tuple[int, object] | None = None

    def get(self, z: int):
        if self._last is not None and self._last[0] == z:
            return self._last[1]
        region = self.region_of(z)
        out = None
        if region is not None:
            y0, x0, crop = int(region[0]), int(region[1]), np.asarray(region[2])
            H, W = self.plane
            ya, xa = max(0, y0), max(0, x0)
            yb, xb = min(H, y0 + crop.shape[0]), min(W, x0 + crop.shape[1])
            if crop.size and yb > ya and xb > xa:
                block = crop[ya - y0:yb - y0, xa - x0:xb - x0]
                block = (block * self.value if block.dtype == bool else block).astype(self.dtype)
                self.nonzero += int(np.count_nonzero(block))
                out = ((ya, yb, xa, xb), block)
        self._last = (z, out)
        return out


def _tiff_tiles(crops: _CropReader, n_slices: int, plane: tuple[int, int], tile: tuple[int, int],
                dtype: np.dtype) -> Iterator[np.ndarray]:
    """The tiles of every page in the order tifffile writes them (row by row), each made from
    the slice's crop only."""
    H, W = plane
    th, tw = tile
    empty = np.zeros(tile, dtype)
    for z in range(n_slices):
        crop = crops.get(z)
        for ty in range(0, H, th):
            for tx in range(0, W, tw):
                if crop is None:
                    yield empty
                    continue
                (y0, y1, x0, x1), block = crop
                ya, yb, xa, xb = max(y0, ty), min(y1, ty + th), max(x0, tx), min(x1, tx + tw)
                if yb <= ya or xb <= xa:
                    yield empty
                    continue
                t = np.zeros(tile, dtype)
                t[ya - ty:yb - ty, xa - tx:xb - tx] = block[ya - y0:yb - y0, xa - x0:xb - x0]
                yield t


# --------------------------------------------------------------------------- the formats


def _zarr_regions(tmp: Path, shape: tuple, crops: "_CropReader", dtype: np.dtype) -> None:
    import zarr

    plane = shape[-2:]
    chunks = ((1,) if len(shape) == 3 else ()) + tuple(min(MASK_CHUNK, n) for n in plane)
    arr = zarr.create_array(str(tmp), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                            attributes={MASK_MARK: {"kind": "mask"}})
    for z in range(shape[0] if len(shape) == 3 else 1):
        crop = crops.get(z)
        if crop is not None:
            (y0, y1, x0, x1), block = crop
            window = (slice(y0, y1), slice(x0, x1))
            arr[(z, *window) if len(shape) == 3 else window] = block


def _tiff_whole(tmp: Path, mask: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(tmp, mask, compression="zlib")


def _tiff_regions(tmp: Path, shape: tuple, crops: "_CropReader", dtype: np.dtype) -> None:
    import tifffile

    plane = shape[-2:]
    tile = tuple(min(MASK_TILE, -(-n // 16) * 16) for n in plane)
    n_slices = shape[0] if len(shape) == 3 else 1
    tifffile.imwrite(tmp, _tiff_tiles(crops, n_slices, plane, tile, dtype), shape=shape, dtype=dtype,
                     tile=tile, compression="zlib")


def _npy_whole(tmp: Path, mask: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, mask, allow_pickle=False)


def _npy_regions(tmp: Path, shape: tuple, crops: "_CropReader", dtype: np.dtype) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    for z in range(shape[0] if len(shape) == 3 else 1):
        crop = crops.get(z)
        if crop is not None:
            (y0, y1, x0, x1), block = crop
            (out[z] if len(shape) == 3 else out)[y0:y1, x0:x1] = block
    out.flush()
    del out


def _png_whole(tmp: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(mask)).save(tmp, format="PNG")


def _png_regions(tmp: Path, shape: tuple, crops: "_CropReader", dtype: np.dtype) -> None:
    full = np.zeros(shape[-2:], dtype)
    crop = crops.get(0)
    if crop is not None:
        (y0, y1, x0, x1), block = crop
        full[y0:y1, x0:x1] = block
    _png_whole(tmp, full)


@dataclass(frozen=True)
class MaskFormat:
    """A lossless format masks and labels are written in.

    Attributes
    ----------
    max_axes : int
        The most axes a mask in this format may have (2: planes only).
    help : str
        How the command line describes it (after the suffix).
    whole : callable or None
        ``whole(tmp, mask)`` writes an array at once; None: through :attr:`regions`.
    regions : callable
        ``regions(tmp, shape, crops, dtype)`` writes one crop per slice, never a full-size array
        (a PNG excepted: it is made in memory).
    """

    max_axes: int
    help: str
    whole: Callable[[Path, np.ndarray], None] | None
    regions: Callable[[Path, tuple, "_CropReader", np.dtype], None]


#: The output formats, by suffix: the writers, the checks and the command line's help all read it.
MASK_WRITERS: dict[str, MaskFormat] = {
    ".tif": MaskFormat(3, "zlib TIFF, tiled when written by region", _tiff_whole, _tiff_regions),
    ".tiff": MaskFormat(3, "as .tif", _tiff_whole, _tiff_regions),
    ".npy": MaskFormat(3, "NumPy array", _npy_whole, _npy_regions),
    ".zarr": MaskFormat(3, "a chunked zarr array", None, _zarr_regions),
    ".png": MaskFormat(2, "2D only", _png_whole, _png_regions),
}
#: Lossless mask formats: suffix -> the most axes a mask in that format may have (.zarr: a folder).
MASK_FORMATS = {suffix: fmt.max_axes for suffix, fmt in MASK_WRITERS.items()}


def formats_help(ndim: int | None = None, extra: Sequence[tuple[str, str]] = ()) -> str:
    """The formats a mask of ``ndim`` axes (None: any) can be written in, for a command's help:
    ``".tif (zlib TIFF, ...), .npy (NumPy array), ..."``; ``extra``: more ``(suffix, help)``."""
    items = [(s, f.help) for s, f in MASK_WRITERS.items() if ndim is None or f.max_axes >= ndim]
    return ", ".join(f"{s} ({h})" for s, h in [*items, *extra])
