"""Reading images and stacks, writing masks (tifffile for TIFF, imageio for PNG/JPEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TIFF_SUFFIXES = {".tif", ".tiff"}


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image or a 3D stack as a numpy array; raises ValueError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read {path}: no such file")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:  # corrupt or unsupported file
        raise ValueError(f"cannot read {path}: {exc}") from exc


def is_rgb(arr: np.ndarray) -> bool:
    """True for (Y, X, 3|4) colour images (and (Z, Y, X, 3|4) colour stacks)."""
    return arr.ndim in (3, 4) and arr.shape[-1] in (3, 4) and arr.shape[-2] > 4


def spatial_ndim(arr: np.ndarray) -> int:
    """2 for an image, 3 for a stack, ignoring a trailing colour axis."""
    return arr.ndim - (1 if is_rgb(arr) else 0)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a label/mask array: TIFF for .tif/.tiff (any ndim), else PNG/whatever imageio supports (2D)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(path, mask, compression="zlib")
    else:
        import imageio.v3 as iio

        if mask.ndim != 2:
            raise ValueError(f"{path.suffix} can only hold 2D masks; use .tif for 3D")
        iio.imwrite(path, mask)
