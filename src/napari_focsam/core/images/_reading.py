"""Reading images and stacks: the package's one image reader.

Files from users are untrusted: every failure of :func:`read_image` is a ``ValueError`` (a
``FileNotFoundError`` for a missing file) with a one-line reason that names the file and the
problem (a folder, an empty, damaged or truncated file), never a plausible wrong array. TIFF files are read with tifffile after checking that every
image the file declares is in it: a truncated multi-page TIFF is refused, not read as its
first page. Other formats (PNG, JPEG, BMP, ...) are read with Pillow.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np

__all__ = ["TIFF_SUFFIXES", "open_tiff_lazily", "read_image"]

TIFF_SUFFIXES = (".tif", ".tiff")
#: Pillow modes converted to RGB (or gray) when read.
_CONVERT_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "PA")


def read_image(path: str | Path, *, palette_indices: bool = False) -> np.ndarray:
    """Read a 2D image, a colour image or a stack as a numpy array.

    Parameters
    ----------
    path : str or Path
        A TIFF file (any number of pages; the first series is read) or an image file Pillow
        reads (PNG, JPEG, BMP, ...; one frame).
    palette_indices : bool
        For palette images (PNG/GIF mode "P"): True gives the palette indices (label masks),
        False (default) the colours, as (Y, X, 3) or (Y, X, 4).

    Returns
    -------
    numpy.ndarray
        As stored: (Y, X), (Y, X, C), (Z, Y, X), ... Boolean (1-bit) images become uint8 0/255.

    Raises
    ------
    FileNotFoundError
        ``cannot read <path>: no such file``.
    ValueError
        ``cannot read <path>: <reason>`` for a folder, an empty, damaged, truncated or
        unsupported file.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read {path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"cannot read {path}: it is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot read {path}: not a regular file")
    if st.st_size == 0:
        raise ValueError(f"cannot read {path}: the file is empty (0 bytes)")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            arr = _read_tiff(path, st.st_size)
        else:
            arr = _read_pillow(path, palette_indices)
    except _Refused as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    except MemoryError:
        raise ValueError(f"cannot read {path}: the image is too large for the available memory") from None
    except Exception as exc:  # damaged or unsupported file: the library's reason, one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"cannot read {path}: damaged or unsupported file ({reason})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def open_tiff_lazily(path: str | Path):
    """A TIFF file's first series as a lazy array: pixels are read when a region is asked for.

    The file gets the same checks as :func:`read_image` (a truncated or damaged file is refused)
    without reading its pixels; then tifffile's zarr view of the series is returned, wrapped so
    that a read that fails later names the file (:class:`~napari_focsam.core.images.ImageReadError`).

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`read_image`.
    """
    import tifffile
    import zarr

    from ._pyramid import AxisView

    path = Path(path)
    if not path.is_file():
        return read_image(path)  # the one wording for missing files, folders, ...
    logger = logging.getLogger("tifffile")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        tif = tifffile.TiffFile(path)
        try:
            if not tif.series:
                raise _Refused("the TIFF file holds no image")
            series = tif.series[0]
            _check_tiff_complete(tif, series, len(tif.pages), path.stat().st_size, handler.messages)
            arr = zarr.open(series.aszarr(), mode="r")
        except BaseException:
            tif.close()
            raise
    except _Refused as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"cannot read {path}: damaged or unsupported file ({reason})") from None
    finally:
        logger.removeHandler(handler)
    return AxisView(arr, {}, list(range(len(arr.shape))), location=str(path))


class _Refused(Exception):
    """A reason of our own for refusing a file (reported as is)."""


class _Collect(logging.Handler):
    """Collects tifffile's error messages (invalid page offsets and the like) while reading."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.messages.append(" ".join(record.getMessage().split()))


def _read_tiff(path: Path, size: int) -> np.ndarray:
    import tifffile

    logger = logging.getLogger("tifffile")
    handler = _Collect()
    logger.addHandler(handler)  # also keeps tifffile's own messages off the terminal
    try:
        with tifffile.TiffFile(path) as tif:
            n_pages = len(tif.pages)
            if not tif.series:
                raise _Refused("the TIFF file holds no image")
            series = tif.series[0]
            _check_tiff_complete(tif, series, n_pages, size, handler.messages)
            data = np.asarray(series.asarray())
        if handler.messages:
            raise _Refused(f"the TIFF file is damaged or truncated ({handler.messages[0]})")
        return data
    finally:
        logger.removeHandler(handler)


def _check_tiff_complete(tif, series, n_pages: int, size: int, errors: list[str]) -> None:
    """Refuse a TIFF whose declared images are not all in the file (a truncated stack)."""
    if errors:
        raise _Refused(f"the TIFF file is damaged or truncated ({errors[0]})")
    declared = None
    ij = tif.imagej_metadata or {}
    if ij.get("images"):
        declared = int(ij["images"])
    elif tif.shaped_metadata:
        shape = tuple(tif.shaped_metadata[0].get("shape", ()))
        if shape and tuple(series.shape) != shape:
            raise _Refused(f"the TIFF file is truncated or damaged: it declares an image of shape {shape}, "
                           f"but holds {tuple(series.shape)}")
    in_series = len(series)
    if declared is not None and declared > max(in_series, n_pages):
        raise _Refused(f"the TIFF file is truncated or damaged: it declares {declared} images, but holds "
                       f"{max(in_series, n_pages)}")
    end = 0
    if series.dataoffset is not None:
        end = series.dataoffset + series.nbytes
    else:
        for page in series.pages:
            if page is None:
                raise _Refused("the TIFF file is truncated or damaged (a page is missing)")
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                end = max(end, offset + count)
    if end > size:
        raise _Refused(f"the TIFF file is truncated: its image data ends at byte {end}, but the file "
                       f"has {size} bytes")


def _read_pillow(path: Path, palette_indices: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    kind = path.suffix.lower().lstrip(".").upper() or "image"
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise _Refused(f"not a valid {kind} file (damaged, truncated or another format)") from None
    with im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise _Refused(f"the file holds {frames} frames: save a stack as a multi-page TIFF")
        try:
            if im.mode == "P" and not palette_indices:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in _CONVERT_TO_RGB:
                im = im.convert("RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            return np.asarray(im)
        except (OSError, SyntaxError) as exc:  # Pillow reports a broken PNG as a SyntaxError
            reason = " ".join(str(exc).split())
            raise _Refused(f"the {kind} file is damaged or truncated ({reason})") from None
